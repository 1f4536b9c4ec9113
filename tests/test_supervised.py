"""The supervised trainer: exact batch gradients, trimming, determinism, early stopping, errors."""

import dataclasses
import json
import zlib

import numpy as np
import pytest
import torch

from bptt.model import Model
from bptt.supervised import (FitConfig, SequenceData, accuracy, confusion_matrix, evaluate, fit,
                             load_model, loss_and_grads, pad_sequences, predict)
from conftest import rel_err
from test_model import TorchTwin


def ragged(seed, n=12, d=3, lo=2, hi=9, classes=3):
    """Variable-length feature sequences with labels that depend on them (a learnable rule)."""
    rng = np.random.default_rng(seed)
    seqs = [rng.standard_normal((rng.integers(lo, hi + 1), d)) for _ in range(n)]
    y = np.array([int(np.argmax(s.mean(axis=0))) % classes for s in seqs])
    x, lengths = pad_sequences(seqs, np.float64)
    return SequenceData(x, y, lengths), seqs


def model64(cell="lstm", head="last", d=3, o=3, **kw):
    return Model(d, 5, o, cell=cell, input="linear", embed_size=4, head=head, dtype=np.float64,
                 seed=zlib.crc32(f"{cell}{head}".encode()), **kw)


# ---------------------------------------------------------------------- data
def test_pad_sequences_round_trip():
    data, seqs = ragged(0)
    assert data.x.shape == (max(len(s) for s in seqs), len(seqs), 3)
    for n, s in enumerate(seqs):
        L = data.lengths[n]
        assert L == len(s)
        assert np.array_equal(data.x[:L, n], s)
        assert not data.x[L:, n].any()
    ids, lengths = pad_sequences([np.array([3, 1]), np.array([2])], np.int64)
    assert ids.tolist() == [[3, 2], [1, 0]] and lengths.tolist() == [2, 1]
    cut, lengths = pad_sequences(seqs, max_len=4)
    assert cut.shape[0] == 4 and lengths.max() == 4 and cut.dtype == np.float32
    assert np.array_equal(cut[:, 0], seqs[0][:4].astype(np.float32))


def test_subset_and_batch_cut_to_longest():
    data, seqs = ragged(1)
    idx = np.array([4, 0, 7])
    sub = data.subset(idx)
    assert len(sub) == 3 and sub.x.shape[0] == max(len(seqs[i]) for i in idx)
    assert np.array_equal(sub.y, data.y[idx])
    mask = np.zeros(len(data), bool)
    mask[[0, 4, 7]] = True
    assert np.array_equal(data.subset(mask).y, data.y[[0, 4, 7]])
    full = SequenceData(data.x, data.y)                # no lengths: nothing to cut
    assert full.batch(idx)[0].shape[0] == data.x.shape[0] and full.batch(idx)[1] is None


# ---------------------------------------------------------------------- exactness
@pytest.mark.parametrize("cell,head,loss", [("lstm", "last", "ce"), ("gru", "mean", "ce"),
                                            ("rnn", "last", "mse")])
def test_batch_gradient_is_mean_of_per_example_gradients(cell, head, loss):
    """The gradient of a padded, variable-length batch equals the mean of the gradients of its
    sequences taken one at a time, each at its own length with no padding at all."""
    data, seqs = ragged(2, n=7)
    if loss == "mse":
        y = np.random.default_rng(3).standard_normal((len(data), 2))
        data = SequenceData(data.x, y, data.lengths)
    m = model64(cell, head, o=2 if loss == "mse" else 3)
    value, grads = loss_and_grads(m, data.x, data.y, data.lengths, loss=loss)
    values, per = [], []
    for n, s in enumerate(seqs):
        v, g = loss_and_grads(m, s[:, None, :], data.y[n:n + 1], None, loss=loss)
        values.append(v)
        per.append(g)
    assert value == pytest.approx(np.mean(values), rel=1e-12)
    for k in grads:
        mean = np.mean([g[k] for g in per], axis=0)
        assert rel_err(grads[k], mean) < 1e-10, k


def test_trimmed_batches_give_the_untrimmed_outputs():
    data, _ = ragged(4, n=10)
    padded = SequenceData(np.concatenate([data.x, np.ones((5,) + data.x.shape[1:])]), data.y,
                          data.lengths)                # 5 extra steps of junk past every end
    for cell in ("lstm", "gru", "rnn"):
        for head in ("last", "mean"):
            m = model64(cell, head)
            full, _, _ = m.forward(padded.x, None, padded.lengths)
            assert rel_err(predict(m, padded, batch=3), full) < 1e-12, (cell, head)
            assert rel_err(predict(m, data, batch=4), full) < 1e-12, (cell, head)


@pytest.mark.parametrize("clip,freeze", [(None, ()), (0.05, ()),
                                         (0.05, ("proj.weight", "head.bias"))])
def test_one_epoch_matches_torch_sgd(clip, freeze):
    """One full-batch epoch of SGD with weight decay (and clipping) is the torch update; frozen
    parameters are those torch leaves out (requires_grad False): no step, no decay, no share of
    the clipped norm."""
    data, _ = ragged(5, n=6)
    m = model64("gru", "last", bidirectional=True)
    twin = TorchTwin(m)
    cfg = FitConfig(epochs=1, batch=len(data), optimizer="sgd", lr=0.3, weight_decay=0.01,
                    clip=clip, freeze=freeze)
    fit(m, data, cfg=cfg)
    for k in freeze:
        twin.get_parameter(k).requires_grad_(False)
    trained = [p for p in twin.parameters() if p.requires_grad]
    logits = twin(torch.tensor(data.x), data.lengths.tolist())
    torch.nn.functional.cross_entropy(logits, torch.tensor(data.y)).backward()
    if clip is not None:
        torch.nn.utils.clip_grad_norm_(trained, clip)
    with torch.no_grad():
        for p in trained:
            p -= 0.3 * (p.grad + 0.01 * p)
    for k, v in twin.state_dict().items():
        assert rel_err(m.params[k], v.numpy()) < 1e-12, k


# ---------------------------------------------------------------------- the loop
def test_same_seed_same_run_other_seed_other_run():
    data, _ = ragged(6, n=20)
    runs = []
    for seed in (0, 0, 1):
        m = model64("lstm", "last", num_layers=2, dropout=0.3)
        res = fit(m, data, data, FitConfig(epochs=3, batch=6, lr=1e-2, seed=seed))
        runs.append((m.state_dict(), res.history))
    (p0, h0), (p1, h1), (p2, h2) = runs
    assert all(np.array_equal(p0[k], p1[k]) for k in p0)
    assert [h["train_loss"] for h in h0] == [h["train_loss"] for h in h1]
    assert not all(np.array_equal(p0[k], p2[k]) for k in p0)


def test_bucketed_epochs_visit_every_sequence_once_with_less_padding(monkeypatch):
    """Each sequence is its own class, so the labels a batch carries name its sequences."""
    import bptt.objectives as sup

    rng = np.random.default_rng(12)
    n = 400
    x, lengths = pad_sequences([np.zeros((L, 1)) for L in rng.integers(1, 60, n)])
    data = SequenceData(x, np.arange(n), lengths)
    seen = {}
    real = sup.loss_and_grads

    def spy(model, x, y, lengths=None, **kw):
        seen.setdefault(bucket, []).append((y.copy(), lengths.max() - lengths.min()))
        return real(model, x, y, lengths, **kw)

    monkeypatch.setattr(sup, "loss_and_grads", spy)
    for bucket in (False, True):
        m = Model(1, 2, n, cell="rnn", input="identity", head="last", seed=0)
        fit(m, data, cfg=FitConfig(epochs=1, batch=4, lr=1e-3, bucket=bucket))
        labels = np.concatenate([y for y, _ in seen[bucket]])
        assert np.array_equal(np.sort(labels), np.arange(n)), bucket
    spread = {b: np.mean([s for _, s in seen[b]]) for b in seen}
    assert spread[True] < 0.2 * spread[False]


def test_early_stopping_restores_the_best_epoch(tmp_path):
    """Validation labels are the training labels flipped, so learning makes the validation score
    worse: the run stops after `patience` bad epochs and ends with the best epoch's weights, the
    weights of a run of exactly that many epochs."""
    data, _ = ragged(7, n=24, classes=2)
    flipped = SequenceData(data.x, 1 - data.y, data.lengths)
    cfg = FitConfig(epochs=40, batch=8, lr=3e-2, patience=3, seed=2)
    m = model64("gru", "last", o=2)
    res = fit(m, data, flipped, cfg, out_dir=tmp_path)
    assert res.stop_reason.startswith("early stop")
    assert len(res.history) == res.best_epoch + 3 < 40
    scores = [(h["valid_metric"], -h["valid_loss"]) for h in res.history]
    assert res.best_epoch == 1 + scores.index(max(scores))
    _, acc = evaluate(m, flipped)
    assert acc == res.history[res.best_epoch - 1]["valid_metric"] == res.best_metric

    again = model64("gru", "last", o=2)
    fit(again, data, None, FitConfig(epochs=res.best_epoch, batch=8, lr=3e-2, seed=2))
    assert all(np.array_equal(m.params[k], again.params[k]) for k in m.params)

    lines = (tmp_path / "metrics.jsonl").read_text().splitlines()
    assert [json.loads(s)["epoch"] for s in lines] == list(range(1, len(res.history) + 1))
    assert (tmp_path / "loss.png").stat().st_size > 0
    loaded, meta = load_model(tmp_path / "checkpoint.npz")
    assert meta["best_epoch"] == res.best_epoch
    assert np.array_equal(predict(loaded, flipped), predict(m, flipped))


def test_an_early_stopped_run_resumed_trains_no_more_unless_patience_grows(tmp_path):
    data, _ = ragged(7, n=24, classes=2)
    flipped = SequenceData(data.x, 1 - data.y, data.lengths)
    cfg = FitConfig(epochs=40, batch=8, lr=3e-2, patience=3, seed=2)
    first = fit(model64("gru", "last", o=2), data, flipped, cfg, out_dir=tmp_path)
    assert first.stop_reason.startswith("early stop")
    m = model64("gru", "last", o=2)
    again = fit(m, data, flipped, cfg, out_dir=tmp_path, resume=True)
    assert again.history == first.history and again.stop_reason == first.stop_reason
    best, _ = load_model(tmp_path)
    assert all(np.array_equal(m.params[k], best.params[k]) for k in m.params)
    more = fit(model64("gru", "last", o=2), data, flipped, dataclasses.replace(cfg, patience=5),
               out_dir=tmp_path, resume=True)
    assert more.history[:len(first.history)] == first.history
    assert len(more.history) > len(first.history) and more.stop_reason.startswith("early stop")


def test_select_loss_keeps_the_epoch_of_least_validation_loss():
    data, _ = ragged(7, n=24, classes=2)
    flipped = SequenceData(data.x, 1 - data.y, data.lengths)
    m = model64("gru", "mean", o=2)
    res = fit(m, data, flipped, FitConfig(epochs=8, batch=8, lr=3e-2, seed=2, select="loss"))
    losses = [h["valid_loss"] for h in res.history]
    assert res.best_epoch == 1 + int(np.argmin(losses))
    assert evaluate(m, flipped)[0] == pytest.approx(min(losses), rel=1e-12)


def test_fit_learns_a_rule_and_token_ids_work():
    """Sequences of token ids labelled by whether token 1 occurs more often than token 2."""
    rng = np.random.default_rng(8)
    seqs = [rng.integers(0, 4, rng.integers(3, 12)) for _ in range(300)]
    y = np.array([int((s == 1).sum() > (s == 2).sum()) for s in seqs])
    x, lengths = pad_sequences(seqs, np.int64)
    data = SequenceData(x, y, lengths)
    train, test = data.subset(np.arange(240)), data.subset(np.arange(240, 300))
    m = Model(4, 16, 2, cell="gru", input="embedding", embed_size=8, head="last", seed=0)
    fit(m, train, cfg=FitConfig(epochs=25, batch=16, lr=1e-2))
    assert accuracy(m, test) >= 0.9
    pred = predict(m, test).argmax(axis=1)
    C = confusion_matrix(test.y, pred, 2)
    assert C.sum() == 60 and np.trace(C) == (pred == test.y).sum()


def test_cosine_schedule_and_mse_targets_run():
    data, _ = ragged(9, n=16)
    y = np.stack([data.x.sum(axis=0)[:, 0], data.lengths / 10.0], axis=1)
    reg = SequenceData(data.x, y, data.lengths)
    m = model64("lstm", "mean", o=2)
    res = fit(m, reg, reg, FitConfig(epochs=4, batch=4, lr=1e-2, loss="mse", schedule="cosine",
                                     warmup=2))
    assert res.history[-1]["lr"] < 1e-2 and res.best_epoch is not None
    assert res.history[-1]["valid_metric"] == res.history[-1]["valid_loss"]


# ---------------------------------------------------------------------- errors at the door
@pytest.mark.parametrize("x,y,lengths,exc,match", [
    (np.zeros((3, 2, 1, 1)), [0, 1], None, ValueError, r"\(T, N, D\)"),
    (np.zeros((3, 2, 1), int), [0, 1], None, TypeError, "of floats"),
    (np.zeros((3, 2)), [0, 1], None, TypeError, "token ids"),
    (np.zeros((0, 2, 1)), [0, 1], None, ValueError, "at least one step"),
    (np.zeros((3, 2, 1)), [0.5, 1.0], None, ValueError, "class labels"),
    (np.zeros((3, 2, 1)), [0, 1, 1], None, ValueError, "N=2"),
    (np.zeros((3, 2, 1)), [0, 1], [1.0, 2.0], TypeError, "lengths as integers"),
    (np.zeros((3, 2, 1)), [0, 1], [1, 2, 3], ValueError, r"shape \(2,\)"),
    (np.zeros((3, 2, 1)), [0, 1], [0, 4], ValueError, r"1\.\.3"),
])
def test_sequence_data_errors(x, y, lengths, exc, match):
    with pytest.raises(exc, match=match):
        SequenceData(x, y, lengths)


def test_subset_and_pad_errors():
    data, _ = ragged(10, n=4)
    with pytest.raises(ValueError, match="boolean mask"):
        data.subset(np.array([True, False]))
    with pytest.raises(TypeError, match="integer indices"):
        data.subset(np.array([0.0]))
    with pytest.raises(ValueError, match="at least one index"):
        data.subset(np.array([], int))
    with pytest.raises(IndexError, match="0..3"):
        data.subset(np.array([4]))
    with pytest.raises(ValueError, match="at least one sequence"):
        pad_sequences([])
    with pytest.raises(ValueError, match="every one"):
        pad_sequences([np.zeros((2, 3)), np.zeros(2)])
    with pytest.raises(ValueError, match="one feature size"):
        pad_sequences([np.zeros((2, 3)), np.zeros((2, 4))])
    with pytest.raises(ValueError, match="is empty"):
        pad_sequences([np.zeros((2, 3)), np.zeros((0, 3))])
    with pytest.raises(ValueError, match="max_len"):
        pad_sequences([np.zeros((2, 3))], max_len=0)


@pytest.mark.parametrize("field,value,match", [
    ("epochs", 0, "epochs"), ("batch", 1.5, "batch"), ("lr", 0, "lr"),
    ("weight_decay", -1.0, "weight_decay"), ("clip", 0.0, "clip"), ("schedule", "linear", "one of"),
    ("warmup", -1, "warmup"), ("patience", 0, "patience"), ("loss", "hinge", "'ce' or 'mse'"),
    ("bucket", 1, "bucket"), ("select", "accuracy", "'metric' or 'loss'"),
    ("freeze", "embedding.weight", "tuple of parameter names"),
])
def test_fit_config_errors(field, value, match):
    with pytest.raises(ValueError, match=match):
        FitConfig(**{field: value})


def test_fit_and_predict_errors():
    data, _ = ragged(11, n=4)
    reg = SequenceData(data.x, np.zeros((4, 3)), data.lengths)
    m = model64()
    cases = [
        (TypeError, "a FitConfig", lambda: fit(m, data, cfg={"epochs": 1})),
        (TypeError, "bptt.model.Model", lambda: fit(object(), data)),
        (ValueError, "head 'last' or 'mean'",
         lambda: fit(model64(head="step"), data)),
        (TypeError, "a SequenceData", lambda: fit(m, (data.x, data.y))),
        (TypeError, "valid a SequenceData", lambda: fit(m, data, (data.x, data.y))),
        (ValueError, r"\(T, N, 5\)", lambda: fit(model64(d=5), data)),
        (ValueError, "token ids",
         lambda: fit(Model(4, 3, 3, input="embedding", head="last"), data)),
        (ValueError, "0..1", lambda: fit(model64(o=2), data)),
        (ValueError, "use loss 'mse'", lambda: fit(m, reg)),
        (ValueError, r"\(N, 3\)", lambda: fit(m, data, cfg=FitConfig(loss="mse"))),
        (ValueError, "batch a positive", lambda: predict(m, data, batch=0)),
        (TypeError, "a SequenceData", lambda: predict(m, data.x)),
        (ValueError, "head 'last' or 'mean'", lambda: predict(model64(head="step"), data)),
        (ValueError, "class labels", lambda: accuracy(m, reg)),
        (ValueError, r"freeze to name parameters of the model, got unknown \['embedding.weight'\]",
         lambda: fit(m, data, cfg=FitConfig(freeze=("embedding.weight", "head.bias")))),
    ]
    for exc, match, call in cases:
        with pytest.raises(exc, match=match):
            call()


def test_load_model_rejects_other_files(tmp_path):
    from bptt import checkpoint

    checkpoint.save(tmp_path / "other.npz", {"a": np.zeros(2)}, {"format": "something-else"})
    with pytest.raises(checkpoint.CheckpointError, match="not a supervised model"):
        load_model(tmp_path / "other.npz")
