"""Recurrent cells: one module per family, each with the step equations, the forward pass over a
sequence and the backward pass through time side by side.

Every family module exposes the same three functions over one layer and one direction:

- ``step(x_t, state, weights)``: one step written plainly from the equations (the reference);
- ``forward(x, state0, weights, mask=None) -> (y, state_n, tape)``;
- ``backward(dy, dstate_n, tape, clip=None, record=None) -> (dx, dstate0, dweights)``; ``clip``
  clips the backward message dL/dh_t elementwise to [-clip, clip] at every step (Graves 2013), and
  ``record``, a (T, B, H) array, receives dL/dh_t of every step (for diagnostics).

``weights`` maps ``weight_ih``, ``weight_hh``, ``bias_ih``, ``bias_hh`` (the biases may be None) to
arrays in PyTorch's layout. ``mask`` is (T, B, 1), 1 where step t of sequence b is valid: where it
is 0 the state is carried through unchanged and the output is zero, which gives PyTorch's
packed-sequence semantics for sequences that end early (and, on time-reversed input, for the reverse
direction).
"""

from . import gru, lstm, rnn

FAMILIES = {"rnn": rnn, "lstm": lstm, "gru": gru}
