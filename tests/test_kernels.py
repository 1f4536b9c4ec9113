"""The compiled kernels (``bptt.kernels``, numba) against the NumPy reference cells to ~1e-12 and,
through the layers, against torch autograd in float64 to 1e-9: every family and variant, bias or
not, masks and lengths, per-step clipping and the record of dL/dh_t, float32 and float64."""

import numpy as np
import pytest
from conftest import rel_err, seed_of, torch_twin

pytest.importorskip("numba", reason="numba is not installed: the fast backend (extra 'fast') "
                    "is off, bptt runs on the NumPy cells")

import bptt  # noqa: E402
from bptt import kernels  # noqa: E402
from bptt.cells import gru, lstm, rnn  # noqa: E402

# name -> (reference module, options)
VARIANTS = {
    "rnn_tanh": (rnn, {"nonlinearity": "tanh"}),
    "rnn_relu": (rnn, {"nonlinearity": "relu"}),
    "lstm": (lstm, {}),
    "gru_after": (gru, {"reset_after": True}),
    "gru_before": (gru, {"reset_after": False}),
}
GATES = {rnn: 1, lstm: 4, gru: 3}
FAST = {rnn: kernels.rnn, lstm: kernels.lstm, gru: kernels.gru}


def draw(rng, module, T, B, D, H, dtype, bias):
    G = GATES[module]
    s = 1.0 / np.sqrt(H)
    w = {"weight_ih": s * rng.standard_normal((G * H, D)),
         "weight_hh": s * rng.standard_normal((G * H, H)),
         "bias_ih": s * rng.standard_normal(G * H) if bias else None,
         "bias_hh": s * rng.standard_normal(G * H) if bias else None}
    w = {k: None if v is None else v.astype(dtype) for k, v in w.items()}
    x = rng.standard_normal((T, B, D)).astype(dtype)
    if module is lstm:
        state0 = tuple(rng.standard_normal((B, H)).astype(dtype) for _ in range(2))
        dstate_n = tuple(rng.standard_normal((B, H)).astype(dtype) for _ in range(2))
    else:
        state0 = rng.standard_normal((B, H)).astype(dtype)
        dstate_n = rng.standard_normal((B, H)).astype(dtype)
    dy = rng.standard_normal((T, B, H)).astype(dtype)
    mask = (rng.random((T, B, 1)) < 0.6).astype(dtype)
    mask[:, 0] = 1.0
    return w, x, state0, dstate_n, dy, mask


def flat(result):
    """(y, state_n) or (dx, dstate0, grads) as a list of arrays, in a fixed order."""
    out = []
    for part in result:
        if isinstance(part, dict):
            out += [part[k] for k in sorted(part)]
        elif isinstance(part, tuple):
            out += list(part)
        else:
            out.append(part)
    return out


def both(variant, dtype, bias, masked, clip, seed):
    module, opts = VARIANTS[variant]
    rng = np.random.default_rng(seed)
    T, B, D, H = 9, 4, 5, 7
    w, x, state0, dstate_n, dy, mask = draw(rng, module, T, B, D, H, dtype, bias)
    mask = mask if masked else None
    results = []
    for mod in (module, FAST[module]):
        y, state_n, tape = mod.forward(x.copy(), state0, w, mask, **opts)
        record = np.zeros((T, B, H), dtype)
        back = mod.backward(dy, dstate_n, tape, clip=clip, record=record)
        results.append((flat((y, state_n)) + flat(back) + [record], y.dtype, back[0].dtype))
    return results


@pytest.mark.parametrize("clip", [None, 0.3], ids=["noclip", "clip"])
@pytest.mark.parametrize("masked", [False, True], ids=["nomask", "mask"])
@pytest.mark.parametrize("bias", [True, False], ids=["bias", "nobias"])
@pytest.mark.parametrize("variant", list(VARIANTS))
def test_fast_equals_reference_float64(variant, bias, masked, clip):
    (ref, *_), (fast, *_) = both(variant, np.float64, bias, masked, clip,
                                 seed_of(variant, bias, masked, clip))
    assert len(ref) == len(fast)
    for a, b in zip(fast, ref):
        assert a.shape == b.shape
        assert rel_err(a, b) < 1e-12


@pytest.mark.parametrize("variant", list(VARIANTS))
def test_fast_float32_stays_float32_and_close(variant):
    (ref, *_), (fast, ydt, dxdt) = both(variant, np.float32, True, True, 0.5, seed_of(variant))
    assert ydt == np.float32 and dxdt == np.float32
    for a, b in zip(fast, ref):
        assert a.dtype == np.float32
        assert rel_err(a, b) < 1e-4


@pytest.mark.parametrize("variant", list(VARIANTS))
def test_tapes_are_interchangeable(variant):
    """A reference tape goes through the fast backward and a fast tape through the reference's."""
    module, opts = VARIANTS[variant]
    rng = np.random.default_rng(seed_of("tape", variant))
    w, x, state0, dstate_n, dy, mask = draw(rng, module, 6, 3, 4, 5, np.float64, True)
    _, _, tape_ref = module.forward(x, state0, w, mask, **opts)
    _, _, tape_fast = FAST[module].forward(x, state0, w, mask, **opts)
    assert sorted(tape_ref) == sorted(tape_fast)
    expected = flat(module.backward(dy, dstate_n, tape_ref))
    for got in (flat(FAST[module].backward(dy, dstate_n, tape_ref)),
                flat(module.backward(dy, dstate_n, tape_fast))):
        for a, b in zip(got, expected):
            assert rel_err(a, b) < 1e-12


def test_large_products_take_the_blas_path():
    """Sizes where a step's product goes to BLAS rather than the plain loop agree too."""
    rng = np.random.default_rng(7)
    w, x, state0, dstate_n, dy, mask = draw(rng, lstm, 3, 8, 16, 64, np.float64, True)
    ref = flat(lstm.forward(x, state0, w, mask)[:2])
    fast = flat(kernels.lstm.forward(x, state0, w, mask)[:2])
    for a, b in zip(fast, ref):
        assert rel_err(a, b) < 1e-12


# ------------------------------------------------------------------ layers, against torch
LAYERS = {"rnn_tanh": (bptt.RNN, {"nonlinearity": "tanh"}),
          "rnn_relu": (bptt.RNN, {"nonlinearity": "relu"}),
          "lstm": (bptt.LSTM, {}), "gru": (bptt.GRU, {})}


@pytest.mark.parametrize("lengths", [False, True], ids=["full", "lengths"])
@pytest.mark.parametrize("name", list(LAYERS))
def test_layer_numba_matches_torch_float64(name, lengths):
    cls, kw = LAYERS[name]
    T, B, D, H = 7, 3, 4, 5
    layer = cls(D, H, num_layers=2, bidirectional=True, dtype=np.float64, seed=1,
                backend="numba", **kw)
    assert layer.cell is FAST[{bptt.RNN: rnn, bptt.LSTM: lstm, bptt.GRU: gru}[cls]]
    rng = np.random.default_rng(seed_of(name, lengths))
    x = rng.standard_normal((T, B, D))
    lens = np.array([7, 3, 5]) if lengths else None
    dy = rng.standard_normal((T, B, 2 * H))
    y, h_n, tape = layer.forward(x, lengths=lens)
    dx, dh0, grads = layer.backward(dy, tape)
    ref = torch_twin(layer, x, lengths=lens, dy=dy)
    assert rel_err(y, ref["y"]) < 1e-9
    assert rel_err(dx, ref["dx"]) < 1e-9
    for k, g in grads.items():
        assert rel_err(g, ref["grads"][k]) < 1e-9, k


@pytest.mark.parametrize("name", list(LAYERS))
def test_layer_backends_agree_with_memory_budget(name):
    """The checkpointed path (memory=) runs on the fast cells and matches the NumPy layer."""
    cls, kw = LAYERS[name]
    rng = np.random.default_rng(seed_of("memory", name))
    x = rng.standard_normal((12, 2, 3))
    dy = rng.standard_normal((12, 2, 4))
    out = []
    for backend, memory in (("numpy", None), ("numba", 3)):
        layer = cls(3, 4, dtype=np.float64, seed=2, backend=backend, **kw)
        y, _, tape = layer.forward(x, memory=memory)
        out.append(flat((y,)) + flat(layer.backward(dy, tape)[::2]))
    for a, b in zip(*out):
        assert rel_err(a, b) < 1e-12


def test_layer_backend_choice():
    assert bptt.LSTM(2, 3, backend="numpy").cell is lstm
    assert bptt.GRU(2, 3, backend="numba").cell is kernels.gru
    assert bptt.RNN(2, 3, backend="auto").cell in (rnn, kernels.rnn)
    with pytest.raises(ValueError, match="backend"):
        bptt.LSTM(2, 3, backend="cuda")


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("name", list(LAYERS))
def test_nan_goes_where_the_reference_puts_it(name, dtype):
    """fastmath lets LLVM assume no NaN; a diverged run must still show NaN, as the reference."""
    cls, kw = LAYERS[name]
    x = np.zeros((4, 2, 3), dtype)
    x[1, 0, 0] = np.nan
    out = []
    for backend in ("numpy", "numba"):
        layer = cls(3, 4, dtype=dtype, seed=0, backend=backend, **kw)
        y, _, tape = layer.forward(x)
        dx, _, _ = layer.backward(np.ones_like(y), tape)
        out.append((np.isnan(y), np.isnan(dx)))
    assert out[0][0][1:, 0].all()
    for a, b in zip(*out):
        np.testing.assert_array_equal(a, b)


def test_numba_backend_without_numba_says_so(monkeypatch):
    import sys
    monkeypatch.delattr(bptt, "kernels")
    monkeypatch.setitem(sys.modules, "bptt.kernels", None)  # import fails as without numba
    with pytest.raises(ImportError, match="fast"):
        bptt.LSTM(2, 3, backend="numba")
    assert bptt.LSTM(2, 3, backend="auto").cell is lstm
