"""Gradient diagnostics against an independent computation: the same model unrolled step by step
in torch (float64), with autograd's gradient of the loss with respect to every h_t."""

import json
import math

import numpy as np
import pytest
import torch

from bptt import cells, diagnostics
from bptt.model import Model
from conftest import rel_err, seed_of

SIG = torch.sigmoid


def torch_unroll(model, x):
    """Run ``model`` in torch by hand, one step at a time. Returns (out, hs, acts): hs maps
    ``l{layer}{_reverse}`` to the list of h_t tensors (each retaining its grad, in input time
    order); acts maps the same names to {gate: (T, B, H) tensor} of the gate activations."""
    P = {k: torch.tensor(v, dtype=torch.float64, requires_grad=True)
         for k, v in model.params.items()}
    stack = model.rnn
    if model.input == "embedding":
        inp = P["embedding.weight"][torch.as_tensor(x)]
    elif model.input == "linear":
        inp = torch.as_tensor(x, dtype=torch.float64) @ P["proj.weight"].T + P["proj.bias"]
    else:
        inp = torch.as_tensor(x, dtype=torch.float64)
    T, B = inp.shape[:2]
    H = stack.hidden_size
    hs, acts, finals = {}, {}, []
    for lay in range(stack.num_layers):
        outs = []
        for d in range(stack.directions):
            name = f"l{lay}{'_reverse' if d else ''}"
            W = {w: P[f"rnn.{w}_{name}"] for w in ("weight_ih", "weight_hh", "bias_ih",
                                                   "bias_hh")}
            h = torch.zeros(B, H, dtype=torch.float64)
            c = torch.zeros(B, H, dtype=torch.float64)
            seq, gate_seq = [None] * T, [None] * T
            for t in (range(T) if d == 0 else reversed(range(T))):
                h, c, gates = _torch_step(stack, inp[t], h, c, W)
                h.retain_grad()
                seq[t], gate_seq[t] = h, gates
            hs[name] = seq
            acts[name] = {g: torch.stack([s[g] for s in gate_seq]) for g in gate_seq[0]}
            outs.append(torch.stack(seq))
            if lay == stack.num_layers - 1:
                finals.append(seq[-1] if d == 0 else seq[0])
        inp = torch.cat(outs, dim=2)
    if model.head == "step":
        feat = inp
    elif model.head == "last":
        feat = torch.cat(finals, dim=1)
    elif model.head == "mean":
        feat = inp.mean(0)
    else:
        feat = torch.cat([inp.mean(0), inp.max(0).values], dim=1)   # meanmax
    return feat @ P["head.weight"].T + P["head.bias"], hs, acts


def _torch_step(stack, x, h, c, W):
    a_x = x @ W["weight_ih"].T + W["bias_ih"]
    a_h = h @ W["weight_hh"].T + W["bias_hh"]
    if type(stack).cell is cells.rnn:          # the family, whichever backend runs it
        if stack.nonlinearity == "tanh":
            h = torch.tanh(a_x + a_h)
            return h, c, {"h": h}
        h = torch.relu(a_x + a_h)
        return h, c, {"relu_zero": h}
    if type(stack).cell is cells.lstm:
        i, f, g, o = (a_x + a_h).chunk(4, dim=1)
        i, f, g, o = SIG(i), SIG(f), torch.tanh(g), SIG(o)
        c = f * c + i * g
        h = o * torch.tanh(c)
        return h, c, {"i": i, "f": f, "g": g, "o": o, "tanh_c": torch.tanh(c)}
    xr, xz, xn = a_x.chunk(3, dim=1)
    hr, hz, hn = a_h.chunk(3, dim=1)
    r, z = SIG(xr + hr), SIG(xz + hz)
    n = torch.tanh(xn + r * hn)
    h = (1 - z) * n + z * h
    return h, c, {"r": r, "z": z, "n": n}


def make(cell, head, *, layers=1, bidirectional=False, input="identity", T=9, B=3, scale=1.0,
         **options):
    """A float64 model, its input, and a random dL/dout; weights scaled by ``scale``."""
    seed = seed_of(cell, head, layers, bidirectional, input, T, scale, options)
    rng = np.random.default_rng(seed)
    D, O = 4, 3
    m = Model(D, 5, O, cell=cell, input=input, head=head, num_layers=layers,
              bidirectional=bidirectional, dtype=np.float64, seed=seed, embed_size=6, **options)
    for p in m.params.values():
        p *= scale
    x = rng.integers(0, D, (T, B)) if input == "embedding" else rng.standard_normal((T, B, D))
    out_shape = (T, B, O) if head == "step" else (B, O)
    return m, x, rng.standard_normal(out_shape)


CASES = [  # cell, head, layers, bidirectional, input, options
    ("rnn", "step", 2, True, "identity", {}),
    ("rnn", "last", 1, False, "linear", {"nonlinearity": "relu", "init": "identity"}),
    ("lstm", "step", 1, True, "embedding", {}),
    ("lstm", "last", 2, True, "identity", {"forget_bias": 1.0}),
    ("gru", "step", 2, False, "identity", {}),
    ("gru", "last", 1, True, "identity", {}),
    ("gru", "mean", 1, False, "identity", {}),
    ("lstm", "meanmax", 1, True, "identity", {}),
]


@pytest.mark.parametrize("cell, head, layers, bidir, input, options", CASES)
def test_messages_equal_torch_gradient_wrt_each_h_t(cell, head, layers, bidir, input, options):
    m, x, dout = make(cell, head, layers=layers, bidirectional=bidir, input=input, **options)
    out, _, tape = m.forward(x)
    msgs = diagnostics.messages(m, tape, dout)
    norms = diagnostics.step_norms(msgs)

    t_out, hs, _ = torch_unroll(m, x)
    assert rel_err(t_out.detach().numpy(), out) < 1e-12
    (t_out * torch.as_tensor(dout)).sum().backward()
    assert list(msgs) == list(hs)                   # every (layer, direction), in stack order
    for name, seq in hs.items():
        want = np.stack([h.grad.numpy() for h in seq])          # (T, B, H)
        assert rel_err(msgs[name], want) < 1e-10, name
        assert rel_err(norms[name], np.linalg.norm(want.reshape(len(seq), -1), axis=1)) < 1e-10


@pytest.mark.parametrize("cell, head, layers, bidir, input, options",
                         [c for c in CASES if c[1] not in ("mean", "meanmax")])
def test_lag_profile_equals_torch_gradient_of_one_step_loss(cell, head, layers, bidir, input,
                                                           options):
    m, x, dout = make(cell, head, layers=layers, bidirectional=bidir, input=input, T=11,
                      **options)
    T = 11
    t = 7 if head == "step" else T - 1
    _, _, tape = m.forward(x)
    profile, t_used = diagnostics.lag_profile(m, tape, dout, t=t if head == "step" else None)
    assert t_used == t

    t_out, hs, _ = torch_unroll(m, x)
    loss = (t_out[t] * torch.as_tensor(dout[t])).sum() if head == "step" else \
        (t_out * torch.as_tensor(dout)).sum()
    loss.backward()
    for name, seq in hs.items():
        if name.endswith("_reverse"):
            origin = t if head == "step" else 0      # its final state is at step 0
            lags = range(origin, T)                   # h_{t+k}
        else:
            lags = range(t, -1, -1)                   # h_{t-k}
        want = [np.linalg.norm(seq[s].grad.numpy()) for s in lags]
        assert profile[name].shape == (len(want),)
        assert rel_err(profile[name], want) < 1e-10, name


def test_lag_profile_defaults_to_the_last_step_with_a_loss():
    m, x, dout = make("gru", "step", T=10)
    dout[6:] = 0.0                                   # no loss after step 5
    _, _, tape = m.forward(x)
    profile, t = diagnostics.lag_profile(m, tape, dout)
    assert t == 5 and profile["l0"].size == 6


@pytest.mark.parametrize("cell, options, scale", [
    ("rnn", {}, 4.0), ("rnn", {"nonlinearity": "relu"}, 1.0), ("lstm", {}, 4.0),
    ("gru", {}, 4.0)])
def test_gate_saturation_equals_shares_of_torch_activations(cell, options, scale):
    m, x, _ = make(cell, "step", bidirectional=True, T=12, B=5, scale=scale, **options)
    x = x * 3
    _, _, tape = m.forward(x)
    got = diagnostics.gate_saturation(m.rnn, tape["rnn"])
    _, _, acts = torch_unroll(m, x)
    some_partial = False
    for name, gates in acts.items():
        assert list(got[name]) == [g for g in ("i", "f", "g", "o", "tanh_c", "r", "z", "n", "h",
                                               "relu_zero") if g in gates]
        for g, a in gates.items():
            a = a.detach().numpy()
            if g == "relu_zero":
                want = np.mean(a == 0)
            elif g in ("g", "n", "h", "tanh_c"):
                want = np.mean(np.abs(a) > 0.95)
            else:
                want = np.mean((a < 0.05) | (a > 0.95))
            assert got[name][g] == pytest.approx(want, abs=1e-12), (name, g)
            some_partial |= 0 < want < 1
    assert some_partial                              # the weights do saturate some units


def test_gate_saturation_counts_only_valid_steps():
    m, x, _ = make("lstm", "step", bidirectional=True, T=8, B=3, scale=4.0)
    lengths = [8, 3, 5]
    _, _, tape = m.forward(x * 3, lengths=lengths)
    got = diagnostics.gate_saturation(m.rnn, tape["rnn"])
    # the same shares from each sequence run on its own, weighted by its valid steps
    sums, counts = {}, 0
    for b, L in enumerate(lengths):
        _, _, tb = m.forward(x[:L, b:b + 1] * 3)
        share = diagnostics.gate_saturation(m.rnn, tb["rnn"])
        for name, gates in share.items():
            for g, v in gates.items():
                sums[(name, g)] = sums.get((name, g), 0.0) + v * L * m.rnn.hidden_size
        counts += L * m.rnn.hidden_size
    for (name, g), s in sums.items():
        assert got[name][g] == pytest.approx(s / counts, abs=1e-12), (name, g)


@pytest.mark.parametrize("cell, options", [("rnn", {}), ("lstm", {}), ("gru", {})])
def test_spectral_norm_and_radius_of_each_gate_block(cell, options):
    m, _, _ = make(cell, "last", layers=2, bidirectional=True, **options)
    got = diagnostics.spectral(m.rnn)
    gates = {"rnn": "h", "lstm": "ifgo", "gru": "rzn"}[cell]
    H = m.rnn.hidden_size
    assert set(got) == {k for k in m.rnn.params if k.startswith("weight_hh")}
    for key, blocks in got.items():
        W = torch.tensor(m.rnn.params[key])
        assert list(blocks) == list(gates)
        for j, g in enumerate(gates):
            block = W[j * H:(j + 1) * H]
            assert blocks[g]["norm"] == pytest.approx(
                torch.linalg.matrix_norm(block, ord=2).item(), rel=1e-12)
            assert blocks[g]["radius"] == pytest.approx(
                torch.linalg.eigvals(block).abs().max().item(), rel=1e-12)


def test_spectral_radius_of_identity_init_is_one():
    m = Model(2, 6, 1, cell="rnn", input="identity", head="last", nonlinearity="relu",
              init="identity", seed=0)
    block = diagnostics.spectral(m.rnn)["weight_hh_l0"]["h"]
    assert block == {"norm": pytest.approx(1.0), "radius": pytest.approx(1.0)}


# ---------------------------------------------------------------------- the verdict
def test_verdict_vanishing_gives_the_effective_memory():
    v = diagnostics.verdict(0.5 ** np.arange(40))
    assert v["kind"] == "vanishing"
    assert v["memory"] == 10                 # 0.5**9 = 1.95e-3, 0.5**10 = 9.8e-4
    assert v["growth"] == pytest.approx(0.5)
    assert "effective memory 10 steps" in v["line"]


def test_verdict_exploding_gives_the_growth_rate():
    v = diagnostics.verdict(3.0 * 1.2 ** np.arange(50))
    assert v["kind"] == "exploding" and v["memory"] is None
    assert v["growth"] == pytest.approx(1.2)
    assert "growth 1.2 per step" in v["line"] and "38 steps back" in v["line"]  # 1.2**38 > 1e3


def test_verdict_healthy_and_degenerate_profiles():
    v = diagnostics.verdict(np.full(30, 2.0) * 0.9 ** np.arange(30) + 1.0)
    assert v["kind"] == "healthy" and v["horizon"] == 29
    assert diagnostics.verdict([1.0, 2.0, np.inf])["kind"] == "exploding"
    assert diagnostics.verdict([0.0, 0.0, 0.0])["kind"] == "no gradient"
    v = diagnostics.verdict([1.0, 0.5, 0.0, 0.0])   # relu units all off: exact zeros
    assert v["kind"] == "vanishing" and v["memory"] == 2


def test_verdict_rejects_a_profile_too_short():
    with pytest.raises(ValueError, match="at least 2 lags"):
        diagnostics.verdict([1.0])
    with pytest.raises(ValueError, match="at least 2 lags"):
        diagnostics.verdict(np.ones((3, 3)))


def test_report_of_trained_like_models_reads_vanishing_for_tanh_and_memory_for_lstm():
    """A tanh RNN with small weights forgets within a few steps; an LSTM whose forget gates are
    saturated open (bias 8) carries the gradient over all T steps."""
    rng = np.random.default_rng(0)
    x = rng.standard_normal((60, 4, 2))
    loss = lambda out: (float((out ** 2).sum()), 2 * out)  # noqa: E731
    rnn = Model(2, 8, 1, cell="rnn", input="identity", head="last", dtype=np.float64, seed=0)
    rnn.params["rnn.weight_hh_l0"] *= 0.5
    rep = diagnostics.diagnose(rnn, x, loss)
    assert rep["verdict"]["kind"] == "vanishing" and rep["verdict"]["memory"] < 30
    lstm = Model(2, 8, 1, cell="lstm", input="identity", head="last", dtype=np.float64, seed=0,
                 forget_bias=8.0)
    rep = diagnostics.diagnose(lstm, x, loss)
    assert rep["verdict"]["kind"] == "healthy"
    assert rep["saturation"]["l0"]["f"] > 0.9
    json.dumps(rep)                                  # JSON-ready


def test_report_of_a_mean_head_has_no_lag():
    m, x, dout = make("gru", "mean")
    _, _, tape = m.forward(x)
    rep = diagnostics.report(m, tape, dout)
    assert rep["lag"] is None and rep["verdict"] is None and len(rep["step_norms"]["l0"]) == 9


# ---------------------------------------------------------------------- the recorded walk
@pytest.mark.parametrize("cell", ["rnn", "lstm", "gru"])
def test_record_backward_returns_what_layer_backward_returns(cell):
    m, x, _ = make(cell, "step", layers=2, bidirectional=True, dropout=0.3, T=7, B=4)
    rng = np.random.default_rng(1)
    y, _, tape = m.rnn.forward(x, lengths=[7, 2, 5, 7], training=True,
                               rng=np.random.default_rng(2))
    dy = rng.standard_normal(y.shape)
    dx, dh0, grads = m.rnn.backward(dy, tape, clip=0.5)
    dx2, dh02, grads2, msgs = diagnostics.record_backward(m.rnn, tape, dy, clip=0.5)
    assert np.array_equal(dx, dx2)
    for a, b in zip(dh0 if cell == "lstm" else [dh0], dh02 if cell == "lstm" else [dh02]):
        assert np.array_equal(a, b)
    assert grads.keys() == grads2.keys()
    assert all(np.array_equal(grads[k], grads2[k]) for k in grads)
    assert max(np.abs(v).max() for v in msgs.values()) <= 0.5     # recorded after clipping


@pytest.mark.parametrize("cell", ["rnn", "lstm", "gru"])
def test_compiled_backend_gives_the_same_report(cell):
    """With backend='native' the layer's cells are compiled twins; the report must not change."""
    pytest.importorskip("bptt.native")
    m, x, dout = make(cell, "step", layers=2, bidirectional=True, scale=3.0)
    fast = Model(4, 5, 3, cell=cell, input="identity", head="step", num_layers=2,
                 bidirectional=True, dtype=np.float64, backend="native")
    fast.load_state_dict(m.state_dict())
    assert fast.rnn.cell is not type(fast.rnn).cell
    reps = []
    for model in (m, fast):
        _, _, tape = model.forward(x)
        reps.append(diagnostics.report(model, tape, dout))
    slow, quick = reps
    for k in slow["step_norms"]:
        assert rel_err(quick["step_norms"][k], slow["step_norms"][k]) < 1e-12
        assert rel_err(quick["lag"]["profile"][k], slow["lag"]["profile"][k]) < 1e-12
    assert quick["saturation"] == slow["saturation"] and quick["spectral"] == slow["spectral"]
    assert quick["verdict"]["kind"] == slow["verdict"]["kind"]


def test_model_backward_never_asks_the_cells_to_record(monkeypatch):
    """Off by default: the normal backward path passes no record= to any cell."""
    calls = []
    for family in (cells.rnn, cells.lstm, cells.gru):
        original = family.backward

        def spy(*args, _original=original, **kwargs):
            calls.append(kwargs.get("record"))
            return _original(*args, **kwargs)
        monkeypatch.setattr(family, "backward", spy)
    for cell in ("rnn", "lstm", "gru"):
        m, x, dout = make(cell, "step", layers=2, bidirectional=True, backend="numpy")
        _, _, tape = m.forward(x)
        m.backward(dout, tape)
    assert len(calls) == 3 * 4 and all(r is None for r in calls)
    m, x, dout = make("gru", "step", backend="numpy")
    _, _, tape = m.forward(x)
    diagnostics.messages(m, tape, dout)
    assert calls[-1] is not None                     # the spy does see a record when asked


# ---------------------------------------------------------------------- errors at the door
def test_record_backward_errors():
    m, x, dout = make("lstm", "step")
    y, _, tape = m.rnn.forward(x)
    other = Model(4, 5, 3, cell="lstm", input="identity", dtype=np.float64, seed=1)
    with pytest.raises(TypeError, match="expected the tape that this layer's forward returned"):
        diagnostics.record_backward(other.rnn, tape, np.zeros_like(y))
    with pytest.raises(TypeError, match="expected the tape"):
        diagnostics.record_backward(m.rnn, {"not": "a tape"}, np.zeros_like(y))
    with pytest.raises(ValueError, match=r"expected dy of shape \(9, 3, 5\)"):
        diagnostics.record_backward(m.rnn, tape, np.zeros((9, 3, 4)))
    _, _, ck_tape = m.rnn.forward(x, memory=3)
    with pytest.raises(ValueError, match="keeps only checkpoints"):
        diagnostics.record_backward(m.rnn, ck_tape, np.zeros_like(y))
    with pytest.raises(ValueError, match="keeps only checkpoints"):
        diagnostics.gate_saturation(m.rnn, ck_tape)


def test_head_backward_checks_dout():
    m, x, dout = make("gru", "last")
    _, _, tape = m.forward(x)
    with pytest.raises(ValueError, match=r"expected dout of shape \(3, 3\)"):
        diagnostics.head_backward(m, dout[:, :2], tape)


def test_lag_profile_errors():
    m, x, dout = make("gru", "mean")
    _, _, tape = m.forward(x)
    with pytest.raises(ValueError, match="'mean' head"):
        diagnostics.lag_profile(m, tape, dout)
    m, x, dout = make("gru", "last")
    _, _, tape = m.forward(x)
    with pytest.raises(ValueError, match="step T-1 = 8, got t=3"):
        diagnostics.lag_profile(m, tape, dout, t=3)
    _, _, tape = m.forward(x, lengths=[9, 4, 9])
    with pytest.raises(ValueError, match="sequences of equal length"):
        diagnostics.lag_profile(m, tape, dout)
    m, x, dout = make("gru", "step")
    _, _, tape = m.forward(x)
    for bad in (9, -1, 2.0, True):
        with pytest.raises(ValueError, match=r"expected t an integer in 0..8"):
            diagnostics.lag_profile(m, tape, dout, t=bad)


def test_plot_heatmap_needs_records(tmp_path):
    with pytest.raises(ValueError, match="at least one diagnostics record"):
        diagnostics.plot_heatmap([], tmp_path / "h.png")


def test_figures_are_written(tmp_path):
    m, x, dout = make("lstm", "last", layers=2)
    _, _, tape = m.forward(x)
    rep = diagnostics.report(m, tape, dout)
    diagnostics.plot_lag(rep, tmp_path / "lag.png")
    diagnostics.plot_heatmap([{"step": s, **rep} for s in (0, 10, 20)], tmp_path / "heat.png")
    assert (tmp_path / "lag.png").stat().st_size > 1000
    assert (tmp_path / "heat.png").stat().st_size > 1000
    assert math.isfinite(rep["verdict"]["growth"])
