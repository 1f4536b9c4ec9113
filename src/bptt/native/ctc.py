"""CTC's forward-backward in C++ (``bptt.native._ctc``): the twin of
``bptt.ctc.forward_backward_numpy``, one sequence per task over OpenMP threads (``OMP_NUM_THREADS``
or ``threadpoolctl``). Importing this module raises ImportError where the extension was not built;
``bptt.ctc`` then runs on NumPy alone.
"""

import ctypes
import importlib.util

import numpy as np

_spec = importlib.util.find_spec("bptt.native._ctc")
if _spec is None or _spec.origin is None:
    raise ImportError("bptt.native.ctc: the extension bptt.native._ctc was not built (it needs a "
                      "C++20 compiler when bptt is installed)")
_lib = ctypes.CDLL(_spec.origin)


class _Args(ctypes.Structure):
    """``CtcArgs`` of ``_ctc.cpp``."""
    _fields_ = [("log_probs", ctypes.c_void_p), ("probs", ctypes.c_void_p),
                ("labels", ctypes.c_void_p), ("input_lengths", ctypes.c_void_p),
                ("target_lengths", ctypes.c_void_p),
                ("T", ctypes.c_int64), ("B", ctypes.c_int64), ("C", ctypes.c_int64),
                ("S_max", ctypes.c_int64), ("blank", ctypes.c_int64),
                ("nll", ctypes.c_void_p), ("grad", ctypes.c_void_p)]


_FUNCS = {}
for _dt, _suffix in ((np.float32, "f32"), (np.float64, "f64")):
    _f = getattr(_lib, f"ctc_forward_backward_{_suffix}")
    _f.argtypes = [ctypes.POINTER(_Args)]
    _f.restype = None
    _FUNCS[np.dtype(_dt)] = _f


def forward_backward(lp, probs, labels, input_lengths, target_lengths, blank):
    """``(nll, y - gamma)`` as ``bptt.ctc.forward_backward_numpy`` gives them (same arguments,
    already checked by ``bptt.ctc``)."""
    T, B, C = lp.shape
    dtype = lp.dtype
    lp = np.ascontiguousarray(lp)
    probs = np.ascontiguousarray(probs, dtype)
    labels = np.ascontiguousarray(labels, np.int64)
    input_lengths = np.ascontiguousarray(input_lengths, np.int64)
    target_lengths = np.ascontiguousarray(target_lengths, np.int64)
    nll = np.empty(B, dtype)
    grad = np.empty((T, B, C), dtype)
    args = _Args(lp.ctypes.data, probs.ctypes.data, labels.ctypes.data,
                 input_lengths.ctypes.data, target_lengths.ctypes.data,
                 T, B, C, labels.shape[1], blank, nll.ctypes.data, grad.ctypes.data)
    _FUNCS[dtype](ctypes.byref(args))
    return nll, grad
