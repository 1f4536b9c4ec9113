"""bptt: recurrent networks trained by backpropagation through time, written out by hand."""

from . import diagnostics
from .layers import GRU, LSTM, RNN, Tape
from .seq2seq import Seq2Seq
from .strategies import TBPTT, Plan, StreamState, plan_checkpoints, tbptt_grads

__all__ = ["RNN", "LSTM", "GRU", "Tape", "TBPTT", "StreamState", "tbptt_grads", "Plan",
           "plan_checkpoints", "diagnostics", "Seq2Seq"]
__version__ = "0.1.0"
