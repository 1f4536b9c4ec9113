"""bptt.Seq2Seq against the same model written in torch (autograd, float64), its decoders
against its own teacher-forced pass, and its checks at the door."""

import itertools

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from conftest import rel_err, seed_of

from bptt import Seq2Seq
from bptt.layers import BACKENDS
from bptt.seq2seq import pad, sequence_loss

TORCH_CELLS = {"lstm": torch.nn.LSTM, "gru": torch.nn.GRU}


class TorchAttention(torch.nn.Module):
    """Luong's global attention (dot, general) and Bahdanau's additive score, from the papers'
    equations (the concat score on the concatenation itself)."""

    def __init__(self, att):
        super().__init__()
        self.score = att.score
        for k, v in att.params.items():
            self.register_parameter(k, torch.nn.Parameter(torch.tensor(v)))

    def forward(self, q, hs, valid):                 # q (B, T, H), hs (B, S, D), valid (B, S)
        if self.score == "dot":
            scores = q @ hs.transpose(1, 2)
        elif self.score == "general":
            scores = q @ self.W_a @ hs.transpose(1, 2)
        else:
            B, T, H = q.shape
            S = hs.shape[1]
            cat = torch.cat([q[:, :, None].expand(B, T, S, H),
                             hs[:, None].expand(B, T, S, hs.shape[2])], dim=3)
            scores = torch.tanh(cat @ self.W_a.T) @ self.v_a
        scores = scores.masked_fill(~valid[:, None, :], -torch.inf)
        alpha = torch.softmax(scores, dim=2)
        ctx = alpha @ hs
        return torch.tanh(torch.cat([ctx, q], dim=2) @ self.W_c.T)


class TorchSeq2Seq(torch.nn.Module):
    """The same model in torch modules, for autograd to differentiate."""

    def __init__(self, m: Seq2Seq):
        super().__init__()
        c = m.config
        E, H = c["embed_size"], c["hidden_size"]
        Cell = TORCH_CELLS[c["cell"]]
        self.lstm, self.input_feeding = c["cell"] == "lstm", c["input_feeding"]
        self.dirs = 2 if c["bidirectional"] else 1
        D = self.dirs * c["encoder_hidden_size"]
        self.src_embedding = torch.nn.Embedding(c["src_vocab"], E)
        self.encoder = Cell(E, c["encoder_hidden_size"], c["encoder_layers"],
                            bidirectional=c["bidirectional"])
        if c["bridge"]:
            self.bridge = torch.nn.Linear(D, H)
            if self.lstm:
                self.bridge_c = torch.nn.Linear(D, H)
        self.tgt_embedding = torch.nn.Embedding(c["tgt_vocab"], E)
        self.decoder = Cell(E + (H if self.input_feeding else 0), H, c["decoder_layers"])
        self.attention = TorchAttention(m.attention)
        self.out = torch.nn.Linear(H, c["tgt_vocab"])
        self.double()
        self.load_state_dict({k: torch.tensor(v) for k, v in m.state_dict().items()})

    def _bridged(self, linear, s):                   # (L*dirs, B, He) -> (L, B, H)
        layers = [torch.cat([s[l * self.dirs + d] for d in range(self.dirs)], dim=1)
                  for l in range(s.shape[0] // self.dirs)]
        return torch.tanh(linear(torch.stack(layers)))

    def forward(self, src, tgt_in, src_lengths):
        S = src.shape[0]
        packed = torch.nn.utils.rnn.pack_padded_sequence(
            self.src_embedding(src), torch.tensor(src_lengths), enforce_sorted=False)
        hs, h_n = self.encoder(packed)
        hs, _ = torch.nn.utils.rnn.pad_packed_sequence(hs, total_length=S)
        hs = hs.transpose(0, 1)                                  # (B, S, D)
        valid = torch.arange(S)[None, :] < torch.tensor(src_lengths)[:, None]
        state = None
        if hasattr(self, "bridge"):
            state = (self._bridged(self.bridge, h_n[0]), self._bridged(self.bridge_c, h_n[1])) \
                if self.lstm else self._bridged(self.bridge, h_n)
        emb = self.tgt_embedding(tgt_in)                         # (T, B, E)
        if not self.input_feeding:
            y, _ = self.decoder(emb, state)
            hbar = self.attention(y.transpose(0, 1), hs, valid)  # (B, T, H)
        else:
            fed = torch.zeros(emb.shape[1], self.out.in_features, dtype=emb.dtype)
            outs = []
            for t in range(emb.shape[0]):
                y, state = self.decoder(torch.cat([emb[t], fed], dim=1)[None], state)
                fed = self.attention(y.transpose(0, 1), hs, valid)[:, 0]
                outs.append(fed)
            hbar = torch.stack(outs, dim=1)
        return self.out(hbar.transpose(0, 1))                    # (T, B, V)


def batch(m, rng, B=3, S=6, T=5, full=False):
    """Random sources and targets with ragged lengths (the longest of each filling its array)."""
    src_len = np.full(B, S) if full else rng.integers(1, S + 1, B)
    tgt_len = np.full(B, T) if full else rng.integers(1, T + 1, B)
    src_len[0], tgt_len[-1] = S, T
    src = rng.integers(0, m.src_vocab, (S, B))
    tgt_in = rng.integers(0, m.tgt_vocab, (T, B))
    tgt_out = rng.integers(0, m.tgt_vocab, (T, B))
    return src, src_len, tgt_in, tgt_out, tgt_len


def torch_loss(twin, src, src_len, tgt_in, tgt_out, tgt_len, eps):
    logits = twin(torch.tensor(src), torch.tensor(tgt_in), src_len.tolist())
    T, B, V = logits.shape
    per = F.cross_entropy(logits.reshape(-1, V), torch.tensor(tgt_out).reshape(-1),
                          label_smoothing=eps, reduction="none").reshape(T, B)
    mask = torch.tensor((np.arange(T)[:, None] < tgt_len[None, :]).astype(float))
    return logits, (per * mask).sum() / mask.sum()


def check_against_torch(m, rng, eps, **batch_args):
    twin = TorchSeq2Seq(m)
    src, src_len, tgt_in, tgt_out, tgt_len = batch(m, rng, **batch_args)
    logits, tape = m.forward(src, tgt_in, src_len)
    loss, dlogits = sequence_loss(logits, tgt_out, tgt_len, label_smoothing=eps)
    grads = m.backward(dlogits, tape)
    logits_t, loss_t = torch_loss(twin, src, src_len, tgt_in, tgt_out, tgt_len, eps)
    loss_t.backward()
    assert rel_err(logits, logits_t.detach().numpy()) < 1e-9
    assert abs(loss - loss_t.item()) < 1e-9 * abs(loss_t.item())
    tgrads = {k: p.grad.numpy() for k, p in twin.named_parameters()}
    assert grads.keys() == tgrads.keys() == m.params.keys()
    for k, g in tgrads.items():
        assert np.any(g != 0), k          # every parameter takes part
        assert rel_err(grads[k], g) < 1e-9, k
    return grads


GRID = list(itertools.product(("dot", "general", "concat"), ("lstm", "gru"), (1, 2),
                              (False, True)))


@pytest.mark.parametrize("score,cell,layers,feeding", GRID)
def test_every_gradient_matches_torch(score, cell, layers, feeding):
    """Ragged source and target lengths, bidirectional encoder, bridge; label smoothing in half
    the cases (all of them with input feeding or without across the grid)."""
    seed = seed_of(score, cell, layers, feeding)
    eps = 0.1 if (layers + feeding) % 2 else 0.0
    m = Seq2Seq(9, 11, 6, embed_size=4, cell=cell, encoder_layers=layers,
                decoder_layers=layers, attention=score, attention_size=5,
                input_feeding=feeding, dtype=np.float64, seed=seed % 1000)
    check_against_torch(m, np.random.default_rng(seed), eps)


@pytest.mark.parametrize("cell,feeding", [("lstm", False), ("gru", True)])
def test_gradients_unidirectional_no_bridge_unequal_depths(cell, feeding):
    m = Seq2Seq(7, 8, 5, embed_size=3, encoder_hidden_size=4, cell=cell, encoder_layers=2,
                decoder_layers=1, bidirectional=False, bridge=False, attention="concat",
                input_feeding=feeding, dtype=np.float64, seed=4)
    assert not any(k.startswith("bridge") for k in m.params)
    check_against_torch(m, np.random.default_rng(5), 0.2, B=4, S=5, T=6)


def test_gradients_full_lengths_and_dot_with_bidirectional_sizes():
    m = Seq2Seq(6, 7, 8, cell="lstm", attention="dot", encoder_layers=3, decoder_layers=3,
                dtype=np.float64, seed=8)
    assert m.encoder.hidden_size == 4 and m.encoder.bidirectional
    check_against_torch(m, np.random.default_rng(9), 0.0, B=2, S=4, T=3, full=True)


@pytest.mark.parametrize("feeding", [False, True])
def test_native_backend_gives_the_reference_gradients(feeding):
    pytest.importorskip("bptt.native")
    args = dict(embed_size=4, cell="lstm", encoder_layers=2, decoder_layers=2,
                attention="general", input_feeding=feeding, dtype=np.float64, seed=3)
    ref, nat = Seq2Seq(9, 11, 6, **args), Seq2Seq(9, 11, 6, backend="native", **args)
    src, src_len, tgt_in, tgt_out, tgt_len = batch(ref, np.random.default_rng(0))
    out = []
    for m in (ref, nat):
        logits, tape = m.forward(src, tgt_in, src_len)
        _, dlogits = sequence_loss(logits, tgt_out, tgt_len)
        out.append(m.backward(dlogits, tape))
    for k in ref.params:
        assert rel_err(out[1][k], out[0][k]) < 1e-9, k


def test_dropout_gradients_by_central_differences():
    """With dropout the masks come from ``rng``; the same seed gives the same masks, so the
    loss is a function of the parameters that central differences can check."""
    m = Seq2Seq(6, 7, 4, embed_size=3, cell="gru", encoder_layers=2, decoder_layers=2,
                dropout=0.3, input_feeding=True, dtype=np.float64, seed=1)
    src, src_len, tgt_in, tgt_out, tgt_len = batch(m, np.random.default_rng(2))

    def loss_and_grads():
        logits, tape = m.forward(src, tgt_in, src_len, training=True,
                                 rng=np.random.default_rng(7))
        loss, dlogits = sequence_loss(logits, tgt_out, tgt_len)
        return loss, m.backward(dlogits, tape)

    eval_logits, _ = m.forward(src, tgt_in, src_len)
    train_logits, _ = m.forward(src, tgt_in, src_len, training=True,
                                rng=np.random.default_rng(7))
    assert not np.allclose(eval_logits, train_logits)
    _, grads = loss_and_grads()
    rng = np.random.default_rng(3)
    for k in ("encoder.weight_ih_l1", "encoder.weight_hh_l0_reverse", "decoder.weight_ih_l1",
              "src_embedding.weight", "bridge.weight"):
        p = m.params[k]
        for _ in range(3):
            i = tuple(rng.integers(0, n) for n in p.shape)
            keep, h = p[i], 1e-6
            p[i] = keep + h
            up, _ = loss_and_grads()
            p[i] = keep - h
            down, _ = loss_and_grads()
            p[i] = keep
            assert abs((up - down) / (2 * h) - grads[k][i]) < 1e-7, (k, i)


def test_sequence_loss_matches_torch_label_smoothing():
    rng = np.random.default_rng(0)
    T, B, V = 4, 3, 6
    z = rng.standard_normal((T, B, V))
    y = rng.integers(0, V, (T, B))
    lengths = np.array([2, 4, 1])
    zt = torch.tensor(z, requires_grad=True)
    per = F.cross_entropy(zt.reshape(-1, V), torch.tensor(y).reshape(-1), label_smoothing=0.25,
                          reduction="none").reshape(T, B)
    mask = torch.tensor((np.arange(T)[:, None] < lengths[None]).astype(float))
    loss_t = (per * mask).sum() / mask.sum()
    loss_t.backward()
    loss, dz = sequence_loss(z, y, lengths, label_smoothing=0.25)
    assert abs(loss - loss_t.item()) < 1e-12
    assert rel_err(dz, zt.grad.numpy()) < 1e-12
    loss0, _ = sequence_loss(z, y)
    assert abs(loss0 - F.cross_entropy(torch.tensor(z).reshape(-1, V),
                                       torch.tensor(y).reshape(-1)).item()) < 1e-12


# ---------------------------------------------------------------------- state and config
def test_params_are_live_and_state_dict_rebuilds_the_model():
    m = Seq2Seq(6, 7, 4, cell="lstm", attention="concat", input_feeding=True,
                dtype=np.float64, seed=0)
    m.params["encoder.weight_hh_l0_reverse"][0, 0] = 0.5
    assert m.encoder.params["weight_hh_l0_reverse"][0, 0] == 0.5
    m.params["attention.W_c"][1, 1] = 0.25
    assert m.attention.params["W_c"][1, 1] == 0.25
    copy = Seq2Seq(**dict(m.config, seed=99))
    copy.load_state_dict(m.state_dict())
    src, src_len, tgt_in, _, _ = batch(m, np.random.default_rng(1))
    a, _ = m.forward(src, tgt_in, src_len)
    b, _ = copy.forward(src, tgt_in, src_len)
    assert np.array_equal(a, b)
    with pytest.raises(ValueError, match=r"missing keys \['out.bias'\]"):
        copy.load_state_dict({k: v for k, v in m.state_dict().items() if k != "out.bias"})
    with pytest.raises(ValueError, match=r"attention.W_c: expected shape \(4, 8\)"):
        copy.load_state_dict(dict(m.state_dict(), **{"attention.W_c": np.zeros((4, 7))}))


def test_float32_runs_in_float32():
    m = Seq2Seq(6, 7, 4, seed=0)
    src, src_len, tgt_in, tgt_out, tgt_len = batch(m, np.random.default_rng(1))
    logits, tape = m.forward(src, tgt_in, src_len)
    _, dlogits = sequence_loss(logits, tgt_out, tgt_len)
    grads = m.backward(dlogits, tape)
    assert logits.dtype == np.float32
    assert all(g.dtype == np.float32 for g in grads.values())


def test_targets_and_pad():
    m = Seq2Seq(5, 6, 4, bos=1, eos=2, seed=0)
    tgt_in, tgt_out, lengths = m.targets([[3, 4], [], [5]])
    assert tgt_in.T.tolist() == [[1, 3, 4], [1, 2, 2], [1, 5, 2]]
    assert tgt_out.T.tolist() == [[3, 4, 2], [2, 2, 2], [5, 2, 2]]
    assert lengths.tolist() == [3, 1, 2]
    src, src_len = pad([[1, 2, 3], [4]])
    assert src.T.tolist() == [[1, 2, 3], [4, 0, 0]] and src_len.tolist() == [3, 1]


# ---------------------------------------------------------------------- decoding
def decoder_model(feeding, cell="lstm", score="general", eos_bias=0.0):
    """A random model with its weights doubled (the outputs then depend on the source and the
    step) and ``eos_bias`` added to EOS's logit."""
    m = Seq2Seq(8, 6, 6, embed_size=4, cell=cell, attention=score, input_feeding=feeding,
                encoder_layers=2, decoder_layers=2, bos=0, eos=1, dtype=np.float64, seed=11)
    for k, v in m.params.items():
        if "embedding" not in k:
            v *= 2
    m.params["out.bias"][m.eos] += eos_bias
    return m


def sources(m, rng, B=5, S=6):
    lengths = rng.integers(1, S + 1, B)
    lengths[0] = S
    return rng.integers(0, m.src_vocab, (S, B)), lengths


@pytest.mark.parametrize("feeding,cell", [(False, "lstm"), (True, "gru")])
def test_beam_width_one_is_greedy(feeding, cell):
    ended, cut = set(), set()
    for eos_bias in (0.0, 1.0, 2.0):
        m = decoder_model(feeding, cell, eos_bias=eos_bias)
        src, lengths = sources(m, np.random.default_rng(0))
        greedy = m.greedy(src, lengths, max_len_a=1.0, max_len_b=2)
        beam = m.beam_search(src, lengths, beam=1, max_len_a=1.0, max_len_b=2)
        for g, (b,), n in zip(greedy, beam, lengths):
            assert g.tokens == b.tokens and g.score == b.score
            assert np.array_equal(g.attention, b.attention)
            (cut if len(g.tokens) == n + 2 else ended).add(eos_bias)
    assert ended and cut          # both ways to end: EOS chosen, and EOS forced at max length


@pytest.mark.parametrize("feeding,score", [(False, "general"), (True, "concat"), (False, "dot")])
def test_beam_scores_are_the_teacher_forced_log_probabilities(feeding, score):
    m = decoder_model(feeding, score=score, eos_bias=1.0)
    src, lengths = sources(m, np.random.default_rng(1))
    alpha = 0.6
    results = m.beam_search(src, lengths, beam=3, alpha=alpha, nbest=3, max_len_a=1.0,
                            max_len_b=3)
    for b, hyps in enumerate(results):
        assert 1 <= len(hyps) <= 3
        assert [h.norm_score for h in hyps] == sorted((h.norm_score for h in hyps), reverse=True)
        for h in hyps:
            assert all(t != m.eos for t in h.tokens) and len(h.tokens) <= lengths[b] + 3
            tgt_in, tgt_out, _ = m.targets([h.tokens])
            logits, _ = m.forward(src[:lengths[b], b:b + 1], tgt_in)
            logp = logits - np.log(np.exp(logits).sum(axis=2, keepdims=True))
            expected = np.take_along_axis(logp, tgt_out[..., None], axis=2).sum()
            assert abs(h.score - expected) < 1e-9 * abs(expected)
            assert h.norm_score == pytest.approx(h.score / ((5 + len(h.tokens) + 1) / 6) ** alpha)
            assert h.attention.shape == (len(h.tokens) + 1, lengths[b])
            assert np.allclose(h.attention.sum(axis=1), 1)


def test_decoding_a_sentence_alone_equals_decoding_it_in_a_padded_batch():
    m = decoder_model(True, eos_bias=1.0)
    src, lengths = sources(m, np.random.default_rng(2))
    batched = m.beam_search(src, lengths, beam=4, alpha=1.0, max_len_a=1.0, max_len_b=2)
    for b in range(src.shape[1]):
        (alone,) = m.beam_search(src[:lengths[b], b:b + 1], beam=4, alpha=1.0, max_len_a=1.0,
                                 max_len_b=2)
        assert alone[0].tokens == batched[b][0].tokens
        assert alone[0].score == pytest.approx(batched[b][0].score, rel=1e-12)


def test_wide_beam_finds_the_best_sequence_among_all():
    """A beam as wide as the number of sequences up to the maximum length is exhaustive: it
    finishes every one of them, each with its teacher-forced log-probability, best first."""
    m = Seq2Seq(5, 4, 4, embed_size=3, attention="dot", bos=0, eos=1, dtype=np.float64, seed=3)
    src = np.array([[2], [3], [4]])
    every = [list(seq) for n in range(3) for seq in itertools.product((0, 2, 3), repeat=n)]
    (hyps,) = m.beam_search(src, beam=len(every), nbest=len(every), max_len_a=0.0, max_len_b=2)
    assert sorted(h.tokens for h in hyps) == sorted(every)
    for h in hyps:
        assert h.score == pytest.approx(_log_prob(m, src, h.tokens), rel=1e-12)
    assert hyps[0].tokens == max(every, key=lambda seq: _log_prob(m, src, seq))


def _log_prob(m, src, seq):
    tgt_in, tgt_out, _ = m.targets([seq])
    logits, _ = m.forward(src, tgt_in)
    logp = logits - np.log(np.exp(logits).sum(axis=2, keepdims=True))
    return np.take_along_axis(logp, tgt_out[..., None], axis=2).sum()


# ---------------------------------------------------------------------- checks at the door
def _model():
    return Seq2Seq(5, 6, 4, seed=0)


BAD_CALLS = [
    ("empty source", lambda m: m.forward(np.zeros((0, 2), int), np.ones((3, 2), int)),
     ValueError, r"src with at least one step.*\(0, 2\)"),
    ("empty target", lambda m: m.forward(np.ones((3, 2), int), np.zeros((0, 2), int)),
     ValueError, r"tgt_in with at least one step.*\(0, 2\)"),
    ("no sequences", lambda m: m.greedy(np.zeros((3, 0), int)),
     ValueError, r"src with at least one step"),
    ("source id out of vocabulary", lambda m: m.forward([[1, 5]], [[1, 1]]),
     ValueError, r"src ids in 0..4 \(vocabulary of 5\), got \[5\]"),
    ("target id out of vocabulary", lambda m: m.forward([[1, 2]], [[-1, 1]]),
     ValueError, r"tgt_in ids in 0..5 \(vocabulary of 6\), got \[-1\]"),
    ("float ids", lambda m: m.forward(np.ones((2, 2)), np.ones((2, 2), int)),
     TypeError, r"src as integer token ids, got dtype float64"),
    ("ids of rank 1", lambda m: m.forward(np.ones(3, int), np.ones((2, 2), int)),
     ValueError, r"src of shape \(T, B\), got \(3,\)"),
    ("batch sizes differ", lambda m: m.forward(np.ones((2, 2), int), np.ones((2, 3), int)),
     ValueError, r"tgt_in with as many sequences as src \(B=2\), got shape \(2, 3\)"),
    ("lengths of the wrong shape", lambda m: m.forward(np.ones((3, 2), int),
                                                        np.ones((2, 2), int), [3, 3, 3]),
     ValueError, r"src_lengths of shape \(2,\), one per source, got shape \(3,\)"),
    ("length beyond the array", lambda m: m.forward(np.ones((3, 2), int),
                                                     np.ones((2, 2), int), [4, 1]),
     ValueError, r"source length in 1..3 \(src's S\), got \[4\]"),
    ("zero length", lambda m: m.beam_search(np.ones((3, 2), int), [0, 3]),
     ValueError, r"source length in 1..3 \(src's S\), got \[0\]"),
    ("float lengths", lambda m: m.forward(np.ones((3, 2), int), np.ones((2, 2), int),
                                          [1.0, 2.0]),
     TypeError, r"src_lengths as integers, got dtype float64"),
    ("training not a bool", lambda m: m.forward([[1]], [[1]], training=1),
     TypeError, r"training a bool, got 1"),
    ("beam width 0", lambda m: m.beam_search([[1]], beam=0),
     ValueError, r"beam width >= 1, got 0"),
    ("beam width not an integer", lambda m: m.beam_search([[1]], beam=1.5),
     TypeError, r"beam an integer >= 1, got 1.5"),
    ("nbest above the beam", lambda m: m.beam_search([[1]], beam=2, nbest=3),
     ValueError, r"nbest an integer in 1..beam \(2\), got 3"),
    ("negative alpha", lambda m: m.greedy([[1]], alpha=-1.0),
     ValueError, r"alpha a number >= 0, got -1.0"),
    ("negative max_len_b", lambda m: m.beam_search([[1]], max_len_b=-1),
     ValueError, r"max_len_b a number >= 0, got -1"),
    ("backward without a tape", lambda m: m.backward(np.zeros((1, 1, 6)), {}),
     TypeError, r"the tape that this model's forward returned, got dict"),
    ("dlogits of the wrong shape",
     lambda m: m.backward(np.zeros((2, 1, 6)), m.forward([[1]], [[1]])[1]),
     ValueError, r"dlogits of shape \(T=1, B=1, V=6\) as the tape's logits, got \(2, 1, 6\)"),
    ("dlogits of integers",
     lambda m: m.backward(np.zeros((1, 1, 6), int), m.forward([[1]], [[1]])[1]),
     TypeError, r"dlogits of real numbers, got dtype int64"),
    ("empty target sequence in pad", lambda m: pad([[1], []]),
     ValueError, r"non-empty sequences, got an empty one at \[1\]"),
    ("target id out of vocabulary in targets", lambda m: m.targets([[7]]),
     ValueError, r"targets ids in 0..5 \(vocabulary of 6\), got \[7\]"),
    ("step with a token out of vocabulary",
     lambda m: m.step(np.array([0, 6]), *m.encode(np.ones((2, 2), int))),
     ValueError, r"tokens in 0..5, got \[6\]"),
    ("step with one token for two rows",
     lambda m: m.step(np.array([0]), *m.encode(np.ones((2, 2), int))),
     ValueError, (r"tokens as integer ids of shape \(2,\), one per row of the state, got "
                  r"int64 \(1,\)")),
    ("load a list", lambda m: m.load_state_dict([1]),
     TypeError, r"a mapping of parameter names to arrays, got list"),
]


@pytest.mark.parametrize("what,call,error,message", BAD_CALLS, ids=[b[0] for b in BAD_CALLS])
def test_bad_calls(what, call, error, message):
    with pytest.raises(error, match=message):
        call(_model())


BAD_LOSS = [
    (dict(targets=np.zeros((2, 3), int)), ValueError, r"targets of shape \(T=2, B=2\)"),
    (dict(targets=np.full((2, 2), 4)), ValueError, r"targets in 0..3 \(V=4\), got \[4, 4, 4, 4\]"),
    (dict(targets=np.zeros((2, 2))), TypeError, r"integer targets, got dtype float64"),
    (dict(lengths=[3, 1]), ValueError, r"every length in 1..2 \(T\), got \[3\]"),
    (dict(lengths=[1]), ValueError, r"lengths of shape \(2,\), got \(1,\)"),
    (dict(label_smoothing=1.0), ValueError, r"label_smoothing in \[0, 1\), got 1.0"),
    (dict(logits=np.zeros((2, 2, 4), int)), TypeError, r"logits of dtype float32 or float64"),
    (dict(logits=np.zeros((0, 2, 4))), ValueError, r"logits of shape \(T, B, V\), non-empty"),
]


@pytest.mark.parametrize("change,error,message", BAD_LOSS)
def test_bad_loss_calls(change, error, message):
    args = dict(logits=np.zeros((2, 2, 4)), targets=np.zeros((2, 2), int), lengths=None,
                label_smoothing=0.0)
    args.update(change)
    with pytest.raises(error, match=message):
        sequence_loss(args.pop("logits"), args.pop("targets"), args.pop("lengths"), **args)


BAD_CONFIGS = [
    (dict(hidden_size=6, encoder_hidden_size=4, attention="dot"), ValueError,
     r"dot score needs the decoder's hidden size equal to the encoder's output size.*H=6 and D=8"),
    (dict(attention="bilinear"), ValueError,
     r"attention one of dot, general, concat, got 'bilinear'"),
    (dict(cell="rnn"), ValueError, r"cell one of lstm, gru, got 'rnn'"),
    (dict(encoder_layers=2), ValueError, r"encoder_layers == decoder_layers, got 2 and 1"),
    (dict(encoder_layers=5, decoder_layers=5), ValueError, r"encoder_layers an integer in 1..4"),
    (dict(hidden_size=0), ValueError, r"hidden_size a positive integer, got 0"),
    (dict(bos=2, eos=2), ValueError, r"bos and eos to differ"),
    (dict(eos=6), ValueError, r"eos a target id in 0..5, got 6"),
    (dict(bidirectional=1), TypeError, r"bidirectional a bool, got 1"),
    (dict(dropout=1.0), ValueError, r"dropout a probability in \[0, 1\), got 1.0"),
    (dict(backend="cuda"), ValueError, r"backend one of " + ", ".join(BACKENDS)),
    (dict(dtype=np.float16), TypeError, r"dtype float32 or float64, got float16"),
]


@pytest.mark.parametrize("change,error,message", BAD_CONFIGS)
def test_bad_configs(change, error, message):
    args = dict(hidden_size=4, seed=0)
    args.update(change)
    with pytest.raises(error, match=message):
        Seq2Seq(5, 6, **args)


def test_dropout_with_single_layers_warns():
    with pytest.warns(UserWarning, match="dropout=0.2 has no effect with one layer"):
        Seq2Seq(5, 6, 4, dropout=0.2)
