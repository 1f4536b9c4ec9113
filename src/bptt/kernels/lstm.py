"""LSTM, compiled: ``bptt.cells.lstm``'s forward and backward with each time loop in one numba
function, the gate arithmetic of a step fused into one pass over (B, 4H).

Same interface, same tape (keys, layouts and contents) as the reference, so the two backends'
tapes are interchangeable; the GEMMs outside the time loop are the reference's, through NumPy.
"""

import numpy as np
from numba import njit

from ..cells.lstm import G, step  # noqa: F401 (step: the reference, re-exported)
from ..cells.lstm import finish_forward, input_and_weight_grads, project
from ._math import (JIT, carry_where_masked, incoming_message, mask_array, matmul, sigmoid_half,
                    tanh)


@njit(**JIT)
def _forward_loop(gates, h, c, tanh_c, W_T, mask, half):
    """gates (T, B, 4H): halved pre-activations in, activations o, i, f, g out.

    The loops run over flat rows, a few arrays each: that is what LLVM vectorises.
    """
    masked = mask.shape[0] > 0  # (0, B, 1): no mask
    T, B, GH = gates.shape
    H = GH // G
    rec = np.empty((B, GH), gates.dtype)
    for t in range(T):
        matmul(h[t], W_T, rec)
        for b in range(B):
            a, r = gates[t, b], rec[b]
            for j in range(3 * H):
                a[j] = sigmoid_half(a[j] + r[j], half)
            for j in range(3 * H, GH):
                a[j] = tanh(a[j] + r[j])
            o, i, f, g = a[:H], a[H:2 * H], a[2 * H:3 * H], a[3 * H:]
            c_prev, c_next, tc, h_next = c[t, b], c[t + 1, b], tanh_c[t, b], h[t + 1, b]
            for j in range(H):
                c_next[j] = f[j] * c_prev[j] + i[j] * g[j]   # c = f * c_prev + i * g
            for j in range(H):
                tc[j] = tanh(c_next[j])
                h_next[j] = o[j] * tc[j]                     # h = o * tanh(c)
            if masked:  # carry the state where the sequence is not running
                m = mask[t, b, 0]
                h_prev = h[t, b]
                for j in range(H):
                    c_next[j] = (c_next[j] - c_prev[j]) * m + c_prev[j]
                    h_next[j] = (h_next[j] - h_prev[j]) * m + h_prev[j]


def forward(x, state0, weights, mask=None):
    """Run over x (T, B, D) from state0 = (h0, c0); return y (T, B, H), (h_n, c_n) and the tape."""
    T, B, _ = x.shape
    gates, h, c, tanh_c, W_ih, W_hh, W_hh_half = project(x, state0, weights)
    _forward_loop(gates.reshape(T, B, -1), h, c, tanh_c, np.ascontiguousarray(W_hh_half.T),
                  mask_array(mask, B, x.dtype), x.dtype.type(0.5))
    return finish_forward(x, h, c, tanh_c, gates, W_ih, W_hh, weights, mask)


@njit(**JIT)
def _backward_loop(dy, dh_n, dc_n, gates, c, tanh_c, W_hh, mask, clip, record, dG):
    """Fills dG (T, B, 4H) with dL/d(pre-activation) of o, i, f, g; returns (dh0, dc0)."""
    masked = mask.shape[0] > 0  # (0, B, 1): no mask
    T, B, GH = gates.shape
    H = GH // G
    one = gates.dtype.type(1)
    rec = dh_n.copy()          # dL/dh_t arriving from step t+1
    dc = dc_n.copy()
    dh = np.empty((B, H), gates.dtype)
    for t in range(T - 1, -1, -1):
        incoming_message(dh, rec, dy, mask, t, clip, record)
        for b in range(B):
            a, dg, tc, dcb, d = gates[t, b], dG[t, b], tanh_c[t, b], dc[b], dh[b]
            o, i, f, g = a[:H], a[H:2 * H], a[2 * H:3 * H], a[3 * H:]
            d_o, d_i, d_f, d_g = dg[:H], dg[H:2 * H], dg[2 * H:3 * H], dg[3 * H:]
            m = mask[t, b, 0] if masked else one
            for j in range(H):
                dm = d[j] * m
                d_o[j] = dm * tc[j] * o[j] * (one - o[j])  # through h = o * tanh(c), sigmoid'
                dcb[j] += dm * o[j] * (one - tc[j] * tc[j])  # dc += dh * o * (1 - tanh(c)^2)
            c_prev = c[t, b]
            keep = one - m
            for j in range(H):
                dcm = dcb[j] * m
                d_i[j] = dcm * g[j] * i[j] * (one - i[j])          # through c = ... + i * g
                d_f[j] = dcm * c_prev[j] * f[j] * (one - f[j])     # through c = f * c_prev + ..
                d_g[j] = dcm * i[j] * (one - g[j] * g[j])          # tanh'
                dcb[j] *= f[j] * m + keep                          # dc_prev = dc * f, or carried
        matmul(dG[t], W_hh, rec)   # through a = ... + W_hh h_prev
        if masked:
            carry_where_masked(rec, dh, mask, t)
    return rec, dc


def backward(dy, dstate_n, tape, clip=None, record=None):
    """Backpropagate dy (T, B, H) and (dh_n, dc_n) through time; return dx, (dh0, dc0), grads."""
    x, h, c, tanh_c, gates, mask = (tape[k] for k in ("x", "h", "c", "tanh_c", "gates", "mask"))
    T, B, _, H = gates.shape
    dt = gates.dtype
    dh_n, dc_n = dstate_n
    dG = np.empty((T, B, G, H), dt)
    dh0, dc0 = _backward_loop(
        np.ascontiguousarray(dy, dt), np.ascontiguousarray(dh_n, dt),
        np.ascontiguousarray(dc_n, dt), gates.reshape(T, B, G * H), c, tanh_c,
        np.ascontiguousarray(tape["W_hh"]),
        mask_array(mask, B, dt),
        dt.type(-1 if clip is None else clip),
        np.empty((0, B, H), dt) if record is None else record, dG.reshape(T, B, G * H))

    dx, grads = input_and_weight_grads(dG, tape)
    return dx, (dh0, dc0), grads
