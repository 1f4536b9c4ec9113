"""Spoken-digit recognition on synthesized speech, tested on voices never heard in training.

The ten words "zero" ... "nine" are synthesized by text-to-speech (espeak-ng: 8 English accents x
36 voice variants x 2 takes at drawn speeds and pitches; flite: 5 voices x 3 durations x 3
pitches; ``bptt.data.speech.DigitRecipe``) and turned into 10 ms frames of 13 MFCCs and their
deltas, two frames to a step. A 2-layer GRU reads each utterance at its own length. The split is
by voice (leave-voices-out): the ``test_voices`` (espeak variants, each under all eight accents,
and one flite voice) and the ``valid_voices`` (for early stopping) are never in the training set.
The flite voices left for training are few and all male, so copies of them warped 1.1-1.3 times
faster (higher formants, as a shorter vocal tract) join the training set. The features are
standardized with the training utterances' statistics. The audio is synthetic, not recorded from
people; results say so.

    bptt train digits [--cell gru] [--hidden 64] [--layers 2] [--epochs 20] [--seed 0]
                      [--out DIR] [--cache DIR] [--figure PNG] [--config FILE.toml]
    bptt train digits --resume DIR [--epochs N] [--patience N] [--minutes M]

The checkpoint holds the configuration, so ``--resume`` rebuilds the same features from the
cached audio (synthesized again where the cache is gone: the same recipe gives the same files)
and continues the model where it stopped.
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
from ..data.speech import DIGITS, digit_features, synthesize_digits
from ..layers import BACKEND_HELP, BACKENDS, DEFAULT_BACKEND, check_backend
from ..model import CELLS, POOLED, Model
from ..supervised import (FitConfig, SequenceData, confusion_matrix, fit, pad_sequences,
                          predict)
from ..trainer import NONFINITE, stored_app

NAME = "digits"
DEFAULT_OUT = "runs/digits"
TEST_VOICES = ("espeak/m4", "espeak/f3", "espeak/klatt3", "espeak/whisperf", "espeak/benjamin",
               "flite/slt")
VALID_VOICES = ("espeak/m6", "espeak/f5", "espeak/klatt2", "espeak/david")
HEADS = ("last", *POOLED)
# what --resume may change: budgets and bookkeeping; everything else is the run's own
RESUMABLE = {"epochs", "patience", "minutes", "checkpoint_every", "on_nonfinite"}


@dataclass
class DigitsConfig:
    """The defaults of ``bptt train digits``, in one place."""

    cell: str = option("gru", "recurrent cell", choices=tuple(CELLS))
    hidden: int = option(64, "hidden units per layer")
    layers: int = option(2, "stacked recurrent layers")
    dropout: float = option(0.3, "dropout between stacked layers")
    head: str = option("last", "last (the state at each utterance's last frame) or a pooling of "
                       "the outputs over its frames", choices=HEADS)
    epochs: int = option(20, "most epochs (early stopping may end sooner)")
    batch: int = option(32, "utterances per batch")
    lr: float = option(3e-3, "Adam's learning rate")
    weight_decay: float = option(0.0, "L2 weight decay")
    clip: float = option(5.0, "clip the gradient's global norm at this value", cli=False)
    patience: int = option(6, "epochs without a better validation score before stopping")
    minutes: float | None = option(None, "time budget in minutes of training")
    checkpoint_every: int | None = option(None, "write the checkpoint every N updates",
                                          shown="after each epoch")
    on_nonfinite: str = option("stop", "a non-finite loss or gradient stops the run or skips "
                               "the update", choices=NONFINITE)
    seed: int = option(0, "seed of the initialisation and the batch order")
    backend: str = option(DEFAULT_BACKEND, BACKEND_HELP, choices=BACKENDS)
    stack: int = option(2, "10 ms frames stacked into one step of the recurrence")
    flite_warps: tuple = option((1.1, 1.2, 1.3), "extra training copies of the flite voices, "
                                "warped", cli=False)
    cmvn: bool = option(False, "normalize each utterance's cepstra", cli=False)
    test_voices: tuple = option(TEST_VOICES, "voices held out for testing", cli=False)
    valid_voices: tuple = option(VALID_VOICES, "voices held out for validation", cli=False)

    def __post_init__(self):
        check_backend(self.backend, "digits")
        check_choice("digits", "cell", self.cell, tuple(CELLS))
        check_choice("digits", "head", self.head, HEADS)
        both = set(self.test_voices) & set(self.valid_voices)
        if both:
            raise ValueError(f"digits: voices both in test and validation: {sorted(both)}")
        self.fit_config()                       # the budgets' and the loop's own checks

    def fit_config(self, progress=False):
        return FitConfig(epochs=self.epochs, batch=self.batch, lr=self.lr, clip=self.clip,
                         weight_decay=self.weight_decay, patience=self.patience, seed=self.seed,
                         bucket=True, minutes=self.minutes,
                         checkpoint_every=self.checkpoint_every,
                         on_nonfinite=self.on_nonfinite, progress=progress)


def split_by_voice(voices, test_voices, valid_voices):
    """Index arrays ``(train, valid, test)`` of utterances by their voice; every named voice
    must occur."""
    voices = np.asarray(voices)
    known = set(voices.tolist())
    missing = sorted((set(test_voices) | set(valid_voices)) - known)
    if missing:
        raise ValueError(f"digits: voices not in the data set: {missing}; known: "
                         f"{', '.join(sorted(known))}")
    test = np.isin(voices, list(test_voices))
    valid = np.isin(voices, list(valid_voices))
    return (np.flatnonzero(~test & ~valid), np.flatnonzero(valid), np.flatnonzero(test))


def load_splits(cfg, recipe=None, cache=None, workers=2, progress=False):
    """``(train, valid, test, utterances)``: standardized MFCC SequenceData split by voice, and
    the manifest's list of utterances (for per-voice scores)."""
    folder, manifest = synthesize_digits(recipe, cache, workers=workers, progress=progress)
    feats = digit_features(folder, manifest, progress=progress, cmvn=cfg.cmvn)
    utts = manifest["utterances"]
    labels = np.array([u["label"] for u in utts], np.int64)
    idx = split_by_voice([u["voice"] for u in utts], cfg.test_voices, cfg.valid_voices)
    train_feats = [feats[i] for i in idx[0]]
    train_labels = [labels[idx[0]]]
    flite = [i for i in idx[0] if utts[i]["engine"] == "flite"]
    for warp in cfg.flite_warps if flite else ():   # the natural voices are few and all male
        warped = digit_features(folder, manifest, warp=warp, only=flite, cmvn=cfg.cmvn)
        train_feats += warped
        train_labels.append(labels[flite])
    frames = np.concatenate(train_feats)                          # statistics of training only
    mean, std = frames.mean(axis=0), frames.std(axis=0)

    def data(seqs, y):
        x, lengths = pad_sequences([stack_frames((f - mean) / std, cfg.stack) for f in seqs])
        return SequenceData(x, y, lengths)

    return (data(train_feats, np.concatenate(train_labels)),
            data([feats[i] for i in idx[1]], labels[idx[1]]),
            data([feats[i] for i in idx[2]], labels[idx[2]]), [utts[i] for i in idx[2]])


def stack_frames(f, k):
    """(L, D) frames -> (ceil(L / k), k D): each step holds k consecutive frames (the last one
    repeated to fill the final step), a k times shorter sequence for the recurrence."""
    if k == 1:
        return f
    L = len(f)
    pad = -L % k
    if pad:
        f = np.concatenate([f, np.repeat(f[-1:], pad, axis=0)])
    return f.reshape((L + pad) // k, k * f.shape[1])


def run(cfg, out_dir=None, *, recipe=None, cache=None, figure=None, workers=2, progress=False,
        resume=False):
    """Synthesize (or reuse), train, test on the held-out voices; return a dict of results.
    With ``resume``, a checkpoint in out_dir is continued (a finished one read back)."""
    t0 = time.perf_counter()
    train, valid, test, test_utts = load_splits(cfg, recipe, cache, workers, progress)
    t_data = time.perf_counter() - t0
    model = Model(train.x.shape[2], cfg.hidden, len(DIGITS), cell=cfg.cell, input="identity",
                  num_layers=cfg.layers, dropout=cfg.dropout, head=cfg.head, seed=cfg.seed,
                  backend=cfg.backend)
    result = fit(model, train, valid, cfg.fit_config(progress), out_dir=out_dir, resume=resume,
                 meta={"app": {"name": NAME, "config": dataclasses.asdict(cfg)}})
    pred = predict(model, test).argmax(axis=1)
    right = pred == test.y
    voices = np.array([u["voice"] for u in test_utts])
    per_voice = {v: {"accuracy": float(right[voices == v].mean()),
                     "utterances": int((voices == v).sum())} for v in cfg.test_voices}
    C = confusion_matrix(test.y, pred, len(DIGITS))
    baseline = pooled_1nn_accuracy(train, test)
    out = {"config": dataclasses.asdict(cfg), "train": len(train), "valid": len(valid),
           "test": len(test), "best_epoch": result.best_epoch,
           "epochs_run": len(result.history), "valid_accuracy": result.best_metric,
           "test_accuracy": float(right.mean()), "per_voice": per_voice,
           "baseline_pooled_1nn": baseline,
           "confusion": C.tolist(), "data_seconds": t_data,
           "seconds": time.perf_counter() - t0}
    if out_dir is not None:
        write_text(os.path.join(out_dir, "result.json"), json.dumps(out, indent=1))
    figure = figure or (os.path.join(out_dir, "confusion.png") if out_dir else None)
    if figure:
        out["figure"] = plot_confusion(C, figure, f"{cfg.cell.upper()} {cfg.layers}x{cfg.hidden}"
                                       f" on unseen synthesized voices: test accuracy "
                                       f"{right.mean():.3f}")
    return out


def pooled_1nn_accuracy(train, test):
    """A baseline without a recurrence: each utterance becomes the mean and the deviation of its
    frames over time; a test utterance takes the label of the nearest training one (Euclidean,
    after standardizing the pooled features on the training set)."""
    def pooled(d):
        mask = (np.arange(d.x.shape[0])[:, None] < d.lengths[None, :])[..., None]   # (T, N, 1)
        n = d.lengths[:, None].astype(np.float64)
        mean = (d.x * mask).sum(0) / n
        var = ((d.x - mean) ** 2 * mask).sum(0) / n
        return np.concatenate([mean, np.sqrt(var)], axis=1)
    a, b = pooled(train), pooled(test)
    mu, sd = a.mean(0), a.std(0) + 1e-8
    a, b = (a - mu) / sd, (b - mu) / sd
    d2 = (b ** 2).sum(1)[:, None] - 2 * b @ a.T + (a ** 2).sum(1)[None, :]
    return float(np.mean(train.y[d2.argmin(axis=1)] == test.y))


def plot_confusion(C, path, title):
    """The confusion matrix (rows: the word said, columns: the word recognized) as a PNG."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6.2, 5.4))
    rates = C / np.maximum(C.sum(axis=1, keepdims=True), 1)
    im = ax.imshow(rates, cmap="Blues", vmin=0, vmax=1)
    for i in range(len(C)):
        for j in range(len(C)):
            if C[i, j]:
                ax.text(j, i, str(C[i, j]), ha="center", va="center", fontsize=8,
                        color="white" if rates[i, j] > 0.6 else "black")
    ax.set_xticks(range(len(DIGITS)), DIGITS, rotation=45)
    ax.set_yticks(range(len(DIGITS)), DIGITS)
    ax.set_xlabel("recognized")
    ax.set_ylabel("said (synthesized)")
    ax.set_title(title, fontsize=9)
    fig.colorbar(im, ax=ax, fraction=0.046, label="fraction of the row")
    fig.tight_layout()
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


# ---------------------------------------------------------------------- the command
def add_parser(apps):
    p = apps.add_parser("digits", help="spoken digits, synthesized by TTS; unseen test voices",
                        description=__doc__.split("\n\n")[0])
    add_options(p, DigitsConfig)
    p.add_argument("--test-voices", metavar="LIST",
                   help=f"comma-separated voices held out for testing (default "
                        f"{','.join(TEST_VOICES)})")
    p.add_argument("--valid-voices", metavar="LIST",
                   help=f"comma-separated voices held out for validation (default "
                        f"{','.join(VALID_VOICES)})")
    p.add_argument("--cache", metavar="DIR", help="folder of synthesized audio (default "
                   "$BPTT_CACHE/digits or ~/.cache/bptt/digits)")
    p.add_argument("--workers", type=int, help="parallel synthesis processes (default 2)")
    p.add_argument("--figure", metavar="PNG", help="where to write the confusion matrix "
                   "(default OUT/confusion.png)")
    p.add_argument("--out", metavar="DIR", help=f"run directory (default {DEFAULT_OUT})")
    p.add_argument("--resume", metavar="DIR", help="continue the run saved in DIR (only "
                   f"{', '.join(sorted(RESUMABLE))} may change)")
    p.add_argument("--config", metavar="FILE", help="read options from a TOML file")
    p.set_defaults(func=main)
    return p


EXTRA = ("test_voices", "valid_voices", "cache", "workers", "figure", "out")


def main(args):
    import sys

    options, table = merge(DigitsConfig, args, extra=EXTRA)
    extra = {k: getattr(args, k) if getattr(args, k) is not None else table.get(k)
             for k in EXTRA}
    for k in ("test_voices", "valid_voices"):
        if extra[k] is not None:
            options[k] = _voices(k, extra[k])
    if args.resume:
        saved = stored_app(args.resume, "fit", NAME, extra["out"])["config"]
        saved = {k: tuple(v) if isinstance(v, list) else v for k, v in saved.items()}  # JSON's
        cfg = DigitsConfig(**resume_options(saved, options, RESUMABLE))
        out = args.resume
    else:
        cfg = DigitsConfig(**options)
        out = extra["out"] or DEFAULT_OUT
        if os.path.exists(os.path.join(out, "checkpoint.npz")):
            raise ConfigError(f"{out} already holds a run; continue it with --resume {out} or "
                              f"choose another --out")
    print(f"spoken digits, synthesized by espeak-ng and flite (text-to-speech); test voices "
          f"never heard in training: {', '.join(cfg.test_voices)}")
    r = run(cfg, out, cache=extra["cache"], figure=extra["figure"],
            workers=2 if extra["workers"] is None else extra["workers"],
            progress=sys.stderr.isatty(), resume=bool(args.resume))
    print(f"{r['train']} training, {r['valid']} validation, {r['test']} test utterances "
          f"(data ready in {r['data_seconds']:.0f}s)")
    print(f"{'held-out voice':<18} {'utterances':>10} {'accuracy':>9}")
    for v, s in r["per_voice"].items():
        print(f"{v:<18} {s['utterances']:>10} {s['accuracy']:>9.4f}")
    print(f"test accuracy on unseen voices: {r['test_accuracy']:.4f}; validation "
          f"{r['valid_accuracy']:.4f} at epoch {r['best_epoch']} of {r['epochs_run']}; "
          f"{r['seconds']:.0f}s in all")
    print(f"baseline, 1-NN on time-pooled MFCC statistics: {r['baseline_pooled_1nn']:.4f}")
    print(f"confusion matrix: {r['figure']}; run saved in {out}/")
    return r


def _voices(name, value):
    """Voices as a tuple, from a comma-separated string (the command line) or a list (TOML)."""
    if isinstance(value, str):
        return tuple(v for v in value.split(",") if v)
    if isinstance(value, list) and all(isinstance(v, str) for v in value):
        return tuple(value)
    raise ConfigError(f"--config: {name} should be a comma-separated string or a list of "
                      f"voices, got {value!r}")


