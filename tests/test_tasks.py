"""The long-range task recipes (baselines, structure, seeding), the task trainer and the
``bptt task`` / ``bptt diagnose`` commands."""

import json
import math
import os

import numpy as np
import pytest

from bptt import checkpoint, diagnostics
from bptt.cli import main as cli_main
from bptt.data.tasks import (COPY_DELIMITER, TASKS, Task, adding_problem, copy_memory,
                             temporal_order)
from bptt.apps.tasks import TaskConfig, TaskRun, build_task_model, load_task_run


def rng(seed=0):
    return np.random.default_rng(seed)


# ---------------------------------------------------------------------- adding
def test_adding_structure_and_target():
    T, B = 40, 500
    x, y = adding_problem(T, B, rng())
    assert x.shape == (T, B, 2) and y.shape == (B, 1)
    values, markers = x[..., 0], x[..., 1]
    assert values.min() >= 0 and values.max() < 1
    assert np.all(markers.sum(axis=0) == 2) and set(np.unique(markers)) == {0.0, 1.0}
    first = markers[: T // 2].argmax(axis=0)
    second = T // 2 + markers[T // 2:].argmax(axis=0)
    assert np.all(markers[: T // 2].sum(axis=0) == 1)            # one marker in each half
    cols = np.arange(B)
    assert np.allclose(y[:, 0], values[first, cols] + values[second, cols])
    assert np.allclose(y[:, 0], (values * markers).sum(axis=0))


def test_adding_constant_one_baseline_mse_is_one_sixth():
    x, y = adding_problem(4, 200_000, rng(1))
    mse = np.mean((y - 1.0) ** 2)
    assert mse == pytest.approx(1 / 6, abs=3e-3)                   # se ~ 0.0005
    assert Task("adding", 50).baseline == pytest.approx(0.1667, abs=1e-4)
    assert Task("adding", 50).threshold == 0.01


def test_adding_markers_cover_each_half():
    T = 10
    x, _ = adding_problem(T, 20_000, rng(2))
    where = np.argwhere(x[..., 1] == 1)[:, 0]
    counts = np.bincount(where, minlength=T)
    assert np.all(counts > 0)                                       # every step can be marked
    assert counts[: T // 2].sum() == counts[T // 2:].sum() == 20_000


# ---------------------------------------------------------------------- copy
def test_copy_structure():
    T, B = 15, 64
    x, y = copy_memory(T, B, rng())
    assert x.shape == y.shape == (T + 20, B) and x.dtype.kind == y.dtype.kind == "i"
    assert np.all((x[:10] >= 1) & (x[:10] <= 8))
    assert np.all(x[10:T + 9] == 0) and np.all(x[T + 9] == COPY_DELIMITER)
    assert np.all(x[T + 10:] == 0)
    assert np.all(y[:T + 10] == 0) and np.array_equal(y[T + 10:], x[:10])
    task = Task("copy", T)
    assert task.steps == T + 20 and task.output_size == 9 and y.max() < task.output_size


@pytest.mark.parametrize("T", [1, 10, 100])
def test_copy_memoryless_baseline_is_10_ln8_over_T_plus_20(T):
    """The memoryless strategy, written as logits: blank for T + 10 steps, then uniform over the
    8 symbols; its cross-entropy under the task's loss is the formula."""
    task = Task("copy", T)
    x, y = task.sample(256, rng(3))
    logits = np.full(y.shape + (9,), -np.inf)
    logits[:T + 10, :, 0] = 0.0                    # certain blank
    logits[T + 10:, :, 1:] = 0.0                   # uniform over 1..8
    loss, _ = task.loss(np.where(np.isinf(logits), -1e30, logits), y)
    assert loss == pytest.approx(10 * math.log(8) / (T + 20), rel=1e-12)
    assert task.baseline == pytest.approx(10 * math.log(8) / (T + 20), rel=1e-15)
    assert task.threshold == pytest.approx(0.1 * task.baseline)


def test_copy_symbols_are_uniform_over_8():
    x, _ = copy_memory(1, 20_000, rng(4))
    freq = np.bincount(x[:10].ravel(), minlength=9)[1:] / x[:10].size
    assert np.allclose(freq, 1 / 8, atol=0.005)


# ---------------------------------------------------------------------- temporal order
def test_order_structure_and_label():
    T, B = 100, 4000
    x, y = temporal_order(T, B, rng())
    assert x.shape == (T, B, 8) and y.shape == (B,)
    assert np.all(x.sum(axis=2) == 1)                               # one-hot
    ids = x.argmax(axis=2)
    assert np.all(ids[0] == 4) and np.all(ids[-1] == 5)             # B ... E
    xy = np.argwhere(ids >= 6)
    assert len(xy) == 2 * B
    pos = ids >= 6
    t1 = pos.argmax(axis=0)
    t2 = T - 1 - pos[::-1].argmax(axis=0)
    assert t1.min() == 10 and t1.max() == 20 and t2.min() == 50 and t2.max() == 60  # the paper's
    cols = np.arange(B)
    first, second = ids[t1, cols] - 6, ids[t2, cols] - 6
    assert np.array_equal(y, 2 * first + second)
    others = ids[1:-1][~pos[1:-1]]
    assert others.max() <= 3


def test_order_classes_are_balanced():
    _, y = temporal_order(20, 40_000, rng(5))
    assert np.allclose(np.bincount(y, minlength=4) / y.size, 0.25, atol=0.01)
    assert Task("order", 20).baseline == pytest.approx(math.log(4))


# ---------------------------------------------------------------------- all tasks
@pytest.mark.parametrize("name", list(TASKS))
def test_seeding_gives_identical_data(name):
    task = Task(name, 12)
    a, b, c = (task.sample(8, rng(s)) for s in (7, 7, 8))
    assert all(np.array_equal(p, q) for p, q in zip(a, b))
    assert not np.array_equal(a[0], c[0])


@pytest.mark.parametrize("name", list(TASKS))
def test_task_shapes_fit_its_model_and_loss(name):
    task = Task(name, 12)
    cfg = TaskConfig(task=name, length=12, hidden=8, cell="gru")
    model = build_task_model(cfg)
    x, y = task.sample(5, rng())
    out, _, _ = model.forward(x)
    loss, dout = task.loss(out, y)
    assert dout.shape == out.shape and math.isfinite(loss)
    assert out.shape[-1] == task.output_size
    assert (out.shape[0] == task.steps) == (task.head == "step")


def test_accuracy():
    task = Task("order", 10)
    out = np.eye(4)[[0, 1, 2, 3]]
    assert task.accuracy(out, np.array([0, 1, 2, 0])) == 0.75
    assert Task("adding", 10).accuracy(np.zeros((2, 1)), np.zeros((2, 1))) is None
    copy = Task("copy", 1)
    y = np.zeros((21, 2), np.int64)
    y[-10:] = 3
    out = np.zeros((21, 2, 9))
    out[..., 3] = 1.0
    out[-1, 0, 3] = -1.0                         # one of the 20 recalled symbols wrong
    assert copy.accuracy(out, y) == pytest.approx(19 / 20)


def test_recipe_errors():
    for recipe, low in ((adding_problem, 2), (copy_memory, 1), (temporal_order, 10)):
        with pytest.raises(ValueError, match=f"expected length an integer >= {low}"):
            recipe(low - 1, 4, rng())
        with pytest.raises(ValueError, match="expected length an integer"):
            recipe(True, 4, rng())
        with pytest.raises(ValueError, match="expected batch_size an integer >= 1"):
            recipe(20, 0, rng())
        with pytest.raises(TypeError, match="expected rng a numpy.random.Generator, got int"):
            recipe(20, 4, 0)


def test_task_errors():
    with pytest.raises(ValueError, match="expected one of adding, copy, order, got 'parity'"):
        Task("parity", 10)
    with pytest.raises(ValueError, match="task order: expected length an integer >= 10, got 9"):
        Task("order", 9)
    with pytest.raises(ValueError, match="task adding: expected length an integer >= 2"):
        Task("adding", 5.0)


# ---------------------------------------------------------------------- the trainer
def small(**overrides):
    options = dict(task="adding", length=6, cell="lstm", hidden=8, batch=4, steps=6,
                   eval_every=3, eval_size=16, seed=3)
    options.update(overrides)
    return TaskConfig(**options)


def test_trainer_is_deterministic_and_saves_a_loadable_run(tmp_path):
    a = TaskRun(small(), tmp_path / "a")
    b = TaskRun(small(), tmp_path / "b")
    assert a.run() == b.run() == "reached 6 steps"
    for k in a.model.params:
        assert np.array_equal(a.model.params[k], b.model.params[k])
    model, cfg, meta = load_task_run(tmp_path / "a")
    assert cfg == small() and meta["step"] == 6
    assert all(np.array_equal(model.params[k], a.model.params[k]) for k in model.params)
    lines = (tmp_path / "a" / "metrics.jsonl").read_text().splitlines()
    assert [json.loads(line)["step"] for line in lines] == [3, 6]
    assert not (tmp_path / "a" / "diagnostics.jsonl").exists()


def test_trainer_step_is_model_backward_and_optimizer(tmp_path):
    """One update by hand: loss gradient, model.backward, global-norm clip, Adam."""
    from bptt.clip import clip_grad_norm
    from bptt.optim import Adam

    cfg = small(clip=0.01, lr=0.1)
    trainer = TaskRun(cfg).trainer
    model = build_task_model(cfg)
    opt = Adam(model.params, lr=0.1)
    x, y = Task("adding", 6).sample(4, np.random.default_rng([3, 1]))
    out, _, tape = model.forward(x)
    _, dout = Task("adding", 6).loss(out, y)
    _, _, grads = model.backward(dout, tape)
    assert clip_grad_norm(grads, 0.01).clipped
    opt.step(grads)
    trainer.train_step()
    for k in model.params:
        assert np.array_equal(model.params[k], trainer.model.params[k]), k


def test_trainer_stops_when_solved(tmp_path):
    class Easy(Task):
        threshold = math.inf
    trainer = TaskRun(small(steps=50))
    trainer.objective.task = Easy("adding", 6)
    assert trainer.run() == "solved at step 3"
    assert trainer.outcome()["solved_step"] == 3
    trainer = TaskRun(small(steps=9, stop_when_solved=False))
    trainer.objective.task = Easy("adding", 6)
    assert trainer.run() == "reached 9 steps" and trainer.objective.solved_step == 3


def test_trainer_reports_divergence():
    trainer = TaskRun(small(cell="irnn", length=60, lr=50.0, clip=None, steps=30,
                            dtype="float32"))
    reason = trainer.run()
    assert reason.startswith("diverged") and trainer.trainer.nonfinite
    assert trainer.outcome()["diverged"] is True


def test_trainer_time_budget_on_either_clock():
    for clock in ("wall", "cpu"):
        trainer = TaskRun(small(steps=None, minutes=0.2 / 60, clock=clock, eval_every=1000))
        assert trainer.run() == "reached the time budget of 0.00333333 minutes"
        assert trainer.trainer.elapsed >= 0.2 and len(trainer.history) == 1   # the last evaluation


def test_diagnose_every_records_reports_before_the_update(tmp_path):
    trainer = TaskRun(small(diagnose_every=2, steps=5, eval_every=5), tmp_path)
    trainer.run()
    records = [json.loads(line) for line in
               (tmp_path / "diagnostics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in records] == [0, 2, 4]
    # the record of step 0 is the report of the first training batch on the initial model
    cfg = small()
    model = build_task_model(cfg)
    x, y = Task("adding", 6).sample(4, np.random.default_rng([3, 1]))
    want = diagnostics.diagnose(model, x, lambda out: Task("adding", 6).loss(out, y))
    assert records[0]["lag"] == json.loads(json.dumps(want["lag"]))
    assert records[0]["verdict"] == want["verdict"]
    assert trainer.outcome()["diagnostics_s"] > 0


def test_no_diagnostics_unless_asked(monkeypatch, tmp_path):
    def boom(*args, **kwargs):
        raise AssertionError("diagnostics ran")
    monkeypatch.setattr(diagnostics, "report", boom)
    TaskRun(small(), tmp_path).run()
    with pytest.raises(AssertionError, match="diagnostics ran"):
        TaskRun(small(diagnose_every=3), tmp_path / "d").run()


@pytest.mark.parametrize("overrides, message", [
    ({"task": "parity"}, "expected one of adding, copy, order"),
    ({"cell": "tcn"}, "expected cell one of rnn, irnn, lstm, gru, got 'tcn'"),
    ({"task": "order", "length": 3}, "task order: expected length an integer >= 10"),
    ({"hidden": 0}, "expected hidden a positive integer, got 0"),
    ({"batch": 2.5}, "expected batch a positive integer"),
    ({"steps": 0}, "expected steps a positive integer"),
    ({"diagnose_every": -1}, "expected diagnose_every a positive integer"),
    ({"steps": None}, "give a step budget"),
    ({"lr": 0.0}, "expected lr a positive number"),
    ({"minutes": -1.0}, "expected minutes a positive number"),
    ({"clip": float("inf")}, "expected clip a positive number"),
    ({"dtype": "float16"}, "expected dtype float32 or float64"),
    ({"clock": "gpu"}, "expected clock wall or cpu, got 'gpu'"),
    ({"backend": "cuda"}, "expected backend one of auto, numpy, native, got 'cuda'"),
])
def test_config_errors(overrides, message):
    with pytest.raises(ValueError, match=message):
        small(**overrides)


def test_load_task_run_rejects_other_checkpoints(tmp_path):
    checkpoint.save(tmp_path / "checkpoint.npz", {"a": np.zeros(2)}, {"format": "other"})
    with pytest.raises(ValueError, match="not a run of this version of bptt"):
        load_task_run(tmp_path)


# ---------------------------------------------------------------------- the commands
def test_cli_task_then_diagnose(tmp_path, capsys):
    out = str(tmp_path / "run")
    assert cli_main(["task", "copy", "--length", "3", "--cell", "gru", "--hidden", "8",
                     "--steps", "4", "--eval-every", "2", "--eval-size", "8",
                     "--diagnose-every", "2", "--clip", "0", "--out", out]) == 0
    text = capsys.readouterr().out
    assert "copy T=3 (23 steps): gru 1x8" in text and "clip off" in text
    assert "stopped: reached 4 steps" in text
    _, cfg, _ = load_task_run(out)
    assert cfg.clip is None and cfg.task == "copy"
    assert cli_main(["diagnose", out, "--batch", "5"]) == 0
    text = capsys.readouterr().out
    rep = json.loads(open(os.path.join(out, "diagnostics.json")).read())
    assert rep["B"] == 5 and rep["T"] == 23 and rep["lag"]["t"] == 22
    assert f"verdict: {rep['verdict']['line']}" in text
    assert [r["step"] for r in rep["training"]] == [0, 2]
    for name in ("lag.png", "heatmap.png"):
        assert os.path.getsize(os.path.join(out, name)) > 1000


def test_cli_task_time_budget_alone(tmp_path, capsys):
    assert cli_main(["task", "adding", "--length", "5", "--hidden", "4", "--minutes", "0.002",
                     "--eval-every", "1000", "--quiet", "--out", str(tmp_path)]) == 0
    assert "reached the time budget" in capsys.readouterr().out


@pytest.mark.parametrize("argv, message", [
    (["task", "adding", "--length", "1"], "task adding: expected length an integer >= 2"),
    (["task", "adding", "--clip", "-1"], "expected clip a positive number, got -1.0 (0: off)"),
    (["task", "adding", "--cell", "tcn"], "expected cell one of"),
    (["diagnose", "RUN", "--batch", "0"], "expected --batch a positive integer, got 0"),
    (["diagnose", "NOWHERE"], "checkpoint: no file at"),
])
def test_cli_errors_are_one_line(argv, message, tmp_path, capsys):
    argv = [str(tmp_path) if a == "RUN" else str(tmp_path / "none") if a == "NOWHERE" else a
            for a in argv]
    assert cli_main(argv) == 1
    err = capsys.readouterr().err
    assert err.startswith("bptt: error: ") and message in err and err.count("\n") == 1


def test_cli_rejects_unknown_task_and_options(capsys):
    with pytest.raises(SystemExit):
        cli_main(["task", "parity"])
    with pytest.raises(SystemExit):
        cli_main(["task", "adding", "--bogus", "1"])
    assert "invalid choice" in capsys.readouterr().err
