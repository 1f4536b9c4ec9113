"""Bad input is refused at the door with a ValueError or TypeError naming what was expected and
what came."""

import math
import re

import numpy as np
import pytest
import torch

import bptt

T, B, D, H = 5, 2, 3, 4


def rnn(**kw):
    return bptt.RNN(D, H, **kw)


def lstm(**kw):
    return bptt.LSTM(D, H, **kw)


def x_ok():
    return np.zeros((T, B, D))


# ---------------------------------------------------------------------------- forward: x
def test_x_wrong_rank():
    with pytest.raises(ValueError, match=r"rank 3 \(T, B, D\), got shape \(5, 3\)"):
        rnn().forward(np.zeros((T, D)))
    with pytest.raises(ValueError, match=r"rank 3 \(B, T, D\), got shape \(1, 5, 2, 3\)"):
        rnn(batch_first=True).forward(np.zeros((1, T, B, D)))


def test_x_wrong_feature_size():
    with pytest.raises(ValueError, match=r"expected x of shape \(T, B, 3\), got \(T=5, B=2, 4\)"):
        rnn().forward(np.zeros((T, B, 4)))
    with pytest.raises(ValueError, match=r"expected x of shape \(B, T, 3\), got \(B=2, T=5, 1\)"):
        rnn(batch_first=True).forward(np.zeros((B, T, 1)))


def test_x_empty():
    with pytest.raises(ValueError,
                       match=r"at least one step and one sequence, got shape \(0, 2, 3\)"):
        rnn().forward(np.zeros((0, B, D)))


@pytest.mark.parametrize("bad, dtype", [
    (np.full((T, B, D), "a"), "<U1"),
    (np.full((T, B, D), None, dtype=object), "object"),
    (np.zeros((T, B, D), dtype=complex), "complex128"),
], ids=["strings", "objects", "complex"])
def test_x_not_real_numbers(bad, dtype):
    with pytest.raises(TypeError, match=rf"expected x of real numbers, got dtype {dtype}"):
        rnn().forward(bad)


def test_x_ragged_nested_list():
    with pytest.raises(TypeError, match=r"x is not an array"):
        rnn().forward([[[0.0, 0.0, 0.0]], [[0.0, 0.0]]])


# ---------------------------------------------------------------------------- forward: h0
def test_h0_wrong_shape():
    with pytest.raises(ValueError, match=r"expected h0 of shape \(num_layers\*dirs=1, B=2, H=4\), "
                                         r"got \(1, 3, 4\)"):
        rnn().forward(x_ok(), np.zeros((1, 3, H)))
    with pytest.raises(ValueError, match=r"num_layers\*dirs=4, B=2, H=4\), got \(2, 2, 4\)"):
        rnn(num_layers=2, bidirectional=True).forward(x_ok(), np.zeros((2, B, H)))


def test_lstm_h0_not_a_pair():
    with pytest.raises(TypeError, match=r"expected h0 as a pair \(h, c\), got ndarray"):
        lstm().forward(x_ok(), np.zeros((1, B, H)))
    with pytest.raises(TypeError, match=r"expected h0 as a pair \(h, c\), got tuple"):
        lstm().forward(x_ok(), (np.zeros((1, B, H)),) * 3)


def test_lstm_c0_wrong_shape():
    with pytest.raises(ValueError, match=r"expected h0\[1\] \(c\) of shape .* got \(1, 2, 5\)"):
        lstm().forward(x_ok(), (np.zeros((1, B, H)), np.zeros((1, B, 5))))


# ---------------------------------------------------------------------------- forward: lengths
@pytest.mark.parametrize("lengths, bad", [([0, 3], r"\[0\]"), ([6, 5], r"\[6\]"),
                                          ([-1, 9], r"\[-1, 9\]")])
def test_lengths_outside_range(lengths, bad):
    with pytest.raises(ValueError, match=rf"expected every length in 1\.\.5 \(T\), got {bad}"):
        rnn().forward(x_ok(), lengths=lengths)


@pytest.mark.parametrize("lengths, shape", [([1, 2, 3], r"\(3,\)"), ([4], r"\(1,\)"),
                                            ([[1, 2]], r"\(1, 2\)"), (3, r"\(\)")])
def test_lengths_wrong_count(lengths, shape):
    with pytest.raises(ValueError, match=rf"expected lengths of shape \(2,\), one per sequence, "
                                         rf"got shape {shape}"):
        rnn().forward(x_ok(), lengths=lengths)


@pytest.mark.parametrize("lengths, dtype", [([1.0, 2.0], "float64"), ([True, True], "bool"),
                                            (torch.tensor([1.5, 2.0]), "float32")])
def test_lengths_not_integers(lengths, dtype):
    with pytest.raises(TypeError, match=rf"expected lengths as integers, got dtype {dtype}"):
        rnn().forward(x_ok(), lengths=lengths)


def test_training_not_bool():
    with pytest.raises(TypeError, match=r"expected training a bool, got 1"):
        rnn().forward(x_ok(), training=1)


# ---------------------------------------------------------------------------- constructor
def test_unknown_nonlinearity():
    with pytest.raises(ValueError, match=r"expected nonlinearity 'tanh' or 'relu', got 'sigmoid'"):
        rnn(nonlinearity="sigmoid")


@pytest.mark.parametrize("p", [-0.1, 1.0, 1.5, math.nan, "0.5", True, None])
def test_bad_dropout(p):
    with pytest.raises(ValueError, match=rf"expected dropout a probability in \[0, 1\), "
                                         rf"got {re.escape(repr(p))}"):
        rnn(num_layers=2, dropout=p)


@pytest.mark.parametrize("arg", ["input_size", "hidden_size", "num_layers"])
@pytest.mark.parametrize("value", [0, -2, True, 2.0, "3"])
def test_bad_sizes(arg, value):
    sizes = dict(input_size=D, hidden_size=H, num_layers=1)
    sizes[arg] = value
    with pytest.raises(ValueError, match=rf"expected {arg} a positive integer, got "
                                         rf"{re.escape(repr(value))}"):
        bptt.GRU(**sizes)


@pytest.mark.parametrize("dtype, name", [(np.int32, "int32"), (np.float16, "float16"),
                                         (complex, "complex128")])
def test_bad_dtype(dtype, name):
    with pytest.raises(TypeError, match=rf"expected dtype float32 or float64, got {name}"):
        rnn(dtype=dtype)


def test_unparseable_dtype():
    with pytest.raises(TypeError, match=r"expected dtype float32 or float64, got 'foo'"):
        rnn(dtype="foo")


def test_dtype_none():
    with pytest.raises(TypeError, match=r"expected dtype float32 or float64"):
        rnn(dtype=None)


def test_unknown_init():
    with pytest.raises(ValueError, match=r"init: expected one of default, orthogonal, identity, "
                                         r"got 'xavier'"):
        lstm(init="xavier")


def test_forget_bias_not_on_gru_or_rnn_or_biasless_lstm():
    for make in (lambda: bptt.GRU(D, H, forget_bias=1.0), lambda: rnn(forget_bias=1.0),
                 lambda: lstm(bias=False, forget_bias=1.0)):
        with pytest.raises(ValueError, match=r"forget_bias applies to an LSTM with bias=True"):
            make()


@pytest.mark.parametrize("fb", [math.nan, "1"])
def test_forget_bias_not_a_finite_number(fb):
    with pytest.raises((ValueError, TypeError), match=r"forget_bias"):
        lstm(forget_bias=fb)


def test_reset_after_not_bool():
    with pytest.raises(TypeError, match=r"expected reset_after a bool, got 'yes'"):
        bptt.GRU(D, H, reset_after="yes")


# ---------------------------------------------------------------------------- load_state_dict
def test_load_missing_key():
    layer = rnn()
    sd = layer.state_dict()
    del sd["bias_hh_l0"]
    with pytest.raises(ValueError, match=r"missing keys \['bias_hh_l0'\], unexpected keys \[\]"):
        layer.load_state_dict(sd)


def test_load_unexpected_key():
    layer = rnn()
    sd = layer.state_dict()
    sd["weight_ih_l1"] = np.zeros((H, H))
    with pytest.raises(ValueError, match=r"missing keys \[\], unexpected keys \['weight_ih_l1'\]"):
        layer.load_state_dict(sd)


def test_load_wrong_shape():
    layer = lstm()
    sd = layer.state_dict()
    sd["weight_hh_l0"] = np.zeros((4 * H, H + 1))
    with pytest.raises(ValueError, match=r"weight_hh_l0: expected shape \(16, 4\), got \(16, 5\)"):
        layer.load_state_dict(sd)


@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
def test_load_non_finite_is_all_or_nothing(bad):
    layer = lstm(seed=0)
    before = layer.state_dict()
    sd = {k: np.ones_like(v) for k, v in before.items()}
    last = list(sd)[-1]
    sd[last][3] = bad
    with pytest.raises(ValueError, match=rf"{last} holds non-finite values \(nan or inf\)"):
        layer.load_state_dict(sd)
    for k, v in layer.state_dict().items():  # nothing was loaded, not even the good keys
        np.testing.assert_array_equal(v, before[k])


def test_load_non_mapping():
    layer = rnn()
    with pytest.raises(TypeError, match=r"expected a mapping of parameter names to arrays, "
                                        r"got list"):
        layer.load_state_dict(list(layer.state_dict().items()))


def test_load_non_numeric_value():
    layer = rnn()
    sd = layer.state_dict()
    sd["bias_ih_l0"] = np.array(["a"] * H)
    with pytest.raises(TypeError, match=r"bias_ih_l0: expected real numbers, got dtype <U1"):
        layer.load_state_dict(sd)


# ---------------------------------------------------------------------------- backward
def test_dy_wrong_shape():
    layer = rnn(bidirectional=True)
    y, _, tape = layer.forward(x_ok())
    with pytest.raises(ValueError, match=r"expected dy of shape \(5, 2, 8\) to match the tape's y, "
                                         r"got \(5, 2, 4\)"):
        layer.backward(np.zeros((T, B, H)), tape)
    with pytest.raises(ValueError, match=r"got \(4, 2, 8\)"):
        layer.backward(np.zeros((T - 1, B, 2 * H)), tape)


def test_dy_not_numbers():
    layer = rnn()
    y, _, tape = layer.forward(x_ok())
    with pytest.raises(TypeError, match=r"expected dy of real numbers, got dtype object"):
        layer.backward(np.full(y.shape, None, dtype=object), tape)


def test_tape_from_another_layer():
    a, b = rnn(seed=0), rnn(seed=0)
    y, _, tape = a.forward(x_ok())
    with pytest.raises(TypeError, match=r"expected the tape that this layer's forward returned, "
                                        r"got Tape"):
        b.backward(np.zeros_like(y), tape)
    with pytest.raises(TypeError, match=r"expected the tape .* got dict"):
        a.backward(np.zeros_like(y), {"cells": tape.cells})


def test_dh_n_wrong_shape():
    layer = rnn(num_layers=2)
    y, _, tape = layer.forward(x_ok())
    with pytest.raises(ValueError, match=r"expected dh_n of shape "
                                         r"\(num_layers\*dirs=2, B=2, H=4\), got \(1, 2, 4\)"):
        layer.backward(np.zeros_like(y), tape, np.zeros((1, B, H)))


def test_lstm_dh_n_not_a_pair_or_wrong_shape():
    layer = lstm()
    y, _, tape = layer.forward(x_ok())
    with pytest.raises(TypeError, match=r"expected dh_n as a pair \(h, c\), got ndarray"):
        layer.backward(np.zeros_like(y), tape, np.zeros((1, B, H)))
    with pytest.raises(ValueError, match=r"expected dh_n\[1\] \(c\) of shape .* got \(1, 2, 3\)"):
        layer.backward(np.zeros_like(y), tape, (np.zeros((1, B, H)), np.zeros((1, B, 3))))
