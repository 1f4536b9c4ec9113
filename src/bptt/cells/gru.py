r"""Gated recurrent unit (Cho et al. 2014), in two variants.

``reset_after=True`` (PyTorch's and cuDNN's):

.. math::
    r_t &= \sigma(W_{ir} x_t + b_{ir} + W_{hr} h_{t-1} + b_{hr}) \\
    z_t &= \sigma(W_{iz} x_t + b_{iz} + W_{hz} h_{t-1} + b_{hz}) \\
    n_t &= \tanh(W_{in} x_t + b_{in} + r_t \odot (W_{hn} h_{t-1} + b_{hn})) \\
    h_t &= (1 - z_t) \odot n_t + z_t \odot h_{t-1}

``reset_after=False`` (Cho et al.'s original) applies the reset gate before the matrix product:
:math:`n_t = \tanh(W_{in} x_t + b_{in} + W_{hn} (r_t \odot h_{t-1}) + b_{hn})`.

Shapes: x (T, B, D); h (B, H); weight_ih (3H, D), weight_hh (3H, H), biases (3H,), gate chunks in
PyTorch's order r, z, n. State is h. The r and z rows are halved inside the loops so that one tanh
gives both sigmoids (see ``gates.half_sigmoid_rows``).
"""

import numpy as np

from .gates import half_sigmoid_rows, matmuls, sigmoid

G = 3
ORDER = [0, 1, 2]


def step(x, h, weights, reset_after=True):
    """One step straight from the equations (the reference)."""
    W_ih, W_hh = weights["weight_ih"], weights["weight_hh"]
    H = h.shape[1]
    b_ih = weights.get("bias_ih")
    b_hh = weights.get("bias_hh")
    b_ih = np.zeros(3 * H, x.dtype) if b_ih is None else b_ih
    b_hh = np.zeros(3 * H, x.dtype) if b_hh is None else b_hh
    ax = x @ W_ih.T + b_ih
    r = sigmoid(ax[:, :H] + h @ W_hh[:H].T + b_hh[:H])
    z = sigmoid(ax[:, H:2 * H] + h @ W_hh[H:2 * H].T + b_hh[H:2 * H])
    if reset_after:
        n = np.tanh(ax[:, 2 * H:] + r * (h @ W_hh[2 * H:].T + b_hh[2 * H:]))
    else:
        n = np.tanh(ax[:, 2 * H:] + (r * h) @ W_hh[2 * H:].T + b_hh[2 * H:])
    return (1 - z) * n + z * h


def forward(x, h0, weights, mask=None, reset_after=True):
    """Run over x (T, B, D) from h0 (B, H); return y (T, B, H), h_n and the tape."""
    T, B, _ = x.shape
    H = h0.shape[1]
    dt = x.dtype
    gates, h, hn, W_ih, W_hh, W_hh_half, b_hn = project(x, h0, weights, reset_after)
    if reset_after:
        rec = np.empty((B, G, H), dt)
        W_T = W_hh_half.T
    else:
        rec = np.empty((B, 2, H), dt)
        W_T = W_hh_half[: 2 * H].T
        W_hn_T = W_hh[2 * H:].T
        rec_n = np.empty((B, H), dt)
    for t in range(T):
        a = gates[t]
        np.matmul(h[t], W_T, out=rec.reshape(B, -1))
        rz = a[:, :2]
        rz += rec[:, :2]
        np.tanh(rz, out=rz)
        rz *= 0.5
        rz += 0.5
        r, z, n = a[:, 0], a[:, 1], a[:, 2]
        if reset_after:
            if b_hn is None:
                hn[t] = rec[:, 2]
            else:
                np.add(rec[:, 2], b_hn, out=hn[t])
            np.multiply(r, hn[t], out=rec[:, 2])
            n += rec[:, 2]
        else:
            np.multiply(r, h[t], out=hn[t])
            np.matmul(hn[t], W_hn_T, out=rec_n)
            n += rec_n
        np.tanh(n, out=n)
        hnext = h[t + 1]
        np.subtract(h[t], n, out=hnext)  # h = n + z * (h_prev - n)
        hnext *= z
        hnext += n
        if mask is not None:  # where the sequence is not running, carry the state unchanged
            hnext -= h[t]
            hnext *= mask[t]
            hnext += h[t]
    return finish_forward(x, h, hn, gates, W_ih, W_hh, weights, mask, reset_after)


def project(x, h0, weights, reset_after):
    """The buffers of a forward pass: gates (T, B, 3, H) holding every step's input projection
    (one GEMM, r and z rows halved, the biases that sit outside r in), h (T+1, B, H) starting at
    h0, hn (T, B, H); the weights: W_ih and W_hh true (for backward), W_hh with r and z rows
    halved (for the loop); and b_hn, the bias inside r * (...) (reset_after; else None)."""
    T, B, D = x.shape
    gates, h, hn, W_ih, W_hh, W_ih_half, W_hh_half, bias, b_hn = buffers(x, h0, weights,
                                                                        reset_after)
    gates2d = gates.reshape(T * B, -1)
    np.matmul(x.reshape(T * B, D), W_ih_half.T, out=gates2d)  # all input projections, one GEMM
    if bias is not None:
        gates2d += bias
    return gates, h, hn, W_ih, W_hh, W_hh_half, b_hn


def buffers(x, h0, weights, reset_after, empty=np.empty, halves=True):
    """``project`` without the product: gates (T, B, 3, H) uninitialised, h (T+1, B, H)
    starting at h0, hn (T, B, H); W_ih, W_hh true and with r and z rows halved; the bias outside
    r (halved likewise) and b_hn, the bias inside r * (...) (reset_after); None without biases.
    ``empty`` makes the gates buffer (the native backend passes its workspace); with ``halves``
    False the halved weights are None."""
    T, B, D = x.shape
    H = h0.shape[1]
    dt = x.dtype
    W_ih, W_hh, W_ih_half, W_hh_half, scale = half_sigmoid_rows(weights, ORDER, 2, H, halves)
    bias = b_hn = None
    if weights.get("bias_ih") is not None:
        bias = weights["bias_ih"].copy()
        if reset_after:
            bias[: 2 * H] += weights["bias_hh"][: 2 * H]  # b_hn stays inside r * (...)
            b_hn = weights["bias_hh"][2 * H:]
        else:
            bias += weights["bias_hh"]
        bias *= scale[:, 0]
    gates = empty((T, B, G, H), dt)  # pre-activations, then r, z, n
    h = np.empty((T + 1, B, H), dt)
    h[0] = h0
    # reset_after: hn[t] = W_hn h_{t-1} + b_hn;  otherwise: hn[t] = r_t * h_{t-1}
    hn = np.empty((T, B, H), dt)
    return gates, h, hn, W_ih, W_hh, W_ih_half, W_hh_half, bias, b_hn


def finish_forward(x, h, hn, gates, W_ih, W_hh, weights, mask, reset_after):
    """``(y, h_n, tape)`` once the time loop has filled the buffers."""
    y = h[1:] if mask is None else h[1:] * mask
    tape = dict(x=x, h=h, gates=gates, hn=hn, mask=mask, reset_after=reset_after,
                W_ih=W_ih, W_hh=W_hh, bias=weights.get("bias_ih") is not None)
    return y, h[-1], tape


def backward(dy, dh_n, tape, clip=None, record=None):
    """Backpropagate dy (T, B, H) and dh_n through time; return dx, dh0, grads."""
    if tape["reset_after"]:
        return _backward_reset_after(dy, dh_n, tape, clip, record)
    return _backward_reset_before(dy, dh_n, tape, clip, record)


def _factors(tape):
    """Per-step factors off the recurrence, vectorised over T: da_n = dh*Cn, da_z = dh*Cz."""
    gates, h, mask = tape["gates"], tape["h"], tape["mask"]
    r, z, n = gates[:, :, 0], gates[:, :, 1], gates[:, :, 2]
    Cn = np.square(n)
    np.subtract(1.0, Cn, out=Cn)
    Cn *= 1.0 - z                      # through h = (1-z) n + ..., n = tanh(a_n)
    Cz = h[:-1] - n
    Cz *= z
    Cz *= 1.0 - z                      # through h = ... + z (h_prev - n), z = sigma(a_z)
    direct = z                         # dh_prev += dh * z
    if mask is not None:
        Cn *= mask
        Cz *= mask
        direct = z * mask + (1.0 - mask)  # where masked, the state passes through unchanged
    return r, Cn, Cz, direct


def _backward_reset_after(dy, dh_n, tape, clip, record):
    h, hn, mask = tape["h"], tape["hn"], tape["mask"]
    T, B, _, H = tape["gates"].shape
    dt = h.dtype
    r, Cn, Cz, direct = _factors(tape)
    # dhp[t] = dL/d(W_hh h_{t-1} + b_hh) for the r, z, n chunks, first as factors of dh
    dhp = np.empty((T, B, G, H), dt)
    np.subtract(1.0, r, out=dhp[:, :, 0])
    dhp[:, :, 0] *= r
    dhp[:, :, 0] *= hn
    dhp[:, :, 0] *= Cn                 # da_r = da_n * hn * r(1-r), through n = tanh(.. + r hn)
    dhp[:, :, 1] = Cz
    np.multiply(Cn, r, out=dhp[:, :, 2])  # d(hn) = da_n * r
    if mask is not None:
        dy = dy * mask

    dh_all = np.empty((T, B, H), dt)
    rec = np.array(dh_n, dtype=dt, copy=True)
    tmp = np.empty((B, H), dt)
    W_hh = tape["W_hh"]
    for t in range(T - 1, -1, -1):
        dh = dh_all[t]
        np.add(dy[t], rec, out=dh)
        if clip is not None:  # clip the backward message dL/dh_t itself (Graves 2013)
            np.clip(dh, -clip, clip, out=dh)
        if record is not None:  # diagnostics: the backward message dL/dh_t
            record[t] = dh
        dhp[t] *= dh[:, None, :]
        np.matmul(dhp[t].reshape(B, G * H), W_hh, out=rec)
        np.multiply(dh, direct[t], out=tmp)
        rec += tmp

    da = np.empty((T, B, G, H), dt)    # dL/d(input projection) per chunk
    da[:, :, :2] = dhp[:, :, :2]
    np.multiply(dh_all, Cn, out=da[:, :, 2])
    dx, grads = input_and_weight_grads(da, dhp, tape)
    return dx, rec, grads


def _backward_reset_before(dy, dh_n, tape, clip, record):
    h, mask = tape["h"], tape["mask"]
    T, B, _, H = tape["gates"].shape
    dt = h.dtype
    r, Cn, Cz, direct = _factors(tape)
    Cr = np.subtract(1.0, r)
    Cr *= r
    Cr *= h[:-1]                       # da_r = d(r h) * h_prev * r(1-r)
    da = np.empty((T, B, G, H), dt)
    da[:, :, 1] = Cz
    da[:, :, 2] = Cn
    if mask is not None:
        dy = dy * mask

    dh = np.empty((B, H), dt)
    drh = np.empty((B, H), dt)
    rec = np.array(dh_n, dtype=dt, copy=True)
    tmp = np.empty((B, H), dt)
    W_hrz = tape["W_hh"][: 2 * H]
    W_hn = tape["W_hh"][2 * H:]
    for t in range(T - 1, -1, -1):
        np.add(dy[t], rec, out=dh)
        if clip is not None:  # clip the backward message dL/dh_t itself (Graves 2013)
            np.clip(dh, -clip, clip, out=dh)
        if record is not None:  # diagnostics: the backward message dL/dh_t
            record[t] = dh
        dat = da[t]
        dat[:, 1:] *= dh[:, None, :]
        np.matmul(dat[:, 2], W_hn, out=drh)            # through a_n = ... + W_hn (r * h_prev)
        np.multiply(drh, Cr[t], out=dat[:, 0])
        np.matmul(dat[:, :2].reshape(B, 2 * H), W_hrz, out=rec)
        np.multiply(dh, direct[t], out=tmp)
        rec += tmp
        np.multiply(drh, r[t], out=tmp)                # through r * h_prev
        rec += tmp

    dx, grads = input_and_weight_grads(da, None, tape)
    return dx, rec, grads


def input_and_weight_grads(da, dhp, tape, matmuls=matmuls, dhp_n=None, bias_sums=None):
    """dx and the parameter grads from da = dL/d(input projection) and, for reset_after,
    dhp = dL/d(W_hh h_{t-1} + b_hh), each (T, B, 3H) in any layout that reshapes so; or, in
    place of dhp, its n chunk alone, dhp_n (T, B, H) (its r and z chunks are da's). Without
    reset_after (dhp and dhp_n None), W_hn's gradient comes from da's n chunk and
    hn = r * h_{t-1}. One GEMM each over all T*B rows (``matmuls`` runs those of reset_after).
    ``bias_sums`` (with dhp_n): da's and then dhp_n's sums over steps and rows (4H), where the
    time loop kept them."""
    x, h, hn = tape["x"], tape["h"], tape["hn"]
    T, B, H = hn.shape
    da2d = da.reshape(T * B, G * H)
    h2d = h[:-1].reshape(T * B, H)
    if dhp_n is not None:
        dx, dW_ih, dW_rz, dW_n = matmuls([(da2d, tape["W_ih"]), (da2d.T, x.reshape(T * B, -1)),
                                          (da2d[:, : 2 * H].T, h2d),
                                          (dhp_n.reshape(T * B, H).T, h2d)])
        grads = {"weight_ih": dW_ih, "weight_hh": np.concatenate([dW_rz, dW_n])}
    elif dhp is not None:
        dhp2d = dhp.reshape(T * B, G * H)
        dx, dW_ih, dW_hh = matmuls([(da2d, tape["W_ih"]), (da2d.T, x.reshape(T * B, -1)),
                                    (dhp2d.T, h2d)])
        grads = {"weight_ih": dW_ih, "weight_hh": dW_hh}
    else:
        dx = da2d @ tape["W_ih"]
        grads = {"weight_ih": da2d.T @ x.reshape(T * B, -1)}
        grads["weight_hh"] = np.concatenate([
            da2d[:, : 2 * H].T @ h2d,
            da2d[:, 2 * H:].T @ hn.reshape(T * B, H),
        ])
    dx = dx.reshape(x.shape)
    if tape["bias"] and bias_sums is not None:
        grads["bias_ih"] = bias_sums[: G * H].copy()
        grads["bias_hh"] = np.concatenate([bias_sums[: 2 * H], bias_sums[G * H:]])
    elif tape["bias"]:
        grads["bias_ih"] = da2d.sum(axis=0)
        if dhp_n is not None:
            grads["bias_hh"] = np.concatenate([grads["bias_ih"][: 2 * H],
                                               dhp_n.reshape(T * B, H).sum(axis=0)])
        elif dhp is not None:
            grads["bias_hh"] = dhp2d.sum(axis=0)
        else:
            grads["bias_hh"] = grads["bias_ih"].copy()
    return dx, grads
