"""LSTM, native: ``bptt.cells.lstm``'s forward and backward with each time loop in C++
(``_loops.cpp``). Same interface, same tape as the reference; the input projection runs inside
the time loop, in the same product as the recurrent one."""

import numpy as np

from ..cells.lstm import G, step  # noqa: F401 (step: the reference, re-exported)
from ..cells.lstm import buffers, finish_forward, input_and_weight_grads
from . import call, clip_value, mask_or_none, matmuls, no_buffer, workspace


def forward(x, state0, weights, mask=None):
    """Run over x (T, B, D) from state0 = (h0, c0); return y (T, B, H), (h_n, c_n) and the tape."""
    return _forward(x, state0, weights, mask, keep=True)


def forward_infer(x, state0, weights, mask=None):
    """``forward`` for inference: (y, (h_n, c_n)), and nothing kept for a backward pass."""
    return _forward(x, state0, weights, mask, keep=False)[:2]


def _forward(x, state0, weights, mask, keep):
    T, B, D = x.shape
    H = state0[0].shape[1]
    x = np.ascontiguousarray(x)
    gates, h, c, tanh_c, W_ih, W_hh, _, _, bias = buffers(
        x, state0, weights, workspace if keep else no_buffer, halves=False)
    if not keep:  # two rows of c, alternating
        c = np.array(c[:2])
    call("lstm_forward", x.dtype, W_ih, W_hh,
         bias, x, D, gates, h, c,
         tanh_c if keep else None, mask_or_none(mask, x.dtype), T, B, H)
    if not keep:
        return (h[1:] if mask is None else h[1:] * mask), (h[-1], c[T & 1])
    return finish_forward(x, h, c, tanh_c, gates, W_ih, W_hh, weights, mask)


def backward(dy, dstate_n, tape, clip=None, record=None):
    """Backpropagate dy (T, B, H) and (dh_n, dc_n) through time; return dx, (dh0, dc0), grads."""
    gates, c, tanh_c = tape["gates"], tape["c"], tape["tanh_c"]
    T, B, _, H = gates.shape
    dt = gates.dtype
    dh_n, dc_n = dstate_n
    dc = np.array(dc_n, dtype=dt, order="C", copy=True)  # dc_n in, dc0 out
    dG = workspace((T, B, G, H), dt)
    db = np.zeros(G * H, dt) if tape["bias"] else None  # summed in the loop
    dh0 = np.empty((B, H), dt)
    m = mask_or_none(tape["mask"], dt)
    buf = np.empty((B, H), dt) if m is not None else None
    call("lstm_backward", dt, np.ascontiguousarray(tape["W_hh"]),
         np.ascontiguousarray(dy, dt), np.ascontiguousarray(dh_n, dt), dc,
         gates, c, tanh_c, m, clip_value(clip, dt), record, dG, db,
         dh0, buf, T, B, H)
    dx, grads = input_and_weight_grads(dG, tape, matmuls, db)
    return dx, (dh0, dc), grads
