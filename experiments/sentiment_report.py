"""Validation figures of the sweep's settings (``sentiment_sweep.py``), and, with ``--test``, the
test figures of one chosen setting: per seed, and for ensembles of consecutive seeds.

    python experiments/sentiment_report.py                       # every setting, valid only
    python experiments/sentiment_report.py NAME 0-9 --ensemble 5 # valid of NAME's ensembles
    python experiments/sentiment_report.py NAME 0-9 --ensemble 5 --test
"""

import argparse
import collections
import json
import os

import numpy as np

from bptt.data import sentiment as sd

OUT = "runs/sentiment_sweep"


def labels():
    corpus = sd.load_rotten_tomatoes()
    _, valid, test = sd.split_indices(len(corpus), seed=0)
    return {"valid": corpus.labels[valid], "test": corpus.labels[test]}


def summary():
    rows = collections.defaultdict(list)
    with open(os.path.join(OUT, "valid.jsonl")) as f:
        for line in f:
            r = json.loads(line)
            rows[r["name"]].append(r)
    print(f"{'setting':<22} {'seeds':<12} {'valid acc mean ± sd':>20} {'valid loss':>10} "
          f"{'best epochs':>12} {'s/run':>6}")
    for name, rs in rows.items():
        acc = np.array([r["valid"] for r in rs]) * 100
        print(f"{name:<22} {','.join(str(r['seed']) for r in rs):<12} "
              f"{acc.mean():>12.2f} ± {acc.std(ddof=1) if len(acc) > 1 else 0:.2f} "
              f"{np.mean([r['valid_loss'] for r in rs]):>10.4f} "
              f"{','.join(str(r['best_epoch']) for r in rs):>12} "
              f"{np.mean([r['seconds'] for r in rs]):>6.0f}")


def detail(name, seeds, ensemble, splits):
    y = labels()
    probs = {s: np.load(os.path.join(OUT, f"{name}-s{s}.npz")) for s in seeds}
    for split in splits:
        accs = [np.mean(probs[s][split].argmax(1) == y[split]) * 100 for s in seeds]
        print(f"{split}: single models " + ", ".join(f"s{s} {a:.2f}" for s, a in
                                                      zip(seeds, accs))
              + f"; mean {np.mean(accs):.2f} ± {np.std(accs, ddof=1):.2f}")
        ens = []
        for lo in range(0, len(seeds) - ensemble + 1, ensemble):
            group = seeds[lo:lo + ensemble]
            p = np.mean([probs[s][split] for s in group], axis=0)
            ens.append(np.mean(p.argmax(1) == y[split]) * 100)
            print(f"  ensemble of seeds {group[0]}-{group[-1]}: {ens[-1]:.2f}")
        if len(ens) > 1:
            print(f"  ensembles: mean {np.mean(ens):.2f} ± {np.std(ens, ddof=1):.2f}")


if __name__ == "__main__":
    ap = argparse.ArgumentParser()
    ap.add_argument("name", nargs="?")
    ap.add_argument("seeds", nargs="?", default="0-2")
    ap.add_argument("--ensemble", type=int, default=1)
    ap.add_argument("--test", action="store_true", help="also the test split (chosen setting)")
    a = ap.parse_args()
    if a.name is None:
        summary()
    else:
        lo, _, hi = a.seeds.partition("-")
        seeds = list(range(int(lo), int(hi or lo) + 1))
        detail(a.name, seeds, a.ensemble, ("valid", "test") if a.test else ("valid",))
