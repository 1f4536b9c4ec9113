"""Native kernels: the cell families of ``bptt.cells`` with their time loops in C++ (``_loops``).

Each module here has the interface and the tape of its ``bptt.cells`` twin (``forward``,
``backward``, ``step``), so a layer can use either (``backend="native"``); ``bptt.cells`` stays
the reference and the fallback. A step's product with W_hh runs on a copy of W_hh packed once
per call, with the gate arithmetic fused into the product's epilogue, and the hidden units
split over OpenMP threads (see ``_loops.cpp``). The extension is built by ``pip install`` when a
C++20 compiler is there; importing this package raises ImportError when it was not built.

Threads: OpenMP's limit (``OMP_NUM_THREADS``, or ``threadpoolctl``), but one thread for a step
smaller than ``min_work`` multiply-adds (``BPTT_NATIVE_MIN_WORK``), where a barrier per step
would cost more than it saves. The threads split a step's hidden units (one barrier per step)
or, for small steps, its batch rows (no barrier at all); see ``set_split``.

Determinism: the same inputs at the same thread counts (OpenMP's and NumPy's OpenBLAS's) give
the same bits on every run; other thread counts may round differently.
"""

import contextlib
import ctypes
import importlib.util
import math
import os
import sys
import threading

import numpy as np

_spec = importlib.util.find_spec("bptt.native._loops")
if _spec is None or _spec.origin is None:
    raise ImportError("bptt.native: the extension bptt.native._loops was not built (it needs a "
                      "C++20 compiler, g++ >= 10, when bptt is installed)")
_lib = ctypes.CDLL(_spec.origin)

min_work = int(os.environ.get("BPTT_NATIVE_MIN_WORK", 1 << 18))
SPLITS = ("auto", "rows", "units")


def set_split(mode):
    """How the loops split their threads over a step: ``"units"`` (blocks of hidden units, one
    barrier per step), ``"rows"`` (batch rows, each thread running its rows' whole recurrence,
    no barrier), or ``"auto"`` (rows where each thread has at least two row blocks and the
    packed weights fit in its L2 cache, else units). Process-wide; ``BPTT_NATIVE_SPLIT`` sets it
    at import. The results are the same either way, up to the order of float additions in the
    bias gradients; each way gives the same bits on every run at a given thread count."""
    if mode not in SPLITS:
        raise ValueError(f"bptt.native.set_split: expected one of {', '.join(SPLITS)}, got "
                         f"{mode!r}")
    _lib.set_split(SPLITS.index(mode))

_P = ctypes.c_void_p
_I = ctypes.c_int
_L = ctypes.c_long
_SIGNATURES = {  # argument kinds: p pointer, i int, l long, r a real of the dtype
    "lstm_forward": "pppp" + "i" + "ppppp" + "iii" + "l",
    "lstm_backward": "pppppppp" + "r" + "ppppp" + "iii" + "l",
    "gru_forward": "ppppp" + "i" + "pppp" + "iii" + "l",
    "gru_backward": "ppppppp" + "r" + "pppppp" + "iii" + "l",
    "rnn_forward": "pppp" + "i" + "pp" + "i" + "iii" + "l",
    "rnn_backward": "ppppp" + "i" + "r" + "ppppp" + "iii" + "l",
}
_lib.release_packed.argtypes = []
_lib.release_packed.restype = None
_lib.set_split.argtypes = [ctypes.c_int]
_lib.set_split.restype = None
set_split(os.environ.get("BPTT_NATIVE_SPLIT", "auto"))
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


def _numpy_blas():
    """NumPy's own OpenBLAS (the scipy-openblas64 of NumPy's wheels): the addresses of its
    cblas s/dgemm and of openblas_set_num_threads_local (which, in these pthreads builds, sets
    the process's one thread count: ``gemms`` calls it from the calling thread alone), or None
    where NumPy has another BLAS (then the products go through NumPy)."""
    folder = os.path.dirname(np.__file__) + ".libs"
    try:
        path = next(os.path.join(folder, f) for f in sorted(os.listdir(folder))
                    if f.startswith("libscipy_openblas64_") and ".so" in f)
        blas = ctypes.CDLL(path)  # already loaded by NumPy: this only opens a handle
        addr = {np.dtype(np.float32): blas.scipy_cblas_sgemm64_,
                np.dtype(np.float64): blas.scipy_cblas_dgemm64_}
        local = blas.openblas_set_num_threads_local
    except (OSError, StopIteration, AttributeError):
        return None
    as_int = lambda f: ctypes.cast(f, ctypes.c_void_p).value  # noqa: E731
    return {k: as_int(v) for k, v in addr.items()}, as_int(local)


_BLAS = None if os.environ.get("BPTT_NATIVE_NUMPY_PRODUCTS") else _numpy_blas()
_BLAS_THREADS = None if _BLAS is None else ctypes.CFUNCTYPE(ctypes.c_int, ctypes.c_int)(_BLAS[1])


@contextlib.contextmanager
def one_blas_thread():
    """NumPy's OpenBLAS held to one thread (its count is process-wide) for the block, and put
    back after: a training run on this backend keeps its NumPy products (the head's, the
    embedding's) off the cores the time loops' OpenMP threads work on. A second OpenBLAS thread
    spins between calls and slows the next time loop, by 4x on a busy 2-core host; and a fixed
    count keeps the products' rounding, and so the run's bits, the same."""
    if _BLAS_THREADS is None:
        yield
        return
    before = _BLAS_THREADS(1)
    try:
        yield
    finally:
        _BLAS_THREADS(before)
_SMALL_PRODUCTS = 1 << 20  # multiply-adds: below, one NumPy call each costs less than threads
for _suffix, _dt in (("f32", np.float32), ("f64", np.float64)):
    _f = getattr(_lib, f"gemms_{_suffix}")
    _f.restype = None
    _f.argtypes = [_P, _P, _I, _P, _P]
    _FUNCS["gemms", np.dtype(_dt)] = _f


def _layout(a):
    """(transposed, leading dimension) of a 2-D array as row-major BLAS reads it: unit stride
    along one axis (a view of column or row blocks will do); None if neither."""
    size = a.itemsize
    rows, cols = a.strides
    if cols == size and rows % size == 0 and rows // size >= max(1, a.shape[1]):
        return 0, rows // size
    if rows == size and cols % size == 0 and cols // size >= max(1, a.shape[0]):
        return 1, cols // size
    return None


def matmuls(pairs):
    """[a @ b for a, b in pairs], each product cut in row blocks that run together on this
    backend's threads, one NumPy-BLAS call each, that BLAS held to one thread meanwhile (see
    ``gemms`` in ``_loops.cpp``). The row blocks depend only on the thread count, and each is
    written by one call whichever thread runs it: the same bits on every run with the same
    OpenMP and OpenBLAS thread counts."""
    work = sum(a.shape[0] * a.shape[1] * b.shape[1] for a, b in pairs)
    dt = pairs[0][0].dtype
    layouts = [(_layout(a), _layout(b)) for a, b in pairs]
    if _BLAS is None or work < _SMALL_PRODUCTS or any(
            a.dtype != dt or b.dtype != dt for a, b in pairs) or any(
            None in ab for ab in layouts):
        return [a @ b for a, b in pairs]
    n = max(1, _lib.max_threads())
    size = dt.itemsize
    outs, desc, ptrs = [], [], []
    for (a, b), ((ta, lda), (tb, ldb)) in zip(pairs, layouts):
        (M, K), N = a.shape, b.shape[1]
        out = np.empty((M, N), dt)
        for i in range(n):
            m0, m1 = M * i // n, M * (i + 1) // n
            if m1 > m0:
                desc += [ta, tb, m1 - m0, N, K, lda, ldb, N]
                ptrs += [a.ctypes.data + (m0 if ta else m0 * lda) * size, b.ctypes.data,
                         out.ctypes.data + m0 * N * size]
        outs.append(out)
    d = np.array(desc, np.int64)
    p = np.array(ptrs, np.uint64)
    _FUNCS["gemms", dt](_BLAS[0][dt], _BLAS[1], len(ptrs) // 3, d.ctypes.data, p.ctypes.data)
    return outs


for _suffix, _dt, _real in (("f32", np.float32, ctypes.c_float),
                            ("f64", np.float64, ctypes.c_double)):
    _f = getattr(_lib, f"adam_{_suffix}")
    _f.restype = None
    _f.argtypes = [_P] * 4 + [_L, _I, _real, _real, _I] + [_real] * 7
    _FUNCS["adam", np.dtype(_dt)] = _f


def adam(p, g, m, v, step, lr, beta1, beta2, eps, weight_decay, decoupled):
    """``bptt.optim.Adam``'s update of one parameter p (and its state m, v) in place, in one
    pass: the same operations in the same order with the same roundings, so the same bits.
    Returns False, and changes nothing, where the arrays are not all C-contiguous float32 or
    float64 of one dtype (the caller then runs NumPy's)."""
    dt = p.dtype
    if (dt.type not in (np.float32, np.float64) or not p.flags.writeable
            or any(a.dtype != dt or not a.flags.c_contiguous or a.shape != p.shape
                   for a in (p, g, m, v))):
        return False
    r = dt.type
    w = 1 - beta1
    _FUNCS["adam", dt](p.ctypes.data, g.ctypes.data, m.ctypes.data, v.ctypes.data, p.size,
                       0 if weight_decay == 0 else 2 if decoupled else 1, r(weight_decay),
                       r(1 - lr * weight_decay), int(w < 0.5), r(w), r(1 - w), r(beta2),
                       r(1 - beta2), r((1 - beta2 ** step) ** 0.5), r(eps),
                       r(lr / (1 - beta1 ** step)))
    return True


WORKSPACE_MIN_BYTES = 1 << 24
WORKSPACE_KEEP = 8
_workspace = []  # big buffers handed out before, least recently used first (flat, uint8)
_workspace_lock = threading.Lock()


def workspace(shape, dtype):
    """``np.empty(shape, dtype)`` for the big buffers of a pass (the gates and their gradients).

    An array of at least ``WORKSPACE_MIN_BYTES`` is a view of a buffer kept here, handed out
    again once nothing holds it any more (no reference, no view), so that a training step does
    not map fresh memory, which the kernel zeroes page by page: at (T, B, H) = (100, 128, 512)
    that cost 40 ms of a 290 ms LSTM forward. Up to ``WORKSPACE_KEEP`` buffers stay (the least
    recently used free ones go first); ``release_workspace()`` lets go of them all.
    """
    dt = np.dtype(dtype)
    nbytes = math.prod(shape) * dt.itemsize
    if nbytes < WORKSPACE_MIN_BYTES:
        return np.empty(shape, dt)
    with _workspace_lock:
        for i in range(len(_workspace)):
            if _workspace[i].nbytes == nbytes and _free(i):
                buf = _workspace.pop(i)
                _workspace.append(buf)
                return buf.view(dt).reshape(shape)
        buf = np.empty(nbytes, np.uint8)
        _workspace.append(buf)
        free = [i for i in range(len(_workspace)) if _free(i)]  # least recently used first
        drop = set(free[:len(_workspace) - WORKSPACE_KEEP])
        _workspace[:] = [b for i, b in enumerate(_workspace) if i not in drop]
        return buf.view(dt).reshape(shape)


def _free(i):
    # held by the list alone (and getrefcount's argument): a view of it, a tape's for one,
    # would hold it too
    return sys.getrefcount(_workspace[i]) == 2


def no_buffer(shape, dtype):
    """An ``empty`` for a buffer that a pass does not fill (inference keeps no gates)."""
    return None


def release_workspace():
    """Let go of the buffers ``workspace`` keeps (those still in use live on with their users),
    and of the packed weights that the loops keep for their next calls (up to four buffers, each
    the size of a layer's weights)."""
    with _workspace_lock:
        _workspace.clear()
    _lib.release_packed()


def transposed(w, dtype=None):
    """w.T, C-contiguous (the loops pack it once per call)."""
    return np.ascontiguousarray(w.T, dtype)


def mask_or_none(mask, dtype):
    return None if mask is None else np.ascontiguousarray(mask, dtype)


def clip_value(clip, dtype):
    return dtype.type(-1 if clip is None else clip)


from . import gru, lstm, rnn  # noqa: E402

FAMILIES = {"rnn": rnn, "lstm": lstm, "gru": gru}
