"""Native kernels: the cell families of ``bptt.cells`` with their time loops in C++ (``_loops``).

Each module here has the interface and the tape of its ``bptt.cells`` twin (``forward``,
``backward``, ``step``), so a layer can use either (``backend="native"``); ``bptt.cells`` stays
the reference and the fallback. A step's product with W_hh runs on a copy of W_hh packed once
per call, with the gate arithmetic fused into the product's epilogue, and the hidden units
split over OpenMP threads (see ``_loops.cpp``). The extension is built by ``pip install`` when a
C++20 compiler is there; importing this package raises ImportError when it was not built.

Threads: OpenMP's limit (``OMP_NUM_THREADS``, or ``threadpoolctl``), but one thread for a step
smaller than ``min_work`` multiply-adds (``BPTT_NATIVE_MIN_WORK``), where a barrier per step
would cost more than it saves.
"""

import ctypes
import importlib.util
import os

import numpy as np

_spec = importlib.util.find_spec("bptt.native._loops")
if _spec is None or _spec.origin is None:
    raise ImportError("bptt.native: the extension bptt.native._loops was not built (it needs a "
                      "C++20 compiler, g++ >= 10, when bptt is installed)")
_lib = ctypes.CDLL(_spec.origin)

min_work = int(os.environ.get("BPTT_NATIVE_MIN_WORK", 1 << 18))

_P = ctypes.c_void_p
_I = ctypes.c_int
_L = ctypes.c_long
_SIGNATURES = {  # argument kinds: p pointer, i int, l long, r a real of the dtype
    "lstm_forward": "pppp" + "i" + "ppppp" + "iii" + "l",
    "lstm_backward": "pppppppp" + "r" + "pppp" + "iii" + "l",
    "gru_forward": "ppppp" + "i" + "pppp" + "iii" + "l",
    "gru_backward": "ppppppp" + "r" + "ppppp" + "iii" + "l",
    "rnn_forward": "pppp" + "i" + "pp" + "i" + "iii" + "l",
    "rnn_backward": "ppppp" + "i" + "r" + "pppp" + "iii" + "l",
}
_FUNCS = {}
for _name, _kinds in _SIGNATURES.items():
    for _dt, _suffix, _real in ((np.float32, "f32", ctypes.c_float),
                                (np.float64, "f64", ctypes.c_double)):
        _f = getattr(_lib, f"{_name}_{_suffix}")
        _f.restype = ctypes.c_int
        _f.argtypes = [{"p": _P, "i": _I, "l": _L, "r": _real}[k] for k in _kinds]
        _FUNCS[_name, np.dtype(_dt)] = _f


def call(name, dtype, *args):
    """Run the loop ``name`` for ``dtype`` (float32 or float64). Arrays go as their data
    pointers (C-contiguous, checked) and None as NULL; ``args`` holds the arrays alive for the
    call, so temporaries may be passed."""
    c_args = []
    for a in args:
        if isinstance(a, np.ndarray):
            if not a.flags.c_contiguous:
                raise ValueError(f"bptt.native: {name} takes C-contiguous buffers")
            a = a.ctypes.data
        c_args.append(a)
    if _FUNCS[name, np.dtype(dtype)](*c_args, min_work) != 0:
        raise MemoryError(f"bptt.native: {name} could not allocate its packed weights")


def transposed(w, dtype=None):
    """w.T, C-contiguous (the loops pack it once per call)."""
    return np.ascontiguousarray(w.T, dtype)


def mask_or_none(mask, dtype):
    return None if mask is None else np.ascontiguousarray(mask, dtype)


def clip_value(clip, dtype):
    return dtype.type(-1 if clip is None else clip)


from . import gru, lstm, rnn  # noqa: E402

FAMILIES = {"rnn": rnn, "lstm": lstm, "gru": gru}
