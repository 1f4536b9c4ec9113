r"""Gradient strategies: where the backward message is cut, and what is recomputed.

Full BPTT is ``layer.forward`` then ``layer.backward`` over the whole sequence. This module adds
the two others that the explicit backward pass makes possible.

**Truncated BPTT, TBPTT(k1, k2)** (Williams & Peng 1990; Sutskever 2013). A stream is read k1
steps at a time. After step t, the losses of steps t-k1+1..t are backpropagated to step t-k2+1
(k2 >= k1) and no further: the stack's state before that step, h_{t-k2} (every layer's), is a
constant. With per-step output gradients dy_s fixed, update t has the gradient

.. math::
    g_t = \frac{\partial}{\partial \theta} \sum_{s=t-k_1+1}^{t} \langle dy_s, y_s \rangle
    \quad\text{with } h_{t-k_2} \text{ held constant.}

k1 = k2 is the common chunked form; k2 > k1 gives every loss at least k2-k1+1 steps of history.
``TBPTT`` holds no stream: the caller holds a ``StreamState`` (the state at the start of the next
window and the last k2-k1 inputs) and passes it back; memory is O(k2), whatever the stream's
length. Each update re-runs the stack forward over its k2-step window from the saved state, so a
stream costs k2/k1 forward passes and k2/k1 backward passes per step (the re-run also carries the
state: there is no separate carrying pass).

**Checkpointed BPTT under a memory budget** (Gruslys et al. 2016). ``layer.forward(x,
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


# ---------------------------------------------------------------------------------------------
# Truncated BPTT


@dataclass(frozen=True)
class StreamState:
    """Where a TBPTT stream stands; the caller holds it and passes it back to ``TBPTT.step``.

    ``t`` steps have been read. ``h`` is the stack's state (as ``forward``'s h0, None for zeros)
    after step t - len(tail): where the next window starts. ``tail`` holds the inputs of the
    last min(t, k2-k1) steps (time-major), which the next window re-runs; None when empty.
    ``h_n`` is the state after step t, to carry into evaluation or generation.
    """

    t: int
    h: object
    tail: object
    h_n: object


class TBPTT:
    """Truncated BPTT(k1, k2) over a stream, for a unidirectional ``RNN``, ``LSTM`` or ``GRU``
    (any ``num_layers``), or a whole ``bptt.model.Model`` with a per-step head (then y is the
    head's output, the logits of a language model, and dy the loss's gradient with respect to
    it). Only the public methods of the layer or model are used: ``check_input``, ``forward``
    and ``backward``.

    ``start(h0)`` begins a stream (and is the reset); ``step(state, x, dy)`` reads the next
    chunk of at most k1 steps and returns ``(state, y, grads)``. Each update backpropagates its
    chunk's losses through the chunk and the k2-k1 steps before it, from the state saved before
    them; for a full chunk of k1 steps that is the window of k2 steps ending at the chunk's last
    step. A shorter chunk (the end of a stream) keeps the same k2-k1 steps of history before it.
    The window runs without dropout unless ``step`` is given ``training=True`` and an ``rng``.
    ``clip`` clips dL/dh_t at every step of the window (layers only).
    """

    def __init__(self, layer, k1, k2, *, clip=None):
        who = "TBPTT"
        if not all(hasattr(layer, a) for a in ("forward", "backward", "check_input",
                                               "bidirectional", "params")):
            raise TypeError(f"{who}: expected a bptt.RNN, LSTM or GRU layer, got "
                            f"{type(layer).__name__} (a bptt Model with a step head streams too)")
        if layer.bidirectional:
            raise ValueError(f"{who}: a bidirectional layer cannot stream: its reverse direction "
                             f"starts from the end of the sequence, which a stream never reaches;"
                             f" got {layer!r}")
        k1 = _check_count(k1, "k1", who)
        k2 = _check_count(k2, "k2", who)
        if k2 < k1:
            raise ValueError(f"{who}: expected k2 >= k1 (each update backpropagates its k1 losses "
                             f"through k2 steps), got k1={k1}, k2={k2}")
        if clip is not None and (isinstance(clip, bool) or not isinstance(clip, (int, float))
                                 or not (math.isfinite(clip) and clip > 0)):
            raise ValueError(f"{who}: expected clip a positive finite number or None, got "
                             f"{clip!r}")
        if clip is not None and not hasattr(layer, "hidden_size"):
            raise ValueError(f"{who}: clip applies to a layer's dL/dh; clip a model's gradient "
                             f"with bptt.clip instead")
        self.layer, self.k1, self.k2 = layer, k1, k2
        self.clip = clip
        self.batch_first = getattr(layer, "batch_first", False)

    def __repr__(self):
        return f"TBPTT({self.layer!r}, k1={self.k1}, k2={self.k2})"

    def start(self, h0=None):
        """A new stream from h0 (None: zeros), shaped as ``layer.forward``'s h0."""
        return StreamState(0, h0, None, h0)

    def step(self, state, x, dy, *, training=False, rng=None):
        """Read chunk x (r <= k1 steps, the layer's layout); return ``(state, y, grads)``.

        ``dy`` is the gradient of the chunk's loss with respect to its output y (shaped like y),
        or a callable that takes y and returns it. grads has the keys of ``state_dict``.
        ``training`` and ``rng`` go to the forward passes (dropout between layers).
        """
        x = self.layer.check_input(x)    # time-major from here on
        state, y, grads = self._step(state, x, dy, training=training, rng=rng)
        if self.batch_first:
            y = y.transpose(1, 0, 2)
        return state, y, grads

    def _check_dy(self, dy, y, what):
        """dy in the chunk's layout, checked against the chunk's y (time-major); time-major."""
        if hasattr(dy, "detach"):
            dy = dy.detach().cpu().numpy()
        try:
            dy = np.asarray(dy)
        except (TypeError, ValueError) as e:
            raise TypeError(f"TBPTT: {what} is not an array: {e}") from None
        if dy.dtype.kind not in "fiu":
            raise TypeError(f"TBPTT: expected {what} of real numbers, got dtype {dy.dtype}")
        expected = (y.shape[1], y.shape[0]) + y.shape[2:] if self.batch_first else y.shape
        if dy.shape != expected:
            last = "H" if hasattr(self.layer, "hidden_size") else "O"
            axes = f"(B, r, {last})" if self.batch_first else f"(r, B, {last})"
            raise ValueError(f"TBPTT: expected {what} of shape {axes} = {expected}, like the "
                             f"chunk's y, got {dy.shape}")
        dy = dy.astype(y.dtype, copy=False)
        return np.ascontiguousarray(dy.transpose(1, 0, 2)) if self.batch_first else dy

    def _step(self, state, x, dy, *, time_major_dy=False, training=False, rng=None):
        """``step`` on time-major x; dy in the layer's layout (time-major with
        ``time_major_dy``), or a callable on y in the layer's layout."""
        if not isinstance(state, StreamState):
            raise TypeError(f"TBPTT: expected the StreamState that start() or step() returned, "
                            f"got {type(state).__name__}")
        r, B = x.shape[:2]
        if r > self.k1:
            raise ValueError(f"TBPTT: expected a chunk of at most k1={self.k1} steps, got {r}")
        if state.t > 0:
            h = state.h_n[0] if isinstance(state.h_n, tuple) else state.h_n
            if h.shape[1] != B:
                raise ValueError(f"TBPTT: expected a chunk of B={h.shape[1]} sequences, the "
                                 f"stream's batch, got B={B} (start() a new stream to change it)")
        n_tail = 0 if state.tail is None else state.tail.shape[0]
        window = x if state.tail is None else np.concatenate([state.tail, x])
        # the next window starts k2-k1 steps before this chunk's end, or at the stream's start
        n_next = min(self.k2 - self.k1, state.t + r)
        split = n_tail + r - n_next
        # part A: steps up to the next window's start; part B: the rest, re-run next time
        parts, ys, h, h_next = [], [], state.h, None
        for part, (lo, hi) in enumerate(((0, split), (split, n_tail + r))):
            if hi > lo:
                y_p, h, tape = self.layer.forward(window[lo:hi], h, training=training,
                                                  rng=rng) if not self.batch_first else \
                    self._forward_bf(window[lo:hi], h, training, rng)
                parts.append((lo, hi, tape))
                ys.append(y_p)
            if part == 0:
                h_next = h                 # the state after part A starts the next window
        y_window = ys[0] if len(ys) == 1 else np.concatenate(ys)
        y = y_window[n_tail:]
        if callable(dy):
            y_out = y.transpose(1, 0, 2) if self.batch_first else y
            dy = self._check_dy(dy(y_out), y, "dy returned by the callable")
        elif time_major_dy:
            dy = np.ascontiguousarray(dy, dtype=y.dtype)
            if dy.shape != y.shape:
                raise ValueError(f"TBPTT: expected dy of shape {y.shape}, got {dy.shape}")
        else:
            dy = self._check_dy(dy, y, "dy")
        dy_window = np.zeros_like(y_window)
        dy_window[n_tail:] = dy          # earlier steps' losses belong to earlier updates
        grads, dh = None, None
        for lo, hi, tape in reversed(parts):
            _, dh, g = self._backward(dy_window[lo:hi], tape, dh)
            if grads is None:
                grads = g
            else:
                for k, v in g.items():
                    grads[k] += v
        tail = np.array(window[split:]) if n_next else None
        return StreamState(state.t + r, h_next, tail, h), y, grads

    def _forward_bf(self, x, h0, training, rng):
        y, h_n, tape = self.layer.forward(x.transpose(1, 0, 2), h0, training=training, rng=rng)
        return y.transpose(1, 0, 2), h_n, tape

    def _backward(self, dy, tape, dh_n):
        if self.batch_first:
            dy = dy.transpose(1, 0, 2)
        options = {} if self.clip is None else {"clip": self.clip}
        return self.layer.backward(dy, tape, dh_n, **options)


def tbptt_grads(layer, x, dy, k1, k2, h0=None, *, clip=None):
    """TBPTT(k1, k2) over a whole input x with fixed output gradients dy.

    x is (T, B, D) and dy (T, B, H) (batch-first if the layer is). Returns ``[(t, grads), ...]``
    for the updates after steps t = k1, 2 k1, ...: update t's grads are those of
    sum_{s in (t-k1, t]} <dy_s, y_s> with the state before step t-k2+1 held constant (module
    doc). When k1 does not divide T, a last update at t = T takes the losses of the last
    T mod k1 steps, backpropagated through them and the k2-k1 steps before them.
    """
    tb = TBPTT(layer, k1, k2, clip=clip)
    x = layer.check_input(x)
    T, B = x.shape[:2]
    if hasattr(dy, "detach"):
        dy = dy.detach().cpu().numpy()
    dy = np.asarray(dy)
    if dy.dtype.kind not in "fiu":
        raise TypeError(f"tbptt_grads: expected dy of real numbers, got dtype {dy.dtype}")
    H = layer.hidden_size
    expected = (B, T, H) if layer.batch_first else (T, B, H)
    if dy.shape != expected:
        axes = "(B, T, H)" if layer.batch_first else "(T, B, H)"
        raise ValueError(f"tbptt_grads: expected dy of shape {axes} = {expected} to match x, "
                         f"got {dy.shape}")
    if layer.batch_first:
        dy = dy.transpose(1, 0, 2)
    dy = np.ascontiguousarray(dy, dtype=layer.dtype)
    state = tb.start(h0)
    updates = []
    for a in range(0, T, tb.k1):
        state, _, grads = tb._step(state, x[a:a + tb.k1], dy[a:a + tb.k1], time_major_dy=True)
        updates.append((state.t, grads))
    return updates
