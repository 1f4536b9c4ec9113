"""What `bptt eval` costs: bits per character of the demo's model (embedding 64, 2x256 LSTM,
head over 80 symbols) on the 249,346 characters of the Shakespeare test split, with the head's
product on a 2-D view (as the model does it) and, for comparison, on the 3-D array of outputs
(NumPy sends a product with a 3-D operand to a loop of small products or a slow threaded path).

    python bench/bench_eval.py [--backend auto] [--repeats 3] [--chars N]

The weights are the model's initial ones: the time does not depend on them.
"""

import argparse
import os
import platform
import time

import numpy as np
from threadpoolctl import threadpool_info

import bptt.model as model_module
from bptt.apps.charlm import CharLMConfig, build_model
from bptt.data.text import Vocabulary, load_shakespeare, split_text
from bptt.objectives import evaluate_bpc


def linear_3d(x, W, b):
    return x @ W.T + b


def cpu_model():
    try:
        with open("/proc/cpuinfo") as f:
            return next(line.split(":", 1)[1].strip() for line in f if "model name" in line)
    except (OSError, StopIteration):
        return platform.processor()


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--backend", default="auto")
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--chars", type=int, default=None, help="only the first N test characters")
    args = p.parse_args()
    text = load_shakespeare()
    vocab = Vocabulary.from_text(text)
    _, _, test = split_text(text)
    ids = vocab.encode(test)[:args.chars]
    cfg = CharLMConfig(backend=args.backend)
    model = build_model(cfg, vocab.size)
    blas = [f"{i['internal_api']} {i.get('architecture', '?')} {i['num_threads']} threads"
            for i in threadpool_info() if i["user_api"] == "blas"]
    env = {k: os.environ.get(k) for k in ("OPENBLAS_CORETYPE", "OPENBLAS_L2_SIZE",
                                          "OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS")}
    print(f"CPU {cpu_model()}; BLAS {', '.join(blas)}; env {env}")
    print(f"{len(ids):,} test characters, LSTM 2x256, backend {model.rnn.backend}, "
          f"batch {cfg.batch}, k1 {cfg.k1}; median of {args.repeats}")
    real = model_module._linear
    for name, linear in (("head on a 2-D view", real), ("head on the 3-D array", linear_3d)):
        model_module._linear = linear
        times, bpc = [], None
        for _ in range(args.repeats):
            t0 = time.perf_counter()
            bpc = evaluate_bpc(model, ids, cfg.batch, cfg.k1)
            times.append(time.perf_counter() - t0)
        print(f"{name:<24} {np.median(times):8.2f} s  (min {min(times):.2f}, max "
              f"{max(times):.2f}); {bpc:.4f} bits per character")
    model_module._linear = real


if __name__ == "__main__":
    main()
