"""The whole model (input layer + stack + head + loss) against the same model in torch, float64."""

import zlib

import numpy as np
import pytest
import torch

from bptt.losses import mse, softmax_cross_entropy
from conftest import rel_err
from bptt.model import Model

TORCH_CELLS = {"rnn": torch.nn.RNN, "lstm": torch.nn.LSTM, "gru": torch.nn.GRU}


class TorchTwin(torch.nn.Module):
    """The same model written with torch modules, for autograd to differentiate."""

    def __init__(self, m: Model):
        super().__init__()
        c = m.config
        if c["input"] == "embedding":
            self.embedding = torch.nn.Embedding(c["input_size"], m.rnn.input_size)
        elif c["input"] == "linear":
            self.proj = torch.nn.Linear(c["input_size"], m.rnn.input_size)
        self.rnn = TORCH_CELLS[c["cell"]](m.rnn.input_size, c["hidden_size"], c["num_layers"],
                                         bidirectional=c["bidirectional"])
        n_feat = m.rnn.hidden_size * m.rnn.directions * (2 if c["head"] == "meanmax" else 1)
        self.head = torch.nn.Linear(n_feat, c["output_size"])
        self.kind, self.head_kind = c["input"], c["head"]
        self.double()
        self.load_state_dict({k: torch.tensor(v) for k, v in m.state_dict().items()})

    def forward(self, x, lengths=None):
        if self.kind == "embedding":
            x = self.embedding(x)
        elif self.kind == "linear":
            x = self.proj(x)
        T = x.shape[0]
        if lengths is not None:
            x = torch.nn.utils.rnn.pack_padded_sequence(x, torch.tensor(lengths),
                                                        enforce_sorted=False)
        y, state = self.rnn(x)
        if lengths is not None:
            y, _ = torch.nn.utils.rnn.pad_packed_sequence(y, total_length=T)
        if self.head_kind == "step":
            return self.head(y)
        if self.head_kind == "last":
            h = state[0] if isinstance(state, tuple) else state
            dirs = 2 if self.rnn.bidirectional else 1
            return self.head(torch.cat(list(h[-dirs:]), dim=1))
        n = torch.tensor(lengths, dtype=y.dtype)[:, None] if lengths is not None else T
        mean = y.sum(0) / n
        valid = torch.arange(T)[:, None] < torch.tensor(lengths or [T])[None]   # (T, B)
        mx = y.masked_fill(~valid[..., None], -torch.inf).max(0).values
        return self.head({"mean": mean, "max": mx, "meanmax": torch.cat([mean, mx], 1)}[
            self.head_kind])


CASES = [
    # cell, input, head, layers, bidirectional, lengths
    ("lstm", "embedding", "step", 2, False, False),
    ("gru", "embedding", "step", 1, True, True),
    ("rnn", "embedding", "step", 2, False, True),
    ("lstm", "linear", "last", 2, True, True),
    ("gru", "identity", "last", 1, False, False),
    ("rnn", "linear", "mean", 1, True, True),
    ("lstm", "identity", "mean", 2, False, True),
    ("lstm", "embedding", "max", 1, True, True),
    ("gru", "linear", "max", 2, False, False),
    ("lstm", "embedding", "meanmax", 1, True, True),
    ("rnn", "identity", "meanmax", 2, True, False),
]


@pytest.mark.parametrize("cell,kind,head,layers,bi,use_lengths", CASES)
def test_model_loss_and_grads_match_torch(cell, kind, head, layers, bi, use_lengths):
    rng = np.random.default_rng(zlib.crc32(f"{cell}{kind}{head}".encode()))
    T, B, V, D, H, O = 9, 4, 11, 5, 6, 7
    m = Model(V if kind == "embedding" else D, H, O, cell=cell, input=kind, embed_size=5,
              num_layers=layers, bidirectional=bi, head=head, dtype=np.float64, seed=3)
    twin = TorchTwin(m)
    lengths = rng.integers(1, T + 1, B).tolist() if use_lengths else None
    if kind == "embedding":
        x = rng.integers(0, V, (T, B))
        xt = torch.tensor(x)
    else:
        x = rng.standard_normal((T, B, D))
        xt = torch.tensor(x, requires_grad=True)
    out, _, tape = m.forward(x, lengths=lengths)
    out_t = twin(xt, lengths)
    if head == "step":  # language-model loss over valid steps
        targets = rng.integers(0, O, (T, B))
        mask = np.ones((T, B)) if lengths is None else \
            (np.arange(T)[:, None] < np.asarray(lengths)[None, :]).astype(float)
        loss, dout = softmax_cross_entropy(out, targets, mask)
        per = torch.nn.functional.cross_entropy(out_t.reshape(-1, O), torch.tensor(targets).reshape(-1),
                                                reduction="none")
        loss_t = (per * torch.tensor(mask).reshape(-1)).sum() / mask.sum()
    else:
        target = rng.standard_normal((B, O))
        loss, dout = mse(out, target)
        loss_t = torch.nn.functional.mse_loss(out_t, torch.tensor(target))
    loss_t.backward()
    dx, _, grads = m.backward(dout, tape)
    assert rel_err(out, out_t.detach().numpy()) < 1e-9
    if kind == "embedding":
        assert dx is None                      # token ids have no gradient
    else:
        assert rel_err(dx, xt.grad.numpy()) < 1e-9
    assert abs(loss - loss_t.item()) / abs(loss_t.item()) < 1e-9
    tgrads = dict(twin.named_parameters())
    assert grads.keys() == tgrads.keys()
    for k, p in tgrads.items():
        assert rel_err(grads[k], p.grad.numpy()) < 1e-9, k


def test_params_are_live_arrays_of_the_stack():
    m = Model(5, 4, 3, cell="gru", input="linear", dtype=np.float64, seed=0)
    m.params["rnn.weight_hh_l0"][0, 0] = 42.0
    assert m.rnn.params["weight_hh_l0"][0, 0] == 42.0


def test_bad_model_inputs():
    m = Model(10, 4, 3, seed=0)
    with pytest.raises(TypeError, match="token ids as integers"):
        m.forward(np.zeros((3, 2)))
    with pytest.raises(ValueError, match=r"token ids in 0\.\.9"):
        m.forward(np.full((3, 2), 10))
    with pytest.raises(ValueError, match=r"shape \(T, B\)"):
        m.forward(np.zeros((3, 2, 1), int))
    out, _, tape = m.forward(np.zeros((3, 2), int))
    with pytest.raises(ValueError, match=r"expected dout of shape \(3, 2, 3\)"):
        m.backward(np.zeros((3, 2, 4)), tape)
    with pytest.raises(ValueError, match="expected head one of"):
        Model(10, 4, 3, head="median")
    f = Model(4, 4, 3, input="linear", seed=0)
    with pytest.raises(ValueError, match=r"shape \(T, B, 4\)"):
        f.forward(np.zeros((3, 2, 5)))
    with pytest.raises(ValueError, match="missing keys"):
        m.load_state_dict({k: v for k, v in m.state_dict().items() if k != "head.bias"})
