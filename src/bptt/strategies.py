r"""Gradient strategies: where the backward message is cut, and what is recomputed.

Full BPTT is ``layer.forward`` then ``layer.backward`` over the whole sequence. This module adds
truncated BPTT on top of the layers' public methods.

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

Checkpointed BPTT under a memory budget lives under the layers, in ``bptt.checkpointing``
(``layer.forward(x, memory=m)``); ``Plan`` and ``plan_checkpoints`` are re-exported here.
"""

import math
from dataclasses import dataclass

import numpy as np

from .checkpointing import Plan, _check_count, checkpoint_cost, plan_checkpoints  # noqa: F401

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
