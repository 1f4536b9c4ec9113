r"""Long short-term memory (Hochreiter & Schmidhuber 1997; forget gate: Gers et al. 2000),
in PyTorch's formulation:

.. math::
    i_t &= \sigma(W_{ii} x_t + b_{ii} + W_{hi} h_{t-1} + b_{hi}) \\
    f_t &= \sigma(W_{if} x_t + b_{if} + W_{hf} h_{t-1} + b_{hf}) \\
    g_t &= \tanh(W_{ig} x_t + b_{ig} + W_{hg} h_{t-1} + b_{hg}) \\
    o_t &= \sigma(W_{io} x_t + b_{io} + W_{ho} h_{t-1} + b_{ho}) \\
    c_t &= f_t \odot c_{t-1} + i_t \odot g_t \\
    h_t &= o_t \odot \tanh(c_t)

Shapes: x (T, B, D); h, c (B, H); weight_ih (4H, D), weight_hh (4H, H), biases (4H,), gate
chunks in PyTorch's order i, f, g, o. State is the pair (h, c).

Inside the loops the chunks are kept in the order o, i, f, g: the three sigmoid gates form one
slice (one tanh over all four gates, their rows halved, see ``gates.half_sigmoid_rows``) and the
three gates the cell gradient flows into (i, f, g) form another, so that a backward step is a
handful of ufunc calls and one GEMM.
"""

import numpy as np

from .gates import half_sigmoid_rows, matmuls, reorder, sigmoid, unorder

G = 4
ORDER = [3, 0, 1, 2]  # internal chunk k holds PyTorch's chunk ORDER[k]: o, i, f, g


def step(x, state, weights):
    """One step straight from the equations, PyTorch's gate order (the reference)."""
    h, c = state
    a = x @ weights["weight_ih"].T + h @ weights["weight_hh"].T
    if weights.get("bias_ih") is not None:
        a = a + weights["bias_ih"] + weights["bias_hh"]
    i, f, g, o = np.split(a, 4, axis=1)
    c = sigmoid(f) * c + sigmoid(i) * np.tanh(g)
    h = sigmoid(o) * np.tanh(c)
    return h, c


def forward(x, state0, weights, mask=None):
    """Run over x (T, B, D) from state0 = (h0, c0); return y (T, B, H), (h_n, c_n) and the tape."""
    T, B, _ = x.shape
    H = state0[0].shape[1]
    dt = x.dtype
    gates, h, c, tanh_c, W_ih, W_hh, W_hh_half = project(x, state0, weights)
    rec = np.empty((B, G * H), dt)
    ig = np.empty((B, H), dt)
    W_hh_half_T = W_hh_half.T
    for t in range(T):
        a = gates[t].reshape(B, G * H)
        np.matmul(h[t], W_hh_half_T, out=rec)
        a += rec
        np.tanh(a, out=a)
        sig = a[:, : 3 * H]
        sig *= 0.5  # sigma(a) = (1 + tanh(a/2)) / 2 on the halved rows
        sig += 0.5
        o, i, f, g = gates[t, :, 0], gates[t, :, 1], gates[t, :, 2], gates[t, :, 3]
        np.multiply(f, c[t], out=c[t + 1])
        np.multiply(i, g, out=ig)
        c[t + 1] += ig
        np.tanh(c[t + 1], out=tanh_c[t])
        np.multiply(o, tanh_c[t], out=h[t + 1])
        if mask is not None:  # where the sequence is not running, carry the state unchanged
            m = mask[t]
            for s in (h, c):
                s[t + 1] -= s[t]
                s[t + 1] *= m
                s[t + 1] += s[t]
    return finish_forward(x, h, c, tanh_c, gates, W_ih, W_hh, weights, mask)


def project(x, state0, weights):
    """The buffers of a forward pass: gates (T, B, 4, H) holding every step's input projection
    (one GEMM, sigmoid rows halved, biases in), h and c (T+1, B, H) starting at state0, tanh_c
    (T, B, H); and the weights in the loop's row order: W_ih and W_hh true (for backward), W_hh
    with its sigmoid rows halved (for the loop)."""
    T, B, D = x.shape
    gates, h, c, tanh_c, W_ih, W_hh, W_ih_half, W_hh_half, bias = buffers(x, state0, weights)
    gates2d = gates.reshape(T * B, -1)
    np.matmul(x.reshape(T * B, D), W_ih_half.T, out=gates2d)  # all input projections, one GEMM
    if bias is not None:
        gates2d += bias
    return gates, h, c, tanh_c, W_ih, W_hh, W_hh_half


def buffers(x, state0, weights, empty=np.empty, halves=True):
    """``project`` without the product: gates (T, B, 4, H) uninitialised, h and c (T+1, B, H)
    starting at state0, tanh_c (T, B, H); W_ih, W_hh true and halved in the loop's row order;
    the summed bias in that order, halved likewise (None without biases). ``empty`` makes the
    gates buffer (the native backend passes its workspace); with ``halves`` False the halved
    weights are None."""
    T, B, D = x.shape
    h0, c0 = state0
    H = h0.shape[1]
    dt = x.dtype
    W_ih, W_hh, W_ih_half, W_hh_half, scale = half_sigmoid_rows(weights, ORDER, 3, H, halves)
    bias = None
    if weights.get("bias_ih") is not None:
        bias = reorder(weights["bias_ih"] + weights["bias_hh"], ORDER, H) * scale[:, 0]
    gates = empty((T, B, G, H), dt)  # pre-activations, then activations o, i, f, g
    h = np.empty((T + 1, B, H), dt)
    c = np.empty((T + 1, B, H), dt)
    tanh_c = np.empty((T, B, H), dt)
    h[0] = h0
    c[0] = c0
    return gates, h, c, tanh_c, W_ih, W_hh, W_ih_half, W_hh_half, bias


def finish_forward(x, h, c, tanh_c, gates, W_ih, W_hh, weights, mask):
    """``(y, (h_n, c_n), tape)`` once the time loop has filled the buffers."""
    y = h[1:] if mask is None else h[1:] * mask
    tape = dict(x=x, h=h, c=c, tanh_c=tanh_c, gates=gates, mask=mask, W_ih=W_ih, W_hh=W_hh,
                bias=weights.get("bias_ih") is not None)
    return y, (h[-1], c[-1]), tape


def backward(dy, dstate_n, tape, clip=None, record=None):
    """Backpropagate dy (T, B, H) and (dh_n, dc_n) through time; return dx, (dh0, dc0), grads."""
    x, h, c, tanh_c, gates, mask = (tape[k] for k in ("x", "h", "c", "tanh_c", "gates", "mask"))
    T, B, _, H = gates.shape
    dt = gates.dtype
    o, i, f, g = gates[:, :, 0], gates[:, :, 1], gates[:, :, 2], gates[:, :, 3]

    # dG holds, per step, the factor that dh (for o) or dc (for i, f, g) multiplies to give the
    # gradient of each gate's pre-activation; everything not on the recurrence is done here,
    # vectorised over all T steps, and the loop only multiplies in dh_t and dc_t.
    dG = np.empty((T, B, G, H), dt)
    d_o, d_i, d_f, d_g = dG[:, :, 0], dG[:, :, 1], dG[:, :, 2], dG[:, :, 3]
    np.subtract(1.0, o, out=d_o)
    d_o *= o
    d_o *= tanh_c                      # do = dh * tanh(c) * o(1-o),  through h = o * tanh(c)
    np.subtract(1.0, i, out=d_i)
    d_i *= i
    d_i *= g                           # di = dc * g * i(1-i),        through c = ... + i * g
    np.subtract(1.0, f, out=d_f)
    d_f *= f
    d_f *= c[:-1]                      # df = dc * c_prev * f(1-f),   through c = f * c_prev + ...
    np.square(g, out=d_g)
    np.subtract(1.0, d_g, out=d_g)
    d_g *= i                           # dg = dc * i * (1-g^2)
    A = np.square(tanh_c)
    np.subtract(1.0, A, out=A)
    A *= o                             # dc += dh * o * (1 - tanh(c)^2)
    carry_c = f                        # dc_prev = dc * f
    if mask is not None:
        dG *= mask[..., None]
        A *= mask
        keep = 1.0 - mask              # where masked, the state passes through unchanged
        carry_c = f * mask + keep
        dy = dy * mask                 # y = mask * h

    dh_n, dc_n = dstate_n
    dh = np.empty((B, H), dt)
    rec = np.array(dh_n, dtype=dt, copy=True)  # dL/dh_t arriving from step t+1
    dc = np.array(dc_n, dtype=dt, copy=True)
    tmp = np.empty((B, H), dt)
    W_hh = tape["W_hh"]
    for t in range(T - 1, -1, -1):
        np.add(dy[t], rec, out=dh)
        if clip is not None:  # clip the backward message dL/dh_t itself (Graves 2013)
            np.clip(dh, -clip, clip, out=dh)
        if record is not None:  # diagnostics: the backward message dL/dh_t
            record[t] = dh
        np.multiply(dh, A[t], out=tmp)
        dc += tmp
        dGt = dG[t]
        dGt[:, 0] *= dh
        dGt[:, 1:] *= dc[:, None, :]
        dc *= carry_c[t]
        np.matmul(dGt.reshape(B, G * H), W_hh, out=rec)  # through a = ... + W_hh h_prev
        if mask is not None:
            np.multiply(dh, keep[t], out=tmp)
            rec += tmp

    dx, grads = input_and_weight_grads(dG, tape)
    return dx, (rec, dc), grads


def input_and_weight_grads(dG, tape, matmuls=matmuls, bias_sum=None):
    """dx and the parameter grads (PyTorch's row order) from dL/d(pre-activation) dG
    (T, B, 4, H) of every step: one GEMM each over all T*B rows (``matmuls`` runs them).
    ``bias_sum``: dG summed over steps and rows (4H), where the time loop kept it."""
    x, h = tape["x"], tape["h"]
    T, B, _, H = dG.shape
    dG2d = dG.reshape(T * B, G * H)
    dx, dW_ih, dW_hh = matmuls([(dG2d, tape["W_ih"]), (dG2d.T, x.reshape(T * B, -1)),
                                (dG2d.T, h[:-1].reshape(T * B, H))])
    dx = dx.reshape(x.shape)
    grads = {"weight_ih": unorder(dW_ih, ORDER, H), "weight_hh": unorder(dW_hh, ORDER, H)}
    if tape["bias"]:
        db = unorder(dG2d.sum(axis=0) if bias_sum is None else bias_sum, ORDER, H)
        grads["bias_ih"] = db
        grads["bias_hh"] = db.copy()
    return dx, grads
