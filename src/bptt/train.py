"""Training a language model over streams with truncated BPTT(k1, k2), checkpoints and logs.

One update (Williams & Peng 1990; Sutskever 2013): take the next k1 steps of each of the B
streams; re-run the model over a window of the last k2 steps (the k2 - k1 steps before the new
ones are kept from earlier batches) starting from the state carried at the window's start; take the
loss on the k1 new steps only; backpropagate through the whole window, treating the state at its
start as a constant; clip; update. The carried state then moves k1 steps on. Memory is O(k2)
whatever the stream's length. At the first batch of each pass over the data the state is reset
explicitly to zeros and the history emptied.

Everything a run needs to continue is in ``RUN_DIR/checkpoint.npz`` (see ``bptt.checkpoint``):
parameters, optimizer state, the carried state and history, the data position, the dropout RNG,
the step, the clipping record, the elapsed time, the early-stopping record. Resuming continues
the same run bit for bit: N steps straight equal N/2 steps, a kill, and a resume.
"""

import dataclasses
import json
import math
import os
import time
from dataclasses import dataclass

import numpy as np

from . import checkpoint
from .clip import ClipLog, clip_grad_norm, clip_grad_value
from .losses import softmax_cross_entropy
from .model import Model
from .layers import check_backend
from .optim import Schedule, build_optimizer

LN2 = math.log(2.0)


@dataclass
class TrainConfig:
    """What a training run does; the defaults of ``bptt train charlm``."""

    cell: str = "lstm"
    hidden: int = 256
    layers: int = 2
    embed: int = 64
    dropout: float = 0.0
    k1: int = 64
    k2: int | None = None          # None: k2 = k1
    batch: int = 32
    optimizer: str = "adam"
    lr: float = 2e-3
    schedule: str = "constant"     # constant | cosine (over `steps`) | step
    warmup: int = 0
    clip: float | None = 5.0       # global-norm clipping of the final gradient; None: off
    clip_mode: str = "norm"        # norm | value
    steps: int | None = 2000
    minutes: float | None = None   # a time budget; the run stops at whichever comes first
    epochs: int | None = None      # passes over the training text
    eval_every: int = 200
    eval_chars: int = 100_000      # validation characters used at each evaluation
    checkpoint_every: int = 200
    patience: int | None = None    # early stopping: evaluations without improvement
    log_every: int = 10
    seed: int = 0
    dtype: str = "float32"
    backend: str = "numpy"         # the cells' time loops: numpy, native, numba or auto
    progress: bool = True

    def __post_init__(self):
        k2 = self.k1 if self.k2 is None else self.k2
        for name in ("hidden", "layers", "embed", "k1", "batch", "eval_every", "eval_chars",
                     "checkpoint_every", "log_every"):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, int) or v < 1:
                raise ValueError(f"train: expected {name} a positive integer, got {v!r}")
        if isinstance(k2, bool) or not isinstance(k2, int) or k2 < self.k1:
            raise ValueError(f"train: expected k2 an integer >= k1 = {self.k1}, got {k2!r}")
        if self.steps is None and self.minutes is None and self.epochs is None:
            raise ValueError("train: give a step budget (steps), a time budget (minutes) or "
                             "a number of passes (epochs)")
        if self.epochs is not None and (isinstance(self.epochs, bool) or
                                        not isinstance(self.epochs, int) or self.epochs < 1):
            raise ValueError(f"train: expected epochs a positive integer, got {self.epochs!r}")
        if self.steps is not None and (not isinstance(self.steps, int) or self.steps < 1):
            raise ValueError(f"train: expected steps a positive integer, got {self.steps!r}")
        if self.minutes is not None and not self.minutes > 0:
            raise ValueError(f"train: expected minutes > 0, got {self.minutes!r}")
        if self.clip is not None and not self.clip > 0:
            raise ValueError(f"train: expected clip > 0 (or none), got {self.clip!r}")
        if self.clip_mode not in ("norm", "value"):
            raise ValueError(f"train: expected clip_mode 'norm' or 'value', got {self.clip_mode!r}")
        if self.dtype not in ("float32", "float64"):
            raise ValueError(f"train: expected dtype float32 or float64, got {self.dtype!r}")
        check_backend(self.backend, "train")

    @property
    def window(self):
        return self.k1 if self.k2 is None else self.k2


def build_model(cfg, vocab_size):
    return Model(vocab_size, cfg.hidden, vocab_size, cell=cfg.cell, input="embedding",
                 embed_size=cfg.embed, num_layers=cfg.layers, dropout=cfg.dropout, head="step",
                 dtype=cfg.dtype, seed=cfg.seed, backend=cfg.backend)


def build_schedule(cfg):
    options = {}
    if cfg.schedule == "cosine":
        if cfg.steps is None:
            raise ValueError("train: the cosine schedule needs a step budget (steps)")
        options["total_steps"] = cfg.steps
    elif cfg.schedule == "step":
        options["step_size"] = max(1, (cfg.steps or 1000) // 3)
    return Schedule(cfg.schedule, cfg.lr, warmup=cfg.warmup, **options)


class StreamTrainer:
    """Trains ``model`` (a step-head language model) on ``stream`` (a ``CharStream`` of k1-step
    batches) with TBPTT(k1, k2); evaluates on ``valid_ids``; writes to ``out_dir`` (None: no
    files, for callers that drive ``train_step`` themselves rather than ``run``)."""

    def __init__(self, model, stream, valid_ids, cfg, out_dir, extra_meta=None):
        if stream.seq_len != cfg.k1:
            raise ValueError(f"train: the stream's batches have {stream.seq_len} steps, "
                             f"expected k1 = {cfg.k1}")
        self.model, self.stream, self.valid_ids, self.cfg = model, stream, valid_ids, cfg
        self.out_dir = None if out_dir is None else os.fspath(out_dir)
        self.extra_meta = extra_meta or {}
        self.optimizer = build_optimizer(cfg.optimizer, model.params, lr=cfg.lr)
        self.schedule = build_schedule(cfg)
        self.rng = np.random.default_rng(cfg.seed + 1)   # dropout masks
        self.clip_log = ClipLog()
        self.step = 0
        self.elapsed = 0.0
        self.state = None                                # carried state at the window's start
        self.hist_x = self.hist_y = None                 # the k2 - k1 steps before the new ones
        self.best_valid = math.inf
        self.bad_evals = 0
        self.history = []                                # (step, train loss, valid bpc or None)

    # ------------------------------------------------------------------ one update
    def train_step(self):
        cfg, model = self.cfg, self.model
        batch = next(self.stream)
        if batch.starts_epoch:                           # an explicit reset at each new pass
            self.state, self.hist_x, self.hist_y = None, None, None
        x = batch.x if self.hist_x is None else np.concatenate([self.hist_x, batch.x])
        y = batch.y if self.hist_y is None else np.concatenate([self.hist_y, batch.y])
        n, B = x.shape
        history = n - cfg.k1
        split = max(0, n - (cfg.window - cfg.k1))        # the next window starts here

        parts, state = [], self.state
        for lo, hi in ((0, split), (split, n)):
            if hi > lo:
                out, state_next, tape = model.forward(x[lo:hi], state, training=True,
                                                      rng=self.rng)
                parts.append((lo, hi, out, tape))
                if hi == split:
                    carried = state_next
                state = state_next
        if split == 0:
            carried = self.state
        logits = np.concatenate([p[2] for p in parts]) if len(parts) > 1 else parts[0][2]
        mask = np.zeros((n, B), logits.dtype)
        mask[history:] = 1.0                              # the loss is on the k1 new steps only
        loss, dlogits = softmax_cross_entropy(logits, y, mask)

        grads, dstate = None, None
        for lo, hi, _, tape in reversed(parts):          # back through the window, latest part first
            dstate, g = model.backward(dlogits[lo:hi], tape, dstate)
            grads = g if grads is None else {k: grads[k] + g[k] for k in g}
        if cfg.clip is not None:
            clip = clip_grad_norm if cfg.clip_mode == "norm" else clip_grad_value
            self.clip_log.add(clip(grads, cfg.clip))
        self.optimizer.lr = self.schedule(self.step)
        self.optimizer.step(grads)
        self.step += 1
        self.state = carried
        keep = n - split
        self.hist_x = x[split:] if keep else None
        self.hist_y = y[split:] if keep else None
        return loss

    # ------------------------------------------------------------------ the loop
    def run(self):
        cfg = self.cfg
        os.makedirs(self.out_dir, exist_ok=True)
        log_path = os.path.join(self.out_dir, "metrics.jsonl")
        bar = _progress_bar(cfg, self.step)
        tokens_per_step = cfg.k1 * cfg.batch
        stop_reason = None
        window_loss, window_n, t_mark = 0.0, 0, time.perf_counter()
        with open(log_path, "a") as log:
            while stop_reason is None:
                t0 = time.perf_counter()
                loss = self.train_step()
                self.elapsed += time.perf_counter() - t0
                window_loss, window_n = window_loss + loss, window_n + 1
                if not math.isfinite(loss):
                    stop_reason = f"the loss is not finite at step {self.step}"
                record = None
                if self.step % cfg.log_every == 0 or self.step == cfg.steps:
                    dt = time.perf_counter() - t_mark
                    record = {"step": self.step, "loss": window_loss / window_n,
                              "bpc": window_loss / window_n / LN2, "lr": self.optimizer.lr,
                              "steps_per_s": window_n / dt, "tokens_per_s": window_n *
                              tokens_per_step / dt, "elapsed_s": self.elapsed}
                    if cfg.clip is not None:
                        record["clip"] = self.clip_log.summary()
                    self.history.append((self.step, record["loss"], None))
                    window_loss, window_n, t_mark = 0.0, 0, time.perf_counter()
                if self.step % cfg.eval_every == 0:
                    record = record or {"step": self.step}
                    record["valid_bpc"] = self.evaluate(self.valid_ids, cfg.eval_chars)
                    self.history.append((self.step, None, record["valid_bpc"]))
                    if record["valid_bpc"] < self.best_valid - 1e-4:
                        self.best_valid, self.bad_evals = record["valid_bpc"], 0
                    else:
                        self.bad_evals += 1
                        if cfg.patience is not None and self.bad_evals >= cfg.patience:
                            stop_reason = (f"early stop: validation has not improved for "
                                           f"{self.bad_evals} evaluations")
                if record is not None:
                    log.write(json.dumps(record) + "\n")
                    log.flush()
                    if bar is not None:
                        bar.set_postfix(_postfix(record))
                if bar is not None:  # counts steps, or seconds when only time is budgeted
                    bar.update(min(self.elapsed, 60 * cfg.minutes) - bar.n
                               if cfg.steps is None and cfg.minutes is not None else 1)
                if cfg.steps is not None and self.step >= cfg.steps:
                    stop_reason = f"reached {cfg.steps} steps"
                elif cfg.minutes is not None and self.elapsed >= 60 * cfg.minutes:
                    stop_reason = f"reached the time budget of {cfg.minutes} minutes"
                elif cfg.epochs is not None and self.stream.epoch >= cfg.epochs:
                    stop_reason = f"completed {cfg.epochs} passes over the training text"
                if self.step % cfg.checkpoint_every == 0 or stop_reason:
                    self.save()
        if bar is not None:
            bar.close()
        self.plot()
        return stop_reason

    # ------------------------------------------------------------------ evaluation
    def evaluate(self, ids, max_chars=None):
        """Bits per character of ``ids`` (the first ``max_chars``), in B streams, state carried."""
        return evaluate_bpc(self.model, ids, self.cfg.batch, self.cfg.k1, max_chars)

    # ------------------------------------------------------------------ checkpoints
    def save(self):
        arrays = {f"model/{k}": v for k, v in self.model.params.items()}
        opt = self.optimizer.state_dict()
        arrays.update({f"optim/{k}": v for k, v in opt.items() if isinstance(v, np.ndarray)})
        opt_scalars = {k: v for k, v in opt.items() if not isinstance(v, np.ndarray)}
        if self.state is not None:
            parts = self.state if isinstance(self.state, tuple) else (self.state,)
            for i, s in enumerate(parts):
                arrays[f"state/{i}"] = s
        if self.hist_x is not None:
            arrays["hist/x"], arrays["hist/y"] = self.hist_x, self.hist_y
        meta = {
            "format": "bptt-checkpoint-1", "config": dataclasses.asdict(self.cfg),
            "model": self.model.config, "step": self.step, "elapsed_s": self.elapsed,
            "optimizer": opt_scalars, "stream": self.stream.state_dict(),
            "rng": self.rng.bit_generator.state, "best_valid": _finite_or_none(self.best_valid),
            "bad_evals": self.bad_evals, "history": self.history,
            "clip_log": self.clip_log.state_dict(),
            "state_parts": len(self.state) if isinstance(self.state, tuple) else
            (0 if self.state is None else 1),
            **self.extra_meta,
        }
        checkpoint.save(os.path.join(self.out_dir, "checkpoint.npz"), arrays, meta)

    def restore(self, arrays, meta):
        """Continue the run saved in ``arrays, meta`` (from ``checkpoint.load``)."""
        self.model.load_state_dict({k[6:]: v for k, v in arrays.items()
                                    if k.startswith("model/")})
        opt = dict(meta["optimizer"])
        opt.update({k[6:]: v for k, v in arrays.items() if k.startswith("optim/")})
        self.optimizer.load_state_dict(opt)
        n = meta["state_parts"]
        parts = tuple(arrays[f"state/{i}"] for i in range(n))
        self.state = None if n == 0 else (parts if n == 2 else parts[0])
        self.hist_x, self.hist_y = arrays.get("hist/x"), arrays.get("hist/y")
        self.stream.load_state_dict(meta["stream"])
        self.rng.bit_generator.state = meta["rng"]
        self.step, self.elapsed = meta["step"], meta["elapsed_s"]
        self.best_valid = math.inf if meta["best_valid"] is None else meta["best_valid"]
        self.bad_evals = meta["bad_evals"]
        self.history = [tuple(h) for h in meta["history"]]
        self.clip_log.load_state_dict(meta["clip_log"])

    # ------------------------------------------------------------------ the figure
    def plot(self):
        """Training and validation loss against step, as ``loss.png`` (needs matplotlib)."""
        try:
            import matplotlib
            matplotlib.use("Agg")
            import matplotlib.pyplot as plt
        except ImportError:
            return None
        train = [(s, l / LN2) for s, l, _ in self.history if l is not None]
        valid = [(s, v) for s, _, v in self.history if v is not None]
        fig, ax = plt.subplots(figsize=(7, 4))
        if train:
            ax.plot(*zip(*train), label="training (bits/char)", lw=1)
        if valid:
            ax.plot(*zip(*valid), "o-", label="validation (bits/char)")
        ax.set_xlabel("update step")
        ax.set_ylabel("bits per character")
        ax.grid(alpha=0.3)
        ax.legend()
        path = os.path.join(self.out_dir, "loss.png")
        fig.tight_layout()
        fig.savefig(path, dpi=110)
        plt.close(fig)
        return path


def evaluate_bpc(model, ids, batch, seq_len, max_chars=None):
    """Bits per character of a language model over ``ids``, read as ``batch`` parallel streams
    with the state carried from chunk to chunk (as in training), forward only."""
    from .data.text import CharStream

    ids = np.asarray(ids)
    if max_chars is not None:
        ids = ids[:max_chars]
    batch = max(1, min(batch, (len(ids) - 1) // 2))
    seq_len = max(1, min(seq_len, len(ids) // batch - 1))
    stream = CharStream(ids, batch, seq_len)
    state, total, count = None, 0.0, 0
    for k in range(stream.batches_per_epoch):
        x, y, _ = stream.batch_at(k)
        logits, state, _ = model.forward(x, state)
        loss, _ = softmax_cross_entropy(logits, y, reduction="sum")
        total, count = total + loss, count + y.size
    return total / count / LN2


def sample(model, vocab, length, temperature=1.0, prime="", seed=0, context=None):
    """Generate ``length`` characters after ``prime``, one step at a time, state carried.

    ``context`` (ids) is read first, to warm the state: in training the state is carried from
    batch to batch and is zero only at the start of a pass, so a model trained briefly has not
    learnt to start from zeros and babbles until its state fills."""
    if not temperature > 0:
        raise ValueError(f"sample: expected temperature > 0, got {temperature!r}")
    rng = np.random.default_rng(seed)
    state, out = None, []
    if context is not None and len(context):
        _, state, _ = model.forward(np.asarray(context)[:, None], None)
    ids = vocab.encode(prime) if prime else np.array([rng.integers(vocab.size)])
    logits = None
    for i in ids:
        logits, state, _ = model.forward(np.array([[i]]), state)
    for _ in range(length):
        z = logits[0, 0].astype(np.float64) / temperature
        p = np.exp(z - z.max())
        nxt = rng.choice(vocab.size, p=p / p.sum())
        out.append(int(nxt))
        logits, state, _ = model.forward(np.array([[nxt]]), state)
    return vocab.decode(np.array(out))


def _progress_bar(cfg, start):
    if not cfg.progress:
        return None
    try:
        from tqdm import tqdm
    except ImportError:
        return None
    desc = f"{cfg.cell} k1={cfg.k1} k2={cfg.window}"
    if cfg.steps is None and cfg.minutes is None:
        return tqdm(initial=start, unit="step", dynamic_ncols=True, desc=desc)
    if cfg.steps is None:
        return tqdm(total=round(60 * cfg.minutes), unit="s", dynamic_ncols=True, desc=desc,
                    bar_format="{l_bar}{bar}| {n:.0f}/{total}s [{elapsed}<{remaining}{postfix}]")
    return tqdm(total=cfg.steps, initial=start, unit="step", dynamic_ncols=True, desc=desc)


def _postfix(record):
    out = {}
    if "loss" in record:
        out["bpc"] = f"{record['bpc']:.3f}"
        out["step/s"] = f"{record['steps_per_s']:.1f}"
        out["tok/s"] = f"{record['tokens_per_s']:.0f}"
    if "valid_bpc" in record:
        out["valid"] = f"{record['valid_bpc']:.3f}"
    return out


def _finite_or_none(x):
    return x if math.isfinite(x) else None
