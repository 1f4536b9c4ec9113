"""Elman RNN, compiled: ``bptt.cells.rnn``'s forward and backward with each time loop in one
numba function. Same interface and tape as the reference (see ``bptt.kernels``)."""

import numpy as np
from numba import njit

from ..cells.rnn import NONLINEARITIES, step  # noqa: F401 (re-exported: the reference step)
from ._math import mask_array, matmul, tanh

_JIT = dict(cache=True, fastmath=True, error_model="numpy", nogil=True)


@njit(**_JIT)
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
    T, B, D = x.shape
    H = h0.shape[1]
    dt = x.dtype
    h = np.empty((T + 1, B, H), dt)
    h[0] = h0
    np.matmul(x.reshape(T * B, D), weights["weight_ih"].T, out=h[1:].reshape(T * B, H))
    if weights.get("bias_ih") is not None:
        h[1:] += weights["bias_ih"] + weights["bias_hh"]
    relu = nonlinearity == "relu"
    _forward_loop(h, np.ascontiguousarray(weights["weight_hh"].T),
                  mask_array(mask, B, dt), relu)
    y = h[1:] if mask is None else h[1:] * mask
    tape = dict(x=x, h=h, mask=mask, relu=relu, W_ih=weights["weight_ih"].copy(),
                W_hh=weights["weight_hh"].copy(), bias=weights.get("bias_ih") is not None)
    return y, h[T], tape


@njit(**_JIT)
def _backward_loop(dy, dh_n, h, W_hh, mask, relu, clip, record, da):
    """Fills da (T, B, H) with dL/da_t; returns dh0."""
    masked = mask.shape[0] > 0  # (0, B, 1): no mask
    T, B, H = da.shape
    one, zero = h.dtype.type(1), h.dtype.type(0)
    rec = dh_n.copy()
    dh = np.empty((B, H), h.dtype)
    for t in range(T - 1, -1, -1):
        for b in range(B):
            d, r, y = dh[b], rec[b], dy[t, b]
            m = mask[t, b, 0] if masked else one
            for j in range(H):
                d[j] = r[j] + y[j] * m
            if clip >= 0:  # clip the backward message dL/dh_t (Graves 2013); -1: off
                for j in range(H):
                    d[j] = min(max(d[j], -clip), clip)
        if record.shape[0]:  # diagnostics: dL/dh_t of every step; (0, B, H): off
            record[t] = dh
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
            for b in range(B):
                keep = one - mask[t, b, 0]
                r, d = rec[b], dh[b]
                for j in range(H):
                    r[j] += d[j] * keep
    return rec


def backward(dy, dh_n, tape, clip=None, record=None):
    """Backpropagate dy (T, B, H) and dh_n through time; return dx, dh0, grads."""
    x, h, mask = tape["x"], tape["h"], tape["mask"]
    T = h.shape[0] - 1
    B, H = h.shape[1:]
    dt = h.dtype
    da = np.empty((T, B, H), dt)
    dh0 = _backward_loop(np.ascontiguousarray(dy, dt), np.ascontiguousarray(dh_n, dt), h,
                         np.ascontiguousarray(tape["W_hh"]),
                         mask_array(mask, B, dt), tape["relu"],
                         dt.type(-1 if clip is None else clip),
                         np.empty((0, B, H), dt) if record is None else record, da)
    da2d = da.reshape(T * B, H)
    dx = (da2d @ tape["W_ih"]).reshape(x.shape)
    grads = {
        "weight_ih": da2d.T @ x.reshape(T * B, -1),
        "weight_hh": da2d.T @ h[:-1].reshape(T * B, H),
    }
    if tape["bias"]:
        grads["bias_ih"] = da2d.sum(axis=0)
        grads["bias_hh"] = grads["bias_ih"].copy()
    return dx, dh0, grads
