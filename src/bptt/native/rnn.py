"""Elman RNN, native: ``bptt.cells.rnn``'s forward and backward with each time loop in C++
(``_loops.cpp``). Same interface, same tape as the reference; the input projection runs inside
the time loop."""

import numpy as np

from ..cells.rnn import NONLINEARITIES, step  # noqa: F401 (re-exported: the reference step)
from ..cells.rnn import finish_forward, input_and_weight_grads
from . import call, clip_value, mask_or_none, matmuls, transposed, workspace


def forward(x, h0, weights, mask=None, nonlinearity="tanh"):
    """Run over x (T, B, D) from h0 (B, H); return y (T, B, H), h_n and the tape."""
    h = _run(x, h0, weights, mask, nonlinearity)
    return finish_forward(np.ascontiguousarray(x), h, weights, mask, nonlinearity == "relu")


def forward_infer(x, h0, weights, mask=None, nonlinearity="tanh"):
    """``forward`` for inference: (y, h_n), and nothing kept for a backward pass."""
    h = _run(x, h0, weights, mask, nonlinearity)
    return (h[1:] if mask is None else h[1:] * mask), h[-1]


def _run(x, h0, weights, mask, nonlinearity):
    T, B, D = x.shape
    H = h0.shape[1]
    dt = x.dtype
    x = np.ascontiguousarray(x)
    h = np.empty((T + 1, B, H), dt)
    h[0] = h0
    bias = None
    if weights.get("bias_ih") is not None:
        bias = np.ascontiguousarray(weights["bias_ih"] + weights["bias_hh"], dt)
    call("rnn_forward", dt, transposed(weights["weight_ih"], dt),
         transposed(weights["weight_hh"], dt), bias, x, D, h,
         mask_or_none(mask, dt), int(nonlinearity == "relu"), T, B, H)
    return h


def backward(dy, dh_n, tape, clip=None, record=None):
    """Backpropagate dy (T, B, H) and dh_n through time; return dx, dh0, grads."""
    h = tape["h"]
    T = h.shape[0] - 1
    B, H = h.shape[1:]
    dt = h.dtype
    da = workspace((T, B, H), dt)
    db = np.zeros(H, dt) if tape["bias"] else None  # summed in the loop
    dh0 = np.empty((B, H), dt)
    m = mask_or_none(tape["mask"], dt)
    buf = np.empty((B, H), dt) if m is not None else None
    call("rnn_backward", dt, np.ascontiguousarray(tape["W_hh"], dt),
         np.ascontiguousarray(dy, dt), np.ascontiguousarray(dh_n, dt), h, m,
         int(tape["relu"]), clip_value(clip, dt), record, da, db, dh0, buf,
         T, B, H)
    dx, grads = input_and_weight_grads(da, tape, matmuls, db)
    return dx, dh0, grads
