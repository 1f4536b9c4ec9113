"""One training step of a G2P-sized attentional encoder-decoder: bptt.Seq2Seq against the same
model in torch (nn.Embedding, nn.LSTM, attention in torch, autograd), float32.

    .venv/bin/python bench/bench_seq2seq.py [--threads N] [--repeats N] [--backend native]
                                            [--layers 1] [--embed 64] [--input-feeding]

A step is forward + loss (masked cross-entropy over the target steps) + backward, with fresh
gradients, on one batch: B = 64 words, source lengths 8..12 letters (vocabulary 30), target
lengths 8..12 phonemes + EOS (vocabulary 70); a bidirectional LSTM encoder of 2 x 128 units,
a tanh bridge, an LSTM decoder of 256 units, Luong's general attention, teacher forcing.
Torch packs the sources (pack_padded_sequence) as bptt's encoder masks them; neither masks
the decoder (the loss does). Both run in this process with the same thread count, their repeats
interleaved; the figures are medians of the repeats, and ratio = torch_time / bptt_time
(> 1: bptt faster).
"""

import argparse
import os
import statistics
import time

import numpy as np
import threadpoolctl
import torch
import torch.nn.functional as F

from bptt.layers import BACKENDS
from bptt.seq2seq import Seq2Seq, sequence_loss


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--threads", type=int, default=os.cpu_count())
    p.add_argument("--repeats", type=int, default=21)
    p.add_argument("--warmup", type=int, default=3)
    p.add_argument("--backend", default="auto", choices=BACKENDS,
                   help="bptt's layers (auto: native where it is built)")
    p.add_argument("--layers", type=int, default=1, help="encoder and decoder layers")
    p.add_argument("--embed", type=int, default=64)
    p.add_argument("--batch", type=int, default=64)
    p.add_argument("--input-feeding", action="store_true")
    p.add_argument("--seed", type=int, default=0)
    return p.parse_args(argv)


class TorchSeq2Seq(torch.nn.Module):
    """The same model in torch; parameter names equal bptt's, so a state dict moves across."""

    def __init__(self, m):
        super().__init__()
        c = m.config
        E, H, He, L = c["embed_size"], c["hidden_size"], c["encoder_hidden_size"], \
            c["encoder_layers"]
        self.input_feeding = c["input_feeding"]
        self.src_embedding = torch.nn.Embedding(c["src_vocab"], E)
        self.encoder = torch.nn.LSTM(E, He, L, bidirectional=True)
        self.bridge = torch.nn.Linear(2 * He, H)
        self.bridge_c = torch.nn.Linear(2 * He, H)
        self.tgt_embedding = torch.nn.Embedding(c["tgt_vocab"], E)
        self.decoder = torch.nn.LSTM(E + (H if self.input_feeding else 0), H, L)
        self.attention = torch.nn.Module()
        self.attention.W_a = torch.nn.Parameter(torch.empty(H, 2 * He))
        self.attention.W_c = torch.nn.Parameter(torch.empty(H, 2 * He + H))
        self.out = torch.nn.Linear(H, c["tgt_vocab"])
        self.load_state_dict({k: torch.from_numpy(v.copy()) for k, v in m.state_dict().items()})

    def bridged(self, linear, s):                    # (2L, B, He) -> (L, B, H)
        L2, B, He = s.shape
        return torch.tanh(linear(s.view(L2 // 2, 2, B, He).transpose(1, 2)
                                 .reshape(L2 // 2, B, 2 * He)))

    def attend(self, q, keys, hs, neg):              # q (B, T, H)
        alpha = torch.softmax(q @ keys.transpose(1, 2) + neg, dim=2)
        return torch.tanh(torch.cat([alpha @ hs, q], dim=2) @ self.attention.W_c.T)

    def forward(self, src, src_lengths, tgt_in):
        S = src.shape[0]
        packed = torch.nn.utils.rnn.pack_padded_sequence(self.src_embedding(src), src_lengths,
                                                         enforce_sorted=False)
        hs, (h_n, c_n) = self.encoder(packed)
        hs, _ = torch.nn.utils.rnn.pad_packed_sequence(hs, total_length=S)
        hs = hs.transpose(0, 1)                                    # (B, S, 2He)
        keys = hs @ self.attention.W_a.T                           # (B, S, H)
        valid = torch.arange(S)[None, :] < src_lengths[:, None]
        neg = torch.zeros(valid.shape).masked_fill(~valid, -torch.inf)[:, None, :]
        state = (self.bridged(self.bridge, h_n), self.bridged(self.bridge_c, c_n))
        emb = self.tgt_embedding(tgt_in)
        if not self.input_feeding:
            y, _ = self.decoder(emb, state)
            hbar = self.attend(y.transpose(0, 1), keys, hs, neg)
        else:
            fed, outs = torch.zeros(emb.shape[1], self.out.in_features), []
            for t in range(emb.shape[0]):
                y, state = self.decoder(torch.cat([emb[t], fed], dim=1)[None], state)
                fed = self.attend(y.transpose(0, 1), keys, hs, neg)[:, 0]
                outs.append(fed)
            hbar = torch.stack(outs, dim=1)
        return self.out(hbar.transpose(0, 1))                     # (T, B, V)


def g2p_batch(m, B, rng):
    """Random words and pronunciations of G2P's lengths, as padded time-major arrays."""
    words = [rng.integers(3, m.src_vocab, rng.integers(8, 13)).tolist() for _ in range(B)]
    prons = [rng.integers(3, m.tgt_vocab, rng.integers(8, 13)).tolist() for _ in range(B)]
    src_len = np.array([len(w) for w in words])
    src = np.zeros((src_len.max(), B), np.int64)
    for b, w in enumerate(words):
        src[:len(w), b] = w
    tgt_in, tgt_out, tgt_len = m.targets(prons)
    return src, src_len, tgt_in, tgt_out, tgt_len


def build(args):
    m = Seq2Seq(30, 70, 256, embed_size=args.embed, cell="lstm", encoder_layers=args.layers,
                decoder_layers=args.layers, attention="general",
                input_feeding=args.input_feeding, dtype=np.float32, seed=args.seed,
                backend=args.backend)
    twin = TorchSeq2Seq(m)
    src, src_len, tgt_in, tgt_out, tgt_len = g2p_batch(m, args.batch,
                                                       np.random.default_rng(args.seed))
    T = tgt_in.shape[0]
    ignore = np.where(np.arange(T)[:, None] < tgt_len[None, :], tgt_out, -100)
    src_t, len_t = torch.from_numpy(src), torch.from_numpy(src_len)
    tgt_in_t, ignore_t = torch.from_numpy(tgt_in), torch.from_numpy(ignore)

    def bptt_step():
        logits, tape = m.forward(src, tgt_in, src_len)
        loss, dlogits = sequence_loss(logits, tgt_out, tgt_len)
        return loss, m.backward(dlogits, tape)

    def torch_step():
        twin.zero_grad(set_to_none=True)
        logits = twin(src_t, len_t, tgt_in_t)
        loss = F.cross_entropy(logits.reshape(-1, logits.shape[2]), ignore_t.reshape(-1),
                               ignore_index=-100)
        loss.backward()
        return loss.item()

    # the same step: equal losses and gradients to float32's precision
    loss_b, grads = bptt_step()
    loss_t = torch_step()
    worst = max(float(np.abs(grads[k] - p.grad.numpy()).max() / np.abs(p.grad.numpy()).max())
                for k, p in twin.named_parameters())
    return m, {"bptt": bptt_step, "torch": torch_step}, (loss_b, loss_t, worst)


def time_interleaved(fns, repeats, warmup):
    for fn in fns.values():
        for _ in range(warmup):
            fn()
    times = {k: [] for k in fns}
    keys = list(fns)
    for r in range(repeats):
        for k in keys if r % 2 == 0 else keys[::-1]:
            t0 = time.perf_counter()
            fns[k]()
            times[k].append((time.perf_counter() - t0) * 1e3)
    return times


def cpu_model():
    with open("/proc/cpuinfo") as f:
        return next((ln.split(":", 1)[1].strip() for ln in f if ln.startswith("model name")), "?")


def main():
    args = parse_args()
    if args.backend in ("auto", "native"):
        try:
            import bptt.native  # noqa: F401 (loads its OpenMP runtime before the limit)
        except ImportError:
            pass
    torch.set_num_threads(args.threads)
    with threadpoolctl.threadpool_limits(args.threads):
        m, fns, (loss_b, loss_t, worst) = build(args)
        layer_backend = type(m.encoder.cell).__name__ if not hasattr(m.encoder.cell, "__name__") \
            else m.encoder.cell.__name__
        times = time_interleaved(fns, args.repeats, args.warmup)
    med = {k: statistics.median(v) for k, v in times.items()}
    paired = statistics.median(t / b for t, b in zip(times["torch"], times["bptt"]))
    print(f"cpu      {cpu_model()} ({os.cpu_count()} logical CPUs), threads {args.threads} "
          f"(torch {torch.get_num_threads()}), torch {torch.__version__}, numpy {np.__version__}")
    print(f"model    {m!r}, embed {args.embed}, encoder 2 x {m.encoder.hidden_size}, "
          f"B={args.batch}, bptt layers: {layer_backend}")
    print(f"check    loss bptt {loss_b:.6f} torch {loss_t:.6f}; worst gradient rel. error "
          f"{worst:.1e} (float32)")
    for k in ("bptt", "torch"):
        v = times[k]
        print(f"{k:<8} median {med[k]:.2f} ms [min {min(v):.2f}, max {max(v):.2f}] over "
              f"{args.repeats} repeats")
    print(f"ratio    torch/bptt = {med['torch'] / med['bptt']:.2f} (medians); paired "
          f"{paired:.2f} (median of each repeat's own ratio)")


if __name__ == "__main__":
    main()
