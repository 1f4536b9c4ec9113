"""Data-parallel training on two gloo ranks over 127.0.0.1 against one process with the same
global batch (bptt.distributed, the trainer's hooks, each objective's shard).

Tolerances: float64, parameters within 1e-12 (the ranks' sums are added in another order than
the single process's products over all rows; the runs here differ by about 2e-16); float32,
within 1e-5 absolute after 3-6 Adam updates at lr 2e-3..1e-2 (the gradients differ by float32
rounding, about 1e-7 relative, and Adam's step divides by their running size; observed about
2e-7). The same world size resumes bit for bit.

The ranks are started as torchrun starts them (MASTER_ADDR, MASTER_PORT, RANK, WORLD_SIZE), with
``python -m torch.distributed.run`` for the command line, directly for the kill tests (torchrun
would itself stop the others on one node; across machines it is the ranks' own error that stops
them).
"""

import json
import os
import signal
import socket
import subprocess
import sys
import time

import dist_scenarios as sc
import numpy as np
import pytest

from bptt import checkpoint
from bptt.distributed import shard_bounds
from bptt.objectives import StreamObjective, TaskObjective

try:
    import torch.distributed as dist
    HAVE_GLOO = dist.is_available() and dist.is_gloo_available()
except ImportError:
    HAVE_GLOO = False
needs_gloo = pytest.mark.skipif(not HAVE_GLOO, reason="torch.distributed with gloo is not "
                                                      "available")
HERE = os.path.dirname(os.path.abspath(__file__))
CHARLM_ARGS = ["--hidden", "16", "--layers", "2", "--embed", "8", "--k1", "8", "--batch", "4",
               "--eval-chars", "300", "--log-every", "1"]
LAUNCH_S = 120      # a generous bound for one launch on a busy 2-core machine


# ---------------------------------------------------------------------- launching ranks
def _free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _rank_env(rank, world, port, **extra):
    env = dict(os.environ, MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank),
               LOCAL_RANK=str(rank), WORLD_SIZE=str(world), LOCAL_WORLD_SIZE=str(world),
               OMP_NUM_THREADS="1", PYTHONPATH=HERE)
    env.update(extra)
    return env


def _start(argv, world, cwd, **extra):
    """``world`` ranks of ``python argv``; their output in cwd/rank<r>.log."""
    port = _free_port()
    procs = []
    for r in range(world):
        log = open(os.path.join(cwd, f"rank{r}.log"), "w")
        procs.append(subprocess.Popen([sys.executable, *argv], cwd=cwd, stdout=log,
                                      stderr=subprocess.STDOUT,
                                      env=_rank_env(r, world, port, **extra)))
        log.close()
    return procs


def _wait(procs, timeout=LAUNCH_S):
    try:
        return [p.wait(timeout=timeout) for p in procs]
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
                p.wait()


def _log(cwd, rank):
    with open(os.path.join(cwd, f"rank{rank}.log")) as f:
        return f.read()


def _ranks(argv, world, cwd, **extra):
    codes = _wait(_start(argv, world, cwd, **extra))
    assert codes == [0] * world, [_log(cwd, r)[-2000:] for r in range(world)]


def _single(argv, cwd):
    """One process, no torchrun variables: torch must not even be imported."""
    env = {k: v for k, v in os.environ.items() if k not in ("WORLD_SIZE", "RANK")}
    code = ("import sys, bptt.cli; rc = bptt.cli.main(sys.argv[1:]); "
            "assert 'torch' not in sys.modules, 'torch imported'; sys.exit(rc)")
    r = subprocess.run([sys.executable, "-c", code, *argv], cwd=cwd, env=env,
                       capture_output=True, text=True, timeout=LAUNCH_S,
                       check=False)
    assert r.returncode == 0, r.stderr[-2000:]
    return r


def _load(run_dir):
    return checkpoint.load(os.path.join(run_dir, "checkpoint.npz"))


def _params(run_dir):
    arrays, meta = _load(run_dir)
    return {k: v for k, v in arrays.items() if k.startswith("model/")}, meta


def _max_diff(a, b):
    assert set(a) == set(b)
    return max(float(np.abs(a[k].astype(np.float64) - b[k]).max()) for k in a)


@pytest.fixture(scope="module")
def text(tmp_path_factory):
    return sc.tiny_text(str(tmp_path_factory.mktemp("corpus") / "tiny.txt"))


# ---------------------------------------------------------------------- without processes
def test_shard_bounds_cover_every_item_once():
    for n in range(12):
        for world in range(1, 5):
            parts = [shard_bounds(n, r, world) for r in range(world)]
            assert [p[0] for p in parts] == [0] + [p[1] for p in parts[:-1]]
            assert parts[-1][1] == n
            sizes = [hi - lo for lo, hi in parts]
            assert max(sizes) - min(sizes) <= 1
            assert sizes == [len(a) for a in np.array_split(np.arange(n), world)]


def test_stream_shards_sum_to_the_single_process_gradient():
    """Two StreamObjectives on columns [0, 2) and [2, 4), weighted by their streams, give the
    gradient of one objective over all four (float64, the hand-written backward both ways)."""
    from bptt.data.text import CharStream
    from bptt.model import Model

    ids = np.random.default_rng(0).integers(0, 7, 400)
    model = Model(7, 6, 7, input="embedding", embed_size=4, head="step", dtype="float64",
                  seed=0)
    whole = StreamObjective(model, CharStream(ids, 4, 5))
    parts = [StreamObjective(model, CharStream(ids, 4, 5)) for _ in range(2)]
    for r, p in enumerate(parts):
        p.shard(r, 2)
    for _ in range(3):                           # the carried state too
        loss, grads, w, _ = whole.step(model, None)
        outs = [p.step(model, None) for p in parts]
        assert w == 4 and [o[2] for o in outs] == [2, 2]
        assert abs(sum(o[0] * o[2] for o in outs) / 4 - loss) < 1e-14
        for k in grads:
            mean = sum(o[1][k] * o[2] for o in outs) / 4
            np.testing.assert_allclose(mean, grads[k], rtol=0, atol=1e-14)
    arrays = StreamObjective.gather_state([p.state_dict()[0] for p in parts])
    for k, v in whole.state_dict()[0].items():
        np.testing.assert_array_equal(arrays[k], v)


def _shards_agree(make, model, steps=3):
    """Objectives from ``make()``: one whole and two sharded over 2 ranks; the weighted mean of
    the shards' losses and gradients is the whole one's (float64) at every step."""
    whole, parts = make(), [make(), make()]
    for r, p in enumerate(parts):
        p.shard(r, 2)
    empty = 0
    for _ in range(steps):
        loss, grads, w, _ = whole.step(model, None)
        outs = [p.step(model, None) for p in parts]
        assert sum(o[2] for o in outs) == w
        empty += sum(o[2] == 0 for o in outs)
        assert abs(sum(o[0] * o[2] for o in outs) / w - loss) < 1e-12
        for k in grads:
            np.testing.assert_allclose(sum(o[1][k] * o[2] for o in outs) / w, grads[k],
                                       rtol=0, atol=1e-13, err_msg=k)
    return empty


def test_supervised_shards_sum_to_the_whole_batch_even_when_a_rank_gets_none():
    from bptt.model import Model
    from bptt.objectives import SupervisedObjective

    model = Model(3, 5, 3, cell="gru", input="identity", head="last", dtype="float64", seed=0)
    data = sc.sequences(9, 1, np.float64)            # batches of 4, 4 and 1
    empty = _shards_agree(lambda: SupervisedObjective(data, batch=4, bucket=True, seed=3),
                          model)
    assert empty == 1


def test_ctc_shards_sum_to_the_whole_batch():
    speech = pytest.importorskip("bptt.apps.speech")
    from bptt.model import Model

    rng = np.random.default_rng(3)
    L = [9, 5, 7, 8, 3, 6, 7]
    feats = [rng.standard_normal((n, 4)) for n in L]
    targets = [rng.integers(1, 6, int(rng.integers(1, n // 2 + 1))) for n in L]
    data = speech.CTCData(feats, targets, ["x"] * len(L))
    model = Model(4, 5, 6, input="linear", embed_size=3, head="step", dtype=np.float64, seed=1)
    _shards_agree(lambda: speech.CTCObjective(data, None, speech.digit_labels(), batch=3,
                                              seed=2), model)


def test_seq2seq_shards_sum_to_the_whole_batch():
    g2p = pytest.importorskip("bptt.apps.g2p")
    from bptt.seq2seq import Seq2Seq

    rng = np.random.default_rng(4)
    sources = [list(rng.integers(3, 9, int(n))) for n in rng.integers(2, 7, 7)]
    targets = [list(rng.integers(3, 8, int(n))) for n in rng.integers(1, 6, 7)]
    model = Seq2Seq(9, 8, 6, embed_size=4, dtype=np.float64, seed=0)
    _shards_agree(lambda: g2p.Seq2SeqObjective(sources, targets, batch=3, seed=1), model)


def test_a_batch_that_does_not_split_is_refused_at_the_door():
    from bptt.data.tasks import Task
    from bptt.data.text import CharStream
    from bptt.model import Model

    model = Model(7, 6, 7, input="embedding", embed_size=4, head="step", seed=0)
    stream = StreamObjective(model, CharStream(np.arange(300) % 7, 6, 5))
    with pytest.raises(ValueError, match="batch of 6 streams does not split evenly over 4"):
        stream.shard(0, 4)
    with pytest.raises(ValueError, match="batch of 2 sequences cannot give each of 3"):
        TaskObjective(Task("adding", 10), 2, eval_size=4).shard(0, 3)


def test_the_timeout_comes_from_the_environment(monkeypatch):
    from bptt.distributed import DEFAULT_TIMEOUT_S, TIMEOUT_ENV, timeout_from_env

    monkeypatch.delenv(TIMEOUT_ENV, raising=False)
    assert timeout_from_env() == DEFAULT_TIMEOUT_S == 60
    monkeypatch.setenv(TIMEOUT_ENV, "7.5")
    assert timeout_from_env() == 7.5
    for bad in ("0", "-1", "nan", "soon"):
        monkeypatch.setenv(TIMEOUT_ENV, bad)
        with pytest.raises(ValueError, match=f"BPTT_DIST_TIMEOUT: expected seconds > 0, got "
                                             f"'{bad}'"):
            timeout_from_env()


def test_an_objective_without_shard_is_refused_with_a_comm():
    from types import SimpleNamespace

    from bptt.model import Model
    from bptt.trainer import LoopConfig, Trainer

    class Plain:
        epoch = 0

    comm = SimpleNamespace(rank=0, world=2, is_main=True, sum=None)
    model = Model(3, 4, 2, input="identity", head="last", seed=0)
    with pytest.raises(TypeError, match="Plain cannot be split across processes"):
        Trainer(model, Plain(), LoopConfig(steps=1), comm=comm)


# ---------------------------------------------------------------------- two ranks
@needs_gloo
def test_torchrun_charlm_equals_one_process_float64(tmp_path, text):
    """``torchrun --nproc-per-node 2 -m bptt train charlm`` against ``bptt train charlm`` in
    one process (where torch is never imported): the same parameters to 1e-12, the same
    evaluations, only rank 0's files; then resumed in one process, still within 1e-12."""
    args = ["train", "charlm", "--data", text, *CHARLM_ARGS, "--steps", "6", "--eval-every",
            "3", "--checkpoint-every", "3", "--dtype", "float64"]
    _single([*args, "--out", "one"], tmp_path)
    env = dict(os.environ, OMP_NUM_THREADS="1")
    env.pop("WORLD_SIZE", None)
    r = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone",
                        "--nproc-per-node", "2", "-m", "bptt", *args, "--out", "two"],
                       cwd=tmp_path, env=env, capture_output=True, text=True, timeout=LAUNCH_S,
                       check=False)
    assert r.returncode == 0, r.stderr[-3000:]
    assert r.stdout.count("stopped: reached 6 steps") == 1        # rank 0 prints, rank 1 not
    one, meta1 = _params(tmp_path / "one")
    two, meta2 = _params(tmp_path / "two")
    assert _max_diff(one, two) < 1e-12
    assert meta2["ranks"]["world"] == 2 and "ranks" not in meta1
    assert [h["step"] for h in meta1["history"]] == [h["step"] for h in meta2["history"]]
    for a, b in zip(meta1["history"], meta2["history"]):
        for key in ("train_loss", "valid_bpc"):
            assert (a.get(key) is None) == (b.get(key) is None)
            if a.get(key) is not None:
                assert abs(a[key] - b[key]) < 1e-12
    assert sorted(os.listdir(tmp_path / "two")) == ["checkpoint.npz", "loss.png",
                                                    "metrics.jsonl"]
    # another world size: the two ranks' run continues in one process (the streams' states over
    # all B columns, the optimizer, the position) as the one process's own run continues
    for run in ("one", "two"):
        _single(["train", "charlm", "--resume", run, "--steps", "9"], tmp_path)
    one, meta1 = _params(tmp_path / "one")
    two, meta2 = _params(tmp_path / "two")
    assert meta1["step"] == meta2["step"] == 9 and "ranks" not in meta2
    assert _max_diff(one, two) < 1e-12


@needs_gloo
def test_library_runs_on_two_ranks_equal_one_process(tmp_path, text):
    """The char-LM (float32), a supervised fit whose last batch leaves rank 1 nothing (float32
    and float64) and the adding task with shares of 3 and 2 (float64), on two ranks and in this
    process; then ranks whose parameters differ are caught."""
    (tmp_path / "two").mkdir()
    _ranks([os.path.join(HERE, "dist_scenarios.py"), str(tmp_path / "two"), text], 2,
           tmp_path / "two")
    for r in range(2):
        assert f"caught: rank {r} of 2: at step 7 the parameters of rank(s) [1] differ from " \
               f"rank 0's" in _log(tmp_path / "two", r)
    sc.run_all(str(tmp_path / "one"), text)
    for name, tol in (("charlm32", 1e-5), ("fit-float32", 1e-5), ("fit-float64", 1e-12),
                      ("task-float64", 1e-12)):
        one, meta1 = _params(tmp_path / "one" / name)
        two, meta2 = _params(tmp_path / "two" / name)
        assert meta1["step"] == meta2["step"] and meta2["ranks"]["world"] == 2
        assert _max_diff(one, two) < tol, name
        assert len(meta1["history"]) == len(meta2["history"])
        for a, b in zip(meta1["history"], meta2["history"]):
            for key in ("train_loss", "valid_loss", "valid_bpc", "test_loss"):
                if a.get(key) is not None:
                    assert abs(a[key] - b[key]) < 1e3 * tol, (name, key)


def _metrics(run_dir):
    timing = ("steps_per_s", "window_s", "elapsed_s", "tokens_per_s")
    with open(os.path.join(run_dir, "metrics.jsonl")) as f:
        return [{k: v for k, v in json.loads(s).items() if k not in timing} for s in f]


@needs_gloo
def test_a_killed_rank_stops_the_other_and_the_run_resumes_bit_for_bit(tmp_path, text):
    """SIGKILL rank 1 of a char-LM run with dropout: rank 0 exits non-zero with a one-line
    error within the timeout; ``--resume`` on two ranks then ends exactly (every array and
    every dropout generator of each rank) where an uninterrupted run ends."""
    killed = tmp_path / "killed"
    base = ["-m", "bptt", "train", "charlm", "--data", text, *CHARLM_ARGS, "--dropout", "0.2",
            "--eval-every", "4", "--checkpoint-every", "2"]
    procs = _start([*base, "--steps", "100000", "--out", str(killed)], 2, tmp_path,
                   BPTT_DIST_TIMEOUT="20")
    try:
        deadline = time.monotonic() + LAUNCH_S
        while not _metrics_at_least(killed, 5):
            assert time.monotonic() < deadline and procs[0].poll() is None, _log(tmp_path, 0)
            time.sleep(0.01)
        procs[1].send_signal(signal.SIGKILL)
        t0 = time.monotonic()
        code = procs[0].wait(timeout=40)
        waited = time.monotonic() - t0
    finally:
        _wait(procs, 1)
    err = _log(tmp_path, 0).strip().splitlines()[-1]
    assert code == 1 and waited < 25, (code, waited, err)
    assert err.startswith("bptt: error: rank 0 of 2:") and "--resume" in err, err
    _, meta = _load(killed)
    stop = meta["step"] + 4
    (tmp_path / "resume").mkdir()
    _ranks([*base[:4], "--resume", str(killed), "--steps", str(stop)], 2, tmp_path / "resume")
    (tmp_path / "ref").mkdir()
    _ranks([*base, "--steps", str(stop), "--out", str(tmp_path / "whole")], 2, tmp_path / "ref")
    a, ma = _load(killed)
    b, mb = _load(tmp_path / "whole")
    assert ma["step"] == mb["step"] == stop
    assert sorted(a) == sorted(b)
    for k in a:
        np.testing.assert_array_equal(a[k], b[k], err_msg=k)
    assert ma["ranks"] == mb["ranks"] and ma["rng"] == mb["rng"]
    assert ma["ranks"]["rng"][0] != ma["ranks"]["rng"][1]          # each rank its own masks
    assert _metrics(killed) == _metrics(tmp_path / "whole")


def _metrics_at_least(run_dir, step):
    try:
        return any(r["step"] >= step for r in _metrics(run_dir))
    except (OSError, ValueError):
        return False


@needs_gloo
def test_a_hung_rank_times_out(tmp_path, text):
    """A rank that stops answering (SIGSTOP) is given up after BPTT_DIST_TIMEOUT seconds."""
    run = tmp_path / "hung"
    procs = _start(["-m", "bptt", "train", "charlm", "--data", text, *CHARLM_ARGS, "--steps",
                    "100000", "--eval-every", "1000", "--out", str(run)], 2, tmp_path,
                   BPTT_DIST_TIMEOUT="3")
    try:
        deadline = time.monotonic() + LAUNCH_S
        while not _metrics_at_least(run, 3):
            assert time.monotonic() < deadline and procs[0].poll() is None, _log(tmp_path, 0)
            time.sleep(0.01)
        procs[1].send_signal(signal.SIGSTOP)
        t0 = time.monotonic()
        code = procs[0].wait(timeout=60)
        waited = time.monotonic() - t0
    finally:
        procs[1].kill()
        _wait(procs, 5)
    err = _log(tmp_path, 0).strip().splitlines()[-1]
    assert code == 1 and 2 < waited < 30, (code, waited, err)
    assert "timeout 3s" in err and "--resume" in err, err
