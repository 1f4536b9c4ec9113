"""Shared helpers for the layer and cell tests: an error measure and the torch twin of a layer.

Import them with ``from conftest import ...`` (pytest puts this folder on ``sys.path``).
"""

import zlib

import numpy as np
import torch

import bptt
from bptt.cells import gru, lstm, rnn

TORCH_CLASSES = {bptt.RNN: torch.nn.RNN, bptt.LSTM: torch.nn.LSTM, bptt.GRU: torch.nn.GRU}


# every cell variant: name -> (reference cell module, the options its step and forward take)
VARIANTS = {
    "rnn_tanh": (rnn, {"nonlinearity": "tanh"}),
    "rnn_relu": (rnn, {"nonlinearity": "relu"}),
    "lstm": (lstm, {}),
    "gru_after": (gru, {"reset_after": True}),
    "gru_before": (gru, {"reset_after": False}),
}
GATES = {rnn: 1, lstm: 4, gru: 3}


def rel_err(a, b):
    """max|a - b| / max|b|; 0 when both are all zeros, inf when only b is."""
    a = np.asarray(a, np.float64)
    b = np.asarray(b, np.float64)
    assert a.shape == b.shape, (a.shape, b.shape)
    num = np.abs(a - b).max(initial=0.0)
    den = np.abs(b).max(initial=0.0)
    if den == 0.0:
        return 0.0 if num == 0.0 else np.inf
    return num / den


def seed_of(*parts):
    """A stable seed from a test's parameters (``hash`` of a str changes between runs)."""
    return zlib.crc32(repr(parts).encode())


def torch_module(layer, state=None):
    """A float64 torch.nn.{RNN, LSTM, GRU} configured as ``layer`` and holding ``state``
    (default: the layer's own state dict). Loading is strict, so the names and shapes must match."""
    cls = TORCH_CLASSES[type(layer)]
    kwargs = dict(num_layers=layer.num_layers, bias=layer.bias, batch_first=layer.batch_first,
                  bidirectional=layer.bidirectional)
    if isinstance(layer, bptt.RNN):
        kwargs["nonlinearity"] = layer.nonlinearity
    m = cls(layer.input_size, layer.hidden_size, **kwargs).double()
    state = layer.state_dict() if state is None else state
    m.load_state_dict({k: torch.tensor(np.asarray(v), dtype=torch.float64)
                       for k, v in state.items()})
    return m


def torch_run(m, x, h0=None, lengths=None):
    """Run torch module ``m`` on tensor x; with ``lengths``, through a packed sequence (unsorted
    allowed) and padded back to x's full length. Returns (y, h_n) with h_n a pair for LSTM."""
    if lengths is None:
        return m(x, h0)
    bf = m.batch_first
    T = x.shape[1] if bf else x.shape[0]
    packed = torch.nn.utils.rnn.pack_padded_sequence(
        x, torch.as_tensor(np.asarray(lengths), dtype=torch.int64), batch_first=bf,
        enforce_sorted=False)
    out, h_n = m(packed, h0)
    y, _ = torch.nn.utils.rnn.pad_packed_sequence(out, batch_first=bf, total_length=T)
    return y, h_n


def _leaf(a):
    return torch.tensor(np.asarray(a, np.float64), requires_grad=True)


def torch_twin(layer, x, h0=None, lengths=None, dy=None, dh_n=None):
    """Forward and backward of ``layer``'s torch twin in float64, with
    loss = sum(y * dy) + sum(h_n * dh_n) (+ sum(c_n * dc_n)).

    h0 / dh_n are arrays (pairs for LSTM) or None (zeros / no term). Returns a dict of numpy
    arrays: y, h_n, dx, dh0, for LSTM also c_n and dc0, and grads (parameter name -> gradient).
    """
    lstm = isinstance(layer, bptt.LSTM)
    m = torch_module(layer)
    K = layer.num_layers * layer.directions
    B = x.shape[0] if layer.batch_first else x.shape[1]
    shape = (K, B, layer.hidden_size)
    if h0 is None:
        h0 = (np.zeros(shape), np.zeros(shape)) if lstm else np.zeros(shape)
    xt = _leaf(x)
    h0t = (_leaf(h0[0]), _leaf(h0[1])) if lstm else _leaf(h0)
    y, h_n = torch_run(m, xt, h0t, lengths)
    loss = (y * torch.as_tensor(np.asarray(dy, np.float64))).sum()
    if dh_n is not None:
        if lstm:
            loss = loss + (h_n[0] * torch.as_tensor(dh_n[0])).sum() \
                + (h_n[1] * torch.as_tensor(dh_n[1])).sum()
        else:
            loss = loss + (h_n * torch.as_tensor(dh_n)).sum()
    loss.backward()
    out = dict(y=y.detach().numpy(), dx=xt.grad.numpy(),
               grads={k: p.grad.numpy() for k, p in m.named_parameters()})
    if lstm:
        out.update(h_n=h_n[0].detach().numpy(), c_n=h_n[1].detach().numpy(),
                   dh0=h0t[0].grad.numpy(), dc0=h0t[1].grad.numpy())
    else:
        out.update(h_n=h_n.detach().numpy(), dh0=h0t.grad.numpy())
    return out


# ---------------------------------------------------------------------- runs killed and resumed
TIMING = {"elapsed_s", "steps_per_s", "window_s", "epoch_s", "tokens_per_s"}   # the clock's keys
_KILLED = """
import os, signal, sys
sys.path.insert(0, {here!r})
from bptt import trainer
from bptt.cli import main
{setup}
updates = 0
train_step = trainer.Trainer.train_step
def killing_step(self):
    global updates
    updates += 1
    if updates > {after}:        # SIGKILL, as from outside: nothing of the process runs after it
        os.kill(os.getpid(), signal.SIGKILL)
    return train_step(self)
trainer.Trainer.train_step = killing_step
sys.exit(main({argv!r}))
"""


def run_killed(argv, after, setup=""):
    """``bptt argv`` in a child process that SIGKILL ends just before its update ``after + 1``
    (counted over every model it trains); ``setup`` is code run first (a toy corpus)."""
    import os
    import signal
    import subprocess
    import sys

    here = os.path.dirname(os.path.abspath(__file__))
    code = _KILLED.format(here=here, setup=setup, after=after, argv=[str(a) for a in argv])
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          timeout=300)
    assert proc.returncode == -signal.SIGKILL, proc.stderr
