r"""Global attention over an encoder's outputs (Luong et al. 2015; Bahdanau et al. 2015), with its
backward written by hand.

A query :math:`h_t` (the decoder's top output) reads the source states :math:`\bar h_s`:

.. math::
    \mathrm{score}(h_t, \bar h_s) &= \begin{cases}
        h_t^\top \bar h_s & \texttt{dot} \\
        h_t^\top W_a \bar h_s & \texttt{general} \\
        v_a^\top \tanh(W_a [h_t; \bar h_s]) & \texttt{concat} \text{ (Bahdanau's additive score)}
    \end{cases} \\
    \alpha_{ts} &= \mathrm{softmax}_s(\mathrm{score}(h_t, \bar h_s)) \quad
        \text{(padded source steps get weight 0)} \\
    c_t &= \textstyle\sum_s \alpha_{ts} \bar h_s \\
    \tilde h_t &= \tanh(W_c [c_t; h_t]) \qquad \text{(the attentional state)}

Shapes, batch-major inside so that every product is one ``np.matmul`` over B: queries (B, T, H),
source states (B, S, D), weights alpha (B, T, S), attentional states (B, T, H). Parameters:
``W_a`` (H, D) for ``general``, (A, H + D) for ``concat`` with ``v_a`` (A,); ``W_c`` (H, D + H).
``dot`` needs H == D.

The part that depends on the source alone (``W_a`` applied to the source states, the mask) is
computed once per source by ``prepare``, so that a decoder stepping one target at a time reuses
it; its gradient is gathered over every step in a ``dmemory`` and taken back through ``W_a`` once
by ``memory_backward``.
"""

import numpy as np

from .cells.gates import matmuls as numpy_matmuls

SCORES = ("dot", "general", "concat")


class Attention:
    """The attention's parameters (live arrays in ``params``) and its passes.

    ``query_size`` H (the decoder's), ``memory_size`` D (the encoder's output, both directions),
    ``attention_size`` A (``concat`` only; default H). ``matmuls`` runs a list of products
    (``[a @ b for a, b in pairs]``); a compiled backend's runs them on its own threads (see
    ``bptt.native.matmuls``), so that they do not wake a second thread pool, NumPy's BLAS, to
    compete with its own."""

    def __init__(self, score, query_size, memory_size, attention_size=None, *,
                 dtype=np.float32, rng=None, matmuls=numpy_matmuls):
        if score not in SCORES:
            raise ValueError(f"Attention: expected score one of {', '.join(SCORES)}, got "
                             f"{score!r}")
        H, D = int(query_size), int(memory_size)
        if score == "dot" and H != D:
            raise ValueError(f"Attention: the dot score needs the decoder's hidden size equal to "
                             f"the encoder's output size (both directions), got H={H} and D={D}; "
                             f"use 'general' or 'concat', or make the sizes equal")
        A = H if attention_size is None else int(attention_size)
        self.score, self.H, self.D, self.A = score, H, D, A
        self.dtype = np.dtype(dtype)
        self.matmuls = matmuls
        rng = np.random.default_rng() if rng is None else rng
        self.params = {}
        if score == "general":
            self.params["W_a"] = _uniform(rng, (H, D), D, self.dtype)
        elif score == "concat":
            self.params["W_a"] = _uniform(rng, (A, H + D), H + D, self.dtype)
            self.params["v_a"] = _uniform(rng, (A,), A, self.dtype)
        self.params["W_c"] = _uniform(rng, (H, D + H), D + H, self.dtype)

    # ------------------------------------------------------------------ the source side
    def prepare(self, hs, valid=None):
        """The memory of one batch of sources: hs (B, S, D) and ``valid`` (B, S) booleans (None:
        every step). Holds hs, the keys the score multiplies the queries with, and the additive
        mask (0 or -inf) of the padded steps."""
        hs = np.ascontiguousarray(hs, self.dtype)
        if self.score == "dot":
            keys = hs
        else:  # general: (B, S, H); concat: (B, S, A), by W_a's h_s half
            W_k = self.params["W_a"] if self.score == "general" else self.params["W_a"][:, self.H:]
            (keys,) = self.matmuls([(rows(hs), W_k.T)])
            keys = keys.reshape(hs.shape[:2] + (-1,))
        neg = None
        if valid is not None and not valid.all():
            neg = np.where(valid, 0, -np.inf).astype(self.dtype)[:, None, :]   # (B, 1, S)
        return {"hs": hs, "keys": keys, "neg": neg}

    def take(self, memory, index):
        """The memory of the sources at ``index`` (for a beam: each source repeated)."""
        return {k: None if v is None else v[index] for k, v in memory.items()}

    def memory_backward(self, dmemory, memory, grads):
        """Take dL/dkeys back through the keys' product with W_a (adding to ``grads``); return
        dL/dhs (B, S, D), the memory's gradient from every step together."""
        dhs, dkeys, hs = dmemory["hs"], dmemory["keys"], memory["hs"]
        if self.score == "dot":
            return dhs + dkeys
        # through keys = hs W_k^T, W_k = W_a (general) or W_a's h_s half (concat)
        cols = slice(None) if self.score == "general" else slice(self.H, None)
        W_k = self.params["W_a"][:, cols]
        dW_k, dhs_k = self.matmuls([(rows(dkeys).T, rows(hs)), (rows(dkeys), W_k)])
        grads["W_a"][:, cols] += dW_k
        return dhs + dhs_k.reshape(dhs.shape)

    def zero_grads(self):
        return {k: np.zeros_like(v) for k, v in self.params.items()}

    def zero_dmemory(self, memory):
        return {"hs": np.zeros_like(memory["hs"]), "keys": np.zeros_like(memory["keys"])}

    # ------------------------------------------------------------------ the target side
    def forward(self, q, memory, keep=True):
        """Queries q (B, T, H) against the memory; return the attentional states (B, T, H), the
        weights alpha (B, T, S) and a tape (None when ``keep`` is false)."""
        keys, hs, neg = memory["keys"], memory["hs"], memory["neg"]
        pre = None
        if self.score == "concat":
            H = self.H
            (pq,) = self.matmuls([(rows(q), self.params["W_a"][:, :H].T)])
            pq = pq.reshape(q.shape[:2] + (-1,))                        # (B, T, A)
            pre = np.tanh(pq[:, :, None, :] + keys[:, None, :, :])      # (B, T, S, A)
            scores = pre @ self.params["v_a"]                           # (B, T, S)
        else:
            scores = q @ keys.transpose(0, 2, 1)                        # (B, T, S)
        if neg is not None:
            scores += neg
        scores -= scores.max(axis=2, keepdims=True)
        alpha = np.exp(scores, out=scores)
        alpha /= alpha.sum(axis=2, keepdims=True)                       # softmax over s
        ctx = alpha @ hs                                                # (B, T, D)
        cat = np.concatenate([ctx, q], axis=2)                          # (B, T, D + H)
        (z,) = self.matmuls([(rows(cat), self.params["W_c"].T)])
        hbar = np.tanh(z, out=z).reshape(q.shape)                       # (B, T, H)
        tape = dict(q=q, alpha=alpha, cat=cat, hbar=hbar, pre=pre) if keep else None
        return hbar, alpha, tape

    def backward(self, dhbar, tape, memory, grads, dmemory):
        """Backpropagate dL/dhbar (B, T, H); add the parameters' gradients to ``grads`` and the
        memory's to ``dmemory``; return dL/dq (B, T, H)."""
        q, alpha, cat, hbar = tape["q"], tape["alpha"], tape["cat"], tape["hbar"]
        D, H = self.D, self.H
        W_c = self.params["W_c"]
        dz = dhbar * (1 - hbar * hbar)                         # through hbar = tanh(z)
        dW_c, dcat = self.matmuls([(rows(dz).T, rows(cat)), (rows(dz), W_c)])   # z = [c; h] W_c^T
        grads["W_c"] += dW_c
        dcat = dcat.reshape(cat.shape)
        dctx, dq = dcat[:, :, :D], dcat[:, :, D:]
        hs = memory["hs"]
        dalpha = dctx @ hs.transpose(0, 2, 1)                  # through c = alpha hs
        dmemory["hs"] += alpha.transpose(0, 2, 1) @ dctx
        # through softmax: ds = alpha (dalpha - <alpha, dalpha>); padded steps have alpha = 0
        dscores = dalpha
        dscores -= (dalpha * alpha).sum(axis=2, keepdims=True)
        dscores *= alpha
        if self.score == "concat":
            pre, v = tape["pre"], self.params["v_a"]
            grads["v_a"] += dscores.reshape(-1) @ pre.reshape(-1, self.A)   # score = pre v
            dpre = dscores[..., None] * v
            dpre *= 1 - pre * pre                              # through pre = tanh(pq + keys)
            dpq = dpre.sum(axis=2)                             # (B, T, A)
            dmemory["keys"] += dpre.sum(axis=1)                # (B, S, A)
            W_q = self.params["W_a"][:, :H]
            dW_q, dq_a = self.matmuls([(rows(dpq).T, rows(q)), (rows(dpq), W_q)])  # pq = q W_q^T
            grads["W_a"][:, :H] += dW_q
            return dq + dq_a.reshape(dq.shape)
        keys = memory["keys"]
        dmemory["keys"] += dscores.transpose(0, 2, 1) @ q      # through scores = q keys^T
        return dq + dscores @ keys


def rows(x):
    """x (..., K) as the matrix of its rows (N, K), for one GEMM over them all: NumPy's matmul
    of a stack by a matrix runs one GEMM per matrix of the stack, 1.7x slower at
    (64, 13, 512) @ (512, 256)."""
    return x.reshape(-1, x.shape[-1])


def _uniform(rng, shape, fan_in, dtype):
    """torch.nn.Linear's default: uniform within 1/sqrt(fan_in)."""
    bound = 1.0 / np.sqrt(fan_in)
    return rng.uniform(-bound, bound, shape).astype(dtype)
