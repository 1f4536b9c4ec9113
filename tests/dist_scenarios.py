"""Small runs that tests/test_distributed.py trains once in one process and once on two ranks
(``python dist_scenarios.py OUT TEXT`` under a torchrun-like environment): the char-LM, a
supervised fit with a short last batch (one rank gets none) and the adding task with uneven
shares. Not collected by pytest (no ``test_`` prefix)."""

import os
import sys

import numpy as np

CHARLM = dict(hidden=16, layers=2, embed=8, k1=8, batch=4, steps=6, eval_every=3,
              eval_chars=300, checkpoint_every=3, log_every=1)


def tiny_text(path):
    """About 20,000 characters of made-up verse, the same every time."""
    rng = np.random.default_rng(0)
    words = "the king queen of and to my lord love death thou art".split()
    lines = [" ".join(rng.choice(words, 8)) for _ in range(600)]
    with open(path, "w") as f:
        f.write("\n".join(lines) + "\n")
    return path


def sequences(n, seed, dtype):
    from bptt.supervised import SequenceData

    rng = np.random.default_rng(seed)
    lengths = rng.integers(3, 13, n)
    x = rng.normal(size=(12, n, 3)).astype(dtype)
    y = (x[0, :, 0] > 0).astype(np.int64) + (x[1, :, 1] > 0)
    return SequenceData(x, y, lengths)


def fit_run(out, dtype):
    from bptt.model import Model
    from bptt.supervised import FitConfig, fit

    model = Model(3, 8, 3, cell="gru", input="identity", head="last", dtype=dtype, seed=0)
    # 33 sequences in batches of 8: the last batch holds one, so rank 1 has none
    cfg = FitConfig(epochs=3, batch=8, lr=1e-2, bucket=True, seed=1)
    return fit(model, sequences(33, 1, dtype), sequences(10, 2, dtype), cfg, out)


def task_run(out, dtype):
    from bptt.apps.tasks import TaskConfig, TaskRun

    # a batch of 5: shares of 3 and 2
    cfg = TaskConfig(task="adding", length=10, hidden=8, batch=5, steps=6, eval_every=3,
                     eval_size=16, dtype=dtype)
    return TaskRun(cfg, out).run()


def run_all(out, text):
    from bptt.apps import charlm

    charlm.run(dict(CHARLM, dtype="float32"), data=text, out=os.path.join(out, "charlm32"),
               log=lambda *a: None)
    for dtype in ("float32", "float64"):
        fit_run(os.path.join(out, f"fit-{dtype}"), dtype)
    task_run(os.path.join(out, "task-float64"), "float64")


def drift_check():
    """On two ranks: parameters that differ are caught by the parameter check."""
    from bptt.distributed import DistributedError, from_env

    comm = from_env()
    try:
        comm.check_params({"w": np.full(3, float(comm.rank))}, 7)
    except DistributedError as e:
        print(f"caught: {e}")


if __name__ == "__main__":
    run_all(sys.argv[1], sys.argv[2])
    drift_check()
