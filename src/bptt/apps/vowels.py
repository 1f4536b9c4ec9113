"""Speaker recognition on JapaneseVowels: which of nine speakers said /ae/, from 7-29 frames of
12 LPC cepstra (``bptt.data.speech.load_japanese_vowels``; recorded speech, Kudo et al. 1999).

The model, a bidirectional GRU by default, reads each utterance at its own length (``lengths``)
and classifies it from the top layer's final states (forward: at its last frame; backward: at its
first). The features are standardized with the mean and deviation of the
training utterances. A validation set of ``valid_per_speaker`` utterances per speaker is carved
out of the 270 training utterances (seeded) for early stopping and the choice of epoch; the 370
test utterances are scored once, at the end.

    bptt train vowels [--cell gru] [--hidden 64] [--[no-]bidirectional] [--epochs 60] [--seed 0]
                      [--seeds 1] [--out DIR] [--config FILE.toml]
    bptt train vowels --resume DIR [--epochs N] [--patience N] [--minutes M]

Each model's checkpoint holds the command's configuration, so ``--resume`` rebuilds the same
splits and continues every model where it stopped (with ``--seeds N``, each in ``DIR/seed<s>``:
a finished one is read back, an unfinished one continues, a missing one starts).
"""

import dataclasses
import json
import os
import time
from dataclasses import dataclass

import numpy as np

from ..checkpoint import write_text
from ..config import (ConfigError, add_options, check_choice, merge, option,
                      resume_options)
from ..data.speech import VOWEL_SPEAKERS, load_japanese_vowels
from ..layers import BACKEND_HELP, BACKENDS, DEFAULT_BACKEND, check_backend
from ..model import CELLS, POOLED, Model
from ..supervised import FitConfig, SequenceData, accuracy, fit, pad_sequences, predict
from ..trainer import NONFINITE, run_checkpoints, stored_app

NAME = "vowels"
DEFAULT_OUT = "runs/vowels"
HEADS = ("last", *POOLED)
# what --resume may change: budgets and bookkeeping; everything else is the run's own
RESUMABLE = {"epochs", "patience", "minutes", "checkpoint_every", "on_nonfinite"}


@dataclass
class VowelsConfig:
    """The defaults of ``bptt train vowels``, in one place."""

    cell: str = option("gru", "recurrent cell", choices=tuple(CELLS))
    hidden: int = option(64, "hidden units per layer")
    layers: int = option(1, "stacked recurrent layers")
    bidirectional: bool = option(True, "read each utterance both ways (steadier across seeds)")
    head: str = option("last", "last (the state at each utterance's last frame) or a pooling of "
                       "the outputs over its frames", choices=HEADS)
    epochs: int = option(60, "most epochs (early stopping may end sooner)")
    batch: int = option(16, "utterances per batch")
    lr: float = option(3e-3, "Adam's learning rate")
    weight_decay: float = option(0.0, "L2 weight decay")
    clip: float = option(5.0, "clip the gradient's global norm at this value", cli=False)
    patience: int = option(15, "epochs without a better validation score before stopping")
    minutes: float | None = option(None, "time budget in minutes of training, per model")
    checkpoint_every: int | None = option(None, "write the checkpoint every N updates",
                                          shown="after each epoch")
    on_nonfinite: str = option("stop", "a non-finite loss or gradient stops the run or skips "
                               "the update", choices=NONFINITE)
    valid_per_speaker: int = option(5, "validation utterances per speaker", cli=False)
    seed: int = option(0, "seed of the validation split, the initialisation and the batch order")
    backend: str = option(DEFAULT_BACKEND, BACKEND_HELP, choices=BACKENDS)

    def __post_init__(self):
        check_backend(self.backend, "vowels")
        check_choice("vowels", "cell", self.cell, tuple(CELLS))
        check_choice("vowels", "head", self.head, HEADS)
        if isinstance(self.valid_per_speaker, bool) or not isinstance(self.valid_per_speaker, int) \
                or not 1 <= self.valid_per_speaker < 30:
            raise ValueError(f"vowels: expected valid_per_speaker in 1..29, got "
                             f"{self.valid_per_speaker!r}")
        self.fit_config()                       # the budgets' and the loop's own checks

    def fit_config(self, progress=False):
        return FitConfig(epochs=self.epochs, batch=self.batch, lr=self.lr, clip=self.clip,
                         weight_decay=self.weight_decay, patience=self.patience, seed=self.seed,
                         minutes=self.minutes, checkpoint_every=self.checkpoint_every,
                         on_nonfinite=self.on_nonfinite, progress=progress)


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
                 seed=cfg.seed, backend=cfg.backend)


def run(cfg, out_dir=None, progress=False, *, resume=False, app=None):
    """Train and test once; return a dict of results (also ``result.json`` in out_dir). With
    ``resume``, a checkpoint in out_dir is continued (a finished one read back). ``app`` is what
    the checkpoint stores of the command (default: this configuration, one seed)."""
    t0 = time.perf_counter()
    train, valid, test = load_splits(cfg)
    model = build_model(cfg, train.x.shape[2])
    app = app or {"name": NAME, "config": dataclasses.asdict(cfg), "seeds": 1}
    result = fit(model, train, valid, cfg.fit_config(progress), out_dir=out_dir, resume=resume,
                 meta={"app": app})
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
def add_parser(apps):
    p = apps.add_parser("vowels", help="speaker recognition on JapaneseVowels (recorded speech)",
                        description=__doc__.split("\n\n")[0])
    add_options(p, VowelsConfig)
    p.add_argument("--seeds", type=int, default=None,
                   help="run seeds seed .. seed+N-1 and report mean and deviation (default 1)")
    p.add_argument("--baseline", action="store_true", default=None,
                   help="also score the 1-NN DTW baseline on the same features (default off)")
    p.add_argument("--out", metavar="DIR", help=f"run directory (default {DEFAULT_OUT})")
    p.add_argument("--resume", metavar="DIR", help="continue the run saved in DIR (only "
                   f"{', '.join(sorted(RESUMABLE))} may change)")
    p.add_argument("--config", metavar="FILE", help="read options from a TOML file")
    p.set_defaults(func=main)
    return p


def main(args):
    import sys

    options, table = merge(VowelsConfig, args, extra=("seeds", "baseline", "out"))
    seeds = args.seeds if args.seeds is not None else table.get("seeds")
    if seeds is not None and (isinstance(seeds, bool) or not isinstance(seeds, int) or seeds < 1):
        raise ValueError(f"--seeds must be a positive integer, got {seeds}")
    baseline = args.baseline if args.baseline is not None else table.get("baseline", False)
    if not isinstance(baseline, bool):
        raise ConfigError(f"--config: baseline should be bool, got {baseline!r}")
    out = args.out if args.out is not None else table.get("out")
    if args.resume:
        app = stored_app(args.resume, "fit", NAME, out)
        base = VowelsConfig(**resume_options(app["config"], options, RESUMABLE))
        if seeds is not None and seeds != app["seeds"]:
            raise ConfigError(f"--seeds: the run in {args.resume} trains {app['seeds']} "
                              f"seed{'s' * (app['seeds'] > 1)}, got {seeds}")
        seeds, out = app["seeds"], args.resume
    else:
        base = VowelsConfig(**options)
        seeds, out = seeds or 1, out or DEFAULT_OUT
        if run_checkpoints(out):
            raise ConfigError(f"{out} already holds a run; continue it with --resume {out} or "
                              f"choose another --out")
    app = {"name": NAME, "config": dataclasses.asdict(base), "seeds": seeds}
    print(f"JapaneseVowels (recorded): 9 speakers, 12 LPC cepstra a frame; "
          f"{'bidirectional ' if base.bidirectional else ''}{base.cell.upper()} "
          f"{base.layers}x{base.hidden}, head {base.head}")
    results = []
    for k in range(seeds):
        cfg = dataclasses.replace(base, seed=base.seed + k)
        out_dir = out if seeds == 1 else os.path.join(out, f"seed{cfg.seed}")
        r = run(cfg, out_dir, progress=sys.stderr.isatty(), resume=bool(args.resume), app=app)
        results.append(r)
        print(f"seed {cfg.seed}: test accuracy {r['test_accuracy']:.4f} ({r['test_errors']} of "
              f"{r['test']} wrong); validation {r['valid_accuracy']:.4f} at epoch "
              f"{r['best_epoch']} of {r['epochs_run']}; {r['seconds']:.0f}s")
    acc = np.array([r["test_accuracy"] for r in results])
    if len(acc) > 1:
        print(f"test accuracy over {len(acc)} seeds: {acc.mean():.4f} ± {acc.std(ddof=1):.4f} "
              f"(min {acc.min():.4f}, max {acc.max():.4f})")
    if baseline:
        train, valid, test = load_splits(base)
        everything = _joined(train, valid)
        t0 = time.perf_counter()
        acc = dtw_1nn_accuracy(everything, test)
        print(f"baseline, 1-NN DTW on the same standardized features (all 270 training "
              f"utterances as references): test accuracy {acc:.4f} "
              f"({time.perf_counter() - t0:.0f}s)")
    print(f"runs saved in {out}/")
    return results


def _joined(a, b):
    seqs = [d.x[:L, n] for d in (a, b) for n, L in enumerate(d.lengths)]
    x, lengths = pad_sequences(seqs)
    return SequenceData(x, np.concatenate([a.y, b.y]), lengths)
