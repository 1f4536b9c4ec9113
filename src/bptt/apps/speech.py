r"""Speech recognition of connected speech with CTC (``bptt train speech``, ``bptt transcribe``).

Two data sets (``--data``):

- ``digits``: strings of 1-7 digits synthesized by espeak-ng and flite (``bptt.data.connected.
  StringRecipe``: 8 accents x 36 voice variants x 24 strings, 5 flite voices x 3 durations x 3
  pitches x 12 strings), with the leave-voices-out split of ``bptt train digits``: the test and
  validation voices are never heard in training. CTC over the blank and the ten digits; scored
  by WER and whole-string accuracy per held-out voice. Synthetic speech, not recordings.
- ``russian``: festvox-ru's 620 recorded sentences (one male speaker, 99.5 minutes), split 80/10/10
  by utterance with a seeded permutation. Character-level CTC over the blank, the 33 Cyrillic
  letters and the space; scored by CER and WER.

The features are 13 MFCCs and their deltas every 10 ms (``bptt.data.speech.mfcc_features``),
standardized with the training frames' mean and deviation, ``stack`` frames to a step. The
model (``bptt.model.Model``, head ``step``) is a bidirectional GRU stack giving per-step logits
(T, B, C); the loss is ``bptt.ctc.ctc_loss_logits`` with each utterance's step count as its
input length, averaged over the batch as torch's ``reduction="mean"``; its gradient goes back
through the model's hand-written backward pass. Batches hold utterances of similar lengths.
After every epoch the validation set is decoded greedily; the epoch with the lowest error (WER
for digits, CER for Russian) is kept, and ``patience`` epochs without a better one stop the run.
The test set is decoded by best path and by prefix beam search under a grammar: for digits, at
most ``max_digits`` digit labels; for Russian, no space at the start or after a space.

    bptt train speech [--data digits|russian] [--cell gru] [--hidden H] [--layers L]
                      [--epochs N] [--out DIR] [--cache DIR] [--config FILE.toml]
    bptt train speech --resume DIR [--epochs N] [--patience N] [--minutes M] [--beam K]
    bptt transcribe RUN_DIR file.wav... [--beam K] [--posteriors PATH.png]

A run directory holds, besides the trainer's checkpoint, what ``transcribe`` needs: the label
symbols, the feature settings and the standardization, so that any WAV file (mono 16-bit PCM,
resampled to the run's rate where needed) can be transcribed from it alone.
"""

import dataclasses
import json
import math
import os
import sys
import time
import wave
from dataclasses import dataclass

import numpy as np

from ..checkpoint import load as load_checkpoint, write_text
from ..config import (ConfigError, add_options, check_choice, merge, option,
                      positive_int, resume_options)
from ..ctc import ctc_beam_search, ctc_greedy_decode, ctc_loss_logits
from ..data.connected import RUSSIAN_ALPHABET
from ..data.speech import DIGITS
from ..model import CELLS, Model
from ..objectives import SupervisedObjective, rank_share, zero_grads
from ..supervised import pad_sequences
from ..trainer import NONFINITE, LoopConfig, Trainer, load_run, readable, stored_app
from .digits import TEST_VOICES, VALID_VOICES, split_by_voice, stack_frames

NAME = "speech"
COMMAND = "train speech"
DEFAULT_OUT = "runs/speech"
DATASETS = ("digits", "russian")
INPUTS = ("identity", "linear")
JIWER_INSTALL = "pip install jiwer==4.0.0"
BLANK = 0
# what --resume may change: budgets, bookkeeping and the test's beam
RESUMABLE = {"epochs", "patience", "minutes", "checkpoint_every", "on_nonfinite", "beam"}
# the options whose default depends on the data set
PER_DATA = {
    "digits": dict(hidden=96, layers=2, stack=3, dropout=0.2, epochs=30, batch=32, lr=2e-3,
                   patience=6, warps=()),
    "russian": dict(hidden=128, layers=3, stack=4, dropout=0.3, epochs=40, batch=8, lr=1.5e-3,
                    patience=8, warps=(1.1, 1.2)),
}


def _shown(name):
    return ", ".join(f"{PER_DATA[d][name]} for {d}" for d in DATASETS)


@dataclass
class SpeechConfig:
    """The defaults of ``bptt train speech``, in one place (None: the data set's own)."""

    data: str = option("digits", "digits (synthesized digit strings, unseen voices) or russian "
                       "(festvox-ru's recorded sentences)", choices=DATASETS)
    cell: str = option("gru", "recurrent cell", choices=tuple(CELLS))
    hidden: int | None = option(None, "hidden units per layer and direction",
                                shown=_shown("hidden"))
    layers: int | None = option(None, "stacked recurrent layers", shown=_shown("layers"))
    bidirectional: bool = option(True, "read each utterance both ways")
    input: str = option("identity", "the stacked frames go straight into the recurrence, or "
                        "through a linear layer of --proj units", choices=INPUTS)
    proj: int = option(128, "units of the linear input layer (with --input linear)")
    dropout: float | None = option(None, "dropout between stacked layers",
                                   shown=_shown("dropout"))
    stack: int | None = option(None, "10 ms frames stacked into one step", shown=_shown("stack"))
    epochs: int | None = option(None, "most epochs (early stopping may end sooner)",
                                shown=_shown("epochs"))
    batch: int | None = option(None, "utterances per batch", shown=_shown("batch"))
    lr: float | None = option(None, "Adam's learning rate", shown=_shown("lr"))
    weight_decay: float = option(0.0, "L2 weight decay")
    clip: float = option(5.0, "clip the gradient's global norm at this value", cli=False)
    patience: int | None = option(None, "epochs without a better validation error before "
                                  "stopping", shown=_shown("patience"))
    minutes: float | None = option(None, "time budget in minutes of training")
    checkpoint_every: int | None = option(None, "write the checkpoint every N updates",
                                          shown="after each epoch")
    on_nonfinite: str = option("stop", "a non-finite loss or gradient stops the run or skips "
                               "the update", choices=NONFINITE)
    seed: int = option(0, "seed of the initialisation, the batch order and the dropout")
    beam: int = option(16, "beam width of the test set's beam-search decoding")
    limit: int | None = option(None, "at most N utterances in each split (a quick check)")
    split_seed: int = option(0, "seed of russian's 80/10/10 split by utterance", cli=False)
    strings: int = option(24, "digit strings per espeak speaker", cli=False)
    flite_warps: tuple = option((1.1, 1.2, 1.3), "extra training copies of the flite voices, "
                                "warped", cli=False)
    warps: tuple | None = option(None, "speeds of extra training copies of every utterance "
                                 "(speed perturbation)", cli=False)
    test_voices: tuple = option(TEST_VOICES, "voices held out for testing (digits)", cli=False)
    valid_voices: tuple = option(VALID_VOICES, "voices held out for validation (digits)",
                                 cli=False)

    def __post_init__(self):
        who = "speech"
        check_choice(who, "data", self.data, DATASETS)
        for k, v in PER_DATA[self.data].items():
            if getattr(self, k) is None:
                setattr(self, k, v)
        check_choice(who, "cell", self.cell, tuple(CELLS))
        check_choice(who, "input", self.input, INPUTS)
        for k in ("hidden", "layers", "stack", "batch", "proj", "beam", "strings"):
            positive_int(who, k, getattr(self, k))
        positive_int(who, "limit", self.limit, allow_none=True)
        if not all(isinstance(w, (int, float)) and not isinstance(w, bool) and 0 < w < 10
                   for w in self.warps):
            raise ValueError(f"{who}: expected warps speed factors in (0, 10), got "
                             f"{self.warps!r}")
        self.warps = tuple(float(w) for w in self.warps)
        if not (isinstance(self.dropout, (int, float)) and 0 <= self.dropout < 1):
            raise ValueError(f"{who}: expected dropout in [0, 1), got {self.dropout!r}")
        if self.limit is not None and self.limit < 2:
            raise ValueError(f"{who}: expected limit >= 2 (utterances per split), got "
                             f"{self.limit}")
        both = set(self.test_voices) & set(self.valid_voices)
        if both:
            raise ValueError(f"{who}: voices both in test and validation: {sorted(both)}")
        self.loop()                             # the budgets' and the loop's own checks

    def loop(self, progress=False):
        return LoopConfig(lr=self.lr, weight_decay=self.weight_decay, clip=self.clip,
                          epochs=self.epochs, minutes=self.minutes, patience=self.patience,
                          checkpoint_every=self.checkpoint_every, keep_best=True,
                          on_nonfinite=self.on_nonfinite, progress=progress,
                          progress_label=f"speech {self.data}")


# ---------------------------------------------------------------------- labels
class Labels:
    """The CTC classes: 0 the blank, 1.. the ``symbols`` (digit words, or characters); a
    labelling reads as text with ``joiner`` between the symbols."""

    def __init__(self, symbols, joiner):
        self.symbols, self.joiner = list(symbols), joiner

    @property
    def classes(self):
        return len(self.symbols) + 1

    def encode(self, tokens):
        index = {s: i + 1 for i, s in enumerate(self.symbols)}
        return np.array([index[t] for t in tokens], np.int64)

    def text(self, labels):
        return " ".join(self.joiner.join(self.symbols[c - 1] for c in labels).split())

    def to_json(self):
        return {"symbols": self.symbols, "joiner": self.joiner}


def digit_labels():
    return Labels(DIGITS, " ")


def russian_labels():
    return Labels(RUSSIAN_ALPHABET, "")


# ---------------------------------------------------------------------- data
class CTCData:
    """Utterances for CTC: features (L_n, D) float32 each (standardized, stacked), their label
    sequences (1.. as ``Labels``), their reference texts, and what is known of each (``info``:
    the voice of a synthesized string, the id of a recording)."""

    def __init__(self, feats, targets, texts, info=None):
        self.feats, self.targets, self.texts = list(feats), list(targets), list(texts)
        self.info = list(info) if info is not None else [{} for _ in self.feats]
        self.lengths = np.array([len(f) for f in self.feats], np.int64)
        self.target_lengths = np.array([len(t) for t in self.targets], np.int64)
        assert len(self.targets) == len(self.feats) == len(self.texts) == len(self.info)

    def __len__(self):
        return len(self.feats)

    def batch(self, idx):
        """``(x (T, B, D), lengths (B,), targets (B, S) padded with the blank, target
        lengths (B,))`` of the utterances at ``idx``, cut to the longest of them."""
        x, lengths = pad_sequences([self.feats[i] for i in idx])
        S = max(1, int(self.target_lengths[idx].max()))
        targets = np.full((len(idx), S), BLANK, np.int64)
        for row, i in enumerate(idx):
            targets[row, :len(self.targets[i])] = self.targets[i]
        return x, lengths, targets, self.target_lengths[idx]

    def frames_seconds(self, stack):
        return float(self.lengths.sum()) * stack * 0.01


def infeasible(steps, targets):
    """Indices of the utterances whose label sequence cannot fit their steps under CTC: each
    label takes a step, and a repeated label one more for the blank between."""
    return [n for n, (T, t) in enumerate(zip(steps, targets))
            if T < len(t) + int(np.sum(np.asarray(t[1:]) == np.asarray(t[:-1])))]


def _standardize(train_feats):
    frames = np.concatenate(train_feats)                     # statistics of training only
    return frames.mean(axis=0), frames.std(axis=0) + 1e-8


def _make_data(feats, labelled, texts, info, mean, std, stack, what):
    seqs = [stack_frames(((f - mean) / std).astype(np.float32), stack) for f in feats]
    bad = infeasible([len(s) for s in seqs], labelled)
    if bad:
        raise ValueError(f"speech: {len(bad)} {what} utterances are too short for their "
                         f"transcripts at {stack} frames a step (e.g. {texts[bad[0]]!r}); "
                         f"use a smaller --stack")
    return CTCData(seqs, labelled, texts, info)


@dataclass
class Prepared:
    """The three splits, the labels, and what a run keeps of its data (for ``transcribe``)."""

    train: CTCData
    valid: CTCData
    test: CTCData
    labels: Labels
    features: dict        # mfcc_features' settings, and "rate" (None: the file's own)
    mean: np.ndarray
    std: np.ndarray
    identity: dict        # what data this is (recipe key, files' fingerprint, split sizes)


def _limited(idx, limit):
    return idx if limit is None else idx[:limit]


def load_digits(cfg, recipe=None, cache=None, workers=2, progress=False):
    """Synthesize (or reuse) the digit strings, their MFCCs, split by voice."""
    from ..data.connected import StringRecipe, synthesize_strings
    from ..data.speech import FEATURES, digit_features

    recipe = StringRecipe(strings=cfg.strings) if recipe is None else recipe
    folder, manifest = synthesize_strings(recipe, cache, workers=workers, progress=progress)
    utts = manifest["utterances"]
    idx = [_limited(i, cfg.limit) for i in split_by_voice(
        [u["voice"] for u in utts], cfg.test_voices, cfg.valid_voices)]
    feats = digit_features(folder, manifest, progress=progress)
    labels = digit_labels()
    target = [np.array(u["labels"], np.int64) + 1 for u in utts]
    train_ids = list(idx[0])
    train_feats = [feats[i] for i in train_ids]
    flite = [i for i in train_ids if utts[i]["engine"] == "flite"]
    for warp in cfg.flite_warps if flite else ():   # the flite voices are few and all male
        train_feats += digit_features(folder, manifest, warp=warp, only=flite)
        train_ids += flite
    for warp in cfg.warps:                          # speed perturbation of every voice
        train_feats += digit_features(folder, manifest, warp=warp, only=idx[0])
        train_ids += list(idx[0])
    mean, std = _standardize(train_feats)

    def data(ids, fs, what):
        return _make_data(fs, [target[i] for i in ids], [utts[i]["text"] for i in ids],
                          [{"voice": utts[i]["voice"], "file": utts[i]["file"]} for i in ids],
                          mean, std, cfg.stack, what)

    splits = (data(train_ids, train_feats, "training"),
              data(idx[1], [feats[i] for i in idx[1]], "validation"),
              data(idx[2], [feats[i] for i in idx[2]], "test"))
    features = {**FEATURES, "rate": None}
    identity = {"recipe": dataclasses.asdict(recipe), "recipe_key": recipe.key(),
                "utterances": len(utts), "seconds": _seconds(folder, utts)}
    return Prepared(*splits, labels, features, mean, std, identity)


def _seconds(folder, utts):
    total = 0.0
    for u in utts:
        with wave.open(os.fspath(folder / u["file"]), "rb") as w:
            total += w.getnframes() / w.getframerate()
    return total


def load_russian(cfg, root=None, cache=None, progress=False):
    """festvox-ru's recordings and transcripts, split 80/10/10 by utterance."""
    from ..data.connected import (FESTVOX_FEATURES, festvox_features, load_festvox_ru,
                                  split_utterances)

    utts = load_festvox_ru(root)
    idx = [_limited(i, cfg.limit) for i in split_utterances(len(utts), cfg.split_seed)]
    used = np.sort(np.concatenate(idx))
    position = {int(i): k for k, i in enumerate(used)}
    feats = festvox_features([utts[i] for i in used], cache, progress=progress, workers=2)
    labels = russian_labels()
    target = {int(i): labels.encode(utts[i]["transcript"]) for i in used}
    base = [int(i) for i in idx[0]]
    train_ids, train_feats = list(base), [feats[position[i]] for i in base]
    for warp in cfg.warps:                     # speed perturbation (Ko et al. 2015)
        train_feats += festvox_features([utts[i] for i in base], cache, warp=warp,
                                        progress=progress, workers=2)
        train_ids += base
    mean, std = _standardize(train_feats)

    def data(ids, fs, what):
        return _make_data(fs, [target[i] for i in ids], [utts[i]["transcript"] for i in ids],
                          [{"id": utts[i]["id"]} for i in ids], mean, std, cfg.stack, what)

    splits = (data(train_ids, train_feats, "training"),
              data([int(i) for i in idx[1]], [feats[position[int(i)]] for i in idx[1]],
                   "validation"),
              data([int(i) for i in idx[2]], [feats[position[int(i)]] for i in idx[2]], "test"))
    features = {**FESTVOX_FEATURES, "rate": 16000}
    identity = {"utterances": len(utts), "split": [len(i) for i in idx],
                "test_ids": [utts[i]["id"] for i in idx[2]],
                "seconds": float(sum(len(f) for f in feats)) * 0.01}
    return Prepared(*splits, labels, features, mean, std, identity)


def load_data(cfg, *, recipe=None, cache=None, root=None, workers=2, progress=False):
    if cfg.data == "digits":
        return load_digits(cfg, recipe, cache, workers, progress)
    return load_russian(cfg, root, cache, progress)


# ---------------------------------------------------------------------- model and objective
def build_model(cfg, input_size, classes):
    options = {"embed_size": cfg.proj} if cfg.input == "linear" else {}
    return Model(input_size, cfg.hidden, classes, cell=cfg.cell, input=cfg.input,
                 num_layers=cfg.layers, bidirectional=cfg.bidirectional,
                 dropout=cfg.dropout if cfg.layers > 1 else 0.0,   # it acts between layers
                 head="step", seed=cfg.seed, backend="auto", **options)


class CTCObjective(SupervisedObjective):
    """Epochs over ``train`` (a CTCData) in batches of similar lengths (the order and the
    pools drawn as ``SupervisedObjective`` draws them, whose position and generator it keeps);
    the loss of a batch is ``ctc_loss_logits`` of the model's per-step logits, reduction
    ``mean``. Each evaluation decodes ``valid`` greedily: the error (WER, or CER with
    ``metric="cer"``) chooses the best epoch, a tie going to the lower validation loss."""

    plot_spec = {"x": "epoch", "lines": [("train_loss", "training CTC loss"),
                                         ("valid_loss", "validation CTC loss")], "log": True}

    def __init__(self, train, valid, labels, *, batch, seed, metric="wer"):
        super().__init__(train, valid, batch=batch, bucket=True, seed=seed)
        self.labels, self.metric = labels, metric

    def step(self, model, rng):
        if self.batches is None:
            self._draw()
        idx = self.batches[self.pos]
        self.pos += 1
        if self.pos == len(self.batches):
            self.epoch, self.pos, self.batches = self.epoch + 1, 0, None
        idx = rank_share(idx, self.rank, self.world)        # data parallel: this rank's part
        if not len(idx):
            return 0.0, zero_grads(model), 0, {}
        x, lengths, targets, target_lengths = self.train.batch(idx)
        logits, _, tape = model.forward(x, None, lengths, training=True, rng=rng)
        loss, dlogits = ctc_loss_logits(logits, targets, lengths, target_lengths, BLANK)
        _, _, grads = model.backward(dlogits, tape)
        return loss, grads, len(idx), {}

    def evaluate(self, model):
        if self.valid is None:
            return {}
        out = decode(model, self.valid)
        rates = error_rates(self.valid.texts, [self.labels.text(h) for h in out["greedy"]])
        return {"valid_loss": out["loss"], "valid_error": rates[self.metric],
                "valid_wer": rates["wer"], "valid_cer": rates["cer"]}

    def better(self, new, best):
        if "valid_error" not in new:
            return False
        return best is None or (new["valid_error"], new["valid_loss"]) < \
            (best["valid_error"], best["valid_loss"])

    @staticmethod
    def postfix(record):
        return {k: f"{record[k]:.4g}" for k in ("train_loss", "valid_error")
                if record.get(k) is not None}


# ---------------------------------------------------------------------- decoding and scores
def log_softmax(z):
    z = np.asarray(z, np.float64)
    z = z - z.max(axis=-1, keepdims=True)
    return z - np.log(np.exp(z).sum(axis=-1, keepdims=True))


def decode(model, data, *, beam=0, next_labels=None, chunk=32):
    """Forward ``data`` (a CTCData) in chunks of similar lengths; return ``{"greedy": label
    lists, "beam": label lists (with ``beam`` > 0, under ``next_labels``) or None, "loss": the
    mean over utterances of the CTC loss over the target length, "log_probs": (T_n, C) per
    utterance}``, in the data's order."""
    n = len(data)
    greedy, beamed, log_probs = [None] * n, [None] * n, [None] * n
    total = 0.0
    order = np.argsort(data.lengths, kind="stable")
    for lo in range(0, n, chunk):
        idx = order[lo:lo + chunk]
        x, lengths, targets, target_lengths = data.batch(idx)
        logits, _, _ = model.forward(x, None, lengths, tape=False)
        nll, _ = ctc_loss_logits(logits, targets, lengths, target_lengths, BLANK,
                                 reduction="none")
        total += float((nll / np.maximum(target_lengths, 1)).sum())
        lp = log_softmax(logits)                                   # (T, B, C)
        for row, i in enumerate(idx):
            log_probs[i] = lp[:lengths[row], row]
        for row, labels in zip(idx, ctc_greedy_decode(lp, lengths, BLANK)):
            greedy[row] = labels
        if beam:
            found = ctc_beam_search(lp, lengths, BLANK, beam_width=beam, next_labels=next_labels)
            for row, hyps in zip(idx, found):
                beamed[row] = list(hyps[0][0]) if hyps else []
    return {"greedy": greedy, "beam": beamed if beam else None, "loss": total / max(n, 1),
            "log_probs": log_probs}


def grammar(cfg, labels, max_digits=7):
    """What the beam search may say next after a prefix: digits, at most ``max_digits`` of them;
    Russian letters, and a space only after a letter."""
    if cfg.data == "digits":
        digits = tuple(range(1, labels.classes))
        return lambda prefix: digits if len(prefix) < max_digits else ()
    space = labels.encode(" ")[0]
    letters = tuple(c for c in range(1, labels.classes) if c != space)
    with_space = letters + (space,)
    return lambda prefix: with_space if prefix and prefix[-1] != space else letters


def error_rates(refs, hyps):
    """WER and CER (jiwer; the errors summed over the utterances over the reference words or
    characters) and the fraction of utterances recognized whole."""
    try:
        import jiwer
    except ImportError:
        raise ModuleNotFoundError(f"speech: scoring needs jiwer; install it with: "
                                  f"{JIWER_INSTALL}") from None
    return {"wer": float(jiwer.wer(list(refs), list(hyps))),
            "cer": float(jiwer.cer(list(refs), list(hyps))),
            "string_accuracy": float(np.mean([r == h for r, h in zip(refs, hyps)])),
            "utterances": len(refs), "words": int(sum(len(r.split()) for r in refs))}


def score_test(cfg, model, prepared):
    """The test set decoded greedily and by beam search: error rates overall and, for digits,
    per held-out voice and over the espeak voices; a few transcripts."""
    test, labels = prepared.test, prepared.labels
    out = decode(model, test, beam=cfg.beam, next_labels=grammar(cfg, labels))
    hyps = {k: [labels.text(h) for h in out[k]] for k in ("greedy", "beam")}
    groups = {"all": np.arange(len(test))}
    if cfg.data == "digits":
        voices = np.array([i["voice"] for i in test.info])
        for v in cfg.test_voices:
            groups[v] = np.flatnonzero(voices == v)
        groups["espeak (all held-out)"] = np.flatnonzero(np.char.startswith(voices, "espeak/"))
    scores = {}
    for name, idx in groups.items():
        if len(idx):
            scores[name] = {k: error_rates([test.texts[i] for i in idx],
                                           [hyps[k][i] for i in idx]) for k in hyps}
    examples = [{"ref": test.texts[i], "greedy": hyps["greedy"][i], "beam": hyps["beam"][i],
                 **test.info[i]} for i in range(min(len(test), 8))]
    return {"scores": scores, "test_loss": out["loss"], "examples": examples,
            "hypotheses": hyps}


# ---------------------------------------------------------------------- training
def app_meta(cfg, prepared):
    return {"name": NAME, "config": dataclasses.asdict(cfg),
            "labels": prepared.labels.to_json(), "features": prepared.features,
            "stack": cfg.stack, "mean": prepared.mean.tolist(), "std": prepared.std.tolist(),
            "data": prepared.identity}


def run(cfg, out_dir=None, *, recipe=None, cache=None, root=None, workers=2, progress=False,
        resume=False, log=print):
    """Prepare the data, train (or continue, with ``resume``), test; return a dict of results
    (also ``result.json`` in out_dir)."""
    t0, c0 = time.perf_counter(), time.process_time()
    prepared = load_data(cfg, recipe=recipe, cache=cache, root=root, workers=workers,
                         progress=progress)
    t_data = time.perf_counter() - t0
    train, valid = prepared.train, prepared.valid
    model = build_model(cfg, train.feats[0].shape[1], prepared.labels.classes)
    objective = CTCObjective(train, valid, prepared.labels, batch=cfg.batch, seed=cfg.seed,
                             metric="wer" if cfg.data == "digits" else "cer")

    def on_record(r):
        if r.get("valid_error") is not None:
            log(f"epoch {r['epoch']:>3}  step {r['step']:>6}  train loss "
                f"{r.get('train_loss') or math.nan:.4f}  valid loss {r['valid_loss']:.4f}  "
                f"valid WER {r['valid_wer']:.4f}  CER {r['valid_cer']:.4f}  "
                f"({r['elapsed_s']:.0f}s)")

    trainer = Trainer(model, objective, cfg.loop(progress), out_dir, seed=cfg.seed,
                      meta={"command": COMMAND, "app": app_meta(cfg, prepared)},
                      on_record=on_record)
    if resume and out_dir is not None and os.path.exists(trainer.checkpoint_path):
        trainer.restore(*load_checkpoint(trainer.checkpoint_path))
        log(f"resuming {out_dir} at step {trainer.step} (epoch {objective.epoch})")
    t1 = time.perf_counter()
    reason = trainer.run()
    t_train = time.perf_counter() - t1
    tested = score_test(cfg, model, prepared)
    best = trainer.best_step
    out = {"config": dataclasses.asdict(cfg), "data": prepared.identity,
           "train": len(train), "valid": len(valid), "test": len(prepared.test),
           "train_hours": train.frames_seconds(cfg.stack) / 3600,
           "parameters": int(sum(p.size for p in model.params.values())),
           "best_epoch": None if best is None else next(
               r["epoch"] for r in trainer.history if r["step"] == best),
           "epochs_run": objective.epoch, "steps": trainer.step, "stop_reason": reason,
           "best_valid": trainer.best, "test_loss": tested["test_loss"],
           "scores": tested["scores"], "examples": tested["examples"],
           "data_seconds": t_data, "train_seconds": t_train,
           "update_seconds": trainer.elapsed, "seconds": time.perf_counter() - t0,
           "cpu_seconds": time.process_time() - c0}
    if out_dir is not None:
        write_text(os.path.join(out_dir, "result.json"), json.dumps(out, indent=1,
                                                                    ensure_ascii=False))
    return out


def format_report(cfg, r):
    lines = [f"{r['train']} training, {r['valid']} validation, {r['test']} test utterances "
             f"({r['train_hours']:.2f} h of training audio); {r['parameters']:,} parameters; "
             f"best epoch {r['best_epoch']} of {r['epochs_run']} ({r['stop_reason']})",
             f"{'test set':<24} {'utts':>5} {'words':>6}   {'WER greedy':>10} {'beam':>7}   "
             f"{'CER greedy':>10} {'beam':>7}   {'whole greedy':>12} {'beam':>7}"]
    for name, s in r["scores"].items():
        g, b = s["greedy"], s["beam"]
        lines.append(f"{name:<24} {g['utterances']:>5} {g['words']:>6}   {g['wer']:>10.4f} "
                     f"{b['wer']:>7.4f}   {g['cer']:>10.4f} {b['cer']:>7.4f}   "
                     f"{g['string_accuracy']:>12.4f} {b['string_accuracy']:>7.4f}")
    for e in r["examples"][:3]:
        lines.append(f"  said:   {e['ref']}\n  greedy: {e['greedy']}\n  beam:   {e['beam']}")
    lines.append(f"{r['seconds']:.0f}s in all ({r['data_seconds']:.0f}s data, "
                 f"{r['train_seconds']:.0f}s training), {r['cpu_seconds']:.0f}s of CPU")
    return "\n".join(lines)


# ---------------------------------------------------------------------- transcribe
def load(run_dir):
    """``(model, app)`` of a run directory of ``bptt train speech``: the best epoch's
    parameters, and what the run stored of its labels and features."""
    params, meta = load_run(run_dir, COMMAND)
    with readable(os.path.join(os.fspath(run_dir), "checkpoint.npz")):
        app = meta["app"]
        model = Model(**meta["model"])
        model.load_state_dict(params)
        app["labels"]["symbols"], app["features"], app["stack"], app["mean"], app["std"]
    return model, app


def read_audio(path):
    """``(signal, rate)`` of a mono 16-bit PCM WAV file; a clear error for anything else."""
    from ..data.speech import read_wav
    try:
        signal, rate = read_wav(path)
    except (wave.Error, EOFError) as e:
        raise ValueError(f"transcribe: {path} is not a readable WAV file ({e})") from None
    if signal.size == 0:
        raise ValueError(f"transcribe: {path} holds no audio (0 samples)")
    return signal, rate


def audio_features(signal, rate, app):
    """The run's features of one signal: resampled to the run's rate where it has one (and to
    16 kHz where the file's rate is below twice the features' top frequency), MFCCs,
    standardized, stacked. Returns (steps, D) float32."""
    from scipy.signal import resample_poly

    from ..data.speech import mfcc_features

    settings = dict(app["features"])
    target = settings.pop("rate")
    if target is None and rate < 2 * settings["highfreq"]:
        target = 16000
    if target is not None and rate != target:
        g = math.gcd(int(target), int(rate))
        signal, rate = resample_poly(signal, target // g, rate // g), target
    if len(signal) < settings["winlen"] * rate:
        raise ValueError(f"transcribe: the audio is shorter than one {settings['winlen'] * 1e3:g}"
                         f" ms frame ({len(signal)} samples at {rate} Hz)")
    feats = mfcc_features(signal, rate, **settings)
    mean, std = np.array(app["mean"]), np.array(app["std"])
    return stack_frames(((feats - mean) / std).astype(np.float32), app["stack"])


def transcribe(run_dir, paths, *, beam=0, posteriors=None):
    """The transcript of every WAV file in ``paths`` by the run in ``run_dir``: a list of dicts
    with ``path``, ``text`` (greedy, or beam search with ``beam`` > 0) and ``log_probs``
    (steps, C); with ``posteriors``, a PNG of the posteriors over time."""
    model, app = load(run_dir)
    labels = Labels(app["labels"]["symbols"], app["labels"]["joiner"])
    cfg = SpeechConfig(**{k: tuple(v) if isinstance(v, list) else v
                          for k, v in app["config"].items()})
    out = []
    for path in paths:
        x = audio_features(*read_audio(path), app)
        logits, _, _ = model.forward(x[:, None], None, tape=False)
        lp = log_softmax(logits)
        if beam:
            hyps = ctc_beam_search(lp, None, BLANK, beam_width=beam,
                                   next_labels=grammar(cfg, labels))[0]
            found = list(hyps[0][0]) if hyps else []
        else:
            found = ctc_greedy_decode(lp, None, BLANK)[0]
        out.append({"path": os.fspath(path), "text": labels.text(found), "log_probs": lp[:, 0]})
    if posteriors:
        plot_posteriors(out, labels, app["stack"] * 0.01, posteriors)
    return out


def plot_posteriors(results, labels, step_s, path):
    """One panel per file: the posterior probability of every class (rows: the blank, then the
    symbols) at every step, the transcript above."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = ["∅"] + [s if s != " " else "␣" for s in labels.symbols]
    C = len(names)
    fig, axes = plt.subplots(len(results), 1, squeeze=False,
                             figsize=(9, (1.0 + 0.12 * C) * len(results) + 0.4))
    for ax, r in zip(axes[:, 0], results):
        post = np.exp(r["log_probs"]).T                              # (C, steps)
        ax.imshow(post, aspect="auto", origin="lower", cmap="Greys", vmin=0, vmax=1,
                  interpolation="nearest", extent=(0, post.shape[1] * step_s, -0.5, C - 0.5))
        ax.set_yticks(range(C), names, fontsize=6 if C > 15 else 8)
        ax.set_xlabel("time (s)")
        title = f"{os.path.basename(r['path'])}: {r['text']!s}"
        ax.set_title(title if len(title) < 110 else title[:107] + "...", fontsize=8)
    fig.tight_layout()
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


# ---------------------------------------------------------------------- the commands
def add_parser(apps):
    p = apps.add_parser("speech", help="connected speech recognition with CTC: synthesized "
                        "digit strings (unseen voices) or recorded Russian",
                        description=__doc__.split("\n\n")[0])
    add_options(p, SpeechConfig)
    p.add_argument("--warps", metavar="LIST", help="comma-separated speeds of extra training "
                   "copies of every training utterance, speed perturbation as Ko et al. 2015 "
                   "(default 1.1,1.2 for russian, none for digits; '' for none)")
    p.add_argument("--cache", metavar="DIR", help="folder of synthesized audio (digits) or of "
                   "features (russian) (default under $BPTT_CACHE or ~/.cache/bptt)")
    p.add_argument("--workers", type=int, help="parallel synthesis processes (default 2)")
    p.add_argument("--out", metavar="DIR", help=f"run directory (default {DEFAULT_OUT})")
    p.add_argument("--resume", metavar="DIR", help="continue the run saved in DIR (only "
                   f"{', '.join(sorted(RESUMABLE))} may change)")
    p.add_argument("--config", metavar="FILE", help="read options from a TOML file")
    p.set_defaults(func=main)
    return p


def add_transcribe_parser(sub):
    p = sub.add_parser("transcribe", help="transcribe WAV files with a `bptt train speech` run",
                       description="Print the transcript of each WAV file (mono 16-bit PCM; "
                                   "resampled to the run's rate where needed) by the model of "
                                   "a `bptt train speech` run.")
    p.add_argument("run", metavar="RUN_DIR", help="a run directory of `bptt train speech`")
    p.add_argument("wavs", metavar="WAV", nargs="+", help="WAV files to transcribe")
    p.add_argument("--beam", type=int, default=0, help="beam width of a prefix beam search "
                   "under the run's grammar (default 0: best path)")
    p.add_argument("--posteriors", metavar="PNG", help="also draw the CTC posteriors over time "
                   "of every file into this PNG")
    p.set_defaults(func=transcribe_main)
    return p


EXTRA = ("warps", "cache", "workers", "out")


def main(args):
    options, table = merge(SpeechConfig, args, extra=EXTRA)
    extra = {k: getattr(args, k) if getattr(args, k) is not None else table.get(k)
             for k in EXTRA}
    if extra["warps"] is not None:
        options["warps"] = _warps(extra["warps"])
    if args.resume:
        saved = stored_app(args.resume, COMMAND, None, extra["out"])["config"]
        saved = {k: tuple(v) if isinstance(v, list) else v for k, v in saved.items()}  # JSON's
        cfg = SpeechConfig(**resume_options(saved, options, RESUMABLE))
        out = args.resume
    else:
        cfg = SpeechConfig(**options)
        out = extra["out"] or DEFAULT_OUT
        if os.path.exists(os.path.join(out, "checkpoint.npz")):
            raise ConfigError(f"{out} already holds a run; continue it with --resume {out} or "
                              f"choose another --out")
    if cfg.data == "digits":
        print(f"connected digits (1-7 a string), synthesized by espeak-ng and flite "
              f"(text-to-speech); test voices never heard in training: "
              f"{', '.join(cfg.test_voices)}")
    else:
        print("festvox-ru: recorded Russian sentences, one male speaker; character-level CTC, "
              "test utterances held out")
    print(f"{'bidirectional ' if cfg.bidirectional else ''}{cfg.cell.upper()} "
          f"{cfg.layers}x{cfg.hidden}, {cfg.stack} frames a step, input {cfg.input}; batch "
          f"{cfg.batch}, lr {cfg.lr:g}, at most {cfg.epochs} epochs")
    workers = 2 if extra["workers"] is None else extra["workers"]
    r = run(cfg, out, cache=extra["cache"], workers=workers, progress=sys.stderr.isatty(),
            resume=bool(args.resume))
    print(format_report(cfg, r))
    print(f"run saved in {out}/; transcribe WAV files with: bptt transcribe {out} FILE.wav")
    return r


def _warps(value):
    """Speed factors as a tuple, from a comma-separated string (the command line; empty: none)
    or a list of numbers (TOML)."""
    try:
        if isinstance(value, str):
            return tuple(float(v) for v in value.split(",") if v.strip())
        if isinstance(value, list) and not any(isinstance(v, bool) for v in value):
            return tuple(float(v) for v in value)
    except ValueError:
        pass
    raise ConfigError(f"--warps: expected comma-separated speed factors such as 0.9,1.1 (or "
                      f"an empty string for none), got {value!r}")


def transcribe_main(args):
    if args.beam < 0:
        raise ConfigError(f"--beam: expected 0 (best path) or a beam width >= 1, got "
                          f"{args.beam}")
    results = transcribe(args.run, args.wavs, beam=args.beam, posteriors=args.posteriors)
    for r in results:
        print(f"{r['path']}: {r['text']}" if len(results) > 1 else r["text"])
    if args.posteriors:
        print(f"posteriors: {args.posteriors}", file=sys.stderr)
    return results

