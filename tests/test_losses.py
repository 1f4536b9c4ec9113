"""Losses against torch autograd in float64: the loss and the exact gradient, with and without masks."""

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from bptt.losses import mse, softmax_cross_entropy


def torch_cross_entropy(logits, targets, weights, reduction):
    z = torch.tensor(logits, requires_grad=True)
    V = logits.shape[-1]
    per = F.cross_entropy(z.reshape(-1, V), torch.tensor(targets).reshape(-1).long(),
                          reduction="none")
    w = torch.ones_like(per) if weights is None else torch.tensor(weights).reshape(-1).double()
    loss = (w * per).sum()
    if reduction == "mean":
        loss = loss / w.sum()
    loss.backward()
    return loss.item(), z.grad.numpy()


def torch_mse(pred, target, weights, reduction):
    p = torch.tensor(pred, requires_grad=True)
    per = F.mse_loss(p, torch.tensor(target), reduction="none")
    if weights is None:
        w = torch.ones_like(per)
    else:
        w = torch.tensor(weights).double().reshape(weights.shape + (1,) * (pred.ndim - weights.ndim))
        w = w.expand_as(per)
    loss = (w * per).sum()
    if reduction == "mean":
        loss = loss / w.sum()
    loss.backward()
    return loss.item(), p.grad.numpy()


def masks(rng, shape):
    """Masks of each kind; the first position always counts (an all-zero mask is tested apart)."""
    out = {"binary": np.array(rng.random(shape) < 0.7, np.int64),
           "bool": np.array(rng.random(shape) < 0.7),
           "weights": np.array(rng.uniform(0.0, 2.0, shape))}
    for m in out.values():
        m[(0,) * m.ndim] = 1
    return {"none": None, **out}


# ---------------------------------------------------------------------- cross-entropy
@pytest.mark.parametrize("shape", [(5, 3, 7), (4, 6), (9,)], ids=["TBV", "BV", "V"])
@pytest.mark.parametrize("mask_kind", ["none", "binary", "bool", "weights"])
@pytest.mark.parametrize("reduction", ["mean", "sum"])
def test_cross_entropy_matches_torch(shape, mask_kind, reduction):
    rng = np.random.default_rng(0)
    logits = rng.standard_normal(shape) * 3
    targets = rng.integers(0, shape[-1], shape[:-1])
    mask = masks(rng, shape[:-1])[mask_kind]
    loss, dlogits = softmax_cross_entropy(logits, targets, mask, reduction=reduction)
    ref_loss, ref_grad = torch_cross_entropy(logits, targets, mask, reduction)
    assert isinstance(loss, float)
    assert dlogits.shape == logits.shape and dlogits.dtype == np.float64
    np.testing.assert_allclose(loss, ref_loss, rtol=1e-12)
    np.testing.assert_allclose(dlogits, ref_grad, rtol=1e-12, atol=1e-15)


def test_cross_entropy_binary_mask_is_torch_ignore_index():
    rng = np.random.default_rng(1)
    T, B, V = 6, 4, 5
    logits = rng.standard_normal((T, B, V))
    targets = rng.integers(0, V, (T, B))
    mask = rng.random((T, B)) < 0.6
    z = torch.tensor(logits, requires_grad=True)
    ignored = torch.tensor(np.where(mask, targets, -100))
    ref = F.cross_entropy(z.reshape(-1, V), ignored.reshape(-1), ignore_index=-100)
    ref.backward()
    loss, dlogits = softmax_cross_entropy(logits, targets, mask)
    np.testing.assert_allclose(loss, ref.item(), rtol=1e-12)
    np.testing.assert_allclose(dlogits, z.grad.numpy(), rtol=1e-12, atol=1e-15)


def test_cross_entropy_is_stable_for_huge_logits():
    rng = np.random.default_rng(2)
    logits = rng.standard_normal((8, 6)) * 1e3 + 1e4   # exp would overflow without the shift
    targets = rng.integers(0, 6, 8)
    loss, dlogits = softmax_cross_entropy(logits, targets)
    ref_loss, ref_grad = torch_cross_entropy(logits, targets, None, "mean")
    assert math.isfinite(loss) and np.all(np.isfinite(dlogits))
    np.testing.assert_allclose(loss, ref_loss, rtol=1e-12)
    np.testing.assert_allclose(dlogits, ref_grad, rtol=1e-12, atol=1e-15)


def test_cross_entropy_uniform_logits_golden():
    V = 11
    loss, dlogits = softmax_cross_entropy(np.zeros((3, V)), np.array([0, 5, 10]))
    assert loss == pytest.approx(math.log(V), rel=1e-15)
    expected = np.full((3, V), 1 / V)
    expected[[0, 1, 2], [0, 5, 10]] -= 1
    np.testing.assert_allclose(dlogits, expected / 3, rtol=1e-14)


def test_cross_entropy_float32_keeps_dtype_and_agrees():
    rng = np.random.default_rng(3)
    logits = rng.standard_normal((5, 4, 9))
    targets = rng.integers(0, 9, (5, 4))
    loss64, d64 = softmax_cross_entropy(logits, targets)
    loss32, d32 = softmax_cross_entropy(logits.astype(np.float32), targets)
    assert d32.dtype == np.float32
    np.testing.assert_allclose(loss32, loss64, rtol=1e-6)
    np.testing.assert_allclose(d32, d64, rtol=1e-5, atol=1e-7)


def test_cross_entropy_all_masked_gives_zero_loss_and_gradient():
    rng = np.random.default_rng(4)
    logits = rng.standard_normal((3, 2, 4))
    loss, dlogits = softmax_cross_entropy(logits, np.zeros((3, 2), np.int64), np.zeros((3, 2)))
    assert loss == 0.0
    assert not np.any(dlogits)


def test_cross_entropy_does_not_modify_inputs():
    rng = np.random.default_rng(5)
    logits = rng.standard_normal((4, 3))
    before = logits.copy()
    softmax_cross_entropy(logits, np.array([0, 1, 2, 0]))
    np.testing.assert_array_equal(logits, before)


@pytest.mark.parametrize("args, exc, match", [
    ((np.zeros((2, 3), np.int64), np.zeros(2, np.int64)), TypeError, "logits of dtype float32"),
    ((np.zeros((2, 0)), np.zeros(2, np.int64)), ValueError, "V >= 1"),
    ((np.array(1.0), np.array(0)), ValueError, r"shape \(\.\.\., V\)"),
    ((np.zeros((2, 3)), np.zeros(2)), TypeError, "integer targets"),
    ((np.zeros((2, 3)), np.zeros(3, np.int64)), ValueError, r"targets of shape \(2,\)"),
    ((np.zeros((2, 3)), np.array([0, 3])), ValueError, r"in 0\.\.2 \(V=3\), got \[3\]"),
    ((np.zeros((2, 3)), np.array([-1, 0])), ValueError, r"got \[-1\]"),
    ((np.zeros((2, 3)), np.array([0, 1]), np.ones(3)), ValueError, r"mask of shape \(2,\)"),
    ((np.zeros((2, 3)), np.array([0, 1]), np.array(["a", "b"])), TypeError, "mask of 0/1"),
    ((np.zeros((2, 3)), np.array([0, 1]), np.array([1.0, -1.0])), ValueError, ">= 0"),
    ((np.zeros((2, 3)), np.array([0, 1]), np.array([1.0, np.nan])), ValueError, "finite"),
], ids=["int-logits", "V=0", "scalar-logits", "float-targets", "target-shape", "target-high",
        "target-negative", "mask-shape", "mask-dtype", "mask-negative", "mask-nan"])
def test_cross_entropy_rejects(args, exc, match):
    with pytest.raises(exc, match=match):
        softmax_cross_entropy(*args)


def test_cross_entropy_rejects_unknown_reduction():
    with pytest.raises(ValueError, match="reduction 'mean' or 'sum', got 'none'"):
        softmax_cross_entropy(np.zeros((2, 3)), np.array([0, 1]), reduction="none")


# ---------------------------------------------------------------------- mse
@pytest.mark.parametrize("mask_axes", [None, 1, 2, 3], ids=["none", "T", "TB", "TBD"])
@pytest.mark.parametrize("mask_kind", ["binary", "weights"])
@pytest.mark.parametrize("reduction", ["mean", "sum"])
def test_mse_matches_torch(mask_axes, mask_kind, reduction):
    rng = np.random.default_rng(6)
    shape = (5, 3, 4)
    pred, target = rng.standard_normal(shape), rng.standard_normal(shape)
    mask = None if mask_axes is None else masks(rng, shape[:mask_axes])[mask_kind]
    loss, dpred = mse(pred, target, mask, reduction=reduction)
    ref_loss, ref_grad = torch_mse(pred, target, mask, reduction)
    assert isinstance(loss, float) and dpred.dtype == np.float64
    np.testing.assert_allclose(loss, ref_loss, rtol=1e-12)
    np.testing.assert_allclose(dpred, ref_grad, rtol=1e-12, atol=1e-15)


def test_mse_without_mask_is_torch_mse_loss():
    rng = np.random.default_rng(7)
    pred, target = rng.standard_normal((6, 2)), rng.standard_normal((6, 2))
    p = torch.tensor(pred, requires_grad=True)
    ref = F.mse_loss(p, torch.tensor(target))
    ref.backward()
    loss, dpred = mse(pred, target)
    np.testing.assert_allclose(loss, ref.item(), rtol=1e-12)
    np.testing.assert_allclose(dpred, p.grad.numpy(), rtol=1e-12)


def test_mse_golden_and_integer_target():
    loss, dpred = mse(np.zeros((2, 2)), np.ones((2, 2), np.int64))
    assert loss == 1.0
    np.testing.assert_array_equal(dpred, np.full((2, 2), -0.5))


def test_mse_float32_keeps_dtype_and_all_masked_is_zero():
    pred = np.ones((3, 2), np.float32)
    loss, dpred = mse(pred, np.zeros((3, 2)), np.zeros(3))
    assert dpred.dtype == np.float32
    assert loss == 0.0 and not np.any(dpred)


@pytest.mark.parametrize("args, kwargs, exc, match", [
    ((np.zeros(3, np.int64), np.zeros(3)), {}, TypeError, "pred of dtype float32"),
    ((np.zeros(3), np.array(["a", "b", "c"])), {}, TypeError, "target of real numbers"),
    ((np.zeros(3), np.zeros(4)), {}, ValueError, r"target of pred's shape \(3,\)"),
    ((np.zeros((3, 2)), np.zeros((3, 2)), np.ones(2)), {}, ValueError, "leading axes"),
    ((np.zeros((3, 2)), np.zeros((3, 2)), np.ones((3, 2, 1))), {}, ValueError, "leading axes"),
    ((np.zeros(3), np.zeros(3), np.array([1.0, -1.0, 0.0])), {}, ValueError, ">= 0"),
    ((np.zeros(3), np.zeros(3)), {"reduction": "max"}, ValueError, "reduction"),
], ids=["int-pred", "str-target", "target-shape", "mask-not-prefix", "mask-too-deep",
        "mask-negative", "reduction"])
def test_mse_rejects(args, kwargs, exc, match):
    with pytest.raises(exc, match=match):
        mse(*args, **kwargs)
