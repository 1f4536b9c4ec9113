"""Side by side: the same char-LM trained by bptt and by torch.nn.LSTM.

Same initial weights (copied across), same data order (the same CharStream batches), same
optimizer (Adam), same gradient clipping, float32, same thread count. The state is carried from
batch to batch and cut at each batch (k1 = k2, torch's usual "detach" recipe).

    python bench/bench_charlm.py --steps 200            # loss curves and time per step
    python bench/bench_charlm.py --minutes 5 --steps 0  # bits/char each reaches in 5 minutes

Prints the two loss curves' largest relative gap, the time per step of each, and (with --minutes)
the validation and test bits per character reached in the same wall time.
"""

import argparse
import json
import math
import os
import statistics
import time

import numpy as np
import torch
from threadpoolctl import threadpool_info, threadpool_limits

from bptt.clip import clip_grad_norm
from bptt.data.text import CharStream, Vocabulary, load_shakespeare, split_text
from bptt.losses import softmax_cross_entropy
from bptt.optim import Adam
from bptt.apps.charlm import CharLMConfig as TrainConfig, build_model
from bptt.objectives import evaluate_bpc

LN2 = math.log(2.0)


class TorchLM(torch.nn.Module):
    def __init__(self, model):
        super().__init__()
        c = model.config
        self.embedding = torch.nn.Embedding(c["input_size"], model.rnn.input_size)
        self.rnn = torch.nn.LSTM(model.rnn.input_size, c["hidden_size"], c["num_layers"])
        self.head = torch.nn.Linear(c["hidden_size"], c["output_size"])
        self.load_state_dict({k: torch.tensor(v) for k, v in model.state_dict().items()})

    def forward(self, x, state=None):
        y, state = self.rnn(self.embedding(x), state)
        return self.head(y), state


def bptt_runner(model, cfg):
    opt = Adam(model.params, lr=cfg.lr)
    state = [None]

    def step(x, y, reset):
        if reset:
            state[0] = None
        logits, state[0], tape = model.forward(x, state[0])
        loss, dlogits = softmax_cross_entropy(logits, y)
        _, _, grads = model.backward(dlogits, tape)
        clip_grad_norm(grads, cfg.clip)
        opt.step(grads)
        return loss
    return step


def torch_runner(net, cfg):
    opt = torch.optim.Adam(net.parameters(), lr=cfg.lr)
    state = [None]

    def step(x, y, reset):
        if reset:
            state[0] = None
        opt.zero_grad(set_to_none=True)
        logits, s = net(torch.from_numpy(x), state[0])
        state[0] = tuple(t.detach() for t in s)           # cut the graph at the batch boundary
        loss = torch.nn.functional.cross_entropy(logits.reshape(-1, logits.shape[-1]),
                                                 torch.from_numpy(y).reshape(-1))
        loss.backward()
        torch.nn.utils.clip_grad_norm_(net.parameters(), cfg.clip)
        opt.step()
        return loss.item()
    return step


def torch_bpc(net, ids, batch, seq_len):
    stream = CharStream(ids, batch, seq_len)
    state, total, count = None, 0.0, 0
    with torch.inference_mode():
        for k in range(stream.batches_per_epoch):
            x, y, _ = stream.batch_at(k)
            logits, state = net(torch.from_numpy(x), state)
            total += torch.nn.functional.cross_entropy(
                logits.reshape(-1, logits.shape[-1]), torch.from_numpy(y).reshape(-1),
                reduction="sum").item()
            count += y.size
    return total / count / LN2


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--steps", type=int, default=200, help="lock-step updates to compare")
    p.add_argument("--minutes", type=float, default=0.0, help="then train each this long")
    p.add_argument("--hidden", type=int, default=256)
    p.add_argument("--layers", type=int, default=2)
    p.add_argument("--batch", type=int, default=32)
    p.add_argument("--k1", type=int, default=64)
    p.add_argument("--threads", type=int, default=os.cpu_count())
    p.add_argument("--backend", default="numpy", help="bptt's cells: numpy, native, auto")
    p.add_argument("--json", help="write the results here")
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    cfg = TrainConfig(hidden=args.hidden, layers=args.layers, batch=args.batch, k1=args.k1,
                      lr=2e-3, clip=5.0, steps=max(args.steps, 1), backend=args.backend)
    text = load_shakespeare()
    vocab = Vocabulary.from_text(text)
    train, valid, test = (vocab.encode(s) for s in split_text(text))
    blas = [f"{i['internal_api']} {i.get('architecture', '?')}" for i in threadpool_info()
            if i["user_api"] == "blas"]
    print(f"char-LM LSTM {args.layers}x{args.hidden}, embed {cfg.embed}, batch {args.batch}, "
          f"k1=k2={args.k1}, Adam lr {cfg.lr}, clip {cfg.clip}; bptt backend {args.backend}; "
          f"threads {args.threads}; "
          f"BLAS {', '.join(blas)}; torch {torch.__version__}")
    result = {"config": vars(args), "blas": blas}
    with threadpool_limits(args.threads):
        model = build_model(cfg, vocab.size)
        net = TorchLM(model)
        runners = {"bptt": bptt_runner(model, cfg), "torch": torch_runner(net, cfg)}
        if args.steps:
            result["lockstep"] = lockstep(runners, train, args)
        if args.minutes:
            result["same_wall_time"] = same_wall_time(runners, model, net, train, valid, test,
                                                      args)
    if args.json:
        with open(args.json, "w") as f:
            json.dump(result, f, indent=1)


def lockstep(runners, train, args):
    """Both libraries on the same batches, alternating step by step so noise hits both alike."""
    stream = CharStream(train, args.batch, args.k1)
    losses = {k: [] for k in runners}
    times = {k: [] for k in runners}
    for _ in range(args.steps):
        x, y, reset = next(stream)
        for name, step in runners.items():
            t0 = time.perf_counter()
            losses[name].append(step(x, y, reset))
            times[name].append(time.perf_counter() - t0)
    a, b = np.array(losses["bptt"]), np.array(losses["torch"])
    gap = np.abs(a - b) / b
    ms = {k: 1e3 * statistics.median(v[5:]) for k, v in times.items()}
    print(f"step   bptt loss  torch loss  rel. gap")
    for s in sorted({0, 9, 49, 99, 149, args.steps - 1}):
        if s < args.steps:
            print(f"{s + 1:4d}   {a[s]:.5f}    {b[s]:.5f}     {gap[s]:.2e}")
    print(f"largest relative gap over {args.steps} steps: {gap.max():.2e}; "
          f"at step {args.steps}: {gap[-1]:.2e}")
    print(f"median time per step: bptt {ms['bptt']:.1f} ms, torch {ms['torch']:.1f} ms, "
          f"ratio bptt/torch {ms['bptt'] / ms['torch']:.2f}")
    return {"bptt_loss": a.tolist(), "torch_loss": b.tolist(), "max_gap": float(gap.max()),
            "final_gap": float(gap[-1]), "ms_per_step": ms}


def same_wall_time(runners, model, net, train, valid, test, args):
    """Each library trains alone for the same wall time; then bits/char on valid and test."""
    out = {}
    for name, step in runners.items():
        stream = CharStream(train, args.batch, args.k1)
        t_end, n = time.perf_counter() + 60 * args.minutes, 0
        while time.perf_counter() < t_end:
            x, y, reset = next(stream)
            step(x, y, reset)
            n += 1
        if name == "bptt":
            v, t = (evaluate_bpc(model, ids, args.batch, args.k1) for ids in (valid, test))
        else:
            v, t = (torch_bpc(net, ids, args.batch, args.k1) for ids in (valid, test))
        out[name] = {"steps": n, "valid_bpc": v, "test_bpc": t}
        print(f"{name}: {n} steps in {args.minutes} min; valid {v:.3f} bpc, test {t:.3f} bpc")
    return out


if __name__ == "__main__":
    main()
