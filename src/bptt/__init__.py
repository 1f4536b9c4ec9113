"""bptt: recurrent networks trained by backpropagation through time, written out by hand."""

import importlib

from .layers import GRU, LSTM, RNN, Tape
from .model import Model
from .seq2seq import Seq2Seq
from .strategies import TBPTT, Plan, StreamState, plan_checkpoints, tbptt_grads

__all__ = ["RNN", "LSTM", "GRU", "Tape", "TBPTT", "StreamState", "tbptt_grads", "Plan",
           "plan_checkpoints", "Model", "Seq2Seq", "diagnostics"]
__version__ = "0.1.0"


def __getattr__(name):
    # the modules above the model load on first use: `import bptt` stays light
    if name in ("diagnostics", "trainer", "objectives", "export", "apps"):
        return importlib.import_module(f".{name}", __name__)
    raise AttributeError(f"module 'bptt' has no attribute {name!r}")
