"""GRU, compiled: ``bptt.cells.gru``'s forward and backward (both variants) with each time loop
in one numba function. Same interface and tape as the reference (see ``bptt.kernels``)."""

import numpy as np
from numba import njit

from ..cells.gru import G, step  # noqa: F401 (step: the reference, re-exported)
from ..cells.gru import finish_forward, input_and_weight_grads, project
from ._math import JIT, incoming_message, mask_array, matmul, sigmoid_half, tanh


@njit(**JIT)
def _forward_loop(gates, h, hn, W_T, W_hn_T, b_hn, mask, reset_after, half):
    """gates (T, B, 3H): pre-activations (r, z halved) in, r, z, n out; fills h[1:] and hn.

    reset_after: W_T is (H, 3H) and hn[t] = W_hn h_{t-1} + b_hn; otherwise W_T is (H, 2H),
    hn[t] = r_t * h_{t-1} and W_hn_T (H, H) multiplies it.
    """
    masked = mask.shape[0] > 0  # (0, B, 1): no mask
    T, B, GH = gates.shape
    H = GH // G
    rec = np.empty((B, W_T.shape[1]), gates.dtype)
    rec_n = np.empty((B, H), gates.dtype)
    for t in range(T):
        matmul(h[t], W_T, rec)
        for b in range(B):
            a, r = gates[t, b], rec[b]
            for j in range(2 * H):
                a[j] = sigmoid_half(a[j] + r[j], half)
            if reset_after:
                hnb, rn = hn[t, b], r[2 * H:]
                if b_hn is None:
                    for j in range(H):
                        hnb[j] = rn[j]
                else:
                    for j in range(H):
                        hnb[j] = rn[j] + b_hn[j]
            else:
                hnb, rg, hp = hn[t, b], a[:H], h[t, b]
                for j in range(H):
                    hnb[j] = rg[j] * hp[j]
        if not reset_after:
            matmul(hn[t], W_hn_T, rec_n)
        for b in range(B):
            a = gates[t, b]
            rg, z, n, hnb, hp, hnext = a[:H], a[H:2 * H], a[2 * H:], hn[t, b], h[t, b], h[t + 1, b]
            if reset_after:
                for j in range(H):
                    n[j] = tanh(n[j] + rg[j] * hnb[j])      # n = tanh(a_n + r * hn)
            else:
                rn = rec_n[b]
                for j in range(H):
                    n[j] = tanh(n[j] + rn[j])               # n = tanh(a_n + W_hn (r * h_prev))
            for j in range(H):
                hnext[j] = (hp[j] - n[j]) * z[j] + n[j]     # h = n + z * (h_prev - n)
            if masked:  # carry the state where the sequence is not running
                m = mask[t, b, 0]
                for j in range(H):
                    hnext[j] = (hnext[j] - hp[j]) * m + hp[j]


def forward(x, h0, weights, mask=None, reset_after=True):
    """Run over x (T, B, D) from h0 (B, H); return y (T, B, H), h_n and the tape."""
    T, B, _ = x.shape
    H = h0.shape[1]
    dt = x.dtype
    gates, h, hn, W_ih, W_hh, W_hh_half, b_hn = project(x, h0, weights, reset_after)
    if b_hn is not None:
        b_hn = np.ascontiguousarray(b_hn, dt)
    if reset_after:
        W_T, W_hn_T = np.ascontiguousarray(W_hh_half.T), np.empty((0, 0), dt)  # unused
    else:
        W_T = np.ascontiguousarray(W_hh_half[: 2 * H].T)
        W_hn_T = np.ascontiguousarray(W_hh[2 * H:].T)
    _forward_loop(gates.reshape(T, B, G * H), h, hn, W_T, W_hn_T, b_hn,
                  mask_array(mask, B, dt), reset_after,
                  dt.type(0.5))
    return finish_forward(x, h, hn, gates, W_ih, W_hh, weights, mask, reset_after)


@njit(**JIT)
def _backward_loop(dy, dh_n, gates, h, hn, W_hh, mask, reset_after, clip, record, da, dhp):
    """Fills da (T, B, 3H) = dL/d(input projection) and, for reset_after, dhp (T, B, 3H) =
    dL/d(W_hh h_prev + b_hh); returns dh0. Without reset_after, da alone carries the gradient:
    its r, z chunks meet W_hh[:2H] h_prev and its n chunk W_hn (r * h_prev)."""
    masked = mask.shape[0] > 0  # (0, B, 1): no mask
    T, B, GH = gates.shape
    H = GH // G
    one = gates.dtype.type(1)
    rec = dh_n.copy()
    dh = np.empty((B, H), gates.dtype)
    drh = np.empty((B, H), gates.dtype)
    drz = np.empty((B, 2 * H), gates.dtype)
    dns = np.empty((B, H), gates.dtype)
    W_hrz, W_hn = W_hh[: 2 * H], W_hh[2 * H:]
    for t in range(T - 1, -1, -1):
        incoming_message(dh, rec, dy, mask, t, clip, record)
        for b in range(B):
            a, dab, d, hp = gates[t, b], da[t, b], dh[b], h[t, b]
            rg, z, n = a[:H], a[H:2 * H], a[2 * H:]
            da_r, da_z, da_n = dab[:H], dab[H:2 * H], dab[2 * H:]
            m = mask[t, b, 0] if masked else one
            for j in range(H):
                dm = d[j] * m
                da_n[j] = dm * (one - n[j] * n[j]) * (one - z[j])   # h = (1-z) n + .., tanh'
                da_z[j] = dm * (hp[j] - n[j]) * z[j] * (one - z[j])  # h = .. + z (h_prev - n)
            if reset_after:
                hnb, dp = hn[t, b], dhp[t, b]
                for j in range(H):
                    da_r[j] = da_n[j] * hnb[j] * rg[j] * (one - rg[j])  # n = tanh(.. + r hn)
                    dp[j] = da_r[j]
                    dp[H + j] = da_z[j]
                    dp[2 * H + j] = da_n[j] * rg[j]                      # d(hn) = da_n * r
            else:
                dn = dns[b]   # da_n again, contiguous for the product below
                for j in range(H):
                    dn[j] = da_n[j]
        if reset_after:
            matmul(dhp[t], W_hh, rec)                # through W_hh h_prev
        else:
            matmul(dns, W_hn, drh)                   # through a_n = .. + W_hn (r * h_prev)
            for b in range(B):
                a, dab, hp, dr, sc = gates[t, b], da[t, b], h[t, b], drh[b], drz[b]
                rg = a[:H]
                for j in range(H):
                    dab[j] = dr[j] * hp[j] * rg[j] * (one - rg[j])   # d(r h) * h_prev * r'
                for j in range(2 * H):
                    sc[j] = dab[j]
            matmul(drz, W_hrz, rec)                  # through W_hh[:2H] h_prev
            for b in range(B):
                r, dr, rg = rec[b], drh[b], gates[t, b, :H]
                for j in range(H):
                    r[j] += dr[j] * rg[j]            # through r * h_prev
        for b in range(B):
            a, d, r = gates[t, b], dh[b], rec[b]
            z = a[H:2 * H]
            m = mask[t, b, 0] if masked else one
            for j in range(H):
                r[j] += d[j] * (z[j] * m + (one - m))   # dh_prev += dh * z, or carried
    return rec


def backward(dy, dh_n, tape, clip=None, record=None):
    """Backpropagate dy (T, B, H) and dh_n through time; return dx, dh0, grads."""
    h, hn, mask = tape["h"], tape["hn"], tape["mask"]
    T, B, _, H = tape["gates"].shape
    dt = h.dtype
    reset_after = tape["reset_after"]
    da = np.empty((T, B, G * H), dt)
    dhp = np.empty((T, B, G * H) if reset_after else (0, B, G * H), dt)
    dh0 = _backward_loop(np.ascontiguousarray(dy, dt), np.ascontiguousarray(dh_n, dt),
                         tape["gates"].reshape(T, B, G * H), h, hn,
                         np.ascontiguousarray(tape["W_hh"]),
                         mask_array(mask, B, dt), reset_after,
                         dt.type(-1 if clip is None else clip),
                         np.empty((0, B, H), dt) if record is None else record, da, dhp)
    dx, grads = input_and_weight_grads(da, dhp if reset_after else None, tape)
    return dx, dh0, grads
