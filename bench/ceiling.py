"""How near the machine's multiply-add ceiling bptt's native LSTM and torch's oneDNN LSTM run.

    .venv/bin/python bench/ceiling.py [--threads N] [--repeats N] [--sizes 100x64x256,...]

Compiles ``bench/fma_peak.cpp`` (g++, -march=native) and measures the float32 FMA ceiling of
this machine on N threads (median of its repeats), then times one training step and one
inference forward of the LSTM in both libraries, interleaved in one process as
``bench_step.py`` does, and prints each as GFLOP/s of its products and as a share of that
ceiling. The products of a forward are 2 T B 4H (D + H) flops (D = H here); a training step's
are three times as many (the forward's, the backward's dL/dh and dL/dx, and the weight
gradients). The rest (gate arithmetic, memory traffic) is what keeps a layer below 100%.

The ceiling is measured before the timing and after it; the machine's speed drifts, so both are
printed, and the shares use their mean.
"""

import argparse
import os
import shutil
import statistics
import subprocess
import sys
import tempfile

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import bench_step  # noqa: E402

HERE = os.path.dirname(os.path.abspath(__file__))


def fma_peak(threads, repeats=5):
    """GFLOP/s of float32 FMAs on `threads` threads: the median of `repeats` runs."""
    cxx = shutil.which("g++")
    if cxx is None:
        raise SystemExit("ceiling: needs g++ to build bench/fma_peak.cpp; none on PATH")
    with tempfile.TemporaryDirectory() as d:
        exe = os.path.join(d, "fma_peak")
        subprocess.run([cxx, "-O2", "-march=native", "-fopenmp",
                        os.path.join(HERE, "fma_peak.cpp"), "-o", exe], check=True)
        out = subprocess.run([exe, str(threads), str(repeats)], check=True, text=True,
                             capture_output=True).stdout
    return statistics.median(float(line.split()[0]) for line in out.splitlines())


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--threads", type=int, default=os.cpu_count())
    p.add_argument("--repeats", type=int, default=15)
    p.add_argument("--warmup", type=int, default=2)
    p.add_argument("--sizes", default="100x32x128,100x64x256,100x128x512",
                   help="comma-separated TxBxH (input size D = H)")
    args = p.parse_args(argv)
    sizes = [tuple(int(v) for v in s.split("x")) for s in args.sizes.split(",")]
    limiter = bench_step.set_threads(args.threads, ("native",))  # noqa: F841
    before = fma_peak(args.threads)
    rows = []
    for size in sizes:
        T, B, H = size
        fwd = 2 * T * B * 4 * H * (H + H)
        times = bench_step.time_interleaved(bench_step.build("lstm", size, ("native",)),
                                            args.repeats, args.warmup)
        for mode, flops in (("infer", fwd), ("train", 3 * fwd)):
            for lib in ("bptt-native", "torch"):
                ms = times[lib, mode]
                rows.append((mode, size, lib, statistics.median(ms), min(ms), flops))
    after = fma_peak(args.threads)
    peak = (before + after) / 2
    print(f"FMA ceiling, float32, {args.threads} threads: {before:.0f} GFLOP/s before the "
          f"timing, {after:.0f} after (mean {peak:.0f})")
    print(f"LSTM, {args.repeats} repeats each, interleaved; GFLOP/s of the products at the "
          "median time [at the best], and as % of the ceiling")
    print(f"{'mode':<6}{'T x B x H':>14}  {'library':<12}{'ms':>9}{'GFLOP/s':>16}{'% of ceiling':>16}")
    for mode, (T, B, H), lib, med, best, flops in rows:
        gf, gbest = flops / med / 1e6, flops / best / 1e6
        print(f"{mode:<6}{f'{T}x{B}x{H}':>14}  {lib:<12}{med:9.1f}{f'{gf:.0f} [{gbest:.0f}]':>16}"
              f"{f'{100 * gf / peak:.0f} [{100 * gbest / peak:.0f}]':>16}")


if __name__ == "__main__":
    main()
