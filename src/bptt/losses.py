r"""Losses with their exact gradients: each returns ``(loss, d_input)``, a Python float and an array
shaped like the input, ready for a model's ``backward``.

Every position may carry a weight :math:`w` from ``mask`` (0/1 to drop padding, or any
non-negative weights; none means 1 everywhere). With ``reduction='mean'`` (the default)

.. math::
    L = \frac{\sum_i w_i\, \ell_i}{\sum_i w_i}

the weighted mean over positions (for ``mse``, over the elements under each position), which is
PyTorch's normalisation for a weighted cross-entropy; ``reduction='sum'`` gives
:math:`\sum_i w_i \ell_i`. When every weight is zero (a chunk that is all padding) the mean loss
is 0.0 and the gradient zero, where PyTorch would return nan.

Shapes: cross-entropy takes logits (..., V), any leading shape such as (T, B, V) or (B, V), with
integer targets and mask (...); mse takes pred and target of one shape and a mask over its leading
axes, e.g. pred (T, B, D) with mask (T, B) or (T, B, D).
"""

import math

import numpy as np

REDUCTIONS = ("mean", "sum")


def softmax_cross_entropy(logits, targets, mask=None, *, reduction="mean"):
    r"""Cross-entropy of integer ``targets`` under ``softmax(logits)``; return ``(loss, dlogits)``.

    .. math::
        \ell_i = -\log \mathrm{softmax}(z_i)_{y_i} = \log\textstyle\sum_v e^{z_{iv}} - z_{i y_i},
        \qquad \frac{\partial L}{\partial z_i} = \frac{w_i}{N}\,(\mathrm{softmax}(z_i) - e_{y_i})

    with :math:`N = \sum_i w_i` for the mean and 1 for the sum. The log-sum-exp is taken after
    subtracting each row's maximum, so large logits do not overflow. dlogits has the dtype of logits.
    """
    name = "softmax_cross_entropy"
    logits = _float_array(name, "logits", logits)
    if logits.ndim < 1 or logits.shape[-1] < 1:
        raise ValueError(f"{name}: expected logits of shape (..., V) with V >= 1, "
                         f"got {logits.shape}")
    V = logits.shape[-1]
    targets = np.asarray(targets)
    if targets.dtype.kind not in "iu":
        raise TypeError(f"{name}: expected integer targets (class indices), got dtype "
                        f"{targets.dtype}")
    if targets.shape != logits.shape[:-1]:
        raise ValueError(f"{name}: expected targets of shape {logits.shape[:-1]} (logits' shape "
                         f"without V={V}), got {targets.shape}")
    if targets.size and (targets.min() < 0 or targets.max() >= V):
        bad = targets[(targets < 0) | (targets >= V)]
        raise ValueError(f"{name}: expected every target in 0..{V - 1} (V={V}), got "
                         f"{bad[:10].tolist()}")
    weights = _weights(name, mask, targets.shape, logits.dtype)
    _check_reduction(name, reduction)

    shifted = logits - logits.max(axis=-1, keepdims=True)              # (..., V), max 0 per row
    exp = np.exp(shifted)
    sum_exp = exp.sum(axis=-1, keepdims=True)                          # (..., 1)
    target_shifted = np.take_along_axis(shifted, targets[..., None], axis=-1)[..., 0]
    nll = np.log(sum_exp[..., 0]) - target_shifted                     # (...)

    dlogits = exp
    dlogits /= sum_exp                                                 # softmax
    np.put_along_axis(dlogits, targets[..., None],
                      np.take_along_axis(dlogits, targets[..., None], axis=-1) - 1, axis=-1)
    if weights is None:
        total, norm = nll.sum(), nll.size
    else:
        total, norm = (weights * nll).sum(), weights.sum()
        dlogits *= weights[..., None]
    return _reduce(total, norm, dlogits, reduction)


def mse(pred, target, mask=None, *, reduction="mean"):
    r"""Squared error; return ``(loss, dpred)``.

    .. math::
        \ell_{ij} = (p_{ij} - t_{ij})^2,\qquad
        \frac{\partial L}{\partial p_{ij}} = \frac{2\, w_i}{N}\,(p_{ij} - t_{ij})

    where i runs over the mask's positions (the leading axes of pred that the mask covers) and j
    over the elements under each; :math:`N = \sum_{ij} w_i` for the mean, 1 for the sum. Without a
    mask this is ``mean((pred - target)**2)``. dpred has the dtype of pred.
    """
    name = "mse"
    pred = _float_array(name, "pred", pred)
    target = np.asarray(target)
    if target.dtype.kind not in "fiu":
        raise TypeError(f"{name}: expected target of real numbers, got dtype {target.dtype}")
    if target.shape != pred.shape:
        raise ValueError(f"{name}: expected target of pred's shape {pred.shape}, got "
                         f"{target.shape}")
    mask_shape = np.shape(mask)
    if mask is not None and (len(mask_shape) > pred.ndim
                             or pred.shape[:len(mask_shape)] != mask_shape):
        raise ValueError(f"{name}: expected mask over pred's leading axes (a prefix of "
                         f"{pred.shape}), got shape {mask_shape}")
    weights = _weights(name, mask, mask_shape, pred.dtype)
    _check_reduction(name, reduction)

    diff = pred - target.astype(pred.dtype, copy=False)
    dpred = 2 * diff
    if weights is None:
        total, norm = np.vdot(diff, diff), diff.size
    else:
        trailing = pred.shape[weights.ndim:]                      # the elements under a position
        w = weights.reshape(weights.shape + (1,) * len(trailing))
        total, norm = (w * diff * diff).sum(), weights.sum() * math.prod(trailing)
        dpred *= w
    return _reduce(total, norm, dpred, reduction)


def _reduce(total, norm, grad, reduction):
    if reduction == "sum":
        return float(total), grad
    if norm == 0:  # nothing counted: no loss and no gradient, rather than 0/0
        return 0.0, np.zeros_like(grad)
    grad /= grad.dtype.type(norm)
    return float(total / norm), grad


def _float_array(name, what, value):
    arr = np.asarray(value)
    if arr.dtype not in (np.float32, np.float64):
        raise TypeError(f"{name}: expected {what} of dtype float32 or float64, got {arr.dtype}")
    return arr


def _weights(name, mask, shape, dtype):
    """The mask as an array of non-negative weights of the given shape, or None."""
    if mask is None:
        return None
    w = np.asarray(mask)
    if w.dtype.kind not in "biuf":
        raise TypeError(f"{name}: expected mask of 0/1 or non-negative weights, got dtype "
                        f"{w.dtype}")
    if w.shape != shape:
        raise ValueError(f"{name}: expected mask of shape {shape}, got {w.shape}")
    w = w.astype(dtype, copy=False)
    if w.size and not (np.all(np.isfinite(w)) and w.min() >= 0):
        raise ValueError(f"{name}: expected mask weights finite and >= 0, got values in "
                         f"[{w.min()}, {w.max()}]")
    return w


def _check_reduction(name, reduction):
    if reduction not in REDUCTIONS:
        raise ValueError(f"{name}: expected reduction 'mean' or 'sum', got {reduction!r}")


from .ctc import ctc_loss, ctc_loss_logits  # noqa: F401  (re-exported; CTC has its own module)
