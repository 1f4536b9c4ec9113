r"""An attentional encoder-decoder (Sutskever et al. 2014; Bahdanau et al. 2015; Luong et al.
2015) trained by hand-written backpropagation through time, and its greedy and beam decoders.

The pieces, each with a forward that keeps a tape and a backward written out by hand:

- source embedding ``src_embedding`` (S, B) ids -> (S, B, E);
- ``encoder``: a ``bptt.LSTM`` or ``bptt.GRU`` stack (bidirectional by default) run with the
  sources' lengths, outputs hs (S, B, D), D = dirs * He;
- ``bridge``: each decoder layer l starts from the encoder layer l's final states, both
  directions concatenated, through a linear map and a tanh shared by the layers:

  .. math::
      h^{dec}_{0,l} = \tanh(W_b [\overrightarrow{h}_{l}; \overleftarrow{h}_{l}] + b_b)

  (an LSTM maps its cell states the same way, by ``bridge_c``). With ``bridge=False`` the decoder
  starts from zeros, and the stacks may differ in depth;
- target embedding ``tgt_embedding`` of the decoder's inputs (BOS, y_1, ..., y_{T-1});
- ``decoder``: the same cell family, H units, teacher-forced;
- ``attention`` over hs from the decoder's top outputs h_t (``bptt.attention``: ``dot``,
  ``general`` or Bahdanau's additive ``concat`` score; padded source steps masked out),
  giving the attentional state :math:`\tilde h_t = \tanh(W_c [c_t; h_t])`;
- ``out``: logits :math:`\tilde h_t W_o^\top + b_o` (T, B, V); the softmax is in the loss
  (``sequence_loss``).

Without input feeding the decoder runs as one layer call over all target steps and the attention
over all of them is a handful of batched products: the fast path. With ``input_feeding`` (Luong's)
the decoder reads :math:`[e(y_{t-1}); \tilde h_{t-1}]` (:math:`\tilde h_0 = 0`), so it steps one
target at a time (the layer on T=1 slices, the state carried, one tape per step) and its backward
walks the steps in reverse carrying :math:`\partial L/\partial \tilde h_{t-1}` out of step t's
input.

Target lengths are the loss's business: the decoder is causal, so its steps past a target's end
never reach that target's earlier steps, and ``sequence_loss`` gives them weight 0. The sources'
lengths go to the encoder (packed-sequence semantics) and to the attention's mask.

Parameter names are those of the torch module with attributes ``src_embedding``, ``encoder``,
``bridge`` (and ``bridge_c`` for an LSTM), ``tgt_embedding``, ``decoder``, ``attention`` (with
parameters ``W_a``, ``v_a``, ``W_c`` as its score needs) and ``out``, e.g.
``encoder.weight_ih_l0_reverse``, ``attention.W_a``, ``out.bias``.
"""

import importlib
import math
import numbers
import warnings
from dataclasses import dataclass

import numpy as np

from .attention import SCORES, Attention, rows
from .cells.gates import matmuls as numpy_matmuls
from .layers import GRU, LSTM, check_backend

CELLS = {"lstm": LSTM, "gru": GRU}
MAX_LAYERS = 4


@dataclass
class Hypothesis:
    """One decoded output: ``tokens`` without BOS and EOS; ``score`` the sum of the
    log-probabilities of the tokens and the final EOS; ``norm_score`` the score divided by the
    length penalty, which ranks the beam; ``attention`` (len(tokens) + 1, S), the attention
    weights of each output step (the last row: EOS's) over the sentence's own source steps."""

    tokens: list
    score: float
    norm_score: float
    attention: np.ndarray


class Seq2Seq:
    """Encoder-decoder with attention; see the module's docstring for the equations.

    ``src_vocab``, ``tgt_vocab`` (V), ``hidden_size`` (the decoder's H); ``embed_size`` (E,
    default H) for both embeddings; ``encoder_hidden_size`` per direction (default H // dirs, so
    that the encoder's outputs have the decoder's size); ``cell`` 'lstm' or 'gru';
    ``encoder_layers`` and ``decoder_layers`` (1-4, equal with the bridge); ``attention`` one of
    'dot', 'general', 'concat' (``attention_size``: concat's A, default H); ``dropout`` between
    stacked layers, as the layers have it; ``bos``, ``eos``: target ids that start and end the
    decoder's output; ``backend`` the layers' ('numpy', 'native', 'auto').

    ``params`` holds the live arrays of every part; ``config`` the constructor's arguments, so
    that ``Seq2Seq(**config)`` and ``load_state_dict`` rebuild a checkpoint.
    """

    def __init__(self, src_vocab, tgt_vocab, hidden_size=256, *, embed_size=None,
                 encoder_hidden_size=None, cell="lstm", encoder_layers=1, decoder_layers=1,
                 bidirectional=True, attention="general", attention_size=None,
                 input_feeding=False, bridge=True, dropout=0.0, bos=1, eos=2,
                 dtype=np.float32, seed=None, backend="auto"):
        if cell not in CELLS:
            raise ValueError(f"Seq2Seq: expected cell one of {', '.join(CELLS)}, got {cell!r}")
        if attention not in SCORES:
            raise ValueError(f"Seq2Seq: expected attention one of {', '.join(SCORES)}, got "
                             f"{attention!r}")
        check_backend(backend, "Seq2Seq")
        for arg, value in (("bidirectional", bidirectional), ("input_feeding", input_feeding),
                           ("bridge", bridge)):
            if not isinstance(value, bool):
                raise TypeError(f"Seq2Seq: expected {arg} a bool, got {value!r}")
        dirs = 2 if bidirectional else 1
        if encoder_hidden_size is None:
            encoder_hidden_size = hidden_size // dirs if _is_count(hidden_size) else hidden_size
        E = hidden_size if embed_size is None else embed_size
        for arg, value in (("src_vocab", src_vocab), ("tgt_vocab", tgt_vocab),
                           ("hidden_size", hidden_size), ("embed_size", E),
                           ("encoder_hidden_size", encoder_hidden_size),
                           ("attention_size", 1 if attention_size is None else attention_size)):
            if not _is_count(value):
                raise ValueError(f"Seq2Seq: expected {arg} a positive integer, got {value!r}")
        for arg, value in (("encoder_layers", encoder_layers), ("decoder_layers", decoder_layers)):
            if not _is_count(value) or value > MAX_LAYERS:
                raise ValueError(f"Seq2Seq: expected {arg} an integer in 1..{MAX_LAYERS}, got "
                                 f"{value!r}")
        if bridge and encoder_layers != decoder_layers:
            raise ValueError(f"Seq2Seq: the bridge maps encoder layer l to decoder layer l, so it "
                             f"needs encoder_layers == decoder_layers, got {encoder_layers} and "
                             f"{decoder_layers}; pass bridge=False to start the decoder from zeros")
        for arg, value in (("bos", bos), ("eos", eos)):
            if isinstance(value, bool) or not isinstance(value, numbers.Integral) \
                    or not 0 <= value < tgt_vocab:
                raise ValueError(f"Seq2Seq: expected {arg} a target id in 0..{tgt_vocab - 1}, "
                                 f"got {value!r}")
        if bos == eos:
            raise ValueError(f"Seq2Seq: expected bos and eos to differ, got {bos} for both")
        if isinstance(dropout, bool) or not isinstance(dropout, (int, float)) \
                or not 0 <= dropout < 1:
            raise ValueError(f"Seq2Seq: expected dropout a probability in [0, 1), got "
                             f"{dropout!r}")
        if dropout > 0 and encoder_layers == 1 and decoder_layers == 1:
            warnings.warn(f"Seq2Seq: dropout={dropout} has no effect with one layer in each "
                          f"stack; it applies between stacked layers", stacklevel=2)
        self.config = dict(src_vocab=int(src_vocab), tgt_vocab=int(tgt_vocab),
                           hidden_size=int(hidden_size), embed_size=int(E),
                           encoder_hidden_size=int(encoder_hidden_size), cell=cell,
                           encoder_layers=int(encoder_layers), decoder_layers=int(decoder_layers),
                           bidirectional=bidirectional, attention=attention,
                           attention_size=attention_size, input_feeding=input_feeding,
                           bridge=bridge, dropout=float(dropout), bos=int(bos), eos=int(eos),
                           dtype=np.dtype(dtype).name, seed=seed, backend=backend)
        self.src_vocab, self.tgt_vocab = int(src_vocab), int(tgt_vocab)
        self.hidden_size, self.embed_size = int(hidden_size), int(E)
        self.input_feeding, self.bridge = input_feeding, bridge
        self.bos, self.eos = int(bos), int(eos)
        self.lstm = cell == "lstm"
        self.dtype = np.dtype(dtype)
        if self.dtype.name not in ("float32", "float64"):
            raise TypeError(f"Seq2Seq: expected dtype float32 or float64, got {self.dtype.name}")
        rng = np.random.default_rng(seed)
        H, dt = self.hidden_size, self.dtype
        Cell = CELLS[cell]

        def stack(d_in, h, layers, bi):
            return Cell(d_in, h, layers, bidirectional=bi,
                        dropout=float(dropout) if layers > 1 else 0.0, dtype=dt,
                        seed=int(rng.integers(2**63)), backend=backend)

        self.params = {}
        # torch.nn.Embedding's default init: N(0, 1)
        self.params["src_embedding.weight"] = rng.standard_normal((self.src_vocab, E)).astype(dt)
        self.encoder = stack(E, int(encoder_hidden_size), int(encoder_layers), bidirectional)
        self.params.update({f"encoder.{k}": v for k, v in self.encoder.params.items()})
        D = self.encoder.hidden_size * self.encoder.directions
        if bridge:
            self.params.update(_linear_params("bridge", D, H, rng, dt))
            if self.lstm:
                self.params.update(_linear_params("bridge_c", D, H, rng, dt))
        self.params["tgt_embedding.weight"] = rng.standard_normal((self.tgt_vocab, E)).astype(dt)
        self.decoder = stack(E + (H if input_feeding else 0), H, int(decoder_layers), False)
        self.params.update({f"decoder.{k}": v for k, v in self.decoder.params.items()})
        self.matmuls = _matmuls_of(self.encoder)
        self.attention = Attention(attention, H, D, attention_size, dtype=dt, rng=rng,
                                   matmuls=self.matmuls)
        self.params.update({f"attention.{k}": v for k, v in self.attention.params.items()})
        self.params.update(_linear_params("out", H, self.tgt_vocab, rng, dt))

    def __repr__(self):
        c = self.config
        return (f"Seq2Seq({c['src_vocab']}, {c['tgt_vocab']}, {c['hidden_size']}, "
                f"cell={c['cell']!r}, attention={c['attention']!r}, "
                f"layers={c['encoder_layers']}/{c['decoder_layers']}, "
                f"bidirectional={c['bidirectional']}, input_feeding={c['input_feeding']}, "
                f"dtype={c['dtype']})")

    # ------------------------------------------------------------------ state dict
    def state_dict(self):
        """A copy of the parameters, by the torch twin's names."""
        return {k: v.copy() for k, v in self.params.items()}

    def load_state_dict(self, state_dict):
        """Load arrays (NumPy, torch tensors, nested lists) by name; all or nothing."""
        if not hasattr(state_dict, "keys"):
            raise TypeError(f"Seq2Seq: expected a mapping of parameter names to arrays, got "
                            f"{type(state_dict).__name__}")
        missing = [k for k in self.params if k not in state_dict]
        unexpected = [k for k in state_dict if k not in self.params]
        if missing or unexpected:
            raise ValueError(f"Seq2Seq: state dict does not match: missing keys {missing}, "
                             f"unexpected keys {unexpected}")
        loaded = {}
        for k, p in self.params.items():
            v = state_dict[k]
            v = np.asarray(v.detach().cpu().numpy() if hasattr(v, "detach") else v)
            if v.dtype.kind not in "fiu":
                raise TypeError(f"Seq2Seq: {k}: expected real numbers, got dtype {v.dtype}")
            if v.shape != p.shape:
                raise ValueError(f"Seq2Seq: {k}: expected shape {p.shape}, got {v.shape}")
            if not np.all(np.isfinite(v)):
                raise ValueError(f"Seq2Seq: {k} holds non-finite values (nan or inf)")
            loaded[k] = v
        for k, v in loaded.items():
            self.params[k][...] = v

    # ------------------------------------------------------------------ batches
    def targets(self, sequences):
        """Teacher forcing's arrays from target sequences (lists of ids, without BOS/EOS):
        ``(tgt_in, tgt_out, lengths)``, tgt_in = BOS y_1 .. y_n and tgt_out = y_1 .. y_n EOS,
        each (T, B) padded with EOS, lengths n + 1."""
        seqs = [list(s) for s in sequences]
        tgt_in, lengths = pad([[self.bos] + s for s in seqs], self.eos)
        tgt_out, _ = pad([s + [self.eos] for s in seqs], self.eos)
        self._check_ids("targets", tgt_out, self.tgt_vocab)
        return tgt_in, tgt_out, lengths

    # ------------------------------------------------------------------ the passes
    def forward(self, src, tgt_in, src_lengths=None, *, training=False, rng=None):
        """Teacher-forced pass: src (S, B) and tgt_in (T, B) token ids, src_lengths (B,) in 1..S
        (None: all S); return ``(logits (T, B, V), tape)``. ``training`` turns on the layers'
        dropout, its masks drawn from ``rng`` (default each layer's own generator)."""
        src, src_lengths, valid = self._check_source(src, src_lengths)
        tgt_in = self._check_ids("tgt_in", tgt_in, self.tgt_vocab)
        if tgt_in.shape[1] != src.shape[1]:
            raise ValueError(f"Seq2Seq: expected tgt_in with as many sequences as src "
                             f"(B={src.shape[1]}), got shape {tgt_in.shape}")
        if not isinstance(training, bool):
            raise TypeError(f"Seq2Seq: expected training a bool, got {training!r}")
        run = dict(training=training, rng=rng)
        emb_src = self.params["src_embedding.weight"][src]              # (S, B, E)
        hs, h_n, enc_tape = self.encoder.forward(emb_src, None, src_lengths, **run)
        memory = self.attention.prepare(hs.transpose(1, 0, 2), valid)
        state0, bridge_tape = self._bridge(h_n)
        emb = self.params["tgt_embedding.weight"][tgt_in]               # (T, B, E)
        T, B = tgt_in.shape
        if not self.input_feeding:  # the fast path: one layer call, batched attention
            y, _, dec_tape = self.decoder.forward(emb, state0, **run)
            q = np.ascontiguousarray(y.transpose(1, 0, 2))               # (B, T, H)
            hbar, _, att_tape = self.attention.forward(q, memory)
        else:
            hbar = np.empty((B, T, self.hidden_size), self.dtype)
            fed = np.zeros((B, self.hidden_size), self.dtype)           # hbar_0 = 0
            state, dec_tape, att_tape = state0, [], []
            for t in range(T):
                x = np.concatenate([emb[t], fed], axis=1)[None]          # (1, B, E + H)
                y, state, tape_t = self.decoder.forward(x, state, **run)
                h_t, _, att_t = self.attention.forward(y.transpose(1, 0, 2), memory)
                hbar[:, t] = fed = h_t[:, 0]
                dec_tape.append(tape_t)
                att_tape.append(att_t)
        hbar_t = np.ascontiguousarray(hbar.transpose(1, 0, 2))           # (T, B, H)
        (logits,) = self.matmuls([(rows(hbar_t), self.params["out.weight"].T)])
        logits = logits.reshape(T, B, -1)
        logits += self.params["out.bias"]
        tape = dict(owner=self, src=src, tgt_in=tgt_in, enc=enc_tape, memory=memory,
                    bridge=bridge_tape, dec=dec_tape, att=att_tape, hbar=hbar_t)
        return logits, tape

    def backward(self, dlogits, tape):
        """Backpropagate dL/dlogits (T, B, V) through the tape of ``forward``; return the
        gradients, a dict with the keys of ``params``."""
        if not isinstance(tape, dict) or tape.get("owner") is not self:
            raise TypeError(f"Seq2Seq: expected the tape that this model's forward returned, got "
                            f"{type(tape).__name__}")
        hbar_t = tape["hbar"]
        T, B, H = hbar_t.shape
        V = self.tgt_vocab
        dlogits = np.asarray(dlogits)
        if dlogits.dtype.kind != "f":
            raise TypeError(f"Seq2Seq: expected dlogits of real numbers, got dtype "
                            f"{dlogits.dtype}")
        if dlogits.shape != (T, B, V):
            raise ValueError(f"Seq2Seq: expected dlogits of shape (T={T}, B={B}, V={V}) as the "
                             f"tape's logits, got {dlogits.shape}")
        dlogits = dlogits.astype(self.dtype, copy=False)
        grads = {}
        d2 = dlogits.reshape(-1, V)
        # through logits = hbar W_o^T + b_o
        grads["out.weight"], dhbar = self.matmuls([(d2.T, rows(hbar_t)),
                                                   (d2, self.params["out.weight"])])
        grads["out.bias"] = d2.sum(axis=0)
        dhbar = dhbar.reshape(T, B, H).transpose(1, 0, 2)               # (B, T, H)
        memory = tape["memory"]
        att_grads = self.attention.zero_grads()
        dmemory = self.attention.zero_dmemory(memory)
        E = self.embed_size
        if not self.input_feeding:
            dq = self.attention.backward(dhbar, tape["att"], memory, att_grads, dmemory)
            demb, dstate0, dec_grads = self.decoder.backward(dq.transpose(1, 0, 2), tape["dec"])
        else:
            demb = np.empty((T, B, E), self.dtype)
            dfed, dstate, dec_grads = None, None, None
            for t in range(T - 1, -1, -1):
                dh = dhbar[:, t:t + 1] if dfed is None else dhbar[:, t:t + 1] + dfed[:, None]
                dq = self.attention.backward(dh, tape["att"][t], memory, att_grads, dmemory)
                dx, dstate, g = self.decoder.backward(dq.transpose(1, 0, 2), tape["dec"][t],
                                                      dstate)
                if dec_grads is None:
                    dec_grads = g
                else:
                    for k, v in g.items():
                        dec_grads[k] += v
                demb[t] = dx[0, :, :E]
                dfed = dx[0, :, E:]              # through x_t = [e(y_{t-1}); hbar_{t-1}]
            dstate0 = dstate
        dhs = self.attention.memory_backward(dmemory, memory, att_grads)   # (B, S, D)
        dh_n = self._bridge_backward(dstate0, tape["bridge"], grads)
        dx_src, _, enc_grads = self.encoder.backward(dhs.transpose(1, 0, 2), tape["enc"], dh_n)
        grads["src_embedding.weight"] = _embedding_grad(
            self.params["src_embedding.weight"], tape["src"], dx_src)
        grads["tgt_embedding.weight"] = _embedding_grad(
            self.params["tgt_embedding.weight"], tape["tgt_in"], demb)
        grads.update({f"encoder.{k}": v for k, v in enc_grads.items()})
        grads.update({f"decoder.{k}": v for k, v in dec_grads.items()})
        grads.update({f"attention.{k}": v for k, v in att_grads.items()})
        return {k: grads[k] for k in self.params}

    # ------------------------------------------------------------------ the bridge
    def _bridge(self, h_n):
        """The decoder's initial state from the encoder's final one (see the module's
        docstring), and what its backward needs; (None, None) without a bridge."""
        if not self.bridge:
            return None, None
        parts = h_n if self.lstm else (h_n,)
        state, tape = [], []
        for name, part in zip(("bridge", "bridge_c"), parts):
            X = self._per_layer(part)                                   # (L, B, D)
            W, b = self.params[f"{name}.weight"], self.params[f"{name}.bias"]
            s = np.tanh(X @ W.T + b)
            state.append(s)                                             # (L, B, H)
            tape.append((X, s))
        return (tuple(state) if self.lstm else state[0]), tape

    def _bridge_backward(self, dstate0, tape, grads):
        if tape is None:
            return None
        dparts = dstate0 if self.lstm else (dstate0,)
        dh_n = []
        for name, ds, (X, s) in zip(("bridge", "bridge_c"), dparts, tape):
            dz = ds * (1 - s * s)                                       # through s = tanh(z)
            dz2 = dz.reshape(-1, dz.shape[-1])
            grads[f"{name}.weight"] = dz2.T @ X.reshape(-1, X.shape[-1])
            grads[f"{name}.bias"] = dz2.sum(axis=0)
            dh_n.append(self._per_direction(dz @ self.params[f"{name}.weight"]))
        return tuple(dh_n) if self.lstm else dh_n[0]

    def _per_layer(self, s):
        """(L*dirs, B, He) -> (L, B, dirs*He): each layer's directions side by side."""
        K, B, He = s.shape
        dirs = self.encoder.directions
        return s.reshape(K // dirs, dirs, B, He).transpose(0, 2, 1, 3).reshape(
            K // dirs, B, dirs * He)

    def _per_direction(self, x):
        """The inverse of ``_per_layer``."""
        L, B, D = x.shape
        dirs = self.encoder.directions
        return np.ascontiguousarray(x.reshape(L, B, dirs, D // dirs).transpose(0, 2, 1, 3)
                                    .reshape(L * dirs, B, D // dirs))

    # ------------------------------------------------------------------ incremental decoding
    def encode(self, src, src_lengths=None):
        """Run the encoder once, for inference; return ``(state, memory)``: the decoder's
        starting state for ``step`` and the attention's memory of the sources."""
        src, src_lengths, valid = self._check_source(src, src_lengths)
        emb = self.params["src_embedding.weight"][src]
        hs, h_n, _ = self.encoder.forward(emb, None, src_lengths, tape=False)
        memory = self.attention.prepare(hs.transpose(1, 0, 2), valid)
        memory["lengths"] = np.full(src.shape[1], src.shape[0]) if src_lengths is None \
            else src_lengths
        B, H, L = src.shape[1], self.hidden_size, self.decoder.num_layers
        rnn_state, _ = self._bridge(h_n)
        if rnn_state is None:
            zeros = np.zeros((L, B, H), self.dtype)
            rnn_state = (zeros, zeros.copy()) if self.lstm else zeros
        return (rnn_state, np.zeros((B, H), self.dtype)), memory

    def step(self, tokens, state, memory):
        """One decoder step for N rows: ``tokens`` (N,) the previous outputs (BOS first);
        return ``(log_probs (N, V), state, alpha (N, S))``, state carried to the next step."""
        rnn_state, fed = state
        tokens = np.asarray(tokens)
        if tokens.dtype.kind not in "iu" or tokens.shape != fed.shape[:1]:
            raise ValueError(f"Seq2Seq: expected tokens as integer ids of shape "
                             f"({fed.shape[0]},), one per row of the state, got "
                             f"{tokens.dtype} {tokens.shape}")
        if tokens.min() < 0 or tokens.max() >= self.tgt_vocab:
            raise ValueError(f"Seq2Seq: expected tokens in 0..{self.tgt_vocab - 1}, got "
                             f"{tokens[(tokens < 0) | (tokens >= self.tgt_vocab)][:10].tolist()}")
        x = self.params["tgt_embedding.weight"][tokens][None]           # (1, N, E)
        if self.input_feeding:
            x = np.concatenate([x, fed[None]], axis=2)
        y, rnn_state, _ = self.decoder.forward(x, rnn_state, tape=False)
        hbar, alpha, _ = self.attention.forward(y.transpose(1, 0, 2), memory, keep=False)
        hbar = hbar[:, 0]
        logits = hbar @ self.params["out.weight"].T + self.params["out.bias"]
        return _log_softmax(logits), (rnn_state, hbar), alpha[:, 0]

    def _take(self, state, memory, rows):
        """The decoder state and the memory of the rows ``rows``."""
        rnn_state, fed = state
        rnn_state = tuple(s[:, rows] for s in rnn_state) if self.lstm else rnn_state[:, rows]
        memory = None if memory is None else dict(self.attention.take(memory, rows),
                                                  lengths=memory["lengths"][rows])
        return (rnn_state, fed[rows]), memory

    def greedy(self, src, src_lengths=None, *, alpha=0.0, max_len_a=2.0, max_len_b=10):
        """The most likely token at every step, for each sentence; return a list of
        ``Hypothesis``. A hypothesis holds at most ``int(max_len_a * S_b + max_len_b)`` tokens
        (S_b its source length) and then ends with EOS. ``alpha`` only sets ``norm_score``."""
        alpha = _check_alpha(alpha)
        state, memory = self.encode(src, src_lengths)
        lengths = memory["lengths"]
        max_len = _max_lengths(lengths, max_len_a, max_len_b)
        B = len(lengths)
        rows = np.arange(B)
        prev = np.full(B, self.bos)
        scores = np.zeros(B, self.dtype)
        tokens, attention = [[] for _ in range(B)], [[] for _ in range(B)]
        done = np.zeros(B, bool)
        for t in range(int(max_len.max()) + 1):
            logp, state, att = self.step(prev, state, memory)
            tok = np.where(t >= max_len, self.eos, logp.argmax(axis=1))
            step_scores = scores + logp[rows, tok]
            for b in np.flatnonzero(~done):
                scores[b] = step_scores[b]
                attention[b].append(att[b, :lengths[b]])
                if tok[b] == self.eos:
                    done[b] = True
                else:
                    tokens[b].append(int(tok[b]))
            if done.all():
                break
            prev = tok
        return [self._hypothesis(tokens[b], scores[b], np.array(attention[b]), alpha)
                for b in range(B)]

    def beam_search(self, src, src_lengths=None, *, beam=5, alpha=0.0, max_len_a=2.0,
                    max_len_b=10, nbest=1):
        """Beam search over each sentence, all sentences batched; return for each sentence its
        ``nbest`` hypotheses, best first by ``norm_score`` = score / ((5 + n) / 6) ** alpha
        (Wu et al. 2016; n counts the tokens and EOS; alpha 0: the plain sum of
        log-probabilities).

        Each step keeps the ``beam`` best unfinished hypotheses of a sentence; a candidate ending
        in EOS is finished when it ranks within the ``beam`` best candidates of the step, and a
        sentence is done once ``beam`` hypotheses are finished (or at its maximum length,
        ``int(max_len_a * S_b + max_len_b)`` tokens, where each hypothesis is ended by EOS).
        ``beam=1`` is the greedy decoder."""
        if isinstance(beam, bool) or not isinstance(beam, numbers.Integral):
            raise TypeError(f"Seq2Seq: expected beam an integer >= 1, got {beam!r}")
        if beam < 1:
            raise ValueError(f"Seq2Seq: expected beam width >= 1, got {beam}")
        if isinstance(nbest, bool) or not isinstance(nbest, numbers.Integral) \
                or not 1 <= nbest <= beam:
            raise ValueError(f"Seq2Seq: expected nbest an integer in 1..beam ({beam}), got "
                             f"{nbest!r}")
        alpha = _check_alpha(alpha)
        K = int(beam)
        state, memory = self.encode(src, src_lengths)
        lengths = memory["lengths"]
        max_len = _max_lengths(lengths, max_len_a, max_len_b)
        B, S = len(lengths), memory["hs"].shape[1]
        state, memory = self._take(state, memory, np.repeat(np.arange(B), K))
        by_sentence = np.arange(B)[:, None]
        scores = np.full((B, K), -np.inf, self.dtype)
        scores[:, 0] = 0                   # one live beam at first: no copies of one hypothesis
        history = np.zeros((B, K, 0), np.int64)                        # tokens so far
        history_att = np.zeros((B, K, 0, S), self.dtype)
        finished = [[] for _ in range(B)]
        done = np.zeros(B, bool)
        prev = np.full(B * K, self.bos)
        for t in range(int(max_len.max()) + 1):
            logp, step_state, att = self.step(prev, state, memory)
            V = logp.shape[1]
            logp, att = logp.reshape(B, K, V), att.reshape(B, K, S)
            forced = t >= max_len
            if forced.any():  # at the maximum length only EOS may follow
                eos_logp = logp[forced, :, self.eos]
                logp[forced] = -np.inf
                logp[forced, :, self.eos] = eos_logp
            cand = (scores[:, :, None] + logp).reshape(B, K * V)
            n = min(2 * K, K * V)
            order = np.argsort(-cand, axis=1, kind="stable")[:, :n]   # best first, ties: first
            cand_scores = np.take_along_axis(cand, order, axis=1)
            cand_beam, cand_tok = order // V, order % V
            new_scores = np.full((B, K), -np.inf, self.dtype)
            new_beam = np.zeros((B, K), np.int64)
            new_tok = np.full((B, K), self.eos, np.int64)
            for b in np.flatnonzero(~done):
                active = 0
                for j in range(n):
                    s, k, v = cand_scores[b, j], cand_beam[b, j], cand_tok[b, j]
                    if s == -np.inf:
                        break
                    if v == self.eos:
                        if j < K:
                            att_b = np.concatenate([history_att[b, k], att[b, k][None]])
                            finished[b].append(self._hypothesis(
                                history[b, k].tolist(), s, att_b[:, :lengths[b]], alpha))
                    elif active < K:
                        new_scores[b, active], new_beam[b, active] = s, k
                        new_tok[b, active] = v
                        active += 1
                if len(finished[b]) >= K or forced[b] or active == 0:
                    done[b] = True
            if done.all():
                break
            rows = (by_sentence * K + new_beam).ravel()
            state, _ = self._take(step_state, None, rows)
            history = np.concatenate([history[by_sentence, new_beam], new_tok[..., None]], axis=2)
            history_att = np.concatenate([history_att[by_sentence, new_beam],
                                          att[by_sentence, new_beam][:, :, None]], axis=2)
            scores, prev = new_scores, new_tok.ravel()
        return [sorted(f, key=lambda h: -h.norm_score)[:nbest] for f in finished]

    def _hypothesis(self, tokens, score, attention, alpha):
        penalty = ((5 + len(tokens) + 1) / 6) ** alpha
        return Hypothesis(list(tokens), float(score), float(score) / penalty, attention)

    # ------------------------------------------------------------------ checks at the door
    def _check_ids(self, what, ids, vocab):
        if hasattr(ids, "detach"):
            ids = ids.detach().cpu().numpy()
        ids = np.asarray(ids)
        if ids.dtype.kind not in "iu":
            raise TypeError(f"Seq2Seq: expected {what} as integer token ids, got dtype "
                            f"{ids.dtype}")
        if ids.ndim != 2:
            raise ValueError(f"Seq2Seq: expected {what} of shape (T, B), got {ids.shape}")
        if ids.shape[0] == 0 or ids.shape[1] == 0:
            raise ValueError(f"Seq2Seq: expected {what} with at least one step and one sequence, "
                             f"got shape {ids.shape}")
        if ids.min() < 0 or ids.max() >= vocab:
            bad = ids[(ids < 0) | (ids >= vocab)]
            raise ValueError(f"Seq2Seq: expected {what} ids in 0..{vocab - 1} (vocabulary of "
                             f"{vocab}), got {bad[:10].tolist()}")
        return ids.copy()  # the tape keeps them, and the caller may reuse its array

    def _check_source(self, src, lengths):
        """src ids, lengths (None when every source fills S) and the valid steps (B, S)."""
        src = self._check_ids("src", src, self.src_vocab)
        S, B = src.shape
        if lengths is None:
            return src, None, None
        if hasattr(lengths, "detach"):
            lengths = lengths.detach().cpu().numpy()
        lengths = np.asarray(lengths)
        if lengths.dtype.kind not in "iu":
            raise TypeError(f"Seq2Seq: expected src_lengths as integers, got dtype "
                            f"{lengths.dtype}")
        if lengths.shape != (B,):
            raise ValueError(f"Seq2Seq: expected src_lengths of shape ({B},), one per source, "
                             f"got shape {lengths.shape}")
        if lengths.min() < 1 or lengths.max() > S:
            bad = lengths[(lengths < 1) | (lengths > S)]
            raise ValueError(f"Seq2Seq: expected every source length in 1..{S} (src's S), got "
                             f"{bad.tolist()}")
        return src, lengths, np.arange(S)[None, :] < lengths[:, None]


def sequence_loss(logits, targets, lengths=None, *, label_smoothing=0.0):
    r"""Cross-entropy of targets (T, B) under softmax(logits (T, B, V)), averaged over the valid
    steps (those before each ``lengths``, all when None); return ``(loss, dlogits)``.

    With label smoothing :math:`\epsilon` (Szegedy et al. 2016; PyTorch's ``label_smoothing``)
    the target distribution is :math:`(1-\epsilon)\, e_y + \epsilon / V`:

    .. math::
        \ell_t = -(1-\epsilon) \log p_{t y_t} - \frac{\epsilon}{V}\sum_v \log p_{tv},\qquad
        \frac{\partial L}{\partial z_t} = \frac{1}{N}\,(p_t - (1-\epsilon)\, e_{y_t} -
        \epsilon / V)

    with N the number of valid steps.
    """
    name = "sequence_loss"
    logits = np.asarray(logits)
    if logits.dtype not in (np.float32, np.float64):
        raise TypeError(f"{name}: expected logits of dtype float32 or float64, got "
                        f"{logits.dtype}")
    if logits.ndim != 3 or 0 in logits.shape:
        raise ValueError(f"{name}: expected logits of shape (T, B, V), non-empty, got "
                         f"{logits.shape}")
    T, B, V = logits.shape
    targets = np.asarray(targets)
    if targets.dtype.kind not in "iu":
        raise TypeError(f"{name}: expected integer targets, got dtype {targets.dtype}")
    if targets.shape != (T, B):
        raise ValueError(f"{name}: expected targets of shape (T={T}, B={B}), got "
                         f"{targets.shape}")
    if targets.min() < 0 or targets.max() >= V:
        bad = targets[(targets < 0) | (targets >= V)]
        raise ValueError(f"{name}: expected targets in 0..{V - 1} (V={V}), got "
                         f"{bad[:10].tolist()}")
    if isinstance(label_smoothing, bool) or not isinstance(label_smoothing, numbers.Real) \
            or not 0 <= label_smoothing < 1:
        raise ValueError(f"{name}: expected label_smoothing in [0, 1), got {label_smoothing!r}")
    mask = None
    if lengths is not None:
        lengths = np.asarray(lengths)
        if lengths.dtype.kind not in "iu":
            raise TypeError(f"{name}: expected lengths as integers, got dtype {lengths.dtype}")
        if lengths.shape != (B,):
            raise ValueError(f"{name}: expected lengths of shape ({B},), got {lengths.shape}")
        if lengths.min() < 1 or lengths.max() > T:
            bad = lengths[(lengths < 1) | (lengths > T)]
            raise ValueError(f"{name}: expected every length in 1..{T} (T), got {bad.tolist()}")
        mask = (np.arange(T)[:, None] < lengths[None, :]).astype(logits.dtype)   # (T, B)
    eps = logits.dtype.type(label_smoothing)
    logp = _log_softmax(logits)                                          # (T, B, V)
    nll = -np.take_along_axis(logp, targets[..., None], axis=2)[..., 0]  # (T, B)
    per_step = nll if eps == 0 else (1 - eps) * nll - eps * logp.mean(axis=2)
    dlogits = np.exp(logp)                                               # softmax
    if eps:
        dlogits -= eps / V
    np.put_along_axis(dlogits, targets[..., None],
                      np.take_along_axis(dlogits, targets[..., None], axis=2) - (1 - eps), axis=2)
    if mask is None:
        n, total = T * B, per_step.sum()
    else:
        n, total = mask.sum(), (per_step * mask).sum()
        dlogits *= mask[..., None]
    dlogits /= logits.dtype.type(n)
    return float(total / n), dlogits


def pad(sequences, value=0):
    """Sequences of ids (lists) as one time-major array (T, B), padded with ``value``, and their
    lengths (B,)."""
    seqs = [list(s) for s in sequences]
    if not seqs:
        raise ValueError("pad: expected at least one sequence, got none")
    lengths = np.array([len(s) for s in seqs])
    if lengths.min() == 0:
        raise ValueError(f"pad: expected non-empty sequences, got an empty one at "
                         f"{np.flatnonzero(lengths == 0).tolist()}")
    out = np.full((lengths.max(), len(seqs)), value, np.int64)
    for b, s in enumerate(seqs):
        out[:len(s), b] = s
    return out, lengths


def _matmuls_of(layer):
    """The products runner of a layer's backend: a compiled backend's (``bptt.native``) runs
    them on its own threads; NumPy's otherwise."""
    package = importlib.import_module(layer.cell.__name__.rpartition(".")[0])
    return getattr(package, "matmuls", numpy_matmuls)


def _log_softmax(z):
    shifted = z - z.max(axis=-1, keepdims=True)
    return shifted - np.log(np.exp(shifted).sum(axis=-1, keepdims=True))


def _embedding_grad(weight, ids, dx):
    """dL/dW of e = W[ids]: each row of dx summed into its id's row, by sorting the ids and
    summing runs (``np.add.reduceat``): 5x faster than ``np.add.at`` at 832 rows of 64."""
    ids = ids.ravel()
    order = np.argsort(ids, kind="stable")
    ids = ids[order]
    starts = np.flatnonzero(np.r_[True, ids[1:] != ids[:-1]])
    dW = np.zeros_like(weight)
    dW[ids[starts]] = np.add.reduceat(dx.reshape(-1, weight.shape[1])[order], starts, axis=0)
    return dW


def _linear_params(prefix, n_in, n_out, rng, dtype):
    """torch.nn.Linear's default init: uniform within 1/sqrt(fan_in)."""
    bound = 1.0 / np.sqrt(n_in)
    return {f"{prefix}.weight": rng.uniform(-bound, bound, (n_out, n_in)).astype(dtype),
            f"{prefix}.bias": rng.uniform(-bound, bound, n_out).astype(dtype)}


def _is_count(value):
    return not isinstance(value, bool) and isinstance(value, numbers.Integral) and value >= 1


def _check_alpha(alpha):
    if isinstance(alpha, bool) or not isinstance(alpha, numbers.Real) \
            or not (math.isfinite(alpha) and alpha >= 0):
        raise ValueError(f"Seq2Seq: expected the length-normalisation alpha a number >= 0, got "
                         f"{alpha!r}")
    return float(alpha)


def _max_lengths(lengths, a, b):
    for arg, value in (("max_len_a", a), ("max_len_b", b)):
        if isinstance(value, bool) or not isinstance(value, numbers.Real) \
                or not (math.isfinite(value) and value >= 0):
            raise ValueError(f"Seq2Seq: expected {arg} a number >= 0, got {value!r}")
    return np.floor(a * np.asarray(lengths) + b).astype(np.int64)
