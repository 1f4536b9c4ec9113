"""Recurrent layers: cells stacked over layers and directions, with masks and dropout.

``RNN``, ``LSTM`` and ``GRU`` take PyTorch's constructor arguments and parameter layout, so a
``state_dict`` moves between them and ``torch.nn.{RNN, LSTM, GRU}`` unchanged. Their
``forward`` returns a tape, and ``backward`` walks it back through time by hand: no autograd.

Shapes (time-major, as PyTorch's default): x (T, B, D), y (T, B, dirs*H),
h0 and h_n (num_layers*dirs, B, H), for LSTM the pair (h, c).
"""

import importlib
import warnings
from dataclasses import dataclass, field

import numpy as np

from . import init as init_
from . import checkpointing
from .cells import gru, lstm, rnn


@dataclass
class Tape:
    """What ``forward`` kept for ``backward``: one cell tape per (layer, direction), the dropout
    masks between layers and the length bookkeeping."""

    owner: object
    T: int
    B: int
    cells: list
    dropout_masks: list
    mask: object = None            # (T, B, 1) validity mask, or None when every length is T
    reverse_index: object = None   # (T, B) time index that reverses each sequence within its length
    extra: dict = field(default_factory=dict)
    plan: object = None            # checkpointing.Plan when forward ran with memory=, else None
    state_count: object = None     # checkpointing.StateCount: step states alive, peak, steps run


class RecurrentLayer:
    """Common machinery; use ``RNN``, ``LSTM`` or ``GRU``."""

    cell = None       # the cell module
    gates = 1         # gate chunks per weight matrix

    def __init__(self, input_size, hidden_size, num_layers=1, *, bias=True, batch_first=False,
                 dropout=0.0, bidirectional=False, dtype=np.float32, seed=None, init="default",
                 forget_bias=None, backend="auto"):
        name = type(self).__name__
        for arg, value in (("input_size", input_size), ("hidden_size", hidden_size),
                           ("num_layers", num_layers)):
            if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 1:
                raise ValueError(f"{name}: expected {arg} a positive integer, got {value!r}")
        if isinstance(dropout, bool) or not isinstance(dropout, (int, float)) or not 0 <= dropout < 1:
            raise ValueError(f"{name}: expected dropout a probability in [0, 1), got {dropout!r}")
        try:
            got = "None" if dtype is None else np.dtype(dtype).name
        except TypeError:
            got = repr(dtype)
        if got not in ("float32", "float64"):
            raise TypeError(f"{name}: expected dtype float32 or float64, got {got}")
        dtype = np.dtype(dtype)
        if forget_bias is not None:
            if self.cell is not lstm or not bias:
                raise ValueError(f"{name}: forget_bias applies to an LSTM with bias=True")
            if isinstance(forget_bias, bool) or not isinstance(forget_bias, (int, float)) \
                    or not np.isfinite(forget_bias):
                raise ValueError(f"{name}: expected forget_bias a finite number, got "
                                 f"{forget_bias!r}")
        if dropout > 0 and num_layers == 1:  # as torch: dropout acts only between layers
            warnings.warn(f"{name}: dropout={dropout} has no effect with num_layers=1; it "
                          f"applies between stacked layers", stacklevel=2)
        self.input_size = int(input_size)
        self.hidden_size = int(hidden_size)
        self.num_layers = int(num_layers)
        self.bias = bool(bias)
        self.batch_first = bool(batch_first)
        self.dropout = float(dropout)
        self.bidirectional = bool(bidirectional)
        self.dtype = dtype
        self.rng = np.random.default_rng(seed)
        self.cell = _cell_for(type(self).cell, backend, name)
        self.backend = "numpy" if self.cell is type(self).cell else "native"   # what auto chose

        self.params = {}
        G, H = self.gates, self.hidden_size
        for layer in range(self.num_layers):
            d_in = self.input_size if layer == 0 else H * self.directions
            for suffix in self._suffixes():
                k = f"l{layer}{suffix}"
                self.params[f"weight_ih_{k}"] = np.empty((G * H, d_in), dtype)
                self.params[f"weight_hh_{k}"] = np.empty((G * H, H), dtype)
                if self.bias:
                    self.params[f"bias_ih_{k}"] = np.empty(G * H, dtype)
                    self.params[f"bias_hh_{k}"] = np.empty(G * H, dtype)
        init_.initialize(self.params, H, self.rng, init, forget_bias, gates=G)

    # ------------------------------------------------------------------ layout
    @property
    def directions(self):
        return 2 if self.bidirectional else 1

    def _suffixes(self):
        return ("", "_reverse") if self.bidirectional else ("",)

    def _cell_weights(self, layer, direction):
        k = f"l{layer}{self._suffixes()[direction]}"
        return {name: self.params.get(f"{name}_{k}")
                for name in ("weight_ih", "weight_hh", "bias_ih", "bias_hh")}

    def _cell_options(self):
        return {}

    def state_dict(self):
        """A copy of the parameters, PyTorch's names and shapes."""
        return {k: v.copy() for k, v in self.params.items()}

    def load_state_dict(self, state_dict):
        """Load arrays (NumPy, torch tensors, nested lists) by PyTorch's names; all or nothing."""
        name = type(self).__name__
        if not hasattr(state_dict, "keys"):
            raise TypeError(f"{name}: expected a mapping of parameter names to arrays, "
                            f"got {type(state_dict).__name__}")
        missing = [k for k in self.params if k not in state_dict]
        unexpected = [k for k in state_dict if k not in self.params]
        if missing or unexpected:
            raise ValueError(f"{name}: state dict does not match: missing keys {missing}, "
                             f"unexpected keys {unexpected}")
        loaded = {}
        for k, p in self.params.items():
            v = state_dict[k]
            if hasattr(v, "detach"):  # a torch tensor, without importing torch
                v = v.detach().cpu().numpy()
            try:
                v = np.asarray(v)
            except (TypeError, ValueError) as e:
                raise TypeError(f"{name}: {k} is not an array: {e}") from None
            if v.dtype.kind not in "fiu":
                raise TypeError(f"{name}: {k}: expected real numbers, got dtype {v.dtype}")
            if v.shape != p.shape:
                raise ValueError(f"{name}: {k}: expected shape {p.shape}, got {v.shape}")
            if not np.all(np.isfinite(v)):
                raise ValueError(f"{name}: {k} holds non-finite values (nan or inf)")
            loaded[k] = v
        for k, v in loaded.items():
            self.params[k][...] = v

    def __repr__(self):
        return (f"{type(self).__name__}({self.input_size}, {self.hidden_size}, "
                f"num_layers={self.num_layers}, bias={self.bias}, "
                f"bidirectional={self.bidirectional}, dropout={self.dropout}, "
                f"dtype={self.dtype.name})")

    # ------------------------------------------------------------------ checks at the door
    def _real_array(self, what, value):
        name = type(self).__name__
        if hasattr(value, "detach"):
            value = value.detach().cpu().numpy()
        try:
            arr = np.asarray(value)
        except (TypeError, ValueError) as e:
            raise TypeError(f"{name}: {what} is not an array: {e}") from None
        if arr.dtype.kind not in "fiu":
            raise TypeError(f"{name}: expected {what} of real numbers, got dtype {arr.dtype}")
        return np.ascontiguousarray(arr, dtype=self.dtype)

    def _check_x(self, x, copy=True):
        name = type(self).__name__
        x = self._real_array("x", x)
        axes = "(B, T, D)" if self.batch_first else "(T, B, D)"
        if x.ndim != 3:
            raise ValueError(f"{name}: expected x of rank 3 {axes}, got shape {x.shape}")
        if x.shape[2] != self.input_size:
            a, b = ("B", "T") if self.batch_first else ("T", "B")
            raise ValueError(f"{name}: expected x of shape ({a}, {b}, {self.input_size}), got "
                             f"({a}={x.shape[0]}, {b}={x.shape[1]}, {x.shape[2]})")
        if x.shape[0] == 0 or x.shape[1] == 0:
            raise ValueError(f"{name}: expected x with at least one step and one sequence, "
                             f"got shape {x.shape}")
        if self.batch_first:
            x = x.transpose(1, 0, 2)
        # a private copy: the tape keeps x, and the caller may reuse its array before backward
        if not copy:
            return np.ascontiguousarray(x, dtype=self.dtype)
        return np.array(x, dtype=self.dtype, order="C", copy=True)

    def check_input(self, x):
        """x checked at the door (real numbers, (T, B, D) or (B, T, D) with ``batch_first``)
        and returned as a private time-major array of the layer's dtype."""
        return self._check_x(x)

    def _check_lengths(self, lengths, T, B):
        name = type(self).__name__
        if lengths is None:
            return None, None, None
        if hasattr(lengths, "detach"):
            lengths = lengths.detach().cpu().numpy()
        lengths = np.asarray(lengths)
        if lengths.dtype.kind not in "iu":
            raise TypeError(f"{name}: expected lengths as integers, got dtype {lengths.dtype}")
        if lengths.shape != (B,):
            raise ValueError(f"{name}: expected lengths of shape ({B},), one per sequence, got "
                             f"shape {lengths.shape}")
        if lengths.min() < 1 or lengths.max() > T:
            bad = lengths[(lengths < 1) | (lengths > T)]
            raise ValueError(f"{name}: expected every length in 1..{T} (T), got {bad.tolist()}")
        if np.all(lengths == T):
            return lengths, None, None
        t = np.arange(T)[:, None]
        valid = t < lengths[None, :]                                   # (T, B)
        mask = valid.astype(self.dtype)[:, :, None]                    # (T, B, 1)
        reverse_index = np.where(valid, lengths[None, :] - 1 - t, t)   # an involution
        return lengths, mask, reverse_index

    def _check_state(self, state, what, B):
        """Split a (L*dirs, B, H) state (a pair for LSTM) into one per (layer, direction)."""
        name = type(self).__name__
        K, H = self.num_layers * self.directions, self.hidden_size
        n_parts = 2 if type(self).cell is lstm else 1
        if state is None:
            parts = [np.zeros((K, B, H), self.dtype) for _ in range(n_parts)]
        else:
            if n_parts == 2:
                if not isinstance(state, (tuple, list)) or len(state) != 2:
                    raise TypeError(f"{name}: expected {what} as a pair (h, c), got "
                                    f"{type(state).__name__}")
                labels = (f"{what}[0] (h)", f"{what}[1] (c)")
            else:
                state, labels = (state,), (what,)
            parts = []
            for label, s in zip(labels, state):
                s = self._real_array(label, s)
                if s.shape != (K, B, H):
                    raise ValueError(f"{name}: expected {label} of shape (num_layers*dirs={K}, "
                                     f"B={B}, H={H}), got {s.shape}")
                parts.append(s)
        if n_parts == 2:
            return [(parts[0][k], parts[1][k]) for k in range(K)]
        return [parts[0][k] for k in range(K)]

    # ------------------------------------------------------------------ the passes
    def forward(self, x, h0=None, lengths=None, memory=None, *, training=False, rng=None,
                tape=True):
        """Run the stack over x; return ``(y, h_n, tape)``.

        ``tape=False`` is inference: nothing is kept for a backward pass, the tape returned is
        None, and the compiled backends skip storing the gates (PyTorch's ``no_grad``).

        ``lengths`` (B integers in 1..T, any order) gives PyTorch's packed-sequence semantics.
        Dropout between layers applies when ``training`` is true; its masks come from ``rng``
        (a ``numpy.random.Generator``, default the layer's own, seeded by ``seed``).

        ``memory`` (None: keep every step) bounds the step states the tape keeps per layer and
        direction; ``backward`` recomputes the rest from them, on the optimal plan for that
        budget (``bptt.checkpointing``), whose cost is ``tape.plan``. The inputs of each layer are
        kept as they are without it. Such a tape can be backpropagated once.
        """
        x = self._check_x(x, copy=tape is not False)  # with no tape, nothing keeps x
        T, B, _ = x.shape
        lengths, mask, rev = self._check_lengths(lengths, T, B)
        states0 = self._check_state(h0, "h0", B)
        if not isinstance(training, bool):
            raise TypeError(f"{type(self).__name__}: expected training a bool, got {training!r}")
        if not isinstance(tape, bool):
            raise TypeError(f"{type(self).__name__}: expected tape a bool, got {tape!r}")
        if memory is not None and not tape:
            raise ValueError(f"{type(self).__name__}: memory= bounds what the tape keeps; with "
                             f"tape=False nothing is kept, so leave memory out")
        keep_tape = tape
        infer = getattr(self.cell, "forward_infer", None) if not tape else None
        plan = count = None
        if memory is not None:
            memory = checkpointing.check_memory(memory, type(self).__name__)
            plan = checkpointing.plan_checkpoints(T, memory)
            count = checkpointing.StateCount()
        rng = self.rng if rng is None else rng
        options = self._cell_options()
        tapes, drop_masks, states_n = [], [], []
        inp = x
        for layer in range(self.num_layers):
            keep = None
            if layer > 0 and training and self.dropout > 0:
                p = self.dropout
                keep = (rng.random(inp.shape) >= p).astype(self.dtype) / self.dtype.type(1 - p)
                inp = inp * keep
            drop_masks.append(keep)
            outs = []
            for d in range(self.directions):
                k = layer * self.directions + d
                x_d = inp if d == 0 else _reverse_time(inp, rev)
                if infer is not None:
                    (y_d, s_n), tape = infer(x_d, states0[k], self._cell_weights(layer, d), mask,
                                             **options), None
                elif plan is None:
                    y_d, s_n, tape = self.cell.forward(
                        x_d, states0[k], self._cell_weights(layer, d), mask, **options)
                else:  # each (layer, direction) checkpointed on its own, within `memory`
                    y_d, s_n, tape = checkpointing.checkpointed_forward(
                        self.cell, x_d, states0[k], self._cell_weights(layer, d), mask, plan,
                        count, **options)
                outs.append(y_d if d == 0 else _reverse_time(y_d, rev))
                tapes.append(tape)
                states_n.append(s_n)
            inp = outs[0] if self.directions == 1 else np.concatenate(outs, axis=2)
        y = inp
        if y.base is not None:  # a view of the tape: reading it is free, writing would corrupt it
            y = y.view()
            y.flags.writeable = False
        if self.batch_first:
            y = y.transpose(1, 0, 2)
        h_n = self._stack_states(states_n)
        if not keep_tape:
            return y, h_n, None
        tape = Tape(self, T, B, tapes, drop_masks, mask, rev, {"lengths": lengths}, plan, count)
        return y, h_n, tape

    def _stack_states(self, states):
        if type(self).cell is lstm:
            return np.stack([s[0] for s in states]), np.stack([s[1] for s in states])
        return np.stack(states)

    def backward(self, dy, tape, dh_n=None, *, clip=None, record=None):
        """Backpropagate through time; return ``(dx, dh0, grads)``.

        dy is shaped like y, dh_n like h_n (None: zeros); grads has the keys of ``state_dict``.
        ``clip`` (None: off) clips the backward message dL/dh_t to [-clip, clip] elementwise at
        every step, before it enters the step (Graves 2013); dh0 is the message left unclipped.
        ``record`` (None: off), a dict, receives for each layer and direction (``l0``,
        ``l0_reverse``, ``l1`` ...) the message dL/dh_t of every step, (T, B, H), in the input's
        time order (for diagnostics).
        """
        name = type(self).__name__
        if not isinstance(tape, Tape) or tape.owner is not self:
            raise TypeError(f"{name}: expected the tape that this layer's forward returned, got "
                            f"{type(tape).__name__}")
        if clip is not None:
            if isinstance(clip, bool) or not isinstance(clip, (int, float, np.integer,
                                                               np.floating)):
                raise TypeError(f"{name}: expected clip a positive number or None, got {clip!r}")
            if not (np.isfinite(clip) and clip > 0):
                raise ValueError(f"{name}: expected clip a positive finite number or None, "
                                 f"got {clip!r}")
            clip = float(clip)
        if tape.plan is not None and checkpointing.is_spent(tape.cells):
            raise ValueError(f"{name}: this tape was already backpropagated: with memory= it "
                             f"keeps only checkpoints, which backward uses up; run forward again")
        T, B, H = tape.T, tape.B, self.hidden_size
        out = self.directions * H
        dy = self._real_array("dy", dy)
        expected = (B, T, out) if self.batch_first else (T, B, out)
        if dy.shape != expected:
            raise ValueError(f"{name}: expected dy of shape {expected} to match the tape's y, "
                             f"got {dy.shape}")
        if self.batch_first:
            dy = np.ascontiguousarray(dy.transpose(1, 0, 2))
        dstates_n = self._check_state(dh_n, "dh_n", B)
        rev = tape.reverse_index
        cell_backward = (self.cell.backward if tape.plan is None
                         else checkpointing.checkpointed_backward)
        grads = {}
        dstates0 = [None] * len(tape.cells)
        d_out = dy
        for layer in range(self.num_layers - 1, -1, -1):
            dx = None
            for d in range(self.directions):
                k = layer * self.directions + d
                dy_d = d_out[:, :, d * H:(d + 1) * H]
                if d == 1:
                    dy_d = _reverse_time(dy_d, rev)
                extra = {}
                if record is not None:
                    extra["record"] = np.empty((T, B, H), self.dtype)
                dx_d, ds0, g = cell_backward(dy_d, dstates_n[k], tape.cells[k], clip=clip,
                                             **extra)
                suffix = f"l{layer}{self._suffixes()[d]}"
                if d == 1:
                    dx_d = _reverse_time(dx_d, rev)
                if record is not None:
                    record[suffix] = (extra["record"] if d == 0 else
                                      _reverse_time(extra["record"], rev))
                dx = dx_d if dx is None else dx + dx_d
                dstates0[k] = ds0
                for gname, value in g.items():
                    grads[f"{gname}_{suffix}"] = value
            if tape.dropout_masks[layer] is not None:
                dx *= tape.dropout_masks[layer]
            d_out = dx
        if self.batch_first:
            d_out = d_out.transpose(1, 0, 2)
        grads = {k: grads[k] for k in self.params}
        return d_out, self._stack_states(dstates0), grads


BACKENDS = ("auto", "numpy", "native")
DEFAULT_BACKEND = "auto"    # the fastest built path: the layers' and every application's default
BACKEND_HELP = ("the cells' time loops: numpy (the reference), native (C++, built at install) "
                "or auto (native where built, numpy otherwise)")


def check_backend(backend, who):
    """Raise, naming ``who``, unless ``backend`` is one of ``BACKENDS``."""
    if backend not in BACKENDS:
        raise ValueError(f"{who}: expected backend one of {', '.join(BACKENDS)}, got "
                         f"{backend!r}")


def _cell_for(cell, backend, who):
    """The reference cell module (``backend='numpy'``) or its C++ twin in ``bptt.native``
    ('native', built at install); 'auto' takes native where it was built, else the reference."""
    check_backend(backend, who)
    if backend == "numpy":
        return cell
    try:
        native = importlib.import_module("bptt.native")
    except ImportError as e:
        if backend == "auto":
            return cell
        raise ImportError(f"{who}: backend={backend!r} needs the C++ extension, built by a "
                          f"C++20 compiler when bptt is installed: {e}") from None
    return native.FAMILIES[cell.__name__.rsplit(".", 1)[1]]


def _reverse_time(a, reverse_index):
    """Reverse each sequence in time within its own length (all of T when no lengths)."""
    if reverse_index is None:
        return np.ascontiguousarray(a[::-1])
    return a[reverse_index, np.arange(a.shape[1])[None, :]]


class RNN(RecurrentLayer):
    """Elman RNN, ``nonlinearity`` 'tanh' or 'relu'. See ``bptt.cells.rnn`` for the equations."""

    cell = rnn
    gates = 1

    def __init__(self, input_size, hidden_size, num_layers=1, *, nonlinearity="tanh", **kwargs):
        if nonlinearity not in rnn.NONLINEARITIES:
            raise ValueError(f"RNN: expected nonlinearity 'tanh' or 'relu', got {nonlinearity!r}")
        self.nonlinearity = nonlinearity
        super().__init__(input_size, hidden_size, num_layers, **kwargs)

    def _cell_options(self):
        return {"nonlinearity": self.nonlinearity}


class LSTM(RecurrentLayer):
    """LSTM; state is the pair (h, c). See ``bptt.cells.lstm`` for the equations."""

    cell = lstm
    gates = 4


class GRU(RecurrentLayer):
    """GRU; ``reset_after`` True is PyTorch's variant, False Cho et al.'s. See ``bptt.cells.gru``."""

    cell = gru
    gates = 3

    def __init__(self, input_size, hidden_size, num_layers=1, *, reset_after=True, **kwargs):
        if not isinstance(reset_after, bool):
            raise TypeError(f"GRU: expected reset_after a bool, got {reset_after!r}")
        self.reset_after = reset_after
        super().__init__(input_size, hidden_size, num_layers, **kwargs)

    def _cell_options(self):
        return {"reset_after": self.reset_after}
