r"""Synthetic long-range tasks, generated from seeded recipes: the adding problem, copy memory and
temporal order. Each recipe is a function ``(length, batch_size, rng) -> (x, y)`` of a
``numpy.random.Generator``, so a seed gives the same data on every machine; arrays are
time-major.

**Adding** (Hochreiter & Schmidhuber 1997; in the form of Le, Jaitly & Hinton 2015 and Arjovsky
et al. 2016). Each of the T steps carries two features: a value drawn uniformly from [0, 1) and a
marker, 0 except at two steps, one drawn uniformly from the first half (steps 0..T//2-1) and one
from the second (T//2..T-1). The target is the sum of the two marked values. x (T, B, 2) float,
y (B, 1) float. Predicting 1 whatever the input scores the variance of a sum of two uniforms:

.. math::  \mathrm{MSE}_{\text{baseline}} = E[(u_1 + u_2 - 1)^2] = 2 \cdot \tfrac{1}{12} = \tfrac16
    \approx 0.167

(Le et al. quote 0.1767, measured on their own sample.) Solved: test MSE under 0.01.

**Copy memory** (Arjovsky, Shah & Bengio 2016, after Hochreiter & Schmidhuber 1997). An alphabet
of 10 ids: 0 blank, 1..8 the symbols, 9 the delimiter. The input, T + 20 steps long, is 10
symbols drawn uniformly from 1..8, then T - 1 blanks, the delimiter, and 10 blanks; the target is
T + 10 blanks, then the 10 symbols. x (T+20, B) int ids, y (T+20, B) int classes in 0..8 (the
model has 9 outputs: the delimiter is never a target). The cross-entropy is averaged over all
T + 20 steps. The memoryless baseline predicts blank for T + 10 steps and a uniform guess over
the 8 symbols for the last 10:

.. math::  \mathrm{CE}_{\text{baseline}} = \frac{10 \ln 8}{T + 20}

Solved: test cross-entropy under 10% of that.

**Temporal order** (Hochreiter & Schmidhuber 1997, experiment 6a). An alphabet of 8 symbols
a, b, c, d, B, E, X, Y (ids 0..7). A sequence starts with B and ends with E; every other step is
one of a, b, c, d drawn uniformly, except two steps t1 and t2 that hold X or Y, each drawn with
probability 1/2: t1 uniform in [round(0.1 T), round(0.2 T)] and t2 in [round(0.5 T), round(0.6 T)]
(for T = 100 the paper's 10..20 and 50..60). The class is the order of the two: XX, XY, YX, YY
(the paper's Q, R, S, U) = 0, 1, 2, 3, each with probability 1/4. x (T, B, 8) one-hot float,
y (B,) int. The paper draws T in 100..110 per sequence; here T is fixed, so a batch needs no
padding. Chance cross-entropy is ln 4; solved: test cross-entropy under 10% of ln 4.
"""

import math
from dataclasses import dataclass

import numpy as np

from ..losses import mse, softmax_cross_entropy

COPY_SYMBOLS = 10      # symbols to remember in the copy task
COPY_CATEGORIES = 8    # drawn from ids 1..8
COPY_BLANK, COPY_DELIMITER = 0, 9
ORDER_SYMBOLS = ("a", "b", "c", "d", "B", "E", "X", "Y")
ORDER_CLASSES = ("XX", "XY", "YX", "YY")


def adding_problem(length, batch_size, rng):
    """x (T, B, 2): values in [0, 1) and two markers; y (B, 1): the sum of the marked values."""
    T, B = _check_sizes("adding", length, batch_size, rng, min_length=2)
    values = rng.random((T, B))
    first = rng.integers(0, T // 2, size=B)
    second = rng.integers(T // 2, T, size=B)
    markers = np.zeros((T, B))
    cols = np.arange(B)
    markers[first, cols] = 1.0
    markers[second, cols] = 1.0
    x = np.stack([values, markers], axis=2)
    y = (values[first, cols] + values[second, cols])[:, None]
    return x, y


def copy_memory(length, batch_size, rng):
    """x (T+20, B) ids: 10 symbols, T-1 blanks, the delimiter, 10 blanks; y (T+20, B): T+10 blanks
    then the 10 symbols."""
    T, B = _check_sizes("copy", length, batch_size, rng, min_length=1)
    n = COPY_SYMBOLS
    symbols = rng.integers(1, COPY_CATEGORIES + 1, size=(n, B))
    x = np.full((T + 2 * n, B), COPY_BLANK, np.int64)
    x[:n] = symbols
    x[T + n - 1] = COPY_DELIMITER
    y = np.full((T + 2 * n, B), COPY_BLANK, np.int64)
    y[T + n:] = symbols
    return x, y


def temporal_order(length, batch_size, rng):
    """x (T, B, 8) one-hot over a, b, c, d, B, E, X, Y; y (B,): XX, XY, YX, YY as 0..3."""
    T, B = _check_sizes("order", length, batch_size, rng, min_length=10)
    ids = rng.integers(0, 4, size=(T, B))               # a, b, c, d
    ids[0], ids[-1] = 4, 5                              # B ... E
    t1 = rng.integers(round(0.1 * T), round(0.2 * T) + 1, size=B)
    t2 = rng.integers(round(0.5 * T), round(0.6 * T) + 1, size=B)
    is_y = rng.integers(0, 2, size=(2, B))              # 0: X, 1: Y
    cols = np.arange(B)
    ids[t1, cols] = 6 + is_y[0]
    ids[t2, cols] = 6 + is_y[1]
    x = np.zeros((T, B, len(ORDER_SYMBOLS)))
    x[np.arange(T)[:, None], cols[None, :], ids] = 1.0
    y = 2 * is_y[0] + is_y[1]
    return x, y.astype(np.int64)


@dataclass(frozen=True)
class Task:
    """A task at one length: its recipe, the model shape it needs, its loss and its baseline.

    ``steps`` is the number of time steps of a sequence (T + 20 for copy, else T); ``input`` and
    ``head`` are those of ``bptt.model.Model``; the task is solved when the test loss is under
    ``threshold``.
    """

    name: str
    length: int

    def __post_init__(self):
        if self.name not in TASKS:
            raise ValueError(f"task: expected one of {', '.join(TASKS)}, got {self.name!r}")
        minimum = TASKS[self.name][1]
        if isinstance(self.length, bool) or not isinstance(self.length, (int, np.integer)) \
                or self.length < minimum:
            raise ValueError(f"task {self.name}: expected length an integer >= {minimum}, got "
                             f"{self.length!r}")

    def sample(self, batch_size, rng):
        """A fresh batch (x, y) from ``rng``."""
        return TASKS[self.name][0](self.length, batch_size, rng)

    @property
    def steps(self):
        return self.length + 2 * COPY_SYMBOLS if self.name == "copy" else self.length

    @property
    def input(self):
        return "embedding" if self.name == "copy" else "identity"

    @property
    def input_size(self):
        return {"adding": 2, "copy": COPY_SYMBOLS, "order": len(ORDER_SYMBOLS)}[self.name]

    @property
    def output_size(self):
        return {"adding": 1, "copy": COPY_CATEGORIES + 1, "order": len(ORDER_CLASSES)}[self.name]

    @property
    def head(self):
        return "step" if self.name == "copy" else "last"

    @property
    def baseline(self):
        """The loss of the memoryless baseline (see the module docstring)."""
        if self.name == "adding":
            return 1.0 / 6.0
        if self.name == "copy":
            return COPY_SYMBOLS * math.log(COPY_CATEGORIES) / self.steps
        return math.log(len(ORDER_CLASSES))

    @property
    def threshold(self):
        return 0.01 if self.name == "adding" else 0.1 * self.baseline

    def loss(self, out, y):
        """``(loss, dout)``: MSE for adding, mean cross-entropy over every target otherwise."""
        if self.name == "adding":
            return mse(out, y)
        return softmax_cross_entropy(out, y)

    def accuracy(self, out, y):
        """Share of correct classes (copy: of the 10 recalled symbols); None for adding."""
        if self.name == "adding":
            return None
        if self.name == "copy":
            out, y = out[-COPY_SYMBOLS:], y[-COPY_SYMBOLS:]
        return float(np.mean(out.argmax(axis=-1) == y))


def _check_sizes(name, length, batch_size, rng, min_length):
    for what, value, low in (("length", length, min_length), ("batch_size", batch_size, 1)):
        if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < low:
            raise ValueError(f"{name}: expected {what} an integer >= {low}, got {value!r}")
    if not isinstance(rng, np.random.Generator):
        raise TypeError(f"{name}: expected rng a numpy.random.Generator, got "
                        f"{type(rng).__name__}")
    return int(length), int(batch_size)


TASKS = {  # name -> (recipe, minimum length)
    "adding": (adding_problem, 2),
    "copy": (copy_memory, 1),
    "order": (temporal_order, 10),
}
