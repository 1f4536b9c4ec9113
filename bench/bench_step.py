"""Side-by-side timing of bptt and torch.nn: one training step and inference, LSTM/GRU/RNN.

    .venv/bin/python bench/bench_step.py [--threads N] [--repeats N] [--cells lstm,gru,rnn]
                                         [--sizes 100x32x128,1000x1x32] [--quick] [--memory]
                                         [--backend all|numpy,native] [--json PATH]

Both libraries run in the same process with the same thread count; their runs are interleaved
so that machine noise hits both. Reports medians, min and max in ms; ratio = bptt / torch.
``--backend`` picks bptt's cells, one or several side by side: the NumPy reference and ``bptt.native``
(C++, built at install); ``all`` (the default) is every one that imports here.

Inference also runs in onnxruntime where it is installed (``--no-onnx``: not): the same layer
exported by ``bptt.export.to_onnx`` (zero initial state, as the others), one InferenceSession
with ``intra_op_num_threads`` = ``--threads``, interleaved with the last backend listed (the one
``auto`` picks) and torch in that backend's process; ratio ort/b = onnxruntime / bptt-b. Its
workers do not spin between calls (``session.intra_op.allow_spinning`` = 0; ``--ort-spin``: they
do, onnxruntime's default), so that they take no core from the calls interleaved with them.
"""

import argparse
import contextlib
import datetime
import gc
import json
import multiprocessing
import os
import platform
import statistics
import time
from concurrent.futures import ProcessPoolExecutor

import numpy as np
import threadpoolctl
import torch

import bptt

CELLS = {"lstm": (bptt.LSTM, torch.nn.LSTM), "gru": (bptt.GRU, torch.nn.GRU),
         "rnn": (bptt.RNN, torch.nn.RNN)}  # RNN: tanh, the default of both
SIZES = [(100, 32, 128), (100, 64, 256), (100, 128, 512), (1000, 16, 64), (1000, 1, 32)]
MODES = ("train", "infer")
BACKENDS = ("numpy", "native")


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--threads", type=int, default=os.cpu_count())
    p.add_argument("--repeats", type=int, default=7)
    p.add_argument("--warmup", type=int, default=2)
    p.add_argument("--cells", default="lstm,gru,rnn")
    p.add_argument("--sizes", default=",".join("x".join(map(str, s)) for s in SIZES),
                   help="comma-separated TxBxH (input size D = H)")
    p.add_argument("--quick", action="store_true", help="smoke test: 3 repeats, first size only")
    p.add_argument("--memory", action="store_true", help="also measure peak RSS of one step")
    p.add_argument("--backend", default="all",
                   help="bptt's cells, comma-separated: numpy (reference), native "
                        "(bptt.native); all: every one available")
    p.add_argument("--no-onnx", dest="onnx", action="store_false",
                   help="leave out the onnxruntime inference column")
    p.add_argument("--ort-spin", action="store_true",
                   help="let onnxruntime's workers spin between calls (its default; they may "
                        "then slow the calls interleaved with them)")
    p.add_argument("--json", metavar="PATH")
    args = p.parse_args(argv)
    args.cells = args.cells.split(",")
    args.backends = available_backends() if args.backend == "all" else tuple(
        args.backend.split(","))
    unknown = set(args.backends) - set(BACKENDS)
    if unknown:
        p.error(f"--backend: expected some of {', '.join(BACKENDS)} or all, got "
                f"{', '.join(sorted(unknown))}")
    args.sizes = [tuple(int(v) for v in s.split("x")) for s in args.sizes.split(",")]
    if args.quick:
        args.repeats, args.warmup, args.sizes = min(args.repeats, 3), 1, args.sizes[:1]
    args.ort_note = None
    if args.onnx:
        args.ort_note = onnx_missing()
        args.onnx = args.ort_note is None
    return args


def onnx_missing():
    """None where onnx and onnxruntime import, else why the column is left out."""
    try:
        import onnx  # noqa: F401
        import onnxruntime  # noqa: F401
    except ImportError as e:
        return f"onnxruntime column skipped: {e} (pip install 'bptt[export]')"
    return None


def available_backends():
    """numpy, and each compiled backend whose package imports."""
    out = ["numpy"]
    for name, package in (("native", "bptt.native"),):
        try:
            __import__(package)
            out.append(name)
        except ImportError:
            pass
    return tuple(out)


def libs(backends):
    return tuple(f"bptt-{b}" for b in backends) + ("torch",)


def set_threads(n, backends=("numpy",)):
    """Same thread count for torch (OpenMP/MKL) and numpy's BLAS; keep the returned limiter."""
    if "native" in backends:
        import bptt.native  # noqa: F401 (loads its OpenMP runtime: limit it too)
    torch.set_num_threads(n)
    return threadpoolctl.threadpool_limits(n)


def build(cell, size, backends=("numpy",), ort_threads=None, ort_spin=False):
    """The same layer in both libraries, weights copied across; one callable per (lib, mode);
    with ``ort_threads``, also ("onnxruntime", "infer"): the layer exported to ONNX."""
    T, B, H = size
    bptt_cls, torch_cls = CELLS[cell]
    layers = {b: bptt_cls(H, H, dtype=np.float32, seed=0, backend=b) for b in backends}
    layer = layers[backends[0]]
    m = torch_cls(H, H)
    m.load_state_dict({k: torch.from_numpy(v) for k, v in layer.state_dict().items()})
    rng = np.random.default_rng(1)
    x, dy = (rng.standard_normal((T, B, H), dtype=np.float32) for _ in range(2))
    xt, dyt = torch.from_numpy(x).requires_grad_(), torch.from_numpy(dy)

    def bptt_train(layer):
        y, _, tape = layer.forward(x)
        return layer.backward(dy, tape)

    def torch_train():
        m.zero_grad(set_to_none=True)
        xt.grad = None
        y, _ = m(xt)
        y.backward(dyt)

    def torch_infer():
        with torch.inference_mode():
            return m(xt.detach())

    fns = {("torch", "train"): torch_train, ("torch", "infer"): torch_infer}
    for b, lay in layers.items():
        fns[f"bptt-{b}", "train"] = lambda lay=lay: bptt_train(lay)
        fns[f"bptt-{b}", "infer"] = lambda lay=lay: lay.forward(x, tape=False)  # as no_grad
    if ort_threads is not None:
        fns["onnxruntime", "infer"] = onnx_infer(layer, x, ort_threads, ort_spin)
    return fns


def onnx_infer(layer, x, threads, spin=False):
    """A callable running ``layer`` exported to ONNX on x in onnxruntime, ``threads`` threads
    (``spin``: idle workers spin)."""
    import onnxruntime as ort

    from bptt.export import to_onnx
    opts = ort.SessionOptions()
    opts.intra_op_num_threads, opts.inter_op_num_threads = threads, 1
    opts.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    opts.add_session_config_entry("session.intra_op.allow_spinning", "1" if spin else "0")
    proto = to_onnx(layer, initial_state=False)
    sess = ort.InferenceSession(proto.SerializeToString(), opts,
                                providers=["CPUExecutionProvider"])
    return lambda: sess.run(None, {"x": x})


def time_interleaved(fns, repeats, warmup):
    """ms per call for each callable; each repeat runs all of them, order reversed every other."""
    for fn in fns.values():
        for _ in range(warmup):
            fn()
    gc.collect()
    times, keys = {k: [] for k in fns}, list(fns)
    for r in range(repeats):
        for k in keys if r % 2 == 0 else keys[::-1]:
            t0 = time.perf_counter()
            fns[k]()
            times[k].append((time.perf_counter() - t0) * 1e3)
    return times


def summarize(ms):
    return {"median": statistics.median(ms), "min": min(ms), "max": max(ms), "all": ms}


def timing_child(backend, grid, threads, repeats, warmup, onnx=False, ort_spin=False):
    """In a fresh process: one bptt backend and torch (and onnxruntime's inference with
    ``onnx``), interleaved, over the grid. Each backend gets a process of its own because a
    backend's thread pool (OpenBLAS's spinning workers after a multi-threaded call) slows
    whatever runs next on the other core, torch included."""
    limiter = set_threads(threads, (backend,))  # noqa: F841 (held for the process's life)
    rows = []
    for cell, size in grid:
        fns = build(cell, size, (backend,), threads if onnx else None, ort_spin)
        times = time_interleaved(fns, repeats, warmup)
        for mode in MODES:
            t, s = summarize(times["torch", mode]), summarize(times[f"bptt-{backend}", mode])
            row = dict(cell=cell, T=size[0], B=size[1], H=size[2], mode=mode, torch_ms=t,
                       bptt_ms=s, ratio=s["median"] / t["median"], paired=paired(s, t))
            if ("onnxruntime", mode) in times:
                o = summarize(times["onnxruntime", mode])
                row.update(ort_ms=o, ort_ratio=o["median"] / s["median"],
                           ort_paired=paired(o, s))
            rows.append(row)
    return rows


def paired(a, b):
    """The median of each repeat's own ratio a/b (the two ran in the same second), which a
    slow drift of the shared machine's speed moves less than the ratio of the medians."""
    return statistics.median(x / y for x, y in zip(a["all"], b["all"], strict=True))


def bench_timing(grid, args):
    """Rows per (cell, size, mode), with each backend's time, its torch time and ratio."""
    merged = {}
    for b in args.backends:
        onnx = args.onnx and b == args.backends[-1]
        with ProcessPoolExecutor(1, mp_context=multiprocessing.get_context("spawn")) as pool:
            rows = pool.submit(timing_child, b, grid, args.threads, args.repeats,
                               args.warmup, onnx, args.ort_spin).result()
        for r in rows:
            key = (r["cell"], r["T"], r["B"], r["H"], r["mode"])
            row = merged.setdefault(key, dict(cell=r["cell"], T=r["T"], B=r["B"], H=r["H"],
                                              mode=r["mode"]))
            row[f"bptt-{b}_ms"], row[f"torch-{b}_ms"], row[f"ratio-{b}"] = (
                r["bptt_ms"], r["torch_ms"], r["ratio"])
            row[f"paired-{b}"] = r["paired"]
            if "ort_ms" in r:
                row["onnxruntime_ms"], row["ort_backend"] = r["ort_ms"], b
                row["ratio-ort"], row["paired-ort"] = r["ort_ratio"], r["ort_paired"]
    return list(merged.values())


def proc_status_kb(field):
    with open("/proc/self/status") as f:
        return next(int(line.split()[1]) for line in f if line.startswith(field + ":"))


def memory_child(lib, cell, size, threads):
    """In a fresh process: peak RSS increase (MB) of the first training step at this size."""
    backends = (lib.split("-", 1)[1],) if lib.startswith("bptt-") else ("numpy",)
    limiter = set_threads(threads, backends)  # noqa: F841 (held for the process's life)
    build(cell, (2, 2, 8), backends)[lib, "train"]()  # thread pools, lazy init, JIT, tiny
    step = build(cell, size, backends)[lib, "train"]
    gc.collect()
    try:  # reset the high-water mark (Linux >= 4.0) so only the step can raise it
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        reset = True
    except OSError:
        reset = False
    before = proc_status_kb("VmRSS")
    out = step()  # noqa: F841 (results stay alive, as after a real step)
    # VmHWM, not ru_maxrss: in a spawned child, ru_maxrss keeps the parent's RSS from before exec
    peak = proc_status_kb("VmHWM")
    return {"rss_before_mb": before / 1024, "peak_increase_mb": (peak - before) / 1024,
            "hwm_reset": reset}


def bench_memory(cell, size, threads, backends):
    row = dict(cell=cell, T=size[0], B=size[1], H=size[2])
    for lib in libs(backends):  # a fresh spawned process per measurement
        with ProcessPoolExecutor(1, mp_context=multiprocessing.get_context("spawn")) as pool:
            row[lib] = pool.submit(memory_child, lib, cell, size, threads).result()
    for b in backends:
        row[f"ratio-{b}"] = (row[f"bptt-{b}"]["peak_increase_mb"]
                             / row["torch"]["peak_increase_mb"])
    return row


@contextlib.contextmanager
def quiet_stderr():
    """The profiler's C++ side prints start/stop lines on fd 2; drop them."""
    saved, devnull = os.dup(2), os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, 2)
    try:
        yield
    finally:
        os.dup2(saved, 2)
        os.close(saved)
        os.close(devnull)


def torch_path(cell, size):
    """Which implementation torch ran, from the aten ops the profiler saw in one step."""
    fns, paths = build(cell, size), []
    for mode in MODES:
        cpu = [torch.profiler.ProfilerActivity.CPU]
        with quiet_stderr(), torch.profiler.profile(activities=cpu) as prof:
            fns["torch", mode]()
        calls = {e.key: e.count for e in prof.key_averages() if e.key.startswith("aten::")}
        fused = sorted(k for k in calls if "mkldnn_rnn" in k)
        if fused:
            paths.append(f"{mode}: oneDNN ({', '.join(fused)})")
        else:
            top = [k for k in ("aten::lstm", "aten::gru", "aten::rnn_tanh") if k in calls]
            gemms = ", ".join(f"{k} x{calls[k]}" for k in ("aten::addmm", "aten::mm") if k in calls)
            paths.append(f"{mode}: generic ({', '.join(top)} -> per-step {gemms})")
    return "; ".join(paths)


def environment(args):
    """What the numbers depend on, as printable strings."""
    with open("/proc/cpuinfo") as f:
        cpu = next((ln.split(":", 1)[1].strip() for ln in f if ln.startswith("model name")), "?")
    blas = "; ".join(f"{d['internal_api']} {d.get('version')} kernel={d.get('architecture')} "
                     f"{d.get('threading_layer')} threads={d['num_threads']} ({d['filepath']})"
                     for d in threadpoolctl.threadpool_info() if d["user_api"] == "blas")
    torch_blas = [w for w in torch.__config__.show().replace(",", " ").split()
                  if w.startswith("BLAS_INFO=")]
    env = {
        "date": datetime.datetime.now().astimezone().isoformat(timespec="seconds"),
        "cpu": f"{cpu} ({os.cpu_count()} logical CPUs)", "python": platform.python_version(),
        "numpy": np.__version__, "torch": torch.__version__, "bptt": bptt.__version__,
        "bptt backends": ", ".join(args.backends),
        "OpenMP": "; ".join(f"{d['internal_api']} {d.get('version')} threads={d['num_threads']} "
                            f"({os.path.basename(d['filepath'])})"
                            for d in threadpoolctl.threadpool_info()
                            if d["user_api"] == "openmp"),
        "numpy BLAS": blas, "torch BLAS": ", ".join(torch_blas) or "?",
        "OPENBLAS_CORETYPE": os.environ.get("OPENBLAS_CORETYPE", "unset"),
        "OPENBLAS_L2_SIZE": os.environ.get("OPENBLAS_L2_SIZE", "unset"),
        "threads": f"{args.threads} (torch.get_num_threads() = {torch.get_num_threads()})",
        "onnxruntime": _onnx_versions(args),
    }
    for cell in args.cells:
        env[f"torch path {cell.upper()}"] = torch_path(cell, args.sizes[0])
    return env


def _onnx_versions(args):
    if not args.onnx:
        return args.ort_note or "not run (--no-onnx)"
    import onnx
    import onnxruntime

    from bptt.export import DEFAULT_OPSET
    return (f"{onnxruntime.__version__} (onnx {onnx.__version__}, opset {DEFAULT_OPSET}, "
            f"CPUExecutionProvider, intra_op_num_threads={args.threads}, "
            f"{'spinning' if args.ort_spin else 'no spinning'})")


def print_table(title, header, rows):
    widths = [max(len(str(r[i])) for r in [header] + rows) for i in range(len(header))]
    print(f"\n{title}")
    for r in [header] + rows:
        print("  ".join(str(c).rjust(w) for c, w in zip(r, widths)))


def fmt(s):
    return f"{s['median']:.2f} [{s['min']:.2f}-{s['max']:.2f}]"


def main():
    args = parse_args()
    limiter = set_threads(args.threads, args.backends)  # noqa: F841
    env = environment(args)
    for k, v in env.items():
        print(f"{k:<18} {v}")
    grid = [(c, s) for c in args.cells for s in args.sizes]
    timing = bench_timing(grid, args)
    bs = args.backends
    for mode in MODES:
        what = "training step (forward + backward)" if mode == "train" else "forward (inference)"
        ort = mode == "infer" and args.onnx
        title = (f"{mode}: ms per {what}, median [min-max] of {args.repeats} repeats; "
                 "ratio = bptt/torch (<1: bptt faster)\n(each backend in its own process, "
                 "interleaved with torch: 'torch (b)' is torch's time in backend b's run;\n"
                 "ratio: of the two medians; paired: the median of the repeats' own ratios)")
        if ort:
            title += (f"\nonnxruntime: the layer exported to ONNX, in {bs[-1]}'s process; "
                      f"ort/{bs[-1]} = onnxruntime / bptt-{bs[-1]} (>1: bptt faster)")
        elif mode == "infer" and args.ort_note:
            title += f"\n({args.ort_note})"
        print_table(title,
                    ["cell", "T", "B", "H"]
                    + [c for b in bs for c in (f"bptt-{b} ms", f"torch ({b}) ms")]
                    + (["onnxruntime ms"] if ort else [])
                    + [c for b in bs for c in (f"ratio {b}", f"paired {b}")]
                    + ([f"ort/{bs[-1]}", "paired ort"] if ort else []),
                    [[r["cell"], r["T"], r["B"], r["H"]]
                     + [c for b in bs for c in (fmt(r[f"bptt-{b}_ms"]), fmt(r[f"torch-{b}_ms"]))]
                     + ([fmt(r["onnxruntime_ms"])] if ort else [])
                     + [f"{r[f'{c}-{b}']:.2f}" for b in bs for c in ("ratio", "paired")]
                     + ([f"{r['ratio-ort']:.2f}", f"{r['paired-ort']:.2f}"] if ort else [])
                     for r in timing if r["mode"] == mode])
    memory = []
    if args.memory:
        memory = [bench_memory(c, s, args.threads, bs) for c, s in grid]
        print_table("memory: peak RSS increase (MB) of one training step; ratio = bptt/torch\n"
                    "(each from a fresh process: inputs allocated, a tiny T=2 B=2 H=8 step run to "
                    "start thread pools,\n high-water mark reset, then the first full-size step: "
                    "VmHWM after it minus VmRSS just before)",
                    ["cell", "T", "B", "H"] + [f"bptt-{b} MB" for b in bs] + ["torch MB"]
                    + [f"ratio {b}" for b in bs] + ["HWM reset"],
                    [[r["cell"], r["T"], r["B"], r["H"]]
                     + [f"{r[f'bptt-{b}']['peak_increase_mb']:.1f}" for b in bs]
                     + [f"{r['torch']['peak_increase_mb']:.1f}"]
                     + [f"{r[f'ratio-{b}']:.2f}" for b in bs]
                     + [all(r[lib]["hwm_reset"] for lib in libs(bs))] for r in memory])
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"env": env, "timing": timing, "memory": memory}, f, indent=1)


if __name__ == "__main__":
    main()
