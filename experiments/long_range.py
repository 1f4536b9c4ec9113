"""Which cells learn long-range dependencies, on a fixed compute budget per run.

For the adding problem at T in 50, 100, 200, 400 and copy memory at a few T, trains a tanh RNN, an
IRNN, an LSTM and a GRU, with and without gradient clipping, each for the same CPU time
(``--budget`` seconds of the process's CPU time, one BLAS thread), stopping early when solved.
Writes one line per run to ``runs/long_range/results.jsonl`` as runs finish (a partial result
survives an interruption; ``--resume`` skips the runs already there), then the results table
into ``docs/long_range.md`` (between its ``results`` markers), the figures into
``docs/figures/`` and the results into ``docs/long_range_results.json``.

    python experiments/long_range.py                 # the whole grid (see docs/long_range.md)
    python experiments/long_range.py --table-only    # table and figures from the saved results
"""

import argparse
import json
import os
import sys
import time

os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")   # before NumPy loads: one thread per run
os.environ.setdefault("OMP_NUM_THREADS", "1")
os.environ.setdefault("MKL_NUM_THREADS", "1")

import numpy as np  # noqa: E402

from bptt import diagnostics  # noqa: E402
from bptt.data.tasks import Task  # noqa: E402
from bptt.apps.tasks import TaskConfig, TaskRun as TaskTrainer, build_task_model  # noqa: E402

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CELLS = ("rnn", "irnn", "lstm", "gru")
CLIPS = (None, 1.0)
GRID = {"adding": ((50, 100, 200, 400), CLIPS), "copy": ((10, 20, 50), (1.0,))}
# float64: in float32 a vanishing backward message reaches subnormal numbers, which slow x86
# arithmetic up to tenfold and would cut the updates that a CPU budget buys for exactly the
# cells whose gradient vanishes
SETTINGS = dict(hidden=64, batch=32, lr=3e-3, eval_every=100, eval_size=256, seed=0,
                dtype="float64")
HEATMAP_RUNS = {("adding", 100, "rnn", 1.0), ("adding", 100, "lstm", 1.0)}
DIAGNOSE_EVERY = 50
BUDGET = 30.0     # CPU seconds of training per run
MARK_START, MARK_END = "<!-- results:start -->", "<!-- results:end -->"


def run_name(task, length, cell, clip):
    return f"{task}-T{length}-{cell}-{'clip' if clip else 'noclip'}"


def one_run(args):
    """Train one configuration; return its outcome and the final model's diagnostics."""
    task, length, cell, clip, budget, out_root = args
    cfg = TaskConfig(task=task, length=length, cell=cell, clip=clip, steps=None,
                     minutes=budget / 60, clock="cpu",
                     diagnose_every=DIAGNOSE_EVERY if (task, length, cell, clip) in HEATMAP_RUNS
                     else None, **SETTINGS)
    trainer = TaskTrainer(cfg, os.path.join(out_root, run_name(task, length, cell, clip)))
    t0 = time.perf_counter()
    reason = trainer.run()
    result = trainer.outcome()
    result.update(reason=reason, wall_s=time.perf_counter() - t0,
                  history=[(h["step"], h["test_loss"]) for h in trainer.history])
    if not trainer.trainer.nonfinite:   # the gradient's reach in the final model, on a fresh batch
        t = Task(task, length)
        x, y = t.sample(64, np.random.default_rng([0, 3]))
        rep = diagnostics.diagnose(trainer.model, x, lambda out: t.loss(out, y))
        result["verdict"] = rep["verdict"]
        result["lag_profile"] = rep["lag"]["profile"]["l0"]
    return result


def initial_profiles(length=200):
    """Lag profiles of the untrained models on the adding problem, for the figure."""
    t = Task("adding", length)
    x, y = t.sample(64, np.random.default_rng([0, 3]))
    out = {}
    for cell in CELLS:
        model = build_task_model(TaskConfig(task="adding", length=length, cell=cell, **SETTINGS))
        out[cell] = diagnostics.diagnose(model, x, lambda o: t.loss(o, y))["lag"]["profile"]["l0"]
    return out


# ---------------------------------------------------------------------- the table and figures
def cell_text(r):
    if r is None:
        return "—"
    if r["solved"]:
        return f"**{r['solved_step']}**"
    if r["diverged"]:
        return f"diverged ({r['steps']})"
    return f"{r['test_loss'] / r['baseline']:.2f} ({r['steps']})"


def table(results, task):
    lengths, clips = GRID[task]
    by = {(r["length"], r["cell"], r["clip"]): r for r in results if r["task"] == task}
    head = "| cell | clip | " + " | ".join(f"T = {T}" for T in lengths) + " |"
    lines = [head, "|" + "---|" * (len(lengths) + 2)]
    for cell in CELLS:
        for clip in clips:
            row = [cell_text(by.get((T, cell, clip))) for T in lengths]
            lines.append(f"| {cell} | {'1.0' if clip else 'off'} | " + " | ".join(row) + " |")
    return "\n".join(lines)


def verdict_table(results):
    lengths, clips = GRID["adding"]
    by = {(r["length"], r["cell"], r["clip"]): r for r in results if r["task"] == "adding"}
    lines = ["| cell | " + " | ".join(f"T = {T}" for T in lengths) + " |",
             "|" + "---|" * (len(lengths) + 1)]
    for cell in CELLS:
        row = []
        for T in lengths:
            r = by.get((T, cell, 1.0))
            v = None if r is None else r.get("verdict")
            if v is None:
                row.append("—" if r is None else "diverged")
            elif v["kind"] == "vanishing":
                row.append(f"vanishing, memory {v['memory']}")
            else:
                row.append(f"{v['kind']}, growth {v['growth']:.3f}")
        lines.append(f"| {cell} | " + " | ".join(row) + " |")
    return "\n".join(lines)


def figure(results, path):
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    panels = [("adding", None), ("adding", 1.0), ("copy", 1.0)]
    fig, axes = plt.subplots(1, 3, figsize=(13, 4), sharey=True)
    colors = dict(zip(CELLS, ("tab:red", "tab:orange", "tab:blue", "tab:green")))
    for ax, (task, clip) in zip(axes, panels):
        lengths = GRID[task][0]
        for cell in CELLS:
            pts = [r for r in results if r["task"] == task and r["cell"] == cell
                   and r["clip"] == clip]
            pts.sort(key=lambda r: r["length"])
            if not pts:
                continue
            xs = [r["length"] for r in pts]
            ys = [min(2.0, r["best_test_loss"] / r["baseline"]) if not r["diverged"]
                  and r["best_test_loss"] is not None else 2.0 for r in pts]
            ax.plot(xs, ys, "-", color=colors[cell], label=cell, lw=1.5)
            for r, x, y in zip(pts, xs, ys):
                ax.plot(x, y, "o" if r["solved"] else ("x" if r["diverged"] else "s"),
                        color=colors[cell], mfc=colors[cell] if r["solved"] else "none", ms=7)
        thr = 0.01 / (1 / 6) if task == "adding" else 0.1
        ax.axhline(thr, color="grey", ls=":", lw=1)
        ax.set_xscale("log", base=2)
        ax.set_xticks(lengths, [str(T) for T in lengths])
        ax.set_yscale("log")
        ax.set_xlabel("T")
        ax.set_title(f"{task}, clipping {'off' if clip is None else clip}", fontsize=10)
        ax.grid(alpha=0.3, which="both")
    axes[0].set_ylabel("best test loss / baseline  (x: diverged, shown at 2)")
    axes[0].legend(title="filled: solved", fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def lag_figure(results, init, path, length=200):
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(11, 4), sharey=True)
    colors = dict(zip(CELLS, ("tab:red", "tab:orange", "tab:blue", "tab:green")))
    trained = {r["cell"]: r for r in results if r["task"] == "adding" and r["length"] == length
               and r["clip"] == 1.0 and "lag_profile" in r}
    for ax, (title, profiles) in zip(axes, [
            ("untrained", init),
            ("after training (clip 1.0)", {c: r["lag_profile"] for c, r in trained.items()})]):
        for cell, g in profiles.items():
            g = np.asarray(g, np.float64)
            ax.semilogy(np.arange(g.size), np.where(g > 0, g / g[0], np.nan),
                        color=colors[cell], label=cell)
        ax.axhline(1e-3, color="grey", ls=":", lw=1)
        ax.set_title(f"adding T={length}, {title}", fontsize=10)
        ax.set_xlabel("lag k (steps back from the loss at the last step)")
        ax.grid(alpha=0.3, which="both")
    axes[0].set_ylabel(r"$\|\partial L / \partial h_{T-1-k}\|$ / its value at k = 0")
    axes[0].legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def write_docs(results, init, out_root, wall, command):
    docs = os.path.join(ROOT, "docs")
    figs = os.path.join(docs, "figures")
    os.makedirs(figs, exist_ok=True)
    figure(results, os.path.join(figs, "long_range.png"))
    if init is not None:
        lag_figure(results, init, os.path.join(figs, "long_range_lag.png"))
    for task, length, cell, clip in sorted(HEATMAP_RUNS):
        path = os.path.join(out_root, run_name(task, length, cell, clip), "diagnostics.jsonl")
        if os.path.isfile(path):
            with open(path) as f:
                records = [json.loads(line) for line in f]
            if records:
                diagnostics.plot_heatmap(
                    records, os.path.join(figs, f"heatmap_{task}{length}_{cell}.png"),
                    title=f"{task} T={length}, {cell}, clip {clip}: "
                          f"log10 g(k)/g(0) over training")
    cpu = sum(r["elapsed_s"] for r in results)
    block = [MARK_START,
             f"Generated by `{command}` from {len(results)} runs; wall time "
             f"{wall / 60:.1f} min on 2 cores shared with other jobs (training CPU time "
             f"{cpu / 60:.1f} min).",
             "",
             "**Adding problem** (solved: test MSE < 0.01). Bold: solved, at that update step. "
             "Otherwise: the final test MSE as a fraction of the baseline's 0.167, and (in "
             "brackets) the updates made within the budget.",
             "", table(results, "adding"), "",
             "**Copy memory** (solved: cross-entropy < 10% of the baseline 10 ln 8 / (T + 20)); "
             "clipping 1.0 only.", "", table(results, "copy"), "",
             "**Verdict of `bptt.diagnostics` on the final models** (adding, clip 1.0; a fresh "
             "batch of 64; effective memory in steps):", "", verdict_table(results), "",
             MARK_END]
    kept = [{k: ([float(f"{g:.4g}") for g in v] if k == "lag_profile" else v)
             for k, v in r.items()} for r in results]
    with open(os.path.join(docs, "long_range_results.json"), "w") as f:
        json.dump({"command": command, "wall_s": wall, "settings": SETTINGS, "runs": kept}, f)
    md = os.path.join(docs, "long_range.md")
    text = open(md).read() if os.path.isfile(md) else f"{MARK_START}\n{MARK_END}\n"
    lo, hi = text.find(MARK_START), text.find(MARK_END)
    if lo < 0 or hi < 0:
        text = text + "\n" + MARK_START + "\n" + MARK_END + "\n"
        lo, hi = text.find(MARK_START), text.find(MARK_END)
    text = text[:lo] + "\n".join(block) + text[hi + len(MARK_END):]
    with open(md, "w") as f:
        f.write(text)


# ---------------------------------------------------------------------- main
def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--budget", type=float, default=BUDGET, help="CPU seconds of training per run")
    p.add_argument("--workers", type=int, default=2, help="runs in parallel (one core each)")
    p.add_argument("--out", default=os.path.join(ROOT, "runs", "long_range"))
    p.add_argument("--resume", action="store_true", help="skip runs already in results.jsonl")
    p.add_argument("--table-only", action="store_true", help="only rebuild table and figures")
    args = p.parse_args(argv)
    os.makedirs(args.out, exist_ok=True)
    results_path = os.path.join(args.out, "results.jsonl")
    done = []
    meta_path = os.path.join(args.out, "wall.json")
    wall_before = 0.0
    if (args.resume or args.table_only) and os.path.isfile(results_path):
        with open(results_path) as f:
            done = [json.loads(line) for line in f if line.strip()]
        if os.path.isfile(meta_path):
            with open(meta_path) as f:
                wall_before = json.load(f)["wall_s"]
    elif args.table_only:   # no local runs: the copy committed with the docs
        with open(os.path.join(ROOT, "docs", "long_range_results.json")) as f:
            saved = json.load(f)
        done, wall_before = saved["runs"], saved["wall_s"]
    command = "python experiments/long_range.py" + (
        f" --budget {args.budget:g}" if args.budget != BUDGET else "")
    t0 = time.perf_counter()
    if not args.table_only:
        if not args.resume:
            open(results_path, "w").close()
        seen = {(r["task"], r["length"], r["cell"], r["clip"]) for r in done}
        jobs = [(task, T, cell, clip, args.budget, args.out)
                for task, (lengths, clips) in GRID.items()
                for T in lengths for cell in CELLS for clip in clips
                if (task, T, cell, clip) not in seen]
        jobs.sort(key=lambda j: -Task(j[0], j[1]).steps * (4 if j[2] in ("lstm", "gru") else 1))
        print(f"{len(jobs)} runs, {args.workers} at a time, {args.budget:g} CPU-s each",
              flush=True)
        import multiprocessing as mp
        with mp.get_context("fork").Pool(args.workers) as pool, open(results_path, "a") as log:
            for r in pool.imap_unordered(one_run, jobs):
                log.write(json.dumps(r) + "\n")
                log.flush()
                done.append(r)
                state = (f"solved at {r['solved_step']}" if r["solved"] else
                         "diverged" if r["diverged"] else
                         f"{r['test_loss'] / r['baseline']:.3f} of baseline")
                print(f"[{time.perf_counter() - t0:6.0f}s] {r['task']} T={r['length']} "
                      f"{r['cell']} clip={r['clip']}: {state}, {r['steps']} steps, "
                      f"{r['wall_s']:.0f}s wall", flush=True)
    wall = wall_before + (0.0 if args.table_only else time.perf_counter() - t0)
    with open(meta_path, "w") as f:
        json.dump({"wall_s": wall}, f)
    init = initial_profiles()
    write_docs(done, init, args.out, wall, command)
    print(f"done: {len(done)} runs, wall {wall / 60:.1f} min; docs/long_range.md and "
          f"docs/figures/ updated", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
