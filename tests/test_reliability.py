"""The kill harness (slow): a training run SIGKILLed at 20 random moments, checkpoint writes
included, resumed after each, ends bitwise equal to a run never stopped; for the char-LM and a
supervised application (vowels), on the NumPy and the native backends.

    python -m pytest -m slow -s tests/test_reliability.py     # prints kills survived / tried
"""

import importlib.util
import os
import signal
import subprocess
import sys
import time

import numpy as np
import pytest

from bptt import checkpoint

KILLS = int(os.environ.get("BPTT_KILLS", 20))
NATIVE = importlib.util.find_spec("bptt.native._loops") is not None
TEXT = ("Now is the winter of our discontent\nMade glorious summer by this sun of York;\n"
        "And all the clouds that lour'd upon our house\nIn the deep bosom of the ocean buried.\n"
        ) * 60


def commands(app, out, data, backend):
    if app == "charlm":
        return ["train", "charlm", "--data", str(data), "--out", str(out), "--hidden", "24",
                "--layers", "2", "--embed", "8", "--k1", "8", "--k2", "12", "--batch", "4",
                "--steps", "400", "--eval-every", "50", "--eval-chars", "500",
                "--checkpoint-every", "1", "--log-every", "5", "--dropout", "0.1",
                "--backend", backend]
    return ["train", "vowels", "--out", str(out), "--hidden", "16", "--epochs", "12",
            "--checkpoint-every", "1", "--patience", "100", "--backend", backend]


def _step(ckpt):
    try:
        return checkpoint.load(ckpt)[1]["step"]
    except checkpoint.CheckpointError:
        return -1


def _final_arrays(out):
    """Every array of every checkpoint under ``out`` (a vowels run has one; names relative)."""
    found = {}
    for root, _, files in os.walk(out):
        if "checkpoint.npz" in files:
            arrays, meta = checkpoint.load(os.path.join(root, "checkpoint.npz"))
            rel = os.path.relpath(root, out)
            found.update({f"{rel}:{k}": v for k, v in arrays.items()})
            found[f"{rel}:step"] = np.array(meta["step"])
    return found


def harness(app, backend, tmp_path, kills=KILLS, seed=None):
    """Kill, resume, repeat; return (kills landed, resumes that finished the run equal)."""
    rng = np.random.default_rng(seed)
    data = tmp_path / "text.txt"
    data.write_text(TEXT)
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    straight = tmp_path / "straight"
    subprocess.run([sys.executable, "-m", "bptt", *commands(app, straight, data, backend)],
                   check=True, capture_output=True, env=env)
    out = tmp_path / "killed"
    ckpt = out / "checkpoint.npz"
    landed = 0
    for k in range(kills):
        argv = commands(app, out, data, backend)
        if k > 0:
            argv = [a for a in argv]
            argv += ["--resume", str(out)]
            i = argv.index("--out")
            del argv[i:i + 2]
        start = _step(ckpt) if ckpt.exists() else 0
        target = start + int(rng.integers(1, 12))      # a few updates on, then anywhere
        proc = subprocess.Popen([sys.executable, "-m", "bptt", *argv],
                                stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, env=env)
        while proc.poll() is None and (not ckpt.exists() or _step(ckpt) < target):
            time.sleep(0.002)
        time.sleep(float(rng.uniform(0, 0.02)))        # mid-update or mid-write
        if proc.poll() is None:
            proc.send_signal(signal.SIGKILL)
            landed += 1
        proc.wait()
        if proc.returncode not in (0, -signal.SIGKILL):
            raise AssertionError(f"run {k} failed: {proc.stderr.read().decode()[-2000:]}")
    argv = commands(app, out, data, backend) + ["--resume", str(out)]
    i = argv.index("--out")
    del argv[i:i + 2]
    subprocess.run([sys.executable, "-m", "bptt", *argv], check=True, capture_output=True,
                   env=env)
    a, b = _final_arrays(straight), _final_arrays(out)
    equal = a.keys() == b.keys() and all(np.array_equal(a[k], b[k]) for k in a)
    return landed, equal


@pytest.mark.slow
@pytest.mark.parametrize("backend", ["numpy", pytest.param("native", marks=pytest.mark.skipif(
    not NATIVE, reason="the native extension is not built here"))])
@pytest.mark.parametrize("app", ["charlm", "vowels"])
def test_twenty_kills_and_the_same_bits(app, backend, tmp_path):
    landed, equal = harness(app, backend, tmp_path)
    print(f"\n{app} on {backend}: {landed} kills landed of {KILLS} tried; final checkpoint "
          f"{'bitwise equal' if equal else 'DIFFERENT'}")
    assert landed >= KILLS // 2, "most kills should land mid-run"
    assert equal
