"""Scalar activations for the compiled loops, chosen by dtype at compile time.

float64 calls libm's ``tanh`` (the checks compare against the NumPy reference to ~1e-12).
float32 uses a clamped rational approximation (Eigen's ``ptanh_float``, a few ulp): libm's scalar
``tanhf`` does not vectorise, and one tanh per gate element dominates a step otherwise.
"""

import math

import numpy as np

from numba import njit, types
from numba.extending import overload

_F = np.float32
_CLAMP = _F(7.90531110763549805)  # beyond it tanh rounds to +-1 in float32


@njit(inline="always", fastmath=True, error_model="numpy")
def _tanh32(x):
    x = min(max(x, -_CLAMP), _CLAMP)
    x2 = x * x
    p = x2 * _F(-2.76076847742355e-16) + _F(2.00018790482477e-13)
    p = x2 * p + _F(-8.60467152213735e-11)
    p = x2 * p + _F(5.12229709037114e-08)
    p = x2 * p + _F(1.48572235717979e-05)
    p = x2 * p + _F(6.37261928875436e-04)
    p = x2 * p + _F(4.89352455891786e-03)
    q = x2 * _F(1.19825839466702e-06) + _F(1.18534705686654e-04)
    q = x2 * q + _F(2.26843463243900e-03)
    q = x2 * q + _F(4.89352518554385e-03)
    return x * p / q


def tanh(x):
    """tanh for the compiled loops (see the module docstring)."""
    return math.tanh(x)


@overload(tanh, inline="always")
def _tanh_overload(x):
    if isinstance(x, types.Float) and x.bitwidth == 32:
        def impl(x):
            return _tanh32(x)
    else:
        def impl(x):
            return math.tanh(x)
    return impl


@njit(inline="always", fastmath=True, error_model="numpy")
def sigmoid_half(a, half):
    """sigma(2a) = (1 + tanh(a)) / 2: the sigmoid of a pre-activation that was halved."""
    return half * tanh(a) + half


_SMALL = 1 << 16  # below about this many multiply-adds a BLAS call costs more than the product


@njit(fastmath=True, error_model="numpy")
def matmul(a, w, out):
    """out = a @ w for C-contiguous 2-D arrays: BLAS, or a plain loop for tiny products (the
    (1, 32) @ (32, 128) of a batch-1 step is mostly call overhead in BLAS)."""
    M, K = a.shape
    N = w.shape[1]
    if M * K * N >= _SMALL:
        np.dot(a, w, out)
        return
    for m in range(M):
        row = out[m]
        row[:] = 0
        for k in range(K):
            am = a[m, k]
            wk = w[k]
            for n in range(N):
                row[n] += am * wk[n]


JIT = dict(cache=True, fastmath=True, error_model="numpy", nogil=True)  # the time loops


@njit(inline="always", fastmath=True, error_model="numpy")
def incoming_message(dh, rec, dy, mask, t, clip, record):
    """Fill dh (B, H) with dL/dh_t: what arrives from step t+1 (rec) plus the loss's own
    gradient at step t (dy[t], zero where the mask is); clip it to [-clip, clip] (Graves 2013;
    clip < 0: off) and keep it in record[t] (diagnostics; a (0, B, H) record: off)."""
    masked = mask.shape[0] > 0  # (0, B, 1): no mask
    one = dh.dtype.type(1)
    B, H = dh.shape
    for b in range(B):
        d, r, y = dh[b], rec[b], dy[t, b]
        m = mask[t, b, 0] if masked else one
        for j in range(H):
            d[j] = r[j] + y[j] * m
        if clip >= 0:
            for j in range(H):
                d[j] = min(max(d[j], -clip), clip)
    if record.shape[0]:
        record[t] = dh


@njit(inline="always", fastmath=True, error_model="numpy")
def carry_where_masked(rec, dh, mask, t):
    """rec += dh * (1 - mask[t]): where a sequence is not running at step t, its dL/dh_t passes
    to h_{t-1} unchanged (the state was carried)."""
    one = rec.dtype.type(1)
    B, H = rec.shape
    for b in range(B):
        keep = one - mask[t, b, 0]
        r, d = rec[b], dh[b]
        for j in range(H):
            r[j] += d[j] * keep


def mask_array(mask, B, dtype):
    """The (T, B, 1) mask as the loops take it: (0, B, 1) for none, so that one compiled version
    serves both (each version costs seconds of compile time)."""
    if mask is None:
        return np.empty((0, B, 1), dtype)
    return np.ascontiguousarray(mask, dtype)
