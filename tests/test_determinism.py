"""The native backend gives the same bits on every run with the same inputs, seed and thread
counts (OpenMP's and NumPy's OpenBLAS's), as the NumPy reference does.

Across different thread counts the bits may differ (the rows or units each thread takes, the
order of the bias sums, OpenBLAS's blocking of K); that is not promised. What is checked here:
(a) each layer's forward and backward repeated, at sizes that run both thread splits and the
products that the backward runs on its threads, and what those products leave behind (NumPy's
BLAS thread count, hence the bits of the model's own products after them); (b) two same-seed
char-LM trainings in one process; (c) a char-LM run killed and resumed against one never stopped.
"""

import os
import signal
import subprocess
import sys
import threading
import time

import numpy as np
import pytest
from threadpoolctl import threadpool_info, threadpool_limits

import bptt
from bptt import checkpoint
from bptt.cli import main as cli_main

try:
    import bptt.native as native
except ImportError:
    native = None

TEXT = ("Shall I compare thee to a summer's day?\nThou art more lovely and more temperate:\n"
        "Rough winds do shake the darling buds of May,\nAnd summer's lease hath all too short "
        "a date;\n") * 60


@pytest.fixture
def two_threads():
    """The native backend at two threads, OpenMP's and NumPy's OpenBLAS's (as far as the
    machine gives them); skips where the extension was not built, unless the suite requires it
    (``make test`` sets BPTT_REQUIRE_NATIVE=1)."""
    if native is None:
        if os.environ.get("BPTT_REQUIRE_NATIVE") == "1":
            pytest.fail("bptt.native did not import: was it built?")
        pytest.skip("backend 'native' is not available here (the extension was not built)")
    with threadpool_limits(limits=2):
        yield blas_threads()


def blas_threads():
    """NumPy's BLAS thread count now (None where threadpoolctl finds no BLAS)."""
    counts = [i["num_threads"] for i in threadpool_info() if i["user_api"] == "blas"]
    return counts[0] if counts else None


def head_product(rng):
    """A product like the char-LM head's weight gradient, dlogits^T @ features (K = T*B = 488
    rows): OpenBLAS blocks such a K one way on one thread and another on several, so its bits
    show the BLAS thread count it ran at."""
    a = rng.standard_normal((488, 38)).astype(np.float32)
    b = rng.standard_normal((488, 64)).astype(np.float32)
    return lambda: a.T @ b


# (T, B, D, H): T*B = 488 rows; each backward's products (> 2^20 multiply-adds) run in row
# blocks on the native threads; H = 64 is 4 blocks of units (float32), B = 8 rows for 2 threads
SIZES = [(61, 8, 32, 64), (12, 16, 24, 96)]


@pytest.mark.parametrize("split", ["rows", "units"])
@pytest.mark.parametrize("cls", [bptt.LSTM, bptt.GRU, bptt.RNN])
def test_layer_forward_backward_repeats_bit_for_bit(two_threads, monkeypatch, cls, split):
    """The same forward and backward, run again, give the same bits, on both thread splits; and
    NumPy's products after them (the model's head) the same bits as before them: the backward
    leaves NumPy's BLAS at the thread count it found."""
    monkeypatch.setattr(native, "min_work", 0)  # two threads for every step, however small
    native.set_split(split)
    probe = head_product(np.random.default_rng(0))
    before = probe()
    try:
        for T, B, D, H in SIZES:
            layer = cls(D, H, num_layers=2, seed=1, backend="native")
            rng = np.random.default_rng(2)
            x = rng.standard_normal((T, B, D)).astype(np.float32)
            dy = rng.standard_normal((T, B, H)).astype(np.float32)
            lengths = rng.integers(1, T + 1, B)
            lengths[0] = T
            runs, after, threads = [], [], []
            for _ in range(4):
                y, h_n, tape = layer.forward(x, lengths=lengths)
                dx, dh0, grads = layer.backward(dy, tape)
                runs.append([y, dx, *np.atleast_1d(h_n), *np.atleast_1d(dh0),
                             *(grads[k] for k in sorted(grads))])
                after.append(probe())
                threads.append(blas_threads())
            for again in runs[1:]:
                for a, b in zip(runs[0], again):
                    assert np.array_equal(a, b), (cls.__name__, split, (T, B, D, H))
            assert all(np.array_equal(p, before) for p in after), \
                "NumPy's products after a native backward changed bits"
            assert threads == [two_threads] * 4, "a native backward changed BLAS's threads"
    finally:
        native.set_split("auto")


def test_backwards_in_several_threads_leave_blas_threads_alone(two_threads):
    """Python threads running native backwards at once: NumPy's BLAS is back at its thread
    count when they are done (the first to come holds it at one, the last to go puts it back)."""
    layer = bptt.LSTM(32, 64, seed=1, backend="native")
    rng = np.random.default_rng(3)
    x = rng.standard_normal((61, 8, 32)).astype(np.float32)
    dy = rng.standard_normal((61, 8, 64)).astype(np.float32)
    errors = []

    def work():
        try:
            for _ in range(5):
                y, _, tape = layer.forward(x)
                layer.backward(dy, tape)
        except BaseException as e:  # noqa: BLE001 (reported below)
            errors.append(e)

    threads = [threading.Thread(target=work) for _ in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors, errors
    assert blas_threads() == two_threads


def charlm_args(data, out, steps, *extra):
    # k1 * batch = 488 rows in the head's weight gradient, whose bits depend on BLAS's threads
    return ["train", "charlm", "--data", data, "--hidden", 64, "--layers", 1, "--embed", 16,
            "--k1", 61, "--batch", 8, "--seed", 3, "--backend", "native", "--eval-every", 10000,
            "--log-every", 10000, "--steps", steps, "--out", out, *extra]


def run_cli(*argv):
    return cli_main([str(a) for a in argv])


def trained(run_dir):
    """The checkpoint's arrays: the model's parameters and the optimizer's state."""
    arrays, _ = checkpoint.load(os.path.join(run_dir, "checkpoint.npz"))
    return arrays


def test_two_same_seed_charlm_runs_end_bit_for_bit(two_threads, tmp_path):
    """Two same-seed trainings, one after the other in one process, end with the same bits."""
    data = tmp_path / "corpus.txt"
    data.write_text(TEXT)
    threads = []
    for run in ("a", "b"):
        assert run_cli(*charlm_args(data, tmp_path / run, 200)) == 0
        threads.append(blas_threads())
    a, b = trained(tmp_path / "a"), trained(tmp_path / "b")
    assert sorted(a) == sorted(b) and any(k.startswith("model/") for k in a)
    differ = [k for k in a if not np.array_equal(a[k], b[k])]
    assert not differ, f"{len(differ)} of {len(a)} arrays differ: {differ[:5]}"
    assert threads == [two_threads] * 2


def test_killed_and_resumed_charlm_run_ends_bit_for_bit(two_threads, tmp_path):
    """A native run killed (SIGKILL) mid-way and resumed with --resume ends with the bits of a
    run never stopped."""
    data = tmp_path / "corpus.txt"
    data.write_text(TEXT)
    steps = 150
    assert run_cli(*charlm_args(data, tmp_path / "a", steps)) == 0
    cmd = [sys.executable, "-m", "bptt.cli",
           *map(str, charlm_args(data, tmp_path / "b", steps, "--checkpoint-every", 1))]
    env = dict(os.environ, OMP_NUM_THREADS="2", OPENBLAS_NUM_THREADS="2")
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=env)
    ckpt = tmp_path / "b" / "checkpoint.npz"
    deadline = time.time() + 120
    try:
        while time.time() < deadline and proc.poll() is None:
            if ckpt.exists():
                _, meta = checkpoint.load(ckpt)
                if meta["step"] >= 20:
                    break
            time.sleep(0.02)
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait()
    _, meta = checkpoint.load(ckpt)  # whatever the kill interrupted, this loads
    assert 20 <= meta["step"] < steps, "the kill should land mid-run"
    assert run_cli("train", "charlm", "--resume", tmp_path / "b", "--steps", steps) == 0
    a, b = trained(tmp_path / "a"), trained(ckpt.parent)
    assert checkpoint.load(ckpt)[1]["step"] == steps
    differ = [k for k in a if not np.array_equal(a[k], b[k])]
    assert not differ, f"{len(differ)} of {len(a)} arrays differ: {differ[:5]}"
