"""Choose the sentiment defaults on the validation split only.

Each run trains one model (``bptt.apps.sentiment.train_member``) for a setting and a seed and
saves its validation and test probabilities to ``runs/sentiment_sweep/<name>-s<seed>.npz``. This
script prints validation figures only; the test probabilities are read once, for the chosen
default, by ``sentiment_report.py``. Usage::

    OPENBLAS_NUM_THREADS=1 python experiments/sentiment_sweep.py NAME SEEDS [key=value ...]
    python experiments/sentiment_sweep.py NAME 0,1,2 pretrain=word2vec word_dropout=0.25
    python experiments/sentiment_sweep.py NAME 0,1,2 lexicon=inquirer+whissell
    python experiments/sentiment_sweep.py NAME 0,1,2 pretrain_lm=2      # LMs of seed 0 for all

The word2vec and lexicon lines of ``app.initial_embeddings`` go to stderr. With ``pretrain_lm``
the two language models are trained once, from ``seed`` (0 unless a ``seed=`` pair says
otherwise), and every listed seed starts from them, as the members of ``bptt train sentiment
--pretrain-lm N --seed S`` do; they are kept on disk like the word2vec vectors.
"""

import dataclasses
import json
import os
import sys
import time
import zlib

import numpy as np

from bptt.apps import sentiment as app

OUT = "runs/sentiment_sweep"


def parse(pairs):
    """``["lr=0.001", "pretrain=word2vec"]`` -> SentimentConfig keyword arguments."""
    kinds = {f.name: str(f.type) for f in dataclasses.fields(app.SentimentConfig)}
    out = {}
    for pair in pairs:
        k, v = pair.split("=")
        kind = kinds[k]
        if v == "None":
            out[k] = None
        elif "bool" in kind:
            out[k] = v == "True"
        elif "int" in kind:
            out[k] = int(v)
        elif "float" in kind:
            out[k] = float(v)
        else:
            out[k] = v
    return out


def _stderr(line):
    print(line, file=sys.stderr, flush=True)


def cached_embeddings(cfg, seed, vocab, tokens, train_idx):
    """``app.initial_embeddings``, kept on disk by its inputs: settings that share the word2vec
    vectors of a seed (most do) skip the 10-15 s of gensim."""
    if cfg.pretrain == "none":             # random (and lexicon) columns: nothing slow to keep
        return app.initial_embeddings(cfg, seed, vocab, tokens, train_idx, log=_stderr)
    key = json.dumps([cfg.pretrain, cfg.pretrain_text, cfg.lexicon, cfg.embed, cfg.embed_init,
                      cfg.min_count, cfg.split_seed, seed, app.WORD2VEC], sort_keys=True)
    path = os.path.join(OUT, "embeddings", f"{zlib.crc32(key.encode()):08x}.npy")
    if os.path.exists(path):
        return np.load(path)
    E = app.initial_embeddings(cfg, seed, vocab, tokens, train_idx, log=_stderr)
    os.makedirs(os.path.dirname(path), exist_ok=True)
    np.save(path, E)
    return E


def cached_language_models(cfg, vocab, tokens, i_train, i_valid):
    """``app.pretrain_language_models`` of the base seed ``cfg.seed``, kept on disk by its inputs
    (a few minutes each)."""
    key = json.dumps([cfg.pretrain_lm, cfg.seed, cfg.hidden, cfg.cell, cfg.bidirectional,
                      cfg.pretrain, cfg.pretrain_text, cfg.lexicon, cfg.embed, cfg.embed_init,
                      cfg.min_count, cfg.split_seed, app.WORD2VEC, app.LM], sort_keys=True)
    path = os.path.join(OUT, "language_models", f"{zlib.crc32(key.encode()):08x}.npz")
    V, E = vocab.size, app.embed_size(cfg)
    if os.path.exists(path):
        arrays = np.load(path)
        models = []
        for d in sorted({k.split("/")[0] for k in arrays}):
            lm = app.Model(V, cfg.hidden, V, cell=cfg.cell, input="embedding", embed_size=E,
                           head="step")
            lm.load_state_dict({k.split("/", 1)[1]: v for k, v in arrays.items()
                                if k.startswith(d + "/")})
            models.append(lm)
        return models[0], (models[1] if len(models) > 1 else None)
    E0 = cached_embeddings(cfg, cfg.seed, vocab, tokens, i_train)
    if E0 is None:
        E0 = app.base_embeddings(cfg, cfg.seed, vocab, tokens, i_train, log=_stderr)
    lms = app.pretrain_language_models(cfg, cfg.seed, vocab,
                                       app.pretraining_texts(tokens, i_train, cfg.pretrain_text),
                                       E0, [tokens[i] for i in i_valid], log=_stderr)
    os.makedirs(os.path.dirname(path), exist_ok=True)
    np.savez(path, **{f"{d}{name}/{k}": v for d, (name, lm) in
                      enumerate(zip(("forward", "backward"), lms)) if lm is not None
                      for k, v in lm.params.items()})
    return lms


def main(name, seeds, *pairs):
    w2v = [p for p in pairs if p.startswith("w2v.")]     # w2v.epochs=30: app.WORD2VEC options
    for pair in w2v:
        k, v = pair[4:].split("=")
        app.WORD2VEC[k] = int(v)
    pairs = [p for p in pairs if p not in w2v]
    cfg = app.SentimentConfig(baseline=False, **parse(pairs))
    app.check_config(cfg)
    parts, vocab, corpus, tokens = app.prepare(cfg)
    (train, i_tr), (valid, i_va), (test, _) = parts["train"], parts["valid"], parts["test"]
    os.makedirs(OUT, exist_ok=True)
    lms = None
    if cfg.pretrain_lm:
        t0 = time.perf_counter()
        lms = cached_language_models(cfg, vocab, tokens, i_tr, i_va)
        _stderr(f"language models of seed {cfg.seed}: {time.perf_counter() - t0:.0f}s")
    for seed in map(int, seeds.split(",")):
        c = dataclasses.replace(cfg, seed=seed)
        t0 = time.perf_counter()
        E = None if lms else cached_embeddings(c, seed, vocab, tokens, i_tr)
        model, result = app.train_member(c, seed, vocab, train, valid, E, language_models=lms)
        pv, pt = app.probabilities(model, valid), app.probabilities(model, test)
        np.savez(os.path.join(OUT, f"{name}-s{seed}.npz"), valid=pv, test=pt)
        row = dict(name=name, seed=seed, valid=float(np.mean(pv.argmax(1) == valid.y)),
                   valid_loss=float(-np.log(pv[np.arange(len(pv)), valid.y]).mean()),
                   best_epoch=result.best_epoch, epochs=len(result.history),
                   curve=[round(h["valid_metric"], 4) for h in result.history],
                   seconds=round(time.perf_counter() - t0), config=dict(pairs=list(pairs) + w2v))
        print(json.dumps(row), flush=True)
        with open(os.path.join(OUT, "valid.jsonl"), "a") as f:
            f.write(json.dumps(row) + "\n")


if __name__ == "__main__":
    main(*sys.argv[1:])
