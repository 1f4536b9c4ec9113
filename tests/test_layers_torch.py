"""The layers against torch.nn.{RNN, LSTM, GRU} and torch autograd, in float64.

Every output and every gradient must agree to 1e-9 relative (max|ours - torch| / max|torch|).
"""

import numpy as np
import pytest
import torch
from conftest import rel_err, seed_of, torch_module, torch_run, torch_twin

import bptt

TOL = 1e-9

FAMILIES = {
    "rnn_tanh": (bptt.RNN, {"nonlinearity": "tanh"}),
    "rnn_relu": (bptt.RNN, {"nonlinearity": "relu"}),
    "lstm": (bptt.LSTM, {}),
    "gru": (bptt.GRU, {"reset_after": True}),
}


def make_layer(family, D, H, num_layers=1, **kwargs):
    cls, opts = FAMILIES[family]
    kwargs.setdefault("dtype", np.float64)
    return cls(D, H, num_layers, **opts, **kwargs)


def draw_lengths(rng, T, B, kind):
    """None ('full'); 'ragged': unsorted, with a length-1 sequence and one of length T;
    'short': unsorted, with a length-1 sequence and every length below T."""
    if kind == "full":
        return None
    top = T if kind == "ragged" else T - 1
    lengths = rng.integers(1, top + 1, size=B)
    lengths[0] = 1                      # a length-1 sequence, first: so the lengths are unsorted
    lengths[1 + rng.integers(B - 1)] = top
    return lengths


def draw_problem(rng, layer, T, B, with_h0, with_dhn):
    """x, h0, dy and dh_n of the right shapes (pairs for LSTM), standard normal."""
    lstm = isinstance(layer, bptt.LSTM)
    K, H = layer.num_layers * layer.directions, layer.hidden_size
    xs = (B, T, layer.input_size) if layer.batch_first else (T, B, layer.input_size)
    ys = (B, T, layer.directions * H) if layer.batch_first else (T, B, layer.directions * H)

    def state():
        if lstm:
            return rng.standard_normal((K, B, H)), rng.standard_normal((K, B, H))
        return rng.standard_normal((K, B, H))

    x = rng.standard_normal(xs)
    h0 = state() if with_h0 else None
    dy = rng.standard_normal(ys)
    dh_n = state() if with_dhn else None
    return x, h0, dy, dh_n


def check_against_torch(layer, x, h0, lengths, dy, dh_n, tol=TOL):
    y, h_n, tape = layer.forward(x, h0, lengths)
    dx, dh0, grads = layer.backward(dy, tape, dh_n)
    ref = torch_twin(layer, x, h0, lengths, dy, dh_n)
    lstm = isinstance(layer, bptt.LSTM)
    ours = dict(y=y, dx=dx)
    if lstm:
        ours.update(h_n=h_n[0], c_n=h_n[1], dh0=dh0[0], dc0=dh0[1])
    else:
        ours.update(h_n=h_n, dh0=dh0)
    for k, v in ours.items():
        assert v.shape == ref[k].shape, (k, v.shape, ref[k].shape)
        assert rel_err(v, ref[k]) < tol, (k, rel_err(v, ref[k]))
    state = layer.state_dict()
    assert set(grads) == set(state) == set(ref["grads"])
    for k, g in grads.items():
        assert g.shape == state[k].shape, (k, g.shape)
        assert rel_err(g, ref["grads"][k]) < tol, (k, rel_err(g, ref["grads"][k]))
    return ours, grads


# ---------------------------------------------------------------------------- the main grid
@pytest.mark.parametrize("state", ["h0+dh_n", "zero_h0+no_dh_n"])
@pytest.mark.parametrize("bias", [True, False], ids=["bias", "nobias"])
@pytest.mark.parametrize("lengths_kind", ["full", "ragged", "short"])
@pytest.mark.parametrize("bidirectional", [False, True], ids=["uni", "bi"])
@pytest.mark.parametrize("num_layers", [1, 2], ids=["L1", "L2"])
@pytest.mark.parametrize("family", list(FAMILIES))
def test_matches_torch(family, num_layers, bidirectional, lengths_kind, bias, state):
    rng = np.random.default_rng(seed_of(family, num_layers, bidirectional, lengths_kind, bias,
                                        state))
    if lengths_kind == "full":
        T, B = rng.integers(1, 13), rng.integers(1, 6)
    else:  # room for an unsorted set of lengths including 1 (and T, or only below T)
        T, B = rng.integers(3, 13), rng.integers(2, 6)
    D, H = rng.integers(1, 6), rng.integers(1, 6)
    layer = make_layer(family, D, H, num_layers, bias=bias, bidirectional=bidirectional,
                       seed=int(rng.integers(2**31)))
    lengths = draw_lengths(rng, T, B, lengths_kind)
    with_dhn = state == "h0+dh_n"
    x, h0, dy, dh_n = draw_problem(rng, layer, T, B, with_h0=with_dhn, with_dhn=with_dhn)
    ours, _ = check_against_torch(layer, x, h0, lengths, dy, dh_n)
    if lengths is not None:  # padded positions: y zero, nothing flows back into x
        pad = np.arange(T)[:, None] >= lengths[None, :]
        assert np.all(ours["y"][pad] == 0)
        assert np.all(ours["dx"][pad] == 0)


@pytest.mark.parametrize("family", list(FAMILIES))
def test_single_step_single_sequence(family):
    """T = 1, B = 1 (with lengths [1]) on a 2-layer bidirectional stack."""
    rng = np.random.default_rng(seed_of("t1", family))
    layer = make_layer(family, 3, 4, 2, bidirectional=True, seed=1)
    x, h0, dy, dh_n = draw_problem(rng, layer, 1, 1, True, True)
    check_against_torch(layer, x, h0, None, dy, dh_n)
    check_against_torch(layer, x, h0, np.array([1]), dy, dh_n)


# ---------------------------------------------------------------------------- state dicts
@pytest.mark.parametrize("family", ["rnn_tanh", "lstm", "gru"])
def test_torch_state_dict_loads_into_ours(family):
    cls, opts = FAMILIES[family]
    torch.manual_seed(seed_of("sd", family) % 2**31)
    tcls = {bptt.RNN: torch.nn.RNN, bptt.LSTM: torch.nn.LSTM, bptt.GRU: torch.nn.GRU}[cls]
    m = tcls(3, 5, 2, bidirectional=True).double()
    layer = cls(3, 5, 2, bidirectional=True, dtype=np.float64, seed=0, **opts)
    before = layer.state_dict()
    layer.load_state_dict(m.state_dict())       # torch tensors, as they come
    for k, v in m.state_dict().items():
        np.testing.assert_array_equal(layer.state_dict()[k], v.numpy())
        assert not np.array_equal(before[k], v.numpy())  # it did change something
    rng = np.random.default_rng(0)
    x = rng.standard_normal((6, 4, 3))
    y, h_n, _ = layer.forward(x)
    with torch.no_grad():
        yt, hnt = m(torch.tensor(x))
    assert rel_err(y, yt.numpy()) < TOL
    if cls is bptt.LSTM:
        assert rel_err(h_n[0], hnt[0].numpy()) < TOL
        assert rel_err(h_n[1], hnt[1].numpy()) < TOL
    else:
        assert rel_err(h_n, hnt.numpy()) < TOL


@pytest.mark.parametrize("family", ["rnn_relu", "lstm", "gru"])
def test_our_state_dict_loads_into_torch(family):
    cls, opts = FAMILIES[family]
    layer = cls(4, 3, 2, bidirectional=True, dtype=np.float64, seed=7, **opts)
    tcls = {bptt.RNN: torch.nn.RNN, bptt.LSTM: torch.nn.LSTM, bptt.GRU: torch.nn.GRU}[cls]
    kw = {"nonlinearity": "relu"} if cls is bptt.RNN else {}
    m = tcls(4, 3, 2, bidirectional=True, **kw).double()
    result = m.load_state_dict({k: torch.from_numpy(v) for k, v in layer.state_dict().items()},
                               strict=True)
    assert not result.missing_keys and not result.unexpected_keys
    x = np.random.default_rng(1).standard_normal((5, 2, 4))
    y, _, _ = layer.forward(x)
    with torch.no_grad():
        yt, _ = m(torch.tensor(x))
    assert rel_err(y, yt.numpy()) < TOL


def test_float32_state_dict_from_torch():
    """torch's default float32 parameters load into a float64 layer exactly (widening)."""
    torch.manual_seed(3)
    m = torch.nn.GRU(2, 3)
    layer = bptt.GRU(2, 3, dtype=np.float64)
    layer.load_state_dict(m.state_dict())
    for k, v in m.state_dict().items():
        np.testing.assert_array_equal(layer.state_dict()[k], v.numpy().astype(np.float64))


# ---------------------------------------------------------------------------- batch_first
@pytest.mark.parametrize("lengths_kind", ["full", "ragged"])
@pytest.mark.parametrize("family", list(FAMILIES))
def test_batch_first_matches_torch(family, lengths_kind):
    rng = np.random.default_rng(seed_of("bf", family, lengths_kind))
    T, B, D, H = 7, 4, 3, 5
    layer = make_layer(family, D, H, 2, bidirectional=True, batch_first=True, seed=2)
    lengths = draw_lengths(rng, T, B, lengths_kind)
    x, h0, dy, dh_n = draw_problem(rng, layer, T, B, True, True)
    assert x.shape == (B, T, D)
    ours, _ = check_against_torch(layer, x, h0, lengths, dy, dh_n)
    assert ours["y"].shape == (B, T, 2 * H)
    assert ours["dx"].shape == (B, T, D)
    # and it is the time-major layer, transposed
    tm = make_layer(family, D, H, 2, bidirectional=True, seed=2)
    y2, _, tape2 = tm.forward(x.transpose(1, 0, 2), h0, lengths)
    dx2, _, _ = tm.backward(dy.transpose(1, 0, 2), tape2, dh_n)
    np.testing.assert_allclose(ours["y"], y2.transpose(1, 0, 2), rtol=0, atol=1e-13)
    np.testing.assert_allclose(ours["dx"], dx2.transpose(1, 0, 2), rtol=0, atol=1e-13)


# ---------------------------------------------------------------------------- dropout
def _torch_stack_by_hand(layer, x, h0, lengths, masks):
    """The stack as single-layer bidirectional torch modules, our dropout masks in between.
    Returns (y, h_n or (h_n, c_n), leaves x / h0, {our name: torch parameter})."""
    lstm = isinstance(layer, bptt.LSTM)
    state = layer.state_dict()
    xt = torch.tensor(x, requires_grad=True)
    h0t = tuple(torch.tensor(s, requires_grad=True) for s in h0) if lstm else \
        torch.tensor(h0, requires_grad=True)
    params, hs, cs = {}, [], []
    inp = xt
    for l in range(layer.num_layers):
        sub = type(layer)(inp.shape[2], layer.hidden_size, 1, bidirectional=True,
                          dtype=np.float64, **({"nonlinearity": layer.nonlinearity}
                                               if isinstance(layer, bptt.RNN) else {}))
        names = {k: k.replace(f"_l{l}", "_l0") for k in state
                 if k.endswith(f"_l{l}") or k.endswith(f"_l{l}_reverse")}
        m = torch_module(sub, {new: state[old] for old, new in names.items()})
        tp = dict(m.named_parameters())
        params.update({old: tp[new] for old, new in names.items()})
        if l > 0:
            assert masks[l] is not None
            inp = inp * torch.from_numpy(masks[l])
        if lstm:
            s0 = (h0t[0][2 * l:2 * l + 2], h0t[1][2 * l:2 * l + 2])
        else:
            s0 = h0t[2 * l:2 * l + 2]
        inp, s_n = torch_run(m, inp, s0, lengths)
        if lstm:
            hs.append(s_n[0])
            cs.append(s_n[1])
        else:
            hs.append(s_n)
    h_n = (torch.cat(hs), torch.cat(cs)) if lstm else torch.cat(hs)
    return inp, h_n, xt, h0t, params


@pytest.mark.parametrize("lengths_kind", ["full", "ragged"])
@pytest.mark.parametrize("family", ["rnn_tanh", "lstm", "gru"])
def test_dropout_matches_hand_stacked_torch(family, lengths_kind):
    rng = np.random.default_rng(seed_of("dropout", family, lengths_kind))
    T, B, D, H, p = 6, 4, 3, 4, 0.3
    layer = make_layer(family, D, H, 3, bidirectional=True, dropout=p, seed=5)
    lengths = draw_lengths(rng, T, B, lengths_kind)
    x, h0, dy, dh_n = draw_problem(rng, layer, T, B, True, True)
    y, h_n, tape = layer.forward(x, h0, lengths, training=True, rng=np.random.default_rng(11))
    dx, dh0, grads = layer.backward(dy, tape, dh_n)

    masks = tape.dropout_masks
    assert len(masks) == 3 and masks[0] is None
    for mk in masks[1:]:
        assert mk.shape == (T, B, 2 * H)
        values = set(np.unique(mk).tolist())
        assert values == {0.0, 1.0 / (1.0 - p)}, values     # both kept and dropped units

    yt, hnt, xt, h0t, params = _torch_stack_by_hand(layer, x, h0, lengths, masks)
    lstm = isinstance(layer, bptt.LSTM)
    loss = (yt * torch.from_numpy(dy)).sum()
    if lstm:
        loss = loss + (hnt[0] * torch.from_numpy(dh_n[0])).sum() \
            + (hnt[1] * torch.from_numpy(dh_n[1])).sum()
    else:
        loss = loss + (hnt * torch.from_numpy(dh_n)).sum()
    loss.backward()

    assert rel_err(y, yt.detach().numpy()) < TOL
    assert rel_err(dx, xt.grad.numpy()) < TOL
    if lstm:
        assert rel_err(h_n[0], hnt[0].detach().numpy()) < TOL
        assert rel_err(h_n[1], hnt[1].detach().numpy()) < TOL
        assert rel_err(dh0[0], h0t[0].grad.numpy()) < TOL
        assert rel_err(dh0[1], h0t[1].grad.numpy()) < TOL
    else:
        assert rel_err(h_n, hnt.detach().numpy()) < TOL
        assert rel_err(dh0, h0t.grad.numpy()) < TOL
    assert set(params) == set(grads)
    for k, g in grads.items():
        assert rel_err(g, params[k].grad.numpy()) < TOL, k

    # without training there is no dropout, and the output changes
    y_eval, _, tape_eval = layer.forward(x, h0, lengths)
    assert all(mk is None for mk in tape_eval.dropout_masks)
    assert rel_err(y_eval, y) > 1e-3


# ---------------------------------------------------------------------------- float32
@pytest.mark.parametrize("family", list(FAMILIES))
def test_float32_agrees_with_float64(family):
    rng = np.random.default_rng(seed_of("f32", family))
    T, B, D, H = 10, 4, 5, 6
    l32 = make_layer(family, D, H, 2, bidirectional=True, dtype=np.float32, seed=3)
    l64 = make_layer(family, D, H, 2, bidirectional=True, dtype=np.float64)
    l64.load_state_dict(l32.state_dict())
    lengths = draw_lengths(rng, T, B, "ragged")
    x, h0, dy, dh_n = draw_problem(rng, l64, T, B, True, True)
    y32, hn32, t32 = l32.forward(x, h0, lengths)
    dx32, dh032, g32 = l32.backward(dy, t32, dh_n)
    y64, hn64, t64 = l64.forward(x, h0, lengths)
    dx64, dh064, g64 = l64.backward(dy, t64, dh_n)
    pairs = [(y32, y64), (dx32, dx64)]
    pairs += list(zip(hn32, hn64)) + list(zip(dh032, dh064)) if family == "lstm" else \
        [(hn32, hn64), (dh032, dh064)]
    pairs += [(g32[k], g64[k]) for k in g64]
    for a, b in pairs:
        assert a.dtype == np.float32 and b.dtype == np.float64
        assert rel_err(a, b) < 1e-4


# ---------------------------------------------------------------------------- returned y
@pytest.mark.parametrize("batch_first", [False, True], ids=["tm", "bf"])
@pytest.mark.parametrize("lengths_kind", ["full", "ragged"])
@pytest.mark.parametrize("bidirectional", [False, True], ids=["uni", "bi"])
@pytest.mark.parametrize("family", ["rnn_tanh", "lstm", "gru"])
def test_writing_outputs_cannot_change_backward(family, bidirectional, lengths_kind, batch_first):
    rng = np.random.default_rng(seed_of("ro", family, bidirectional, lengths_kind, batch_first))
    T, B = 5, 3
    layer = make_layer(family, 2, 3, 2, bidirectional=bidirectional, batch_first=batch_first,
                       seed=4)
    lengths = draw_lengths(rng, T, B, lengths_kind)
    x, h0, dy, dh_n = draw_problem(rng, layer, T, B, True, True)
    _, _, tape = layer.forward(x, h0, lengths)
    want = layer.backward(dy, tape, dh_n)

    y, h_n, tape = layer.forward(x, h0, lengths)
    outputs = [y] + (list(h_n) if family == "lstm" else [h_n])
    for a in outputs:
        if a.flags.writeable:
            a[...] = 1e3
        else:
            with pytest.raises(ValueError, match="read-only"):
                a[...] = 1e3
    got = layer.backward(dy, tape, dh_n)

    def flat(result):
        dx, dh0, grads = result
        return [dx] + (list(dh0) if family == "lstm" else [dh0]) + [grads[k] for k in grads]

    for a, b in zip(flat(got), flat(want), strict=True):
        np.testing.assert_array_equal(a, b)
