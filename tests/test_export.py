"""bptt.export: ONNX files run in onnxruntime against bptt's forward (float32, 1e-5 relative), the
torch twins against bptt (float64, 1e-12) and back, run directories, and the errors."""

import json
import os
import subprocess
import sys

import numpy as np
import pytest
import torch

import bptt
from bptt import checkpoint
from bptt.export import export_run, from_torch, to_onnx, to_torch
from bptt.model import HEADS, INPUTS, Model
from conftest import rel_err, seed_of

try:
    import onnx
    import onnxruntime as ort
except ImportError:
    onnx = ort = None
needs_onnx = pytest.mark.skipif(ort is None, reason="onnx and onnxruntime not installed "
                                                    "(pip install 'bptt[export]')")

V, D, H, O = 11, 6, 5, 3          # vocabulary or features, hidden units, outputs
SIZES = [(1, 1), (7, 3), (16, 2)]  # (T, B): one file at several lengths and batch sizes
CELLS = {"lstm": {}, "gru": {}, "gru_before": {"reset_after": False}, "rnn": {},
         "rnn_relu": {"nonlinearity": "relu"}}


def make_model(cell, inp="linear", head="step", layers=1, bidi=False, dtype=np.float32, **kw):
    kw.setdefault("seed", seed_of(cell, inp, head, layers, bidi))
    return Model(V if inp == "embedding" else D, H, O, cell=cell.split("_")[0], input=inp,
                 embed_size=4, num_layers=layers, bidirectional=bidi, head=head, dtype=dtype,
                 **CELLS[cell], **kw)


def inputs(model, T, B, rng):
    if getattr(model, "input", None) == "embedding":
        return rng.integers(0, V, (T, B))
    return rng.standard_normal((T, B, model.input_size)).astype(model.dtype)


def random_state(layer, B, rng):
    shape = (layer.num_layers * layer.directions, B, layer.hidden_size)
    h = rng.standard_normal(shape).astype(layer.dtype)
    return (h, 0.5 * h[::-1].copy()) if isinstance(layer, bptt.LSTM) else h


def session(proto):
    return ort.InferenceSession(proto.SerializeToString(), providers=["CPUExecutionProvider"])


def feeds(layer, x, state=None, lengths=None):
    f = {"x": x}
    if state is not None:
        if isinstance(layer, bptt.LSTM):
            f["h0"], f["c0"] = state
        else:
            f["h0"] = state
    if lengths is not None:
        f["lengths"] = np.asarray(lengths, np.int64)
    return f


def check_onnx(model, proto, rng, lengths=False, state=True):
    """The exported graph at every size of SIZES equals bptt's forward (out and final state)."""
    sess = session(proto)
    layer = model.rnn if isinstance(model, Model) else model
    for T, B in SIZES:
        x = inputs(model, T, B, rng)
        s0 = random_state(layer, B, rng) if state else None
        lens = rng.integers(1, T + 1, B) if lengths else None
        if lengths and B > 1:
            lens[0] = T   # one full-length sequence, so that T is as given
        out, s_n = model.forward(x, s0, lens)[:2]
        got = sess.run(None, feeds(layer, x, s0, lens))
        want = [out] + (list(s_n) if isinstance(s_n, tuple) else [s_n])
        assert len(got) == len(want)
        for g, w in zip(got, want):
            assert rel_err(g, w) < 1e-5, (T, B)


# ---------------------------------------------------------------------- ONNX: models
@needs_onnx
@pytest.mark.parametrize("bidi", [False, True])
@pytest.mark.parametrize("layers", [1, 2])
@pytest.mark.parametrize("head", HEADS)
@pytest.mark.parametrize("inp", INPUTS)
@pytest.mark.parametrize("cell", ["lstm", "gru", "rnn"])
def test_model_onnx_matches_bptt(cell, inp, head, layers, bidi):
    m = make_model(cell, inp, head, layers, bidi)
    check_onnx(m, to_onnx(m), np.random.default_rng(seed_of(cell, inp, head, layers, bidi)))


@needs_onnx
@pytest.mark.parametrize("bidi", [False, True])
@pytest.mark.parametrize("layers", [1, 2])
@pytest.mark.parametrize("head", HEADS)
@pytest.mark.parametrize("cell", list(CELLS))
def test_model_onnx_with_lengths(cell, head, layers, bidi):
    """Ragged batches: sequence_lens in the recurrent operators, a mask in the pooling."""
    m = make_model(cell, "embedding", head, layers, bidi)
    check_onnx(m, to_onnx(m, lengths=True), np.random.default_rng(seed_of(cell, head, layers)),
               lengths=True)


@needs_onnx
@pytest.mark.parametrize("cell", list(CELLS))
def test_cell_variants_and_no_bias(cell):
    for bias in (True, False):
        m = make_model(cell, "identity", "step", 2, True, bias=bias)
        check_onnx(m, to_onnx(m), np.random.default_rng(1))


@needs_onnx
def test_without_initial_state_inputs_start_from_zeros(tmp_path):
    m = make_model("lstm", "embedding", "meanmax", 2, True)
    path = tmp_path / "m.onnx"
    proto = to_onnx(m, path, initial_state=False)
    assert [i.name for i in proto.graph.input] == ["x"]
    assert [o.name for o in proto.graph.output] == ["out", "h_n", "c_n"]
    assert onnx.load(str(path)) == proto
    check_onnx(m, proto, np.random.default_rng(2), state=False)


@needs_onnx
def test_graph_names_axes_and_metadata():
    m = make_model("gru", "embedding", "step", 2, True)
    proto = to_onnx(m, lengths=True)
    ins = {i.name: i for i in proto.graph.input}
    assert list(ins) == ["x", "h0", "lengths"]
    dims = [d.dim_param or d.dim_value for d in ins["h0"].type.tensor_type.shape.dim]
    assert dims == [4, "B", H]
    out = proto.graph.output[0].type.tensor_type.shape.dim
    assert [d.dim_param or d.dim_value for d in out] == ["T", "B", O]
    assert proto.opset_import[0].version == 17
    props = {p.key: p.value for p in proto.metadata_props}
    assert json.loads(props["bptt.config"]) == json.loads(json.dumps(m.config))
    ops = {n.op_type for n in proto.graph.node}
    assert "GRU" in ops and "Gather" in ops
    gru = next(n for n in proto.graph.node if n.op_type == "GRU")
    attrs = {a.name: onnx.helper.get_attribute_value(a) for a in gru.attribute}
    assert attrs["linear_before_reset"] == 1 and attrs["direction"] == b"bidirectional"


@needs_onnx
@pytest.mark.parametrize("opset", [14, 18, "newest"])
def test_opsets(opset):
    """Reduce* take their axes as an attribute before opset 18 and as an input from 18 on."""
    opset = onnx.defs.onnx_opset_version() if opset == "newest" else opset
    m = make_model("lstm", "linear", "meanmax", 1, True)
    check_onnx(m, to_onnx(m, opset=opset, lengths=True), np.random.default_rng(3), lengths=True)
    check_onnx(m, to_onnx(m, opset=opset), np.random.default_rng(4))


@needs_onnx
def test_float64_model_exports_float32():
    m = make_model("gru", "linear", "last", 2, True, dtype=np.float64)
    proto = to_onnx(m)
    assert all(t.data_type == onnx.TensorProto.FLOAT for t in proto.graph.initializer
               if t.name.startswith(("rnn.", "head.", "proj.")))
    sess, rng = session(proto), np.random.default_rng(5)
    x = rng.standard_normal((9, 4, D))
    h0 = rng.standard_normal((4, 4, H))
    out, h_n = m.forward(x, h0)[:2]
    got = sess.run(None, {"x": x.astype(np.float32), "h0": h0.astype(np.float32)})
    assert rel_err(got[0], out) < 1e-5 and rel_err(got[1], h_n) < 1e-5


# ---------------------------------------------------------------------- ONNX: layers
@needs_onnx
@pytest.mark.parametrize("batch_first", [False, True])
@pytest.mark.parametrize("bidi", [False, True])
@pytest.mark.parametrize("layers", [1, 3])
@pytest.mark.parametrize("cell", list(CELLS))
def test_layer_onnx_matches_bptt(cell, layers, bidi, batch_first):
    cls = {"lstm": bptt.LSTM, "gru": bptt.GRU, "rnn": bptt.RNN}[cell.split("_")[0]]
    layer = cls(D, H, layers, bidirectional=bidi, batch_first=batch_first,
                seed=seed_of(cell, layers, bidi), **CELLS[cell])
    rng = np.random.default_rng(seed_of(cell, layers, bidi, batch_first))
    sess = session(to_onnx(layer, lengths=not batch_first))
    for T, B in SIZES:
        x = rng.standard_normal((B, T, D) if batch_first else (T, B, D)).astype(np.float32)
        s0 = random_state(layer, B, rng)
        lens = None if batch_first else rng.integers(1, T + 1, B)
        y, s_n = layer.forward(x, s0, lens)[:2]
        got = sess.run(None, feeds(layer, x, s0, lens))
        want = [y] + (list(s_n) if isinstance(s_n, tuple) else [s_n])
        for g, w in zip(got, want, strict=True):
            assert rel_err(g, w) < 1e-5


# ---------------------------------------------------------------------- torch
@pytest.mark.parametrize("bidi", [False, True])
@pytest.mark.parametrize("layers", [1, 2])
@pytest.mark.parametrize("head", HEADS)
@pytest.mark.parametrize("inp", INPUTS)
@pytest.mark.parametrize("cell", ["lstm", "gru", "rnn_relu"])
def test_torch_model_round_trip(cell, inp, head, layers, bidi):
    m = make_model(cell, inp, head, layers, bidi, dtype=np.float64)
    module = to_torch(m)
    assert isinstance(module.rnn, {"l": torch.nn.LSTM, "g": torch.nn.GRU,
                                   "r": torch.nn.RNN}[cell[0]])
    assert set(module.state_dict()) == set(m.params)
    rng = np.random.default_rng(seed_of(cell, inp, head))
    T, B = 8, 3
    x = inputs(m, T, B, rng)
    s0 = random_state(m.rnn, B, rng)
    for lens in (None, np.array([T, 2, 5])):
        out, s_n = m.forward(x, s0, lens)[:2]
        ts0 = tuple(map(torch.from_numpy, s0)) if cell == "lstm" else torch.from_numpy(s0)
        with torch.no_grad():
            t_out, t_s = module(torch.from_numpy(x), ts0,
                                None if lens is None else torch.from_numpy(lens))
        assert rel_err(t_out.numpy(), out) < 1e-12
        for a, b in zip(t_s if cell == "lstm" else (t_s,), s_n if cell == "lstm" else (s_n,)):
            assert rel_err(a.numpy(), b) < 1e-12
    back = from_torch(module)
    assert back.config == m.config
    assert all(np.array_equal(back.params[k], m.params[k]) for k in m.params)
    assert back.params["head.weight"].dtype == np.float64


@pytest.mark.parametrize("cell", list(CELLS.keys() - {"gru_before"}))
def test_torch_layer_round_trip(cell):
    cls = {"lstm": bptt.LSTM, "gru": bptt.GRU, "rnn": bptt.RNN}[cell.split("_")[0]]
    layer = cls(D, H, 2, bidirectional=True, batch_first=True, dtype=np.float64, seed=7,
                **CELLS[cell])
    module = to_torch(layer)
    assert type(module) is getattr(torch.nn, cls.__name__) and module.batch_first
    x = np.random.default_rng(8).standard_normal((3, 6, D))
    y = layer.forward(x)[0]
    with torch.no_grad():
        t_y = module(torch.from_numpy(x))[0].numpy()
    assert rel_err(t_y, y) < 1e-12
    back = from_torch(module)
    assert type(back) is cls and back.batch_first and back.bidirectional
    assert back.state_dict().keys() == layer.params.keys()
    assert all(np.array_equal(back.params[k], v) for k, v in layer.params.items())
    # float32 stays float32
    assert from_torch(to_torch(cls(D, H, **CELLS[cell]))).dtype == np.float32


# ---------------------------------------------------------------------- run directories
def write_run(folder, model, fmt="bptt-run-2", best=None, **meta):
    arrays = {f"model/{k}": v for k, v in model.params.items()}
    if best is not None:
        arrays.update({f"best/{k}": v for k, v in best.params.items()})
    checkpoint.save(os.path.join(folder, "checkpoint.npz"), arrays,
                    {"format": fmt, "model": model.config, "step": 3, **meta})


@needs_onnx
def test_export_run_single_model_prefers_best(tmp_path):
    m = make_model("lstm", "embedding", "step", 2)
    best = make_model("lstm", "embedding", "step", 2)
    for v in best.params.values():
        v *= 0.5
    write_run(tmp_path / "run", m, best=best, command="train charlm",
              app={"vocab": '{"chars": "abc"}'})
    paths = export_run(tmp_path / "run", tmp_path / "m.onnx")
    assert paths == [str(tmp_path / "m.onnx")]
    proto = onnx.load(paths[0])
    props = {p.key: p.value for p in proto.metadata_props}
    assert props["bptt.vocab"] == '{"chars": "abc"}' and props["bptt.step"] == "3"
    assert props["bptt.command"] == "train charlm"
    check_onnx(best, proto, np.random.default_rng(9))
    last = export_run(tmp_path / "run" / "checkpoint.npz", tmp_path / "last.onnx", best=False)
    check_onnx(m, onnx.load(last[0]), np.random.default_rng(10))


@needs_onnx
@pytest.mark.parametrize("fmt", ["bptt-checkpoint-1", "bptt-task-run-1", "bptt-supervised-1"])
def test_export_run_earlier_formats(tmp_path, fmt):
    """The char-LM, task and supervised checkpoints before the one trainer held ``model`` too."""
    m = make_model("gru", "identity", "last", 1, True)
    write_run(tmp_path, m, fmt, config={"hidden": H})
    check_onnx(m, onnx.load(export_run(tmp_path, tmp_path / "m.onnx")[0]),
               np.random.default_rng(11))


@needs_onnx
def test_export_run_ensemble_and_folds(tmp_path):
    """Sentiment's members (seed<N>/) and folds (fold<j>/seed<N>/): one file each, with the
    vocabulary written beside them."""
    members = {}
    for rel in ("seed10", "seed11", os.path.join("fold0", "seed10")):
        members[rel] = make_model("lstm", "embedding", "mean", 1, True, seed=len(rel))
        write_run(tmp_path / "run" / rel, members[rel], "bptt-supervised-1")
    checkpoint.write_text(tmp_path / "run" / "vocab.json", '{"words": ["a"]}')
    paths = export_run(tmp_path / "run", tmp_path / "out" / "sent.onnx", opset=18)
    names = [os.path.basename(p) for p in paths]
    assert names == ["sent-fold0-seed10.onnx", "sent-seed10.onnx", "sent-seed11.onnx"]
    for rel, path in zip(sorted(members), paths):
        proto = onnx.load(path)
        assert {p.key: p.value for p in proto.metadata_props}["bptt.vocab"] == \
            '{"words": ["a"]}'
        check_onnx(members[rel], proto, np.random.default_rng(12))


def test_export_run_errors(tmp_path):
    with pytest.raises(checkpoint.CheckpointError, match="no run directory"):
        export_run(tmp_path / "nothing", tmp_path / "m.onnx")
    with pytest.raises(checkpoint.CheckpointError, match="no checkpoint.npz"):
        export_run(tmp_path, tmp_path / "m.onnx")
    checkpoint.save(tmp_path / "checkpoint.npz", {}, {"format": "other"})
    with pytest.raises(checkpoint.CheckpointError, match="no model configuration"):
        export_run(tmp_path, tmp_path / "m.onnx")


# ---------------------------------------------------------------------- errors
@needs_onnx
@pytest.mark.parametrize("opset", [13, 10_000, "17", True])
def test_to_onnx_rejects_opsets(opset):
    with pytest.raises(ValueError, match="expected opset an integer in 14"):
        to_onnx(make_model("rnn"), opset=opset)


@needs_onnx
def test_to_onnx_rejects_other_objects():
    with pytest.raises(TypeError, match="expected a bptt.model.Model or a bptt.RNN"):
        to_onnx(torch.nn.LSTM(2, 3))
    with pytest.raises(TypeError, match="expected lengths a bool"):
        to_onnx(make_model("rnn"), lengths=1)


def test_torch_refusals():
    with pytest.raises(ValueError, match="reset_after=False .* has no torch twin"):
        to_torch(make_model("gru_before"))
    with pytest.raises(ValueError, match="reset_after=False"):
        to_torch(bptt.GRU(2, 3, reset_after=False))
    with pytest.raises(TypeError, match="expected a bptt.model.Model"):
        to_torch(torch.nn.GRU(2, 3))
    with pytest.raises(ValueError, match="expected torch.nn.RNN, LSTM or GRU"):
        from_torch(torch.nn.Linear(2, 3))
    with pytest.raises(ValueError, match="proj_size=2 has no bptt twin"):
        from_torch(torch.nn.LSTM(2, 3, proj_size=2))
    with pytest.raises(ValueError, match="all float32 or all float64"):
        from_torch(torch.nn.LSTM(2, 3).half())
    with pytest.raises(TypeError, match="expected a torch.nn.Module"):
        from_torch(bptt.LSTM(2, 3))


def test_python_dash_m_runs_the_command():
    done = subprocess.run([sys.executable, "-m", "bptt", "--version"], check=False,
                          capture_output=True, text=True, timeout=60)
    assert done.returncode == 0 and done.stdout.strip() == f"bptt {bptt.__version__}"
