"""The synthetic long-range tasks (``bptt.data.tasks``), full BPTT over each sequence
(``bptt task``), and the gradient-flow diagnosis of a run (``bptt diagnose``).

Every update draws a fresh batch from the task's recipe; the test set is drawn once
(``bptt.objectives.TaskObjective``). The seeds: the model from ``seed``, the training batches from
``default_rng([seed, 1])``, the test set from ``default_rng([seed, 2])``, so one seed gives the
same run anywhere. Gradients are those of the mean loss over the batch, clipped by their global
norm when ``clip`` is set (Pascanu et al. 2013), then an optimizer step (Adam by default).

Every ``eval_every`` updates the test loss is measured; the run is *solved* at the first
evaluation whose test loss is under the task's threshold, and (``stop_when_solved``) ends there.
Budgets: ``steps`` updates and/or ``minutes`` of training time, whichever comes first; the time
counts updates only (not evaluations or diagnostics), on the wall clock or, with
``clock='cpu'``, the process's CPU time, which a machine shared with other jobs slows less.

Cells: ``rnn`` (tanh, PyTorch's init), ``irnn`` (relu, weight_hh the identity and zero biases;
Le, Jaitly & Hinton 2015), ``lstm`` (forget-gate bias 1; Gers et al. 2000) and ``gru``.
"""

import dataclasses
import json
import math
import os
import time
from dataclasses import dataclass

import numpy as np

from .. import diagnostics
from ..config import check_choice, option, positive_int, resume_options
from ..data.tasks import TASKS, Task
from ..layers import BACKEND_HELP, BACKENDS, DEFAULT_BACKEND, check_backend
from ..model import Model
from ..objectives import TaskObjective
from ..trainer import CLOCKS, NONFINITE, LoopConfig, Trainer, load_run, readable

COMMAND = "task"
CELLS = {  # name -> Model's cell and options
    "rnn": ("rnn", {"nonlinearity": "tanh"}),
    "irnn": ("rnn", {"nonlinearity": "relu", "init": "identity"}),
    "lstm": ("lstm", {"forget_bias": 1.0}),
    "gru": ("gru", {}),
}
COPY_EMBED = 16   # embedding size of the copy task's 10 ids
DIAGNOSE_BATCH = 64
RESUMABLE = {"steps", "minutes", "eval_every", "stop_when_solved", "on_nonfinite"}


@dataclass
class TaskConfig:
    """A run on one task; the defaults of ``bptt task``."""

    task: str = option("adding", "the task", choices=tuple(TASKS), cli=False)
    length: int = option(100, "T: the distance to remember (copy: blanks; sequences are T + 20 "
                         "long)")
    cell: str = option("lstm", "recurrent cell (irnn: relu, identity init)", choices=tuple(CELLS))
    hidden: int = option(128, "hidden units per layer")
    layers: int = option(1, "stacked recurrent layers")
    batch: int = option(32, "sequences per update, drawn fresh each time")
    optimizer: str = option("adam", "optimizer",
                            choices=("sgd", "adam", "adamw", "rmsprop", "adagrad"))
    lr: float = option(1e-3, "learning rate")
    clip: float | None = option(1.0, "clip the gradient's global norm at this value (0: off)")
    steps: int | None = option(2000, "update steps (the run stops at the first budget reached)")
    minutes: float | None = option(None, "time budget in minutes of training")
    clock: str = option("wall", "what --minutes counts (cpu: the process's CPU time)",
                        choices=tuple(CLOCKS))
    eval_every: int = option(100, "measure the test loss every N steps")
    eval_size: int = option(512, "test sequences")
    stop_when_solved: bool = option(True, "stop at the first evaluation that solves the task",
                                    cli=False)
    diagnose_every: int | None = option(None, "record gradient diagnostics every N steps "
                                        "(diagnostics.jsonl)")
    checkpoint_every: int | None = option(None, "write the checkpoint every N steps (none: at "
                                          "each evaluation)")
    on_nonfinite: str = option("stop", "a non-finite loss or gradient stops the run (it "
                               "diverged) or skips the update", choices=NONFINITE)
    seed: int = option(0, "seed of the model, the training batches and the test set")
    dtype: str = option("float32", "floating-point type", choices=("float32", "float64"))
    backend: str = option(DEFAULT_BACKEND, BACKEND_HELP, choices=BACKENDS)

    def __post_init__(self):
        who = "task"
        if self.clip == 0:
            self.clip = None
        Task(self.task, self.length)                      # checks the task and the length
        check_choice(who, "cell", self.cell, tuple(CELLS))
        for name in ("hidden", "layers", "batch", "eval_every", "eval_size"):
            positive_int(who, name, getattr(self, name))
        for name in ("steps", "diagnose_every", "checkpoint_every"):
            positive_int(who, name, getattr(self, name), allow_none=True)
        if self.steps is None and self.minutes is None:
            raise ValueError("task: give a step budget (steps) or a time budget (minutes)")
        for name in ("lr", "minutes", "clip"):
            v = getattr(self, name)
            if v is not None and (isinstance(v, bool) or not isinstance(v, (int, float))
                                  or not (math.isfinite(v) and v > 0)):
                raise ValueError(f"task: expected {name} a positive number, got {v!r}"
                                 + (" (0: off)" if name == "clip" else ""))
        check_choice(who, "dtype", self.dtype, ("float32", "float64"))
        check_backend(self.backend, who)
        check_choice(who, "clock", self.clock, tuple(CLOCKS))

    def loop(self):
        return LoopConfig(optimizer=self.optimizer, lr=self.lr, clip=self.clip, steps=self.steps,
                          minutes=self.minutes, clock=self.clock, eval_every=self.eval_every,
                          checkpoint_every=self.checkpoint_every, final_eval=True,
                          on_nonfinite=self.on_nonfinite)


def build_task_model(cfg):
    """The model a task needs: its input layer and head, the configured cell."""
    task = Task(cfg.task, cfg.length)
    cell, options = CELLS[cfg.cell]
    embed = COPY_EMBED if task.input == "embedding" else None
    return Model(task.input_size, cfg.hidden, task.output_size, cell=cell, input=task.input,
                 embed_size=embed, num_layers=cfg.layers, head=task.head, dtype=cfg.dtype,
                 seed=cfg.seed, backend=cfg.backend, **options)


class TaskRun:
    """A run of ``cfg``: its model, objective and trainer (``out_dir`` None: no files)."""

    def __init__(self, cfg, out_dir=None, on_eval=None):
        self.cfg = cfg
        self.task = Task(cfg.task, cfg.length)
        self.model = build_task_model(cfg)
        clock = CLOCKS[cfg.clock]
        self.objective = TaskObjective(self.task, cfg.batch, cfg.seed, cfg.eval_size,
                                       stop_when_solved=cfg.stop_when_solved,
                                       diagnose_every=cfg.diagnose_every, clock=clock)
        on_record = None if on_eval is None else (
            lambda r: on_eval(r) if "test_loss" in r else None)
        self.trainer = Trainer(self.model, self.objective, cfg.loop(), out_dir, seed=cfg.seed,
                               meta={"command": COMMAND,
                                     "app": {"config": dataclasses.asdict(cfg)}},
                               on_record=on_record)

    @property
    def step(self):
        return self.trainer.step

    @property
    def history(self):
        return [r for r in self.trainer.history if "test_loss" in r]

    def run(self):
        """Train until a budget is spent, the task is solved, or the loss diverges; return why."""
        reason = self.trainer.run()
        return f"diverged: {reason}" if self.trainer.nonfinite else reason

    def outcome(self):
        """What the run came to, as plain values."""
        tr, ob = self.trainer, self.objective
        last = self.history[-1] if self.history else {}
        return {"task": self.cfg.task, "length": self.cfg.length, "cell": self.cfg.cell,
                "clip": self.cfg.clip, "steps": tr.step, "elapsed_s": tr.elapsed,
                "solved": ob.solved_step is not None, "solved_step": ob.solved_step,
                "solved_elapsed_s": ob.solved_elapsed, "diverged": tr.nonfinite,
                "test_loss": last.get("test_loss"), "test_accuracy": last.get("test_accuracy"),
                "baseline": self.task.baseline, "threshold": self.task.threshold,
                "best_test_loss": min((h["test_loss"] for h in self.history), default=None),
                "diagnostics_s": ob.diag_seconds}


def load_task_run(run_dir):
    """``(model, cfg, meta)`` from a run directory of ``bptt task``."""
    params, meta = load_run(run_dir, COMMAND)
    with readable(os.path.join(run_dir, "checkpoint.npz")):
        cfg = TaskConfig(**meta["app"]["config"])
        model = build_task_model(cfg)
        model.load_state_dict(params)
    return model, cfg, meta


def diagnose_run(run_dir, batch=DIAGNOSE_BATCH, seed=0, out=None):
    """Gradient flow over time of a task run on a fresh batch: writes diagnostics.json, lag.png
    and (when the run recorded diagnostics while training) heatmap.png; returns the report."""
    positive_int("diagnose", "--batch", batch)
    model, cfg, meta = load_task_run(run_dir)
    task = Task(cfg.task, cfg.length)
    x, y = task.sample(batch, np.random.default_rng([seed, 3]))
    rep = diagnostics.diagnose(model, x, lambda out: task.loss(out, y))
    out = out or run_dir
    os.makedirs(out, exist_ok=True)
    training = _read_records(os.path.join(run_dir, "diagnostics.jsonl"))
    rep = {"run": os.path.abspath(run_dir), "task": cfg.task, "length": cfg.length,
           "cell": cfg.cell, "step": meta["step"], "batch_seed": seed, **rep,
           "training": [{"step": r["step"], "verdict": r["verdict"]} for r in training]}
    from ..checkpoint import write_text
    write_text(os.path.join(out, "diagnostics.json"), json.dumps(rep, indent=1))
    rep["figures"] = [diagnostics.plot_lag(rep, os.path.join(out, "lag.png"),
                                           title=f"{cfg.task} T={cfg.length}, {cfg.cell}, step "
                                                 f"{rep['step']}: {rep['verdict']['kind']}")]
    if training:
        rep["figures"].append(diagnostics.plot_heatmap(
            training, os.path.join(out, "heatmap.png"), title=f"{cfg.task} T={cfg.length}, "
                                                              f"{cfg.cell}"))
    return rep


def format_diagnosis(rep, batch):
    lines = [f"{rep['task']} T={rep['length']}, {rep['cell']}, after {rep['step']} steps; loss "
             f"{rep['loss']:.4g} on {batch} fresh sequences"]
    for name, shares in rep["saturation"].items():
        lines.append(f"  saturation {name}: " + ", ".join(f"{g} {v:.1%}"
                                                          for g, v in shares.items()))
    for name, blocks in rep["spectral"].items():
        lines.append(f"  {name}: " + ", ".join(f"{g} norm {b['norm']:.3g} radius "
                                               f"{b['radius']:.3g}" for g, b in blocks.items()))
    lines.append(f"verdict: {rep['verdict']['line']}")
    return "\n".join(lines)


def format_eval(record):
    acc = (f", accuracy {record['test_accuracy']:.3f}"
           if record.get("test_accuracy") is not None else "")
    train = "n/a" if record.get("train_loss") is None else f"{record['train_loss']:.4g}"
    norm = "n/a" if record.get("grad_norm") is None else f"{record['grad_norm']:.3g}"
    return (f"step {record['step']:6d}  train {train}  test {record['test_loss']:.4g} "
            f"({record['test_loss_over_baseline']:.3f} of the baseline{acc})  |grad| {norm}  "
            f"{record['elapsed_s']:.0f}s")


def _read_records(path):
    if not os.path.isfile(path):
        return []
    with open(path) as f:
        return [json.loads(line) for line in f if line.strip()]


def resume_config(saved, options):
    return TaskConfig(**resume_options(saved, options, RESUMABLE))


def run_command(cfg, out, *, resume=False, quiet=False, log=print):
    """``bptt task``: train (or continue) and print the evaluations and the outcome."""
    from ..checkpoint import load

    run = TaskRun(cfg, out, on_eval=None if quiet else (lambda r: log(format_eval(r))))
    if resume:
        run.trainer.restore(*load(os.path.join(out, "checkpoint.npz")))
        log(f"resuming {out} at step {run.step}")
    task = run.task
    clip = "off" if cfg.clip is None else f"{cfg.clip:g}"
    log(f"{cfg.task} T={cfg.length} ({task.steps} steps): {cfg.cell} {cfg.layers}x{cfg.hidden}, "
        f"batch {cfg.batch}, {cfg.optimizer} lr {cfg.lr:g}, clip {clip}, backend "
        f"{run.model.rnn.backend}; baseline loss "
        f"{task.baseline:.4g}, solved under {task.threshold:.4g}")
    t0 = time.perf_counter()
    reason = run.run()
    o = run.outcome()
    state = f"solved at step {o['solved_step']}" if o["solved"] else "not solved"
    if reason.startswith("solved"):
        state = ""
    test = "n/a" if o["test_loss"] is None else f"{o['test_loss']:.4g}"
    log(f"stopped: {reason}; {state}{'; ' if state else ''}test loss {test} after "
        f"{o['steps']} steps ({time.perf_counter() - t0:.0f}s); run saved in {out}/")
    return run
