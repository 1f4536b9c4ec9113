r"""Checkpointed BPTT under a memory budget (Gruslys et al. 2016), used by the layers. ``layer.forward(x,
memory=m)`` keeps at most m *step states* per (layer, direction), where a step state is what one
step of a cell tape holds (for an LSTM: h_t, c_t, tanh(c_t) and the four gates); a cell tape of s
steps counts s, whether kept or made for a moment while recomputing. A kept step is also a
checkpoint: its state is where a recomputation restarts. Not counted: the running state and the
message dL/dh (one step's worth each), and the layer's inputs and outputs, which full BPTT holds
as well. ``layer.backward`` recomputes what was not kept.

Let C(t, m) be the fewest cell forward steps (the first pass included) that backpropagate t steps
with m slots. Run y steps, keep the tape of step y; backpropagate the t-y steps after it with the
m-1 slots left, then step y from its tape, then the y-1 steps before it with all m slots again.
This is Gruslys et al.'s recursion with the kept thing a step's internal state (as in their
BPTT-ISM), one slot each:

.. math::
    C(t, m) = \min_{1 \le y \le t} \left[\, y + C(t - y, m - 1) + C(y - 1, m) \,\right],
    \qquad C(0, m) = 0,\quad C(t, 0) = \infty\ (t \ge 1),

so C(t, 1) = t(t+1)/2 and C(t, m) = t for m >= t. Keeping the tape of step y dominates keeping only
its state (their BPTT-HSM): under this count both take one slot, and the tape saves recomputing
step y. The recursion has the closed form of Griewank's binomial checkpointing (revolve, 1992):
C(., m) is convex, and its increment C(t, m) - C(t-1, m) is the smallest k with
binom(m+k, k) > t, so each k holds for binom(m+k-1, k) consecutive lengths (the tests check this
against the recursion itself). A split therefore costs O(log T) to plan instead of O(T^2 m) for
the table, and the split taken is the recursion's own argmin (the last of its ties: the same cost
in fewer cell calls).
"""

import bisect
import math
from dataclasses import dataclass, field

import numpy as np

# ---------------------------------------------------------------------------------------------
# Checkpointed BPTT: the plan


def _check_count(value, what, who):
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)):
        raise TypeError(f"{who}: expected {what} a positive integer, got {value!r}")
    if value < 1:
        raise ValueError(f"{who}: expected {what} a positive integer, got {value!r}")
    return int(value)


def check_memory(memory, who):
    """``memory`` as an int >= 1, or an error naming ``who`` and the value that came."""
    if isinstance(memory, bool) or not isinstance(memory, (int, np.integer)):
        raise TypeError(f"{who}: expected memory a positive integer (step states kept per layer "
                        f"and direction) or None, got {memory!r}")
    if memory < 1:
        raise ValueError(f"{who}: expected memory a positive integer (step states kept per layer "
                         f"and direction; 1 is the least, at a cost of T(T+1)/2 steps), "
                         f"got {memory!r}")
    return int(memory)


_BINOMIALS = {}  # m -> [binom(m+1, 1), binom(m+2, 2), ...], extended on demand


def _repeats(u, m):
    """The u-th increment C(u, m) - C(u-1, m): the smallest k >= 1 with binom(m+k, k) > u."""
    if u <= m:                    # binom(m+1, 1) = m+1 > u
        return 1
    if m == 1:                    # binom(1+k, k) = k+1
        return u
    row = _BINOMIALS.setdefault(m, [m + 1])
    while row[-1] <= u:
        k = len(row) + 1
        row.append(row[-1] * (m + k) // k)
    return bisect.bisect_right(row, u) + 1


def checkpoint_cost(t, m):
    """C(t, m): cell forward steps that backpropagate t steps keeping m step states (module doc)."""
    if t == 0:
        return 0
    if m == 0:
        return math.inf
    k = _repeats(t, m)
    # the binom(m+k-1, k-1) - 1 lengths before the current run of increment k cost, in all,
    # sum_{j<k} j binom(m+j-1, j) = m binom(m+k-1, k-2)  (hockey stick)
    before = m * math.comb(m + k - 1, k - 2) if k >= 2 else 0
    return before + k * (t - math.comb(m + k - 1, k - 1) + 1)


def _best_split(t, m):
    """The largest y in 1..t that minimises f(y) = y + C(t-y, m-1) + C(y-1, m).

    Ties are many; the largest y gives the same cost in fewer, longer pieces (fewer cell calls).
    """
    # f(y) - f(y-1) = 1 + dC(y-1, m) - dC(t-y+1, m-1) is nondecreasing in y (C is convex), so
    # the last y where it is <= 0 is the last minimiser. With m = 1 only y = t is finite.
    lo, hi = 1, t
    while lo < hi:
        y = (lo + hi + 1) // 2
        right = math.inf if m == 1 else _repeats(t - y + 1, m - 1)
        if 1 + _repeats(y - 1, m) <= right:
            lo = y
        else:
            hi = y - 1
    return lo


@dataclass(frozen=True)
class Plan:
    """The checkpointing plan for T steps and ``memory`` step states, with its cost.

    ``forward_steps`` counts every cell forward step the pass runs, the first pass included:
    T when nothing is recomputed. ``ratio`` is forward_steps / T.
    """

    T: int
    memory: int
    forward_steps: int
    _nodes: dict = field(default_factory=dict, repr=False, compare=False)

    @property
    def recompute_steps(self):
        return self.forward_steps - self.T

    @property
    def ratio(self):
        return self.forward_steps / self.T

    def node(self, t, m):
        """How to backpropagate t steps with m free slots: ``(sweep, run, right, left)``.

        Run ``sweep`` steps keeping only the running state, then ``run`` steps keeping their
        tapes (``run`` slots); backpropagate the ``right`` subproblem after them (None or
        ``(t', m')``), then the run, then the ``left`` one, the swept steps, with all m slots.
        Consecutive splits at y = 1 are one run: one cell call instead of one per step.
        """
        key = (t, m)
        if key not in self._nodes:
            y = _best_split(t, m)
            run, t_r, m_r = 1, t - y, m - 1
            while t_r > 0:
                if t_r <= m_r:                  # the rest fits: keep it all
                    run, t_r, m_r = run + t_r, 0, m_r - t_r
                elif _best_split(t_r, m_r) == 1:
                    run, t_r, m_r = run + 1, t_r - 1, m_r - 1
                else:
                    break
            self._nodes[key] = (y - 1, run, (t_r, m_r) if t_r else None,
                                (y - 1, m) if y > 1 else None)
        return self._nodes[key]

    def __str__(self):
        return (f"Plan(T={self.T}, memory={self.memory}: {self.forward_steps} forward steps, "
                f"{self.ratio:.3f} x T)")


def plan_checkpoints(T, memory):
    """The optimal checkpointing plan for a sequence of T steps with ``memory`` step states.

    Planning is cheap (O(log T) per split, splits made as the pass reaches them), so it can be
    used to choose a budget: ``plan_checkpoints(10_000, 100).ratio``.
    """
    T = _check_count(T, "T", "plan_checkpoints")
    memory = _check_count(memory, "memory", "plan_checkpoints")
    return Plan(T, memory, checkpoint_cost(T, min(memory, T)))


# ---------------------------------------------------------------------------------------------
# Checkpointed BPTT: running the plan over one cell


@dataclass
class StateCount:
    """Step states alive at once (cell tapes of s steps count s), over a pass and at peak, and
    the cell forward steps run; shared by every cell of a layer."""

    alive: int = 0
    peak: int = 0
    forward_steps: int = 0

    def take(self, n):
        self.alive += n
        self.peak = max(self.peak, self.alive)
        self.forward_steps += n

    def give(self, n):
        self.alive -= n


class Checkpointed:
    """What a checkpointed forward keeps for one cell: the tapes of the first pass's runs (at
    most ``plan.memory`` steps), the input and the weights to recompute the rest."""

    def __init__(self, cell, x, weights, mask, options, plan, count):
        self.cell, self.x, self.mask, self.options = cell, x, mask, options
        # a copy: recomputation must see the weights the first pass saw
        self.weights = {k: None if v is None else v.copy() for k, v in weights.items()}
        self.plan = plan
        self.count = count             # the layer's, shared by its cells
        self.own = StateCount()        # this cell's alone
        self.chain = None              # the first pass's runs, until backward spends them
        self._shared = {}              # one copy of each weight array the cell puts in its tapes

    def _forward(self, a, n, state):
        """Cell forward over steps a..a+n-1, counted."""
        mask = None if self.mask is None else self.mask[a:a + n]
        y, state_n, tape = self.cell.forward(self.x[a:a + n], state, self.weights, mask,
                                             **self.options)
        if isinstance(tape, dict):
            # cells copy their (reordered) weights into every tape; up to `memory` tapes live
            # at once here, so let them share one copy. Only arrays without a time axis
            # (ndim <= 2) and equal to the first tape's are shared; tapes are read-only.
            for k, v in tape.items():
                if isinstance(v, np.ndarray) and v.ndim <= 2:
                    first = self._shared.setdefault(k, v)
                    if first is not v and first.shape == v.shape and np.array_equal(first, v):
                        tape[k] = first
        self.count.take(n)
        self.own.take(n)
        return y, state_n, tape

    def _free(self, n):
        self.count.give(n)
        self.own.give(n)

    def _sweep(self, a, n, state, slots, y_out):
        """Run n steps from ``state`` keeping only the state, in pieces of at most ``slots``
        steps (their tapes are transient, but count); return the state after step a+n-1."""
        end = a + n
        while a < end:
            c = min(slots, end - a)
            y, state_n, tape = self._forward(a, c, state)
            if y_out is not None:
                y_out[a:a + c] = y
            state = _copy_state(state_n)   # a view would keep the whole tape alive
            del y, state_n, tape
            self._free(c)
            a += c
        return state

    def first_pass(self, key, a, state, y_out):
        """Descend the chain of subproblem ``key`` from step a: sweep, keep the run, go right.

        Returns the runs, in time order, as [left, a, state at a, b, run, tape], and the state
        after the last step.
        """
        chain = []
        while key is not None:
            t, m = key
            sweep, run, right, left = self.plan.node(t, m)
            s = self._sweep(a, sweep, state, m, y_out) if sweep else state
            b = a + sweep
            y, s_run, tape = self._forward(b, run, s)
            if y_out is not None:
                y_out[b:b + run] = y
            del y, s
            chain.append([left, a, state if left else None, b, run, tape])
            state, a, key = s_run, b + run, right   # s_run is a view into the tape: free
        return chain, state


def _copy_state(state):
    if isinstance(state, tuple):
        return tuple(np.array(s, copy=True) for s in state)
    return np.array(state, copy=True)


def checkpointed_forward(cell, x, state0, weights, mask, plan, count, **options):
    """Like ``cell.forward``, keeping at most ``plan.memory`` step states; the tape returned is
    a ``Checkpointed`` for ``checkpointed_backward``."""
    ck = Checkpointed(cell, x, weights, mask, options, plan, count)
    T, B = x.shape[:2]
    H = weights["weight_hh"].shape[1]
    y = np.empty((T, B, H), x.dtype)
    ck.chain, state_n = ck.first_pass((T, min(plan.memory, T)), 0, state0, y)
    return y, state_n, ck


def checkpointed_backward(dy, dstate_n, ck, clip=None, record=None):
    """Like ``cell.backward`` over a ``Checkpointed``: walk the plan back, recomputing."""
    if ck.chain is None:
        raise ValueError("checkpointed tape already backpropagated")
    stack, ck.chain = ck.chain, None   # backward frees the first pass's runs as it goes
    x = ck.x
    dx = np.empty_like(x)
    grads = None
    dstate = dstate_n
    while stack:
        left, a, state, b, run, tape = stack.pop()
        # the right part (popped before) has brought dL/dh to the end of this run
        extra = {} if record is None else {"record": record[b:b + run]}
        dx_r, dstate, g = ck.cell.backward(dy[b:b + run], dstate, tape, clip=clip, **extra)
        del tape
        ck._free(run)
        dx[b:b + run] = dx_r
        if grads is None:
            grads = g
        else:
            for k, v in g.items():
                grads[k] += v
        if left is not None:             # then the steps before it, recomputed from state
            more, _ = ck.first_pass(left, a, state, None)
            stack.extend(more)
        del state
    return dx, dstate, grads


def is_spent(cells):
    """Whether a layer tape's checkpointed cells were already backpropagated."""
    return any(isinstance(c, Checkpointed) and c.chain is None for c in cells)
