"""One training loop for every application: budgets, evaluation, early stopping, schedules,
clipping, metrics, the progress bar, the plot, and one checkpoint format that resumes bit for bit.

What differs between applications is an *objective*, passed in: it owns the data (its position
and its random generators), the loss, and the evaluation. ``bptt.objectives`` has the three the
applications use: a TBPTT stream (the char-LM), fresh batches drawn from a recipe (the long-range
tasks), and epochs over a fixed set of sequences (every supervised application). An objective is
any object with

- ``step(model, rng) -> (loss, grads, weight, info)``: forward and backward on the next batch
  (``rng`` draws the dropout masks); ``weight`` counts what the loss averages over (the batch's
  examples), ``info`` may hold ``{"excluded_s": seconds not to count, "logs": {name: record}}``;
- ``epoch``: passes completed over the training data (a stream of fresh batches: 0);
- ``evaluate(model) -> dict`` of metrics, and ``better(new, best) -> bool`` (``best`` None at
  first): which evaluation is the best so far;
- ``after_eval(record) -> str | None``: a reason to stop (a task solved), or None;
- ``state_dict() -> (arrays, meta)`` and ``load_state_dict(arrays, meta)``: its position;
- ``plot_spec``: what the loss figure shows (see ``plot``).

One update: ``loss, grads = objective.step(model, rng)``; frozen parameters dropped; a
non-finite loss or gradient stops the run (``on_nonfinite="stop"``: nothing is written after
it, so the last checkpoint is the last good state) or skips the update (``"skip"``); the
gradient clipped by its global norm (or by value); the learning rate from the schedule; the
optimizer's step. Budgets (``steps``, ``minutes`` of update time, ``epochs``) are checked
*before* each update, so a finished run resumed with the same budget does nothing.

``RUN_DIR/checkpoint.npz`` (``bptt.checkpoint``: atomic, no pickle) holds the parameters
(``model/``), the best evaluation's parameters (``best/``, with ``keep_best``), the optimizer's
state (``optim/``), the objective's arrays (``data/``), and as metadata the configurations, the
step, the update time, every random generator's state, the clipping record, the early-stopping
record and the history. It is written before the first update, every ``checkpoint_every``
updates (and after every evaluation when that is None) and at the end; ``metrics.jsonl`` gets one
line per log or evaluation point, and on resume it is cut back to the checkpoint's step, so a
resumed run's files read as if it had never stopped.

Data-parallel runs (``torchrun``; ``bptt.distributed``, docs/distributed.md): with a ``comm``
(by default taken from the environment torchrun sets; None without it) every rank runs this same
loop. The objective takes its share of every global batch (``objective.shard``); rank 0's
parameters are broadcast when the run starts; the gradients are averaged over the ranks, weighted
by their examples, right after ``objective.step`` and before the non-finite check, the clipping and
the optimizer, so every rank takes the same update; their parameters are compared every
``comm.check_every`` updates. Every rank evaluates (the stream: its share) and takes rank 0's
metrics, and a time budget counts the slowest rank's time, so that all take the same decisions.
Only rank 0 writes files, shows the progress bar and calls ``on_record``; the checkpoint holds the
objective's state gathered from every rank (a stream's carried state over all B streams) and each
rank's dropout generator.
"""

import contextlib
import copy
import dataclasses
import json
import math
import os
import time
from dataclasses import dataclass

import numpy as np

from . import checkpoint, distributed
from .clip import ClipLog, clip_grad_norm, clip_grad_value
from .optim import Schedule, build_optimizer

FORMAT = "bptt-run-2"
CLOCKS = {"wall": time.perf_counter, "cpu": time.process_time}
SCHEDULES = ("constant", "cosine", "step")
NONFINITE = ("stop", "skip")


class NonFiniteError(ArithmeticError):
    """A loss or gradient that is not finite, with ``on_nonfinite="stop"``."""


@dataclass
class LoopConfig:
    """How the one loop runs; each application fills it from its own configuration.

    ``schedule_steps``: the updates a cosine or step schedule spans (None: ``steps``).
    ``eval_every``: updates between evaluations (None: at the end of each epoch).
    ``log_every``: updates between metrics lines (None: only at evaluations).
    ``checkpoint_every``: updates between checkpoints (None: after each evaluation).
    ``final_eval``: evaluate once more at the end when the last update was not evaluated.
    ``keep_best``: the model ends holding the parameters of its best evaluation.
    """

    optimizer: str = "adam"
    lr: float = 1e-3
    weight_decay: float = 0.0
    schedule: str = "constant"
    warmup: int = 0
    schedule_steps: int | None = None
    clip: float | None = 5.0
    clip_mode: str = "norm"
    steps: int | None = None
    minutes: float | None = None
    epochs: int | None = None
    clock: str = "wall"
    eval_every: int | None = None
    log_every: int | None = None
    checkpoint_every: int | None = None
    final_eval: bool = False
    patience: int | None = None
    keep_best: bool = False
    freeze: tuple = ()
    on_nonfinite: str = "stop"
    progress: bool = False
    progress_label: str = ""

    def __post_init__(self):
        who = "trainer"
        for name in ("warmup",):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, (int, np.integer)) or v < 0:
                raise ValueError(f"{who}: expected {name} an integer >= 0, got {v!r}")
        for name in ("steps", "epochs", "eval_every", "log_every", "checkpoint_every",
                     "patience", "schedule_steps"):
            v = getattr(self, name)
            if v is not None and (isinstance(v, bool) or not isinstance(v, (int, np.integer))
                                  or v < 1):
                raise ValueError(f"{who}: expected {name} a positive integer, got {v!r}")
        for name in ("minutes", "clip"):
            v = getattr(self, name)
            if v is not None and (isinstance(v, bool) or not isinstance(v, (int, float))
                                  or not (math.isfinite(v) and v > 0)):
                raise ValueError(f"{who}: expected {name} a positive number, got {v!r}")
        lr = self.lr
        if isinstance(lr, bool) or not isinstance(lr, (int, float)) or not (
                math.isfinite(lr) and lr >= 0):
            raise ValueError(f"{who}: expected lr a number >= 0, got {lr!r}")
        wd = self.weight_decay
        if isinstance(wd, bool) or not isinstance(wd, (int, float)) or not (
                math.isfinite(wd) and wd >= 0):
            raise ValueError(f"{who}: expected weight_decay a number >= 0, got {wd!r}")
        if self.steps is None and self.minutes is None and self.epochs is None:
            raise ValueError(f"{who}: give a step budget (steps), a time budget (minutes) or a "
                             f"number of passes (epochs)")
        for name, allowed in (("schedule", SCHEDULES), ("clip_mode", ("norm", "value")),
                              ("clock", tuple(CLOCKS)), ("on_nonfinite", NONFINITE)):
            if getattr(self, name) not in allowed:
                raise ValueError(f"{who}: expected {name} one of {', '.join(allowed)}, got "
                                 f"{getattr(self, name)!r}")
        if isinstance(self.freeze, str) or not all(isinstance(k, str) for k in self.freeze):
            raise ValueError(f"{who}: expected freeze a tuple of parameter names, got "
                             f"{self.freeze!r}")
        self.freeze = tuple(self.freeze)

    def build_schedule(self, steps_per_epoch=None):
        total = self.schedule_steps or self.steps
        if total is None and self.epochs is not None and steps_per_epoch:
            total = self.epochs * steps_per_epoch
        if self.schedule == "constant":
            return Schedule("constant", self.lr, warmup=self.warmup)
        if total is None:
            raise ValueError(f"trainer: the {self.schedule} schedule needs a step budget "
                             f"(steps) or a number of epochs")
        if self.schedule == "cosine":
            return Schedule("cosine", self.lr, warmup=self.warmup, total_steps=max(1, total))
        return Schedule("step", self.lr, warmup=self.warmup, step_size=max(1, total // 3))


class Trainer:
    """Trains ``model`` on ``objective`` as ``loop`` (a LoopConfig) says; writes into ``out_dir``
    (None: no files). ``meta`` is stored in every checkpoint (the application's configuration,
    its data's identity). ``rng`` draws dropout masks (default: ``default_rng([seed, 1])``).
    ``on_record`` is called with every metrics record (for a command's printout). ``comm``: a
    ``bptt.distributed.Comm`` for data-parallel training (None: torchrun's, where it launched
    this process; else one process); the objective is sharded here."""

    def __init__(self, model, objective, loop, out_dir=None, *, seed=0, rng=None, meta=None,
                 on_record=None, comm=None):
        if not isinstance(loop, LoopConfig):
            raise TypeError(f"trainer: expected loop a LoopConfig, got {type(loop).__name__}")
        unknown = sorted(set(loop.freeze) - set(model.params))
        if unknown:
            raise ValueError(f"trainer: expected freeze to name parameters of the model, got "
                             f"unknown {unknown}")
        self.model, self.objective, self.loop = model, objective, loop
        self.out_dir = None if out_dir is None else os.fspath(out_dir)
        self.meta = dict(meta or {})
        self.on_record = on_record
        self.trained = {k: v for k, v in model.params.items() if k not in loop.freeze}
        options = {} if loop.weight_decay == 0 else {"weight_decay": loop.weight_decay}
        self.optimizer = build_optimizer(loop.optimizer, self.trained, lr=loop.lr, **options)
        self.schedule = loop.build_schedule(getattr(objective, "steps_per_epoch", None))
        self.rng = np.random.default_rng([seed, 1]) if rng is None else rng
        # ---- data parallel: this rank's share of every batch and its own dropout masks
        self.comm = distributed.from_env() if comm is None else comm
        self.main = self.comm is None or self.comm.is_main     # the rank that writes
        if self.comm is not None:
            if not hasattr(objective, "shard"):
                raise TypeError(f"trainer: {type(objective).__name__} cannot be split across "
                                f"processes (it has no shard method)")
            objective.shard(self.comm.rank, self.comm.world, self.comm.sum)
            if self.comm.rank:
                self.rng = _rank_rng(self.rng, self.comm.rank)
        self.clock = CLOCKS[loop.clock]
        self.clip_log = ClipLog()
        self.step = 0
        self.elapsed = 0.0            # seconds of updates (evaluations and checkpoints not)
        self.history = []             # every metrics record
        self.best = None              # metrics of the best evaluation
        self.best_step = None
        self.best_params = None
        self.bad_evals = 0
        self.skipped = 0              # updates skipped for a non-finite value
        self.stop_reason = None
        self.finished = False
        self.nonfinite = False        # stopped by a non-finite loss or gradient
        self._window = _Window()
        self._pending_logs = None

    # ------------------------------------------------------------------ one update
    def train_step(self):
        """One update; return the batch's loss (an update skipped for a non-finite value
        returns it too)."""
        loop = self.loop
        t0 = self.clock()
        loss, grads, weight, info = self.objective.step(self.model, self.rng)
        self._pending_logs = info.get("logs")
        grads = {k: grads[k] for k in self.trained}       # frozen: no step, no clipping share
        if self.comm is not None:           # the global batch's mean: every rank steps alike
            loss, grads, weight = self.comm.average(loss, grads, weight)
        norm = _global_norm(grads)
        bad = None if math.isfinite(loss) else "the loss"
        if bad is None and not math.isfinite(norm):
            bad = "the gradient (its norm)"
        self.step += 1
        if bad is not None:
            self.elapsed += self.clock() - t0 - info.get("excluded_s", 0.0)
            if loop.on_nonfinite == "stop":
                self.step -= 1
                raise NonFiniteError(f"{bad} is not finite ({loss if bad == 'the loss' else norm}"
                                     f") at step {self.step + 1}; the last checkpoint is the "
                                     f"last good state")
            self.skipped += 1
            self._window.add(math.nan, 0.0, math.nan)
            return loss
        if loop.clip is not None:
            clip = clip_grad_norm if loop.clip_mode == "norm" else clip_grad_value
            self.clip_log.add(clip(grads, loop.clip))
        self.optimizer.lr = self.schedule(self.step - 1)
        self.optimizer.step(grads)
        self.elapsed += self.clock() - t0 - info.get("excluded_s", 0.0)
        self._window.add(loss, weight, norm)
        return loss

    # ------------------------------------------------------------------ the loop
    def run(self):
        """Train until a budget is spent, early stopping or the objective stops it; return
        why. The model ends holding the best evaluation's parameters with ``keep_best``."""
        comm = self.comm
        if comm is not None:                # every rank from rank 0's parameters
            comm.broadcast_params(self.model.params)
        if self.out_dir is not None:
            if self.main:
                os.makedirs(self.out_dir, exist_ok=True)
                self._cut_logs()
            first = self.step == 0 and not os.path.exists(self.checkpoint_path)
            if comm is not None:
                first = comm.broadcast_object(first)
            if first:
                self.save()                                 # a kill before any update resumes
        with _blas_for(self.model):
            return self._run()

    def _run(self):
        loop, comm = self.loop, self.comm
        bar = self._progress_bar()
        last_epoch = self.objective.epoch
        reason = self.stop_reason if self.finished else None
        try:
            while reason is None:
                if comm is not None and loop.minutes is not None:
                    self.elapsed = comm.max(self.elapsed)   # the slowest rank's time
                reason = self._budget_spent()
                if reason is not None:
                    break
                self._pending_logs = None
                try:
                    self.train_step()
                except NonFiniteError as e:
                    self.nonfinite, reason = True, str(e)
                    self._write_side_logs(self._pending_logs)
                    break
                self._write_side_logs(self._pending_logs)
                if comm is not None and self.step % comm.check_every == 0:
                    comm.check_params(self.model.params, self.step)
                epoch_ended = self.objective.epoch > last_epoch
                last_epoch = self.objective.epoch
                record = None
                if loop.log_every and self.step % loop.log_every == 0:
                    record = self._train_record()
                due = (self.step % loop.eval_every == 0) if loop.eval_every else epoch_ended
                if due:
                    record = record or self._train_record()
                    reason = self._evaluate(record)
                if record is not None:
                    self._emit(record)
                    if bar is not None:
                        bar.set_postfix(self.objective.postfix(record)
                                        if hasattr(self.objective, "postfix") else {})
                if bar is not None:
                    self._advance(bar)
                every = loop.checkpoint_every
                if self.out_dir is not None and reason is None and (
                        (every and self.step % every == 0) or (every is None and due)):
                    self.save()
            if loop.final_eval and self._window.n and self.step > 0 and not self.nonfinite:
                record = self._train_record()
                reason = self._evaluate(record) or reason
                self._emit(record)
        finally:
            if bar is not None:
                bar.close()
        self.stop_reason, self.finished = reason, True
        if self.out_dir is not None:
            if not self.nonfinite:        # the last checkpoint stays the last good state
                self.save()
            if self.main:
                self.plot()
        if loop.keep_best and self.best_params is not None:
            for k, v in self.best_params.items():
                self.model.params[k][...] = v
        return reason

    def _budget_spent(self):
        loop = self.loop
        if loop.steps is not None and self.step >= loop.steps:
            return f"reached {loop.steps} steps"
        if loop.minutes is not None and self.elapsed >= 60 * loop.minutes:
            return f"reached the time budget of {loop.minutes:g} minutes"
        if loop.epochs is not None and self.objective.epoch >= loop.epochs:
            return f"completed {loop.epochs} passes over the training data"
        return None

    def _train_record(self):
        w = self._window
        record = {"step": self.step, "epoch": self.objective.epoch, "lr": self.optimizer.lr,
                  "elapsed_s": self.elapsed}
        if w.n:
            seconds = time.perf_counter() - w.t0
            record.update(train_loss=w.mean_loss(), grad_norm=w.mean_norm(),
                          steps_per_s=w.n / max(seconds, 1e-9), window_s=seconds)
        if self.loop.clip is not None:
            record["clip_rate"] = self.clip_log.clip_rate if self.clip_log.steps else 0.0
        if self.skipped:
            record["skipped"] = self.skipped
        self._window = _Window()
        return record

    def _evaluate(self, record):
        metrics = self.objective.evaluate(self.model)
        if self.comm is not None:           # rank 0's: every rank takes the same decisions
            metrics = self.comm.broadcast_object(metrics)
        record.update(metrics)
        if self.objective.better(metrics, self.best):
            self.best, self.best_step, self.bad_evals = metrics, self.step, 0
            if self.loop.keep_best:
                self.best_params = self.model.state_dict()
        else:
            self.bad_evals += 1
        reason = self.objective.after_eval(record)
        if reason is None and self.loop.patience is not None and \
                self.bad_evals >= self.loop.patience:
            reason = (f"early stop: no better validation score for {self.bad_evals} "
                      f"evaluations")
        return reason

    def _emit(self, record):
        if hasattr(self.objective, "annotate"):
            self.objective.annotate(record)
        record = _json_safe(record)
        self.history.append(record)
        if self.out_dir is not None and self.main:
            _append(os.path.join(self.out_dir, "metrics.jsonl"), record)
        if self.on_record is not None and self.main:
            self.on_record(record)

    def _write_side_logs(self, logs):
        if not logs or self.out_dir is None or not self.main:
            return
        for name, rec in logs.items():
            _append(os.path.join(self.out_dir, f"{name}.jsonl"), {"step": self.step - 1, **rec})

    def _cut_logs(self):
        """Keep the lines of every ``*.jsonl`` up to this trainer's step: a resumed run's logs
        read as if it had never stopped (lines written after the last checkpoint go)."""
        for name in sorted(os.listdir(self.out_dir)):
            if not name.endswith(".jsonl"):
                continue
            path = os.path.join(self.out_dir, name)
            with open(path) as f:
                lines = f.read().splitlines()
            keep = [s for s in lines if s.strip() and _line_step(s) is not None and
                    _line_step(s) <= self.step - (name != "metrics.jsonl")]
            if keep != lines:
                checkpoint.write_text(path, "".join(s + "\n" for s in keep))

    # ------------------------------------------------------------------ progress
    def _progress_bar(self):
        if not self.loop.progress or not self.main:
            return None
        try:
            from tqdm import tqdm
        except ImportError:
            return None
        loop, desc = self.loop, self.loop.progress_label or None
        if loop.steps is None and loop.minutes is not None:
            return tqdm(total=round(60 * loop.minutes), initial=min(round(self.elapsed),
                        round(60 * loop.minutes)), unit="s", dynamic_ncols=True, desc=desc,
                        bar_format="{l_bar}{bar}| {n:.0f}/{total}s [{elapsed}<{remaining}"
                                   "{postfix}]")
        return tqdm(total=loop.steps, initial=self.step, unit="step", dynamic_ncols=True,
                    desc=desc)

    def _advance(self, bar):
        loop = self.loop
        if loop.steps is None and loop.minutes is not None:
            bar.update(min(self.elapsed, 60 * loop.minutes) - bar.n)
        else:
            bar.update(1)

    # ------------------------------------------------------------------ checkpoints
    @property
    def checkpoint_path(self):
        return os.path.join(self.out_dir, "checkpoint.npz")

    def save(self):
        """Write the checkpoint (with a comm: every rank calls it, rank 0 writes)."""
        data_arrays, data_meta = self.objective.state_dict()
        ranks = None
        if self.comm is not None:           # the per-rank state: dropout masks, stream columns
            per_rank = hasattr(self.objective, "gather_state")
            shards = self.comm.gather_objects((self.rng.bit_generator.state,
                                               data_arrays if per_rank else None))
            if not self.main:
                return
            ranks = {"world": self.comm.world, "rng": [rng for rng, _ in shards]}
            if per_rank:
                data_arrays = self.objective.gather_state([a for _, a in shards])
        arrays = {f"model/{k}": v for k, v in self.model.params.items()}
        if self.best_params is not None:
            arrays.update({f"best/{k}": v for k, v in self.best_params.items()})
        opt = self.optimizer.state_dict()
        arrays.update({f"optim/{k}": v for k, v in opt.items() if isinstance(v, np.ndarray)})
        arrays.update({f"data/{k}": v for k, v in data_arrays.items()})
        meta = {
            **self.meta, "format": FORMAT, "loop": _json_safe(dataclasses.asdict(self.loop)),
            "model": self.model.config, "step": self.step, "elapsed_s": self.elapsed,
            "optimizer": {k: v for k, v in opt.items() if not isinstance(v, np.ndarray)},
            "rng": self.rng.bit_generator.state, "clip_log": self.clip_log.state_dict(),
            "best": self.best, "best_step": self.best_step, "bad_evals": self.bad_evals,
            "skipped": self.skipped, "history": self.history, "data": data_meta,
            "finished": self.finished, "stop_reason": self.stop_reason,
            "window": self._window.state_dict(),
            "backend": resolved_backend(self.model),
        }
        if ranks is not None:
            meta["ranks"] = ranks
        try:
            checkpoint.save(self.checkpoint_path, arrays, meta)
        except OSError as e:
            raise OSError(e.errno, f"could not write the checkpoint {self.checkpoint_path} "
                          f"({e.strerror or e}); the previous checkpoint is intact") from None

    def restore(self, arrays, meta):
        """Continue the run saved in ``arrays, meta`` (``checkpoint.load``'s result)."""
        where = self.checkpoint_path if self.out_dir else "the checkpoint"
        check_run(meta, self.meta.get("command"), where)
        with readable(where):
            self._restore(arrays, meta)

    def _restore(self, arrays, meta):
        self.model.load_state_dict(_prefixed(arrays, "model/"))
        best = _prefixed(arrays, "best/")
        self.best_params = best or None
        opt = dict(meta["optimizer"])
        opt.update(_prefixed(arrays, "optim/"))
        self.optimizer.load_state_dict(opt)
        self.objective.load_state_dict(_prefixed(arrays, "data/"), meta["data"])
        self.rng.bit_generator.state = meta["rng"]
        if self.comm is not None and self.comm.rank:    # this rank's own dropout generator
            ranks = meta.get("ranks") or {"world": 1}
            if ranks["world"] == self.comm.world:
                self.rng.bit_generator.state = ranks["rng"][self.comm.rank]
            else:                           # another world size: a fresh one, from rank 0's
                self.rng = _rank_rng(self.rng, self.comm.rank, meta["step"])
        self.clip_log.load_state_dict(meta["clip_log"])
        self.step, self.elapsed = meta["step"], meta["elapsed_s"]
        self.best, self.best_step = meta["best"], meta["best_step"]
        self.bad_evals, self.skipped = meta["bad_evals"], meta["skipped"]
        self.history = list(meta["history"])
        self.finished, self.stop_reason = meta["finished"], meta["stop_reason"]
        self._window.load_state_dict(meta["window"])
        if self.finished:           # a larger budget (or patience) continues a finished run
            self.finished = (self._budget_spent() is not None or
                             self.bad_evals >= (self.loop.patience or math.inf))
            self.stop_reason = self.stop_reason if self.finished else None

    # ------------------------------------------------------------------ the figure
    def plot(self, path=None):
        """The training loss and the evaluations against the step, as ``loss.png``."""
        return plot_history(self.history, path or os.path.join(self.out_dir, "loss.png"),
                            getattr(self.objective, "plot_spec", {}))


@contextlib.contextmanager
def readable(where):
    """Turn what a hand-edited or incomplete checkpoint makes the reader trip on (a missing key,
    a value of the wrong type or shape) into one clear CheckpointError naming the file."""
    try:
        yield
    except checkpoint.CheckpointError:
        raise
    except (KeyError, TypeError, ValueError, IndexError, AttributeError) as e:
        what = f"missing {e}" if isinstance(e, KeyError) else str(e)
        raise checkpoint.CheckpointError(f"{where}: the checkpoint's metadata is incomplete or "
                                         f"was edited ({what}); nothing was changed") from None


def _blas_for(model):
    """On the native backend, NumPy's BLAS on one thread while the run trains (see
    ``bptt.native.one_blas_thread``); nothing to do on NumPy's."""
    if resolved_backend(model) == "native":
        from .native import one_blas_thread
        return one_blas_thread()
    return contextlib.nullcontext()


def resolved_backend(model):
    """The time loops a model's layers run on ('numpy' or 'native'), whatever it was asked."""
    for part in ("rnn", "encoder"):
        layer = getattr(model, part, None)
        if layer is not None and hasattr(layer, "backend"):
            return layer.backend
    return None


def check_run(meta, command, where):
    """Errors at the door for a checkpoint that is not a run of ``command`` in this format."""
    fmt = meta.get("format")
    if fmt != FORMAT:
        raise checkpoint.CheckpointError(
            f"{where}: not a run of this version of bptt (checkpoint format {fmt!r}, expected "
            f"{FORMAT!r})")
    if command is not None and meta.get("command") != command:
        raise checkpoint.CheckpointError(
            f"{where}: a run of `bptt {meta.get('command')}`, not of `bptt {command}`")


def run_checkpoints(run_dir):
    """The checkpoints in ``run_dir`` and the model folders below it (an ensemble's members, a
    cross-validation's folds), in order."""
    import glob
    return sorted(glob.glob(os.path.join(glob.escape(os.fspath(run_dir)), "**",
                                         "checkpoint.npz"), recursive=True))


def stored_app(run_dir, command, name=None, out=None):
    """What a run of ``command`` (an application ``name`` of it) stored of itself in its
    checkpoints: ``meta["app"]``, for ``--resume``. ``out``, where given, must be ``run_dir``."""
    from .config import ConfigError, absolute
    if out is not None and absolute(out) != absolute(run_dir):
        raise ConfigError(f"--out: a resumed run stays in its own directory {run_dir}; drop "
                          f"--out (or give the same path)")
    paths = run_checkpoints(run_dir)
    if not paths:
        raise ConfigError(f"--resume: no checkpoint in {run_dir}")
    _, meta = load_run(os.path.dirname(paths[0]), command)
    with readable(paths[0]):
        app = meta["app"]
        app["config"]
    if name is not None and app.get("name") != name:
        raise ConfigError(f"--resume: {paths[0]} is not a run of `bptt train {name}`")
    return app


def load_run(run_dir, command=None, *, best=True):
    """``(arrays of the model's parameters, meta)`` of a run directory: the best evaluation's
    parameters where the run kept them (``best``), else the last ones."""
    path = os.path.join(os.fspath(run_dir), "checkpoint.npz")
    arrays, meta = checkpoint.load(path)
    check_run(meta, command, path)
    params = _prefixed(arrays, "best/") if best else {}
    return params or _prefixed(arrays, "model/"), meta


def plot_history(history, path, spec=None):
    """Lines of ``history`` records against ``spec['x']`` (default ``step``): ``spec['lines']``
    is a list of (key, label) (default the training loss and every ``valid_``/``test_`` loss),
    ``spec['ylabel']``, ``spec['log']`` a log scale. Needs matplotlib; None without it."""
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return None
    spec = dict(spec or {})
    x_key = spec.get("x", "step")
    lines = spec.get("lines") or [("train_loss", "training loss")] + sorted(
        {(k, k.replace("_", " ")) for r in history for k in r
         if k.endswith("_loss") and k != "train_loss"})
    fig, ax = plt.subplots(figsize=(7, 4))
    for key, label in lines:
        pts = [(r[x_key], r[key]) for r in history
               if r.get(key) is not None and x_key in r and _finite(r[key])]
        if pts:
            ax.plot(*zip(*pts), "-" if len(pts) > 20 else "o-", label=label, lw=1)
    ax.set_xlabel({"step": "update step"}.get(x_key, x_key))
    ax.set_ylabel(spec.get("ylabel", "loss"))
    if spec.get("log"):
        ax.set_yscale("log")
    ax.grid(alpha=0.3)
    if ax.get_legend_handles_labels()[0]:
        ax.legend()
    fig.tight_layout()
    checkpoint.write_atomic(path, lambda f: fig.savefig(f, format="png", dpi=110), ".png")
    plt.close(fig)
    return path


class _Window:
    """The updates since the last metrics record: their losses (weighted) and gradient norms."""

    def __init__(self):
        self.n, self.loss, self.weight, self.norm = 0, 0.0, 0.0, 0.0
        self.t0 = time.perf_counter()

    def add(self, loss, weight, norm):
        self.n += 1
        if math.isfinite(loss):
            self.loss += loss * weight
            self.weight += weight
            self.norm += norm

    def state_dict(self):       # the sums, not the clock: a resumed window times itself
        return {"n": self.n, "loss": self.loss, "weight": self.weight, "norm": self.norm}

    def load_state_dict(self, state):
        self.n, self.loss, self.weight, self.norm = (state[k] for k in ("n", "loss", "weight",
                                                                       "norm"))

    def mean_loss(self):
        return self.loss / self.weight if self.weight else math.nan

    def mean_norm(self):
        good = self.n if self.weight else 0
        return self.norm / good if good else math.nan


def _append(path, record):
    """One JSON line at the end of ``path``; a failed write names the file (a line cut short by
    a full disk is dropped on resume, which cuts the logs back to the checkpoint)."""
    try:
        with open(path, "a") as f:
            f.write(json.dumps(record) + "\n")
    except OSError as e:
        raise OSError(e.errno, f"could not write {path} ({e.strerror or e}); the last "
                      f"checkpoint is intact: continue with --resume") from None


def _rank_rng(rng, rank, step=0):
    """Rank ``rank``'s dropout generator (rank > 0), derived from rank 0's ``rng`` at ``step``
    without advancing it."""
    return np.random.default_rng([int(copy.deepcopy(rng).integers(2**63)), rank, step])


def _global_norm(grads):
    return math.sqrt(sum(float(np.vdot(g, g)) for g in (
        g.ravel().astype(np.float64, copy=False) for g in grads.values())))


def _prefixed(arrays, prefix):
    return {k[len(prefix):]: v for k, v in arrays.items() if k.startswith(prefix)}


def _line_step(line):
    try:
        return json.loads(line).get("step")
    except (json.JSONDecodeError, AttributeError):
        return None


def _finite(v):
    return isinstance(v, (int, float)) and math.isfinite(v)


def _json_safe(d):
    """Non-finite floats as None (JSON has no nan), numpy scalars as Python numbers."""
    out = {}
    for k, v in d.items():
        if isinstance(v, np.generic):
            v = v.item()
        if isinstance(v, float) and not math.isfinite(v):
            v = None
        elif isinstance(v, tuple):
            v = list(v)
        out[k] = v
    return out
