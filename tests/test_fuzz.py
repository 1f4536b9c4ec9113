"""Fuzzed entry points (hypothesis): random shapes, dtypes, lengths, NaN and inf, empty arrays,
wrong types. Every call either returns what the reference computes or raises ValueError or
TypeError naming what it expected: never another exception, never a silent wrong answer."""

import importlib.util
import os

import numpy as np
import pytest
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

import bptt
from bptt import checkpoint
from bptt.losses import mse, softmax_cross_entropy
from bptt.model import Model

FUZZ = settings(max_examples=int(os.environ.get("BPTT_FUZZ_EXAMPLES", 60)), deadline=None,
                suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture])
NATIVE = importlib.util.find_spec("bptt.native._loops") is not None
CLASSES = {"rnn": bptt.RNN, "lstm": bptt.LSTM, "gru": bptt.GRU}
CLEAN = (ValueError, TypeError)


def _values(draw, shape, kind):
    """An array of ``shape`` of a drawn kind: floats (maybe with NaN/inf), ints, bools, complex
    or objects."""
    n = int(np.prod(shape)) if shape else 1
    if kind == "float":
        vals = draw(st.lists(st.floats(-4, 4, allow_nan=False, width=32), min_size=n,
                             max_size=n))
        a = np.array(vals, np.float64).reshape(shape)
        if n and draw(st.booleans()) and draw(st.booleans()):
            a.flat[draw(st.integers(0, n - 1))] = draw(st.sampled_from([np.nan, np.inf, -np.inf]))
        return a
    if kind == "int":
        return np.arange(n).reshape(shape) % 3
    if kind == "bool":
        return np.ones(shape, bool)
    if kind == "complex":
        return np.ones(shape, complex)
    return np.empty(shape, object)


@st.composite
def layer_calls(draw):
    cell = draw(st.sampled_from(sorted(CLASSES)))
    D, H = draw(st.integers(1, 4)), draw(st.integers(1, 4))
    layers, bi = draw(st.integers(1, 2)), draw(st.booleans())
    T, B = draw(st.integers(0, 5)), draw(st.integers(0, 3))
    shape = draw(st.sampled_from([(T, B, D), (T, B, D + 1), (T, B), (T,), ()]))
    kind = draw(st.sampled_from(["float", "float", "float", "int", "bool", "complex", "object"]))
    x = _values(draw, shape, kind)
    lengths = draw(st.one_of(st.none(), st.lists(st.integers(-1, T + 1), min_size=max(B, 0),
                                                 max_size=B + 1)))
    dtype = draw(st.sampled_from([np.float32, np.float64]))
    return cell, D, H, layers, bi, x, lengths, dtype


def _check_message(err, *names):
    text = str(err)
    assert any(n in text for n in names), text
    assert "expected" in text or "not" in text or "must" in text, text


@FUZZ
@given(layer_calls())
def test_layers_forward_and_backward(call):
    cell, D, H, layers, bi, x, lengths, dtype = call
    backends = ["numpy"] + (["native"] if NATIVE else [])
    outs = []
    for backend in backends:
        layer = CLASSES[cell](D, H, layers, bidirectional=bi, dtype=dtype, seed=0,
                              backend=backend)
        try:
            y, h_n, tape = layer.forward(x, lengths=lengths)
            dx, dh0, grads = layer.backward(np.ones_like(y), tape)
        except CLEAN as e:
            _check_message(e, type(layer).__name__)
            outs.append(type(e))
            continue
        assert y.shape == (x.shape[0], x.shape[1], H * (1 + bi)) and dx.shape == x.shape
        if np.isfinite(x).all():
            assert np.isfinite(y).all() and all(np.isfinite(g).all() for g in grads.values())
        outs.append((y, dx, grads))
    if len(outs) == 2:               # the compiled loops agree with the reference
        a, b = outs
        assert type(a) is type(b) or (isinstance(a, type) and a is b)
        if not isinstance(a, type):
            tol = 1e-4 if dtype == np.float32 else 1e-10
            for u, v in [(a[0], b[0]), (a[1], b[1])] + [(a[2][k], b[2][k]) for k in a[2]]:
                np.testing.assert_allclose(u, v, rtol=tol, atol=tol)


@st.composite
def model_calls(draw):
    inp = draw(st.sampled_from(["embedding", "linear", "identity"]))
    head = draw(st.sampled_from(["step", "last", "mean", "max", "meanmax"]))
    V = draw(st.integers(1, 5))
    T, B = draw(st.integers(0, 4)), draw(st.integers(0, 3))
    if inp == "embedding":
        x = draw(st.sampled_from([
            np.zeros((T, B), np.int64), np.full((T, B), V, np.int64), np.full((T, B), -1),
            np.zeros((T, B)), np.zeros((T, B, 1), np.int64), np.zeros((T, B), bool)]))
    else:
        x = _values(draw, draw(st.sampled_from([(T, B, V), (T, B, V + 1), (T, B)])),
                    draw(st.sampled_from(["float", "float", "int", "complex"])))
    lengths = draw(st.one_of(st.none(), st.lists(st.integers(0, T + 1), min_size=B,
                                                 max_size=B)))
    return inp, head, V, x, lengths


@FUZZ
@given(model_calls())
def test_model_forward_and_backward(call):
    inp, head, V, x, lengths = call
    m = Model(V, 3, 2, cell="gru", input=inp, head=head, embed_size=2, seed=0)
    try:
        out, _, tape = m.forward(x, lengths=lengths)
        dx, _, grads = m.backward(np.ones_like(out), tape)
    except CLEAN as e:
        _check_message(e, "Model", "GRU")
        return
    assert grads.keys() == m.params.keys()
    B = x.shape[1]
    assert out.shape == ((x.shape[0], B, 2) if head == "step" else (B, 2))
    if x.dtype.kind in "iu" or np.isfinite(x).all():
        assert np.isfinite(out).all()


@st.composite
def ce_calls(draw):
    shape = tuple(draw(st.lists(st.integers(0, 3), min_size=0, max_size=3)))
    V = draw(st.integers(0, 4))
    logits = _values(draw, shape + (V,), draw(st.sampled_from(["float", "float", "int", "object"])))
    tshape = draw(st.sampled_from([shape, shape + (1,), shape[:-1]]))
    targets = draw(st.sampled_from([
        np.zeros(tshape, np.int64), np.full(tshape, V, np.int64), np.full(tshape, -1),
        np.zeros(tshape, np.float64)]))
    mask = draw(st.sampled_from([None, np.ones(tshape), np.zeros(tshape), -np.ones(tshape),
                                 np.full(tshape, np.nan)]))
    reduction = draw(st.sampled_from(["mean", "sum", "none", 3]))
    return logits, targets, mask, reduction


@FUZZ
@given(ce_calls())
def test_softmax_cross_entropy(call):
    logits, targets, mask, reduction = call
    try:
        loss, grad = softmax_cross_entropy(logits, targets, mask, reduction=reduction)
    except CLEAN as e:
        _check_message(e, "softmax_cross_entropy")
        return
    z = logits.astype(np.float64)
    w = np.ones(targets.shape) if mask is None else mask
    lse = np.log(np.exp(z - z.max(-1, keepdims=True)).sum(-1)) + z.max(-1)
    per = lse - np.take_along_axis(z, targets[..., None], -1)[..., 0]
    total = float((w * per).sum())
    want = total if reduction == "sum" else (total / w.sum() if w.sum() else 0.0)
    if np.isfinite(want):
        assert loss == pytest.approx(want, rel=1e-5, abs=1e-6)
    assert grad.shape == logits.shape


@FUZZ
@given(st.data())
def test_mse(data):
    shape = tuple(data.draw(st.lists(st.integers(0, 3), max_size=3)))
    pred = _values(data.draw, shape, data.draw(st.sampled_from(["float", "int", "object"])))
    tshape = data.draw(st.sampled_from([shape, shape + (1,)]))
    target = _values(data.draw, tshape, "float")
    try:
        loss, grad = mse(pred, target)
    except CLEAN as e:
        _check_message(e, "mse")
        return
    want = float(np.mean((pred.astype(np.float64) - target) ** 2)) if pred.size else 0.0
    if np.isfinite(want):
        assert loss == pytest.approx(want, rel=1e-5, abs=1e-7)
    assert grad.shape == pred.shape


@pytest.fixture(scope="module")
def a_checkpoint(tmp_path_factory):
    path = tmp_path_factory.mktemp("ck") / "checkpoint.npz"
    checkpoint.save(path, {"model/w": np.arange(6.0).reshape(2, 3)}, {"format": "x", "step": 3})
    return path.read_bytes()


@FUZZ
@given(st.data())
def test_checkpoint_reader_on_damaged_files(a_checkpoint, tmp_path_factory, data):
    raw = bytearray(a_checkpoint)
    how = data.draw(st.sampled_from(["cut", "flip", "random", "empty"]))
    if how == "cut":
        raw = raw[:data.draw(st.integers(0, len(raw) - 1))]
    elif how == "flip":
        for _ in range(data.draw(st.integers(1, 8))):
            raw[data.draw(st.integers(0, len(raw) - 1))] ^= data.draw(st.integers(1, 255))
    elif how == "random":
        raw = bytearray(data.draw(st.binary(min_size=0, max_size=400)))
    else:
        raw = bytearray()
    path = tmp_path_factory.mktemp("bad") / "checkpoint.npz"
    path.write_bytes(bytes(raw))
    try:
        arrays, meta = checkpoint.load(path)
    except checkpoint.CheckpointError as e:
        assert "pickle" not in str(e)
        return
    assume(bytes(raw) != a_checkpoint)
    # a flip that the zip format does not notice (in an unused header field) still reads back
    # the same contents: never different data
    assert np.array_equal(arrays["model/w"], np.arange(6.0).reshape(2, 3)) and meta["step"] == 3


OPTIONS = ["--hidden", "--layers", "--k1", "--k2", "--batch", "--lr", "--clip", "--steps",
           "--minutes", "--epochs", "--eval-every", "--cell", "--dtype", "--backend",
           "--dropout", "--seed", "--optimizer", "--schedule", "--on-nonfinite", "--bogus"]
VALUES = ["-1", "0", "nan", "inf", "abc", "", "1.5", "2", "1e9", "lstm", "float16", "--", "☃"]


@settings(max_examples=int(os.environ.get("BPTT_FUZZ_EXAMPLES", 60)), deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(st.lists(st.tuples(st.sampled_from(OPTIONS), st.sampled_from(VALUES)), min_size=1,
                max_size=3))
def test_cli_bad_arguments_are_one_line(tmp_path, capsys, pairs):
    from bptt.cli import main

    data = tmp_path / "t.txt"
    data.write_text("abcdefgh " * 50)
    argv = ["train", "charlm", "--data", str(data), "--out", str(tmp_path / "r"), "--steps", "1",
            "--hidden", "3", "--layers", "1", "--embed", "2", "--k1", "3", "--batch", "2",
            "--eval-every", "1", "--eval-chars", "50"]
    for opt, val in pairs:
        if opt in ("--hidden", "--batch", "--k1", "--k2", "--steps", "--epochs") and val == "1e9":
            val = "7"                      # a valid run, but a small one
        argv += [opt, val]
    try:
        code = main(argv)
    except SystemExit as e:                # argparse: an unknown option or a value of no type
        code = e.code
    out = capsys.readouterr()
    if code == 0:
        return
    assert code in (1, 2)
    lines = out.err.strip().splitlines()
    assert len(lines) == 1 and "error" in lines[0] and "Traceback" not in out.err, out.err
    import shutil
    shutil.rmtree(tmp_path / "r", ignore_errors=True)
