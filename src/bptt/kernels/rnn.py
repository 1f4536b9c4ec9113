"""Elman RNN, compiled: ``bptt.cells.rnn``'s forward and backward with each time loop in one
numba function. Same interface and tape as the reference (see ``bptt.kernels``)."""

import numpy as np
from numba import njit

from ..cells.rnn import NONLINEARITIES, step  # noqa: F401 (re-exported: the reference step)
from ..cells.rnn import finish_forward, input_and_weight_grads, project
from ._math import JIT, carry_where_masked, incoming_message, mask_array, matmul, tanh


@njit(**JIT)
def _forward_loop(h, W_T, mask, relu):
    """h (T+1, B, H): h[0] the initial state, h[1:] the input projections in, the states out."""
    masked = mask.shape[0] > 0  # (0, B, 1): no mask
    T = h.shape[0] - 1
    B, H = h.shape[1], h.shape[2]
    zero = h.dtype.type(0)
    rec = np.empty((B, H), h.dtype)
    for t in range(T):
        matmul(h[t], W_T, rec)
        for b in range(B):
            a, r = h[t + 1, b], rec[b]
            if relu:
                for j in range(H):
                    v = a[j] + r[j]
                    a[j] = zero if v < zero else v   # as np.maximum: NaN stays NaN
            else:
                for j in range(H):
                    a[j] = tanh(a[j] + r[j])
            if masked:  # carry the state where the sequence is not running
                m, h_prev = mask[t, b, 0], h[t, b]
                for j in range(H):
                    a[j] = (a[j] - h_prev[j]) * m + h_prev[j]


def forward(x, h0, weights, mask=None, nonlinearity="tanh"):
    """Run over x (T, B, D) from h0 (B, H); return y (T, B, H), h_n and the tape."""
    h = project(x, h0, weights)
    relu = nonlinearity == "relu"
    _forward_loop(h, np.ascontiguousarray(weights["weight_hh"].T),
                  mask_array(mask, x.shape[1], x.dtype), relu)
    return finish_forward(x, h, weights, mask, relu)


@njit(**JIT)
def _backward_loop(dy, dh_n, h, W_hh, mask, relu, clip, record, da):
    """Fills da (T, B, H) with dL/da_t; returns dh0."""
    masked = mask.shape[0] > 0  # (0, B, 1): no mask
    T, B, H = da.shape
    one, zero = h.dtype.type(1), h.dtype.type(0)
    rec = dh_n.copy()
    dh = np.empty((B, H), h.dtype)
    for t in range(T - 1, -1, -1):
        incoming_message(dh, rec, dy, mask, t, clip, record)
        for b in range(B):
            d, hb, dab = dh[b], h[t + 1, b], da[t, b]
            m = mask[t, b, 0] if masked else one
            if relu:
                for j in range(H):
                    dab[j] = (d[j] * m if hb[j] > zero else zero)    # relu' = 1 where h > 0
            else:
                for j in range(H):
                    dab[j] = d[j] * m * (one - hb[j] * hb[j])        # tanh' = 1 - h^2
        matmul(da[t], W_hh, rec)   # through a_t = ... + W_hh h_{t-1}
        if masked:
            carry_where_masked(rec, dh, mask, t)
    return rec


def backward(dy, dh_n, tape, clip=None, record=None):
    """Backpropagate dy (T, B, H) and dh_n through time; return dx, dh0, grads."""
    h, mask = tape["h"], tape["mask"]
    T = h.shape[0] - 1
    B, H = h.shape[1:]
    dt = h.dtype
    da = np.empty((T, B, H), dt)
    dh0 = _backward_loop(np.ascontiguousarray(dy, dt), np.ascontiguousarray(dh_n, dt), h,
                         np.ascontiguousarray(tape["W_hh"]),
                         mask_array(mask, B, dt), tape["relu"],
                         dt.type(-1 if clip is None else clip),
                         np.empty((0, B, H), dt) if record is None else record, da)
    dx, grads = input_and_weight_grads(da, tape)
    return dx, dh0, grads
