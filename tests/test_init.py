"""Parameter initialisation: PyTorch's uniform default, orthogonal and identity recurrent blocks,
the LSTM forget bias, and seeding."""

import numpy as np
import pytest

import bptt

CLASSES = {"rnn": (bptt.RNN, 1), "lstm": (bptt.LSTM, 4), "gru": (bptt.GRU, 3)}


def make(family, D=5, H=16, L=2, **kw):
    cls, _ = CLASSES[family]
    return cls(D, H, L, bidirectional=True, **kw)


def blocks(w, G, H):
    """The G (H, H) gate blocks of a weight_hh."""
    return [w[k * H:(k + 1) * H] for k in range(G)]


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("family", list(CLASSES))
def test_default_uniform_within_bound(family, dtype):
    """All parameters pooled: N > 5000 values uniform on [-b, b], b = 1/sqrt(H). Both ends are
    reached within 1% of b (a miss has probability (1 - 0.005)^N < 1e-10), and each of 10 equal
    bins holds N/10 within 5 standard deviations (sqrt(N * 0.1 * 0.9))."""
    H = 16
    layer = make(family, D=64, H=H, L=3, dtype=dtype, seed=1)
    b = 1.0 / np.sqrt(H)
    assert all(p.dtype == dtype for p in layer.params.values())
    vals = np.concatenate([p.ravel() for p in layer.params.values()]).astype(np.float64)
    N = vals.size
    assert N > 5_000
    assert np.all(np.abs(vals) <= b * (1 + 1e-6))
    assert vals.max() > 0.99 * b and vals.min() < -0.99 * b
    counts, _ = np.histogram(vals, bins=10, range=(-b, b))
    expect = N / 10
    assert np.all(np.abs(counts - expect) < 5 * np.sqrt(N * 0.1 * 0.9)), counts
    assert abs(vals.mean()) < 5 * b / np.sqrt(3 * N)   # 5 sigma of the mean


@pytest.mark.parametrize("dtype, tol", [(np.float64, 1e-6), (np.float32, 1e-5)])
@pytest.mark.parametrize("family", list(CLASSES))
def test_orthogonal_blocks(family, dtype, tol):
    _, G = CLASSES[family]
    H = 12
    layer = make(family, H=H, dtype=dtype, seed=2, init="orthogonal")
    I = np.eye(H)
    seen = []
    for name, p in layer.params.items():
        assert p.dtype == dtype
        if name.startswith("weight_hh"):
            for W in blocks(p.astype(np.float64), G, H):
                assert np.abs(W @ W.T - I).max() < tol
                assert np.abs(W.T @ W - I).max() < tol
                assert np.abs(W - I).max() > 0.1    # random, not the identity
                seen.append(W)
        else:  # everything else keeps the default uniform init
            assert np.all(np.abs(p) <= 1 / np.sqrt(H) * (1 + 1e-6))
            assert np.abs(p).max() > 0.5 / np.sqrt(H)
    assert len(seen) == G * 4   # 2 layers x 2 directions
    # every block drawn afresh
    for i in range(len(seen)):
        for j in range(i):
            assert np.abs(seen[i] - seen[j]).max() > 0.1


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("family", list(CLASSES))
def test_identity_blocks_zero_biases(family, dtype):
    _, G = CLASSES[family]
    H = 6
    layer = make(family, H=H, dtype=dtype, seed=3, init="identity")
    n_hh = 0
    for name, p in layer.params.items():
        if name.startswith("weight_hh"):
            for W in blocks(p, G, H):
                np.testing.assert_array_equal(W, np.eye(H))
            n_hh += 1
        elif name.startswith("bias"):
            np.testing.assert_array_equal(p, 0)
        else:
            assert np.all(np.abs(p) <= 1 / np.sqrt(H) * (1 + 1e-6))
            assert np.abs(p).max() > 0.5 / np.sqrt(H)
    assert n_hh == 4


@pytest.mark.parametrize("init", ["default", "orthogonal", "identity"])
@pytest.mark.parametrize("value", [1.0, -2.5, 0.0])
def test_forget_bias(value, init):
    H = 5
    layer = bptt.LSTM(3, H, 2, bidirectional=True, dtype=np.float64, seed=4, init=init,
                      forget_bias=value)
    plain = bptt.LSTM(3, H, 2, bidirectional=True, dtype=np.float64, seed=4, init=init)
    suffixes = ["l0", "l0_reverse", "l1", "l1_reverse"]
    for s in suffixes:
        b_ih, b_hh = layer.params[f"bias_ih_{s}"], layer.params[f"bias_hh_{s}"]
        total = b_ih + b_hh
        np.testing.assert_array_equal(total[H:2 * H], value)   # chunk 1 of i, f, g, o
        # the other chunks (i, g, o) are what the same seed gives without forget_bias
        for k in (0, 2, 3):
            chunk = slice(k * H, (k + 1) * H)
            np.testing.assert_array_equal(b_ih[chunk], plain.params[f"bias_ih_{s}"][chunk])
            np.testing.assert_array_equal(b_hh[chunk], plain.params[f"bias_hh_{s}"][chunk])
        np.testing.assert_array_equal(layer.params[f"weight_hh_{s}"],
                                      plain.params[f"weight_hh_{s}"])


def test_forget_bias_float32():
    layer = bptt.LSTM(2, 3, dtype=np.float32, seed=0, forget_bias=1.0)
    total = layer.params["bias_ih_l0"] + layer.params["bias_hh_l0"]
    assert total.dtype == np.float32
    np.testing.assert_array_equal(total[3:6], np.float32(1.0))


@pytest.mark.parametrize("init", ["default", "orthogonal", "identity"])
@pytest.mark.parametrize("family", list(CLASSES))
def test_seeding(family, init):
    a = make(family, H=4, seed=123, init=init)
    b = make(family, H=4, seed=123, init=init)
    c = make(family, H=4, seed=124, init=init)
    sa, sb, sc = a.state_dict(), b.state_dict(), c.state_dict()
    assert list(sa) == list(sb) == list(sc)
    for k in sa:
        np.testing.assert_array_equal(sa[k], sb[k])
    differs = [k for k in sa if not np.array_equal(sa[k], sc[k])]
    if init == "identity":   # weight_hh and the biases are fixed; weight_ih stays random
        assert set(differs) == {k for k in sa if k.startswith("weight_ih")}
    else:
        assert set(differs) == set(sa)
    # the same seed also drives the same dropout masks
    if family == "lstm":
        x = np.random.default_rng(0).standard_normal((3, 2, 5))
        a2 = make(family, H=4, seed=123, init=init, dropout=0.5)
        b2 = make(family, H=4, seed=123, init=init, dropout=0.5)
        ma = a2.forward(x, training=True)[2].dropout_masks[1]
        mb = b2.forward(x, training=True)[2].dropout_masks[1]
        np.testing.assert_array_equal(ma, mb)
