"""Speech loaders on the real data: JapaneseVowels from sktime's files, digits made by TTS."""

import importlib.util
import json
import shutil
import subprocess
import wave

import numpy as np
import pytest

from bptt import checkpoint
from bptt.apps import digits as digits_app
from bptt.apps import vowels as vowels_app
from bptt.cli import main as cli_main
from bptt.data import speech
from bptt.data.speech import (DigitRecipe, digit_features, load_japanese_vowels, mfcc_features,
                              read_ts, read_wav, synthesize_digits, trim_silence)
from bptt.supervised import SequenceData
from conftest import TIMING, run_killed

needs_sktime = pytest.mark.skipif(importlib.util.find_spec("sktime") is None,
                                  reason=f"sktime's data files are not installed "
                                         f"({speech.SKTIME_INSTALL})")
needs_tts = pytest.mark.skipif(shutil.which("espeak-ng") is None or shutil.which("flite") is None,
                               reason=f"espeak-ng or flite is not installed "
                                      f"({speech.APT_INSTALL}; make installs them)")
needs_mfcc = pytest.mark.skipif(importlib.util.find_spec("python_speech_features") is None,
                                reason=f"python_speech_features is not installed "
                                       f"({speech.FEATURES_INSTALL})")

SMALL = DigitRecipe(words=("one", "two", "three"), accents=("en-us", "en-gb"),
                    variants=("m3", "f2"), takes=1, flite_voices=("kal",), stretches=(1.0,),
                    f0s=(0, 120))


# ---------------------------------------------------------------------- JapaneseVowels
@needs_sktime
def test_japanese_vowels_shapes_and_splits():
    (x_train, y_train), (x_test, y_test) = load_japanese_vowels()
    assert len(x_train) == 270 and len(x_test) == 370
    assert y_train.dtype == np.int64 and set(y_train) == set(y_test) == set(range(9))
    assert np.all(np.bincount(y_train) == 30)
    counts = np.bincount(y_test)
    assert counts.sum() == 370 and counts.min() == 24 and counts.max() == 88
    lengths = [len(s) for s in x_train + x_test]
    assert min(lengths) == 7 and max(lengths) == 29
    assert all(s.shape[1] == 12 and s.dtype == np.float64 and np.isfinite(s).all()
               for s in x_train + x_test)
    # the test utterances were recorded apart from the training ones: none repeats
    train_keys = {s.tobytes() for s in x_train}
    assert not any(s.tobytes() in train_keys for s in x_test)
    # a golden value against silent drift in parsing
    assert x_train[0][0, 0] == pytest.approx(1.860936)


@needs_sktime
def test_vowels_app_splits_are_disjoint_and_standardized():
    cfg = vowels_app.VowelsConfig(seed=3)
    train, valid, test = vowels_app.load_splits(cfg)
    assert (len(train), len(valid), len(test)) == (225, 45, 370)
    assert np.all(np.bincount(valid.y) == 5) and np.all(np.bincount(train.y) == 25)
    assert train.x.shape[2] == 12 and train.lengths.min() >= 7 and train.lengths.max() <= 29
    frames = np.concatenate([train.x[:L, n] for n, L in enumerate(train.lengths)])
    assert np.abs(frames.mean(axis=0)).max() < 1e-5
    assert np.abs(frames.std(axis=0) - 1).max() < 1e-4
    seen = {train.x[:L, n].tobytes() for n, L in enumerate(train.lengths)}
    assert not any(valid.x[:L, n].tobytes() in seen for n, L in enumerate(valid.lengths))
    other = vowels_app.load_splits(vowels_app.VowelsConfig(seed=4))[1]
    assert not np.array_equal(other.x, valid.x)      # the seed draws the validation set


@needs_sktime
def test_vowels_command_runs(tmp_path, capsys, monkeypatch):
    refs = []
    monkeypatch.setattr(vowels_app, "dtw_1nn_accuracy",     # tested on its own, below
                        lambda reference, queries: refs.append(len(reference)) or 0.5)
    assert cli_main(["train", "vowels", "--epochs", "2", "--hidden", "8", "--baseline", "--out",
                     str(tmp_path)]) == 0
    out = capsys.readouterr().out
    assert "test accuracy" in out and "1-NN DTW" in out and refs == [270]
    result = json.loads((tmp_path / "result.json").read_text())
    assert result["test"] == 370 and 0 <= result["test_accuracy"] <= 1
    assert cli_main(["train", "vowels", "--cell", "tanh", "--out", str(tmp_path)]) == 1
    assert "expected cell" in capsys.readouterr().err


def test_read_ts_errors(tmp_path):
    bad = tmp_path / "bad.ts"
    bad.write_text("@problemName x\n@data\n1,2,3:4,5:a\n")
    with pytest.raises(ValueError, match="unequal length"):
        read_ts(bad)
    bad.write_text("@problemName x\n@timeStamps true\n@data\n")
    with pytest.raises(ValueError, match="timestamps"):
        read_ts(bad)
    bad.write_text("@problemName x\n@data\n")
    with pytest.raises(ValueError, match="no @data"):
        read_ts(bad)
    bad.write_text("@data\n1,x:b\n")
    with pytest.raises(ValueError, match="bad.ts:2"):
        read_ts(bad)
    good = tmp_path / "good.ts"
    good.write_text("# comment\n@data\n1,2,3:4,5,6:7\n0.5:1.5:2\n")
    seqs, labels = read_ts(good)
    assert labels == ["7", "2"] and seqs[0].shape == (3, 2) and seqs[1].tolist() == [[0.5, 1.5]]


def test_missing_sktime_says_how_to_install(monkeypatch):
    monkeypatch.setattr(importlib.util, "find_spec", lambda name: None)
    with pytest.raises(ModuleNotFoundError, match="pip install --no-deps sktime"):
        load_japanese_vowels()


# ---------------------------------------------------------------------- digits: the recipe
def test_default_recipe_and_leave_voices_out_split():
    utts = DigitRecipe().utterances()
    assert len(utts) == 8 * 36 * 10 * 2 + 5 * 10 * 3 * 3
    assert len({u["file"] for u in utts}) == len(utts)
    assert np.all(np.bincount([u["label"] for u in utts]) == len(utts) // 10)
    voices = [u["voice"] for u in utts]
    train, valid, test = digits_app.split_by_voice(voices, digits_app.TEST_VOICES,
                                                   digits_app.VALID_VOICES)
    assert len(train) + len(valid) + len(test) == len(utts)
    parts = [{voices[i] for i in idx} for idx in (train, valid, test)]
    assert parts[2] == set(digits_app.TEST_VOICES) and parts[1] == set(digits_app.VALID_VOICES)
    assert not (parts[0] & parts[1] or parts[0] & parts[2] or parts[1] & parts[2])
    speakers = [{utts[i]["speaker"] for i in idx} for idx in (train, test)]
    assert not speakers[0] & speakers[1]
    for v in digits_app.TEST_VOICES:       # an espeak voice is held out under every accent
        accents = {utts[i]["accent"] for i in test if voices[i] == v and "accent" in utts[i]}
        assert accents == (set(speech.ESPEAK_ACCENTS) if v.startswith("espeak") else set())
    assert DigitRecipe().utterances() == utts and DigitRecipe(seed=1).utterances() != utts
    with pytest.raises(ValueError, match="not in the data set"):
        digits_app.split_by_voice(voices, ("espeak/nobody",), ())


@pytest.mark.parametrize("field,value,match", [
    ("words", (), "words a non-empty tuple"), ("takes", 0, "takes"),
    ("words", ("one two",), "letters only"), ("speeds", [150], "speeds a non-empty tuple"),
])
def test_recipe_errors(field, value, match):
    with pytest.raises(ValueError, match=match):
        DigitRecipe(**{field: value})
    with pytest.raises(ValueError, match="neither"):
        DigitRecipe(accents=(), flite_voices=())
    with pytest.raises(TypeError, match="DigitRecipe"):
        synthesize_digits({"words": ("one",)})
    with pytest.raises(ValueError, match="both in test and validation"):
        digits_app.DigitsConfig(test_voices=("flite/slt",), valid_voices=("flite/slt",))


def test_digits_command_rejects_bad_options_before_synthesizing(tmp_path, capsys):
    assert cli_main(["train", "digits", "--cell", "tanh", "--cache", str(tmp_path)]) == 1
    assert "expected cell" in capsys.readouterr().err
    assert cli_main(["train", "digits", "--test-voices", "flite/slt", "--valid-voices",
                     "flite/slt", "--cache", str(tmp_path)]) == 1
    assert "both in test and validation" in capsys.readouterr().err
    assert not any(tmp_path.iterdir())


def test_missing_engine_says_how_to_install(tmp_path, monkeypatch):
    monkeypatch.setattr(shutil, "which", lambda name: None)
    with pytest.raises(FileNotFoundError, match="apt-get install -y espeak-ng flite"):
        synthesize_digits(SMALL, tmp_path)


# ---------------------------------------------------------------------- digits: the audio
@needs_tts
def test_synthesis_is_deterministic_cached_and_readable(tmp_path, monkeypatch):
    folder_a, man_a = synthesize_digits(SMALL, tmp_path / "a")
    folder_b, man_b = synthesize_digits(SMALL, tmp_path / "b")
    assert folder_a.name == folder_b.name == SMALL.key()
    utts = man_a["utterances"]
    assert len(utts) == 2 * 2 * 3 + 1 * 3 * 2
    assert [u["sha256"] for u in utts] == [u["sha256"] for u in man_b["utterances"]]
    assert set(man_a["engines"]) == {"espeak-ng", "flite"}
    rates = set()
    for u in utts:
        signal, rate = read_wav(folder_a / u["file"])
        rates.add((u["engine"], rate))
        assert 0.2 < len(signal) / rate < 2.0 and np.abs(signal).max() > 0.05
    assert rates == {("espeak-ng", 22050), ("flite", 8000)}
    # kal's two pitch targets give two different recordings of each word
    kal = [u["sha256"] for u in utts if u["engine"] == "flite" and u["word"] == "two"]
    assert len(set(kal)) == 2
    # a second call finds the manifest and runs no engine
    monkeypatch.setattr(subprocess, "run", lambda *a, **k: pytest.fail("re-synthesized"))
    assert synthesize_digits(SMALL, tmp_path / "a")[1] == man_a


@needs_tts
@needs_mfcc
def test_features_shapes_lengths_and_cache(tmp_path):
    folder, manifest = synthesize_digits(SMALL, tmp_path)
    feats = digit_features(folder, manifest)
    assert len(feats) == len(manifest["utterances"])
    for f in feats:
        assert f.dtype == np.float32 and f.shape[1] == 26 and 15 <= len(f) <= 100
        assert np.isfinite(f).all() and np.abs(f[:, :13].mean(axis=0)).max() < 1e-4
    assert len(list(folder.glob("features-*.npz"))) == 1
    again = digit_features(folder, manifest)
    assert all(np.array_equal(a, b) for a, b in zip(feats, again))
    some = digit_features(folder, manifest, only=[5, 1])
    assert np.array_equal(some[0], feats[5]) and np.array_equal(some[1], feats[1])
    # warped 1.25 times faster: about 1/1.25 of the frames
    warped = digit_features(folder, manifest, only=[0], warp=1.25)[0]
    assert abs(len(warped) - len(feats[0]) / 1.25) <= 2
    normed = digit_features(folder, manifest, only=[0], cmvn=True)[0]
    assert np.allclose(normed[:, :13].std(axis=0), 1, atol=1e-3)
    with pytest.raises(TypeError, match="unknown options"):
        digit_features(folder, manifest, numceps=12)


@needs_tts
@needs_mfcc
def test_digits_pipeline_runs_on_a_small_recipe(tmp_path):
    cfg = digits_app.DigitsConfig(hidden=8, epochs=2, test_voices=("espeak/f2",),
                                  valid_voices=("espeak/m3",), flite_warps=(1.2,))
    r = digits_app.run(cfg, tmp_path / "run", recipe=SMALL, cache=tmp_path / "cache",
                       figure=tmp_path / "fig" / "digits_confusion.png")
    # training: kal's 6 utterances and their 6 warped copies
    assert (r["train"], r["valid"], r["test"]) == (12, 6, 6)
    assert set(r["per_voice"]) == {"espeak/f2"} and r["per_voice"]["espeak/f2"]["utterances"] == 6
    assert np.sum(r["confusion"]) == 6
    assert (tmp_path / "fig" / "digits_confusion.png").stat().st_size > 0
    assert (tmp_path / "run" / "metrics.jsonl").exists()


def _dtw(a, b):
    D = np.full((len(a) + 1, len(b) + 1), np.inf)
    D[0, 0] = 0
    for i in range(1, len(a) + 1):
        for j in range(1, len(b) + 1):
            D[i, j] = ((a[i - 1] - b[j - 1]) ** 2).sum() + min(D[i - 1, j], D[i, j - 1],
                                                               D[i - 1, j - 1])
    return D[-1, -1]


def test_baselines_match_brute_force():
    from bptt.supervised import SequenceData, pad_sequences

    rng = np.random.default_rng(13)
    seqs = [rng.standard_normal((rng.integers(2, 8), 3)) for _ in range(30)]
    y = rng.integers(0, 3, 30)
    ref, qry = seqs[:20], seqs[20:]
    R = SequenceData(*pad_sequences(ref, np.float64)[:1], y[:20], pad_sequences(ref)[1])
    Q = SequenceData(*pad_sequences(qry, np.float64)[:1], y[20:], pad_sequences(qry)[1])
    nearest = [y[np.argmin([_dtw(q, r) for r in ref])] for q in qry]
    assert vowels_app.dtw_1nn_accuracy(R, Q) == np.mean(np.array(nearest) == y[20:])

    def pooled(s):
        return np.concatenate([s.mean(0), s.std(0)])
    a = np.array([pooled(s) for s in ref])
    b = np.array([pooled(s) for s in qry])
    mu, sd = a.mean(0), a.std(0) + 1e-8
    d = (((b - mu) / sd)[:, None] - ((a - mu) / sd)[None]) ** 2
    expected = np.mean(y[:20][d.sum(-1).argmin(1)] == y[20:])
    assert digits_app.pooled_1nn_accuracy(R, Q) == pytest.approx(expected)


def test_stack_frames():
    f = np.arange(10, dtype=np.float32).reshape(5, 2)
    s = digits_app.stack_frames(f, 2)
    assert s.tolist() == [[0, 1, 2, 3], [4, 5, 6, 7], [8, 9, 8, 9]]
    assert digits_app.stack_frames(f, 1) is f


def test_mfcc_and_trim_on_a_made_signal():
    rate = 16000
    t = np.arange(int(0.3 * rate)) / rate
    tone = 0.5 * np.sin(2 * np.pi * 440 * t)
    signal = np.concatenate([np.zeros(rate // 5), tone, np.zeros(rate // 10)])
    cut = trim_silence(signal, rate)
    assert abs(len(cut) - len(tone)) <= rate // 100
    if importlib.util.find_spec("python_speech_features") is None:
        pytest.skip(f"python_speech_features is not installed ({speech.FEATURES_INSTALL})")
    f = mfcc_features(signal, rate)
    assert f.shape == (29, 26)                       # 0.3 s of 25 ms windows every 10 ms
    with pytest.raises(ValueError, match="Nyquist"):
        mfcc_features(signal[::4], 4000)
    with pytest.raises(ValueError, match="Nyquist"):                # 8 kHz slowed down
        mfcc_features(signal[::2], 8000, warp=0.9)
    with pytest.raises(ValueError, match="warp > 0"):
        mfcc_features(signal, rate, warp=0)
    assert abs(len(mfcc_features(signal, rate, warp=1.5)) - 29 / 1.5) <= 1


def test_read_wav_rejects_stereo(tmp_path):
    path = tmp_path / "stereo.wav"
    with wave.open(str(path), "wb") as w:
        w.setnchannels(2)
        w.setsampwidth(2)
        w.setframerate(8000)
        w.writeframes(np.zeros(200, "<i2").tobytes())
    with pytest.raises(ValueError, match="mono 16-bit"):
        read_wav(path)


# ---------------------------------------------------------------------- the long runs
@pytest.mark.slow
@needs_sktime
def test_vowels_reaches_the_published_range():
    r = vowels_app.run(vowels_app.VowelsConfig())
    assert r["test_accuracy"] >= 0.95


@pytest.mark.slow
@needs_tts
@needs_mfcc
def test_digits_recognized_on_unseen_voices(tmp_path):
    r = digits_app.run(digits_app.DigitsConfig(), tmp_path)
    assert r["test_accuracy"] >= 0.95


# ---------------------------------------------------------------------- --config, kill and --resume


def checkpoints(run_dir):
    return sorted(p.relative_to(run_dir) for p in run_dir.rglob("checkpoint.npz"))


def assert_same_runs(a, b):
    """Every model of run b holds the parameters, best parameters and optimizer state of run a's,
    bit for bit, and its metrics.jsonl the same lines but for the clock."""
    assert checkpoints(a) == checkpoints(b) and checkpoints(a)
    for rel in checkpoints(a):
        arrays_a, meta_a = checkpoint.load(a / rel)
        arrays_b, meta_b = checkpoint.load(b / rel)
        assert meta_b["finished"] and meta_b["step"] == meta_a["step"]
        assert set(arrays_a) == set(arrays_b)
        for k in arrays_a:
            if k.split("/")[0] in ("model", "best", "optim"):
                assert np.array_equal(arrays_a[k], arrays_b[k]), (rel, k)
        lines = [[{k: v for k, v in json.loads(s).items() if k not in TIMING}
                  for s in (run / rel.parent / "metrics.jsonl").read_text().splitlines()]
                 for run in (a, b)]
        assert lines[0] == lines[1], rel


def updates(run_dir, rel):
    return checkpoint.load(run_dir / rel)[1]["step"]


@needs_sktime
def test_vowels_config_file_and_a_killed_run_resumed(tmp_path, capsys):
    """Two seeds; the second killed mid-epoch, after its epoch's metrics line and four updates
    past its last checkpoint; --resume reads the first back and continues the second: both as
    an uninterrupted run's, bit for bit. The options come from a TOML file, the command line
    over it."""
    a, b = tmp_path / "a", tmp_path / "b"
    assert cli_main(["train", "vowels", "--epochs", "2", "--hidden", "8", "--seeds", "2",
                     "--checkpoint-every", "4", "--out", str(a)]) == 0
    per_seed = updates(a, "seed0/checkpoint.npz")
    assert per_seed == 2 * 15 == updates(a, "seed1/checkpoint.npz")
    toml = tmp_path / "vowels.toml"
    toml.write_text('hidden = 8\nseeds = 2\ncheckpoint-every = 4\nepochs = 99\n')
    run_killed(["train", "vowels", "--config", toml, "--epochs", 2, "--out", b],
               after=per_seed + 15)
    assert updates(b, "seed0/checkpoint.npz") == per_seed
    assert updates(b, "seed1/checkpoint.npz") == 12
    assert len((b / "seed1" / "metrics.jsonl").read_text().splitlines()) == 1     # step 15
    capsys.readouterr()
    assert cli_main(["train", "vowels", "--resume", str(b)]) == 0
    out = capsys.readouterr().out
    assert_same_runs(a, b)
    assert out.count("test accuracy") == 3 and f"runs saved in {b}/" in out
    results = [json.loads((run / "seed1" / "result.json").read_text()) for run in (a, b)]
    assert results[0]["test_accuracy"] == results[1]["test_accuracy"]
    assert results[0]["config"] == results[1]["config"]
    # a finished run resumed trains nothing more
    assert cli_main(["train", "vowels", "--resume", str(b)]) == 0
    assert_same_runs(a, b)
    # what --resume and a second run refuse, in one line each
    capsys.readouterr()
    for argv, match in ((["--resume", b, "--hidden", 9], "--hidden 9 (the run has 8)"),
                        (["--resume", b, "--seeds", 3], "trains 2 seeds, got 3"),
                        (["--resume", b, "--out", a], "stays in its own directory"),
                        (["--resume", tmp_path / "none"], "no checkpoint in"),
                        (["--out", b], "already holds a run; continue it with --resume")):
        assert cli_main(["train", "vowels", *map(str, argv)]) == 1
        err = capsys.readouterr().err
        assert match in err and err.count("\n") == 1, err
    toml.write_text("hiden = 8\n")
    assert cli_main(["train", "vowels", "--config", str(toml), "--out", str(tmp_path / "c")]) == 1
    assert "unknown keys hiden" in capsys.readouterr().err


def fake_digit_splits(cfg, recipe=None, cache=None, workers=2, progress=False):
    """``digits.load_splits``'s shapes without the synthesis (espeak-ng, flite, minutes): 60
    training, 20 validation and 20 test utterances of 6 features, the test ones spoken by the
    test voices in turn."""
    rng = np.random.default_rng(0)

    def data(n):
        x = rng.standard_normal((9, n, 6)).astype(np.float32)
        return SequenceData(x, rng.integers(0, 10, n), rng.integers(3, 10, n))
    utts = [{"voice": cfg.test_voices[i % len(cfg.test_voices)]} for i in range(20)]
    return data(60), data(20), data(20), utts


def test_digits_config_file_and_a_killed_run_resumed(tmp_path, capsys, monkeypatch):
    """The digits command on made-up features: options from a TOML file (the voices as a
    list), a run killed mid-epoch and resumed equals an uninterrupted one, bit for bit."""
    monkeypatch.setattr(digits_app, "load_splits", fake_digit_splits)
    a, b = tmp_path / "a", tmp_path / "b"
    common = ["--epochs", "3", "--hidden", "8", "--batch", "8", "--checkpoint-every", "3"]
    assert cli_main(["train", "digits", *common, "--test-voices", "flite/slt,espeak/m4",
                     "--out", str(a)]) == 0
    assert updates(a, "checkpoint.npz") == 3 * 8
    toml = tmp_path / "digits.toml"
    toml.write_text('test-voices = ["flite/slt", "espeak/m4"]\nhidden = 8\nlayers = 5\n')
    run_killed(["train", "digits", "--config", toml, *common, "--layers", 2, "--out", b],
               after=13, setup="import test_speech; from bptt.apps import digits; "
                                "digits.load_splits = test_speech.fake_digit_splits")
    assert updates(b, "checkpoint.npz") == 12
    capsys.readouterr()
    assert cli_main(["train", "digits", "--resume", str(b)]) == 0
    assert "test accuracy on unseen voices" in capsys.readouterr().out
    assert_same_runs(a, b)
    results = [json.loads((run / "result.json").read_text()) for run in (a, b)]
    for k in ("test_accuracy", "per_voice", "confusion", "baseline_pooled_1nn", "config"):
        assert results[0][k] == results[1][k], k
    assert set(results[1]["per_voice"]) == {"flite/slt", "espeak/m4"}
    assert (b / "confusion.png").stat().st_size > 0
    assert cli_main(["train", "digits", "--resume", str(b), "--valid-voices", "espeak/m6"]) == 1
    assert "--valid-voices ('espeak/m6',)" in capsys.readouterr().err
