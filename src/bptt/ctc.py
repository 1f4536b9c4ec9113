r"""Connectionist Temporal Classification (Graves et al., 2006): the loss with its exact gradient
by the forward-backward recursions in log space, and decoding by best path and by prefix beam
search.

Shapes: ``log_probs`` (T, B, C), frames t of sequences b over C classes, one of them the blank;
``targets`` either padded (B, S) or concatenated (the sum of the target lengths,);
``input_lengths`` and ``target_lengths`` (B,). These are the conventions of
``torch.nn.functional.ctc_loss``.

A target :math:`l` of length :math:`S_b` is read through its extended labelling
:math:`l'` of length :math:`S' = 2 S_b + 1`, the labels with a blank :math:`\varnothing`
around and between them. With :math:`y_t(c) = e^{\mathrm{log\_probs}[t, b, c]}` the forward and
backward variables of one sequence are

.. math::
    \alpha_t(s) &= \log y_t(l'_s) + \log\big(e^{\alpha_{t-1}(s)} + e^{\alpha_{t-1}(s-1)}
                    + k_s\, e^{\alpha_{t-1}(s-2)}\big),
        \quad \alpha_0(0) = \log y_0(\varnothing),\ \alpha_0(1) = \log y_0(l_1)\ (S_b > 0) \\
    \hat\beta_t(s) &= \log\big(e^{\beta_{t+1}(s)} + e^{\beta_{t+1}(s+1)}
                    + k_{s+2}\, e^{\beta_{t+1}(s+2)}\big),
        \quad \beta_t(s) = \log y_t(l'_s) + \hat\beta_t(s),
        \quad \hat\beta_{T_b-1}(S'-1) = \hat\beta_{T_b-1}(S'-2) = 0

where :math:`k_s = 1` when :math:`l'_s` is a label other than :math:`l'_{s-2}` (a path may skip
the blank between two different labels, never between a repeat) and 0 otherwise; terms off the
ends are :math:`-\infty`. The loss of the sequence and the occupancy of class c at frame t are

.. math::
    \ell = -\log p(l \mid x) = -\log\big(e^{\alpha_{T_b-1}(S'-1)} + e^{\alpha_{T_b-1}(S'-2)}\big),
    \qquad
    \gamma_t(c) = \sum_{s:\ l'_s = c} e^{\alpha_t(s) + \hat\beta_t(s) + \ell}

:math:`\gamma_t(c)` is the posterior probability that frame t emits c; it sums to 1 over c. The
gradient returned is the one torch's autograd reports for ``log_probs``,

.. math::
    g_t(c) = w_b\,\big(y_t(c) - \gamma_t(c)\big)

for :math:`t < T_b` and 0 beyond, where :math:`w_b` is the sequence's weight in the reduction.
This is :math:`\partial L / \partial z_t(c)` for logits z with ``log_probs = log_softmax(z)``
(torch's CTC backward assumes that producer), so it can be handed straight to the layer that
made the logits; the partial derivative with ``log_probs`` held free would be
:math:`-w_b \gamma_t(c)`. ``ctc_loss_logits`` takes the logits themselves.

Infeasible targets (:math:`T_b < S_b + r_b`, with :math:`r_b` the number of adjacent repeats,
each needing a blank between) have :math:`p(l \mid x) = 0`: the loss is inf and the gradient nan
over the sequence's frames, as in torch, or both 0 with ``zero_infinity=True``.

The recursions run over time in a loop and over the batch and the S' positions as arrays
(``backend="numpy"``, the reference), or in C++ (``backend="native"``, ``bptt.native.ctc``, where
it was built; ``"auto"`` picks it then), which gives the same results up to rounding: one
sequence per thread, each cell's log-sum-exp vectorised over S' with exp and log polynomials
of its own (within 2 ulp).
"""

import math
import operator

import numpy as np

REDUCTIONS = ("none", "sum", "mean")
BACKENDS = ("auto", "numpy", "native")
# |sum_c exp(log_probs[t, b, c]) - 1| above this in a frame: not log-probabilities
PROB_TOLERANCE = 1e-3


_NATIVE = None  # bptt.native.ctc once imported; False where the extension was not built


def _native():
    """bptt.native.ctc, or None where it was not built. Imported on first use, as the layers
    do: bptt.native loads its libraries when imported."""
    global _NATIVE
    if _NATIVE is None:
        try:
            from .native import ctc as module
        except ImportError:
            module = False
        _NATIVE = module
    return _NATIVE or None


def ctc_loss(log_probs, targets, input_lengths, target_lengths, blank=0, reduction="mean",
             zero_infinity=False, *, backend="auto"):
    r"""CTC loss of ``targets`` under per-frame ``log_probs``; return ``(loss, grad)``.

    ``log_probs`` (T, B, C) are log-probabilities (e.g. ``log_softmax`` over C), checked: each
    frame's probabilities must sum to 1 within ``PROB_TOLERANCE``. ``targets`` are padded (B, S)
    (entries past a target's length are ignored) or concatenated 1-D; no target may hold the
    blank. The reductions are torch's:

    .. math::
        L_{\mathrm{none}} = (\ell_b)_b,\qquad L_{\mathrm{sum}} = \sum_b \ell_b,\qquad
        L_{\mathrm{mean}} = \frac{1}{B}\sum_b \frac{\ell_b}{\max(S_b, 1)}

    ``loss`` is a Python float, or for ``"none"`` an array (B,) of log_probs' dtype. ``grad``
    (T, B, C) is :math:`w_b (y_t - \gamma_t)` (see the module's docstring) with :math:`w_b` the
    derivative of L by :math:`\ell_b` (1 for ``"none"``, whose grad is that of the sum). With
    ``zero_infinity`` an infinite :math:`\ell_b` counts as 0, with a zero gradient.
    """
    name = "ctc_loss"
    lp = _float_array(name, "log_probs", log_probs)
    T, B, C = _shape_TBC(name, "log_probs", lp)
    inputs = _check_inputs(name, (T, B, C), targets, input_lengths, target_lengths, blank,
                           reduction, backend)
    probs = _probabilities(name, lp, inputs[1])
    nll, grad = _forward_backward(lp, probs, *inputs, backend)
    return _reduce(nll, grad, inputs[2], reduction, zero_infinity)


def ctc_loss_logits(logits, targets, input_lengths, target_lengths, blank=0, reduction="mean",
                    zero_infinity=False, *, backend="auto"):
    r"""CTC loss of ``targets`` under ``log_softmax(logits)`` over C; return ``(loss, dlogits)``.

    The same loss as ``ctc_loss(log_softmax(logits), ...)``; the gradient is taken through the
    log-softmax,

    .. math::
        \frac{\partial L}{\partial z_t(c)} = w_b\,\big(\mathrm{softmax}(z_t)_c - \gamma_t(c)\big),

    softmax minus the posterior occupancy, whose rows sum to 0: the form a model's output layer
    uses. logits (T, B, C) of float32 or float64, where -inf leaves a class out; the other
    arguments as in ``ctc_loss``.
    """
    name = "ctc_loss_logits"
    z = _float_array(name, "logits", logits)
    T, B, C = _shape_TBC(name, "logits", z)
    inputs = _check_inputs(name, (T, B, C), targets, input_lengths, target_lengths, blank,
                           reduction, backend)
    inside = z[_frame_mask(T, inputs[1])]                              # (frames, C)
    if np.isnan(inside).any() or np.isposinf(inside).any() or np.isneginf(inside.max(
            axis=-1, initial=-np.inf)).any():
        raise ValueError(f"{name}: expected logits without nan or +inf, and some class above "
                         f"-inf, in every frame t < input_lengths[b]; got one that is not")
    with np.errstate(over="ignore", invalid="ignore"):  # frames past the lengths are never read
        shifted = z - z.max(axis=-1, keepdims=True)                    # (T, B, C), max 0 per row
        probs = np.exp(shifted)
        sum_exp = probs.sum(axis=-1, keepdims=True)
        probs /= sum_exp                                               # softmax
        lp = shifted - np.log(sum_exp)                                 # log_softmax
    nll, grad = _forward_backward(lp, probs, *inputs, backend)
    return _reduce(nll, grad, inputs[2], reduction, zero_infinity)


def _forward_backward(lp, probs, labels, input_lengths, target_lengths, blank, backend):
    """(nll (B,), y - gamma (T, B, C) zero past each input length) on the chosen backend."""
    native = _native() if backend != "numpy" else None
    if native is not None:
        return native.forward_backward(lp, probs, labels, input_lengths, target_lengths, blank)
    return forward_backward_numpy(lp, probs, labels, input_lengths, target_lengths, blank)


def forward_backward_numpy(lp, probs, labels, input_lengths, target_lengths, blank):
    r"""The reference recursions for a batch: ``(nll, y - gamma)``.

    lp (T, B, C) log-probabilities and probs (T, B, C) their exponentials; labels (B, S) padded
    targets (any valid class past a target's length); lengths int64 (B,). nll (B,) is
    :math:`\ell_b`, inf for an infeasible target; the second array is :math:`y_t(c) -
    \gamma_t(c)` for :math:`t < T_b`, 0 beyond (nan where :math:`\ell_b` is inf).
    """
    B, C = lp.shape[1:]
    S = labels.shape[1]
    Sx = 2 * S + 1                                          # extended length of the longest
    dtype = lp.dtype
    neg_inf = dtype.type(-np.inf)
    ext = np.full((B, Sx), blank, np.intp)
    ext[:, 1::2] = labels                                   # l': blank, l_1, blank, l_2, ...
    ext_lengths = 2 * target_lengths + 1                    # (B,)
    pos = np.arange(Sx)
    # k_s: a label other than the one two positions back, inside the sequence's l'
    skip = (pos % 2 == 1) & (pos >= 3) & (pos < ext_lengths[:, None])
    skip[:, 3:] &= ext[:, 3:] != ext[:, 1:-2]               # (B, S')
    skip_add = np.where(skip, dtype.type(0), neg_inf)       # log k_s

    T_max = int(input_lengths.max(initial=0))
    frames = _frame_mask(T_max, input_lengths)              # (T', B): t < T_b
    lpe = np.take_along_axis(lp[:T_max], ext[None], axis=2)  # (T', B, S'): log y_t(l'_s)
    lpe[~frames] = neg_inf                                   # nothing is emitted past T_b

    # alpha with two -inf columns in front, so that s-1 and s-2 are plain shifted views
    alpha = np.full((T_max, B, Sx + 2), neg_inf, dtype)
    if T_max:
        alpha[0, :, 2:4] = lpe[0, :, :2]                     # S = 0: only the blank
        if Sx > 1:
            alpha[0, target_lengths == 0, 3] = neg_inf      # l' = (blank,): no label to start on
    penalty = np.zeros((3, B, Sx), dtype)                    # log of the three terms' k
    penalty[0] = skip_add                                    # k = 0: from s-2
    terms = np.empty((3, B, Sx), dtype)
    shift, total = np.empty((B, Sx), dtype), np.empty((B, Sx), dtype)
    floor = np.finfo(dtype).min                              # a shift for an all -inf cell
    with np.errstate(divide="ignore"):                       # log 0 = -inf: unreachable cells
        for t in range(1, T_max):
            prev = _shifted_views(alpha[t - 1])              # (3, B, S'): s-2, s-1, s
            _logsumexp3(prev, penalty, terms, shift, total, floor)
            np.add(total, lpe[t], out=alpha[t, :, 2:])

        # beta-hat (without the emission at t); beta_{t+1} in `nxt`, two -inf columns behind
        beta_hat = np.full((T_max, B, Sx), neg_inf, dtype)
        nxt = np.full((B, Sx + 2), neg_inf, dtype)
        penalty[0] = 0
        penalty[2, :, :-2] = skip_add[:, 2:]                 # k_{s+2}
        penalty[2, :, -2:] = neg_inf
        ends = np.full((B, Sx), neg_inf, dtype)              # beta-hat at t = T_b - 1
        ends[np.arange(B), ext_lengths - 1] = 0
        ends[np.arange(B), np.maximum(ext_lengths - 2, 0)] = 0   # S_b = 0: only s = 0
        for t in range(T_max - 1, -1, -1):
            if t < T_max - 1:
                _logsumexp3(_shifted_views(nxt), penalty, terms, shift, total, floor)
                beta_hat[t] = total
            last = input_lengths == t + 1                    # sequences whose last frame is t
            if last.any():
                beta_hat[t, last] = ends[last]
            np.add(beta_hat[t], lpe[t], out=nxt[:, :Sx])

    # loss: the two ends of l' at each sequence's last frame (the blank only when S_b = 0)
    nll = np.where(target_lengths == 0, dtype.type(0), dtype.type(np.inf))  # T_b = 0
    has = input_lengths > 0
    if has.any():
        b = np.flatnonzero(has)
        last = alpha[input_lengths[b] - 1, b]                # (B', S' + 2)
        end = 2 + ext_lengths[b] - 1                         # column of s = S'_b - 1
        nll[b] = -np.logaddexp(last[np.arange(b.size), end], last[np.arange(b.size), end - 1])

    # gamma_t(c): each position's occupancy, summed into its class by a product with one-hots
    with np.errstate(invalid="ignore"):                      # -inf + inf: nan, as in torch
        occupancy = np.exp(alpha[:, :, 2:] + beta_hat + nll[None, :, None])   # (T', B, S')
    one_hot = np.zeros((B, Sx, C), dtype)
    np.put_along_axis(one_hot, ext[:, :, None], 1, axis=2)
    gamma = np.matmul(occupancy.transpose(1, 0, 2), one_hot).transpose(1, 0, 2)   # (T', B, C)
    grad = np.zeros_like(lp)
    grad[:T_max] = probs[:T_max] - gamma
    grad[:T_max][~frames] = 0
    return nll, grad


def _shifted_views(row):
    """(B, S'+2) -> (3, B, S') views of one array: row[:, s], row[:, s+1], row[:, s+2]."""
    B, W = row.shape
    return np.lib.stride_tricks.as_strided(row, (3, B, W - 2), (row.strides[1],) + row.strides,
                                           writeable=False)


def _logsumexp3(terms_in, penalty, terms, shift, total, floor):
    """total = log sum_k exp(terms_in[k] + penalty[k]), shifted by each cell's maximum."""
    np.add(terms_in, penalty, out=terms)                     # (3, B, S')
    np.max(terms, axis=0, out=shift)
    np.maximum(shift, floor, out=shift)                      # all -inf: exp(-inf - floor) = 0
    terms -= shift
    np.exp(terms, out=terms)
    np.sum(terms, axis=0, out=total)
    np.log(total, out=total)
    total += shift


def _reduce(nll, grad, target_lengths, reduction, zero_infinity):
    if zero_infinity:
        infinite = np.isinf(nll)
        if infinite.any():
            nll = np.where(infinite, nll.dtype.type(0), nll)
            grad[:, infinite] = 0
    if reduction == "none":
        return nll, grad
    if reduction == "sum":
        return float(nll.sum()), grad
    weights = (1.0 / (np.maximum(target_lengths, 1) * nll.size)).astype(nll.dtype)  # (B,)
    grad *= weights[:, None]
    return float((nll / np.maximum(target_lengths, 1).astype(nll.dtype)).mean()), grad


# ---------------------------------------------------------------------- decoding
def ctc_greedy_decode(log_probs, input_lengths=None, blank=0):
    """Best-path decoding: per frame the most likely class, repeats merged, blanks dropped.

    log_probs (T, B, C), or any scores with the same argmax (logits, probabilities);
    input_lengths (B,) or None for T everywhere. Returns a list of B label lists. This is the
    labelling of the single most likely path, not always the most likely labelling.
    """
    name = "ctc_greedy_decode"
    scores = _float_array(name, "log_probs", log_probs)
    T, B, C = _shape_TBC(name, "log_probs", scores)
    lengths = _lengths_or_full(name, input_lengths, T, B)
    blank = _blank(name, blank, C)
    best = scores.argmax(axis=-1)                                       # (T, B)
    keep = np.ones_like(best, bool)
    keep[1:] = best[1:] != best[:-1]                                    # first of each run
    keep &= (best != blank) & _frame_mask(T, lengths)
    return [best[keep[:, b], b].tolist() for b in range(B)]


def ctc_beam_search(log_probs, input_lengths=None, blank=0, *, beam_width=10,
                    allowed_labels=None, lexicon=None, next_labels=None):
    r"""Prefix beam search: the most likely labellings found, with their log-probabilities.

    Each prefix :math:`\pi` in the beam carries :math:`p_\varnothing(\pi)` and :math:`p_x(\pi)`,
    the probability of the frames so far over the paths that collapse to :math:`\pi` and end in
    a blank or in :math:`\pi`'s last label x. A frame t updates them exactly:

    .. math::
        p_\varnothing'(\pi) &= y_t(\varnothing)\,\big(p_\varnothing(\pi) + p_x(\pi)\big),
        \qquad p_x'(\pi) = y_t(x)\, p_x(\pi) \\
        p_c'(\pi c) &\mathrel{+}= y_t(c)\,\big(p_\varnothing(\pi) + [c \ne x]\, p_x(\pi)\big)

    and the ``beam_width`` prefixes of largest :math:`p_\varnothing + p_x` are kept. While no
    path of a kept labelling has been dropped, its score is exactly the CTC log-likelihood
    :math:`\log p(l \mid x) = -\ell` of ``ctc_loss``; with a pruned beam it is a lower bound.

    Constraints (any combination; a labelling must meet all): ``allowed_labels``, a collection
    of the labels the output may use; ``lexicon``, a collection of label sequences that the
    output must be one of (a prefix grows only along them); ``next_labels``, a callable taking
    a prefix (a tuple) and returning the labels allowed after it.

    log_probs (T, B, C) log-probabilities (checked as in ``ctc_loss``); input_lengths (B,) or
    None for T everywhere. Returns a list over the batch of lists of ``(labels, log_prob)``,
    labels a tuple, best first, at most ``beam_width`` of them (fewer with a lexicon when some
    kept prefixes are not words).
    """
    name = "ctc_beam_search"
    lp = _float_array(name, "log_probs", log_probs)
    T, B, C = _shape_TBC(name, "log_probs", lp)
    lengths = _lengths_or_full(name, input_lengths, T, B)
    blank = _blank(name, blank, C)
    if isinstance(beam_width, bool) or not isinstance(beam_width, int) or beam_width < 1:
        raise ValueError(f"{name}: expected beam_width an int >= 1, got {beam_width!r}")
    _probabilities(name, lp, lengths)
    label_mask = _allowed_mask(name, allowed_labels, C, blank)
    words = _lexicon_trie(name, lexicon, C, blank)
    if next_labels is not None and not callable(next_labels):
        raise TypeError(f"{name}: expected next_labels a callable prefix -> labels, got "
                        f"{type(next_labels).__name__}")
    lp64 = lp.astype(np.float64)
    constraint = None
    if label_mask is not None or words is not None or next_labels is not None:
        constraint = _Constraint(label_mask, words, next_labels, C, name)
    return [_prefix_beam(lp64[:lengths[b], b], blank, beam_width, constraint)
            for b in range(B)]


class _Prefixes:
    """The prefixes met in one search as a tree: a prefix is an id, with its parent's id and its
    last label, so that growing and hashing a prefix cost O(1) however long it is."""

    def __init__(self):
        self.parent, self.label, self.children = [-1], [-1], {}   # id 0: the empty prefix

    def child(self, prefix, c):
        key = (prefix, c)
        node = self.children.get(key)
        if node is None:
            node = self.children[key] = len(self.parent)
            self.parent.append(prefix)
            self.label.append(c)
        return node

    def labels(self, prefix):
        out = []
        while prefix > 0:
            out.append(self.label[prefix])
            prefix = self.parent[prefix]
        return tuple(reversed(out))


def _prefix_beam(lp, blank, beam_width, constraint):
    """One sequence: lp (T_b, C) float64. Returns [(labels, log p)] best first."""
    T, C = lp.shape
    neg_inf = -math.inf
    tree = _Prefixes()
    ids = np.zeros(1, np.int64)                                # the beam: prefix ids, and
    pb, px = np.zeros(1), np.full(1, neg_inf)                  # log p_blank, log p_last
    for t in range(T):
        y = lp[t]
        K = ids.size
        last = np.array([tree.label[i] for i in ids])          # (K,), -1 for the empty prefix
        has = last >= 0
        total = np.logaddexp(pb, px)
        stay_pb = total + y[blank]
        stay_px = np.where(has, px + y[np.where(has, last, blank)], neg_inf)
        # p_c(prefix c), from every path of the prefix but those ending in c itself
        ext = total[:, None] + y[None, :]                      # (K, C)
        rows = np.flatnonzero(has)
        ext[rows, last[rows]] = pb[rows] + y[last[rows]]
        ext[:, blank] = neg_inf
        if constraint is not None:
            ext[~constraint.allowed(ids, tree)] = neg_inf
        # an extension already in the beam gathers into that prefix's p_last
        row_of = {int(i): k for k, i in enumerate(ids)}
        for k in rows:
            j = row_of.get(tree.parent[ids[k]])
            if j is not None:
                stay_px[k] = np.logaddexp(stay_px[k], ext[j, last[k]])
                ext[j, last[k]] = neg_inf
        # the beam_width best of the kept prefixes and the new ones
        scores = np.concatenate([np.logaddexp(stay_pb, stay_px), ext.ravel()])
        top = np.flatnonzero(scores > neg_inf)
        if top.size > beam_width:
            top = top[np.argpartition(-scores[top], beam_width - 1)[:beam_width]]
        kept, new = top[top < K], top[top >= K] - K
        parents, labels = np.divmod(new, C)
        ids = np.concatenate([ids[kept], np.array(
            [tree.child(int(ids[j]), int(c)) for j, c in zip(parents, labels)], np.int64)])
        pb = np.concatenate([stay_pb[kept], np.full(new.size, neg_inf)])
        px = np.concatenate([stay_px[kept], ext[parents, labels]])
    score = np.logaddexp(pb, px)
    order = np.argsort(-score, kind="stable")
    out = [(tree.labels(int(ids[k])), float(score[k])) for k in order if score[k] > neg_inf]
    if constraint is not None and constraint.words is not None:
        out = [(lab, sc) for lab, sc in out if _END in _trie_node(constraint.words, lab)]
    return out


_END = -1  # the key in a lexicon trie's node that marks the end of a word


class _Constraint:
    """Which labels may follow each prefix: allowed labels, a lexicon's trie, a callable."""

    def __init__(self, label_mask, words, next_labels, C, name):
        self.label_mask, self.words, self.next_labels = label_mask, words, next_labels
        self.C, self.name = C, name
        self.nodes = {0: words}                        # prefix id -> its node in the lexicon

    def allowed(self, ids, tree):
        """Boolean (K, C): label c may follow prefix ids[k]."""
        mask = np.ones((len(ids), self.C), bool)
        if self.label_mask is not None:
            mask &= self.label_mask
        for k, i in enumerate(ids.tolist()):
            if self.words is not None:
                node = self._node(i, tree)
                row = np.zeros(self.C, bool)
                row[[c for c in node if c != _END]] = True
                mask[k] &= row
            if self.next_labels is not None:
                prefix = tree.labels(i)
                nxt = np.asarray(list(self.next_labels(prefix)), dtype=np.int64)
                if nxt.size and (nxt.min() < 0 or nxt.max() >= self.C):
                    raise ValueError(f"{self.name}: expected next_labels({prefix}) to give "
                                     f"labels in 0..{self.C - 1}, got {nxt.tolist()}")
                row = np.zeros(self.C, bool)
                row[nxt] = True
                mask[k] &= row
        return mask

    def _node(self, i, tree):
        node = self.nodes.get(i)
        if node is None:   # a prefix grows only along the lexicon, so its parent has a node
            node = self.nodes[i] = self._node(tree.parent[i], tree)[tree.label[i]]
        return node


def _allowed_mask(name, allowed_labels, C, blank):
    if allowed_labels is None:
        return None
    labels = np.asarray(list(allowed_labels))
    if labels.size and labels.dtype.kind not in "iu":
        raise TypeError(f"{name}: expected allowed_labels to be integer labels, got dtype "
                        f"{labels.dtype}")
    if labels.size and (labels.min() < 0 or labels.max() >= C):
        raise ValueError(f"{name}: expected allowed_labels in 0..{C - 1}, got "
                         f"{sorted(set(labels.tolist()))}")
    mask = np.zeros(C, bool)
    mask[labels.astype(np.int64)] = True
    return mask


def _lexicon_trie(name, lexicon, C, blank):
    """The words as a trie of dicts, label -> node, ``_END`` marking a word's end."""
    if lexicon is None:
        return None
    root = {}
    for word in lexicon:
        seq = [operator.index(c) for c in word]
        if any(c < 0 or c >= C or c == blank for c in seq):
            raise ValueError(f"{name}: expected lexicon words of labels in 0..{C - 1} other "
                             f"than blank={blank}, got {seq}")
        node = root
        for c in seq:
            node = node.setdefault(c, {})
        node[_END] = True
    return root


def _trie_node(words, prefix):
    node = words
    for c in prefix:
        node = node[c]
    return node


# ---------------------------------------------------------------------- checks at the door
def _float_array(name, what, value):
    arr = np.asarray(value)
    if arr.dtype not in (np.float32, np.float64):
        raise TypeError(f"{name}: expected {what} of dtype float32 or float64, got {arr.dtype}")
    return arr


def _shape_TBC(name, what, arr):
    if arr.ndim != 3 or arr.shape[1] < 1 or arr.shape[2] < 1:
        raise ValueError(f"{name}: expected {what} of shape (T, B, C) with B, C >= 1, got "
                         f"{arr.shape}")
    return arr.shape


def _blank(name, blank, C):
    if isinstance(blank, bool) or not isinstance(blank, (int, np.integer)) or not 0 <= blank < C:
        raise ValueError(f"{name}: expected blank an int in 0..{C - 1} (C={C}), got {blank!r}")
    return int(blank)


def _lengths(name, what, value, B, most, most_name):
    arr = np.asarray(value)
    if arr.dtype.kind not in "iu":
        raise TypeError(f"{name}: expected {what} of integers, got dtype {arr.dtype}")
    if arr.shape != (B,):
        raise ValueError(f"{name}: expected {what} of shape (B,) = ({B},), got {arr.shape}")
    bad = (arr < 0) | (arr > most)
    if bad.any():
        raise ValueError(f"{name}: expected {what} in 0..{most} ({most_name}), got "
                         f"{arr[bad][:10].tolist()} at {np.flatnonzero(bad)[:10].tolist()}")
    return arr.astype(np.int64)


def _lengths_or_full(name, input_lengths, T, B):
    if input_lengths is None:
        return np.full(B, T, np.int64)
    return _lengths(name, "input_lengths", input_lengths, B, T, "T")


def _check_inputs(name, shape, targets, input_lengths, target_lengths, blank, reduction,
                  backend):
    """(labels (B, S) padded with the blank, input_lengths, target_lengths, blank): the
    lengths int64 (B,), blank an int."""
    T, B, C = shape
    blank = _blank(name, blank, C)
    if reduction not in REDUCTIONS:
        raise ValueError(f"{name}: expected reduction 'none', 'sum' or 'mean', got {reduction!r}")
    if backend not in BACKENDS:
        raise ValueError(f"{name}: expected backend 'auto', 'numpy' or 'native', got "
                         f"{backend!r}")
    if backend == "native" and _native() is None:
        raise ValueError(f"{name}: backend='native' needs the extension bptt.native._ctc, "
                         f"which was not built (or bptt.native did not import)")
    input_lengths = _lengths(name, "input_lengths", input_lengths, B, T, "T")
    targets = np.asarray(targets)
    if targets.dtype.kind not in "iu":
        raise TypeError(f"{name}: expected integer targets (labels), got dtype {targets.dtype}")
    if targets.ndim == 2:
        if targets.shape[0] != B:
            raise ValueError(f"{name}: expected padded targets of shape (B, S) with B={B}, got "
                             f"{targets.shape}")
        target_lengths = _lengths(name, "target_lengths", target_lengths, B, targets.shape[1],
                                  "S, the padded targets' width")
        S = int(target_lengths.max(initial=0))
        inside = np.arange(S) < target_lengths[:, None]          # (B, S)
        values = targets[:, :S][inside]
    elif targets.ndim == 1:
        target_lengths = _lengths(name, "target_lengths", target_lengths, B, targets.size,
                                  "the concatenated targets' length")
        if target_lengths.sum() != targets.size:
            raise ValueError(f"{name}: expected concatenated targets of length "
                             f"sum(target_lengths) = {target_lengths.sum()}, got {targets.size}")
        S = int(target_lengths.max(initial=0))
        inside = np.arange(S) < target_lengths[:, None]
        values = targets
    else:
        raise ValueError(f"{name}: expected targets padded (B, S) or concatenated 1-D, got "
                         f"shape {targets.shape}")
    bad = (values < 0) | (values >= C) | (values == blank)
    if bad.any():
        where = np.argwhere(inside)[np.flatnonzero(bad)[:10]]
        raise ValueError(f"{name}: expected target labels in 0..{C - 1} other than "
                         f"blank={blank}, got {values[bad][:10].tolist()} at (b, s) "
                         f"{[tuple(w) for w in where.tolist()]}")
    labels = np.full((B, S), blank, np.int64)
    labels[inside] = values
    return labels, input_lengths, target_lengths, blank


def _frame_mask(T, input_lengths):
    """(T, B): frame t of sequence b is inside its length."""
    return np.arange(T)[:, None] < input_lengths[None, :]


def _probabilities(name, lp, input_lengths):
    """exp(log_probs), after checking that every frame inside the lengths sums to 1."""
    with np.errstate(over="ignore", invalid="ignore"):        # padding frames may hold anything
        probs = np.exp(lp)
        sums = probs.sum(axis=-1)                             # (T, B)
    frames = _frame_mask(lp.shape[0], input_lengths)
    bad = frames & ~(np.abs(sums - 1) <= PROB_TOLERANCE)
    if bad.any():
        t, b = np.argwhere(bad)[0]
        raise ValueError(f"{name}: expected log_probs to be log-probabilities (each frame's "
                         f"exp summing to 1, e.g. from log_softmax), got frame (t={t}, b={b}) "
                         f"whose probabilities sum to {sums[t, b]:.6g} ({bad.sum()} such "
                         f"frames)")
    return probs
