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

Training runs in the one trainer (``bptt.trainer``) with a ``bptt.objectives.SupervisedObjective``.
With ``out_dir``: ``metrics.jsonl`` (one line per epoch), ``loss.png`` and ``checkpoint.npz``
(``bptt.checkpoint``: the parameters, the best epoch's, the optimizer's state, the data position
and the history; no pickle), from which ``fit(..., resume=True)`` continues a killed run bit for
bit and ``load_model`` rebuilds the model.

Use::

    train, valid = data.subset(idx_train), data.subset(idx_valid)
    model = Model(12, 64, 9, cell="gru", input="identity", head="last", seed=0)
    result = fit(model, train, valid, FitConfig(epochs=40, lr=3e-3, patience=10))
    accuracy(model, test)
"""

import dataclasses
import os
import time
from dataclasses import dataclass, field

import numpy as np

from . import checkpoint
from .model import Model
from .objectives import SupervisedObjective, batch_loss, loss_and_grads  # noqa: F401
from .trainer import LoopConfig, Trainer, load_run

LOSSES = ("ce", "mse")
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
    epochs without a better validation score before stopping (None: run every epoch),
    ``minutes`` a budget of training time (None: none), ``checkpoint_every`` the updates between
    checkpoints in ``out_dir`` (None: at the end of each epoch)."""

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
    bucket: bool = False           # batches of similar lengths: less padding
    select: str = "metric"         # the best epoch by: metric (see fit) | loss (validation)
    freeze: tuple = ()             # names of parameters the optimizer leaves as they are
    minutes: float | None = None
    checkpoint_every: int | None = None
    on_nonfinite: str = "stop"     # stop | skip (the update)
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
        self.loop(has_valid=False)           # the loop's own checks (minutes, on_nonfinite)

    def loop(self, has_valid):
        return LoopConfig(optimizer=self.optimizer, lr=self.lr, weight_decay=self.weight_decay,
                          schedule=self.schedule, warmup=self.warmup, clip=self.clip,
                          epochs=self.epochs, minutes=self.minutes, patience=self.patience,
                          checkpoint_every=self.checkpoint_every, keep_best=has_valid,
                          freeze=tuple(self.freeze), on_nonfinite=self.on_nonfinite,
                          progress=self.progress)


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


# ---------------------------------------------------------------------- training
def fit(model, train, valid=None, cfg=None, out_dir=None, *, resume=False, meta=None):
    """Train ``model`` on ``train`` (a SequenceData) by the one trainer (``bptt.trainer``) with
    a ``SupervisedObjective``; see the module docstring. Returns FitResult; with ``valid``, the
    model ends holding the parameters of its best epoch.

    With ``out_dir``: ``checkpoint.npz`` after every epoch and at the end, ``metrics.jsonl`` and
    ``loss.png``. With ``resume`` and a checkpoint in ``out_dir``, the run continues from it bit
    for bit (a finished run just gives back its model and result). ``meta`` goes into the
    checkpoint (the application's configuration)."""
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
    objective = SupervisedObjective(train, valid, loss=cfg.loss, batch=cfg.batch,
                                    bucket=cfg.bucket, seed=cfg.seed, select=cfg.select)
    fit_meta = {"command": "fit", **(meta or {}), "fit": dataclasses.asdict(cfg)}
    trainer = Trainer(model, objective, cfg.loop(valid is not None), out_dir, seed=cfg.seed,
                      meta=fit_meta)
    if resume and out_dir is not None and os.path.exists(trainer.checkpoint_path):
        trainer.restore(*checkpoint.load(trainer.checkpoint_path))
    t0 = time.perf_counter()
    reason = trainer.run()
    best = trainer.best_step
    return FitResult(history=trainer.history,
                     best_epoch=None if best is None else _epoch_of(trainer.history, best),
                     best_metric=None if trainer.best is None else
                     trainer.best.get("valid_metric"),
                     stop_reason=reason, elapsed_s=time.perf_counter() - t0)


def _epoch_of(history, step):
    return next(r["epoch"] for r in history if r["step"] == step)


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
    value, _ = batch_loss(loss, out, data.y.astype(out.dtype) if loss == "mse" else data.y)
    if loss == "ce":
        return value, float(np.mean(out.argmax(axis=1) == data.y))
    return value, value


def confusion_matrix(labels, predictions, n_classes):
    """Counts C[i, j] of sequences of class i predicted as j."""
    C = np.zeros((n_classes, n_classes), np.int64)
    np.add.at(C, (np.asarray(labels), np.asarray(predictions)), 1)
    return C


# ---------------------------------------------------------------------- files
def load_model(path):
    """``(model, meta)`` from the checkpoint ``fit`` wrote into its out_dir (a run directory or
    its ``checkpoint.npz``): the best epoch's parameters where validation chose one."""
    path = os.fspath(path)
    run_dir = os.path.dirname(path) if path.endswith(".npz") else path
    if path.endswith(".npz") and os.path.basename(path) != "checkpoint.npz":
        arrays, meta = checkpoint.load(path)          # a file of another name: same format
        from .trainer import check_run, _prefixed
        try:
            check_run(meta, "fit", path)
        except checkpoint.CheckpointError as e:
            raise checkpoint.CheckpointError(f"{e}; not a supervised model file") from None
        params = _prefixed(arrays, "best/") or _prefixed(arrays, "model/")
    else:
        try:
            params, meta = load_run(run_dir, "fit")
        except checkpoint.CheckpointError as e:
            raise checkpoint.CheckpointError(f"{e}; not a supervised model file") from None
    best = meta.get("best_step")
    meta["best_epoch"] = None if best is None else _epoch_of(meta["history"], best)
    model = Model(**meta["model"])
    model.load_state_dict(params)
    return model, meta
