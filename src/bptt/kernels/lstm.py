"""LSTM, compiled: ``bptt.cells.lstm``'s forward and backward with each time loop in one numba
function, the gate arithmetic of a step fused into one pass over (B, 4H).

Same interface, same tape (keys, layouts and contents) as the reference, so the two backends'
tapes are interchangeable; the GEMMs outside the time loop are the reference's, through NumPy.
"""

import numpy as np
from numba import njit

from ..cells.gates import chunk_rows, half_sigmoid_rows, unorder
from ..cells.lstm import G, ORDER, step  # noqa: F401 (step: the reference, re-exported)
from ._math import mask_array, matmul, sigmoid_half, tanh

_JIT = dict(cache=True, fastmath=True, error_model="numpy", nogil=True)


@njit(**_JIT)
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
    T, B, D = x.shape
    h0, c0 = state0
    H = h0.shape[1]
    dt = x.dtype
    W_ih, W_hh, W_ih_half, W_hh_half, scale = half_sigmoid_rows(weights, ORDER, 3, H)

    gates = np.empty((T, B, G, H), dt)
    gates2d = gates.reshape(T * B, G * H)
    np.matmul(x.reshape(T * B, D), W_ih_half.T, out=gates2d)  # all input projections, one GEMM
    if weights.get("bias_ih") is not None:
        bias = (weights["bias_ih"] + weights["bias_hh"])[chunk_rows(ORDER, H)] * scale[:, 0]
        gates2d += bias
    h = np.empty((T + 1, B, H), dt)
    c = np.empty((T + 1, B, H), dt)
    tanh_c = np.empty((T, B, H), dt)
    h[0] = h0
    c[0] = c0
    _forward_loop(gates.reshape(T, B, G * H), h, c, tanh_c, np.ascontiguousarray(W_hh_half.T),
                  mask_array(mask, B, dt), dt.type(0.5))
    y = h[1:] if mask is None else h[1:] * mask
    tape = dict(x=x, h=h, c=c, tanh_c=tanh_c, gates=gates, mask=mask, W_ih=W_ih, W_hh=W_hh,
                bias=weights.get("bias_ih") is not None)
    return y, (h[T], c[T]), tape


@njit(**_JIT)
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
            for b in range(B):
                keep = one - mask[t, b, 0]
                r, d = rec[b], dh[b]
                for j in range(H):
                    r[j] += d[j] * keep
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

    dG2d = dG.reshape(T * B, G * H)
    dx = (dG2d @ tape["W_ih"]).reshape(x.shape)
    grads = {
        "weight_ih": unorder(dG2d.T @ x.reshape(T * B, -1), ORDER, H),
        "weight_hh": unorder(dG2d.T @ h[:-1].reshape(T * B, H), ORDER, H),
    }
    if tape["bias"]:
        db = unorder(dG2d.sum(axis=0), ORDER, H)
        grads["bias_ih"] = db
        grads["bias_hh"] = db.copy()
    return dx, (dh0, dc0), grads
