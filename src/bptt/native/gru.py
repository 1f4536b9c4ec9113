"""GRU, native: ``bptt.cells.gru``'s forward and backward with each time loop in C++
(``_loops.cpp``). Same interface, same tape as the reference; the input projection runs inside
the time loop. The loops cover PyTorch's variant (``reset_after=True``); Cho et al.'s
(``reset_after=False``) runs the reference."""

import numpy as np

from ..cells import gru as _reference
from ..cells.gru import G, step  # noqa: F401 (step: the reference, re-exported)
from ..cells.gru import buffers, finish_forward, input_and_weight_grads
from . import call, clip_value, mask_or_none, matmuls, no_buffer, workspace


def forward(x, h0, weights, mask=None, reset_after=True):
    """Run over x (T, B, D) from h0 (B, H); return y (T, B, H), h_n and the tape."""
    if not reset_after:
        return _reference.forward(x, h0, weights, mask, reset_after=False)
    return _forward(x, h0, weights, mask, keep=True)


def forward_infer(x, h0, weights, mask=None, reset_after=True):
    """``forward`` for inference: (y, h_n), and nothing kept for a backward pass."""
    if not reset_after:
        return _reference.forward(x, h0, weights, mask, reset_after=False)[:2]
    return _forward(x, h0, weights, mask, keep=False)[:2]


def _forward(x, h0, weights, mask, keep):
    T, B, D = x.shape
    H = h0.shape[1]
    dt = x.dtype
    x = np.ascontiguousarray(x)
    gates, h, hn, W_ih, W_hh, _, _, bias, b_hn = buffers(
        x, h0, weights, True, workspace if keep else no_buffer, halves=False)
    b_hn = None if b_hn is None else np.ascontiguousarray(b_hn, dt)
    call("gru_forward", dt, W_ih, W_hh, bias,
         b_hn, x, D, gates, h, hn if keep else None,
         mask_or_none(mask, dt), T, B, H)
    if not keep:
        return (h[1:] if mask is None else h[1:] * mask), h[-1]
    return finish_forward(x, h, hn, gates, W_ih, W_hh, weights, mask, True)


def backward(dy, dh_n, tape, clip=None, record=None):
    """Backpropagate dy (T, B, H) and dh_n through time; return dx, dh0, grads."""
    if not tape["reset_after"]:
        return _reference.backward(dy, dh_n, tape, clip, record)
    h, hn, gates = tape["h"], tape["hn"], tape["gates"]
    T, B, _, H = gates.shape
    dt = h.dtype
    da = workspace((T, B, G, H), dt)
    dhp_n = workspace((T, B, H), dt)   # the n chunk of dL/d(W_hh h_prev + b_hh); r, z: da's
    db = np.zeros((G + 1) * H, dt) if tape["bias"] else None  # summed in the loop
    dh0 = np.empty((B, H), dt)
    buf = np.empty((B, H), dt)
    call("gru_backward", dt, np.ascontiguousarray(tape["W_hh"]),
         np.ascontiguousarray(dy, dt), np.ascontiguousarray(dh_n, dt), gates,
         h, hn, mask_or_none(tape["mask"], dt), clip_value(clip, dt),
         record, da, dhp_n, db, dh0, buf, T, B, H)
    dx, grads = input_and_weight_grads(da.reshape(T, B, G * H), None, tape, matmuls, dhp_n, db)
    return dx, dh0, grads
