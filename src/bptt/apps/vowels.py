"""Speaker recognition on JapaneseVowels: which of nine speakers said /ae/, from 7-29 frames of
12 LPC cepstra (``bptt.data.speech.load_japanese_vowels``; recorded speech, Kudo et al. 1999).

The model, a bidirectional GRU by default, reads each utterance at its own length (``lengths``)
and classifies it from the top layer's final states (forward: at its last frame; backward: at its
first). The features are standardized with the mean and deviation of the
training utterances. A validation set of ``valid_per_speaker`` utterances per speaker is carved
out of the 270 training utterances (seeded) for early stopping and the choice of epoch; the 370
test utterances are scored once, at the end.

    bptt train vowels [--cell gru] [--hidden 64] [--[no-]bidirectional] [--epochs 60] [--seed 0]
                      [--seeds 1] [--out DIR]
"""

import argparse
import dataclasses
import json
import os
import time
from dataclasses import dataclass

import numpy as np

from ..checkpoint import write_text
from ..cli_options import add_options
from ..data.speech import VOWEL_SPEAKERS, load_japanese_vowels
from ..model import CELLS, Model
from ..supervised import FitConfig, SequenceData, accuracy, fit, pad_sequences, predict

DEFAULT_OUT = "runs/vowels"


@dataclass
class VowelsConfig:
    """The defaults of ``bptt train vowels``, in one place."""

    cell: str = "gru"
    hidden: int = 64
    layers: int = 1
    bidirectional: bool = True     # reads each utterance both ways; steadier across seeds
    head: str = "last"
    epochs: int = 60
    batch: int = 16
    lr: float = 3e-3
    weight_decay: float = 0.0
    clip: float = 5.0
    patience: int = 15
    valid_per_speaker: int = 5
    seed: int = 0

    def __post_init__(self):
        if self.cell not in CELLS:
            raise ValueError(f"vowels: expected cell one of {', '.join(CELLS)}, got {self.cell!r}")
        if isinstance(self.valid_per_speaker, bool) or not isinstance(self.valid_per_speaker, int) \
                or not 1 <= self.valid_per_speaker < 30:
            raise ValueError(f"vowels: expected valid_per_speaker in 1..29, got "
                             f"{self.valid_per_speaker!r}")


def load_splits(cfg):
    """``(train, valid, test)`` SequenceData: standardized (T, N, 12) features, speakers 0..8."""
    (x_train, y_train), (x_test, y_test) = load_japanese_vowels()
    rng = np.random.default_rng(cfg.seed)
    valid_idx = np.sort(np.concatenate([
        rng.choice(np.flatnonzero(y_train == s), cfg.valid_per_speaker, replace=False)
        for s in range(VOWEL_SPEAKERS)]))
    train_idx = np.setdiff1d(np.arange(len(x_train)), valid_idx)
    frames = np.concatenate([x_train[i] for i in train_idx])      # statistics of training only
    mean, std = frames.mean(axis=0), frames.std(axis=0)

    def data(seqs, labels, idx):
        x, lengths = pad_sequences([(seqs[i] - mean) / std for i in idx])
        return SequenceData(x, labels[idx], lengths)

    return (data(x_train, y_train, train_idx), data(x_train, y_train, valid_idx),
            data(x_test, y_test, np.arange(len(x_test))))


def build_model(cfg, input_size=12):
    return Model(input_size, cfg.hidden, VOWEL_SPEAKERS, cell=cfg.cell, input="identity",
                 num_layers=cfg.layers, bidirectional=cfg.bidirectional, head=cfg.head,
                 seed=cfg.seed)


def run(cfg, out_dir=None, progress=False):
    """Train and test once; return a dict of results (also ``result.json`` in out_dir)."""
    t0 = time.perf_counter()
    train, valid, test = load_splits(cfg)
    model = build_model(cfg, train.x.shape[2])
    fit_cfg = FitConfig(epochs=cfg.epochs, batch=cfg.batch, lr=cfg.lr, clip=cfg.clip,
                        weight_decay=cfg.weight_decay, patience=cfg.patience, seed=cfg.seed,
                        progress=progress)
    result = fit(model, train, valid, fit_cfg, out_dir=out_dir)
    pred = predict(model, test).argmax(axis=1)
    per_speaker = {f"speaker {s + 1}": float(np.mean(pred[test.y == s] == s))
                   for s in range(VOWEL_SPEAKERS)}
    out = {"config": dataclasses.asdict(cfg), "train": len(train), "valid": len(valid),
           "test": len(test), "best_epoch": result.best_epoch, "epochs_run": len(result.history),
           "valid_accuracy": result.best_metric, "test_accuracy": accuracy(model, test),
           "test_errors": int((pred != test.y).sum()), "per_speaker": per_speaker,
           "seconds": time.perf_counter() - t0}
    if out_dir is not None:
        write_text(os.path.join(out_dir, "result.json"), json.dumps(out, indent=1))
    return out


def dtw_1nn_accuracy(reference, queries):
    """The baseline of the time-series archives: each query takes the label of the reference
    sequence nearest under dynamic time warping (squared Euclidean frame cost, all D features
    warped together, no window). Vectorized over the reference set, one grid per query."""
    R = reference
    T, N = R.x.shape[:2]
    right = 0
    for n in range(len(queries)):
        q = queries.x[:queries.lengths[n], n].astype(np.float64)          # (Lq, D)
        cost = ((q[:, None, None, :] - R.x[None, :, :, :]) ** 2).sum(-1)  # (Lq, T, N)
        D = np.full((len(q) + 1, T + 1, N), np.inf)
        D[0, 0] = 0.0
        for i in range(1, len(q) + 1):
            for j in range(1, T + 1):
                D[i, j] = cost[i - 1, j - 1] + np.minimum(np.minimum(D[i - 1, j], D[i, j - 1]),
                                                          D[i - 1, j - 1])
        dist = D[len(q), R.lengths, np.arange(N)]          # each reference at its own length
        right += R.y[np.argmin(dist)] == queries.y[n]
    return right / len(queries)


# ---------------------------------------------------------------------- the command
OPTIONS = {   # option -> (type, help); defaults from VowelsConfig
    "cell": (str, "recurrent cell: gru, lstm or rnn"),
    "hidden": (int, "hidden units per layer"),
    "layers": (int, "stacked recurrent layers"),
    "head": (str, "last (state at each utterance's last frame) or mean (over its frames)"),
    "epochs": (int, "most epochs (early stopping may end sooner)"),
    "batch": (int, "utterances per batch"),
    "lr": (float, "Adam's learning rate"),
    "weight_decay": (float, "L2 weight decay"),
    "patience": (int, "epochs without a better validation score before stopping"),
    "seed": (int, "seed of the validation split, the initialisation and the batch order"),
}


def add_parser(apps):
    p = apps.add_parser("vowels", help="speaker recognition on JapaneseVowels (recorded speech)",
                        description=__doc__.split("\n\n")[0])
    defaults = VowelsConfig()
    add_options(p, OPTIONS, defaults, fill=True)
    p.add_argument("--bidirectional", action=argparse.BooleanOptionalAction,
                   default=defaults.bidirectional,
                   help="read each utterance both ways (default %(default)s)")
    p.add_argument("--seeds", type=int, default=1,
                   help="run seeds seed .. seed+N-1 and report mean and deviation (default 1)")
    p.add_argument("--baseline", action="store_true",
                   help="also score the 1-NN DTW baseline on the same features")
    p.add_argument("--out", default=DEFAULT_OUT, help="run directory (default %(default)s)")
    p.set_defaults(func=main)
    return p


def main(args):
    import sys

    if args.seeds < 1:
        raise ValueError(f"--seeds must be a positive integer, got {args.seeds}")
    base = VowelsConfig(**{k: getattr(args, k) for k in OPTIONS},
                        bidirectional=args.bidirectional)
    print(f"JapaneseVowels (recorded): 9 speakers, 12 LPC cepstra a frame; "
          f"{'bidirectional ' if base.bidirectional else ''}{base.cell.upper()} "
          f"{base.layers}x{base.hidden}, head {base.head}")
    results = []
    for k in range(args.seeds):
        cfg = dataclasses.replace(base, seed=base.seed + k)
        out_dir = args.out if args.seeds == 1 else os.path.join(args.out, f"seed{cfg.seed}")
        r = run(cfg, out_dir, progress=sys.stderr.isatty())
        results.append(r)
        print(f"seed {cfg.seed}: test accuracy {r['test_accuracy']:.4f} ({r['test_errors']} of "
              f"{r['test']} wrong); validation {r['valid_accuracy']:.4f} at epoch "
              f"{r['best_epoch']} of {r['epochs_run']}; {r['seconds']:.0f}s")
    acc = np.array([r["test_accuracy"] for r in results])
    if len(acc) > 1:
        print(f"test accuracy over {len(acc)} seeds: {acc.mean():.4f} ± {acc.std(ddof=1):.4f} "
              f"(min {acc.min():.4f}, max {acc.max():.4f})")
    if args.baseline:
        train, valid, test = load_splits(base)
        everything = _joined(train, valid)
        t0 = time.perf_counter()
        acc = dtw_1nn_accuracy(everything, test)
        print(f"baseline, 1-NN DTW on the same standardized features (all 270 training "
              f"utterances as references): test accuracy {acc:.4f} "
              f"({time.perf_counter() - t0:.0f}s)")
    print(f"runs saved in {args.out}/")
    return results


def _joined(a, b):
    seqs = [d.x[:L, n] for d in (a, b) for n, L in enumerate(d.lengths)]
    x, lengths = pad_sequences(seqs)
    return SequenceData(x, np.concatenate([a.y, b.y]), lengths)
