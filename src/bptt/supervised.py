r"""Supervised training on whole sequences: one label or target vector per sequence.

A data set is a ``SequenceData``: inputs padded to a common length, time-major,

- ``x``: features (T, N, D) of real numbers, or token ids (T, N) of integers;
- ``y``: class labels (N,) of integers (loss ``ce``), or targets (N, O) of real numbers (``mse``);
- ``lengths``: (N,) integers in 1..T, each sequence's own length (None: all are T).

``fit`` trains a ``bptt.model.Model`` whose head gives one output per sequence (``last`` or
``mean``) by mini-batch gradient descent. Each epoch visits the training set in an order drawn
from a seeded ``numpy.random.Generator``; each batch is cut to its longest sequence, since the
steps past every length change nothing (the packed-sequence semantics of the layers). With
``bucket``, batches gather sequences of similar lengths (sorted within pools of 50 batches of
the random order, the batches then shuffled), so less time goes to padding. The
gradient of a batch is that of the mean loss over its B sequences,

.. math::
    L = \frac{1}{B}\sum_{n=1}^{B} \ell(f(x_n), y_n), \qquad
    \nabla L = \frac{1}{B}\sum_n \nabla \ell_n

(for ``mse``, the mean over the B*O target elements), so a batch's gradient is the mean of its
examples' gradients taken one at a time. With a validation set, the model is scored after every
epoch: accuracy for ``ce`` (higher is better; a tie goes to the lower validation loss), the mean
squared error for ``mse``; or, with ``select='loss'``, the validation loss for either.
``patience`` stops the run after that many epochs without a better score, and the parameters of
the best epoch are put back into the model at the end. The parameters named in ``freeze`` (say,
pretrained embeddings) keep their values: the optimizer and the clipping never see them.

With ``out_dir``: ``metrics.jsonl`` (one line per epoch), ``loss.png`` and ``checkpoint.npz``
(``bptt.checkpoint``: the final parameters, the model's configuration and the history; no pickle),
from which ``load_model`` rebuilds the model.

Use::

    train, valid = data.subset(idx_train), data.subset(idx_valid)
    model = Model(12, 64, 9, cell="gru", input="identity", head="last", seed=0)
    result = fit(model, train, valid, FitConfig(epochs=40, lr=3e-3, patience=10))
    accuracy(model, test)
"""

import dataclasses
import json
import math
import os
import time
from dataclasses import dataclass, field

import numpy as np

from . import checkpoint
from .clip import ClipLog, clip_grad_norm
from .losses import mse, softmax_cross_entropy
from .model import Model
from .optim import Schedule, build_optimizer

LOSSES = ("ce", "mse")
BUCKET_POOL = 50    # batches sorted by length together when FitConfig.bucket is on
SCHEDULES = ("constant", "cosine", "step")
SELECT = ("metric", "loss")


# ---------------------------------------------------------------------- data
class SequenceData:
    """Padded sequences with one label or target each: x (T, N, D) or (T, N), y (N,) or (N, O),
    lengths (N,) or None. The arrays are kept as given (no copy when already arrays)."""

    def __init__(self, x, y, lengths=None):
        name = "SequenceData"
        x, y = np.asarray(x), np.asarray(y)
        if x.ndim not in (2, 3):
            raise ValueError(f"{name}: expected x of shape (T, N, D) (features) or (T, N) "
                             f"(token ids), got shape {x.shape}")
        if x.ndim == 3 and x.dtype.kind != "f":
            raise TypeError(f"{name}: expected features x (T, N, D) of floats, got dtype "
                            f"{x.dtype}")
        if x.ndim == 2 and x.dtype.kind not in "iu":
            raise TypeError(f"{name}: expected token ids x (T, N) of integers, got dtype "
                            f"{x.dtype}")
        T, N = x.shape[:2]
        if T < 1 or N < 1:
            raise ValueError(f"{name}: expected at least one step and one sequence, got x of "
                             f"shape {x.shape}")
        if y.ndim == 1 and y.dtype.kind in "iu":
            pass
        elif y.ndim == 2 and y.dtype.kind in "fiu":
            y = y.astype(np.float64) if y.dtype.kind != "f" else y
        else:
            raise ValueError(f"{name}: expected y as class labels (N,) of integers or targets "
                             f"(N, O) of real numbers, got shape {y.shape} dtype {y.dtype}")
        if y.shape[0] != N:
            raise ValueError(f"{name}: expected y with N={N} rows (x's axis 1), got "
                             f"{y.shape[0]}")
        if lengths is not None:
            lengths = np.asarray(lengths)
            if lengths.dtype.kind not in "iu":
                raise TypeError(f"{name}: expected lengths as integers, got dtype "
                                f"{lengths.dtype}")
            if lengths.shape != (N,):
                raise ValueError(f"{name}: expected lengths of shape ({N},), got "
                                 f"{lengths.shape}")
            if lengths.min() < 1 or lengths.max() > T:
                bad = lengths[(lengths < 1) | (lengths > T)]
                raise ValueError(f"{name}: expected every length in 1..{T} (T), got "
                                 f"{bad[:10].tolist()}")
            lengths = lengths.astype(np.int64, copy=False)
        self.x, self.y, self.lengths = x, y, lengths

    def __len__(self):
        return self.x.shape[1]

    @property
    def is_classes(self):
        """True when y holds class labels (for ``ce``), False for real targets (``mse``)."""
        return self.y.ndim == 1

    def subset(self, idx):
        """The sequences at ``idx`` (integer indices or a boolean mask), in that order,
        cut to their longest length."""
        idx = np.asarray(idx)
        if idx.dtype == bool:
            if idx.shape != (len(self),):
                raise ValueError(f"SequenceData.subset: expected a boolean mask of shape "
                                 f"({len(self)},), got {idx.shape}")
            idx = np.flatnonzero(idx)
        if idx.dtype.kind not in "iu" or idx.ndim != 1:
            raise TypeError(f"SequenceData.subset: expected a 1-d array of integer indices, got "
                            f"shape {idx.shape} dtype {idx.dtype}")
        if idx.size == 0:
            raise ValueError("SequenceData.subset: expected at least one index, got none")
        if idx.min() < -len(self) or idx.max() >= len(self):
            raise IndexError(f"SequenceData.subset: indices must lie in 0..{len(self) - 1}")
        x, lengths = self.batch(idx)
        return SequenceData(x, self.y[idx], lengths)

    def batch(self, idx):
        """``(x, lengths)`` of the sequences at ``idx``, cut to the longest of them."""
        if self.lengths is None:
            return self.x[:, idx], None
        lengths = self.lengths[idx]
        return self.x[:int(lengths.max()), idx], lengths

    def __repr__(self):
        kind = "classes" if self.is_classes else f"targets of size {self.y.shape[1]}"
        return f"SequenceData(N={len(self)}, T={self.x.shape[0]}, x {self.x.dtype}, {kind})"


def pad_sequences(sequences, dtype=np.float32, *, max_len=None):
    """Pad a list of (L_n, D) feature arrays (or (L_n,) id arrays) into a time-major (T, N, D)
    (or (T, N)) array with zeros after each end; return ``(x, lengths)``. ``max_len`` cuts
    longer sequences (keeping their start) and sets T; default T = the longest length."""
    name = "pad_sequences"
    if len(sequences) == 0:
        raise ValueError(f"{name}: expected at least one sequence, got none")
    arrays = [np.asarray(s) for s in sequences]
    ranks = {a.ndim for a in arrays}
    if len(ranks) != 1 or ranks.pop() not in (1, 2):
        raise ValueError(f"{name}: expected every sequence of shape (L,) or every one (L, D), "
                         f"got shapes {sorted({a.shape for a in arrays}, key=str)[:4]}")
    trailing = {a.shape[1:] for a in arrays}
    if len(trailing) != 1:
        raise ValueError(f"{name}: expected one feature size D, got {sorted(trailing)}")
    lengths = np.array([a.shape[0] for a in arrays], np.int64)
    if lengths.min() < 1:
        raise ValueError(f"{name}: sequence {int(np.argmin(lengths))} is empty")
    if max_len is not None:
        if isinstance(max_len, bool) or not isinstance(max_len, (int, np.integer)) or max_len < 1:
            raise ValueError(f"{name}: expected max_len a positive integer, got {max_len!r}")
        lengths = np.minimum(lengths, max_len)
    T = int(lengths.max()) if max_len is None else int(max_len)
    x = np.zeros((T, len(arrays)) + trailing.pop(), dtype)
    for n, (a, L) in enumerate(zip(arrays, lengths)):
        x[:L, n] = a[:L]
    return x, lengths


# ---------------------------------------------------------------------- configuration
@dataclass
class FitConfig:
    """How ``fit`` trains; ``clip`` is the global gradient norm (None: off), ``patience`` the
    epochs without a better validation score before stopping (None: run every epoch)."""

    epochs: int = 30
    batch: int = 32
    optimizer: str = "adam"
    lr: float = 1e-3
    weight_decay: float = 0.0
    clip: float | None = 5.0
    schedule: str = "constant"     # constant | cosine (over all the run's steps) | step
    warmup: int = 0                # linear warm-up, in steps
    patience: int | None = None
    seed: int = 0                  # batch order and dropout masks
    loss: str = "ce"               # ce (class labels) | mse (real targets)
    bucket: bool = False           # batches of similar lengths (see _batches): less padding
    select: str = "metric"         # the best epoch by: metric (see fit) | loss (validation)
    freeze: tuple = ()             # names of parameters the optimizer leaves as they are
    progress: bool = False

    def __post_init__(self):
        for k in ("epochs", "batch"):
            v = getattr(self, k)
            if isinstance(v, bool) or not isinstance(v, (int, np.integer)) or v < 1:
                raise ValueError(f"FitConfig: expected {k} a positive integer, got {v!r}")
        if not isinstance(self.lr, (int, float)) or not self.lr > 0:
            raise ValueError(f"FitConfig: expected lr > 0, got {self.lr!r}")
        if not isinstance(self.weight_decay, (int, float)) or not self.weight_decay >= 0:
            raise ValueError(f"FitConfig: expected weight_decay >= 0, got {self.weight_decay!r}")
        if self.clip is not None and not (isinstance(self.clip, (int, float)) and self.clip > 0):
            raise ValueError(f"FitConfig: expected clip > 0 or None, got {self.clip!r}")
        if self.schedule not in SCHEDULES:
            raise ValueError(f"FitConfig: expected schedule one of {', '.join(SCHEDULES)}, got "
                             f"{self.schedule!r}")
        if isinstance(self.warmup, bool) or not isinstance(self.warmup, int) or self.warmup < 0:
            raise ValueError(f"FitConfig: expected warmup an integer >= 0, got {self.warmup!r}")
        if self.patience is not None and (isinstance(self.patience, bool) or
                                          not isinstance(self.patience, int) or self.patience < 1):
            raise ValueError(f"FitConfig: expected patience a positive integer or None, got "
                             f"{self.patience!r}")
        if not isinstance(self.bucket, bool):
            raise ValueError(f"FitConfig: expected bucket True or False, got {self.bucket!r}")
        if self.loss not in LOSSES:
            raise ValueError(f"FitConfig: expected loss 'ce' or 'mse', got {self.loss!r}")
        if self.select not in SELECT:
            raise ValueError(f"FitConfig: expected select 'metric' or 'loss', got "
                             f"{self.select!r}")
        if isinstance(self.freeze, str) or not all(isinstance(k, str) for k in self.freeze):
            raise ValueError(f"FitConfig: expected freeze a tuple of parameter names, got "
                             f"{self.freeze!r}")


@dataclass
class FitResult:
    """What ``fit`` did: one record per epoch (``epoch``, ``train_loss``, and with a validation
    set ``valid_loss`` and ``valid_metric``), the best epoch (1-based; None without validation)
    and its score, why it stopped, the seconds spent."""

    history: list = field(default_factory=list)
    best_epoch: int | None = None
    best_metric: float | None = None
    stop_reason: str = ""
    elapsed_s: float = 0.0

    @property
    def train_loss(self):
        return [h["train_loss"] for h in self.history]

    @property
    def valid_metric(self):
        return [h.get("valid_metric") for h in self.history]


# ---------------------------------------------------------------------- one batch
def loss_and_grads(model, x, y, lengths=None, *, loss="ce", training=False, rng=None):
    """Forward and backward on one batch: ``(mean loss, grads)``; ``(outputs, ...)`` are not
    kept. x, y, lengths as in ``SequenceData`` (for a batch of B sequences)."""
    out, _, tape = model.forward(x, None, lengths, training=training, rng=rng)
    value, dout = _loss(loss, out, y)
    _, grads = model.backward(dout, tape)
    return value, grads


def _loss(loss, out, y):
    if loss == "ce":
        return softmax_cross_entropy(out, y)
    return mse(out, y)


# ---------------------------------------------------------------------- training
def fit(model, train, valid=None, cfg=None, out_dir=None):
    """Train ``model`` on ``train`` (a SequenceData); see the module docstring. Returns
    FitResult; with ``valid``, the model ends holding the parameters of its best epoch."""
    cfg = FitConfig() if cfg is None else cfg
    if not isinstance(cfg, FitConfig):
        raise TypeError(f"fit: expected cfg a FitConfig, got {type(cfg).__name__}")
    _check_pair(model, train, cfg.loss, "train")
    if valid is not None:
        _check_pair(model, valid, cfg.loss, "valid")

    unknown = sorted(set(cfg.freeze) - set(model.params))
    if unknown:
        raise ValueError(f"fit: expected freeze to name parameters of the model, got unknown "
                         f"{unknown}")
    trained = {k: v for k, v in model.params.items() if k not in cfg.freeze}
    optimizer = build_optimizer(cfg.optimizer, trained, lr=cfg.lr,
                                weight_decay=cfg.weight_decay)
    n = len(train)
    per_epoch = math.ceil(n / cfg.batch)
    schedule = _schedule(cfg, per_epoch * cfg.epochs)
    order_rng = np.random.default_rng(cfg.seed)
    dropout_rng = np.random.default_rng([cfg.seed, 1])
    clip_log = ClipLog()
    result = FitResult()
    best_key, best_params, bad_epochs = None, None, 0

    log = None
    if out_dir is not None:
        os.makedirs(out_dir, exist_ok=True)
        log = open(os.path.join(out_dir, "metrics.jsonl"), "w")
    bar = _progress_bar(cfg)
    t_start = time.perf_counter()
    try:
        for epoch in range(1, cfg.epochs + 1):
            t0 = time.perf_counter()
            total = 0.0
            for idx in _batches(order_rng, n, cfg.batch, train.lengths if cfg.bucket else None):
                x, lengths = train.batch(idx)
                value, grads = loss_and_grads(model, x, train.y[idx], lengths, loss=cfg.loss,
                                              training=True, rng=dropout_rng)
                grads = {k: grads[k] for k in trained}     # frozen: no step, no clipping share
                if not math.isfinite(value):
                    result.stop_reason = f"the loss is not finite in epoch {epoch}"
                    break
                total += value * len(idx)
                if cfg.clip is not None:
                    clip_log.add(clip_grad_norm(grads, cfg.clip))
                optimizer.lr = schedule(optimizer.step_count)
                optimizer.step(grads)
            record = {"epoch": epoch, "train_loss": total / n, "lr": optimizer.lr,
                      "epoch_s": time.perf_counter() - t0}
            if cfg.clip is not None:
                record["clip_rate"] = clip_log.clip_rate
            if valid is not None and not result.stop_reason:
                v_loss, v_metric = evaluate(model, valid, cfg.loss)
                record.update(valid_loss=v_loss, valid_metric=v_metric)
                # ce: accuracy up, then loss down; mse: error down
                key = (v_metric, -v_loss) if cfg.loss == "ce" else (-v_metric,)
                if cfg.select == "loss":
                    key = (-v_loss,)
                if best_key is None or key > best_key:
                    best_key, bad_epochs = key, 0
                    best_params = model.state_dict()
                    result.best_epoch, result.best_metric = epoch, v_metric
                else:
                    bad_epochs += 1
            result.history.append(record)
            if log is not None:
                log.write(json.dumps(record) + "\n")
                log.flush()
            if bar is not None:
                bar.update(1)
                bar.set_postfix({k: f"{v:.4g}" for k, v in record.items()
                                 if k in ("train_loss", "valid_metric")})
            if result.stop_reason:
                break
            if cfg.patience is not None and bad_epochs >= cfg.patience:
                result.stop_reason = (f"early stop: no better validation score for "
                                      f"{bad_epochs} epochs")
                break
        else:
            result.stop_reason = f"ran {cfg.epochs} epochs"
    finally:
        if bar is not None:
            bar.close()
        if log is not None:
            log.close()
    if best_params is not None:
        for k, v in best_params.items():
            model.params[k][...] = v
    result.elapsed_s = time.perf_counter() - t_start
    if out_dir is not None:
        save_model(os.path.join(out_dir, "checkpoint.npz"), model,
                   {"fit": dataclasses.asdict(cfg), "history": result.history,
                    "best_epoch": result.best_epoch, "stop_reason": result.stop_reason})
        plot_history(result, os.path.join(out_dir, "loss.png"), cfg.loss)
    return result


def _batches(rng, n, batch, lengths=None):
    """One epoch's batches of indices: a random order cut into batches; with ``lengths``, each
    run of BUCKET_POOL batches of that order is sorted by length before it is cut, and the
    batches are shuffled, so that a batch holds sequences of similar lengths (less padding)."""
    order = rng.permutation(n)
    if lengths is None:
        return [order[lo:lo + batch] for lo in range(0, n, batch)]
    out = []
    pool = batch * BUCKET_POOL
    for lo in range(0, n, pool):
        chunk = order[lo:lo + pool]
        chunk = chunk[np.argsort(lengths[chunk], kind="stable")]
        out += [chunk[i:i + batch] for i in range(0, len(chunk), batch)]
    return [out[i] for i in rng.permutation(len(out))]


def _schedule(cfg, total_steps):
    if cfg.schedule == "cosine":
        return Schedule("cosine", cfg.lr, warmup=cfg.warmup, total_steps=max(1, total_steps))
    if cfg.schedule == "step":
        return Schedule("step", cfg.lr, warmup=cfg.warmup, step_size=max(1, total_steps // 3))
    return Schedule("constant", cfg.lr, warmup=cfg.warmup)


def _check_pair(model, data, loss, what):
    """Errors at the door: the data, the loss and the model must fit together."""
    if not isinstance(model, Model):
        raise TypeError(f"fit: expected model a bptt.model.Model, got {type(model).__name__}")
    if model.head == "step":
        raise ValueError("fit: trains one output per sequence; expected a model with head "
                         "'last' or 'mean', got 'step'")
    if not isinstance(data, SequenceData):
        raise TypeError(f"fit: expected {what} a SequenceData, got {type(data).__name__}")
    if model.input == "embedding" and data.x.ndim != 2:
        raise ValueError(f"fit: the model embeds token ids; expected {what}.x of shape (T, N) "
                         f"of integers, got shape {data.x.shape}")
    if model.input != "embedding" and (data.x.ndim != 3 or data.x.shape[2] != model.input_size):
        raise ValueError(f"fit: expected {what}.x of shape (T, N, {model.input_size}), got "
                         f"{data.x.shape}")
    O = model.output_size
    if loss == "ce":
        if not data.is_classes:
            raise ValueError(f"fit: loss 'ce' needs class labels y (N,) of integers; {what}.y "
                             f"has shape {data.y.shape} dtype {data.y.dtype} (use loss 'mse')")
        if data.y.min() < 0 or data.y.max() >= O:
            raise ValueError(f"fit: expected {what}.y in 0..{O - 1} (the model's output_size "
                             f"{O}), got values in {data.y.min()}..{data.y.max()}")
    elif data.is_classes or data.y.shape[1] != O:
        raise ValueError(f"fit: loss 'mse' needs targets y of shape (N, {O}) (output_size), got "
                         f"{what}.y of shape {data.y.shape} dtype {data.y.dtype}")


# ---------------------------------------------------------------------- evaluation
def predict(model, data, batch=256):
    """The model's outputs (N, O) for every sequence of ``data``, in order; forward only."""
    if not isinstance(data, SequenceData):
        raise TypeError(f"predict: expected data a SequenceData, got {type(data).__name__}")
    if isinstance(batch, bool) or not isinstance(batch, (int, np.integer)) or batch < 1:
        raise ValueError(f"predict: expected batch a positive integer, got {batch!r}")
    if model.head == "step":
        raise ValueError("predict: expected a model with head 'last' or 'mean', got 'step'")
    outs = []
    for lo in range(0, len(data), batch):
        x, lengths = data.batch(np.arange(lo, min(lo + batch, len(data))))
        out, _, _ = model.forward(x, None, lengths)
        outs.append(out)
    return np.concatenate(outs)


def accuracy(model, data, batch=256):
    """The fraction of sequences whose highest output is their label."""
    if not isinstance(data, SequenceData) or not data.is_classes:
        raise ValueError("accuracy: expected a SequenceData with class labels y (N,)")
    return float(np.mean(predict(model, data, batch).argmax(axis=1) == data.y))


def evaluate(model, data, loss="ce", batch=256):
    """``(mean loss, metric)``: the metric is accuracy for ``ce``, the mean squared error for
    ``mse`` (then equal to the loss)."""
    out = predict(model, data, batch)
    value, _ = _loss(loss, out, data.y.astype(out.dtype) if loss == "mse" else data.y)
    if loss == "ce":
        return value, float(np.mean(out.argmax(axis=1) == data.y))
    return value, value


def confusion_matrix(labels, predictions, n_classes):
    """Counts C[i, j] of sequences of class i predicted as j."""
    C = np.zeros((n_classes, n_classes), np.int64)
    np.add.at(C, (np.asarray(labels), np.asarray(predictions)), 1)
    return C


# ---------------------------------------------------------------------- files
def save_model(path, model, meta=None):
    """Write ``model``'s parameters and configuration (and ``meta``) to a checkpoint file."""
    arrays = {f"model/{k}": v for k, v in model.params.items()}
    checkpoint.save(path, arrays, {"format": "bptt-supervised-1", "model": model.config,
                                   **(meta or {})})


def load_model(path):
    """``(model, meta)`` from a file written by ``save_model`` (or ``fit``'s out_dir)."""
    arrays, meta = checkpoint.load(path)
    if meta.get("format") != "bptt-supervised-1":
        raise checkpoint.CheckpointError(f"checkpoint: {path} is not a supervised model file "
                                         f"(format {meta.get('format')!r})")
    model = Model(**meta["model"])
    model.load_state_dict({k[6:]: v for k, v in arrays.items() if k.startswith("model/")})
    return model, meta


def plot_history(result, path, loss="ce"):
    """Training and validation loss per epoch (and the validation metric), as a PNG."""
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return None
    h = result.history
    if not h:
        return None
    epochs = [r["epoch"] for r in h]
    fig, ax = plt.subplots(figsize=(7, 4))
    ax.plot(epochs, [r["train_loss"] for r in h], label="training loss")
    if "valid_loss" in h[0]:
        ax.plot(epochs, [r.get("valid_loss", math.nan) for r in h], label="validation loss")
        if loss == "ce":
            ax2 = ax.twinx()
            ax2.plot(epochs, [r.get("valid_metric", math.nan) for r in h], "g:",
                     label="validation accuracy")
            ax2.set_ylabel("validation accuracy")
            ax2.legend(loc="center right")
        if result.best_epoch is not None:
            ax.axvline(result.best_epoch, color="gray", lw=0.8, ls="--")
    ax.set_xlabel("epoch")
    ax.set_ylabel("cross-entropy" if loss == "ce" else "mean squared error")
    ax.set_yscale("log")
    ax.grid(alpha=0.3)
    ax.legend(loc="upper right")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def _progress_bar(cfg):
    if not cfg.progress:
        return None
    try:
        from tqdm import tqdm
    except ImportError:
        return None
    return tqdm(total=cfg.epochs, unit="epoch", dynamic_ncols=True)
