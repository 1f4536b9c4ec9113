"""Runs of the one trainer as a user meets them: killed at a random moment and resumed (stream,
task and supervised paths), run directories that travel, resumes without surprises."""

import json
import os
import shutil
import signal
import subprocess
import sys
import time

import numpy as np
import pytest

from bptt import checkpoint
from bptt.cli import main as cli_main
from conftest import TIMING

HERE = os.path.dirname(os.path.abspath(__file__))
TEXT = ("To be, or not to be, that is the question:\nWhether 'tis nobler in the mind to suffer\n"
        "The slings and arrows of outrageous fortune,\nOr to take arms against a sea of troubles\n"
        "And by opposing end them. To die: to sleep;\n") * 40


# ---------------------------------------------------------------------- the three trainer paths
def build(kind, out, steps):
    """A small run of each trainer path, checkpointing after every update."""
    if kind == "stream":
        from bptt.apps.charlm import CharLMConfig, prepare
        cfg = CharLMConfig(hidden=12, layers=2, embed=6, k1=5, k2=8, batch=3, steps=steps,
                           eval_every=7, eval_chars=300, checkpoint_every=1, log_every=3,
                           dropout=0.2, seed=5)
        trainer, _ = prepare(cfg, TEXT, out)
        return trainer
    if kind == "task":
        from bptt.apps.tasks import TaskConfig, TaskRun
        cfg = TaskConfig(task="adding", length=8, hidden=8, batch=4, steps=steps, eval_every=7,
                         eval_size=16, checkpoint_every=1, seed=2)
        return TaskRun(cfg, out).trainer
    from bptt.model import Model
    from bptt.objectives import SupervisedObjective
    from bptt.supervised import FitConfig, SequenceData
    from bptt.trainer import Trainer
    rng = np.random.default_rng(0)
    x = rng.standard_normal((9, 40, 3)).astype(np.float32)
    lengths = rng.integers(2, 10, 40)
    y = (x[0, :, 0] > 0).astype(np.int64)
    train, valid = SequenceData(x[:, :30], y[:30], lengths[:30]), \
        SequenceData(x[:, 30:], y[30:], lengths[30:])
    model = Model(3, 6, 2, cell="gru", input="identity", head="last", dropout=0.0, seed=1)
    cfg = FitConfig(epochs=steps // 4, batch=8, lr=1e-2, patience=None, seed=3, bucket=True,
                    checkpoint_every=1)
    objective = SupervisedObjective(train, valid, batch=8, bucket=True, seed=3)
    return Trainer(model, objective, cfg.loop(True), out, seed=3, meta={"command": "fit"})


def _run_child(kind, out, steps):
    code = (f"import sys; sys.path.insert(0, {HERE!r}); import test_runs; "
            f"test_runs.build({kind!r}, {str(out)!r}, {steps}).run()")
    return subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)


def _metrics(path):
    lines = path.read_text().splitlines()
    return [{k: v for k, v in json.loads(s).items() if k not in TIMING} for s in lines]


@pytest.mark.parametrize("kind", ["stream", "task", "supervised"])
def test_killed_at_a_random_moment_resumes_bit_for_bit(kind, tmp_path):
    steps = 40
    straight = build(kind, tmp_path / "a", steps)
    straight.run()
    rng = np.random.default_rng()
    kill_after = int(rng.integers(1, steps - 8))
    proc = _run_child(kind, tmp_path / "b", steps)
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
    resumed = build(kind, tmp_path / "b", steps)
    resumed.restore(*checkpoint.load(ckpt))           # whatever the kill interrupted, it loads
    assert resumed.step < steps, "the kill should land mid-run"
    resumed.run()
    a, meta_a = checkpoint.load(tmp_path / "a" / "checkpoint.npz")
    b, meta_b = checkpoint.load(ckpt)
    assert meta_b["step"] == meta_a["step"]
    assert a.keys() == b.keys()
    for k in a:
        assert np.array_equal(a[k], b[k]), k
    # the logs read as if the run had never stopped
    assert _metrics(tmp_path / "a" / "metrics.jsonl") == _metrics(tmp_path / "b" /
                                                                  "metrics.jsonl")


def test_a_run_killed_before_its_first_update_resumes(tmp_path):
    tr = build("stream", tmp_path, 6)

    def killed(*args, **kwargs):
        raise KeyboardInterrupt
    tr.objective.step = killed
    with pytest.raises(KeyboardInterrupt):
        tr.run()
    _, meta = checkpoint.load(tmp_path / "checkpoint.npz")    # written before the first update
    assert meta["step"] == 0
    again = build("stream", tmp_path, 6)
    again.restore(*checkpoint.load(tmp_path / "checkpoint.npz"))
    assert again.run() == "reached 6 steps"


def test_non_finite_loss_stops_and_keeps_the_last_good_checkpoint(tmp_path):
    tr = build("task", tmp_path, 10)
    real = tr.objective.step
    calls = []

    def poisoned(model, rng):
        loss, grads, w, info = real(model, rng)
        calls.append(1)
        return (float("nan") if len(calls) == 4 else loss), grads, w, info
    tr.objective.step = poisoned
    reason = tr.run()
    assert "the loss is not finite (nan) at step 4" in reason and tr.nonfinite
    _, meta = checkpoint.load(tmp_path / "checkpoint.npz")
    assert meta["step"] == 3                              # the last good state
    # skip: the update is dropped and the run goes on
    tr = build("task", tmp_path / "skip", 10)
    tr.loop.on_nonfinite = "skip"
    calls.clear()
    real = tr.objective.step
    tr.objective.step = poisoned
    assert tr.run() == "reached 10 steps" and tr.skipped == 1


def test_checkpoint_write_failure_names_the_path_and_keeps_the_old_one(tmp_path, monkeypatch):
    tr = build("task", tmp_path, 3)
    tr.run()
    before = (tmp_path / "checkpoint.npz").read_bytes()

    def full_disk(f, **arrays):
        raise OSError(28, "No space left on device")
    monkeypatch.setattr(np, "savez", full_disk)
    with pytest.raises(OSError, match=f"could not write the checkpoint {tmp_path}.*No space "
                                      f"left.*previous checkpoint is intact"):
        tr.save()
    assert (tmp_path / "checkpoint.npz").read_bytes() == before


# ---------------------------------------------------------------------- what a new user hits
def charlm(*argv):
    return cli_main(["train", "charlm", *map(str, argv)])


SMALL = ["--hidden", 8, "--layers", 1, "--embed", 4, "--k1", 5, "--batch", 2,
         "--eval-every", 10, "--eval-chars", 200, "--checkpoint-every", 5]


def test_a_run_directory_travels(tmp_path, monkeypatch, capsys):
    """Trained with a relative --data into a relative --out; used from elsewhere by its path."""
    work = tmp_path / "work"
    work.mkdir()
    (work / "tiny.txt").write_text(TEXT)
    monkeypatch.chdir(work)
    assert charlm("--data", "tiny.txt", "--out", "run", "--steps", 10, *SMALL) == 0
    run = work / "run"
    monkeypatch.chdir("/")
    capsys.readouterr()
    assert cli_main(["sample", str(run), "--length", "15", "--prime", "To"]) == 0
    assert capsys.readouterr().out.startswith("To")
    assert cli_main(["eval", str(run)]) == 0
    assert "test bits per character" in capsys.readouterr().out
    assert charlm("--resume", run, "--steps", 15) == 0
    assert checkpoint.load(run / "checkpoint.npz")[1]["step"] == 15
    # sampling needs only the run directory: the corpus may go
    (work / "tiny.txt").rename(work / "moved.txt")
    assert cli_main(["sample", str(run), "--length", "5"]) == 0
    assert cli_main(["eval", str(run)]) == 1
    assert "give its new place with --data" in capsys.readouterr().err
    assert cli_main(["eval", str(run), "--data", str(work / "moved.txt")]) == 0
    assert charlm("--resume", run, "--steps", 20, "--data", work / "moved.txt") == 0


def test_resuming_a_finished_run_does_nothing(tmp_path, capsys):
    data = tmp_path / "c.txt"
    data.write_text(TEXT)
    out = tmp_path / "run"
    assert charlm("--data", data, "--out", out, "--steps", 20, *SMALL) == 0
    for _ in range(3):
        assert charlm("--resume", out, "--steps", 20) == 0
        assert checkpoint.load(out / "checkpoint.npz")[1]["step"] == 20
    assert capsys.readouterr().out.count("stopped: reached 20 steps") == 4


def test_resume_applies_or_refuses_every_option(tmp_path, capsys):
    data = tmp_path / "c.txt"
    data.write_text(TEXT)
    out = tmp_path / "run"
    assert charlm("--data", data, "--out", out, "--steps", 5, *SMALL) == 0
    capsys.readouterr()
    assert charlm("--resume", out, "--hidden", 16) == 1
    err = capsys.readouterr().err
    assert "only" in err and "--hidden 16 (the run has 8)" in err
    assert charlm("--resume", out, "--out", tmp_path / "elsewhere") == 1
    assert "a resumed run stays in its own directory" in capsys.readouterr().err
    copy = tmp_path / "copy.txt"
    shutil.copy(data, copy)
    assert charlm("--resume", out, "--data", copy, "--steps", 8) == 0   # the same text: taken


def test_changed_data_is_named_in_words(tmp_path, capsys):
    data = tmp_path / "c.txt"
    data.write_text(TEXT)
    out = tmp_path / "run"
    assert charlm("--data", data, "--out", out, "--steps", 5, *SMALL) == 0
    data.write_text(TEXT.replace("q", "Q"))           # one more distinct character
    capsys.readouterr()
    assert charlm("--resume", out, "--steps", 8) == 1
    err = capsys.readouterr().err
    assert "the data file changed since training" in err and "expected shape" not in err


def test_garbage_checkpoint_is_corrupt_and_never_suggests_pickle(tmp_path, capsys):
    run = tmp_path / "run"
    run.mkdir()
    (run / "checkpoint.npz").write_bytes(np.random.default_rng(0).bytes(4000))
    assert cli_main(["sample", str(run)]) == 1
    err = capsys.readouterr().err
    assert "corrupt" in err and "pickle" not in err and err.count("\n") == 1


def test_products_in_the_head_are_two_dimensional():
    """NumPy runs a product with a 3-D operand as a loop or a slow threaded path (100x slower
    seen in `bptt eval`): the model's products go through 2-D views."""
    from bptt.model import Model

    ndims = []

    class Spy(np.ndarray):
        def __array_ufunc__(self, ufunc, method, *inputs, **kwargs):
            if ufunc is np.matmul:
                ndims.append(max(np.ndim(a) for a in inputs))
            plain = [np.asarray(a).view(np.ndarray) if isinstance(a, Spy) else a for a in inputs]
            return getattr(ufunc, method)(*plain, **kwargs)

    for head, inp in (("step", "embedding"), ("step", "linear"), ("mean", "linear")):
        m = Model(5, 4, 3, cell="gru", input=inp, head=head, seed=0)
        for k in ("head.weight", "proj.weight"):
            if k in m.params:
                m.params[k] = m.params[k].view(Spy)
        x = np.ones((6, 2), int) if inp == "embedding" else np.ones((6, 2, 5), np.float32)
        out, _, tape = m.forward(x)
        m.backward(np.ones_like(np.asarray(out)), tape)
        assert ndims and max(ndims) == 2, (head, inp, ndims)
        ndims.clear()


def test_cli_small_things(capsys):
    with pytest.raises(SystemExit) as e:
        cli_main(["--version"])
    assert e.value.code == 0 and capsys.readouterr().out.startswith("bptt ")
    with pytest.raises(ValueError):                   # --traceback after the subcommand works
        cli_main(["train", "charlm", "--clip", "nan", "--traceback"])
    assert cli_main(["train", "charlm", "--clip", "nan"]) == 1
    assert "expected clip > 0, or 0 for off" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        cli_main(["train", "charlm", "--help"])
    text = " ".join(capsys.readouterr().out.split())
    assert "{rnn,lstm,gru}" in text and "(default k1)" in text and "default None" not in text
