"""Connected speech with CTC (``bptt train speech``, ``bptt transcribe``): the digit-string recipe
and its leave-voices-out split, festvox-ru's recordings, the CTC objective against torch, the
commands, bad input, and a killed run resumed bit for bit."""

import dataclasses
import importlib.util
import json
import os
import shutil
import signal
import subprocess
import sys
import wave

import numpy as np
import pytest

from bptt import checkpoint
from bptt.apps import digits as digits_app
from bptt.apps import speech as app
from bptt.cli import main as cli_main
from bptt.data import connected, speech
from bptt.data.connected import (RUSSIAN_ALPHABET, StringRecipe, load_festvox_ru,
                                 normalize_russian, split_utterances, synthesize_strings)
from bptt.model import Model

HERE = os.path.dirname(os.path.abspath(__file__))
FESTVOX_PRESENT = (connected.FESTVOX_RU / "etc" / "txt.done.data").is_file()
# the Makefile installs festvox-ru (apt-get); only a machine without apt-get skips its tests
needs_festvox = pytest.mark.skipif(
    not FESTVOX_PRESENT and shutil.which("apt-get") is None,
    reason=f"festvox-ru is not installed and this machine has no apt-get to install it "
           f"({connected.FESTVOX_INSTALL})")
needs_tts = pytest.mark.skipif(shutil.which("espeak-ng") is None or shutil.which("flite") is None,
                               reason=f"espeak-ng or flite is not installed "
                                      f"({speech.APT_INSTALL}; make installs them)")
needs_mfcc = pytest.mark.skipif(importlib.util.find_spec("python_speech_features") is None or
                                importlib.util.find_spec("scipy") is None,
                                reason=f"python_speech_features or scipy is not installed "
                                       f"({speech.FEATURES_INSTALL})")
needs_jiwer = pytest.mark.skipif(importlib.util.find_spec("jiwer") is None,
                                 reason=f"jiwer is not installed ({app.JIWER_INSTALL})")

SMALL = StringRecipe(accents=("en-us", "en-gb"), variants=("m3", "f2", "m1"), strings=4,
                     flite_voices=("kal", "slt"), flite_strings=2, stretches=(1.0,),
                     f0s=(0,))
TINY = ["--data", "russian", "--limit", "6", "--hidden", "8", "--layers", "2", "--batch", "3",
        "--beam", "2", "--warps", "1.2"]


# ---------------------------------------------------------------------- the string recipe
def test_string_recipe_and_its_leave_voices_out_split():
    utts = StringRecipe().utterances()
    assert len(utts) == 8 * 36 * 24 + 5 * 3 * 3 * 12 == 7452
    assert len({u["file"] for u in utts}) == len(utts)
    lengths = np.array([len(u["labels"]) for u in utts])
    assert lengths.min() == 1 and lengths.max() == 7
    assert abs(np.mean(lengths) - 4) < 0.1                   # uniform over 1..7
    for u in utts[:50] + utts[-50:]:
        assert u["text"] == " ".join(speech.DIGITS[d] for d in u["labels"])
    counts = np.bincount(np.concatenate([u["labels"] for u in utts]), minlength=10)
    assert counts.min() > 0.9 * counts.mean()
    voices = [u["voice"] for u in utts]
    train, valid, test = digits_app.split_by_voice(voices, digits_app.TEST_VOICES,
                                                   digits_app.VALID_VOICES)
    assert len(train) + len(valid) + len(test) == len(utts)
    parts = [{voices[i] for i in idx} for idx in (train, valid, test)]
    assert parts[2] == set(digits_app.TEST_VOICES) and parts[1] == set(digits_app.VALID_VOICES)
    assert not (parts[0] & parts[1] or parts[0] & parts[2] or parts[1] & parts[2])
    assert not {utts[i]["speaker"] for i in train} & {utts[i]["speaker"] for i in test}
    assert (len(train), len(valid), len(test)) == (5184 + 4 * 108, 4 * 8 * 24, 5 * 8 * 24 + 108)
    assert StringRecipe().utterances() == utts and StringRecipe(seed=1).utterances() != utts
    assert StringRecipe().key() != StringRecipe(strings=2).key()


@pytest.mark.parametrize("field,value,match", [
    ("strings", 0, "strings a positive integer"), ("max_digits", 0, "max_digits"),
    ("speeds", [150], "speeds a non-empty tuple"), ("min_digits", 8, "min_digits <= max"),
])
def test_string_recipe_errors(field, value, match):
    with pytest.raises(ValueError, match=match):
        StringRecipe(**{field: value})
    with pytest.raises(ValueError, match="neither"):
        StringRecipe(accents=(), flite_voices=())
    with pytest.raises(TypeError, match="StringRecipe"):
        synthesize_strings(speech.DigitRecipe())


@needs_tts
def test_strings_are_synthesized_cached_and_verified(tmp_path, monkeypatch):
    folder, manifest = synthesize_strings(SMALL, tmp_path)
    utts = manifest["utterances"]
    assert folder.name == SMALL.key() and len(utts) == 2 * 3 * 4 + 2 * 2
    assert manifest["format"] == connected.FORMAT and set(manifest["engines"]) == {"espeak-ng",
                                                                                   "flite"}
    for u in utts:
        sig, rate = speech.read_wav(folder / u["file"])
        seconds = len(sig) / rate
        assert 0.25 * len(u["labels"]) < seconds < 0.3 + 0.9 * len(u["labels"]), u
    # one file damaged: only it is made again, to the same bytes
    damaged = folder / utts[3]["file"]
    damaged.write_bytes(damaged.read_bytes()[:100])
    calls = []
    real = subprocess.run
    monkeypatch.setattr(subprocess, "run", lambda cmd, **kw: calls.append(cmd) or real(cmd, **kw))
    assert synthesize_strings(SMALL, tmp_path)[1] == manifest
    made = [c for c in calls if c[0] in ("espeak-ng", "flite") and "--version" not in c]
    assert len(made) == 1 and made[0][-1 if made[0][0] == "espeak-ng" else -3] == utts[3]["text"]
    calls.clear()
    assert synthesize_strings(SMALL, tmp_path)[1] == manifest and not calls


# ---------------------------------------------------------------------- festvox-ru
def test_normalize_russian():
    assert normalize_russian("Она завела, прядь волнистых вол+ос за ухо, - и пошла.") == \
        "она завела прядь волнистых волос за ухо и пошла"
    assert normalize_russian("+Окна; Ионвиль л'Аббеи, кто-то Ёлка!") == \
        "окна ионвиль лаббеи кто то ёлка"
    assert set(normalize_russian("Щука, ЪЫЬ Э Ю Я: ё?")) <= set(RUSSIAN_ALPHABET)


def test_festvox_missing_says_how_to_install(tmp_path):
    with pytest.raises(FileNotFoundError, match="apt-get install -y festvox-ru"):
        load_festvox_ru(tmp_path)


@needs_festvox
def test_festvox_ru_loader_on_the_real_files():
    utts = load_festvox_ru()
    assert len(utts) == 620 and len({u["id"] for u in utts}) == 620
    assert utts[0]["id"] == "ru_0001" and utts[0]["transcript"].startswith(
        "корреспондент американской газеты арчибальд скайлс")
    assert "+" in "".join(u["text"] for u in utts)
    seconds = 0.0
    for u in utts:
        assert u["transcript"] and set(u["transcript"]) <= set(RUSSIAN_ALPHABET)
        assert "  " not in u["transcript"] and u["transcript"] == u["transcript"].strip()
        with wave.open(str(u["wav"]), "rb") as w:
            assert (w.getnchannels(), w.getsampwidth(), w.getframerate()) == (1, 2, 16000)
            seconds += w.getnframes() / 16000
    assert abs(seconds / 60 - 99.5) < 0.1
    assert sum(len(u["transcript"]) for u in utts) == 59718
    assert sum(len(u["transcript"].split()) for u in utts) == 9513
    train, valid, test = split_utterances(len(utts))
    assert (len(train), len(valid), len(test)) == (496, 62, 62)
    assert not (set(train) & set(valid) or set(train) & set(test) or set(valid) & set(test))
    assert sorted(np.concatenate([train, valid, test])) == list(range(620))
    again = split_utterances(len(utts))
    assert all(np.array_equal(a, b) for a, b in zip(again, (train, valid, test)))
    assert not np.array_equal(split_utterances(len(utts), seed=1)[2], test)
    with pytest.raises(ValueError, match="too few"):
        split_utterances(2)


# ---------------------------------------------------------------------- labels, data, scores
def test_labels_and_ctc_data():
    labels = app.russian_labels()
    ids = labels.encode("да нет")
    assert ids.min() >= 1 and labels.classes == 35 and labels.text(ids) == "да нет"
    assert labels.text(labels.encode(" да  ")) == "да"
    digits = app.digit_labels()
    assert digits.classes == 11 and digits.text([4, 2, 2]) == "three one one"
    rng = np.random.default_rng(0)
    feats = [rng.standard_normal((L, 3)).astype(np.float32) for L in (5, 2, 4)]
    data = app.CTCData(feats, [np.array([1, 2]), np.array([3]), np.array([2, 2, 1])],
                       ["a", "b", "c"])
    x, lengths, targets, target_lengths = data.batch([2, 1])
    assert x.shape == (4, 2, 3) and lengths.tolist() == [4, 2]
    assert targets.tolist() == [[2, 2, 1], [3, 0, 0]] and target_lengths.tolist() == [3, 1]
    assert np.array_equal(x[:2, 1], feats[1]) and not x[2:, 1].any()
    # a repeat needs a blank between: 2, 2, 1 takes 4 steps
    assert app.infeasible([3, 4, 1], [[2, 2, 1], [2, 2, 1], [5]]) == [0]


def _levenshtein(a, b):
    d = np.arange(len(b) + 1)
    for i, x in enumerate(a, 1):
        prev, d[0] = d.copy(), i
        for j, y in enumerate(b, 1):
            d[j] = min(prev[j] + 1, d[j - 1] + 1, prev[j - 1] + (x != y))
    return int(d[-1])


@needs_jiwer
def test_error_rates_equal_edit_distances():
    refs = ["three one four", "one", "nine nine two", "да нет"]
    hyps = ["three four", "one one", "", "да нее"]
    r = app.error_rates(refs, hyps)
    words = sum(_levenshtein(a.split(), b.split()) for a, b in zip(refs, hyps))
    chars = sum(_levenshtein(a, b) for a, b in zip(refs, hyps))
    assert r["wer"] == pytest.approx(words / sum(len(a.split()) for a in refs))
    assert r["cer"] == pytest.approx(chars / sum(len(a) for a in refs))
    assert r["string_accuracy"] == 0 and r["words"] == 9
    assert app.error_rates(["one two"], ["one two"])["string_accuracy"] == 1


def test_beam_grammar():
    cfg = app.SpeechConfig()
    digits = app.grammar(cfg, app.digit_labels(), max_digits=3)
    assert digits(()) == tuple(range(1, 11)) and digits((1, 2, 3)) == ()
    labels = app.russian_labels()
    words = app.grammar(app.SpeechConfig(data="russian"), labels)
    space = labels.encode(" ")[0]
    assert space not in words(()) and space in words((5,)) and space not in words((5, space))
    # under the grammar, a frame sequence that says eight digits is read as at most three
    from bptt.ctc import ctc_beam_search
    lp = np.full((16, 1, 11), np.log(0.01))
    for t in range(16):
        lp[t, 0, 1 + (t // 2) % 10 if t % 2 == 0 else 0] = np.log(0.9)
    lp -= np.log(np.exp(lp).sum(-1, keepdims=True))
    best = ctc_beam_search(lp, beam_width=8, next_labels=digits)[0][0][0]
    assert len(best) == 3


def test_config_errors():
    for kwargs, match in (({"data": "english"}, "expected data"),
                          ({"cell": "tanh"}, "expected cell"),
                          ({"limit": 1}, "limit >= 2"), ({"hidden": 0}, "hidden"),
                          ({"dropout": 1.0}, "dropout"), ({"input": "embedding"}, "input"),
                          ({"warps": (0.0,)}, "warps speed factors"),
                          ({"test_voices": ("flite/slt",), "valid_voices": ("flite/slt",)},
                           "both in test and validation")):
        with pytest.raises(ValueError, match=match):
            app.SpeechConfig(**kwargs)
    cfg = app.SpeechConfig(data="russian")
    for k, v in app.PER_DATA["russian"].items():
        assert getattr(cfg, k) == v, k
    assert app.SpeechConfig().warps == () and app.SpeechConfig(warps=[1, 1.5]).warps == (1.0, 1.5)
    assert app.SpeechConfig(hidden=7).hidden == 7


# ---------------------------------------------------------------------- the objective: a reference
@pytest.mark.parametrize("cell,backend", [("gru", "numpy"), ("lstm", "auto")])
def test_ctc_objective_step_equals_torch_autograd(cell, backend):
    """One update's loss and every gradient, against the torch twin of the same model with
    torch's CTC loss and autograd (float64)."""
    torch = pytest.importorskip("torch")
    from bptt.export import to_torch

    rng = np.random.default_rng(3)
    L = [9, 5, 7, 8, 3, 6]
    feats = [rng.standard_normal((n, 4)).astype(np.float32) for n in L]
    targets = [rng.integers(1, 6, int(rng.integers(1, n // 2 + 1))) for n in L]
    data = app.CTCData(feats, targets, ["x"] * len(L))
    model = Model(4, 5, 6, cell=cell, input="linear", embed_size=3, num_layers=2,
                  bidirectional=True, head="step", dtype=np.float64, seed=1, backend=backend)
    objective = app.CTCObjective(data, None, app.digit_labels(), batch=4, seed=2)
    twin = to_torch(model)
    objective._draw()
    idx = objective.batches[0]
    loss, grads, weight, _ = objective.step(model, np.random.default_rng(0))
    assert weight == len(idx)
    x, lengths, tg, tl = data.batch(idx)
    xt = torch.tensor(x, dtype=torch.float64)
    out, _ = twin(xt, None, torch.tensor(lengths))
    lp = torch.log_softmax(out, dim=-1)
    ref = torch.nn.functional.ctc_loss(lp, torch.tensor(tg), torch.tensor(lengths),
                                       torch.tensor(tl), blank=0, reduction="mean")
    ref.backward()
    assert loss == pytest.approx(ref.item(), rel=1e-10)
    for k, p in twin.named_parameters():
        np.testing.assert_allclose(grads[k], p.grad.numpy(), rtol=1e-7, atol=1e-10, err_msg=k)


# ---------------------------------------------------------------------- end to end, small slices
@needs_festvox
@needs_mfcc
@needs_jiwer
def test_a_few_steps_on_a_slice_of_festvox(tmp_path):
    cfg = app.SpeechConfig(data="russian", limit=5, hidden=8, layers=1, epochs=2, batch=2, beam=2)
    assert cfg.warps == (1.1, 1.2)             # two speed-perturbed copies of each
    r = app.run(cfg, tmp_path / "run", cache=tmp_path / "cache", log=lambda s: None)
    assert (r["train"], r["valid"], r["test"]) == (15, 5, 5) and r["steps"] == 2 * 8
    s = r["scores"]["all"]
    assert set(s) == {"greedy", "beam"} and s["greedy"]["utterances"] == 5
    assert 0 < s["greedy"]["cer"] and s["greedy"]["words"] > 20
    saved = json.loads((tmp_path / "run" / "result.json").read_text())
    assert saved["scores"] == r["scores"] and saved["data"]["split"] == [5, 5, 5]
    assert len(list((tmp_path / "cache").glob("features-*.npz"))) == 3
    lines = (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()
    assert [json.loads(s)["epoch"] for s in lines] == [1, 2]
    assert {"valid_cer", "valid_wer", "valid_loss"} <= set(json.loads(lines[-1]))


@needs_tts
@needs_mfcc
@needs_jiwer
def test_a_few_steps_on_synthesized_strings(tmp_path):
    cfg = app.SpeechConfig(hidden=8, layers=1, epochs=2, batch=4, beam=2, flite_warps=(1.2,),
                           test_voices=("espeak/f2", "flite/slt"), valid_voices=("espeak/m1",))
    r = app.run(cfg, tmp_path / "run", recipe=SMALL, cache=tmp_path / "cache",
                log=lambda s: None)
    # training: m3 under two accents (8 strings), kal's 2 strings and their 2 warped copies
    assert (r["train"], r["valid"], r["test"]) == (12, 8, 10)
    assert set(r["scores"]) == {"all", "espeak/f2", "flite/slt", "espeak (all held-out)"}
    assert r["scores"]["flite/slt"]["greedy"]["utterances"] == 2
    assert r["scores"]["espeak (all held-out)"]["beam"]["utterances"] == 8
    # the beam search keeps to the grammar: at most 7 digits
    assert all(len(e["beam"].split()) <= 7 for e in r["examples"])


# ---------------------------------------------------------------------- the commands
def _wav(path, data, rate=16000, channels=1):
    with wave.open(str(path), "wb") as w:
        w.setnchannels(channels)
        w.setsampwidth(2)
        w.setframerate(rate)
        w.writeframes(np.asarray(data, "<i2").tobytes())
    return path


@needs_festvox
@needs_mfcc
@needs_jiwer
def test_train_transcribe_config_and_bad_input(tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("BPTT_CACHE", str(tmp_path / "cache"))
    run = tmp_path / "run"
    toml = tmp_path / "speech.toml"
    toml.write_text('data = "russian"\nlimit = 6\nhidden = 8\nlayers = 9\nbatch = 3\n'
                    'epochs = 1\nbeam = 2\nwarps = [1.1]\n')
    assert cli_main(["train", "speech", "--config", str(toml), "--layers", "1",
                     "--out", str(run)]) == 0
    out = capsys.readouterr().out
    assert "festvox-ru" in out and "GRU 1x8" in out and "WER greedy" in out
    _, meta = checkpoint.load(run / "checkpoint.npz")
    assert meta["command"] == "train speech" and meta["app"]["config"]["layers"] == 1
    assert meta["model"]["num_layers"] == 1 and meta["step"] == 12 // 3
    assert meta["app"]["config"]["warps"] == [1.1]
    # transcribe a recording, the same resampled to 44.1 kHz, and draw the posteriors
    src = load_festvox_ru()[0]["wav"]
    sig, _ = speech.read_wav(src)
    from scipy.signal import resample_poly
    loud = _wav(tmp_path / "44k.wav", np.clip(resample_poly(sig, 441, 160) * 32768, -32768,
                                             32767).astype(np.int16), rate=44100)
    png = tmp_path / "post" / "p.png"
    assert cli_main(["transcribe", str(run), str(src), str(loud), "--posteriors", str(png),
                     "--beam", "3"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert len(lines) == 2 and lines[0].startswith(f"{src}: ")
    assert set(lines[0].split(": ", 1)[1]) <= set(RUSSIAN_ALPHABET)
    assert png.stat().st_size > 0
    results = app.transcribe(run, [src, loud])
    a, b = (r["log_probs"] for r in results)
    assert abs(len(a) - len(b)) <= 1 and a.shape[1] == 35
    assert np.allclose(np.exp(a).sum(1), 1)
    # bad input: one line each
    stereo = _wav(tmp_path / "stereo.wav", np.zeros(3200), channels=2)
    empty = _wav(tmp_path / "empty.wav", [])
    text = tmp_path / "notes.wav"
    text.write_text("not audio")
    fit_run = tmp_path / "fit"
    _supervised_run(fit_run)
    for argv, match in (([run, stereo], "expected mono 16-bit PCM, got 2 channels"),
                        ([run, empty], "holds no audio"),
                        ([run, text], "not a readable WAV file"),
                        ([run, _wav(tmp_path / "short.wav", [1, 2, 3])], "shorter than one"),
                        ([run, tmp_path / "none.wav"], "No such file"),
                        ([fit_run, src], "a run of `bptt fit`, not of `bptt train speech`"),
                        ([tmp_path, src], "no file at"),
                        ([run, src, "--beam", "-1"], "--beam")):
        assert cli_main(["transcribe", *map(str, argv)]) == 1
        err = capsys.readouterr().err
        assert match in err and err.count("\n") == 1, err
    # --resume and a second run refuse, in one line each
    for argv, match in ((["--resume", run, "--hidden", 9], "--hidden 9 (the run has 8)"),
                        (["--resume", run, "--warps", "1.2"], "--warps (1.2,) (the run has"),
                        (["--warps", "fast", "--out", tmp_path / "w"], "--warps: expected"),
                        (["--warps", "0,1", "--out", tmp_path / "w"], "expected warps"),
                        (["--resume", run, "--out", tmp_path / "x"], "stays in its own"),
                        (["--resume", tmp_path / "none"], "no checkpoint in"),
                        (["--resume", fit_run], "a run of `bptt fit`"),
                        (["--config", toml, "--out", run], "already holds a run"),
                        (["--data", "english"], "expected data digits or russian")):
        assert cli_main(["train", "speech", *map(str, argv)]) == 1
        err = capsys.readouterr().err
        assert match in err and err.count("\n") == 1, err
    toml.write_text("hiden = 8\n")
    assert cli_main(["train", "speech", "--config", str(toml), "--out", str(tmp_path / "c")]) == 1
    assert "unknown keys hiden" in capsys.readouterr().err


def _supervised_run(out):
    from bptt.supervised import FitConfig, SequenceData, fit
    rng = np.random.default_rng(0)
    x = rng.standard_normal((4, 6, 2)).astype(np.float32)
    fit(Model(2, 3, 2, cell="gru", input="identity", head="last", seed=0),
        SequenceData(x, rng.integers(0, 2, 6)), None, FitConfig(epochs=1, batch=3), out_dir=out)


# ---------------------------------------------------------------------- killed and resumed
TIMING = {"elapsed_s", "steps_per_s", "window_s", "epoch_s"}
KILLED = """
import os, signal, sys
from bptt import trainer
from bptt.cli import main
updates = 0
train_step = trainer.Trainer.train_step
def killing_step(self):
    global updates
    updates += 1
    if updates > {after}:        # SIGKILL, as from outside: nothing of the process runs after it
        os.kill(os.getpid(), signal.SIGKILL)
    return train_step(self)
trainer.Trainer.train_step = killing_step
sys.exit(main({argv!r}))
"""


@needs_festvox
@needs_mfcc
@needs_jiwer
def test_a_killed_run_resumes_bit_for_bit(tmp_path, capsys, monkeypatch):
    """Killed mid-epoch, two updates past its last checkpoint; --resume continues it to the
    parameters, best parameters, optimizer state, metrics and test scores of an uninterrupted
    run."""
    monkeypatch.setenv("BPTT_CACHE", str(tmp_path / "cache"))
    a, b = tmp_path / "a", tmp_path / "b"
    common = [*TINY, "--epochs", "3", "--checkpoint-every", "3", "--dropout", "0.3"]
    assert cli_main(["train", "speech", *common, "--out", str(a)]) == 0
    assert checkpoint.load(a / "checkpoint.npz")[1]["step"] == 3 * 4
    code = KILLED.format(after=5, argv=["train", "speech", *common, "--out", str(b)])
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          timeout=300, env={**os.environ, "BPTT_CACHE": str(tmp_path / "cache")})
    assert proc.returncode == -signal.SIGKILL, proc.stderr
    arrays_b, meta_b = checkpoint.load(b / "checkpoint.npz")
    assert meta_b["step"] == 3 and not meta_b["finished"]
    capsys.readouterr()
    assert cli_main(["train", "speech", "--resume", str(b), "--beam", "2"]) == 0
    assert "resuming" in capsys.readouterr().out
    arrays_a, meta_a = checkpoint.load(a / "checkpoint.npz")
    arrays_b, meta_b = checkpoint.load(b / "checkpoint.npz")
    assert meta_b["finished"] and meta_b["step"] == meta_a["step"] == 12
    assert set(arrays_a) == set(arrays_b) and any(k.startswith("best/") for k in arrays_a)
    for k in arrays_a:
        assert np.array_equal(arrays_a[k], arrays_b[k]), k
    lines = [[{k: v for k, v in json.loads(s).items() if k not in TIMING}
              for s in (run / "metrics.jsonl").read_text().splitlines()] for run in (a, b)]
    assert lines[0] == lines[1] and len(lines[0]) == 3
    results = [json.loads((run / "result.json").read_text()) for run in (a, b)]
    assert results[0]["scores"] == results[1]["scores"]
    assert results[0]["examples"] == results[1]["examples"]
    # a finished run resumed trains nothing more
    assert cli_main(["train", "speech", "--resume", str(b)]) == 0
    assert checkpoint.load(b / "checkpoint.npz")[1]["step"] == 12


# ---------------------------------------------------------------------- the long runs
@pytest.mark.slow
@needs_tts
@needs_mfcc
@needs_jiwer
def test_connected_digits_on_unseen_voices(tmp_path):
    r = app.run(app.SpeechConfig(), tmp_path)
    assert r["scores"]["espeak (all held-out)"]["beam"]["wer"] <= 0.02
    assert r["scores"]["flite/slt"]["beam"]["wer"] <= 0.10


@pytest.mark.slow
@needs_festvox
@needs_mfcc
@needs_jiwer
def test_russian_beats_the_small_baseline(tmp_path):
    full = app.run(app.SpeechConfig(data="russian"), tmp_path / "full")
    small = app.run(dataclasses.replace(app.SpeechConfig(data="russian"), layers=1,
                                        bidirectional=False, warps=()), tmp_path / "small")
    assert full["scores"]["all"]["greedy"]["cer"] < small["scores"]["all"]["greedy"]["cer"]
