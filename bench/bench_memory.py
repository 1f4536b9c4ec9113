"""Peak memory and time of one forward + backward: full BPTT, checkpointed BPTT under several
memory budgets (``layer.forward(x, memory=m)``), and torch.nn.LSTM, over long sequences.

Memory is measured in a fresh process per configuration, so one run's freed memory cannot
serve the next:

- tracemalloc peak (bptt only: torch allocates outside Python's tracer), over forward+backward;
- peak RSS above the RSS before the pass (Linux VmHWM, reset through /proc/self/clear_refs),
  for bptt and torch alike.

Time is the median over rounds in which the configurations of one T take turns in one process
(a change of load on a shared machine falls on all of them alike).

x (T, B, D) and dy (T, B, H) are made, and a 10-step pass run (lazy set-up: kernels, thread
pools), before the measurement starts; what the pass allocates (the layer's copy of x, y, the
tape, dx, grads) is measured.

    python bench/bench_memory.py               # T = 1000, 10,000, 100,000 (about 7 min, 2 cores)
    python bench/bench_memory.py --quick       # T = 1000, 10,000
    python bench/bench_memory.py --blas-threads 0   # BLAS and torch threads as found

Writes the section to bench/memory_results.md (``--out``; --quick writes nowhere unless told).
"""

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor

B, H, D = 8, 32, 32      # batch, hidden, input: small enough for T = 100,000 in minutes
REPEATS = {1000: 7, 10_000: 5, 100_000: 1}
PAPER = "Gruslys et al. 2016, T = 1000: 95% of memory saved for about 1/3 more time per iteration"


def budgets(T):
    """5% of T (the paper's point), about sqrt(T), and a small one."""
    return [T // 20, round(T ** 0.5), 10 if T <= 1000 else 50]


# ---------------------------------------------------------------------------------- the worker
def _status(key):
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(key):
                return int(line.split()[1]) * 1024
    raise KeyError(key)


def _reset_peak_rss():
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")      # VmHWM := VmRSS


def _one_pass(impl, memory, threads):
    """A function (x, dy) -> None running one forward + backward of a fresh LSTM layer."""
    import numpy as np
    if impl == "torch":
        import torch
        if threads:
            torch.set_num_threads(threads)
        lstm = torch.nn.LSTM(D, H)

        def one_pass(x, dy):
            xg = torch.from_numpy(x).requires_grad_(True)
            y, _ = lstm(xg)
            y.backward(torch.from_numpy(dy))
            return None
    else:
        import bptt
        layer = bptt.LSTM(D, H, dtype=np.float32, seed=0)

        def one_pass(x, dy):
            y, _, tape = layer.forward(x, memory=memory)
            layer.backward(dy, tape)
            return tape
    return one_pass


def worker(job):
    """One measurement in this (fresh) process; returns a dict.

    kind "trace": tracemalloc peak of one pass (bptt); "rss": peak RSS and time of one pass;
    "time": the configurations of one T, passes interleaved, ``repeats`` rounds (so a change
    of load on the machine falls on all of them alike).
    """
    import numpy as np
    T = job["T"]
    rng = np.random.default_rng(0)
    x = rng.standard_normal((T, B, D)).astype(np.float32)
    dy = rng.standard_normal((T, B, H)).astype(np.float32)
    configs = job["configs"]
    passes = [_one_pass(impl, memory, job["threads"]) for impl, memory in configs]
    for one_pass in passes:
        one_pass(x[:10], dy[:10])  # lazy set-up (kernels, thread pools) is not the pass's memory
    if job["kind"] == "trace":
        import tracemalloc
        tracemalloc.start()
        tape = passes[0](x, dy)
        out = {"tracemalloc": tracemalloc.get_traced_memory()[1]}
        tracemalloc.stop()
        if tape is not None and tape.plan is not None:
            out["peak_states"] = tape.state_count.peak
            out["forward_steps"] = tape.state_count.forward_steps
        return out
    if job["kind"] == "rss":
        rss0 = _status("VmRSS")
        _reset_peak_rss()
        t0 = time.perf_counter()
        passes[0](x, dy)
        return {"seconds": time.perf_counter() - t0, "rss": _status("VmHWM") - rss0}
    samples = [[] for _ in configs]
    for _ in range(job["repeats"]):
        for i, one_pass in enumerate(passes):
            t0 = time.perf_counter()
            one_pass(x, dy)
            samples[i].append(time.perf_counter() - t0)
    return {"seconds": [statistics.median(s) for s in samples], "samples": samples}


def run_job(job, threads):
    env = dict(os.environ)
    if threads:
        for k in ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS"):
            env[k] = str(threads)
    job = dict(job, threads=threads)
    proc = subprocess.run([sys.executable, __file__, "--worker", json.dumps(job)], env=env,
                          capture_output=True, text=True, check=True)
    return json.loads(proc.stdout.splitlines()[-1])


# ---------------------------------------------------------------------------------- the report
def blas_info(threads):
    code = ("import json, numpy, threadpoolctl; "
            "print(json.dumps(threadpoolctl.threadpool_info()))")
    env = dict(os.environ)
    if threads:
        env["OPENBLAS_NUM_THREADS"] = str(threads)
    try:
        out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True,
                             text=True, check=True).stdout
        return ", ".join(f"{i['internal_api']} {i.get('version')} ({i.get('architecture')}, "
                         f"{i['num_threads']} threads)" for i in json.loads(out))
    except (subprocess.CalledProcessError, json.JSONDecodeError):
        return "unknown (threadpoolctl not installed)"


def mb(n):
    return f"{n / 2**20:.1f}"


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--quick", action="store_true", help="T = 1000 and 10,000 only")
    ap.add_argument("--blas-threads", type=int, default=1,
                    help="threads for BLAS and torch in every run (0: as found); default 1: "
                         "like for like, and steady on a shared machine")
    ap.add_argument("--parallel", type=int, default=2,
                    help="tracemalloc runs at once (memory does not depend on load)")
    ap.add_argument("--out", help="where to write the section (default: "
                                  "bench/memory_results.md; with --quick, nowhere)")
    args = ap.parse_args()
    import bptt
    Ts = [1000, 10_000] if args.quick else [1000, 10_000, 100_000]
    configs = {T: [("bptt", None)] + [("bptt", m) for m in budgets(T)] + [("torch", None)]
               for T in Ts}
    load0 = os.getloadavg()
    started = time.perf_counter()

    def job(kind, T, config):
        return run_job({"kind": kind, "T": T, "configs": [config]}, args.blas_threads)

    # tracemalloc (bptt only), several at once: memory does not depend on load
    traced_keys = [(T, c) for T in Ts for c in configs[T] if c[0] == "bptt"]
    with ThreadPoolExecutor(args.parallel) as pool:
        traced = dict(zip(traced_keys, pool.map(lambda k: job("trace", *k), traced_keys)))
    # peak RSS, one at a time, each in a fresh process
    rss = {}
    for T in Ts:
        for c in configs[T]:
            rss[(T, c)] = job("rss", T, c)
            print(f"T={T} {c}: {rss[(T, c)]['seconds']:.2f}s", file=sys.stderr)
    # time: interleaved rounds in one process per T; at the largest T, the RSS pass's time
    seconds = {}
    for T in Ts:
        if REPEATS[T] > 1:
            res = run_job({"kind": "time", "T": T, "configs": configs[T],
                           "repeats": REPEATS[T]}, args.blas_threads)
            seconds.update({(T, c): s for c, s in zip(configs[T], res["seconds"])})
        else:
            seconds.update({(T, c): rss[(T, c)]["seconds"] for c in configs[T]})
    load1 = os.getloadavg()

    rows = ["| T | strategy | memory (step states) | planned forward steps / T | tracemalloc "
            "peak (MiB) | saved vs full | peak RSS (MiB) | time (s) | time vs full |",
            "|" + "---|" * 9]
    for T in Ts:
        full = (T, ("bptt", None))
        for c in configs[T]:
            key, (impl, m) = (T, c), c
            over = f"{100 * (seconds[key] / seconds[full] - 1):+.0f}%" if key != full else ""
            if impl == "torch":
                rows.append(f"| {T:,} | torch.nn.LSTM (autograd) | all | 1 | (not visible) | | "
                            f"{mb(rss[key]['rss'])} | {seconds[key]:.2f} | {over} |")
                continue
            tm = traced[key]
            if m is None:
                name, ratio, saved = "full BPTT", "1", ""
            else:
                plan = bptt.plan_checkpoints(T, m)
                assert tm["forward_steps"] == plan.forward_steps and tm["peak_states"] <= m
                name, ratio = "checkpointed", f"{plan.ratio:.3f}"
                saved = f"{100 * (1 - tm['tracemalloc'] / traced[full]['tracemalloc']):.1f}%"
            rows.append(f"| {T:,} | {name} | {'all' if m is None else m} | {ratio} | "
                        f"{mb(tm['tracemalloc'])} | {saved} | {mb(rss[key]['rss'])} | "
                        f"{seconds[key]:.2f} | {over} |")
    table = "\n".join(rows)

    m = budgets(1000)[0]
    ck, full = (1000, ("bptt", m)), (1000, ("bptt", None))
    p_saved = 100 * (1 - traced[ck]["tracemalloc"] / traced[full]["tracemalloc"])
    p_over = 100 * (seconds[ck] / seconds[full] - 1)
    io = 1000 * B * (2 * D + H) * 4   # the layer's copy of x, y and dx: held by any method
    tape_saved = 100 * (1 - (traced[ck]["tracemalloc"] - io)
                        / (traced[full]["tracemalloc"] - io))
    paper = ("| | memory saved | time per iteration |\n|---|---|---|\n"
             f"| Gruslys et al. 2016 (their figure, T = 1000) | 95% | about +33% |\n"
             f"| bptt, memory={m} (5% of T), whole pass | {p_saved:.0f}% | {p_over:+.0f}% |\n"
             f"| bptt, memory={m}, without x, y, dx | {tape_saved:.0f}% | |")

    threads = "as found" if args.blas_threads == 0 else args.blas_threads
    text = f"""## Memory: checkpointed BPTT under a budget

One LSTM layer, B = {B}, H = {H}, D = {D}, float32, one forward + backward (dy given).
`memory` counts step states per layer and direction: what one step of a cell tape holds
(for an LSTM h, c, tanh c and four gates), the kept steps also serving as checkpoints. Full
BPTT keeps T of them. "Planned forward steps / T" is `tape.plan.ratio`: every cell forward
step run, the first pass included, over T (the optimal plan for that budget; the pass ran
exactly that many, and never held more than `memory` step states: checked in the run).
Memory is measured on one pass in a fresh process per configuration. Peak RSS is the rise of
VmHWM over the RSS before the pass, the same way for bptt and torch (tracemalloc cannot see
torch's allocations); pages the process had touched and freed before the pass are reused
without raising it, so it can read below tracemalloc. Time is the median of
{REPEATS[1000]} / {REPEATS[10_000]} rounds at T = 1000 / 10,000, the configurations of a T
taking turns in one process; at T = 100,000, one pass (the RSS run's).

Machine: {platform.processor() or platform.machine()}, {os.cpu_count()} cores.
BLAS: {blas_info(args.blas_threads)}; BLAS and torch threads: {threads}.
Load average {load0[0]:.1f} before, {load1[0]:.1f} after (the machine is shared: times carry
that noise). Python {platform.python_version()}. Total {time.perf_counter() - started:.0f} s.

{table}

Against the paper's figure:

{paper}

What stays: x (the layer keeps its own copy), y and dx are (T, B, D or H) arrays that any method
holds; they set the floor that the whole-pass column cannot go below. The checkpointed pass
recomputes (ratio - 1) T forward steps; its time over full BPTT is larger than that for small
budgets, where the plan runs many one-step pieces and each cell call has a fixed cost. On a
shared machine the time columns move by tens of percent from one run to the next; the memory
columns and the planned ratio do not.
"""
    print(table)
    print()
    print(paper)
    out = args.out or (None if args.quick else
                       os.path.join(os.path.dirname(os.path.abspath(__file__)),
                                    "memory_results.md"))
    if out:
        with open(out, "w") as f:
            f.write(text)
        print(f"\nwrote {out}", file=sys.stderr)


if __name__ == "__main__":
    if len(sys.argv) == 3 and sys.argv[1] == "--worker":
        print(json.dumps(worker(json.loads(sys.argv[2]))))
    else:
        main()
