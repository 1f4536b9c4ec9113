"""Gate-row bookkeeping shared by the gated cells.

A gated cell stacks its G gates' weights as G chunks of H rows (PyTorch's layout). Inside the time
loop a cell may keep the chunks in another order and scale some of them, so that one slice or one
ufunc call covers several gates; these helpers move between the two layouts.
"""

import numpy as np


def sigmoid(a):
    """Logistic function written through tanh: no overflow, and exact at the 1/2 scaling below."""
    return 0.5 + 0.5 * np.tanh(0.5 * a)


def reorder(w, order, H):
    """PyTorch's gate chunks of ``w`` (G chunks of H rows) in ``order`` (a list of chunk
    numbers), as a new array: chunk i of the result is chunk ``order[i]`` of ``w``."""
    return np.concatenate([w[k * H:(k + 1) * H] for k in order])


def unorder(grad, order, H):
    """Inverse of ``reorder`` along axis 0."""
    out = np.empty_like(grad)
    for i, k in enumerate(order):
        out[k * H:(k + 1) * H] = grad[i * H:(i + 1) * H]
    return out


def half_sigmoid_rows(weights, order, n_sigmoid, H, halves=True):
    """Weights and summed bias in chunk ``order``, the first ``n_sigmoid`` chunks halved.

    With a sigmoid gate's pre-activation halved, one ``tanh`` over all chunks gives
    sigma(a) = (1 + tanh(a / 2)) / 2 for those gates after an affine fix-up (halving is exact).
    Returns (W_ih_true, W_hh_true, W_ih_half, W_hh_half, scale) in the new order; ``scale`` is
    (G*H, 1). With ``halves`` False the halved weights are None (the native loops halve them
    as they pack them).
    """
    G = len(order)
    scale = np.ones((G * H, 1), dtype=weights["weight_ih"].dtype)
    scale[: n_sigmoid * H] = 0.5
    W_ih = reorder(weights["weight_ih"], order, H)
    W_hh = reorder(weights["weight_hh"], order, H)
    if not halves:
        return W_ih, W_hh, None, None, scale
    return W_ih, W_hh, W_ih * scale, W_hh * scale, scale


def step_mask(mask, T):
    """Per-step views of a (T, B, 1) mask and its complement, or Nones."""
    if mask is None:
        return None, None
    return mask, 1.0 - mask


def matmuls(pairs):
    """[a @ b for a, b in pairs]: the products of a backward pass outside its time loop (the
    compiled backends pass their own, which runs them together on their threads)."""
    return [a @ b for a, b in pairs]
