"""bptt: recurrent networks trained by backpropagation through time, written out by hand."""

from .layers import GRU, LSTM, RNN, Tape

__all__ = ["RNN", "LSTM", "GRU", "Tape"]
__version__ = "0.1.0"
