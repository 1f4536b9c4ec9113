"""A short demonstration: an LSTM learns the adding problem by hand-written BPTT.

The adding problem (Hochreiter & Schmidhuber 1997; Le et al. 2015) is a synthetic task: each input
step is a pair (value in [0, 1], marker); exactly two markers are 1, and the target is the sum of
the two marked values. Predicting the mean (1.0) gives a mean squared error of about 0.167.
Run with ``python -m bptt.demo``.
"""

import time

import numpy as np

from . import LSTM


def adding_batch(rng, T, B):
    values = rng.uniform(0.0, 1.0, (T, B))
    markers = np.zeros((T, B))
    first = rng.integers(0, T // 2, B)
    second = rng.integers(T // 2, T, B)
    markers[first, np.arange(B)] = 1.0
    markers[second, np.arange(B)] = 1.0
    x = np.stack([values, markers], axis=2)
    return x, (values * markers).sum(axis=0)[:, None]


def main(T=30, B=64, H=32, steps=600, lr=1e-2, seed=0):
    rng = np.random.default_rng(seed)
    lstm = LSTM(2, H, dtype=np.float64, seed=seed, forget_bias=1.0)
    W = rng.uniform(-1 / np.sqrt(H), 1 / np.sqrt(H), (1, H))
    b = np.zeros(1)
    params = dict(lstm.params, head_W=W, head_b=b)
    m = {k: np.zeros_like(v) for k, v in params.items()}
    v = {k: np.zeros_like(p) for k, p in params.items()}
    print(f"adding problem, T={T}: LSTM(2, {H}) + linear head, Adam lr={lr}, batch {B}; "
          f"predicting 1.0 scores MSE 0.167")
    start = time.perf_counter()
    for step in range(1, steps + 1):
        x, target = adding_batch(rng, T, B)
        y, _, tape = lstm.forward(x)
        pred = y[-1] @ W.T + b                      # (B, 1), from the last step
        err = pred - target
        loss = float(np.mean(err ** 2))
        dpred = 2 * err / B                         # d mean((pred - target)^2)
        grads = {"head_W": dpred.T @ y[-1], "head_b": dpred.sum(axis=0)}
        dy = np.zeros_like(y)
        dy[-1] = dpred @ W
        _, _, g = lstm.backward(dy, tape)
        grads.update(g)
        for k, p in params.items():                 # Adam (Kingma & Ba 2015)
            m[k] = 0.9 * m[k] + 0.1 * grads[k]
            v[k] = 0.999 * v[k] + 0.001 * grads[k] ** 2
            p -= lr * (m[k] / (1 - 0.9 ** step)) / (np.sqrt(v[k] / (1 - 0.999 ** step)) + 1e-8)
        if step == 1 or step % 50 == 0:
            print(f"step {step:4d}  mse {loss:.4f}  ({time.perf_counter() - start:.1f}s)")
    x, target = adding_batch(np.random.default_rng(seed + 1), T, 1000)
    y, _, _ = lstm.forward(x)
    mse = float(np.mean((y[-1] @ W.T + b - target) ** 2))
    print(f"held-out MSE on 1000 new sequences: {mse:.4f} (baseline 0.167)")
    return mse


if __name__ == "__main__":
    main()
