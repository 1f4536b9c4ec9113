"""The char-LM on the one trainer: TBPTT(k1, k2) windows, exact resume, atomic checkpoints, the
CLI."""

import signal
import subprocess
import sys
import time

import numpy as np
import pytest
import torch

from bptt import checkpoint
from bptt.cli import main as cli_main
from bptt.data.text import CharStream, Vocabulary
from bptt.apps.charlm import CharLMConfig as TrainConfig
from bptt.apps.charlm import build_model
from bptt.objectives import StreamObjective
from bptt.trainer import Trainer
from conftest import rel_err
from test_model import TorchTwin

TEXT = ("To be, or not to be, that is the question:\nWhether 'tis nobler in the mind to suffer\n"
        "The slings and arrows of outrageous fortune,\nOr to take arms against a sea of troubles\n"
        "And by opposing end them. To die: to sleep;\n") * 40


def make_trainer(tmp_path, **overrides):
    options = dict(cell="lstm", hidden=12, layers=2, embed=6, k1=5, k2=9, batch=3, steps=12,
                   eval_every=4, eval_chars=300, checkpoint_every=3, log_every=2, dropout=0.2,
                   seed=7)
    options.update(overrides)
    cfg = TrainConfig(**options)
    vocab = Vocabulary.from_text(TEXT)
    ids = vocab.encode(TEXT)
    stream = CharStream(ids[:3000], cfg.batch, cfg.k1)
    model = build_model(cfg, vocab.size)
    objective = StreamObjective(model, stream, cfg.window, ids[3000:], cfg.eval_chars)
    tr = Trainer(model, objective, cfg.loop(), tmp_path, seed=cfg.seed,
                 rng=np.random.default_rng(cfg.seed + 1), meta={"command": "train charlm"})
    tr.cfg, tr.stream = cfg, stream
    return tr


def test_resume_continues_bit_for_bit(tmp_path):
    straight = make_trainer(tmp_path / "a")
    straight.run()
    half = make_trainer(tmp_path / "b", steps=6)
    half.run()                                      # stops at step 6 and checkpoints
    resumed = make_trainer(tmp_path / "b")          # a fresh process would do this
    resumed.restore(*checkpoint.load(tmp_path / "b" / "checkpoint.npz"))
    assert resumed.step == 6
    resumed.run()
    for k, v in straight.model.params.items():
        assert np.array_equal(v, resumed.model.params[k]), k
    s_opt, r_opt = straight.optimizer.state_dict(), resumed.optimizer.state_dict()
    assert all(np.array_equal(s_opt[k], r_opt[k]) for k in s_opt)


def test_window_grads_match_torch_and_state_is_carried(tmp_path):
    """With k2 > k1 each update's gradient is that of the loss on the k1 new steps,
    backpropagated through the k2-step window from the carried state (a constant)."""
    tr = make_trainer(tmp_path, dtype="float64", dropout=0.0, optimizer="sgd", lr=0.0,
                      clip=None, layers=1, k1=4, k2=7)
    captured = []
    tr.optimizer.step = lambda grads: captured.append(grads)
    twin = TorchTwin(tr.model)
    stream_ids = np.concatenate([tr.stream.batch_at(k).x for k in range(4)])   # (4*k1, B)
    targets = np.concatenate([tr.stream.batch_at(k).y for k in range(4)])
    for step in range(4):
        tr.train_step()
    k1, k2 = 4, 7
    end = 4 * k1
    lo = end - k2
    # the state at the window's start, run straight from zero (weights never change: lr = 0)
    with torch.no_grad():
        emb = twin.embedding(torch.tensor(stream_ids[:lo]))
        _, (h, c) = twin.rnn(emb)
    x = torch.tensor(stream_ids[lo:end])
    y, _ = twin.rnn(twin.embedding(x), (h, c))
    logits = twin.head(y)[k2 - k1:]
    loss = torch.nn.functional.cross_entropy(logits.reshape(-1, logits.shape[-1]),
                                             torch.tensor(targets[end - k1:end]).reshape(-1))
    loss.backward()
    for name, p in twin.named_parameters():
        assert rel_err(captured[-1][name], p.grad.numpy()) < 1e-9, name
    with torch.no_grad():
        _, (h_next, _) = twin.rnn(twin.embedding(torch.tensor(stream_ids[:end - (k2 - k1)])))
    assert rel_err(tr.objective.state.h[0], h_next.numpy()) < 1e-12
    assert tr.objective.state.tail.shape == (k2 - k1, 3)


def test_new_pass_resets_state(tmp_path):
    tr = make_trainer(tmp_path)
    per_epoch = tr.stream.batches_per_epoch
    tr.stream.load_state_dict({**tr.stream.state_dict(), "batch": per_epoch - 1})
    tr.train_step()
    assert tr.objective.state.h is not None
    tr.train_step()                                  # first batch of the next pass
    assert tr.objective.state.tail.shape[0] <= tr.cfg.k1   # the history was emptied first


def test_interrupted_save_leaves_previous_checkpoint(tmp_path, monkeypatch):
    tr = make_trainer(tmp_path, steps=3)
    tr.run()
    path = tmp_path / "checkpoint.npz"
    before = path.read_bytes()

    def broken_savez(f, **arrays):
        f.write(b"PK\x03\x04 half a file")
        raise OSError("disk full")

    monkeypatch.setattr(np, "savez", broken_savez)
    tr.train_step()
    with pytest.raises(OSError, match="disk full"):
        tr.save()
    assert path.read_bytes() == before
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".tmp-")] == []


def test_write_text_is_whole_or_not_at_all(tmp_path, monkeypatch):
    path = tmp_path / "sub" / "report.json"
    checkpoint.write_text(path, '{"a": 1}')
    assert path.read_text() == '{"a": 1}'
    checkpoint.write_text(path, '{"a": 2}')                           # replaces
    assert path.read_text() == '{"a": 2}'

    def broken_replace(src, dst):
        raise OSError("killed before the rename")

    monkeypatch.setattr(checkpoint.os, "replace", broken_replace)
    with pytest.raises(OSError, match="killed"):
        checkpoint.write_text(path, '{"a": 3, "longer": true}')
    assert path.read_text() == '{"a": 2}'                             # the old one, whole
    assert [p.name for p in path.parent.iterdir()] == ["report.json"]  # no temporary left


def test_truncated_or_corrupt_checkpoint_is_a_clear_error(tmp_path):
    tr = make_trainer(tmp_path, steps=3)
    tr.run()
    data = (tmp_path / "checkpoint.npz").read_bytes()
    (tmp_path / "cut.npz").write_bytes(data[: len(data) // 2])
    with pytest.raises(checkpoint.CheckpointError, match="truncated or corrupt"):
        checkpoint.load(tmp_path / "cut.npz")
    flipped = bytearray(data)
    flipped[len(data) // 3] ^= 0xFF
    (tmp_path / "flip.npz").write_bytes(bytes(flipped))
    with pytest.raises(checkpoint.CheckpointError):
        checkpoint.load(tmp_path / "flip.npz")
    with pytest.raises(checkpoint.CheckpointError, match="no file"):
        checkpoint.load(tmp_path / "missing.npz")


def test_config_rejects_bad_values():
    with pytest.raises(ValueError, match="k2 an integer >= k1"):
        TrainConfig(k1=10, k2=5)
    with pytest.raises(ValueError, match="step budget"):
        TrainConfig(steps=None, minutes=None)
    with pytest.raises(ValueError, match="clip_mode"):
        TrainConfig(clip_mode="sometimes")
    with pytest.raises(ValueError, match="expected backend one of auto, numpy, native, "
                                         "got 'gpu'"):
        TrainConfig(backend="gpu")


def test_backends_train_the_same_model():
    """A char-LM model's outputs and gradients are the same on every backend (float64)."""
    import importlib
    cfg = dict(hidden=12, layers=2, embed=5, k1=6, batch=3, steps=1, dtype="float64")
    rng = np.random.default_rng(4)
    ids = rng.integers(0, 11, size=(7, 3))
    out = {}
    for backend in ("numpy", "native"):
        if backend != "numpy":
            try:
                importlib.import_module("bptt.native")
            except ImportError:
                continue
        model = build_model(TrainConfig(backend=backend, **cfg), 11)
        logits, _, tape = model.forward(ids[:-1])
        _, _, grads = model.backward(np.cos(logits), tape)  # any upstream gradient will do
        out[backend] = (logits.sum(), grads)
    ref_loss, ref = out.pop("numpy")
    assert out, "no compiled backend here to compare"
    for loss, grads in out.values():
        assert abs(loss - ref_loss) < 1e-12
        for k in ref:
            assert np.abs(grads[k] - ref[k]).max() <= 1e-11 * max(1.0, np.abs(ref[k]).max())


# ---------------------------------------------------------------------- the command line
def run_cli(*argv):
    return cli_main([str(a) for a in argv])


def test_cli_train_sample_eval(tmp_path, capsys):
    data = tmp_path / "corpus.txt"
    data.write_text(TEXT)
    out = tmp_path / "run"
    assert run_cli("train", "charlm", "--data", data, "--hidden", 8, "--layers", 1, "--k1", 5,
                   "--batch", 2, "--steps", 4, "--eval-every", 2, "--out", out) == 0
    assert (out / "checkpoint.npz").exists() and (out / "metrics.jsonl").exists()
    assert (out / "loss.png").exists()
    capsys.readouterr()
    assert run_cli("sample", out, "--length", 20, "--prime", "To be") == 0
    sampled = capsys.readouterr().out
    assert sampled.startswith("To be") and len(sampled) == len("To be") + 20 + 1
    assert run_cli("eval", out) == 0
    assert "test bits per character" in capsys.readouterr().out


def test_cli_errors_are_one_line(tmp_path, capsys):
    empty = tmp_path / "empty.txt"
    empty.write_text("")
    assert run_cli("train", "charlm", "--data", empty, "--steps", 1, "--out", tmp_path / "r") == 1
    err = capsys.readouterr().err.strip()
    assert err.startswith("bptt: error:") and "\n" not in err
    toml = tmp_path / "c.toml"
    toml.write_text("hiden = 3\n")
    assert run_cli("train", "charlm", "--config", toml, "--out", tmp_path / "r") == 1
    assert "unknown keys hiden" in capsys.readouterr().err
    assert run_cli("sample", tmp_path / "nowhere") == 1
    assert "no file" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        run_cli("train", "charlm", "--no-such-option")


def test_cli_config_file_and_override(tmp_path):
    data = tmp_path / "corpus.txt"
    data.write_text(TEXT)
    toml = tmp_path / "c.toml"
    toml.write_text(f'data = "{data}"\nhidden = 7\nlayers = 1\nk1 = 5\nbatch = 2\nsteps = 2\n'
                    f'eval-every = 2\ncell = "gru"\n')
    out = tmp_path / "run"
    assert run_cli("train", "charlm", "--config", toml, "--hidden", 9, "--out", out) == 0
    _, meta = checkpoint.load(out / "checkpoint.npz")
    assert meta["app"]["config"]["hidden"] == 9 and meta["app"]["config"]["cell"] == "gru"


def test_kill_and_resume_equals_straight_run(tmp_path):
    """A real SIGKILL mid-run, then --resume: the same parameters as a run never stopped."""
    data = tmp_path / "corpus.txt"
    data.write_text(TEXT * 3)
    common = ["--data", data, "--hidden", 16, "--layers", 1, "--k1", 8, "--k2", 12,
              "--batch", 4, "--eval-every", 1000, "--checkpoint-every", 1, "--seed", 3]
    assert run_cli("train", "charlm", *common, "--steps", 120, "--out", tmp_path / "a") == 0
    cmd = [sys.executable, "-m", "bptt.cli", "train", "charlm", *map(str, common),
           "--steps", "120", "--out", str(tmp_path / "b")]
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    ckpt = tmp_path / "b" / "checkpoint.npz"
    deadline = time.time() + 60
    while time.time() < deadline:
        if ckpt.exists():
            _, meta = checkpoint.load(ckpt)
            if meta["step"] >= 10:
                break
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    _, meta = checkpoint.load(ckpt)              # whatever the kill interrupted, this loads
    assert 10 <= meta["step"] < 120, "the kill should land mid-run"
    assert run_cli("train", "charlm", "--resume", tmp_path / "b", "--steps", 120) == 0
    a, _ = checkpoint.load(tmp_path / "a" / "checkpoint.npz")
    b, meta_b = checkpoint.load(ckpt)
    assert meta_b["step"] == 120
    for k in a:
        if k.startswith("model/"):
            assert np.array_equal(a[k], b[k]), k


def test_epoch_budget_and_early_stopping(tmp_path):
    tr = make_trainer(tmp_path / "e", steps=None, epochs=1, eval_every=1000)
    assert "completed 1 passes" in tr.run()
    assert tr.step == tr.stream.batches_per_epoch and tr.stream.epoch == 1
    # lr = 0: validation never improves, so patience=2 stops at the third evaluation
    tr = make_trainer(tmp_path / "p", optimizer="sgd", lr=0.0, eval_every=2, patience=2,
                      steps=100)
    assert "early stop" in tr.run()
    assert tr.step == 6
