r"""Gradient clipping on a dict of gradient arrays, in place, as ``torch.nn.utils`` does it.

``clip_grad_norm`` rescales every array by one factor when the global L2 norm over all of them
exceeds ``max_norm`` (Pascanu et al. 2013), with PyTorch's formula:

.. math::
    \|g\| = \sqrt{\textstyle\sum_k \|g_k\|_2^2}, \qquad
    s = \frac{\mathrm{max\_norm}}{\|g\| + 10^{-6}}, \qquad
    g_k \leftarrow s\, g_k \ \text{ when } s < 1

``clip_grad_value`` clamps each element to [-clip_value, clip_value].

A gradient holding nan or inf is an error here (PyTorch's ``error_if_nonfinite=True``, made the
only behaviour): both functions raise a ValueError naming the keys at fault and leave every array
untouched, so that a step that blew up is never silently scaled to zero or clamped to a finite
value. Norms are accumulated in float64 whatever the arrays' dtype.
"""

import math
import numbers
from dataclasses import asdict, dataclass

import numpy as np


@dataclass(frozen=True)
class ClipStats:
    """What one clipping call saw and did.

    ``fraction_clipped`` is the fraction of elements the call changed: for value clipping those
    beyond the bound, for norm clipping 1.0 when it fired (every element is scaled) and 0.0 if not.
    """

    norm_before: float
    norm_after: float
    clipped: bool
    fraction_clipped: float


def clip_grad_norm(grads, max_norm):
    """Scale ``grads`` in place so that their global L2 norm is at most ``max_norm``.

    Returns ClipStats; ``norm_after`` is ``norm_before * s`` when clipped (the norm that the
    scaling gives, up to rounding), else ``norm_before``. ``max_norm=inf`` only measures.
    """
    name = "clip_grad_norm"
    max_norm = _positive(name, "max_norm", max_norm)
    squares = _squared_norms(name, grads)
    norm = math.sqrt(sum(squares.values()))
    scale = max_norm / (norm + 1e-6)
    if scale >= 1:
        return ClipStats(norm, norm, False, 0.0)
    for g in grads.values():
        g *= scale
    return ClipStats(norm, norm * scale, True, 1.0)


def clip_grad_value(grads, clip_value):
    """Clamp every element of ``grads`` to [-clip_value, clip_value] in place; return ClipStats."""
    name = "clip_grad_value"
    clip_value = _positive(name, "clip_value", clip_value)
    norm_before = math.sqrt(sum(_squared_norms(name, grads).values()))
    changed = total = 0
    for g in grads.values():
        changed += int(np.count_nonzero(np.abs(g) > clip_value))
        total += g.size
        np.clip(g, -clip_value, clip_value, out=g)
    norm_after = math.sqrt(sum(_squared_norms(name, grads).values())) if changed else norm_before
    return ClipStats(norm_before, norm_after, changed > 0, changed / total if total else 0.0)


class ClipLog:
    """A running record of clipping for the trainer's logs: how often it fired, the last and
    mean norms. ``add`` each step's ClipStats; ``summary()`` gives plain numbers (nan for the
    rates and means before the first step)."""

    def __init__(self):
        self.steps = 0
        self.times_clipped = 0
        self.last = None
        self._sum_before = 0.0
        self._sum_after = 0.0

    def add(self, stats):
        """Record one call's ClipStats; return it, so ``log.add(clip_grad_norm(g, 1.0))`` reads."""
        if not isinstance(stats, ClipStats):
            raise TypeError(f"ClipLog: expected ClipStats (what clip_grad_norm and "
                            f"clip_grad_value return), got {type(stats).__name__}")
        self.steps += 1
        self.times_clipped += bool(stats.clipped)
        self.last = stats
        self._sum_before += stats.norm_before
        self._sum_after += stats.norm_after
        return stats

    @property
    def clip_rate(self):
        return self.times_clipped / self.steps if self.steps else math.nan

    @property
    def mean_norm_before(self):
        return self._sum_before / self.steps if self.steps else math.nan

    @property
    def mean_norm_after(self):
        return self._sum_after / self.steps if self.steps else math.nan

    def summary(self):
        last = self.last
        return {"steps": self.steps, "times_clipped": self.times_clipped,
                "clip_rate": self.clip_rate,
                "last_norm_before": last.norm_before if last else math.nan,
                "last_norm_after": last.norm_after if last else math.nan,
                "mean_norm_before": self.mean_norm_before,
                "mean_norm_after": self.mean_norm_after}

    def state_dict(self):
        """The record as plain Python values (JSON-ready), for a checkpoint."""
        return {"steps": self.steps, "times_clipped": self.times_clipped,
                "sum_norm_before": self._sum_before, "sum_norm_after": self._sum_after,
                "last": None if self.last is None else asdict(self.last)}

    def load_state_dict(self, state):
        """Restore what ``state_dict`` gave; the mean norms then continue where they were."""
        keys = ("steps", "times_clipped", "sum_norm_before", "sum_norm_after", "last")
        if not hasattr(state, "keys") or set(state.keys()) != set(keys):
            got = sorted(state.keys()) if hasattr(state, "keys") else type(state).__name__
            raise ValueError(f"ClipLog: expected a state dict with keys {list(keys)}, got {got}")
        last = state["last"]
        self.last = None if last is None else ClipStats(**last)
        self.steps, self.times_clipped = int(state["steps"]), int(state["times_clipped"])
        self._sum_before = float(state["sum_norm_before"])
        self._sum_after = float(state["sum_norm_after"])

    def __repr__(self):
        return (f"ClipLog(steps={self.steps}, times_clipped={self.times_clipped}, "
                f"mean_norm_before={self.mean_norm_before:.4g})")


def _squared_norms(name, grads):
    """Each array's squared L2 norm in float64, after checking that grads can be clipped in place;
    raise naming the keys whose values are not finite."""
    if not hasattr(grads, "items"):
        raise TypeError(f"{name}: expected grads a dict of name -> array, got "
                        f"{type(grads).__name__}")
    squares = {}
    for k, g in grads.items():
        if not isinstance(g, np.ndarray):
            raise TypeError(f"{name}: grads[{k!r}]: expected a NumPy array (clipped in place), "
                            f"got {type(g).__name__}")
        if g.dtype not in (np.float32, np.float64):
            raise TypeError(f"{name}: grads[{k!r}]: expected dtype float32 or float64, got "
                            f"{g.dtype}")
        if not g.flags.writeable:
            raise ValueError(f"{name}: grads[{k!r}] is read-only; clipping writes into it")
        g64 = g.ravel().astype(np.float64, copy=False)
        squares[k] = float(np.dot(g64, g64))
    bad = [k for k, s in squares.items() if not math.isfinite(s)]
    if bad:
        raise ValueError(f"{name}: non-finite gradient norm (nan or inf values) in {bad}; "
                         f"nothing was clipped")
    return squares


def _positive(name, what, value):
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, numbers.Real):
        raise TypeError(f"{name}: expected {what} a positive number, got {value!r}")
    value = float(value)
    if not value > 0:
        raise ValueError(f"{name}: expected {what} > 0, got {value!r}")
    return value
