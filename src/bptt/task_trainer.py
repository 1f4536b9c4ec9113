"""Training on the synthetic long-range tasks (``bptt.data.tasks``), full BPTT over each sequence.

Every update draws a fresh batch from the task's recipe; the test set is drawn once. The seeds:
the model from ``seed``, the training batches from ``default_rng([seed, 1])``, the test set
from ``default_rng([seed, 2])``, so one seed gives the same run anywhere. Gradients are those of
the mean loss over the batch, clipped by their global norm when ``clip`` is set (Pascanu et
al. 2013), then an optimizer step (Adam by default).

Every ``eval_every`` updates the test loss is measured; the run is *solved* at the first
evaluation whose test loss is under the task's threshold, and (``stop_when_solved``) ends there.
Budgets: ``steps`` updates and/or ``minutes`` of training time, whichever comes first; the time
counts updates only (not evaluations or diagnostics), on the wall clock or, with
``clock='cpu'``, the process's CPU time, which a machine shared with other jobs slows less.

A run directory holds ``metrics.jsonl`` (one line per evaluation), ``checkpoint.npz`` (the
parameters and, as metadata, the configurations and the outcome; ``bptt.checkpoint``, no pickle)
and, with ``diagnose_every``, ``diagnostics.jsonl``: one ``bptt.diagnostics.report`` of the
training batch every that many updates, taken before the update.

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

from . import checkpoint, diagnostics
from .clip import clip_grad_norm
from .data.tasks import TASKS, Task
from .layers import check_backend
from .model import Model
from .optim import build_optimizer

CELLS = {  # name -> Model's cell and options
    "rnn": ("rnn", {"nonlinearity": "tanh"}),
    "irnn": ("rnn", {"nonlinearity": "relu", "init": "identity"}),
    "lstm": ("lstm", {"forget_bias": 1.0}),
    "gru": ("gru", {}),
}
CLOCKS = {"wall": time.perf_counter, "cpu": time.process_time}
COPY_EMBED = 16   # embedding size of the copy task's 10 ids
EVAL_CHUNK = 128  # test sequences per forward pass: bounds the tape's memory


@dataclass
class TaskConfig:
    """A run on one task; the defaults of ``bptt task``."""

    task: str = "adding"
    length: int = 100
    cell: str = "lstm"
    hidden: int = 128
    layers: int = 1
    batch: int = 32
    optimizer: str = "adam"
    lr: float = 1e-3
    clip: float | None = 1.0       # global-norm clipping; None: off
    steps: int | None = 2000
    minutes: float | None = None   # training time budget; the run stops at the first budget hit
    clock: str = "wall"            # what `minutes` counts: wall time, or the process's CPU time
    eval_every: int = 100
    eval_size: int = 512           # test sequences
    stop_when_solved: bool = True
    diagnose_every: int | None = None
    seed: int = 0
    dtype: str = "float32"
    backend: str = "numpy"         # the cells' time loops: numpy, numba (compiled) or auto

    def __post_init__(self):
        if self.task not in TASKS:
            raise ValueError(f"task: expected one of {', '.join(TASKS)}, got {self.task!r}")
        if self.cell not in CELLS:
            raise ValueError(f"task: expected cell one of {', '.join(CELLS)}, got {self.cell!r}")
        Task(self.task, self.length)                      # checks the length
        for name in ("hidden", "layers", "batch", "eval_every", "eval_size"):
            _positive_int(name, getattr(self, name))
        for name in ("steps", "diagnose_every"):
            if getattr(self, name) is not None:
                _positive_int(name, getattr(self, name))
        if self.steps is None and self.minutes is None:
            raise ValueError("task: give a step budget (steps) or a time budget (minutes)")
        for name in ("lr", "minutes", "clip"):
            v = getattr(self, name)
            if v is not None and (isinstance(v, bool) or not isinstance(v, (int, float))
                                  or not (math.isfinite(v) and v > 0)):
                raise ValueError(f"task: expected {name} a positive number, got {v!r}")
        if self.dtype not in ("float32", "float64"):
            raise ValueError(f"task: expected dtype float32 or float64, got {self.dtype!r}")
        check_backend(self.backend, "task")
        if self.clock not in CLOCKS:
            raise ValueError(f"task: expected clock one of {', '.join(CLOCKS)}, got "
                             f"{self.clock!r}")


def build_task_model(cfg):
    """The model a task needs: its input layer and head, the configured cell."""
    task = Task(cfg.task, cfg.length)
    cell, options = CELLS[cfg.cell]
    embed = COPY_EMBED if task.input == "embedding" else None
    return Model(task.input_size, cfg.hidden, task.output_size, cell=cell, input=task.input,
                 embed_size=embed, num_layers=cfg.layers, head=task.head, dtype=cfg.dtype,
                 seed=cfg.seed, backend=cfg.backend, **options)


def evaluate(model, task, x, y):
    """Test loss (and accuracy for the classification tasks) over x, y, in chunks."""
    B = y.shape[1] if task.head == "step" else y.shape[0]
    total, correct = 0.0, 0.0
    for lo in range(0, B, EVAL_CHUNK):
        hi = min(B, lo + EVAL_CHUNK)
        xb = x[:, lo:hi]
        yb = y[:, lo:hi] if task.head == "step" else y[lo:hi]
        out, _, _ = model.forward(xb)
        total += task.loss(out, yb)[0] * (hi - lo)
        acc = task.accuracy(out, yb)
        correct += 0.0 if acc is None else acc * (hi - lo)
    return total / B, (None if task.name == "adding" else correct / B)


class TaskTrainer:
    """Trains ``build_task_model(cfg)`` on ``cfg.task``; writes to ``out_dir`` (None: nowhere)."""

    def __init__(self, cfg, out_dir=None, on_eval=None):
        self.cfg = cfg
        self.task = Task(cfg.task, cfg.length)
        self.model = build_task_model(cfg)
        self.optimizer = build_optimizer(cfg.optimizer, self.model.params, lr=cfg.lr)
        self.data_rng = np.random.default_rng([cfg.seed, 1])
        self.test_x, self.test_y = self.task.sample(cfg.eval_size, np.random.default_rng(
            [cfg.seed, 2]))
        self.out_dir = None if out_dir is None else os.fspath(out_dir)
        self.on_eval = on_eval
        self.step = 0
        self.elapsed = 0.0          # seconds spent in updates (evaluations and diagnostics not)
        self.clock = CLOCKS[cfg.clock]
        self.diag_seconds = 0.0     # seconds spent in diagnostics
        self.solved_step = None
        self.solved_elapsed = None
        self.diverged = False
        self.history = []           # one dict per evaluation

    def train_step(self, diagnose=False):
        """One update on a fresh batch; return (loss, gradient norm before clipping, report)."""
        x, y = self.task.sample(self.cfg.batch, self.data_rng)
        with np.errstate(over="ignore", invalid="ignore"):  # divergence is reported, not warned
            out, _, tape = self.model.forward(x)
            loss, dout = self.task.loss(out, y)
            rep = None
            if diagnose:
                t0 = self.clock()
                rep = diagnostics.report(self.model, tape, dout, loss=loss)
                self.diag_seconds += self.clock() - t0
            _, grads = self.model.backward(dout, tape)
            norm = math.sqrt(sum(float(np.vdot(g, g)) for g in (
                g.ravel().astype(np.float64, copy=False) for g in grads.values())))
        if not (math.isfinite(loss) and math.isfinite(norm)):
            return loss, norm, rep
        if self.cfg.clip is not None:
            clip_grad_norm(grads, self.cfg.clip)
        self.optimizer.step(grads)
        self.step += 1
        return loss, norm, rep

    def run(self):
        """Train until a budget is spent, the task is solved, or the loss diverges; return why."""
        cfg = self.cfg
        metrics = diag_log = None
        if self.out_dir is not None:
            os.makedirs(self.out_dir, exist_ok=True)
            metrics = open(os.path.join(self.out_dir, "metrics.jsonl"), "w")
            if cfg.diagnose_every:
                diag_log = open(os.path.join(self.out_dir, "diagnostics.jsonl"), "w")
        losses, norms, reason = [], [], None
        try:
            while reason is None:
                diagnose = bool(cfg.diagnose_every) and self.step % cfg.diagnose_every == 0
                t0, d0 = self.clock(), self.diag_seconds
                loss, norm, rep = self.train_step(diagnose)
                self.elapsed += self.clock() - t0 - (self.diag_seconds - d0)
                if rep is not None and diag_log is not None:
                    diag_log.write(json.dumps({"step": self.step - 1, **rep}) + "\n")
                    diag_log.flush()
                if not (math.isfinite(loss) and math.isfinite(norm)):
                    self.diverged = True
                    reason = f"diverged: the loss or gradient is not finite at step {self.step}"
                    break
                losses.append(loss)
                norms.append(norm)
                if self.step % cfg.eval_every == 0:
                    record = self._evaluate(losses, norms)
                    losses, norms = [], []
                    if metrics is not None:
                        metrics.write(json.dumps(record) + "\n")
                        metrics.flush()
                    if record["solved"] and self.solved_step is None:
                        self.solved_step, self.solved_elapsed = self.step, self.elapsed
                        if cfg.stop_when_solved:
                            reason = f"solved at step {self.step}"
                if reason is None:
                    if cfg.steps is not None and self.step >= cfg.steps:
                        reason = f"reached {cfg.steps} steps"
                    elif cfg.minutes is not None and self.elapsed >= 60 * cfg.minutes:
                        reason = f"reached the time budget of {cfg.minutes:g} minutes"
            if losses and not self.diverged:   # a last evaluation where the budget cut in
                record = self._evaluate(losses, norms)
                if metrics is not None:
                    metrics.write(json.dumps(record) + "\n")
                if record["solved"] and self.solved_step is None:
                    self.solved_step, self.solved_elapsed = self.step, self.elapsed
        finally:
            for f in (metrics, diag_log):
                if f is not None:
                    f.close()
        self.reason = reason
        if self.out_dir is not None:
            self.save()
        return reason

    def _evaluate(self, losses, norms):
        test_loss, test_acc = evaluate(self.model, self.task, self.test_x, self.test_y)
        record = {"step": self.step, "train_loss": float(np.mean(losses)),
                  "grad_norm": float(np.mean(norms)), "test_loss": test_loss,
                  "test_loss_over_baseline": test_loss / self.task.baseline,
                  "solved": bool(test_loss < self.task.threshold),
                  "elapsed_s": self.elapsed}
        if test_acc is not None:
            record["test_accuracy"] = test_acc
        self.history.append(record)
        if self.on_eval is not None:
            self.on_eval(record)
        return record

    def outcome(self):
        """What the run came to, as plain values."""
        last = self.history[-1] if self.history else {}
        return {"task": self.cfg.task, "length": self.cfg.length, "cell": self.cfg.cell,
                "clip": self.cfg.clip, "steps": self.step, "elapsed_s": self.elapsed,
                "solved": self.solved_step is not None, "solved_step": self.solved_step,
                "solved_elapsed_s": self.solved_elapsed, "diverged": self.diverged,
                "test_loss": last.get("test_loss"), "test_accuracy": last.get("test_accuracy"),
                "baseline": self.task.baseline, "threshold": self.task.threshold,
                "best_test_loss": min((h["test_loss"] for h in self.history), default=None),
                "diagnostics_s": self.diag_seconds}

    def save(self):
        arrays = {f"model/{k}": v for k, v in self.model.params.items()}
        meta = {"format": "bptt-task-run-1", "config": dataclasses.asdict(self.cfg),
                "model": self.model.config, "outcome": _json_safe(self.outcome()),
                "reason": getattr(self, "reason", None)}
        checkpoint.save(os.path.join(self.out_dir, "checkpoint.npz"), arrays, meta)


def load_task_run(run_dir):
    """``(model, cfg, meta)`` from a run directory written by ``TaskTrainer``."""
    arrays, meta = checkpoint.load(os.path.join(os.fspath(run_dir), "checkpoint.npz"))
    if meta.get("format") != "bptt-task-run-1":
        raise ValueError(f"{run_dir}: not a task run (checkpoint format "
                         f"{meta.get('format')!r}); `bptt diagnose` reads runs of `bptt task`")
    cfg = TaskConfig(**meta["config"])
    model = build_task_model(cfg)
    model.load_state_dict({k[6:]: v for k, v in arrays.items() if k.startswith("model/")})
    return model, cfg, meta


def _positive_int(name, value):
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"task: expected {name} a positive integer, got {value!r}")


def _json_safe(d):
    return {k: (None if isinstance(v, float) and not math.isfinite(v) else v) for k, v in d.items()}
