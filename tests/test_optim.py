"""Optimizers and schedules against torch.optim in float64: same weights, same gradients, the same
trajectory to 1e-12; checkpoints of optimizer state that resume bitwise."""

import json
import math

import numpy as np
import pytest
import torch

from bptt.optim import (OPTIMIZERS, SGD, Adagrad, Adam, AdamW, Optimizer, RMSprop, Schedule,
                        build_optimizer)

SHAPES = {"weight_ih_l0": (8, 3), "weight_hh_l0": (8, 2), "bias_ih_l0": (8,), "scale": ()}
STEPS = 10

TORCH = {"sgd": torch.optim.SGD, "adam": torch.optim.Adam, "adamw": torch.optim.AdamW,
         "rmsprop": torch.optim.RMSprop, "adagrad": torch.optim.Adagrad}

CONFIGS = [
    ("sgd", {"lr": 0.1}),
    ("sgd", {"lr": 0.05, "momentum": 0.9}),
    ("sgd", {"lr": 0.05, "momentum": 0.9, "dampening": 0.3, "weight_decay": 0.01}),
    ("sgd", {"lr": 0.05, "momentum": 0.8, "nesterov": True, "weight_decay": 0.1}),
    ("adam", {}),
    ("adam", {"lr": 0.01, "betas": (0.5, 0.9), "eps": 1e-6, "weight_decay": 0.1}),
    ("adam", {"lr": 0.01, "betas": (0.0, 0.99)}),            # lerp's other branch (weight 1)
    ("adamw", {}),
    ("adamw", {"lr": 0.01, "betas": (0.8, 0.95), "weight_decay": 0.3}),
    ("rmsprop", {}),
    ("rmsprop", {"lr": 0.01, "alpha": 0.9, "momentum": 0.9}),
    ("rmsprop", {"lr": 0.01, "centered": True, "weight_decay": 0.1}),
    ("rmsprop", {"lr": 0.01, "alpha": 0.3, "centered": True, "momentum": 0.5, "eps": 1e-4}),
    ("adagrad", {}),
    ("adagrad", {"lr": 0.1, "lr_decay": 0.05, "initial_accumulator_value": 0.3,
                 "weight_decay": 0.1, "eps": 1e-6}),
]
IDS = [f"{name}-{'-'.join(map(str, kw)) or 'defaults'}" for name, kw in CONFIGS]


def make_params(seed=0, dtype=np.float64):
    rng = np.random.default_rng(seed)
    return {k: np.asarray(rng.standard_normal(s), dtype) for k, s in SHAPES.items()}


def make_grads(seed=1, steps=STEPS, dtype=np.float64):
    rng = np.random.default_rng(seed)
    return [{k: np.asarray(rng.standard_normal(s) * rng.uniform(0.1, 3.0), dtype)
             for k, s in SHAPES.items()} for _ in range(steps)]


def torch_run(name, kwargs, params, grads, lrs=None):
    """Run torch.optim over copies of params; return the final params and torch's state."""
    tensors = {k: torch.tensor(v, requires_grad=True) for k, v in params.items()}
    opt = TORCH[name](list(tensors.values()), **kwargs, foreach=False)
    for i, g in enumerate(grads):
        if lrs is not None:
            opt.param_groups[0]["lr"] = lrs[i]
        for k, t in tensors.items():
            t.grad = torch.tensor(g[k])
        opt.step()
    final = {k: t.detach().numpy() for k, t in tensors.items()}
    state = {k: {slot: v.numpy() for slot, v in opt.state[t].items() if slot != "step"}
             for k, t in tensors.items()}
    return final, state


# ---------------------------------------------------------------------- against torch.optim
@pytest.mark.parametrize("name, kwargs", CONFIGS, ids=IDS)
def test_trajectory_matches_torch(name, kwargs):
    params, grads = make_params(), make_grads()
    ref, ref_state = torch_run(name, kwargs, params, grads)
    opt = build_optimizer(name, params, **kwargs)
    for g in grads:
        opt.step(g)
    assert opt.step_count == STEPS
    for k in SHAPES:
        np.testing.assert_allclose(params[k], ref[k], rtol=1e-12, atol=0, err_msg=k)
        assert opt.state[k].keys() == ref_state[k].keys()  # torch's slot names, no extra slots
        for slot, value in ref_state[k].items():
            np.testing.assert_allclose(opt.state[k][slot], value, rtol=1e-12, atol=1e-300,
                                       err_msg=f"{slot}/{k}")


@pytest.mark.parametrize("name, kwargs", [CONFIGS[2], CONFIGS[5], CONFIGS[12], CONFIGS[14]],
                         ids=[IDS[2], IDS[5], IDS[12], IDS[14]])
def test_lr_set_between_steps_matches_torch(name, kwargs):
    params, grads = make_params(), make_grads()
    schedule = Schedule("cosine", 0.05, warmup=3, total_steps=STEPS)
    lrs = [schedule(s) for s in range(STEPS)]
    ref, _ = torch_run(name, kwargs, params, grads, lrs)
    opt = build_optimizer(name, params, **kwargs)
    for g in grads:
        opt.lr = schedule(opt.step_count)
        opt.step(g)
    for k in SHAPES:
        np.testing.assert_allclose(params[k], ref[k], rtol=1e-12, atol=0, err_msg=k)


@pytest.mark.parametrize("name", list(OPTIMIZERS))
def test_float32_updates_the_live_arrays_and_agrees_with_torch(name):
    params = make_params(dtype=np.float32)
    originals = dict(params)
    grads = make_grads(dtype=np.float32)
    ref, _ = torch_run(name, {}, params, grads)
    opt = build_optimizer(name, params)
    for g in grads:
        opt.step(g)
    for k in SHAPES:
        assert params[k] is originals[k] and params[k].dtype == np.float32
        np.testing.assert_allclose(params[k], ref[k], rtol=1e-5, atol=1e-6, err_msg=k)


@pytest.mark.parametrize("name, kwargs", CONFIGS, ids=IDS)
def test_step_leaves_the_grads_alone(name, kwargs):
    params, grads = make_params(), make_grads(steps=3)
    copies = [{k: v.copy() for k, v in g.items()} for g in grads]
    opt = build_optimizer(name, params, **kwargs)
    for g in grads:
        opt.step(g)
    for g, c in zip(grads, copies):
        for k in SHAPES:
            np.testing.assert_array_equal(g[k], c[k])


def test_grads_of_another_dtype_are_cast_to_the_params():
    params = make_params()
    grads = make_grads(steps=1)
    Adam(params, lr=0.1).step({k: v.astype(np.float32).astype(np.float64) for k, v in
                               grads[0].items()})
    as32 = make_params()
    Adam(as32, lr=0.1).step({k: v.astype(np.float32) for k, v in grads[0].items()})
    for k in SHAPES:
        assert as32[k].dtype == np.float64
        np.testing.assert_array_equal(as32[k], params[k])


# ---------------------------------------------------------------------- checkpoints
def split_and_save(state_dict, path):
    arrays = {k: v for k, v in state_dict.items() if isinstance(v, np.ndarray)}
    scalars = {k: v for k, v in state_dict.items() if k not in arrays}
    np.savez(path / "optim.npz", **arrays)
    (path / "optim.json").write_text(json.dumps(scalars))
    return scalars


def load_saved(path):
    with np.load(path / "optim.npz") as f:
        d = dict(f)
    d.update(json.loads((path / "optim.json").read_text()))
    return d


@pytest.mark.parametrize("name, kwargs", CONFIGS, ids=IDS)
def test_state_dict_round_trip_resumes_bitwise(tmp_path, name, kwargs):
    grads = make_grads()
    straight = make_params()
    opt = build_optimizer(name, straight, **kwargs)
    for g in grads:
        opt.step(g)

    half = make_params()
    first = build_optimizer(name, half, **kwargs)
    for g in grads[:STEPS // 2]:
        first.step(g)
    scalars = split_and_save(first.state_dict(), tmp_path)
    assert all(type(v) in (int, float, bool, str) for v in scalars.values()), scalars

    resumed = {k: v.copy() for k, v in half.items()}   # the model's weights, from its own checkpoint
    second = build_optimizer(name, resumed)            # defaults: the state dict carries the options
    second.load_state_dict(load_saved(tmp_path))
    for g in grads[STEPS // 2:]:
        second.step(g)
    for k in SHAPES:
        np.testing.assert_array_equal(resumed[k], straight[k], err_msg=k)
    a, b = opt.state_dict(), second.state_dict()
    assert a.keys() == b.keys()
    for k in a:
        np.testing.assert_array_equal(a[k], b[k], err_msg=k)


def test_state_dict_loads_from_a_single_npz(tmp_path):
    params = make_params()
    opt = RMSprop(params, lr=0.01, centered=True, momentum=0.5)
    for g in make_grads(steps=3):
        opt.step(g)
    np.savez(tmp_path / "all.npz", **opt.state_dict())   # scalars come back as 0-d arrays
    other = RMSprop({k: v.copy() for k, v in params.items()})
    with np.load(tmp_path / "all.npz") as f:
        other.load_state_dict(dict(f))
    assert (other.lr, other.centered, other.momentum, other.step_count) == (0.01, True, 0.5, 3)
    for k, v in opt.state_dict().items():
        np.testing.assert_array_equal(other.state_dict()[k], v)


def test_state_dict_is_a_snapshot():
    params = make_params()
    opt = Adam(params)
    grads = make_grads(steps=2)
    opt.step(grads[0])
    sd = opt.state_dict()
    saved = {k: np.copy(v) for k, v in sd.items() if isinstance(v, np.ndarray)}
    opt.step(grads[1])
    assert sd["step_count"] == 1
    for k, v in saved.items():
        np.testing.assert_array_equal(sd[k], v)


def state_of_adam_after_one_step():
    params = make_params()
    opt = Adam(params, lr=0.1)
    opt.step(make_grads(steps=1)[0])
    return opt.state_dict()


def edit(d, drop=(), **changes):
    d = {k: v for k, v in d.items() if k not in drop}
    d.update(changes)
    return d


@pytest.mark.parametrize("change, exc, match", [
    (lambda d: list(d.items()), TypeError, "expected a state dict"),
    (lambda d: edit(d, drop=["beta2"]), ValueError, r"lacks \['beta2'\]"),
    (lambda d: edit(d, optimizer="AdamW"), ValueError, "saved by 'AdamW'"),
    (lambda d: edit(d, step_count=-1), ValueError, "step_count an integer >= 0"),
    (lambda d: edit(d, step_count=1.5), ValueError, "step_count an integer >= 0"),
    (lambda d: edit(d, beta1=1.0), ValueError, r"beta1 in \[0, 1\)"),
    (lambda d: edit(d, drop=["exp_avg/scale"]), ValueError, r"missing keys \['exp_avg/scale'\]"),
    (lambda d: edit(d, extra=np.zeros(2)), ValueError, r"unexpected keys \['extra'\]"),
    (lambda d: edit(d, **{"exp_avg/scale": np.array(1)}), TypeError, "expected floats"),
    (lambda d: edit(d, **{"exp_avg/bias_ih_l0": np.zeros(7)}), ValueError,
     r"shape \(8,\), got \(7,\)"),
], ids=["not-a-mapping", "missing-scalar", "other-optimizer", "negative-step", "float-step",
        "bad-hyper", "missing-array", "unexpected-key", "int-array", "shape"])
def test_load_state_dict_rejects_and_changes_nothing(change, exc, match):
    params = make_params(seed=5)
    opt = Adam(params, lr=0.5)
    before = opt.state_dict()
    with pytest.raises(exc, match=match):
        opt.load_state_dict(change(state_of_adam_after_one_step()))
    after = opt.state_dict()
    assert after.keys() == before.keys()
    for k in before:
        np.testing.assert_array_equal(after[k], before[k])


# ---------------------------------------------------------------------- errors at the door
def test_step_rejects_bad_grads_and_moves_nothing():
    params = make_params()
    before = {k: v.copy() for k, v in params.items()}
    opt = SGD(params, lr=0.1, momentum=0.9)
    good = make_grads(steps=1)[0]
    cases = [
        ([good["scale"]], TypeError, "grads a dict"),
        (edit(good, drop=["scale"]), ValueError, r"missing keys \['scale'\]"),
        (edit(good, extra=np.zeros(1)), ValueError, r"unexpected keys \['extra'\]"),
        (edit(good, scale=np.array("x")), TypeError, r"grads\['scale'\]: expected real numbers"),
        (edit(good, bias_ih_l0=np.zeros(9)), ValueError,
         r"grads\['bias_ih_l0'\]: expected the parameter's shape \(8,\), got \(9,\)"),
    ]
    for grads, exc, match in cases:
        with pytest.raises(exc, match=match):
            opt.step(grads)
    assert opt.step_count == 0
    for k in SHAPES:
        np.testing.assert_array_equal(params[k], before[k])


@pytest.mark.parametrize("params, exc, match", [
    ([np.zeros(2)], TypeError, "params a dict"),
    ({}, ValueError, "at least one parameter"),
    ({0: np.zeros(2)}, TypeError, "names as strings"),
    ({"w": [0.0, 1.0]}, TypeError, r"params\['w'\]: expected a NumPy array"),
    ({"w": np.zeros(2, np.int64)}, TypeError, "float32 or float64, got int64"),
    ({"w": np.broadcast_to(np.zeros(1), (3,))}, ValueError, "read-only"),
    (dict.fromkeys(["emb", "out"], np.zeros(3)), ValueError,
     r"params\['emb'\] and params\['out'\] are the same array"),
], ids=["list", "empty", "int-key", "list-value", "int-dtype", "read-only", "tied"])
def test_constructor_rejects_params(params, exc, match):
    with pytest.raises(exc, match=match):
        Adam(params)


@pytest.mark.parametrize("cls, kwargs, exc, match", [
    (SGD, {"lr": -0.1}, ValueError, r"lr in \[0, inf\), got -0.1"),
    (SGD, {"lr": math.nan}, ValueError, "lr in"),
    (SGD, {"lr": "0.1"}, TypeError, "lr a real number"),
    (SGD, {"lr": True}, TypeError, "lr a real number"),
    (SGD, {"momentum": -0.9}, ValueError, "momentum in"),
    (SGD, {"dampening": 1.5}, ValueError, r"dampening in \[0, 1\]"),
    (SGD, {"weight_decay": -1e-4}, ValueError, "weight_decay in"),
    (SGD, {"nesterov": True}, ValueError, "nesterov needs momentum > 0"),
    (SGD, {"nesterov": True, "momentum": 0.9, "dampening": 0.1}, ValueError, "dampening 0"),
    (SGD, {"nesterov": 1}, TypeError, "nesterov a bool"),
    (Adam, {"betas": 0.9}, TypeError, "betas a pair"),
    (Adam, {"betas": (0.9, 0.99, 0.9)}, TypeError, "betas a pair"),
    (Adam, {"betas": (1.0, 0.999)}, ValueError, r"beta1 in \[0, 1\)"),
    (AdamW, {"betas": (0.9, -0.1)}, ValueError, "beta2 in"),
    (AdamW, {"eps": -1e-8}, ValueError, "eps in"),
    (AdamW, {"weight_decay": -0.01}, ValueError, "weight_decay in"),
    (RMSprop, {"alpha": 1.5}, ValueError, r"alpha in \[0, 1\]"),
    (RMSprop, {"centered": "yes"}, TypeError, "centered a bool"),
    (RMSprop, {"momentum": -0.5}, ValueError, "momentum in"),
    (Adagrad, {"lr_decay": -0.1}, ValueError, "lr_decay in"),
    (Adagrad, {"initial_accumulator_value": -1.0}, ValueError, "initial_accumulator_value in"),
    (Adagrad, {"eps": math.inf}, ValueError, "eps in"),
])
def test_constructor_rejects_hyperparameters(cls, kwargs, exc, match):
    with pytest.raises(exc, match=cls.__name__ + ": .*" + match):
        cls(make_params(), **kwargs)


def test_the_base_class_has_no_update_rule():
    opt = Optimizer(make_params(), {"lr": 0.1})
    with pytest.raises(NotImplementedError):
        opt.step(make_grads(steps=1)[0])


def test_lr_is_settable_and_checked():
    opt = SGD(make_params(), lr=0.1)
    opt.lr = 0.25
    assert opt.lr == 0.25 and opt.state_dict()["lr"] == 0.25
    with pytest.raises(ValueError, match="lr in"):
        opt.lr = -1.0
    with pytest.raises(TypeError, match="lr a real number"):
        opt.lr = None
    assert opt.lr == 0.25


def test_build_optimizer():
    params = make_params()
    for name, cls in OPTIMIZERS.items():
        assert type(build_optimizer(name, params)) is cls
    opt = build_optimizer("AdamW", params, lr=0.5, betas=(0.8, 0.9))
    assert type(opt) is AdamW and opt.lr == 0.5 and opt.betas == (0.8, 0.9)
    assert opt.weight_decay == 1e-2   # AdamW's default, as torch's
    with pytest.raises(ValueError, match="expected one of sgd, adam, adamw, rmsprop, adagrad, "
                                         "got 'lamb'"):
        build_optimizer("lamb", params)
    with pytest.raises(ValueError, match="got None"):
        build_optimizer(None, params)


# ---------------------------------------------------------------------- schedules
def torch_lrs(base_lr, make_schedulers, steps):
    """The lr torch's schedulers give at steps 0..steps-1 (after that many scheduler steps)."""
    opt = torch.optim.SGD([torch.zeros(1, requires_grad=True)], lr=base_lr)
    scheduler = make_schedulers(opt)
    lrs = []
    for _ in range(steps):
        lrs.append(opt.param_groups[0]["lr"])
        opt.step()
        scheduler.step()
    return np.array(lrs)


def linear_warmup(opt, W):
    return torch.optim.lr_scheduler.LinearLR(opt, start_factor=1 / (W + 1), end_factor=1.0,
                                             total_iters=W)


def chained(*parts):
    return lambda opt: torch.optim.lr_scheduler.ChainedScheduler([p(opt) for p in parts])


@pytest.mark.parametrize("kind, options, warmup, twin", [
    ("constant", {}, 5, lambda opt: linear_warmup(opt, 5)),
    ("step", {"step_size": 7, "gamma": 0.5}, 0,
     lambda opt: torch.optim.lr_scheduler.StepLR(opt, step_size=7, gamma=0.5)),
    ("step", {"step_size": 4}, 6,
     chained(lambda opt: linear_warmup(opt, 6),
             lambda opt: torch.optim.lr_scheduler.StepLR(opt, step_size=4))),
    ("cosine", {"total_steps": 30, "min_lr": 1e-3}, 0,
     lambda opt: torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=30, eta_min=1e-3)),
    ("cosine", {"total_steps": 30}, 8,
     chained(lambda opt: linear_warmup(opt, 8),
             lambda opt: torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=30))),
], ids=["warmup", "step", "step-warmup", "cosine", "cosine-warmup"])
def test_schedule_matches_torch(kind, options, warmup, twin):
    base_lr, steps = 0.1, 31   # the cosine up to and including total_steps
    schedule = Schedule(kind, base_lr, warmup=warmup, **options)
    ours = np.array([schedule(s) for s in range(steps)])
    np.testing.assert_allclose(ours, torch_lrs(base_lr, twin, steps), rtol=1e-12, atol=1e-18)


@pytest.mark.parametrize("kind, options, formula", [
    ("constant", {}, lambda s: 0.3),
    ("step", {"step_size": 3, "gamma": 0.7}, lambda s: 0.3 * 0.7 ** (s // 3)),
    ("cosine", {"total_steps": 12, "min_lr": 0.01},
     lambda s: 0.01 + 0.29 * (1 + np.cos(np.pi * min(s, 12) / 12)) / 2),
])
@pytest.mark.parametrize("warmup", [0, 1, 4])
def test_schedule_formulas(kind, options, formula, warmup):
    schedule = Schedule(kind, 0.3, warmup=warmup, **options)
    for s in range(20):   # past the cosine's end, where it holds at min_lr
        factor = (s + 1) / (warmup + 1) if s < warmup else 1.0
        assert schedule(s) == pytest.approx(formula(s) * factor, rel=1e-12, abs=0), s
    if warmup:
        assert schedule(warmup - 1) < schedule(warmup) * (1 + 1e-12)
    if kind == "cosine":
        assert schedule(12) == schedule(100) == pytest.approx(0.01, rel=1e-12)


@pytest.mark.parametrize("args, kwargs, exc, match", [
    (("linear", 0.1), {}, ValueError, "kind one of constant, step, cosine, got 'linear'"),
    (("step", 0.1), {"step_size": 2, "total_steps": 3}, TypeError, r"unexpected \['total_steps'\]"),
    (("constant", 0.1), {"gamma": 0.5}, TypeError, "unexpected"),
    (("step", 0.1), {}, TypeError, r"'step' needs \['step_size'\]"),
    (("cosine", 0.1), {}, TypeError, r"needs \['total_steps'\]"),
    (("constant", -0.1), {}, ValueError, "base_lr in"),
    (("constant", 0.1), {"warmup": -1}, ValueError, "warmup >= 0"),
    (("constant", 0.1), {"warmup": 2.0}, TypeError, "warmup an integer"),
    (("step", 0.1), {"step_size": 0}, ValueError, "step_size >= 1"),
    (("step", 0.1), {"step_size": 2, "gamma": -0.5}, ValueError, "gamma in"),
    (("cosine", 0.1), {"total_steps": 0}, ValueError, "total_steps >= 1"),
    (("cosine", 0.1), {"total_steps": 5, "min_lr": 0.2}, ValueError, r"min_lr in \[0, 0.1\]"),
])
def test_schedule_rejects(args, kwargs, exc, match):
    with pytest.raises(exc, match="Schedule: .*" + match):
        Schedule(*args, **kwargs)


def test_schedule_rejects_bad_steps():
    schedule = Schedule("constant", 0.1)
    assert schedule(np.int64(3)) == 0.1
    with pytest.raises(ValueError, match="step >= 0, got -1"):
        schedule(-1)
    with pytest.raises(TypeError, match="step an integer, got 1.0"):
        schedule(1.0)


# ---------------------------------------------------------------------- the fused Adam
ADAMS = [(n, kw) for n, kw in CONFIGS if n in ("adam", "adamw")]


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("name, kwargs", ADAMS, ids=[i for i, c in zip(IDS, CONFIGS)
                                                      if c in ADAMS])
def test_fused_adam_equals_the_numpy_update_bit_for_bit(monkeypatch, name, kwargs, dtype):
    """Where bptt.native is built, Adam's update runs in one C++ pass (optim._fused_adam): its
    params and state equal the NumPy update's bit for bit, over ten steps, weight decay (L2 and
    decoupled) and both branches of lerp included; a non-contiguous parameter falls back."""
    from bptt import optim
    fused = optim._fused_adam()
    if fused is None:
        pytest.skip("bptt.native is not built here")
    calls = []

    def counted(*args):
        done = fused(*args)
        calls.append(done)
        return done

    monkeypatch.setattr(optim, "_FUSED_ADAM", [counted])
    rng = np.random.default_rng(7)
    shapes = {"w": (300, 7), "b": (13,), "s": ()}
    start = {k: np.asarray(rng.standard_normal(s), dtype) for k, s in shapes.items()}
    wide = np.asarray(rng.standard_normal((6, 4)), dtype)
    grads = [{k: np.asarray(rng.standard_normal(s) * rng.uniform(0.1, 3.0), dtype)
              for k, s in shapes.items()} for _ in range(STEPS)]
    results = []
    for on in (True, False):
        monkeypatch.setattr(optim, "FUSED", on)
        params = {k: v.copy() for k, v in start.items()}
        params["strided"] = wide.copy()[:, ::2]
        opt = build_optimizer(name, params, **kwargs)
        for g in grads:
            opt.step(dict(g, strided=g["w"][:6, :2]))
        results.append((params, opt.state_dict()))
    assert calls == [True, True, True, False] * STEPS  # the strided view: NumPy's update
    (p1, s1), (p2, s2) = results
    for k in p1:
        assert p1[k].dtype == dtype and p1[k].tobytes() == p2[k].tobytes(), k
    flat1, flat2 = (json.dumps(s, default=lambda a: np.asarray(a).tobytes().hex(),
                               sort_keys=True) for s in (s1, s2))
    assert flat1 == flat2
