"""What the gradient diagnostics cost: the backward pass with and without recording dL/dh_t, and a
whole diagnostics report against a training step.

    python bench/bench_diagnostics.py [--T 100] [--hidden 128] [--batch 32] [--repeats 9]

Times are the process's CPU time (one BLAS thread), the minimum over repeats, so that other jobs
on a shared machine disturb them little. Results go in docs/long_range.md.
"""

import argparse
import os
import time

os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")

import numpy as np  # noqa: E402

from bptt import diagnostics  # noqa: E402
from bptt.data.tasks import Task  # noqa: E402
from bptt.apps.tasks import TaskConfig, build_task_model  # noqa: E402


def best(fn, repeats):
    times = []
    for _ in range(repeats):
        t0 = time.process_time()
        fn()
        times.append(time.process_time() - t0)
    return min(times)


def interleaved(f, g, repeats):
    """Best times of f and g, called in turn, so that a change of load hits both alike."""
    tf, tg = [], []
    for _ in range(repeats):
        for fn, times in ((f, tf), (g, tg)):
            t0 = time.process_time()
            fn()
            times.append(time.process_time() - t0)
    return min(tf), min(tg)


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--T", type=int, default=100)
    p.add_argument("--hidden", type=int, default=128)
    p.add_argument("--batch", type=int, default=32)
    p.add_argument("--repeats", type=int, default=25)
    args = p.parse_args()
    print(f"adding problem, T={args.T}, B={args.batch}, H={args.hidden}, float32, CPU time, "
          f"best of {args.repeats}")
    print("| cell | layer.backward | with record= | overhead | training step | report | "
          "report / step |")
    print("|---|---|---|---|---|---|---|")
    for cell in ("rnn", "lstm", "gru"):
        task = Task("adding", args.T)
        cfg = TaskConfig(task="adding", length=args.T, cell=cell, hidden=args.hidden)
        model = build_task_model(cfg)
        x, y = task.sample(args.batch, np.random.default_rng(0))
        out, _, tape = model.forward(x)
        _, dout = task.loss(out, y)
        dy, dh_n = diagnostics.head_backward(model, dout, tape)
        layer, rnn_tape = model.rnn, tape["rnn"]

        plain, recorded = interleaved(
            lambda: layer.backward(dy, rnn_tape, dh_n),
            lambda: diagnostics.record_backward(layer, rnn_tape, dy, dh_n), args.repeats)

        def step():
            o, _, tp = model.forward(x)
            _, d = task.loss(o, y)
            model.backward(d, tp)
        full = best(step, args.repeats)
        rep = best(lambda: diagnostics.report(model, tape, dout), args.repeats)
        print(f"| {cell} | {plain * 1e3:.2f} ms | {recorded * 1e3:.2f} ms | "
              f"{100 * (recorded / plain - 1):+.1f}% | {full * 1e3:.2f} ms | {rep * 1e3:.2f} ms | "
              f"{rep / full:.2f} |")


if __name__ == "__main__":
    main()
