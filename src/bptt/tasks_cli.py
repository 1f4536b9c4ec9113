"""The ``bptt task`` and ``bptt diagnose`` subcommands (registered by ``bptt.cli``).

    bptt task adding|copy|order --length T [--cell rnn|irnn|lstm|gru] [--steps N] [--minutes M]
              [--clip C] [--diagnose-every N] [--out DIR] ...
    bptt diagnose RUN_DIR [--batch B] [--seed S] [--out DIR]

Known failures raise ValueError, which ``bptt.cli.main`` prints as one line.
"""

import json
import os
import time

import numpy as np

from . import diagnostics
from .cli_options import add_options
from .data.tasks import TASKS, Task
from .task_trainer import CELLS, CLOCKS, TaskConfig, TaskTrainer, load_task_run

TASK_OPTIONS = {   # option -> (type, help); defaults come from TaskConfig, in one place
    "length": (int, "T: the distance to remember (copy: blanks; sequences are T + 20 long)"),
    "cell": (str, f"recurrent cell: {', '.join(CELLS)} (irnn: relu, identity init)"),
    "hidden": (int, "hidden units per layer"),
    "layers": (int, "stacked recurrent layers"),
    "batch": (int, "sequences per update, drawn fresh each time"),
    "optimizer": (str, "sgd, adam, adamw, rmsprop or adagrad"),
    "lr": (float, "learning rate"),
    "clip": (float, "clip the gradient's global norm at this value (0: off)"),
    "steps": (int, "update steps (the run stops at the first budget reached)"),
    "minutes": (float, "time budget in minutes of training"),
    "clock": (str, f"what --minutes counts: {' or '.join(CLOCKS)} (the process's CPU time)"),
    "eval_every": (int, "measure the test loss every N steps"),
    "eval_size": (int, "test sequences"),
    "diagnose_every": (int, "record gradient diagnostics every N steps (diagnostics.jsonl)"),
    "seed": (int, "seed of the model, the training batches and the test set"),
    "dtype": (str, "float32 or float64"),
    "backend": (str, "the cells' time loops: numpy, numba (compiled; needs numba) or auto"),
}
DIAGNOSE_BATCH = 64


def add_task_parsers(sub):
    """Add ``task`` and ``diagnose`` to the subcommands of ``bptt``."""
    defaults = TaskConfig()
    task = sub.add_parser("task", help="train on a long-range task: adding, copy or order",
                          description="Train on a synthetic long-range task (bptt.data.tasks): "
                          "the adding problem, copy memory, or temporal order.")
    task.add_argument("name", choices=list(TASKS), help="the task")
    add_options(task, TASK_OPTIONS, defaults)
    task.add_argument("--keep-going", action="store_true",
                      help="train on after the task is solved, to the end of the budget")
    task.add_argument("--out", help="run directory (default runs/task-NAME-T-CELL)")
    task.add_argument("--quiet", action="store_true", help="print only the outcome")
    task.set_defaults(func=task_cmd)

    diag = sub.add_parser("diagnose", help="gradient flow over time of a task run",
                          description="Per-step gradient norms, the gradient's norm against "
                          "the lag back from the loss, gate saturation, spectra of W_hh, and a "
                          "verdict (vanishing, exploding, healthy), on a fresh batch of the "
                          "run's task. Writes diagnostics.json, lag.png and, when the run "
                          "recorded diagnostics during training, heatmap.png.")
    diag.add_argument("run", metavar="RUN_DIR", help="a run directory of `bptt task`")
    diag.add_argument("--batch", type=int, default=DIAGNOSE_BATCH, help="sequences to diagnose "
                      f"(default {DIAGNOSE_BATCH})")
    diag.add_argument("--seed", type=int, default=0, help="seed of the batch (default 0)")
    diag.add_argument("--out", help="where to write (default RUN_DIR)")
    diag.set_defaults(func=diagnose_cmd)


def task_cmd(args):
    options = {k: getattr(args, k) for k in TASK_OPTIONS if getattr(args, k) is not None}
    if options.get("clip") == 0:
        options["clip"] = None
    elif "clip" in options and options["clip"] < 0:
        raise ValueError(f"--clip must be positive (0: off), got {options['clip']}")
    if "minutes" in options and "steps" not in options:
        options["steps"] = None                            # a time budget alone
    cfg = TaskConfig(task=args.name, stop_when_solved=not args.keep_going, **options)
    out = args.out or os.path.join("runs", f"task-{cfg.task}-{cfg.length}-{cfg.cell}")
    task = Task(cfg.task, cfg.length)

    def show(record):
        if not args.quiet:
            acc = (f", accuracy {record['test_accuracy']:.3f}" if "test_accuracy" in record
                   else "")
            print(f"step {record['step']:6d}  train {record['train_loss']:.4g}  test "
                  f"{record['test_loss']:.4g} ({record['test_loss_over_baseline']:.3f} of the "
                  f"baseline{acc})  |grad| {record['grad_norm']:.3g}  "
                  f"{record['elapsed_s']:.0f}s", flush=True)

    trainer = TaskTrainer(cfg, out, on_eval=show)
    clip = "off" if cfg.clip is None else f"{cfg.clip:g}"
    print(f"{cfg.task} T={cfg.length} ({task.steps} steps): {cfg.cell} {cfg.layers}x{cfg.hidden}, "
          f"batch {cfg.batch}, {cfg.optimizer} lr {cfg.lr:g}, clip {clip}; baseline loss "
          f"{task.baseline:.4g}, solved under {task.threshold:.4g}")
    t0 = time.perf_counter()
    reason = trainer.run()
    o = trainer.outcome()
    state = f"solved at step {o['solved_step']}" if o["solved"] else "not solved"
    if reason.startswith("solved"):
        state = ""
    test = "n/a" if o["test_loss"] is None else f"{o['test_loss']:.4g}"
    print(f"stopped: {reason}; {state}{'; ' if state else ''}test loss {test} after "
          f"{o['steps']} steps ({time.perf_counter() - t0:.0f}s); run saved in {out}/")
    return trainer


def diagnose_cmd(args):
    if args.batch < 1:
        raise ValueError(f"--batch must be a positive integer, got {args.batch}")
    model, cfg, meta = load_task_run(args.run)
    task = Task(cfg.task, cfg.length)
    x, y = task.sample(args.batch, np.random.default_rng([args.seed, 3]))
    rep = diagnostics.diagnose(model, x, lambda out: task.loss(out, y))
    out = args.out or args.run
    os.makedirs(out, exist_ok=True)
    training = _read_records(os.path.join(args.run, "diagnostics.jsonl"))
    rep = {"run": os.path.abspath(args.run), "task": cfg.task, "length": cfg.length,
           "cell": cfg.cell, "step": meta["outcome"]["steps"], "batch_seed": args.seed, **rep,
           "training": [{"step": r["step"], "verdict": r["verdict"]} for r in training]}
    with open(os.path.join(out, "diagnostics.json"), "w") as f:
        json.dump(rep, f, indent=1)
    figures = [diagnostics.plot_lag(rep, os.path.join(out, "lag.png"),
                                    title=f"{cfg.task} T={cfg.length}, {cfg.cell}, step "
                                          f"{rep['step']}: {rep['verdict']['kind']}")]
    if training:
        figures.append(diagnostics.plot_heatmap(training, os.path.join(out, "heatmap.png"),
                                                title=f"{cfg.task} T={cfg.length}, {cfg.cell}"))
    print(f"{cfg.task} T={cfg.length}, {cfg.cell}, after {rep['step']} steps; loss "
          f"{rep['loss']:.4g} on {args.batch} fresh sequences")
    for name, shares in rep["saturation"].items():
        print(f"  saturation {name}: " + ", ".join(f"{g} {v:.1%}" for g, v in shares.items()))
    for name, blocks in rep["spectral"].items():
        print(f"  {name}: " + ", ".join(f"{g} norm {b['norm']:.3g} radius {b['radius']:.3g}"
                                        for g, b in blocks.items()))
    print(f"verdict: {rep['verdict']['line']}")
    print(f"wrote {os.path.join(out, 'diagnostics.json')}, " + ", ".join(figures))
    return rep


def _read_records(path):
    if not os.path.isfile(path):
        return []
    with open(path) as f:
        return [json.loads(line) for line in f if line.strip()]
