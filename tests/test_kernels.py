"""The compiled backend, ``native`` (``bptt.native``, C++),
against the NumPy reference cells to ~1e-12 and, through the layers, against torch autograd in
float64 to 1e-9: every family and variant, bias or not, masks and lengths, per-step clipping and
the record of dL/dh_t, float32 and float64. Each test runs for each backend that imports."""

import importlib
import os

import numpy as np
import pytest
from conftest import GATES, VARIANTS, rel_err, seed_of, torch_twin

import bptt
from bptt.cells import lstm, rnn


def _compiled(package):
    try:
        return importlib.import_module(package)
    except ImportError:
        return None


COMPILED = {"native": _compiled("bptt.native")}
BACKENDS = [pytest.param(name, marks=pytest.mark.skipif(
    module is None, reason=f"backend {name!r} is not available here"))
    for name, module in COMPILED.items()]



def fast(backend, module):
    """The compiled twin of a reference cell module."""
    return COMPILED[backend].FAMILIES[module.__name__.rsplit(".", 1)[1]]


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


def both(backend, variant, dtype, bias, masked, clip, seed, size=(9, 4, 5, 7)):
    module, opts = VARIANTS[variant]
    rng = np.random.default_rng(seed)
    T, B, D, H = size
    w, x, state0, dstate_n, dy, mask = draw(rng, module, T, B, D, H, dtype, bias)
    mask = mask if masked else None
    results = []
    for mod in (module, fast(backend, module)):
        y, state_n, tape = mod.forward(x.copy(), state0, w, mask, **opts)
        record = np.zeros((T, B, H), dtype)
        back = mod.backward(dy, dstate_n, tape, clip=clip, record=record)
        results.append((flat((y, state_n)) + flat(back) + [record], y.dtype, back[0].dtype))
    return results


@pytest.mark.parametrize("clip", [None, 0.3], ids=["noclip", "clip"])
@pytest.mark.parametrize("masked", [False, True], ids=["nomask", "mask"])
@pytest.mark.parametrize("bias", [True, False], ids=["bias", "nobias"])
@pytest.mark.parametrize("variant", list(VARIANTS))
@pytest.mark.parametrize("backend", BACKENDS)
def test_fast_equals_reference_float64(backend, variant, bias, masked, clip):
    (ref, *_), (got, *_) = both(backend, variant, np.float64, bias, masked, clip,
                                seed_of(variant, bias, masked, clip))
    assert len(ref) == len(got)
    for a, b in zip(got, ref):
        assert a.shape == b.shape
        assert rel_err(a, b) < 1e-12


@pytest.mark.parametrize("variant", list(VARIANTS))
@pytest.mark.parametrize("backend", BACKENDS)
def test_fast_float32_stays_float32_and_close(backend, variant):
    (ref, *_), (got, ydt, dxdt) = both(backend, variant, np.float32, True, True, 0.5,
                                       seed_of(variant))
    assert ydt == np.float32 and dxdt == np.float32
    for a, b in zip(got, ref):
        assert a.dtype == np.float32
        assert rel_err(a, b) < 1e-4


@pytest.mark.parametrize("size", [(3, 8, 16, 64), (2, 13, 3, 40), (2, 1, 2, 1), (3, 9, 4, 17)],
                         ids=["B8H64", "B13H40", "B1H1", "B9H17"])
@pytest.mark.parametrize("variant", list(VARIANTS))
@pytest.mark.parametrize("backend", BACKENDS)
def test_fast_equals_reference_other_sizes(backend, variant, size):
    """Sizes that take other code paths: the native loops'
    row blocks with remainders (B = 13, 9) and a partial last block of hidden units (H = 40,
    17, 1)."""
    (ref, *_), (got, *_) = both(backend, variant, np.float64, True, True, 0.7,
                                seed_of("sizes", variant, size), size)
    for a, b in zip(got, ref):
        assert rel_err(a, b) < 1e-12


@pytest.mark.skipif(COMPILED["native"] is None, reason="backend 'native' is not available here")
@pytest.mark.parametrize("split", ["rows", "units", "auto"])
@pytest.mark.parametrize("size", [(4, 26, 5, 40), (3, 13, 3, 17), (3, 2, 4, 33), (3, 11, 4, 64),
                                  (2, 9, 3, 110)],
                         ids=["B26H40", "B13H17", "B2H33", "B11H64", "B9H110"])
@pytest.mark.parametrize("variant", list(VARIANTS))
def test_native_threads_split_by_rows_or_units_agree_with_reference(monkeypatch, variant, size,
                                                                    split):
    """Every step on all threads (min_work 0), the threads splitting the batch rows (each one
    runs its rows' recurrence with no barrier; bias sums per thread, added at the end) or the
    hidden units: both give the reference's results, masks, clipping and records included.
    In float64 (8 units a vector) the sizes give two threads' unit panels (Panels in
    _loops.cpp) every shape: shares of one and two vectors at H = 17, two and three at 33 and
    40, four (2 + 2) at 64, seven (3 + 2 + 2, the last vector partial) at 110."""
    native = COMPILED["native"]
    if native._lib.max_threads() < 2:
        pytest.skip("one OpenMP thread here: nothing to split")
    monkeypatch.setattr(native, "min_work", 0)
    native.set_split(split)
    try:
        for bias, masked in ((True, True), (True, False), (False, True)):
            (ref, *_), (got, *_) = both("native", variant, np.float64, bias, masked, 0.7,
                                        seed_of("split", variant, size, bias, masked), size)
            for a, b in zip(got, ref, strict=True):
                assert rel_err(a, b) < 1e-12
    finally:
        native.set_split("auto")


@pytest.mark.skipif(COMPILED["native"] is None, reason="backend 'native' is not available here")
def test_native_calls_from_several_threads_at_once_agree_with_reference():
    """The native loops keep their packed weights in a pool shared by all calls (a buffer that
    fits, handed from call to call); Python threads that run them at the same time (ctypes lets
    go of the GIL), at sizes whose buffers differ, each get the reference's results."""
    import threading
    jobs = []
    for i, (variant, size) in enumerate((v, size) for v in ("lstm", "gru_after", "rnn_tanh")
                                        for size in ((30, 8, 40, 64), (30, 6, 24, 96))):
        module, opts = VARIANTS[variant]
        w, x, state0, dstate_n, dy, mask = draw(np.random.default_rng(i), module, *size,
                                                np.float64, True)
        y, state_n, tape = module.forward(x, state0, w, mask, **opts)
        ref = flat((y, state_n)) + flat(module.backward(dy, dstate_n, tape))
        jobs.append((fast("native", module), opts, w, x, state0, dstate_n, dy, mask, ref))
    errors = []

    def run(cell, opts, w, x, state0, dstate_n, dy, mask, ref):
        try:
            for _ in range(20):
                y, state_n, tape = cell.forward(x, state0, w, mask, **opts)
                got = flat((y, state_n)) + flat(cell.backward(dy, dstate_n, tape))
                errors.extend(e for e in map(rel_err, got, ref) if not e < 1e-12)
        except Exception as e:  # noqa: BLE001 (reported by the assert below)
            errors.append(e)

    threads = [threading.Thread(target=run, args=job) for job in jobs]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []


def test_native_split_rejects_an_unknown_mode():
    if COMPILED["native"] is None:
        pytest.skip("backend 'native' is not available here")
    with pytest.raises(ValueError, match="expected one of auto, rows, units, got 'cols'"):
        COMPILED["native"].set_split("cols")


@pytest.mark.parametrize("variant", list(VARIANTS))
@pytest.mark.parametrize("backend", BACKENDS)
def test_tapes_are_interchangeable(backend, variant):
    """A reference tape goes through the fast backward and a fast tape through the reference's."""
    module, opts = VARIANTS[variant]
    twin = fast(backend, module)
    rng = np.random.default_rng(seed_of("tape", variant))
    w, x, state0, dstate_n, dy, mask = draw(rng, module, 6, 3, 4, 5, np.float64, True)
    _, _, tape_ref = module.forward(x, state0, w, mask, **opts)
    _, _, tape_fast = twin.forward(x, state0, w, mask, **opts)
    assert sorted(tape_ref) == sorted(tape_fast)
    expected = flat(module.backward(dy, dstate_n, tape_ref))
    for got in (flat(twin.backward(dy, dstate_n, tape_ref)),
                flat(module.backward(dy, dstate_n, tape_fast))):
        for a, b in zip(got, expected):
            assert rel_err(a, b) < 1e-12


# ------------------------------------------------------------------ layers, against torch
LAYERS = {"rnn_tanh": (bptt.RNN, {"nonlinearity": "tanh"}),
          "rnn_relu": (bptt.RNN, {"nonlinearity": "relu"}),
          "lstm": (bptt.LSTM, {}), "gru": (bptt.GRU, {})}


@pytest.mark.parametrize("lengths", [False, True], ids=["full", "lengths"])
@pytest.mark.parametrize("name", list(LAYERS))
@pytest.mark.parametrize("backend", BACKENDS)
def test_layer_matches_torch_float64(backend, name, lengths):
    cls, kw = LAYERS[name]
    T, B, D, H = 7, 3, 4, 5
    layer = cls(D, H, num_layers=2, bidirectional=True, dtype=np.float64, seed=1,
                backend=backend, **kw)
    assert layer.cell is fast(backend, type(layer).cell)
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
@pytest.mark.parametrize("backend", BACKENDS)
def test_layer_backends_agree_with_memory_budget(backend, name):
    """The checkpointed path (memory=) runs on the fast cells and matches the NumPy layer."""
    cls, kw = LAYERS[name]
    rng = np.random.default_rng(seed_of("memory", name))
    x = rng.standard_normal((12, 2, 3))
    dy = rng.standard_normal((12, 2, 4))
    out = []
    for backend, memory in (("numpy", None), (backend, 3)):
        layer = cls(3, 4, dtype=np.float64, seed=2, backend=backend, **kw)
        y, _, tape = layer.forward(x, memory=memory)
        out.append(flat((y,)) + flat(layer.backward(dy, tape)[::2]))
    for a, b in zip(*out):
        assert rel_err(a, b) < 1e-12


@pytest.mark.parametrize("backend", BACKENDS)
def test_layer_backend_choice(backend):
    assert bptt.LSTM(2, 3, backend="numpy").cell is lstm
    assert bptt.GRU(2, 3, backend=backend).cell is COMPILED[backend].gru
    assert bptt.RNN(2, 3, backend="auto").cell is next(
        m.rnn for m in COMPILED.values() if m is not None)
    with pytest.raises(ValueError, match="backend"):
        bptt.LSTM(2, 3, backend="cuda")


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("name", list(LAYERS))
@pytest.mark.parametrize("backend", BACKENDS)
def test_nan_goes_where_the_reference_puts_it(backend, name, dtype):
    """Compiled code may assume no NaN (fast-math); a diverged run must still show NaN, as the
    reference."""
    cls, kw = LAYERS[name]
    x = np.zeros((4, 2, 3), dtype)
    x[1, 0, 0] = np.nan
    out = []
    for backend in ("numpy", backend):
        layer = cls(3, 4, dtype=dtype, seed=0, backend=backend, **kw)
        y, _, tape = layer.forward(x)
        dx, _, _ = layer.backward(np.ones_like(y), tape)
        out.append((np.isnan(y), np.isnan(dx)))
    assert out[0][0][1:, 0].all()
    for a, b in zip(*out):
        np.testing.assert_array_equal(a, b)


def test_compiled_backends_missing_say_so(monkeypatch):
    import sys
    monkeypatch.delattr(bptt, "native", raising=False)
    monkeypatch.setitem(sys.modules, "bptt.native", None)  # import fails as if not built
    with pytest.raises(ImportError, match="compiler"):
        bptt.LSTM(2, 3, backend="native")
    assert bptt.LSTM(2, 3, backend="auto").cell is lstm


@pytest.mark.parametrize("lengths", [False, True], ids=["full", "lengths"])
@pytest.mark.parametrize("name", list(LAYERS))
@pytest.mark.parametrize("backend", ["numpy"] + BACKENDS)
def test_inference_equals_the_forward_of_training(backend, name, lengths):
    """forward(tape=False) (no gates kept: the compiled backends' inference loops) gives the
    outputs and final state of the forward that keeps a tape, and returns no tape."""
    cls, kw = LAYERS[name]
    layer = cls(4, 6, num_layers=2, bidirectional=True, dtype=np.float64, seed=3,
                backend=backend, **kw)
    rng = np.random.default_rng(seed_of("infer", name, lengths))
    x = rng.standard_normal((8, 3, 4))
    lens = np.array([8, 2, 5]) if lengths else None
    y, h_n, tape = layer.forward(x, lengths=lens)
    y_i, h_n_i, none = layer.forward(x, lengths=lens, tape=False)
    assert none is None
    assert rel_err(y_i, y) < 1e-12
    for a, b in zip(np.atleast_3d(h_n_i) if not isinstance(h_n, tuple) else h_n_i,
                    np.atleast_3d(h_n) if not isinstance(h_n, tuple) else h_n):
        assert rel_err(a, b) < 1e-12


def test_inference_bad_options_say_so():
    layer = bptt.LSTM(2, 3)
    x = np.zeros((4, 1, 2))
    with pytest.raises(TypeError, match="expected tape a bool"):
        layer.forward(x, tape="no")
    with pytest.raises(ValueError, match="leave memory out"):
        layer.forward(x, memory=2, tape=False)


def test_native_is_built_where_required():
    """`make test` sets BPTT_REQUIRE_NATIVE=1: there, a native build that silently failed (the
    extension is optional at install) must fail the suite instead of skipping its tests."""
    if os.environ.get("BPTT_REQUIRE_NATIVE") != "1":
        pytest.skip("BPTT_REQUIRE_NATIVE is not set")
    assert COMPILED["native"] is not None, "bptt.native did not import: was it built?"


@pytest.mark.skipif(COMPILED["native"] is None, reason="backend 'native' is not available here")
def test_native_float32_flushes_subnormal_messages_inside_its_loops_only():
    """A vanishing float32 message underflows: the native loops flush it to zero (a subnormal
    costs microcode cycles at every step), the reference keeps IEEE subnormals; every value
    above the subnormal range agrees, and the process's own float mode is left as it was."""
    rng = np.random.default_rng(11)
    T, B, H = 60, 2, 16
    w = {"weight_ih": (0.05 * rng.standard_normal((H, H))).astype(np.float32),
         "weight_hh": (0.05 * rng.standard_normal((H, H))).astype(np.float32),
         "bias_ih": None, "bias_hh": None}
    x = rng.standard_normal((T, B, H)).astype(np.float32)
    dy = np.zeros((T, B, H), np.float32)
    dy[-1] = 1.0                                   # one loss at the end, read back 60 steps
    h0 = np.zeros((B, H), np.float32)
    out = []
    for mod in (rnn, COMPILED["native"].rnn):
        _, _, tape = mod.forward(x, h0, w)
        record = np.zeros((T, B, H), np.float32)   # the messages dL/dh_t, as the loops made them
        mod.backward(dy, np.zeros((B, H), np.float32), tape, record=record)
        out.append(record)
    ref, nat = out
    tiny = np.finfo(np.float32).tiny
    assert ((ref != 0) & (np.abs(ref) < tiny)).any()          # the reference went subnormal
    assert not ((nat != 0) & (np.abs(nat) < tiny)).any()      # the native loops did not
    big = np.abs(ref) > 1e-30
    assert big.sum() > B * H and rel_err(nat[big], ref[big]) < 1e-4
    assert np.float32(1e-38) / np.float32(10) != 0            # still IEEE out here


@pytest.mark.skipif(COMPILED["native"] is None, reason="backend 'native' is not available here")
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_native_products_equal_numpy(dtype):
    """The backward's products outside the loop (row blocks on the native threads, one BLAS call
    each; A and B plain, transposed, or views of column blocks) equal NumPy's."""
    native = COMPILED["native"]
    rng = np.random.default_rng(5)
    dG = rng.standard_normal((301, 96)).astype(dtype)
    x = rng.standard_normal((301, 70)).astype(dtype)
    W = rng.standard_normal((96, 70)).astype(dtype)
    pairs = [(dG, W), (dG.T, x), (dG[:, :40].T, x), (x.T, dG), (dG[:, 16:], W[16:])]
    assert sum(a.shape[0] * a.shape[1] * b.shape[1] for a, b in pairs) >= native._SMALL_PRODUCTS
    for got, (a, b) in zip(native.matmuls(pairs), pairs):
        assert got.shape == (a.shape[0], b.shape[1])
        assert rel_err(got, a @ b) < (1e-5 if dtype == np.float32 else 1e-13)


@pytest.mark.skipif(COMPILED["native"] is None, reason="backend 'native' is not available here")
def test_native_workspace_hands_out_a_buffer_again_only_once_nothing_holds_it(monkeypatch):
    """The big buffers come back for the next pass only when no array or view holds them: a
    kept tape is never overwritten by a later step."""
    native = COMPILED["native"]
    monkeypatch.setattr(native, "WORKSPACE_MIN_BYTES", 1024)
    native.release_workspace()
    addr = lambda a: a.__array_interface__["data"][0]  # noqa: E731
    a = native.workspace((8, 64), np.float64)
    assert a.shape == (8, 64) and a.dtype == np.float64 and a.flags.c_contiguous
    b = native.workspace((8, 64), np.float64)
    assert addr(b) != addr(a)                          # a is still held
    view, first = a[2:], addr(a)
    del a
    assert addr(native.workspace((8, 64), np.float64)) not in (first, addr(b))  # a view holds it
    del view
    assert addr(native.workspace((64, 8), np.float64)) == first    # free: the same bytes again
    assert native.workspace((2, 3), np.float64).base is None       # small ones are plain
    native.release_workspace()


@pytest.mark.skipif(COMPILED["native"] is None, reason="backend 'native' is not available here")
@pytest.mark.parametrize("name", ["LSTM", "GRU", "RNN"])
def test_native_training_steps_with_recycled_buffers_keep_earlier_tapes(monkeypatch, name):
    """With every gate buffer recycled, step after step: each step's gradients equal the
    reference's, and a tape kept from an earlier step still gives its own gradients."""
    native = COMPILED["native"]
    monkeypatch.setattr(native, "WORKSPACE_MIN_BYTES", 0)
    native.release_workspace()
    rng = np.random.default_rng(3)
    layers = {b: getattr(bptt, name)(5, 7, dtype=np.float64, seed=1, backend=b)
              for b in ("numpy", "native")}
    xs = [rng.standard_normal((6, 3, 5)) for _ in range(3)]
    dy = rng.standard_normal((6, 3, 7))
    kept = layers["native"].forward(xs[0])[2]
    want = [flat(layers["numpy"].backward(dy, layers["numpy"].forward(x)[2])) for x in xs]
    for x, ref in zip(xs, want):
        _, _, tape = layers["native"].forward(x)
        got = flat(layers["native"].backward(dy, tape))
        assert max(rel_err(g, r) for g, r in zip(got, ref, strict=True)) < 1e-12
    got = flat(layers["native"].backward(dy, kept))
    assert max(rel_err(g, r) for g, r in zip(got, want[0], strict=True)) < 1e-12
    assert 0 < len(native._workspace) <= 4          # 8 passes: the buffers did go round
    native.release_workspace()
