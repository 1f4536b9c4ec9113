"""What the one trainer (``bptt.trainer``) trains on: three objectives, one per kind of data.

- ``StreamObjective``: a language model over B parallel streams of a long text, by truncated
  BPTT(k1, k2) (``bptt.strategies.TBPTT`` over the whole model), the state carried from window
  to window and reset explicitly at the start of each pass;
- ``TaskObjective``: a fresh batch from a recipe at every update (the long-range tasks), scored
  on a test set drawn once;
- ``SupervisedObjective``: epochs over a fixed set of sequences with one label or target each,
  in a seeded order (optionally bucketed by length), scored on a validation set.

Each keeps its data position and its random generators, and gives them to the trainer's
checkpoint (``state_dict``), so that a resumed run draws exactly the batches it would have drawn.

Data-parallel runs (``bptt.distributed``): the trainer calls ``shard(rank, world, all_sum)`` on
every rank, and each objective then computes its rank's part of every global batch, the one a
single process would have drawn: the stream its B/world columns (streams), a task and a supervised
set their slice of each batch drawn whole from the same seeded generator on every rank. ``weight``
is the number of examples (streams, sequences) the rank's loss averages over, so that the trainer's
weighted all-reduce gives the global batch's mean. A stream's carried state is the one state held
per rank: ``gather_state`` puts the ranks' columns back together for the checkpoint, which is
therefore the single process's, whatever the world size.
"""

import copy
import math

import numpy as np

from .losses import mse, softmax_cross_entropy
from .strategies import TBPTT

LN2 = math.log(2.0)


class StreamObjective:
    """TBPTT(k1 = the stream's seq_len, k2) over ``stream`` (a ``CharStream``); the loss of an
    update is the mean cross-entropy over its k1 new steps of the B streams. Evaluated by bits
    per character on the first ``eval_chars`` of ``valid_ids`` (none: no evaluation)."""

    plot_spec = {"lines": [("bpc", "training (bits/char)"), ("valid_bpc", "validation (bits/char)")],
                 "ylabel": "bits per character"}

    def __init__(self, model, stream, k2=None, valid_ids=None, eval_chars=None):
        self.stream, self.valid_ids, self.eval_chars = stream, valid_ids, eval_chars
        self.k1 = stream.seq_len
        self.tbptt = TBPTT(model, self.k1, self.k1 if k2 is None else k2)
        self.state = self.tbptt.start()
        self.steps_per_epoch = stream.batches_per_epoch
        self.columns = slice(None)          # the streams this rank trains on (all: one process)
        self.rank, self.world, self.all_sum = 0, 1, None

    def shard(self, rank, world, all_sum=None):
        """Train on streams [rank B/world, (rank + 1) B/world) of the B; evaluate on this rank's
        share of the validation streams, summed over ranks by ``all_sum``."""
        B = self.stream.batch_size
        if B % world:
            raise ValueError(f"a batch of {B} streams does not split evenly over {world} "
                             f"processes; choose a batch that is a multiple of the world size")
        self.columns = slice(rank * B // world, (rank + 1) * B // world)
        self.rank, self.world, self.all_sum = rank, world, all_sum

    @property
    def epoch(self):
        return self.stream.epoch

    def step(self, model, rng):
        batch = next(self.stream)
        if batch.starts_epoch:                           # an explicit reset at each new pass
            self.state = self.tbptt.start()
        x, y = batch.x[:, self.columns], batch.y[:, self.columns]     # (k1, B / world)
        losses = []

        def dlogits(logits):                             # the loss on the k1 new steps
            loss, d = softmax_cross_entropy(logits, y)
            losses.append(loss)
            return d

        self.state, _, grads = self.tbptt.step(self.state, x, dlogits, training=True, rng=rng)
        return losses[0], grads, x.shape[1], {}

    def evaluate(self, model):
        if self.valid_ids is None:
            return {}
        if self.all_sum is None:
            return {"valid_bpc": evaluate_bpc(model, self.valid_ids, self.stream.batch_size,
                                              self.k1, self.eval_chars)}
        total, count = self.all_sum(bpc_sums(model, self.valid_ids, self.stream.batch_size,
                                             self.k1, self.eval_chars, self.rank, self.world))
        return {"valid_bpc": total / count / LN2}

    @staticmethod
    def better(new, best):
        if "valid_bpc" not in new:
            return False
        return best is None or new["valid_bpc"] < best["valid_bpc"] - 1e-4

    @staticmethod
    def after_eval(record):
        return None

    def annotate(self, record):
        if record.get("train_loss") is not None:
            record["bpc"] = record["train_loss"] / LN2
            if "steps_per_s" in record:
                record["tokens_per_s"] = record["steps_per_s"] * self.k1 * self.stream.batch_size

    @staticmethod
    def postfix(record):
        out = {}
        if record.get("bpc") is not None:
            out["bpc"] = f"{record['bpc']:.3f}"
            out["step/s"] = f"{record['steps_per_s']:.1f}"
        if record.get("valid_bpc") is not None:
            out["valid"] = f"{record['valid_bpc']:.3f}"
        return out

    def state_dict(self):
        s = self.state
        arrays, parts = {}, {}
        for name in ("h", "h_n"):
            value = getattr(s, name)
            parts[name] = _put_state(arrays, name, value)
        if s.tail is not None:
            arrays["tail"] = s.tail
        return arrays, {"stream": self.stream.state_dict(), "t": s.t, "parts": parts}

    @staticmethod
    def gather_state(rank_arrays):
        """The arrays of every rank's ``state_dict`` (in rank order) as one process's: the
        streams' columns side by side (axis 1 of the states (L, B, H) and of the tail (n, B))."""
        return {k: np.concatenate([a[k] for a in rank_arrays], axis=1) for k in rank_arrays[0]}

    def load_state_dict(self, arrays, meta):
        """Continue from a checkpoint's arrays over all B streams (this rank takes its own)."""
        self.stream.load_state_dict(meta["stream"])
        arrays = {k: v[:, self.columns] for k, v in arrays.items()}
        h = _get_state(arrays, "h", meta["parts"]["h"])
        h_n = _get_state(arrays, "h_n", meta["parts"]["h_n"])
        self.state = type(self.state)(meta["t"], h, arrays.get("tail"), h_n)


class TaskObjective:
    """Fresh batches of ``task`` (a ``bptt.data.tasks.Task``) from ``default_rng([seed, 1])``;
    the test set, ``eval_size`` sequences from ``default_rng([seed, 2])``. Solved at the first
    evaluation whose test loss is under the task's threshold (and, with ``stop_when_solved``,
    the run ends there). With ``diagnose_every``, every that many updates a
    ``bptt.diagnostics.report`` of the training batch goes to ``diagnostics.jsonl`` (its time
    not counted in the budget)."""

    EVAL_CHUNK = 128     # test sequences per forward pass: bounds the tape's memory

    def __init__(self, task, batch, seed=0, eval_size=512, *, stop_when_solved=True,
                 diagnose_every=None, clock=None):
        import time
        self.task, self.batch = task, batch
        self.data_rng = np.random.default_rng([seed, 1])
        self.test_x, self.test_y = task.sample(eval_size, np.random.default_rng([seed, 2]))
        self.stop_when_solved, self.diagnose_every = stop_when_solved, diagnose_every
        self.clock = clock or time.perf_counter
        self.drawn = 0                      # batches drawn
        self.solved_step = self.solved_elapsed = None
        self.diag_seconds = 0.0
        self.epoch = 0                      # fresh data: no passes
        self.columns = slice(None)          # this rank's sequences of each batch (all: one)

    def shard(self, rank, world, all_sum=None):
        """Draw every batch whole (the same generator on every rank) and train on this rank's
        contiguous part of it (sizes differ by one at most)."""
        from .distributed import shard_bounds

        if self.batch < world:
            raise ValueError(f"a batch of {self.batch} sequences cannot give each of {world} "
                             f"processes one; choose a batch of at least the world size")
        self.columns = slice(*shard_bounds(self.batch, rank, world))

    def step(self, model, rng):
        from . import diagnostics

        x, y = self.task.sample(self.batch, self.data_rng)
        x = x[:, self.columns]
        y = y[:, self.columns] if self.task.head == "step" else y[self.columns]
        diagnose = bool(self.diagnose_every) and self.drawn % self.diagnose_every == 0
        self.drawn += 1
        info = {}
        with np.errstate(over="ignore", invalid="ignore"):  # divergence is reported, not warned
            out, _, tape = model.forward(x)
            loss, dout = self.task.loss(out, y)
            if diagnose:
                t0 = self.clock()
                info["logs"] = {"diagnostics": diagnostics.report(model, tape, dout, loss=loss)}
                info["excluded_s"] = self.clock() - t0
                self.diag_seconds += info["excluded_s"]
            _, _, grads = model.backward(dout, tape)
        return loss, grads, x.shape[1], info

    def evaluate(self, model):
        task, x, y = self.task, self.test_x, self.test_y
        B = y.shape[1] if task.head == "step" else y.shape[0]
        total, correct = 0.0, 0.0
        for lo in range(0, B, self.EVAL_CHUNK):
            hi = min(B, lo + self.EVAL_CHUNK)
            yb = y[:, lo:hi] if task.head == "step" else y[lo:hi]
            out, _, _ = model.forward(x[:, lo:hi], tape=False)
            total += task.loss(out, yb)[0] * (hi - lo)
            acc = task.accuracy(out, yb)
            correct += 0.0 if acc is None else acc * (hi - lo)
        loss = total / B
        metrics = {"test_loss": loss, "test_loss_over_baseline": loss / task.baseline,
                   "solved": bool(loss < task.threshold)}
        if task.name != "adding":
            metrics["test_accuracy"] = correct / B
        return metrics

    @staticmethod
    def better(new, best):
        return best is None or new["test_loss"] < best["test_loss"]

    def after_eval(self, record):
        if record["solved"] and self.solved_step is None:
            self.solved_step, self.solved_elapsed = record["step"], record["elapsed_s"]
            if self.stop_when_solved:
                return f"solved at step {record['step']}"
        return None

    def state_dict(self):
        return {}, {"rng": self.data_rng.bit_generator.state, "drawn": self.drawn,
                    "solved_step": self.solved_step, "solved_elapsed": self.solved_elapsed,
                    "diag_seconds": self.diag_seconds}

    def load_state_dict(self, arrays, meta):
        self.data_rng.bit_generator.state = meta["rng"]
        self.drawn, self.diag_seconds = meta["drawn"], meta["diag_seconds"]
        self.solved_step, self.solved_elapsed = meta["solved_step"], meta["solved_elapsed"]


class SupervisedObjective:
    """Epochs over ``train`` (a ``bptt.supervised.SequenceData``) in an order drawn at the start
    of each epoch from ``default_rng(seed)``; with ``bucket``, batches of similar lengths. The
    loss of a batch is the mean over its sequences (``ce`` or ``mse``). With ``valid``, every
    evaluation scores it: accuracy for ``ce`` (a tie goes to the lower validation loss), the
    mean squared error for ``mse``, or with ``select='loss'`` the validation loss."""

    BUCKET_POOL = 50    # batches sorted by length together when bucketing

    def __init__(self, train, valid=None, *, loss="ce", batch=32, bucket=False, seed=0,
                 select="metric"):
        self.train, self.valid, self.loss = train, valid, loss
        self.batch_size, self.bucket, self.select = batch, bucket, select
        self.order_rng = np.random.default_rng(seed)
        self.epoch = 0
        self.pos = 0                        # batches done in this epoch
        self.batches = None                 # this epoch's batches, drawn at its start
        self.epoch_rng_state = None         # order_rng's state before they were drawn
        self.steps_per_epoch = math.ceil(len(train) / batch)
        self.rank, self.world = 0, 1

    def shard(self, rank, world, all_sum=None):
        """Take each global batch whole (the same order on every rank, the data's own generator
        advanced as one process would) and train on this rank's contiguous part of it; the last,
        short batch of an epoch may leave a rank none (weight 0, zero gradients)."""
        self.rank, self.world = rank, world

    plot_spec = {"x": "epoch", "lines": [("train_loss", "training loss"),
                                         ("valid_loss", "validation loss")], "log": True}

    def _draw(self):
        self.epoch_rng_state = copy.deepcopy(self.order_rng.bit_generator.state)
        lengths = self.train.lengths if self.bucket else None
        self.batches = epoch_batches(self.order_rng, len(self.train), self.batch_size, lengths,
                                     self.BUCKET_POOL)

    def step(self, model, rng):
        if self.batches is None:
            self._draw()
        idx = self.batches[self.pos]
        self.pos += 1
        if self.pos == len(self.batches):
            self.epoch, self.pos, self.batches = self.epoch + 1, 0, None
        x, lengths = self.train.batch(idx)
        y = self.train.y[idx]
        if self.world > 1:                   # this rank's part, cut to its longest sequence
            from .distributed import shard_bounds

            part = slice(*shard_bounds(len(idx), self.rank, self.world))
            x, y = x[:, part], y[part]
            if lengths is not None:
                lengths = lengths[part]
                x = x[:int(lengths.max(initial=0))]
            if y.shape[0] == 0:
                return 0.0, zero_grads(model), 0, {}
        value, grads = loss_and_grads(model, x, y, lengths, loss=self.loss, training=True,
                                      rng=rng)
        return value, grads, len(y), {}

    def evaluate(self, model):
        if self.valid is None:
            return {}
        from .supervised import evaluate
        v_loss, v_metric = evaluate(model, self.valid, self.loss)
        return {"valid_loss": v_loss, "valid_metric": v_metric}

    def _key(self, m):
        if self.select == "loss":
            return (-m["valid_loss"],)
        # ce: accuracy up, then loss down; mse: error down
        return (m["valid_metric"], -m["valid_loss"]) if self.loss == "ce" else (-m["valid_metric"],)

    def better(self, new, best):
        if "valid_loss" not in new:
            return False
        return best is None or self._key(new) > self._key(best)

    @staticmethod
    def after_eval(record):
        return None

    @staticmethod
    def annotate(record):
        record["epoch_s"] = record.get("window_s")

    @staticmethod
    def postfix(record):
        return {k: f"{record[k]:.4g}" for k in ("train_loss", "valid_metric")
                if record.get(k) is not None}

    def state_dict(self):
        # data with a state of its own (a generator of masks) keeps it in the checkpoint too
        own = self.train.state_dict() if hasattr(self.train, "state_dict") else None
        return {}, {"rng": self.order_rng.bit_generator.state, "epoch": self.epoch,
                    "pos": self.pos, "epoch_rng": self.epoch_rng_state, "train": own}

    def load_state_dict(self, arrays, meta):
        if meta.get("train") is not None:
            self.train.load_state_dict(meta["train"])
        self.epoch, self.pos = meta["epoch"], meta["pos"]
        self.batches = None
        if self.pos:                         # mid-epoch: draw this epoch's batches again
            self.order_rng.bit_generator.state = meta["epoch_rng"]
            self._draw()
        self.order_rng.bit_generator.state = meta["rng"]


def rank_share(idx, rank, world):
    """Rank ``rank``'s contiguous part of a global batch's indices ``idx`` (all with world 1):
    for objectives whose data has no state of its own, so a rank can take only its part."""
    if world == 1:
        return idx
    from .distributed import shard_bounds

    return idx[slice(*shard_bounds(len(idx), rank, world))]


def zero_grads(model):
    """The gradient of a rank with no examples in this batch (its weight is 0)."""
    return {k: np.zeros_like(v) for k, v in model.params.items()}


def epoch_batches(rng, n, batch, lengths=None, pool=50):
    """One epoch's batches of indices: a random order cut into batches; with ``lengths``, each
    run of ``pool`` batches of that order is sorted by length before it is cut, and the batches
    are shuffled, so that a batch holds sequences of similar lengths (less padding)."""
    order = rng.permutation(n)
    if lengths is None:
        return [order[lo:lo + batch] for lo in range(0, n, batch)]
    out = []
    size = batch * pool
    for lo in range(0, n, size):
        chunk = order[lo:lo + size]
        chunk = chunk[np.argsort(lengths[chunk], kind="stable")]
        out += [chunk[i:i + batch] for i in range(0, len(chunk), batch)]
    return [out[i] for i in rng.permutation(len(out))]


def loss_and_grads(model, x, y, lengths=None, *, loss="ce", training=False, rng=None):
    """Forward and backward on one batch of whole sequences: ``(mean loss, grads)``. x, y,
    lengths as in ``bptt.supervised.SequenceData`` (for a batch of B sequences)."""
    out, _, tape = model.forward(x, None, lengths, training=training, rng=rng)
    value, dout = batch_loss(loss, out, y)
    _, _, grads = model.backward(dout, tape)
    return value, grads


def batch_loss(loss, out, y):
    """``(mean loss, dout)`` of one batch: cross-entropy on labels or the mean squared error."""
    if loss == "ce":
        return softmax_cross_entropy(out, y)
    return mse(out, y)


def evaluate_bpc(model, ids, batch, seq_len, max_chars=None):
    """Bits per character of a language model over ``ids``, read as ``batch`` parallel streams
    with the state carried from chunk to chunk (as in training), forward only."""
    total, count = bpc_sums(model, ids, batch, seq_len, max_chars)
    return total / count / LN2


def bpc_sums(model, ids, batch, seq_len, max_chars=None, rank=0, world=1):
    """``(summed cross-entropy in nats, characters)`` of ``evaluate_bpc``'s streams that rank
    ``rank`` of ``world`` reads (a contiguous share of them; all with world 1)."""
    from .data.text import CharStream
    from .distributed import shard_bounds

    ids = np.asarray(ids)
    if max_chars is not None:
        ids = ids[:max_chars]
    batch = max(1, min(batch, (len(ids) - 1) // 2))
    seq_len = max(1, min(seq_len, len(ids) // batch - 1))
    stream = CharStream(ids, batch, seq_len)
    columns = slice(*shard_bounds(batch, rank, world))
    state, total, count = None, 0.0, 0
    if columns.start == columns.stop:
        return total, count
    for k in range(stream.batches_per_epoch):
        x, y, _ = stream.batch_at(k)
        x, y = x[:, columns], y[:, columns]
        logits, state, _ = model.forward(x, state, tape=False)
        loss, _ = softmax_cross_entropy(logits, y, reduction="sum")
        total, count = total + loss, count + y.size
    return total, count


def _put_state(arrays, name, value):
    """Store a stack state (an array, a pair for LSTM, or None) as arrays; return its parts."""
    if value is None:
        return 0
    parts = value if isinstance(value, tuple) else (value,)
    for i, s in enumerate(parts):
        arrays[f"{name}/{i}"] = s
    return len(parts)


def _get_state(arrays, name, n):
    if n == 0:
        return None
    parts = tuple(arrays[f"{name}/{i}"] for i in range(n))
    return parts if n == 2 else parts[0]
