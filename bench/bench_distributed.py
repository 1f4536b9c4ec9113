"""Data-parallel BPTT on one machine: updates per second of the demo's char-LM (LSTM 2x256,
embedding 64, batch 32, k1 64, --backend auto, float32, Shakespeare) in one process and on 1 and
2 torchrun ranks with one thread each, the time of the gradient all-reduce per update and its
share, and the scaling efficiency (updates/s at N ranks over N times one process's).

    python bench/bench_distributed.py [--steps 30] [--warmup 3] [--repeats 3] [--big]
                                      [--json bench/distributed.json]

Each configuration runs ``--repeats`` times, interleaved, and the medians are reported. The
global batch stays 32 (2 ranks: 16 streams each), so the ranks split one update's work. Two
communication figures: ``comm`` is the time inside ``Comm.average`` during training (the
all-reduce and waiting for the slower rank), ``allreduce`` the same all-reduce repeated
back-to-back after a barrier (the wire alone). ``--big`` also times one process on a 4x1024 LSTM
(the same data), for the model of larger runs in docs/distributed.md.

Worker mode (``--worker``) is what each rank runs.
"""

import argparse
import datetime
import json
import os
import platform
import statistics
import subprocess
import sys
import time

THREADS = {k: "1" for k in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS")}


def worker(args):
    import numpy as np

    from bptt.apps import charlm

    text = charlm.load_corpus(None)
    cfg = charlm.CharLMConfig(backend="auto", hidden=args.hidden, layers=args.layers,
                              steps=args.warmup + args.steps)
    trainer, _ = charlm.prepare(cfg, text, None)
    comm = trainer.comm
    if comm is not None:
        comm.broadcast_params(trainer.model.params)
    for _ in range(args.warmup):
        trainer.train_step()
    if comm is not None:
        comm.dist.barrier()
        c0 = comm.seconds
    t0 = time.perf_counter()
    for _ in range(args.steps):
        trainer.train_step()
    seconds = time.perf_counter() - t0
    out = {"ranks": 0 if comm is None else comm.world, "steps": args.steps,
           "step_s": seconds / args.steps, "updates_per_s": args.steps / seconds,
           "backend": trainer.model.rnn.backend,
           "params": int(sum(p.size for p in trainer.model.params.values()))}
    grads = {k: np.ones_like(v) for k, v in trainer.trained.items()}
    out["bytes"] = int(sum(g.nbytes for g in grads.values()))
    if comm is not None:
        out["comm_s"] = (comm.seconds - c0) / args.steps
        comm.dist.barrier()
        t0 = time.perf_counter()
        for _ in range(20):
            comm.average(1.0, grads, 16)
        out["allreduce_s"] = (time.perf_counter() - t0) / 20
        if not comm.is_main:
            return
    print("RESULT " + json.dumps(out), flush=True)


def launch(ranks, args, extra=()):
    """One run: a plain process (ranks 0) or torchrun with ``ranks`` processes."""
    me = [os.path.abspath(__file__), "--worker", "--steps", str(args.steps), "--warmup",
          str(args.warmup), *extra]
    env = {k: v for k, v in os.environ.items() if k not in ("WORLD_SIZE", "RANK")}
    env.update(THREADS)
    if ranks == 0:
        cmd = [sys.executable, *me]
    else:
        cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone",
               "--nproc-per-node", str(ranks), *me]
    r = subprocess.run(cmd, env=env, capture_output=True, text=True, check=False)
    if r.returncode != 0:
        sys.exit(f"bench_distributed: {' '.join(cmd)} failed:\n{r.stderr[-3000:]}")
    line = next(s for s in r.stdout.splitlines() if s.startswith("RESULT "))
    return json.loads(line[len("RESULT "):])


def cpu_model():
    try:
        out = subprocess.run(["lscpu"], capture_output=True, text=True, check=False).stdout
        return next(s.split(":", 1)[1].strip() for s in out.splitlines()
                    if s.startswith("Model name"))
    except (OSError, StopIteration):
        return platform.processor() or "unknown"


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--steps", type=int, default=30, help="timed updates per run")
    p.add_argument("--warmup", type=int, default=3, help="untimed updates first")
    p.add_argument("--repeats", type=int, default=3, help="runs per configuration")
    p.add_argument("--big", action="store_true", help="also time one process on a 4x1024 LSTM")
    p.add_argument("--json", default=None, help="write the results here")
    p.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--hidden", type=int, default=256, help=argparse.SUPPRESS)
    p.add_argument("--layers", type=int, default=2, help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.worker:
        return worker(args)
    runs = {0: [], 1: [], 2: []}
    for rep in range(args.repeats):
        for ranks in runs:
            r = launch(ranks, args)
            runs[ranks].append(r)
            print(f"repeat {rep + 1}, {'one process' if ranks == 0 else f'{ranks} rank(s)'}: "
                  f"{r['updates_per_s']:.3f} updates/s", flush=True)

    def med(ranks, key):
        return statistics.median(r[key] for r in runs[ranks])

    base = med(0, "updates_per_s")
    summary = {"date": datetime.date.today().isoformat(), "cpu": cpu_model(),
               "cores": os.cpu_count(), "python": platform.python_version(),
               "model": "char-LM LSTM 2x256, embed 64, batch 32, k1 64, float32",
               "backend": runs[0][0]["backend"], "params": runs[0][0]["params"],
               "bytes_per_update": runs[1][0]["bytes"], "steps": args.steps,
               "repeats": args.repeats, "one_process_updates_per_s": base, "ranks": {}}
    print(f"\n{summary['cpu']}, {summary['cores']} cores, {summary['date']}; "
          f"{summary['model']}, backend {summary['backend']}, {summary['params']:,} parameters "
          f"({summary['bytes_per_update'] / 2**20:.2f} MiB of gradients per update); medians "
          f"of {args.repeats}")
    print(f"{'processes':>10} {'updates/s':>10} {'step ms':>8} {'comm ms':>8} {'share':>6} "
          f"{'wire ms':>8} {'speedup':>8} {'efficiency':>10}")
    print(f"{'1 (plain)':>10} {base:10.3f} {1e3 / base:8.1f} {'':>8} {'':>6} {'':>8} "
          f"{1.0:8.2f} {1.0:10.2f}")
    for n in (1, 2):
        ups, comm = med(n, "updates_per_s"), med(n, "comm_s")
        wire = med(n, "allreduce_s")
        step = 1.0 / ups
        entry = {"updates_per_s": ups, "step_s": step, "comm_s": comm,
                 "comm_share": comm / step, "allreduce_s": wire, "speedup": ups / base,
                 "efficiency": ups / base / n, "runs": runs[n]}
        summary["ranks"][str(n)] = entry
        print(f"{n:>10} {ups:10.3f} {1e3 * step:8.1f} {1e3 * comm:8.1f} "
              f"{comm / step:6.1%} {1e3 * wire:8.2f} {ups / base:8.2f} {ups / base / n:10.2f}")
    summary["one_process_runs"] = runs[0]
    if args.big:
        big = launch(0, argparse.Namespace(steps=3, warmup=1),
                     ["--hidden", "1024", "--layers", "4"])
        summary["big"] = big
        print(f"\nLSTM 4x1024, one process: {big['step_s']:.2f} s an update, "
              f"{big['params']:,} parameters ({big['bytes'] / 2**20:.1f} MiB of gradients)")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(summary, f, indent=1)
        print(f"wrote {args.json}")


if __name__ == "__main__":
    main()
