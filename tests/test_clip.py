"""Gradient clipping against torch.nn.utils.clip_grad_norm_ / clip_grad_value_ in float64."""

import json
import math

import numpy as np
import pytest
import torch

from bptt.clip import ClipLog, ClipStats, clip_grad_norm, clip_grad_value

SHAPES = {"weight_ih_l0": (12, 5), "weight_hh_l0": (12, 3), "bias_ih_l0": (12,), "scale": ()}


def make_grads(seed=0, scale=1.0, dtype=np.float64):
    rng = np.random.default_rng(seed)
    return {k: np.asarray(rng.standard_normal(s) * scale, dtype) for k, s in SHAPES.items()}


def global_norm(grads):
    return float(np.linalg.norm(np.concatenate([g.ravel() for g in grads.values()])))


def torch_clip(grads, fn, *args, **kwargs):
    tensors = [torch.tensor(g, requires_grad=True) for g in grads.values()]
    for t, g in zip(tensors, grads.values()):
        t.grad = torch.tensor(g)
    out = fn(tensors, *args, **kwargs)
    return out, {k: t.grad.numpy() for k, t in zip(grads, tensors)}


# ---------------------------------------------------------------------- by norm
@pytest.mark.parametrize("ratio", [0.1, 0.9, 1.001, 1.1, 10.0], ids=lambda r: f"max_norm={r}*norm")
def test_clip_grad_norm_matches_torch(ratio):
    grads = make_grads()
    norm = global_norm(grads)
    max_norm = ratio * norm
    ref_norm, ref = torch_clip(grads, torch.nn.utils.clip_grad_norm_, max_norm, foreach=False)
    arrays = dict(grads)
    stats = clip_grad_norm(grads, max_norm)
    for k in SHAPES:
        assert grads[k] is arrays[k]   # in place
        np.testing.assert_allclose(grads[k], ref[k], rtol=1e-12, atol=0, err_msg=k)
    assert stats.norm_before == pytest.approx(ref_norm.item(), rel=1e-12)
    assert stats.clipped == (max_norm / (norm + 1e-6) < 1)
    assert stats.fraction_clipped == (1.0 if stats.clipped else 0.0)
    assert stats.norm_after == pytest.approx(global_norm(grads), rel=1e-12)
    assert stats.norm_after <= max_norm * (1 + 1e-12)


def test_clip_grad_norm_leaves_small_grads_bitwise_alone():
    grads = make_grads()
    before = {k: v.copy() for k, v in grads.items()}
    stats = clip_grad_norm(grads, math.inf)   # only measures
    assert not stats.clipped and stats.norm_after == stats.norm_before
    for k in SHAPES:
        np.testing.assert_array_equal(grads[k], before[k])


def test_clip_grad_norm_at_the_boundary_follows_torchs_eps():
    """max_norm equal to the norm still scales, by max_norm / (norm + 1e-6), as torch does."""
    grads = make_grads()
    norm = global_norm(grads)
    ref_norm, ref = torch_clip(grads, torch.nn.utils.clip_grad_norm_, norm, foreach=False)
    stats = clip_grad_norm(grads, norm)
    assert stats.clipped
    for k in SHAPES:
        np.testing.assert_allclose(grads[k], ref[k], rtol=1e-12, atol=0)


def test_clip_grad_norm_float32_stays_float32_and_huge_grads_do_not_overflow():
    grads = make_grads(scale=1e30, dtype=np.float32)   # squares overflow float32, not float64
    norm = global_norm({k: v.astype(np.float64) for k, v in grads.items()})
    stats = clip_grad_norm(grads, 1.0)
    assert stats.clipped and stats.norm_before == pytest.approx(norm, rel=1e-12)
    assert all(g.dtype == np.float32 for g in grads.values())
    assert global_norm({k: v.astype(np.float64) for k, v in grads.items()}) == \
        pytest.approx(1.0, rel=1e-5)


def test_clip_grad_norm_of_nothing():
    stats = clip_grad_norm({}, 1.0)
    assert stats == ClipStats(0.0, 0.0, False, 0.0)


# ---------------------------------------------------------------------- by value
@pytest.mark.parametrize("clip_value", [0.3, 1.0, 10.0])
def test_clip_grad_value_matches_torch(clip_value):
    grads = make_grads()
    norm = global_norm(grads)
    beyond = sum(int(np.sum(np.abs(g) > clip_value)) for g in grads.values())
    size = sum(g.size for g in grads.values())
    _, ref = torch_clip(grads, torch.nn.utils.clip_grad_value_, clip_value, foreach=False)
    arrays = dict(grads)
    stats = clip_grad_value(grads, clip_value)
    for k in SHAPES:
        assert grads[k] is arrays[k]
        np.testing.assert_array_equal(grads[k], ref[k], err_msg=k)
    assert stats.norm_before == pytest.approx(norm, rel=1e-12)
    assert stats.norm_after == pytest.approx(global_norm(grads), rel=1e-12)
    assert stats.clipped == (beyond > 0)
    assert stats.fraction_clipped == beyond / size


# ---------------------------------------------------------------------- non-finite and bad input
@pytest.mark.parametrize("clip, bound", [(clip_grad_norm, 1.0), (clip_grad_value, 0.5)],
                         ids=["norm", "value"])
def test_non_finite_gradient_raises_naming_the_keys_and_clips_nothing(clip, bound):
    grads = make_grads(scale=10.0)
    grads["weight_hh_l0"][1, 2] = np.nan
    grads["bias_ih_l0"][3] = -np.inf
    before = {k: v.copy() for k, v in grads.items()}
    with pytest.raises(ValueError, match=r"non-finite .* \['weight_hh_l0', 'bias_ih_l0'\]"):
        clip(grads, bound)
    for k in SHAPES:
        np.testing.assert_array_equal(grads[k], before[k])
    with pytest.raises(RuntimeError, match="non-finite"):   # torch, asked to, refuses too
        torch_clip(grads, torch.nn.utils.clip_grad_norm_, bound, error_if_nonfinite=True)


@pytest.mark.parametrize("clip, what", [(clip_grad_norm, "max_norm"),
                                        (clip_grad_value, "clip_value")], ids=["norm", "value"])
@pytest.mark.parametrize("grads, bound, exc, match", [
    ([np.zeros(2)], 1.0, TypeError, "grads a dict"),
    ({"w": [1.0, 2.0]}, 1.0, TypeError, r"grads\['w'\]: expected a NumPy array"),
    ({"w": np.ones(2, np.int64)}, 1.0, TypeError, "float32 or float64, got int64"),
    ({"w": np.broadcast_to(np.ones(1), (3,))}, 1.0, ValueError, "read-only"),
    ({"w": np.ones(2)}, 0.0, ValueError, "{what} > 0, got 0.0"),
    ({"w": np.ones(2)}, -1.0, ValueError, "{what} > 0"),
    ({"w": np.ones(2)}, math.nan, ValueError, "{what} > 0"),
    ({"w": np.ones(2)}, "1", TypeError, "{what} a positive number"),
    ({"w": np.ones(2)}, True, TypeError, "{what} a positive number"),
], ids=["list", "list-value", "int-dtype", "read-only", "zero", "negative", "nan", "str", "bool"])
def test_clip_rejects(clip, what, grads, bound, exc, match):
    with pytest.raises(exc, match=clip.__name__ + ": .*" + match.format(what=what)):
        clip(grads, bound)


# ---------------------------------------------------------------------- the log
def test_clip_log_counts_and_averages():
    log = ClipLog()
    assert log.steps == 0 and math.isnan(log.clip_rate) and math.isnan(log.mean_norm_before)
    assert math.isnan(log.summary()["last_norm_before"])
    seen = []
    for seed, scale in enumerate([0.1, 5.0, 0.2, 8.0, 9.0]):
        stats = log.add(clip_grad_norm(make_grads(seed, scale), 2.0))
        seen.append(stats)
    fired = sum(s.clipped for s in seen)
    assert 0 < fired < len(seen)   # the scales straddle max_norm
    summary = log.summary()
    assert summary["steps"] == log.steps == len(seen)
    assert summary["times_clipped"] == log.times_clipped == fired
    assert summary["clip_rate"] == log.clip_rate == fired / len(seen)
    assert log.last is seen[-1]
    assert summary["last_norm_before"] == seen[-1].norm_before
    assert summary["last_norm_after"] == seen[-1].norm_after
    assert summary["mean_norm_before"] == pytest.approx(np.mean([s.norm_before for s in seen]),
                                                        rel=1e-14)
    assert summary["mean_norm_after"] == pytest.approx(np.mean([s.norm_after for s in seen]),
                                                       rel=1e-14)
    assert "steps=5" in repr(log)


def test_clip_log_state_dict_round_trips_through_json():
    log = ClipLog()
    for seed, scale in enumerate([0.1, 5.0, 9.0]):
        log.add(clip_grad_norm(make_grads(seed, scale), 2.0))
    restored = ClipLog()
    restored.load_state_dict(json.loads(json.dumps(log.state_dict())))
    assert restored.summary() == log.summary() and restored.last == log.last
    stats = clip_grad_norm(make_grads(7, 4.0), 2.0)
    log.add(stats)
    restored.add(stats)
    assert restored.summary() == log.summary()
    empty = ClipLog()
    empty.load_state_dict(ClipLog().state_dict())
    assert empty.steps == 0 and empty.last is None


@pytest.mark.parametrize("state", [[1, 2], {"steps": 1}], ids=["list", "missing-keys"])
def test_clip_log_load_rejects(state):
    with pytest.raises(ValueError, match="ClipLog: expected a state dict with keys"):
        ClipLog().load_state_dict(state)


def test_clip_log_rejects_other_records():
    with pytest.raises(TypeError, match="ClipLog: expected ClipStats .* got dict"):
        ClipLog().add({"norm_before": 1.0})
