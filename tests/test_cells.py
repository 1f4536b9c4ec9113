"""The cell modules: forward against their own one-step reference, masks, the Cho et al. GRU's
gradients (no torch twin: central differences and a hand-written torch version), per-step
clipping."""

import numpy as np
import pytest
import torch
from conftest import GATES, VARIANTS, rel_err, seed_of

import bptt
from bptt.cells import gru, lstm, rnn


def draw_weights(rng, module, D, H, bias=True, scale=1.0):
    G = GATES[module]
    s = scale / np.sqrt(H)
    w = {"weight_ih": s * rng.standard_normal((G * H, D)),
         "weight_hh": s * rng.standard_normal((G * H, H)),
         "bias_ih": s * rng.standard_normal(G * H) if bias else None,
         "bias_hh": s * rng.standard_normal(G * H) if bias else None}
    return w


def draw_state(rng, module, B, H):
    if module is lstm:
        return rng.standard_normal((B, H)), rng.standard_normal((B, H))
    return rng.standard_normal((B, H))


def as_list(state):
    return list(state) if isinstance(state, tuple) else [state]


def draw_mask(rng, T, B):
    """(T, B, 1) of 0/1: column 0 all ones, column 1 a prefix (ends early), the rest with holes."""
    m = (rng.random((T, B)) < 0.6).astype(np.float64)
    m[:, 0] = 1.0
    if B > 1:
        m[:, 1] = 0.0
        m[: max(1, T // 2), 1] = 1.0
    m[0, 2:] = 0.0  # a hole at the first step
    return m[:, :, None]


def loss_of(y, state_n, dy, dstate_n):
    return float(np.sum(y * dy) + sum(np.sum(a * b) for a, b in
                                      zip(as_list(state_n), as_list(dstate_n))))


# ---------------------------------------------------------------------------- step vs forward
def step_by_hand(module, opts, x, state0, w, mask=None):
    state, ys = state0, []
    for t in range(x.shape[0]):
        new = module.step(x[t], state, w, **opts)
        if mask is not None:
            m = mask[t]
            if module is lstm:
                new = (m * new[0] + (1 - m) * state[0], m * new[1] + (1 - m) * state[1])
            else:
                new = m * new + (1 - m) * state
        state = new
        h = state[0] if module is lstm else state
        ys.append(h if mask is None else mask[t] * h)
    return np.stack(ys), state


@pytest.mark.parametrize("masked", [False, True], ids=["nomask", "mask"])
@pytest.mark.parametrize("bias", [True, False], ids=["bias", "nobias"])
@pytest.mark.parametrize("variant", list(VARIANTS))
def test_forward_equals_stepping(variant, bias, masked):
    module, opts = VARIANTS[variant]
    rng = np.random.default_rng(seed_of("step", variant, bias, masked))
    T, B, D, H = 7, 4, 3, 5
    w = draw_weights(rng, module, D, H, bias, scale=1.5)
    x = rng.standard_normal((T, B, D))
    s0 = draw_state(rng, module, B, H)
    mask = draw_mask(rng, T, B) if masked else None
    y, s_n, _ = module.forward(x, s0, w, mask, **opts)
    y_ref, s_ref = step_by_hand(module, opts, x, s0, w, mask)
    assert y.shape == (T, B, H)
    assert rel_err(y, y_ref) < 1e-12
    for a, b in zip(as_list(s_n), as_list(s_ref), strict=True):
        assert a.shape == (B, H)
        assert rel_err(a, b) < 1e-12


@pytest.mark.parametrize("variant", list(VARIANTS))
def test_masked_steps_freeze_the_state(variant):
    """Where mask = 0: y is exactly 0 and the state does not move, so the masked run equals, per
    sequence, an unmasked run over only its valid steps; a sequence ending early keeps as h_n
    exactly the y of its last valid step."""
    module, opts = VARIANTS[variant]
    rng = np.random.default_rng(seed_of("freeze", variant))
    T, B, D, H = 8, 4, 2, 3
    w = draw_weights(rng, module, D, H, scale=1.5)
    x = rng.standard_normal((T, B, D))
    s0 = draw_state(rng, module, B, H)
    mask = draw_mask(rng, T, B)
    y, s_n, _ = module.forward(x, s0, w, mask, **opts)
    valid = mask[:, :, 0] == 1
    assert np.all(y[~valid] == 0)
    for b in range(B):
        steps = np.flatnonzero(valid[:, b])
        s0_b = tuple(s[b:b + 1] for s in as_list(s0))
        s0_b = s0_b if module is lstm else s0_b[0]
        y_b, s_b, _ = module.forward(x[steps, b:b + 1], s0_b, w, None, **opts)
        assert rel_err(y[steps, b], y_b[:, 0]) < 1e-12
        for a, c in zip(as_list(s_n), as_list(s_b), strict=True):
            assert rel_err(a[b], c[0]) < 1e-12
    # column 1 ends early: its final h is bit-for-bit its last valid output
    last = np.flatnonzero(valid[:, 1])[-1]
    assert last < T - 1
    np.testing.assert_array_equal(as_list(s_n)[0][1], y[last, 1])


# ---------------------------------------------------------------------------- torch references
def torch_step(module, opts, x, state, w):
    """One step in torch, from the equations (as ``module.step``)."""
    a_x = x @ w["weight_ih"].T + (w["bias_ih"] if w["bias_ih"] is not None else 0.0)
    b_hh = w["bias_hh"] if w["bias_hh"] is not None else 0.0
    if module is rnn:
        a = a_x + state @ w["weight_hh"].T + b_hh
        return torch.tanh(a) if opts["nonlinearity"] == "tanh" else torch.relu(a)
    if module is lstm:
        h, c = state
        i, f, g, o = (a_x + h @ w["weight_hh"].T + b_hh).chunk(4, dim=1)
        c = torch.sigmoid(f) * c + torch.sigmoid(i) * torch.tanh(g)
        return torch.sigmoid(o) * torch.tanh(c), c
    h = state
    H = h.shape[1]
    W_hh = w["weight_hh"]
    b = b_hh if w["bias_hh"] is not None else torch.zeros(3 * H, dtype=h.dtype)
    r = torch.sigmoid(a_x[:, :H] + h @ W_hh[:H].T + b[:H])
    z = torch.sigmoid(a_x[:, H:2 * H] + h @ W_hh[H:2 * H].T + b[H:2 * H])
    if opts["reset_after"]:
        n = torch.tanh(a_x[:, 2 * H:] + r * (h @ W_hh[2 * H:].T + b[2 * H:]))
    else:  # Cho et al. 2014: the reset gate acts on h before the product
        n = torch.tanh(a_x[:, 2 * H:] + (r * h) @ W_hh[2 * H:].T + b[2 * H:])
    return (1 - z) * n + z * h


def torch_reference(module, opts, x, s0, w, mask, dy, ds_n, clip=None):
    """Autograd through ``torch_step`` over T steps; with ``clip``, a hook clamps the gradient
    reaching each h_t (from y_t and from step t+1 together). Returns dx, dstate0 (list), grads."""
    lstm_ = module is lstm
    xt = torch.tensor(x, requires_grad=True)
    s0t = [torch.tensor(s, requires_grad=True) for s in as_list(s0)]
    wt = {k: None if v is None else torch.tensor(v, requires_grad=True) for k, v in w.items()}
    state = tuple(s0t) if lstm_ else s0t[0]
    loss = 0.0
    for t in range(x.shape[0]):
        new = torch_step(module, opts, xt[t], state, wt)
        if mask is not None:
            m = torch.tensor(mask[t])
            new = tuple(m * a + (1 - m) * b for a, b in zip(new, state)) if lstm_ else \
                m * new + (1 - m) * state
        state = new
        h = state[0] if lstm_ else state
        if clip is not None:
            h.register_hook(lambda g: g.clamp(-clip, clip))
        y_t = h if mask is None else torch.tensor(mask[t]) * h
        loss = loss + (y_t * torch.tensor(dy[t])).sum()
    for a, b in zip(as_list(state), as_list(ds_n)):
        loss = loss + (a * torch.tensor(b)).sum()
    loss.backward()
    grads = {k: v.grad.numpy() for k, v in wt.items() if v is not None}
    return xt.grad.numpy(), [s.grad.numpy() for s in s0t], grads


def assert_grads_match(got, want, tol):
    dx, ds0, grads = got
    dx_r, ds0_r, grads_r = want
    assert rel_err(dx, dx_r) < tol
    for a, b in zip(as_list(ds0), ds0_r, strict=True):
        assert rel_err(a, b) < tol
    assert set(grads) == set(grads_r)
    for k in grads:
        assert rel_err(grads[k], grads_r[k]) < tol, (k, rel_err(grads[k], grads_r[k]))


# ---------------------------------------------------------------------------- GRU reset_after=False
def central_diff(loss, arrays, h=2e-3):
    """d loss / d every entry of every array in ``arrays`` (perturbed in place, then restored),
    by the 6-point central stencil: truncation O(h^6) (seen to fall 64-fold per halving of h, to
    about 1e-13 relative at h = 2e-3) plus roundoff about eps * |loss| / h (also about 1e-13)."""
    coeffs = ((1, 45.0), (2, -9.0), (3, 1.0))
    out = []
    for a in arrays:
        g = np.zeros(a.shape)
        for idx in np.ndindex(a.shape):
            x0 = a[idx]
            acc = 0.0
            for k, c in coeffs:
                a[idx] = x0 + k * h
                fp = loss()
                a[idx] = x0 - k * h
                fm = loss()
                acc += c * (fp - fm)
            a[idx] = x0
            g[idx] = acc / (60.0 * h)
        out.append(g)
    return out


@pytest.mark.parametrize("masked", [False, True], ids=["nomask", "mask"])
def test_gru_reset_before_central_differences(masked):
    rng = np.random.default_rng(seed_of("fd", masked))
    T, B, D, H = 4, 2, 3, 3
    opts = {"reset_after": False}
    w = draw_weights(rng, gru, D, H, scale=1.5)
    x = rng.standard_normal((T, B, D))
    h0 = rng.standard_normal((B, H))
    mask = draw_mask(rng, T, B) if masked else None
    dy = rng.standard_normal((T, B, H))
    dh_n = rng.standard_normal((B, H))
    y, h_n, tape = gru.forward(x, h0, w, mask, **opts)
    dx, dh0, grads = gru.backward(dy, dh_n, tape)

    def loss():
        y, h_n, _ = gru.forward(x, h0, w, mask, **opts)
        return loss_of(y, h_n, dy, dh_n)

    names = ["weight_ih", "weight_hh", "bias_ih", "bias_hh"]
    num = central_diff(loss, [x, h0] + [w[k] for k in names])
    assert rel_err(dx, num[0]) < 1e-9
    assert rel_err(dh0, num[1]) < 1e-9
    for k, g in zip(names, num[2:]):
        assert rel_err(grads[k], g) < 1e-9, (k, rel_err(grads[k], g))
    # the variants really differ: the same weights under reset_after=True give other gradients
    _, _, tape_after = gru.forward(x, h0, w, mask, reset_after=True)
    assert rel_err(gru.backward(dy, dh_n, tape_after)[2]["weight_hh"], grads["weight_hh"]) > 1e-3


def test_gru_reset_before_layer_central_differences():
    """Through the layer: 2 layers, bidirectional, unsorted lengths with a length-1 sequence."""
    rng = np.random.default_rng(seed_of("fd-layer"))
    T, B, D, H = 4, 3, 3, 3
    layer = bptt.GRU(D, H, 2, bidirectional=True, reset_after=False, dtype=np.float64, seed=9)
    for p in layer.params.values():  # livelier gates than the default init
        p *= 2.0
    x = rng.standard_normal((T, B, D))
    h0 = rng.standard_normal((4, B, H))
    lengths = np.array([1, T, 2])
    dy = rng.standard_normal((T, B, 2 * H))
    dh_n = rng.standard_normal((4, B, H))
    y, h_n, tape = layer.forward(x, h0, lengths)
    dx, dh0, grads = layer.backward(dy, tape, dh_n)

    def loss():
        y, h_n, _ = layer.forward(x, h0, lengths)
        return loss_of(y, h_n, dy, dh_n)

    names = list(layer.params)
    num = central_diff(loss, [x, h0] + [layer.params[k] for k in names])
    assert rel_err(dx, num[0]) < 1e-9
    assert rel_err(dh0, num[1]) < 1e-9
    for k, g in zip(names, num[2:]):
        assert rel_err(grads[k], g) < 1e-9, (k, rel_err(grads[k], g))
    assert np.all(dx[1:, 0] == 0) and np.all(dx[2:, 2] == 0)  # padded steps


@pytest.mark.parametrize("masked", [False, True], ids=["nomask", "mask"])
@pytest.mark.parametrize("bias", [True, False], ids=["bias", "nobias"])
def test_gru_reset_before_matches_hand_written_torch(bias, masked):
    rng = np.random.default_rng(seed_of("torch-gru-before", bias, masked))
    T, B, D, H = 6, 3, 4, 5
    opts = {"reset_after": False}
    w = draw_weights(rng, gru, D, H, bias, scale=1.5)
    x = rng.standard_normal((T, B, D))
    h0 = rng.standard_normal((B, H))
    mask = draw_mask(rng, T, B) if masked else None
    dy = rng.standard_normal((T, B, H))
    dh_n = rng.standard_normal((B, H))
    y, h_n, tape = gru.forward(x, h0, w, mask, **opts)
    ours = gru.backward(dy, dh_n, tape)
    assert_grads_match(ours, torch_reference(gru, opts, x, h0, w, mask, dy, dh_n), 1e-9)


# ---------------------------------------------------------------------------- per-step clipping
def clip_problem(variant, T=6, scale_dy=10.0, masked=True):
    module, opts = VARIANTS[variant]
    rng = np.random.default_rng(seed_of("clip", variant, T))
    B, D, H = 3, 3, 4
    w = draw_weights(rng, module, D, H, scale=1.5)
    x = rng.standard_normal((T, B, D))
    s0 = draw_state(rng, module, B, H)
    mask = draw_mask(rng, T, B) if masked else None
    dy = scale_dy * rng.standard_normal((T, B, H))
    ds_n = draw_state(rng, module, B, H)
    ds_n = tuple(scale_dy * s for s in ds_n) if module is lstm else scale_dy * ds_n
    return module, opts, w, x, s0, mask, dy, ds_n


def flat(result):
    dx, ds0, grads = result
    return [dx] + as_list(ds0) + [grads[k] for k in sorted(grads)]


@pytest.mark.parametrize("variant", list(VARIANTS))
def test_clip_huge_is_no_clip(variant):
    module, opts, w, x, s0, mask, dy, ds_n = clip_problem(variant)
    _, _, tape = module.forward(x, s0, w, mask, **opts)
    free = module.backward(dy, ds_n, tape)
    huge = module.backward(dy, ds_n, tape, clip=1e300)
    for a, b in zip(flat(huge), flat(free), strict=True):
        np.testing.assert_array_equal(a, b)


@pytest.mark.parametrize("variant", list(VARIANTS))
def test_clip_tiny_clips_every_message(variant):
    """Equal to autograd with every dL/dh_t clamped to [-c, c] by a hook, and not to no clip."""
    c = 0.05
    module, opts, w, x, s0, mask, dy, ds_n = clip_problem(variant)
    _, _, tape = module.forward(x, s0, w, mask, **opts)
    clipped = module.backward(dy, ds_n, tape, clip=c)
    free = module.backward(dy, ds_n, tape)
    assert_grads_match(clipped, torch_reference(module, opts, x, s0, w, mask, dy, ds_n, clip=c),
                       1e-9)
    assert_grads_match(free, torch_reference(module, opts, x, s0, w, mask, dy, ds_n), 1e-9)
    assert rel_err(clipped[0], free[0]) > 0.1


def step_jacobian(module, opts, x_t, s, w):
    """J[b] = d h_1[b] / d h_0[b] (H x H) of one step, by central differences (4-point)."""
    lstm_ = module is lstm
    h = s[0] if lstm_ else s
    B, H = h.shape
    J = np.zeros((B, H, H))
    eps = 1e-4
    for j in range(H):
        cols = []
        for k in (2, 1, -1, -2):
            hp = h.copy()
            hp[:, j] += k * eps
            out = module.step(x_t, (hp, s[1]) if lstm_ else hp, w, **opts)
            cols.append(out[0] if lstm_ else out)
        J[:, :, j] = (-cols[0] + 8 * cols[1] - 8 * cols[2] + cols[3]) / (12 * eps)
    return J


@pytest.mark.parametrize("variant", list(VARIANTS))
def test_clip_bounds_dh0(variant):
    """dh0 = J^T g with g the clipped message at h_1, |g| <= c, so
    |dh0[b, j]| <= c sum_i |J[b, i, j]|
    (J = d h_1 / d h_0 for the first step). For the LSTM this holds only with T = 1 and dc_n = 0,
    since the cell-state gradient is not clipped. The unclipped dh0 breaks the bound."""
    c = 0.01
    T = 1 if variant == "lstm" else 6
    module, opts, w, x, s0, _, dy, ds_n = clip_problem(variant, T=T, scale_dy=100.0,
                                                       masked=False)
    if module is lstm:
        ds_n = (ds_n[0], np.zeros_like(ds_n[1]))
    _, _, tape = module.forward(x, s0, w, None, **opts)
    bound = c * np.abs(step_jacobian(module, opts, x[0], s0, w)).sum(axis=1) + 1e-9  # (B, H)
    dh0 = as_list(module.backward(dy, ds_n, tape, clip=c)[1])[0]
    assert np.all(np.abs(dh0) <= bound)
    dh0_free = as_list(module.backward(dy, ds_n, tape)[1])[0]
    assert np.any(np.abs(dh0_free) > bound)
