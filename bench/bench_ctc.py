"""Side-by-side timing of bptt.ctc.ctc_loss and torch's CPU ctc_loss: the loss and its gradient.

    .venv/bin/python bench/bench_ctc.py [--threads N] [--repeats N] [--dtype float32|float64]
                                        [--sizes 200x32x11x7,400x16x34x60]
                                        [--backend all|numpy,native] [--json PATH]

Sizes are TxBxCxS: T frames, B sequences, C classes (blank 0), S labels per target, every
sequence at full length. bptt's side is one ``ctc_loss(log_probs, ...)`` call (its checks at
the door included), which returns the mean loss and dL/dlog_probs; torch's side is
``F.ctc_loss(x, ...)`` then ``backward()`` with ``x`` a leaf holding the same log-probabilities.
Both run in the same process with the same thread count (torch.set_num_threads and
threadpoolctl, which covers OpenMP and BLAS), interleaved so that machine noise hits both.
Reports medians, min and max in ms and ratio = torch / bptt (above 1: bptt is faster).
"""

import argparse
import json
import os
import platform
import statistics
import subprocess
import time

import numpy as np
import threadpoolctl
import torch
import torch.nn.functional as F

from bptt import ctc

SIZES = [(200, 32, 11, 7), (400, 16, 34, 60)]


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--threads", type=int, default=os.cpu_count())
    p.add_argument("--repeats", type=int, default=15)
    p.add_argument("--warmup", type=int, default=2)
    p.add_argument("--dtype", default="float32", choices=["float32", "float64"])
    p.add_argument("--sizes", default=",".join("x".join(map(str, s)) for s in SIZES))
    p.add_argument("--backend", default="all",
                   help="bptt's backends, comma-separated: numpy (reference), native (C++); "
                        "all: every one available")
    p.add_argument("--json", metavar="PATH")
    args = p.parse_args(argv)
    args.backends = (("numpy", "native") if ctc._native() is not None else ("numpy",)) \
        if args.backend == "all" else tuple(args.backend.split(","))
    unknown = set(args.backends) - {"numpy", "native"}
    if unknown:
        p.error(f"--backend: expected some of numpy, native or all, got {sorted(unknown)}")
    if "native" in args.backends and ctc._native() is None:
        p.error("--backend native: bptt.native._ctc was not built")
    args.sizes = [tuple(int(v) for v in s.split("x")) for s in args.sizes.split(",")]
    return args


def cpu_model():
    try:
        out = subprocess.run(["lscpu"], capture_output=True, text=True, check=False).stdout
        return next(line.split(":", 1)[1].strip() for line in out.splitlines()
                    if line.startswith("Model name"))
    except (OSError, StopIteration):
        return platform.processor()


def inputs(T, B, C, S, dtype, seed=0):
    rng = np.random.default_rng(seed)
    z = rng.standard_normal((T, B, C))
    lp = (z - np.log(np.exp(z).sum(axis=-1, keepdims=True))).astype(dtype)
    targets = rng.integers(1, C, (B, S))
    return lp, targets, np.full(B, T), np.full(B, S)


def bench_size(size, args):
    lp, targets, il, tl = inputs(*size, args.dtype)
    x = torch.tensor(lp, requires_grad=True)
    t_targets, t_il, t_tl = torch.tensor(targets), torch.tensor(il), torch.tensor(tl)

    def run_torch():
        loss = F.ctc_loss(x, t_targets, t_il, t_tl)
        loss.backward()
        x.grad = None
        return loss.item()

    runs = {"torch": run_torch}
    for b in args.backends:
        runs[f"bptt-{b}"] = lambda b=b: ctc.ctc_loss(lp, targets, il, tl, backend=b)[0]
    losses = {name: f() for name, f in runs.items()}  # also the warm-up of the first call
    for _ in range(args.warmup):
        for f in runs.values():
            f()
    times = {name: [] for name in runs}
    for _ in range(args.repeats):
        for name, f in runs.items():
            t0 = time.perf_counter()
            f()
            times[name].append((time.perf_counter() - t0) * 1e3)
    out = {"size": "x".join(map(str, size)), "times_ms": {}, "loss": losses}
    for name, ts in times.items():
        out["times_ms"][name] = {"median": statistics.median(ts), "min": min(ts), "max": max(ts)}
    torch_median = out["times_ms"]["torch"]["median"]
    out["ratio_torch_over_bptt"] = {name: torch_median / t["median"]
                                    for name, t in out["times_ms"].items() if name != "torch"}
    return out


def main(argv=None):
    args = parse_args(argv)
    torch.set_num_threads(args.threads)
    header = {"cpu": cpu_model(), "threads": args.threads, "dtype": args.dtype,
              "repeats": args.repeats, "numpy": np.__version__, "torch": torch.__version__}
    print(", ".join(f"{k}={v}" for k, v in header.items()))
    results = []
    with threadpoolctl.threadpool_limits(args.threads):
        for size in args.sizes:
            r = bench_size(size, args)
            results.append(r)
            print(f"T x B x C x S = {r['size']}")
            for name, t in r["times_ms"].items():
                ratio = r["ratio_torch_over_bptt"].get(name)
                tail = f"   torch/bptt = {ratio:.2f}" if ratio is not None else ""
                print(f"  {name:12s} median {t['median']:8.3f} ms  (min {t['min']:.3f}, "
                      f"max {t['max']:.3f})  loss {r['loss'][name]:.6f}{tail}")
    if args.json:
        with open(args.json, "w") as f:
            json.dump({**header, "results": results}, f, indent=1)


if __name__ == "__main__":
    main()
