r"""Data-parallel training across processes: torch.distributed (gloo) as the wire, nothing more.

``torchrun --nproc-per-node N -m bptt train APP ...`` starts N processes (ranks); each runs the
same command, and the one trainer (``bptt.trainer``) finds the launch in the environment
(``WORLD_SIZE``, set by torchrun; without it torch is never imported). Every rank holds the
whole model; each takes its share of every global batch (``objective.shard``), runs its own
forward and hand-written backward, and the ranks then sum their gradients so that each applies
the same update. torch only moves bytes: no autograd, no torch tensor outlives a collective.

The sum is weighted so that the result is the gradient of the *global* batch's mean loss: with
rank r's loss :math:`L_r` the mean over its :math:`w_r` examples,

.. math::
    L = \frac{\sum_r w_r L_r}{\sum_r w_r}, \qquad
    \nabla L = \frac{\sum_r w_r \nabla L_r}{\sum_r w_r},

one all-reduce of the scaled gradients (flat buffers of at most ``bucket_mb`` each, as DDP's
buckets) and one of the two float64 scalars :math:`(\sum w_r L_r, \sum w_r)`, both in flight
together. A rank with no examples (the last, short batch of an epoch) sends zeros.

A rank that dies closes its sockets and the others fail at their next collective; one that hangs
is given up after ``BPTT_DIST_TIMEOUT`` seconds (default 60). Either way each survivor raises
``DistributedError`` (one line from the command: the last checkpoint is intact, ``--resume``).
Every ``check_every`` updates the ranks compare a hash of their parameters, so a rank that
drifted (a bug, a flipped bit) stops the run instead of training a different model.
"""

import atexit
import datetime
import hashlib
import math
import os
import time

import numpy as np

TIMEOUT_ENV = "BPTT_DIST_TIMEOUT"
DEFAULT_TIMEOUT_S = 60.0
CHECK_EVERY = 100          # updates between parameter checksums
BUCKET_MB = 25             # DDP's default bucket

_COMM = None               # the process's one Comm (a process group is joined once)


class DistributedError(ConnectionError):
    """A collective failed: another rank died, hung past the timeout, or drifted."""


def launched():
    """True when this process was started by torchrun (or a launcher that sets its variables)."""
    return "WORLD_SIZE" in os.environ


def from_env():
    """The process's Comm when launched by torchrun, else None (torch not imported)."""
    global _COMM
    if not launched():
        return None
    if _COMM is None:
        _COMM = Comm.from_env()
    return _COMM


def timeout_from_env():
    raw = os.environ.get(TIMEOUT_ENV)
    if raw is None:
        return DEFAULT_TIMEOUT_S
    try:
        value = float(raw)
    except ValueError:
        value = math.nan
    if not (math.isfinite(value) and value > 0):
        raise ValueError(f"{TIMEOUT_ENV}: expected seconds > 0, got {raw!r}")
    return value


class Comm:
    """One process's end of a gloo process group: its ``rank`` of ``world``, the collectives
    the trainer needs, and how long they took (``seconds``, ``calls``: the gradient
    all-reduces)."""

    def __init__(self, *, timeout_s=DEFAULT_TIMEOUT_S, check_every=CHECK_EVERY,
                 bucket_mb=BUCKET_MB):
        try:
            import torch
            import torch.distributed as dist
        except ImportError:
            raise ImportError("this run was launched by torchrun (WORLD_SIZE is set) but torch "
                              "is not installed: pip install 'bptt[dist]'") from None
        if not (dist.is_available() and dist.is_gloo_available()):
            raise ImportError("this torch has no torch.distributed with the gloo backend")
        self.torch, self.dist = torch, dist
        self.timeout_s, self.check_every = timeout_s, check_every
        self.bucket_bytes = int(bucket_mb * 2**20)
        if not dist.is_initialized():
            try:
                dist.init_process_group("gloo", timeout=datetime.timedelta(seconds=timeout_s))
            except (RuntimeError, ValueError) as e:
                raise DistributedError(f"could not join the process group: {_first_line(e)}")\
                    from None
            atexit.register(_leave, dist)   # torn down before the interpreter's own exit
        self.rank, self.world = dist.get_rank(), dist.get_world_size()
        self.seconds, self.calls = 0.0, 0
        self._layout = None

    @classmethod
    def from_env(cls):
        return cls(timeout_s=timeout_from_env())

    @property
    def is_main(self):
        return self.rank == 0

    def __repr__(self):
        return f"Comm(rank={self.rank}, world={self.world}, gloo, timeout {self.timeout_s:g}s)"

    # ------------------------------------------------------------------ collectives
    def _run(self, what, fn):
        try:
            return fn()
        except RuntimeError as e:           # gloo: a closed socket, a timeout
            raise DistributedError(
                f"rank {self.rank} of {self.world}: {what} failed ({_first_line(e)}); another "
                f"rank died or hung (timeout {self.timeout_s:g}s, {TIMEOUT_ENV}); the last "
                f"checkpoint is intact: continue with --resume") from None

    def average(self, loss, grads, weight):
        """``(global loss, global grads, global weight)`` from this rank's ``loss``, ``grads``
        (a dict) and ``weight`` (the examples its loss averages over). The grads come back as
        views of this Comm's buffers, valid until the next call."""
        t0 = time.perf_counter()
        buckets, views = self._buffers(grads)
        w = float(weight)
        for k, g in grads.items():
            np.multiply(g.reshape(-1), w, out=views[k].reshape(-1))
        scalars = np.array([loss * w if w else 0.0, w], np.float64)
        torch, dist = self.torch, self.dist

        def reduce():
            works = [dist.all_reduce(torch.from_numpy(b), async_op=True) for b in buckets]
            works.append(dist.all_reduce(torch.from_numpy(scalars), async_op=True))
            for work in works:
                work.wait()

        self._run("the gradient all-reduce", reduce)
        total = scalars[1]
        for b in buckets:
            b /= b.dtype.type(total)
        self.seconds += time.perf_counter() - t0
        self.calls += 1
        return scalars[0] / total, dict(views), total

    def _buffers(self, grads):
        """Flat buckets for grads' keys, shapes and dtypes (kept while they stay the same) and
        each key's view into them."""
        layout = tuple((k, g.shape, g.dtype.str) for k, g in grads.items())
        if self._layout is None or self._layout[0] != layout:
            sizes = {}
            for k, g in grads.items():
                sizes.setdefault(g.dtype.str, []).append((k, g.shape, g.size))
            buckets, views = [], {}
            for dtype, entries in sizes.items():
                itemsize = np.dtype(dtype).itemsize
                group, count = [], 0
                for entry in entries + [None]:
                    if entry is None or (group and (count + entry[2]) * itemsize >
                                         self.bucket_bytes):
                        buf = np.empty(count, dtype)
                        lo = 0
                        for k, shape, size in group:
                            views[k] = buf[lo:lo + size].reshape(shape)
                            lo += size
                        buckets.append(buf)
                        group, count = [], 0
                    if entry is not None:
                        group.append(entry)
                        count += entry[2]
            self._layout = (layout, buckets, {k: views[k] for k, _, _ in layout})
        return self._layout[1], self._layout[2]

    def broadcast_params(self, params):
        """Every rank takes rank 0's parameters (a dict of arrays, written in place)."""
        torch, dist = self.torch, self.dist
        for k, p in params.items():
            buf = np.ascontiguousarray(p)
            self._run(f"the broadcast of {k}",
                      lambda b=buf: dist.broadcast(torch.from_numpy(b), 0))
            if buf is not p:
                p[...] = buf

    def broadcast_object(self, obj):
        """Rank 0's ``obj`` (picklable) on every rank."""
        box = [obj]
        self._run("a broadcast", lambda: self.dist.broadcast_object_list(box, 0))
        return box[0]

    def gather_objects(self, obj):
        """Every rank's ``obj`` as a list on rank 0 (None elsewhere)."""
        out = [None] * self.world if self.is_main else None
        self._run("a gather", lambda: self.dist.gather_object(obj, out, dst=0))
        return out

    def sum(self, values):
        """The sum over ranks of a float64 vector ``values``."""
        buf = np.array(values, np.float64).reshape(-1)
        self._run("an all-reduce", lambda: self.dist.all_reduce(self.torch.from_numpy(buf)))
        return buf

    def max(self, value):
        """The largest ``value`` (a float) over ranks."""
        buf = np.array([value], np.float64)
        self._run("an all-reduce", lambda: self.dist.all_reduce(
            self.torch.from_numpy(buf), op=self.dist.ReduceOp.MAX))
        return float(buf[0])

    def check_params(self, params, step):
        """Raise DistributedError when the ranks' parameters differ (a hash of their bytes)."""
        h = hashlib.blake2b(digest_size=8)
        for k in sorted(params):
            h.update(np.ascontiguousarray(params[k]).view(np.uint8).data)
        mine = np.frombuffer(h.digest(), np.int64).copy()
        every = [np.zeros(1, np.int64) for _ in range(self.world)]
        self._run("the parameter check", lambda: self.dist.all_gather(
            [self.torch.from_numpy(a) for a in every], self.torch.from_numpy(mine)))
        differ = [r for r, a in enumerate(every) if a[0] != every[0][0]]
        if differ:
            raise DistributedError(f"rank {self.rank} of {self.world}: at step {step} the "
                                   f"parameters of rank(s) {differ} differ from rank 0's; the "
                                   f"ranks no longer train one model (the last checkpoint is "
                                   f"rank 0's)")


def shard_bounds(n, rank, world):
    """``(lo, hi)``: rank's contiguous part of n items split as evenly as possible, the first
    n % world ranks one item more (``numpy.array_split``'s rule)."""
    base, extra = divmod(n, world)
    lo = rank * base + min(rank, extra)
    return lo, lo + base + (rank < extra)


def _leave(dist):
    """Leave the process group (gloo's threads would otherwise abort the exit)."""
    if dist.is_initialized():
        try:
            dist.destroy_process_group()
        except RuntimeError:
            pass


def _first_line(e):
    text = str(e).strip().splitlines()
    return text[0] if text else type(e).__name__
