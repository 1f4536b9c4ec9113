r"""Elman recurrent network, in PyTorch's formulation:

.. math::
    h_t = \phi(W_{ih} x_t + b_{ih} + W_{hh} h_{t-1} + b_{hh}),\qquad \phi \in \{\tanh, \mathrm{relu}\}

Shapes: x (T, B, D); h (B, H); weight_ih (H, D), weight_hh (H, H), biases (H,). State is h.
"""

import numpy as np

from .gates import matmuls

NONLINEARITIES = ("tanh", "relu")


def step(x, h, weights, nonlinearity="tanh"):
    """One step straight from the equation (the reference)."""
    a = x @ weights["weight_ih"].T + h @ weights["weight_hh"].T
    if weights.get("bias_ih") is not None:
        a = a + weights["bias_ih"] + weights["bias_hh"]
    return np.tanh(a) if nonlinearity == "tanh" else np.maximum(a, 0.0)


def forward(x, h0, weights, mask=None, nonlinearity="tanh"):
    """Run over x (T, B, D) from h0 (B, H); return y (T, B, H), h_n and the tape."""
    T, B, D = x.shape
    H = h0.shape[1]
    dt = x.dtype
    h = project(x, h0, weights)
    rec = np.empty((B, H), dt)
    W_hh_T = weights["weight_hh"].T
    relu = nonlinearity == "relu"
    for t in range(T):
        a = h[t + 1]
        np.matmul(h[t], W_hh_T, out=rec)
        a += rec
        if relu:
            np.maximum(a, 0.0, out=a)
        else:
            np.tanh(a, out=a)
        if mask is not None:  # where the sequence is not running, carry the state unchanged
            a -= h[t]
            a *= mask[t]
            a += h[t]
    return finish_forward(x, h, weights, mask, relu)


def project(x, h0, weights):
    """h (T+1, B, H): h[0] = h0, then every step's input projection (one GEMM), which the time
    loop overwrites in place with the pre-activation and then h_t."""
    T, B, D = x.shape
    H = h0.shape[1]
    h = np.empty((T + 1, B, H), x.dtype)
    h[0] = h0
    np.matmul(x.reshape(T * B, D), weights["weight_ih"].T, out=h[1:].reshape(T * B, H))
    if weights.get("bias_ih") is not None:
        h[1:] += weights["bias_ih"] + weights["bias_hh"]
    return h


def finish_forward(x, h, weights, mask, relu):
    """``(y, h_n, tape)`` once the time loop has filled h."""
    y = h[1:] if mask is None else h[1:] * mask
    tape = dict(x=x, h=h, mask=mask, relu=relu, W_ih=weights["weight_ih"].copy(),
                W_hh=weights["weight_hh"].copy(), bias=weights.get("bias_ih") is not None)
    return y, h[-1], tape


def backward(dy, dh_n, tape, clip=None, record=None):
    """Backpropagate dy (T, B, H) and dh_n through time; return dx, dh0, grads."""
    h, mask = tape["h"], tape["mask"]
    T = h.shape[0] - 1
    B, H = h.shape[1:]
    dt = h.dtype
    # da[t] starts as phi'(a_t) (vectorised over T) and becomes dL/da_t in the loop
    if tape["relu"]:
        da = (h[1:] > 0).astype(dt)            # relu' = 1 where the output is positive
    else:
        da = np.square(h[1:])
        np.subtract(1.0, da, out=da)          # tanh' = 1 - h^2
    if mask is not None:
        da *= mask
        keep = 1.0 - mask
        dy = dy * mask

    dh = np.empty((B, H), dt)
    rec = np.array(dh_n, dtype=dt, copy=True)
    tmp = np.empty((B, H), dt)
    W_hh = tape["W_hh"]
    for t in range(T - 1, -1, -1):
        np.add(dy[t], rec, out=dh)
        if clip is not None:  # clip the backward message dL/dh_t itself (Graves 2013)
            np.clip(dh, -clip, clip, out=dh)
        if record is not None:  # diagnostics: the backward message dL/dh_t
            record[t] = dh
        da[t] *= dh
        np.matmul(da[t], W_hh, out=rec)       # through a_t = ... + W_hh h_{t-1}
        if mask is not None:
            np.multiply(dh, keep[t], out=tmp)
            rec += tmp

    dx, grads = input_and_weight_grads(da, tape)
    return dx, rec, grads


def input_and_weight_grads(da, tape, matmuls=matmuls, bias_sum=None):
    """dx and the parameter grads from dL/da (T, B, H) of every step: one GEMM each over all
    T*B rows (cuDNN's backward-weights; ``matmuls`` runs them). ``bias_sum``: da summed over
    steps and rows (H), where the time loop kept it."""
    x, h = tape["x"], tape["h"]
    T, B, H = da.shape
    da2d = da.reshape(T * B, H)
    dx, dW_ih, dW_hh = matmuls([(da2d, tape["W_ih"]), (da2d.T, x.reshape(T * B, -1)),
                                (da2d.T, h[:-1].reshape(T * B, H))])
    dx = dx.reshape(x.shape)
    grads = {"weight_ih": dW_ih, "weight_hh": dW_hh}
    if tape["bias"]:
        grads["bias_ih"] = da2d.sum(axis=0) if bias_sum is None else bias_sum
        grads["bias_hh"] = grads["bias_ih"].copy()
    return dx, grads
