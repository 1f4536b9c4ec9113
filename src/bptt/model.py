"""A whole sequence model: input layer -> recurrent stack -> head, each with its explicit backward.

- input: ``embedding`` (token ids (T, B) -> vectors (T, B, E)), ``linear`` (features (T, B, D) ->
  (T, B, E)) or ``identity`` (features go straight into the stack);
- stack: ``bptt.RNN``, ``LSTM`` or ``GRU``;
- head, a linear map to ``output_size``: ``step`` (every step, (T, B, O): language models,
  forecasting), ``last`` (the top layer's final state, both directions concatenated, (B, O):
  classification of a whole sequence; with lengths, each sequence's own last step), ``mean``
  (the mean of the top layer's outputs over each sequence's valid steps, (B, O)), ``max`` (their
  elementwise maximum over the valid steps, max-pooling over time) or ``meanmax`` (the two
  concatenated, mean first: the linear map reads 2 * dirs * H features).

Parameter names are those of the equivalent ``torch.nn.Module`` with attributes ``embedding`` or
``proj``, ``rnn`` and ``head``: ``embedding.weight``, ``rnn.weight_ih_l0``, ``head.weight`` ...
``Model.params`` holds the live arrays of every part, so an optimizer updating it in place updates
the model.
"""

import numpy as np

from .layers import GRU, LSTM, RNN

CELLS = {"rnn": RNN, "lstm": LSTM, "gru": GRU}
INPUTS = ("embedding", "linear", "identity")
HEADS = ("step", "last", "mean", "max", "meanmax")
POOLED = ("mean", "max", "meanmax")     # heads that pool the outputs over the valid steps


class Model:
    def __init__(self, input_size, hidden_size, output_size, *, cell="lstm", input="embedding",
                 embed_size=None, num_layers=1, bidirectional=False, dropout=0.0, head="step",
                 dtype=np.float32, seed=None, **cell_options):
        if cell not in CELLS:
            raise ValueError(f"Model: expected cell one of {', '.join(CELLS)}, got {cell!r}")
        if input not in INPUTS:
            raise ValueError(f"Model: expected input one of {', '.join(INPUTS)}, got {input!r}")
        if head not in HEADS:
            raise ValueError(f"Model: expected head one of {', '.join(HEADS)}, got {head!r}")
        for arg, value in (("input_size", input_size), ("output_size", output_size)):
            if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 1:
                raise ValueError(f"Model: expected {arg} a positive integer, got {value!r}")
        self.config = dict(input_size=int(input_size), hidden_size=int(hidden_size),
                           output_size=int(output_size), cell=cell, input=input,
                           embed_size=embed_size, num_layers=num_layers,
                           bidirectional=bidirectional, dropout=dropout, head=head,
                           dtype=np.dtype(dtype).name, seed=seed, **cell_options)
        self.input, self.head = input, head
        self.input_size, self.output_size = int(input_size), int(output_size)
        self.dtype = np.dtype(dtype)
        rng = np.random.default_rng(seed)
        self.params = {}
        if input == "identity":
            rnn_in = self.input_size
        else:
            rnn_in = int(embed_size or hidden_size)
            if input == "embedding":  # torch.nn.Embedding's default: N(0, 1)
                self.params["embedding.weight"] = rng.standard_normal(
                    (self.input_size, rnn_in)).astype(self.dtype)
            else:
                self.params.update(_linear_params("proj", self.input_size, rnn_in, rng, self.dtype))
        self.rnn = CELLS[cell](rnn_in, hidden_size, num_layers, bidirectional=bidirectional,
                               dropout=dropout, dtype=self.dtype,
                               seed=int(rng.integers(2**63)), **cell_options)
        for k, v in self.rnn.params.items():
            self.params[f"rnn.{k}"] = v
        top = self.rnn.hidden_size * self.rnn.directions
        n_feat = 2 * top if head == "meanmax" else top
        self.params.update(_linear_params("head", n_feat, self.output_size, rng, self.dtype))

    @property
    def bidirectional(self):
        return self.rnn.bidirectional

    batch_first = False          # a model is time-major throughout

    # ------------------------------------------------------------------ state dict
    def state_dict(self):
        return {k: v.copy() for k, v in self.params.items()}

    def load_state_dict(self, state_dict):
        rnn_part = {k[4:]: v for k, v in state_dict.items() if k.startswith("rnn.")}
        own = {k: v for k, v in state_dict.items() if not k.startswith("rnn.")}
        expected = {k for k in self.params if not k.startswith("rnn.")}
        if set(own) != expected:
            raise ValueError(f"Model: state dict does not match: missing keys "
                             f"{sorted(expected - set(own))}, unexpected keys "
                             f"{sorted(set(own) - expected)}")
        checked = {}
        for k, v in own.items():
            v = np.asarray(v.detach().cpu().numpy() if hasattr(v, "detach") else v)
            if v.shape != self.params[k].shape:
                raise ValueError(f"Model: {k}: expected shape {self.params[k].shape}, "
                                 f"got {v.shape}")
            if v.dtype.kind not in "fiu" or not np.all(np.isfinite(v)):
                raise ValueError(f"Model: {k} must hold finite real numbers")
            checked[k] = v
        self.rnn.load_state_dict(rnn_part)
        for k, v in checked.items():
            self.params[k][...] = v

    def initial_state(self, batch_size):
        """Zero state for ``batch_size`` sequences, in the stack's format (a pair for LSTM)."""
        shape = (self.rnn.num_layers * self.rnn.directions, batch_size, self.rnn.hidden_size)
        if isinstance(self.rnn, LSTM):
            return np.zeros(shape, self.dtype), np.zeros(shape, self.dtype)
        return np.zeros(shape, self.dtype)

    # ------------------------------------------------------------------ the passes
    def forward(self, x, state=None, lengths=None, *, training=False, rng=None, memory=None,
                tape=True):
        """Return ``(out, state_n, tape)``; out is (T, B, O) for the ``step`` head, else (B, O).
        ``tape=False`` is inference: nothing is kept for a backward pass and the tape is None."""
        inp = self.check_input(x)
        if self.input == "embedding":
            emb = self.params["embedding.weight"][inp]               # (T, B, E)
        elif self.input == "linear":
            emb = _linear(inp, self.params["proj.weight"], self.params["proj.bias"])
        else:
            emb = inp
        kwargs = {} if memory is None else {"memory": memory}
        if not tape:
            kwargs["tape"] = False
        y, state_n, rnn_tape = self.rnn.forward(emb, state, lengths, training=training, rng=rng,
                                                **kwargs)
        T, B = y.shape[:2]
        W, b = self.params["head.weight"], self.params["head.bias"]
        if self.head == "step":
            feat = y
        elif self.head == "last":
            feat = self._last_features(state_n)
        else:
            feat, argmax = self._pool(y, lengths)
        out = _linear(feat, W, b)
        if not tape:
            return out, state_n, None
        tape = dict(inp=inp, rnn=rnn_tape, feat=feat, lengths=lengths, T=T, B=B)
        if self.head in ("max", "meanmax"):
            tape["argmax"] = argmax
        return out, state_n, tape

    def backward(self, dout, tape, dstate_n=None):
        """Backpropagate ``dout`` (shaped like out); return ``(dx, dstate0, grads)`` as the layers
        do: dx is dL/dx for a ``linear`` or ``identity`` input, None for token ids."""
        dout = np.asarray(dout, dtype=self.dtype)
        feat, T, B = tape["feat"], tape["T"], tape["B"]
        expected = feat.shape[:-1] + (self.output_size,)
        if dout.shape != expected:
            raise ValueError(f"Model: expected dout of shape {expected} to match the tape's "
                             f"output, got {dout.shape}")
        W = self.params["head.weight"]
        grads = {}
        d2 = dout.reshape(-1, self.output_size)
        grads["head.weight"] = d2.T @ feat.reshape(-1, feat.shape[-1])   # through out = feat W^T + b
        grads["head.bias"] = d2.sum(axis=0)
        dfeat = (d2 @ W).reshape(dout.shape[:-1] + (W.shape[1],))   # a 2-D product: see _linear
        H, dirs = self.rnn.hidden_size, self.rnn.directions
        if self.head == "step":
            dy = dfeat
        elif self.head in POOLED:
            dy = self.pool_backward(dfeat, tape)
        else:
            dy = np.zeros((T, B, H * dirs), self.dtype)
            dstate_n = self._add_last_grad(dstate_n, dfeat)
        dx, dstate0, rnn_grads = self.rnn.backward(dy, tape["rnn"], dstate_n)
        for k, v in rnn_grads.items():
            grads[f"rnn.{k}"] = v
        inp = tape["inp"]
        dinp = None
        if self.input == "identity":
            dinp = dx
        if self.input == "embedding":
            E = self.params["embedding.weight"]
            dE = np.zeros_like(E)
            np.add.at(dE, inp.ravel(), dx.reshape(-1, E.shape[1]))   # through emb = E[ids]
            grads["embedding.weight"] = dE
        elif self.input == "linear":
            dx2 = dx.reshape(-1, dx.shape[-1])
            grads["proj.weight"] = dx2.T @ inp.reshape(-1, inp.shape[-1])
            grads["proj.bias"] = dx2.sum(axis=0)
            dinp = (dx2 @ self.params["proj.weight"]).reshape(inp.shape)   # through x P^T + b
        return dinp, dstate0, {k: grads[k] for k in self.params}

    # ------------------------------------------------------------------ helpers of the head
    def _top(self, state):
        h = state[0] if isinstance(self.rnn, LSTM) else state
        dirs = self.rnn.directions
        return h[-dirs:]                                               # (dirs, B, H)

    def _last_features(self, state_n):
        top = self._top(state_n)
        return np.concatenate(list(top), axis=1)                       # (B, dirs*H)

    def _add_last_grad(self, dstate_n, dfeat):
        H, dirs = self.rnn.hidden_size, self.rnn.directions
        if dstate_n is None:
            dstate_n = self.initial_state(dfeat.shape[0])
        else:
            dstate_n = tuple(np.array(s, self.dtype) for s in dstate_n) \
                if isinstance(self.rnn, LSTM) else np.array(dstate_n, self.dtype)
        dh = dstate_n[0] if isinstance(self.rnn, LSTM) else dstate_n
        for d in range(dirs):
            dh[dh.shape[0] - dirs + d] += dfeat[:, d * H:(d + 1) * H]
        return dstate_n

    def _pool(self, y, lengths):
        """The pooled features (B, F) of a pooling head, and the step of each maximum (B, dirs*H)
        (None for ``mean``)."""
        T, B = y.shape[:2]
        mean = y.sum(axis=0) / self._counts(lengths, T, B)          # y is zero past each length
        if self.head == "mean":
            return mean, None
        valid = np.ones((T, B, 1), bool) if lengths is None else \
            (np.arange(T)[:, None] < np.asarray(lengths)[None, :])[..., None]
        argmax = np.where(valid, y, -np.inf).argmax(axis=0)   # (B, dirs*H); padding never wins
        mx = np.take_along_axis(y, argmax[None], axis=0)[0]
        if self.head == "max":
            return mx, argmax
        return np.concatenate([mean, mx], axis=1), argmax             # (B, 2*dirs*H)

    def pool_backward(self, dfeat, tape):
        """dL/dy (T, B, dirs*H) of a pooling head from dL/dfeat (B, F)."""
        T, B = tape["T"], tape["B"]
        F = self.rnn.hidden_size * self.rnn.directions
        dy = np.zeros((T, B, F), self.dtype)
        if self.head in ("mean", "meanmax"):
            # through mean = sum_t y_t / length (padded steps: masked by the rnn)
            dy += dfeat[:, :F] / self._counts(tape["lengths"], T, B)
        if self.head in ("max", "meanmax"):
            # through max_t y_t: all of the gradient goes to the step that won (torch's choice)
            b, f = np.indices((B, F))
            dy[tape["argmax"], b, f] += dfeat[:, -F:]                 # one step per (b, f)
        return dy

    def _counts(self, lengths, T, B):
        if lengths is None:
            return np.full((B, 1), T, self.dtype)
        return np.asarray(lengths, self.dtype)[:, None]

    def check_input(self, x):
        """x checked at the door: token ids (T, B) for an embedding input, else features
        (T, B, D) as an array of the model's dtype."""
        if hasattr(x, "detach"):
            x = x.detach().cpu().numpy()
        x = np.asarray(x)
        if self.input == "embedding":
            if x.dtype.kind not in "iu":
                raise TypeError(f"Model: expected token ids as integers, got dtype {x.dtype}")
            if x.ndim != 2:
                raise ValueError(f"Model: expected token ids of shape (T, B), got {x.shape}")
            if x.size and (x.min() < 0 or x.max() >= self.input_size):
                raise ValueError(f"Model: expected token ids in 0..{self.input_size - 1}, got "
                                 f"values in {x.min()}..{x.max()}")
            return x
        if x.dtype.kind not in "fiu":
            raise TypeError(f"Model: expected features of real numbers, got dtype {x.dtype}")
        if x.ndim != 3 or x.shape[2] != self.input_size:
            raise ValueError(f"Model: expected features of shape (T, B, {self.input_size}), "
                             f"got {x.shape}")
        return np.ascontiguousarray(x, dtype=self.dtype)


def _linear(x, W, b):
    """x W^T + b over the last axis, as one 2-D product: NumPy sends a product of a 3-D array to
    a loop of small ones (or a slow threaded path), many times slower than the flat product."""
    out = x.reshape(-1, x.shape[-1]) @ W.T
    out += b
    return out.reshape(x.shape[:-1] + (W.shape[0],))


def _linear_params(prefix, n_in, n_out, rng, dtype):
    """torch.nn.Linear's default init: uniform within 1/sqrt(fan_in)."""
    bound = 1.0 / np.sqrt(n_in)
    return {f"{prefix}.weight": rng.uniform(-bound, bound, (n_out, n_in)).astype(dtype),
            f"{prefix}.bias": rng.uniform(-bound, bound, n_out).astype(dtype)}
