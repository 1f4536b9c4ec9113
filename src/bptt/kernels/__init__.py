"""Compiled kernels: the cell families of ``bptt.cells`` with their time loops in numba.

Each module here has the interface and the tape of its ``bptt.cells`` twin (``forward``,
``backward``, ``step``), so a layer can use either; ``bptt.cells`` stays the reference and the
fallback. Importing this package needs numba (the ``fast`` extra).
"""

# numba's np.dot calls the BLAS that scipy ships; load it now, so that a thread limit set after
# this import (threadpoolctl, as the benchmarks do) sees it.
import scipy.linalg.cython_blas  # noqa: F401

from . import gru, lstm, rnn

FAMILIES = {"rnn": rnn, "lstm": lstm, "gru": gru}
