"""Parameter initialisation schemes, each writing into a dict of PyTorch-layout arrays.

- ``default``: PyTorch's, every parameter uniform in [-1/sqrt(H), 1/sqrt(H)];
- ``orthogonal``: as default, then each gate's (H, H) block of every weight_hh orthogonal
  (Saxe et al. 2014);
- ``identity``: as default, then each gate's block of weight_hh the identity and the biases zero
  (IRNN, Le, Jaitly & Hinton 2015; meant for a relu RNN).

``forget_bias`` (LSTM only) sets the forget gate's total bias: bias_ih's forget chunk to the value
and bias_hh's to zero, so that their sum, which is what the gate sees, equals it
(Gers et al. 2000; Jozefowicz et al. 2015 recommend 1).
"""

import numpy as np

SCHEMES = ("default", "orthogonal", "identity")


def uniform_(params, hidden_size, rng):
    bound = 1.0 / np.sqrt(hidden_size)
    for name, p in params.items():
        p[...] = rng.uniform(-bound, bound, size=p.shape)


def orthogonal(n, rng):
    """A random (n, n) orthogonal matrix, Haar-distributed (QR with the sign of R's diagonal)."""
    q, r = np.linalg.qr(rng.standard_normal((n, n)))
    return q * np.sign(np.diag(r))


def initialize(params, hidden_size, rng, scheme="default", forget_bias=None, gates=1):
    """Fill ``params`` in place by ``scheme``; ``gates`` is the number of gate chunks (4 for LSTM)."""
    if scheme not in SCHEMES:
        raise ValueError(f"init: expected one of {', '.join(SCHEMES)}, got {scheme!r}")
    uniform_(params, hidden_size, rng)
    H = hidden_size
    for name, p in params.items():
        if name.startswith("weight_hh") and scheme != "default":
            for k in range(gates):
                block = orthogonal(H, rng) if scheme == "orthogonal" else np.eye(H)
                p[k * H:(k + 1) * H] = block
        if name.startswith("bias") and scheme == "identity":
            p[...] = 0.0
    if forget_bias is not None:
        for name, p in params.items():
            if name.startswith("bias_ih"):
                p[H:2 * H] = forget_bias
            elif name.startswith("bias_hh"):
                p[H:2 * H] = 0.0
