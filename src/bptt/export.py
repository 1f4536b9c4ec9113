"""Models out of bptt and back: ONNX files for inference, and torch modules.

``to_onnx(model, path)`` writes a ``bptt.model.Model`` or a bare layer (``bptt.RNN``, ``LSTM``,
``GRU``) as an ONNX graph built from ONNX's own ``RNN``, ``LSTM`` and ``GRU`` operators, one per
layer, both directions in one operator (``direction="bidirectional"``). The weights are moved into
ONNX's layout: ``W`` (dirs, G*H, D), ``R`` (dirs, G*H, H), ``B`` (dirs, 2*G*H) = [Wb; Rb], with the
gate chunks reordered, LSTM i,f,g,o -> i,o,f,c and GRU r,z,n -> z,r,h. A GRU with
``reset_after=True`` (PyTorch's) is ``linear_before_reset=1``, ``reset_after=False`` (Cho et al.)
is ``linear_before_reset=0``; ONNX's equations are these two variants exactly.

The graph (T and B are dynamic axes; one file runs at any length and batch size):

================  =================================  ==============================================
name              shape, type                        what
================  =================================  ==============================================
``x``             (T, B) int64                       token ids (a model with an ``embedding`` input)
``x``             (T, B, D) float32                  features (``linear`` or ``identity`` input, a
                                                     layer; (B, T, D) for a ``batch_first`` layer)
``h0``, ``c0``    (num_layers*dirs, B, H) float32    initial state (``c0``: LSTM); absent with
                                                     ``initial_state=False``: zeros
``lengths``       (B,) int64, each in 1..T           only with ``lengths=True``: PyTorch's packed
                                                     sequences, as ``forward(..., lengths)``
``out``           (T, B, O) or (B, O) float32        the model's output (``step`` head: every step)
``y``             (T, B, dirs*H) float32             a layer's output (zero past each length)
``h_n``, ``c_n``  (num_layers*dirs, B, H) float32    final state (with lengths: each sequence's own)
================  =================================  ==============================================

Every input kind (``embedding``: a Gather; ``linear``: MatMul + Add; ``identity``) and every head
is supported, with and without lengths: ``step`` (MatMul + Add on every step; with lengths the
padded steps give the bias, as in bptt), ``last`` (the top layer's final states, directions
concatenated), ``mean``, ``max`` and ``meanmax`` (pooled over all T steps, or with lengths over each
sequence's valid steps, through a mask built from ``lengths`` in the graph). Dropout acts only in
training and is left out. The file holds float32 weights whatever the model's dtype:
onnxruntime's recurrent operators run in float32 only.

``export_run(run_dir, onnx_path)`` does the same for a run directory's ``checkpoint.npz``.

``to_torch`` and ``from_torch`` move a model or layer to ``torch.nn`` and back with the same
parameter names, so ``state_dict`` crosses unchanged; torch is imported only when they are called.
"""

import json
import os

import numpy as np

from . import __version__, checkpoint
from .layers import GRU, LSTM, RNN, RecurrentLayer
from .model import Model

DEFAULT_OPSET = 17
MIN_OPSET = 14          # the recurrent operators' latest version (14) and axes given as inputs
# torch's gate chunks in ONNX's order: LSTM i,f,g,o -> i,o,f,c; GRU r,z,n -> z,r,h
ONNX_OPS = {LSTM: ("LSTM", [0, 3, 1, 2]), GRU: ("GRU", [1, 0, 2]), RNN: ("RNN", [0])}
ACTIVATIONS = {"tanh": "Tanh", "relu": "Relu"}


# ====================================================================== ONNX
def to_onnx(model, path=None, *, opset=DEFAULT_OPSET, initial_state=True, lengths=False,
            metadata=None):
    """Export ``model`` (a ``bptt.model.Model`` or a ``bptt.RNN``/``LSTM``/``GRU`` layer) to ONNX;
    return the ``onnx.ModelProto``, also written to ``path`` unless it is None.

    ``opset`` (default 17) may be 14 up to the installed onnx package's newest. ``initial_state``
    makes ``h0`` (and ``c0``) inputs; ``lengths`` adds a ``lengths`` input for ragged batches.
    ``metadata`` (str -> str) goes into the file's ``metadata_props``, beside ``bptt.config``
    (the model's configuration as JSON) and ``bptt.inputs``/``bptt.outputs``.
    """
    onnx = _import("onnx", "to_onnx")
    if not isinstance(model, (Model, RecurrentLayer)):
        raise TypeError(f"to_onnx: expected a bptt.model.Model or a bptt.RNN, LSTM or GRU layer, "
                        f"got {type(model).__name__}")
    max_opset = onnx.defs.onnx_opset_version()
    if isinstance(opset, bool) or not isinstance(opset, (int, np.integer)) \
            or not MIN_OPSET <= opset <= max_opset:
        raise ValueError(f"to_onnx: expected opset an integer in {MIN_OPSET}..{max_opset} (the "
                         f"installed onnx {onnx.__version__}), got {opset!r}")
    for name, flag in (("initial_state", initial_state), ("lengths", lengths)):
        if not isinstance(flag, bool):
            raise TypeError(f"to_onnx: expected {name} a bool, got {flag!r}")
    g = _Graph(onnx, int(opset))
    layer = model.rnn if isinstance(model, Model) else model
    _check_layer(layer)
    x = _model_input(g, model)
    h0 = c0 = seq_lens = None
    K, H = layer.num_layers * layer.directions, layer.hidden_size
    if initial_state:
        h0 = g.input("h0", onnx.TensorProto.FLOAT, [K, "B", H])
        if isinstance(layer, LSTM):
            c0 = g.input("c0", onnx.TensorProto.FLOAT, [K, "B", H])
    if lengths:
        lens64 = g.input("lengths", onnx.TensorProto.INT64, ["B"])
        seq_lens = g.op("Cast", [lens64], to=onnx.TensorProto.INT32)
    y, hs, cs = _stack(g, layer, x, h0, c0, seq_lens)
    if isinstance(model, Model):
        out = _head(g, model, y, hs[-1], lens64 if lengths else None)
        g.output(g.op("Identity", [out], out="out"), onnx.TensorProto.FLOAT,
                 ["T", "B", model.output_size] if model.head == "step" else ["B", model.output_size])
    else:
        if layer.batch_first:
            y = g.op("Transpose", [y], perm=[1, 0, 2])
        g.output(g.op("Identity", [y], out="y"), onnx.TensorProto.FLOAT,
                 ["B", "T", layer.directions * H] if layer.batch_first
                 else ["T", "B", layer.directions * H])
    g.output(_concat_states(g, hs, "h_n"), onnx.TensorProto.FLOAT, [K, "B", H])
    if isinstance(layer, LSTM):
        g.output(_concat_states(g, cs, "c_n"), onnx.TensorProto.FLOAT, [K, "B", H])
    config = model.config if isinstance(model, Model) else _layer_config(layer)
    props = {"bptt.config": json.dumps(config, sort_keys=True, default=str),
             "bptt.inputs": ", ".join(i.name for i in g.inputs),
             "bptt.outputs": ", ".join(o.name for o in g.outputs), **(metadata or {})}
    proto = g.model(type(model).__name__, props)
    onnx.checker.check_model(proto)
    if path is not None:
        path = os.fspath(path)
        checkpoint.write_atomic(path, lambda f: f.write(proto.SerializeToString()), ".onnx")
    return proto


class _Graph:
    """Nodes, initializers, inputs and outputs of one ONNX graph, with unique names."""

    def __init__(self, onnx, opset):
        self.onnx, self.opset = onnx, opset
        self.nodes, self.inits, self.inputs, self.outputs = [], [], [], []
        self.count = 0

    def input(self, name, elem_type, shape):
        self.inputs.append(self.onnx.helper.make_tensor_value_info(name, elem_type, shape))
        return name

    def output(self, name, elem_type, shape):
        self.outputs.append(self.onnx.helper.make_tensor_value_info(name, elem_type, shape))

    def const(self, name, array):
        self.inits.append(self.onnx.numpy_helper.from_array(np.ascontiguousarray(array), name))
        return name

    def ints(self, values):
        """An int64 constant (shapes, axes, indices)."""
        self.count += 1
        return self.const(f"const_{self.count}", np.asarray(values, np.int64))

    def op(self, op_type, inputs, n_out=1, out=None, **attrs):
        """Add a node; return its output name (a list of names when ``n_out`` > 1)."""
        self.count += 1
        outs = [out] if out else [f"{op_type}_{self.count}_{i}" for i in range(n_out)]
        while inputs and inputs[-1] == "":          # omitted optional inputs at the end
            inputs = inputs[:-1]
        self.nodes.append(self.onnx.helper.make_node(op_type, inputs, outs,
                                                     name=f"{op_type}_{self.count}", **attrs))
        return outs if n_out > 1 else outs[0]

    def reduce(self, op_type, x, axis):
        """Reduce* over one axis, dropping it (axes an attribute before opset 18, except Sum)."""
        if op_type == "ReduceSum" or self.opset >= 18:
            return self.op(op_type, [x, self.ints([axis])], keepdims=0)
        return self.op(op_type, [x], axes=[axis], keepdims=0)

    def model(self, name, props):
        helper = self.onnx.helper
        graph = helper.make_graph(self.nodes, f"bptt_{name}", self.inputs, self.outputs,
                                  self.inits)
        opsets = [helper.make_opsetid("", self.opset)]
        proto = helper.make_model(graph, opset_imports=opsets, producer_name="bptt",
                                  producer_version=__version__,
                                  ir_version=helper.find_min_ir_version_for(opsets))
        helper.set_model_props(proto, props)
        return proto


def _check_layer(layer):
    if type(layer) not in ONNX_OPS:
        raise TypeError(f"to_onnx: expected the stack to be bptt.RNN, LSTM or GRU, got "
                        f"{type(layer).__name__}")


def _model_input(g, model):
    """The graph's input x and what the stack reads: token ids through a Gather, features
    through MatMul + Add (``linear``), or as they are."""
    f32 = g.onnx.TensorProto.FLOAT
    if isinstance(model, RecurrentLayer):
        shape = ["B", "T", model.input_size] if model.batch_first else \
            ["T", "B", model.input_size]
        x = g.input("x", f32, shape)
        return g.op("Transpose", [x], perm=[1, 0, 2]) if model.batch_first else x
    if model.input == "embedding":
        x = g.input("x", g.onnx.TensorProto.INT64, ["T", "B"])
        E = g.const("embedding.weight", _f32(model.params["embedding.weight"]))
        return g.op("Gather", [E, x], axis=0)                          # (T, B, E)
    x = g.input("x", f32, ["T", "B", model.input_size])
    if model.input == "identity":
        return x
    return _linear(g, x, model.params["proj.weight"], model.params["proj.bias"], "proj")


def _linear(g, x, W, b, name):
    """x W^T + b over the last axis of x."""
    Wt = g.const(f"{name}.weight_T", _f32(W.T))
    return g.op("Add", [g.op("MatMul", [x, Wt]), g.const(f"{name}.bias", _f32(b))])


def _stack(g, layer, x, h0, c0, seq_lens):
    """One ONNX recurrent operator per layer; return y (T, B, dirs*H) and each layer's final
    h (and c) of shape (dirs, B, H)."""
    op_type, order = ONNX_OPS[type(layer)]
    dirs, H = layer.directions, layer.hidden_size
    attrs = {"hidden_size": H, "direction": "bidirectional" if dirs == 2 else "forward"}
    if isinstance(layer, GRU):
        attrs["linear_before_reset"] = int(layer.reset_after)
    if isinstance(layer, RNN):
        attrs["activations"] = [ACTIVATIONS[layer.nonlinearity]] * dirs
    hs, cs = [], []
    for k in range(layer.num_layers):
        W, R, B = _onnx_weights(layer, k, order)
        inputs = [x, g.const(f"rnn.l{k}.W", W), g.const(f"rnn.l{k}.R", R),
                  "" if B is None else g.const(f"rnn.l{k}.B", B), seq_lens or "",
                  _layer_state(g, h0, k, layer), _layer_state(g, c0, k, layer)]
        outs = g.op(op_type, inputs, n_out=3 if isinstance(layer, LSTM) else 2, **attrs)
        if dirs == 1:
            x = g.op("Squeeze", [outs[0], g.ints([1])])                      # (T, B, H)
        else:  # (T, 2, B, H) -> (T, B, 2, H) -> (T, B, 2H): forward first, as bptt and torch
            x = g.op("Reshape", [g.op("Transpose", [outs[0]], perm=[0, 2, 1, 3]),
                                 g.ints([0, 0, -1])])
        hs.append(outs[1])
        if isinstance(layer, LSTM):
            cs.append(outs[2])
    return x, hs, cs


def _onnx_weights(layer, k, order):
    """Layer k's W (dirs, G*H, D), R (dirs, G*H, H) and B (dirs, 2*G*H) in ONNX's gate order;
    B is None for a layer without biases."""
    G, H = layer.gates, layer.hidden_size

    def reorder(a):  # the G chunks of H rows, in ONNX's order
        return a.reshape((G, H) + a.shape[1:])[order].reshape(a.shape)

    W, R, B = [], [], []
    for d in range(layer.directions):
        p = layer._cell_weights(k, d)
        W.append(reorder(p["weight_ih"]))
        R.append(reorder(p["weight_hh"]))
        if layer.bias:
            B.append(np.concatenate([reorder(p["bias_ih"]), reorder(p["bias_hh"])]))
    return _f32(np.stack(W)), _f32(np.stack(R)), (_f32(np.stack(B)) if B else None)


def _layer_state(g, state, k, layer):
    """Layer k's rows (dirs, B, H) of a (num_layers*dirs, B, H) state input ('' for none)."""
    if state is None:
        return ""
    if layer.num_layers == 1:
        return state
    dirs = layer.directions
    return g.op("Slice", [state, g.ints([k * dirs]), g.ints([(k + 1) * dirs]), g.ints([0])])


def _concat_states(g, states, name):
    if len(states) == 1:
        return g.op("Identity", states, out=name)
    return g.op("Concat", states, out=name, axis=0)


def _head(g, model, y, h_top, lengths):
    """The head's features from y (T, B, dirs*H) or the top layer's final h (dirs, B, H), then
    the linear map."""
    if model.head == "step":
        feat = y
    elif model.head == "last":  # (dirs, B, H) -> (B, dirs, H) -> (B, dirs*H)
        feat = g.op("Reshape", [g.op("Transpose", [h_top], perm=[1, 0, 2]), g.ints([0, -1])])
    else:
        feat = _pool(g, model.head, y, lengths)
    return _linear(g, feat, model.params["head.weight"], model.params["head.bias"], "head")


def _pool(g, head, y, lengths):
    """mean, max or [mean, max] over time: over all T steps, or with lengths over the valid
    steps (a mask (T, B, 1) from the lengths; padded steps never win the max)."""
    parts = []
    if lengths is None:
        if head in ("mean", "meanmax"):
            parts.append(g.reduce("ReduceMean", y, 0))
        if head in ("max", "meanmax"):
            parts.append(g.reduce("ReduceMax", y, 0))
    else:
        T = g.op("Gather", [g.op("Shape", [y]), g.ints(0)], axis=0)      # a scalar
        steps = g.op("Range", [g.ints(0), T, g.ints(1)])                   # (T,)
        valid = g.op("Less", [g.op("Unsqueeze", [steps, g.ints([1])]),
                              g.op("Unsqueeze", [lengths, g.ints([0])])])  # (T, B)
        valid = g.op("Unsqueeze", [valid, g.ints([2])])                    # (T, B, 1)
        if head in ("mean", "meanmax"):
            zero = g.const("pool.zero", np.zeros((), np.float32))
            total = g.reduce("ReduceSum", g.op("Where", [valid, y, zero]), 0)  # (B, F)
            count = g.op("Unsqueeze", [g.op("Cast", [lengths], to=g.onnx.TensorProto.FLOAT),
                                       g.ints([1])])                       # (B, 1)
            parts.append(g.op("Div", [total, count]))
        if head in ("max", "meanmax"):
            low = g.const("pool.minus_inf", np.array(-np.inf, np.float32))
            parts.append(g.reduce("ReduceMax", g.op("Where", [valid, y, low]), 0))
    return parts[0] if len(parts) == 1 else g.op("Concat", parts, axis=1)


def _layer_config(layer):
    config = dict(cell=type(layer).__name__.lower(), input_size=layer.input_size,
                  hidden_size=layer.hidden_size, num_layers=layer.num_layers, bias=layer.bias,
                  batch_first=layer.batch_first, bidirectional=layer.bidirectional,
                  dtype=layer.dtype.name)
    if isinstance(layer, RNN):
        config["nonlinearity"] = layer.nonlinearity
    if isinstance(layer, GRU):
        config["reset_after"] = layer.reset_after
    return config


def _f32(a):
    return np.ascontiguousarray(a, dtype=np.float32)


def _import(name, who):
    try:
        return __import__(name)
    except ImportError:
        raise ImportError(f"{who}: needs the {name} package (pip install 'bptt[export]')") \
            from None


# ====================================================================== run directories
def export_run(run_dir, onnx_path, *, opset=DEFAULT_OPSET, best=True, initial_state=True,
               lengths=False):
    """Export the model(s) of a run directory to ONNX; return the paths written.

    Every run of bptt writes ``checkpoint.npz`` with the model's parameters as arrays
    ``model/<name>`` (``best/<name>`` too where the run kept its best evaluation) and the
    model's constructor arguments in the metadata under ``"model"`` (``Model.config``): the
    char-LM, the tasks, and the supervised applications (vowels, digits, forecast, sentiment)
    alike. ``best`` picks the best evaluation's parameters where the run kept them, else the
    last ones.

    ``run_dir`` is a run directory with ``checkpoint.npz`` (written to ``onnx_path``), a
    checkpoint file itself, or a directory whose runs lie below it: a sentiment ensemble
    (``seed<N>/``), its cross-validation (``fold<j>/seed<N>/``) or vowels with several seeds.
    Then every model is exported, each to ``onnx_path`` with its relative folder appended to
    the file name: ``model.onnx`` -> ``model-seed10.onnx``, ``model-fold0-seed10.onnx``.
    The metadata of each file holds the checkpoint's format, command and step and, where the run has
    one, its vocabulary (``bptt.vocab``: the checkpoint's own, ``vocab`` or ``app.vocab`` in
    its metadata as the char-LM keeps it, or a ``vocab.json`` beside it or in a folder above it
    up to ``run_dir``, as sentiment writes it).
    """
    run_dir, onnx_path = os.fspath(run_dir), os.fspath(onnx_path)
    if os.path.isfile(run_dir):
        found = [("", run_dir)]
    elif os.path.isfile(os.path.join(run_dir, "checkpoint.npz")):
        found = [("", os.path.join(run_dir, "checkpoint.npz"))]
    elif os.path.isdir(run_dir):
        found = sorted((os.path.relpath(folder, run_dir), os.path.join(folder, "checkpoint.npz"))
                       for folder, _, files in os.walk(run_dir) if "checkpoint.npz" in files)
    else:
        raise checkpoint.CheckpointError(f"export: no run directory or checkpoint at {run_dir}")
    if not found:
        raise checkpoint.CheckpointError(f"export: no checkpoint.npz in {run_dir} or below it")
    stem, ext = os.path.splitext(onnx_path)
    written = []
    for rel, ckpt in found:
        model, meta = load_checkpoint_model(ckpt, best=best)
        props = {"bptt.checkpoint_format": str(meta.get("format")),
                 "bptt.command": str(meta.get("command")),
                 "bptt.step": json.dumps(meta.get("step"))}
        vocab = _vocab(meta, os.path.dirname(ckpt), run_dir)
        if vocab is not None:
            props["bptt.vocab"] = vocab
        out = onnx_path if not rel else f"{stem}-{rel.replace(os.sep, '-')}{ext or '.onnx'}"
        to_onnx(model, out, opset=opset, initial_state=initial_state, lengths=lengths,
                metadata=props)
        written.append(out)
    return written


def load_checkpoint_model(path, *, best=True):
    """``(Model, meta)`` from a run's ``checkpoint.npz``: built from ``meta["model"]``, with the
    ``best/`` parameters where present and ``best``, else the ``model/`` ones."""
    arrays, meta = checkpoint.load(path)
    config = meta.get("model")
    if not isinstance(config, dict):
        raise checkpoint.CheckpointError(
            f"export: {path} holds no model configuration (metadata 'model'; format "
            f"{meta.get('format')!r}); it was not written by a bptt run")
    params = {k[5:]: v for k, v in arrays.items() if k.startswith("best/")} if best else {}
    params = params or {k[6:]: v for k, v in arrays.items() if k.startswith("model/")}
    # the backend only picks the training loops; the reference always builds
    if "backend" in config:
        config = {**config, "backend": "numpy"}
    model = Model(**config)
    model.load_state_dict(params)
    return model, meta


def _vocab(meta, folder, run_dir):
    app = meta.get("app") if isinstance(meta.get("app"), dict) else {}
    for v in (meta.get("vocab"), app.get("vocab")):
        if v is not None:
            return v if isinstance(v, str) else json.dumps(v)
    top = os.path.abspath(run_dir)
    folder = os.path.abspath(folder)
    while True:
        path = os.path.join(folder, "vocab.json")
        if os.path.isfile(path):
            with open(path, encoding="utf-8") as f:
                return f.read()
        if folder == top or os.path.dirname(folder) == folder or not folder.startswith(top):
            return None
        folder = os.path.dirname(folder)


# ====================================================================== torch
_TORCH_CELLS = {RNN: "RNN", LSTM: "LSTM", GRU: "GRU"}


def to_torch(model):
    """The ``torch.nn.Module`` twin of ``model``, same parameter names and values (and dtype).

    A layer gives ``torch.nn.RNN``, ``LSTM`` or ``GRU``. A ``Model`` gives a module with
    ``embedding`` (``nn.Embedding``) or ``proj`` (``nn.Linear``), ``rnn`` and ``head``
    (``nn.Linear``) whose ``forward(x, state=None, lengths=None)`` returns ``(out, state_n)``
    as ``Model.forward`` does (lengths through packed sequences); it keeps the model's
    configuration in ``bptt_config``. A GRU with ``reset_after=False`` has no torch twin.
    """
    torch = _import("torch", "to_torch")
    if isinstance(model, RecurrentLayer):
        module = _torch_layer(torch, model, model.input_size, model.batch_first)
    elif isinstance(model, Model):
        _check_layer(model.rnn)
        _refuse_reset_before(model.rnn)
        module = _torch_model_class()(model.config, model.rnn)
    else:
        raise TypeError(f"to_torch: expected a bptt.model.Model or a bptt.RNN, LSTM or GRU "
                        f"layer, got {type(model).__name__}")
    module.to(getattr(torch, model.dtype.name))
    with torch.no_grad():
        params = dict(module.named_parameters())
        missing = sorted(set(model.params) ^ set(params))
        assert not missing, missing
        for k, v in model.params.items():
            params[k].copy_(torch.from_numpy(np.array(v)))
    return module


def _refuse_reset_before(layer):
    if isinstance(layer, GRU) and not layer.reset_after:
        raise ValueError("to_torch: a GRU with reset_after=False (Cho et al.'s reset before the "
                         "product) has no torch twin: torch.nn.GRU applies the reset after it")


def _torch_layer(torch, layer, input_size, batch_first):
    _check_layer(layer)
    _refuse_reset_before(layer)
    options = {}
    if isinstance(layer, RNN):
        options["nonlinearity"] = layer.nonlinearity
    cls = getattr(torch.nn, _TORCH_CELLS[type(layer)])
    return cls(input_size, layer.hidden_size, layer.num_layers, bias=layer.bias,
               batch_first=batch_first, dropout=layer.dropout,
               bidirectional=layer.bidirectional, **options)


_TORCH_MODEL = None


def _torch_model_class():
    """``TorchModel``, defined on first use so that importing bptt never imports torch."""
    global _TORCH_MODEL
    if _TORCH_MODEL is not None:
        return _TORCH_MODEL
    import torch
    from torch.nn.utils.rnn import pack_padded_sequence, pad_packed_sequence

    class TorchModel(torch.nn.Module):
        """A ``bptt.model.Model`` in torch: input layer -> rnn -> head, the same names."""

        def __init__(self, config, layer):
            super().__init__()
            self.bptt_config = dict(config)
            self.input_kind, self.head_kind = config["input"], config["head"]
            if self.input_kind == "embedding":
                self.embedding = torch.nn.Embedding(config["input_size"], layer.input_size)
            elif self.input_kind == "linear":
                self.proj = torch.nn.Linear(config["input_size"], layer.input_size)
            self.rnn = _torch_layer(torch, layer, layer.input_size, False)
            n_feat = layer.hidden_size * layer.directions * (2 if self.head_kind == "meanmax"
                                                               else 1)
            self.head = torch.nn.Linear(n_feat, config["output_size"])

        def forward(self, x, state=None, lengths=None):
            """x (T, B) token ids or (T, B, D) features; return ``(out, state_n)``."""
            if self.input_kind == "embedding":
                x = self.embedding(x)
            elif self.input_kind == "linear":
                x = self.proj(x)
            T, B = x.shape[:2]
            if lengths is None:
                y, state_n = self.rnn(x, state)
            else:
                lengths = torch.as_tensor(lengths).cpu()
                packed = pack_padded_sequence(x, lengths, enforce_sorted=False)
                y, state_n = self.rnn(packed, state)
                y, _ = pad_packed_sequence(y, total_length=T)            # zeros past each length
            if self.head_kind == "step":
                return self.head(y), state_n
            if self.head_kind == "last":
                h = state_n[0] if isinstance(state_n, tuple) else state_n
                dirs = 2 if self.rnn.bidirectional else 1
                return self.head(torch.cat(list(h[-dirs:]), dim=1)), state_n
            counts = (torch.full((B, 1), T) if lengths is None else lengths[:, None]).to(y)
            feats = []
            if self.head_kind in ("mean", "meanmax"):
                feats.append(y.sum(dim=0) / counts)
            if self.head_kind in ("max", "meanmax"):
                if lengths is not None:
                    valid = torch.arange(T)[:, None] < lengths[None, :]
                    y = y.masked_fill(~valid[..., None].to(y.device), float("-inf"))
                feats.append(y.amax(dim=0))
            return self.head(torch.cat(feats, dim=1)), state_n

    _TORCH_MODEL = TorchModel
    return TorchModel


def from_torch(module):
    """The bptt twin of ``module``: a ``Model`` from ``to_torch``'s module (its
    ``bptt_config``), a ``bptt.RNN``/``LSTM``/``GRU`` from ``torch.nn.RNN``/``LSTM``/``GRU``;
    the same parameters, in the module's dtype (float32 or float64)."""
    torch = _import("torch", "from_torch")
    if not isinstance(module, torch.nn.Module):
        raise TypeError(f"from_torch: expected a torch.nn.Module, got {type(module).__name__}")
    state = {k: v.detach().cpu().numpy() for k, v in module.state_dict().items()}
    dtypes = {v.dtype.name for v in state.values()}
    if not dtypes <= {"float32", "float64"} or len(dtypes) != 1:
        raise ValueError(f"from_torch: expected parameters all float32 or all float64, got "
                         f"{', '.join(sorted(dtypes))}")
    dtype = dtypes.pop()
    config = getattr(module, "bptt_config", None)
    if isinstance(config, dict):
        model = Model(**{**config, "dtype": dtype})
        model.load_state_dict(state)
        return model
    kinds = {torch.nn.LSTM: LSTM, torch.nn.GRU: GRU, torch.nn.RNN: RNN}
    cls = kinds.get(type(module))
    if cls is None:
        raise ValueError(f"from_torch: expected torch.nn.RNN, LSTM or GRU, or a module made by "
                         f"bptt.export.to_torch, got {type(module).__name__}")
    if getattr(module, "proj_size", 0):
        raise ValueError(f"from_torch: an LSTM with proj_size={module.proj_size} has no bptt "
                         f"twin (bptt's LSTM has no projection)")
    options = {"nonlinearity": module.nonlinearity} if cls is RNN else {}
    layer = cls(module.input_size, module.hidden_size, module.num_layers, bias=module.bias,
                batch_first=module.batch_first, dropout=module.dropout,
                bidirectional=module.bidirectional, dtype=dtype, **options)
    layer.load_state_dict(state)
    return layer
