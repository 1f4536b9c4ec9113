"""CTC against torch.nn.functional.ctc_loss (loss and autograd's gradient, float64 to 1e-9), against
sums over every alignment on tiny cases, and the decoders against the loss and by hand. The float64
checks run on both backends: the NumPy reference and the C++ kernel where it was built."""

import itertools
import math

import numpy as np
import pytest
import threadpoolctl
import torch
import torch.nn.functional as F
from conftest import rel_err

from bptt import ctc, losses
from bptt.ctc import ctc_beam_search, ctc_greedy_decode, ctc_loss, ctc_loss_logits

try:
    from hypothesis import given, settings
    from hypothesis import strategies as st
except ImportError:  # the two property tests need hypothesis (the test extra); the rest do not
    def given(**_):
        return pytest.mark.skip(reason="hypothesis is not installed")

    def settings(**_):
        return lambda test: test

    class _Strategies:  # stands in for hypothesis.strategies: st.integers(...) and the like
        def __getattr__(self, _):
            return lambda *args, **kwargs: None

    st = _Strategies()

BACKENDS = ["numpy", pytest.param("native", marks=pytest.mark.skipif(
    ctc._native() is None, reason="bptt.native._ctc was not built"))]


def log_softmax(z):
    z = z - z.max(axis=-1, keepdims=True)
    return z - np.log(np.exp(z).sum(axis=-1, keepdims=True))


def torch_ctc(log_probs, targets, input_lengths, target_lengths, blank=0, reduction="mean",
              zero_infinity=False, logits=False):
    """torch's loss and autograd's gradient for log_probs (or for logits through log_softmax)."""
    x = torch.tensor(log_probs, requires_grad=True)
    lp = x.log_softmax(-1) if logits else x
    loss = F.ctc_loss(lp, torch.tensor(targets), torch.tensor(input_lengths),
                      torch.tensor(target_lengths), blank=blank, reduction=reduction,
                      zero_infinity=zero_infinity)
    loss.sum().backward()
    return loss.detach().numpy(), x.grad.numpy()


def repeats(target):
    return sum(a == b for a, b in itertools.pairwise(target))


def make_case(kind, seed):
    """(log_probs (T, B, C), padded targets (B, S), input_lengths, target_lengths, blank)."""
    rng = np.random.default_rng(seed)
    T, B, C, S, blank = 24, 5, 6, 7, 0
    if kind == "one":
        B = 1
    elif kind == "blank_last":
        blank = C - 1
    elif kind == "blank_middle":
        blank = 2
    elif kind == "repeats":
        C = 3                                             # two labels: runs like 1 1 2 2 2 1
    labels = [c for c in range(C) if c != blank]
    targets = rng.choice(labels, (B, S))
    target_lengths = rng.integers(1, S + 1, B)
    input_lengths = rng.integers(T // 2, T + 1, B)
    if kind == "empty_targets":
        target_lengths[::2] = 0
    if kind == "repeats":
        targets[0, :4] = labels[0]
        target_lengths[0] = max(target_lengths[0], 4)
    need = np.array([target_lengths[b] + repeats(targets[b, :target_lengths[b]].tolist())
                     for b in range(B)])                  # the fewest frames a target needs
    if kind in ("minimal_length", "infeasible"):
        input_lengths = need - (kind == "infeasible") * (np.arange(B) % 2)   # every other one
    if kind == "short_inputs":
        input_lengths[:3] = [0, 1, 0]
        target_lengths[:3] = [0, 1, 2]                    # (0, 0) fine; (1, 1) fine; (0, 2) inf
    input_lengths = np.minimum(input_lengths, T)
    if kind not in ("infeasible", "short_inputs"):
        input_lengths = np.maximum(input_lengths, np.minimum(need, T))
    lp = log_softmax(rng.standard_normal((T, B, C)) * 2)
    return lp, targets, input_lengths, target_lengths, blank


KINDS = ["many", "one", "blank_last", "blank_middle", "repeats", "empty_targets",
         "minimal_length", "infeasible", "short_inputs"]


def concatenated(targets, target_lengths):
    return np.concatenate([targets[b, :n] for b, n in enumerate(target_lengths)]).astype(np.int64)


def assert_matches(got, ref, tol):
    (loss, grad), (ref_loss, ref_grad) = got, ref
    np.testing.assert_allclose(loss, ref_loss, rtol=tol, atol=0)
    nan = np.isnan(ref_grad)
    np.testing.assert_array_equal(np.isnan(grad), nan)
    assert rel_err(grad[~nan], ref_grad[~nan]) <= tol


# ---------------------------------------------------------------------- the loss against torch
@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("zero_infinity", [False, True])
@pytest.mark.parametrize("layout", ["padded", "concatenated"])
@pytest.mark.parametrize("reduction", ["none", "sum", "mean"])
@pytest.mark.parametrize("kind", KINDS)
def test_loss_and_grad_match_torch_float64(kind, reduction, layout, zero_infinity, backend):
    lp, targets, il, tl, blank = make_case(kind, seed=KINDS.index(kind))
    if layout == "concatenated":
        targets = concatenated(targets, tl)
    got = ctc_loss(lp, targets, il, tl, blank, reduction, zero_infinity, backend=backend)
    ref = torch_ctc(lp, targets, il, tl, blank, reduction, zero_infinity)
    assert got[1].shape == lp.shape and got[1].dtype == np.float64
    if reduction == "none":
        assert got[0].shape == il.shape and got[0].dtype == np.float64
    else:
        assert isinstance(got[0], float)
    assert_matches(got, ref, 1e-9)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("kind", ["many", "repeats", "minimal_length", "blank_middle"])
def test_float32_close_to_torch(kind, backend):
    lp, targets, il, tl, blank = make_case(kind, seed=10 + KINDS.index(kind))
    lp32 = lp.astype(np.float32)
    loss, grad = ctc_loss(lp32, targets, il, tl, blank, "none", backend=backend)
    assert loss.dtype == np.float32 and grad.dtype == np.float32
    ref_loss, ref_grad = torch_ctc(lp32.astype(np.float64), targets, il, tl, blank, "none")
    np.testing.assert_allclose(loss, ref_loss, rtol=2e-5)
    assert rel_err(grad, ref_grad) < 2e-5


def test_infeasible_and_zero_infinity_like_torch():
    # 2 frames cannot hold (1, 1): the repeat needs a blank between
    lp = log_softmax(np.random.default_rng(0).standard_normal((2, 2, 3)))
    targets, il, tl = np.array([[1, 1], [1, 2]]), np.array([2, 2]), np.array([2, 2])
    loss, grad = ctc_loss(lp, targets, il, tl, reduction="none")
    assert loss[0] == np.inf and np.isfinite(loss[1])
    assert np.all(np.isnan(grad[:, 0])) and np.all(np.isfinite(grad[:, 1]))
    loss, grad = ctc_loss(lp, targets, il, tl, reduction="none", zero_infinity=True)
    assert loss[0] == 0 and not np.any(grad[:, 0])
    mean, _ = ctc_loss(lp, targets, il, tl, zero_infinity=True)
    assert mean == pytest.approx(loss[1] / 2 / 2, rel=1e-14)   # (0 + l_1 / S_1) / B


@pytest.mark.parametrize("backend", BACKENDS)
def test_logits_form_matches_torch_through_log_softmax(backend):
    rng = np.random.default_rng(5)
    T, B, C = 15, 4, 5
    z = rng.standard_normal((T, B, C)) * 3 + 7           # logits, not normalised
    targets = rng.integers(1, C, (B, 6))
    il, tl = np.array([15, 9, 12, 4]), np.array([6, 3, 0, 5])   # the last one infeasible
    for reduction in ("none", "sum", "mean"):
        for layout in ("padded", "concatenated"):
            tg = targets if layout == "padded" else concatenated(targets, tl)
            got = ctc_loss_logits(z, tg, il, tl, reduction=reduction, zero_infinity=True,
                                  backend=backend)
            ref = torch_ctc(z, tg, il, tl, reduction=reduction, zero_infinity=True, logits=True)
            assert_matches(got, ref, 1e-9)
            np.testing.assert_allclose(got[1].sum(axis=-1), 0, atol=1e-13)   # rows sum to 0
    loss, _ = ctc_loss_logits(z, targets, il, tl, reduction="none", backend=backend)
    same = ctc_loss(log_softmax(z), targets, il, tl, reduction="none", backend=backend)
    np.testing.assert_allclose(loss, same[0], rtol=1e-14)


@pytest.mark.parametrize("backend", BACKENDS)
def test_logits_minus_infinity_leaves_a_class_out(backend):
    # torch's gradient turns nan at a -inf logit; at -1e4 (probability exactly 0) it is finite
    rng = np.random.default_rng(17)
    z = rng.standard_normal((12, 3, 5))
    z[:, :, 4] = -np.inf
    targets, il, tl = rng.integers(1, 4, (3, 4)), np.array([12, 10, 8]), np.array([4, 3, 2])
    loss, dz = ctc_loss_logits(z, targets, il, tl, reduction="sum", backend=backend)
    ref_loss, ref_dz = torch_ctc(np.where(np.isinf(z), -1e4, z), targets, il, tl,
                                 reduction="sum", logits=True)
    assert not np.any(dz[:, :, 4])
    assert_matches((loss, dz), (ref_loss, ref_dz), 1e-9)


def test_losses_module_exports_ctc():
    assert losses.ctc_loss is ctc_loss and losses.ctc_loss_logits is ctc_loss_logits


# ---------------------------------------------------------------------- by hand and by enumeration
@pytest.mark.parametrize("backend", BACKENDS)
def test_golden_two_frames(backend):
    # T = 2, target (1,): the paths 1 1, blank 1, 1 blank
    y = np.array([[0.5, 0.3, 0.2], [0.1, 0.6, 0.3]])
    lp = np.log(y)[:, None, :]
    loss, grad = ctc_loss(lp, [[1]], [2], [1], reduction="sum", backend=backend)
    p = y[0, 1] * y[1, 1] + y[0, 0] * y[1, 1] + y[0, 1] * y[1, 0]
    assert loss == pytest.approx(-math.log(p), rel=1e-15)
    gamma1 = (y[0, 1] * y[1, 1] + y[0, 1] * y[1, 0]) / p          # frame 0 emits the 1
    assert grad[0, 0, 1] == pytest.approx(y[0, 1] - gamma1, rel=1e-14)


@pytest.mark.parametrize("backend", BACKENDS)
def test_minimal_input_length_has_one_path(backend):
    # (1, 1, 2, 2) in 6 frames: only 1 blank 1 2 blank 2
    rng = np.random.default_rng(6)
    lp = log_softmax(rng.standard_normal((6, 1, 3)))
    loss, grad = ctc_loss(lp, [[1, 1, 2, 2]], [6], [4], reduction="sum", backend=backend)
    path = [1, 0, 1, 2, 0, 2]
    assert loss == pytest.approx(-sum(lp[t, 0, c] for t, c in enumerate(path)), rel=1e-14)
    expected = np.exp(lp[:, 0]).copy()
    expected[np.arange(6), path] -= 1                            # the path is certain
    np.testing.assert_allclose(grad[:, 0], expected, rtol=1e-12, atol=1e-15)


def collapse(path, blank):
    return tuple(c for i, c in enumerate(path) if c != blank and (i == 0 or c != path[i - 1]))


def enumerate_labellings(lp, blank):
    """Every labelling of one sequence's frames lp (T, C) with its log-probability, by summing
    over all C**T paths."""
    probs = {}
    T, C = lp.shape
    for path in itertools.product(range(C), repeat=T):
        lab = collapse(path, blank)
        probs[lab] = probs.get(lab, 0.0) + math.exp(sum(lp[t, c] for t, c in enumerate(path)))
    return {lab: math.log(p) for lab, p in probs.items()}


@settings(max_examples=40, deadline=None)
@given(T=st.integers(1, 5), C=st.integers(2, 4), seed=st.integers(0, 2**32 - 1),
       data=st.data())
def test_loss_is_the_sum_over_alignments(T, C, seed, data):
    rng = np.random.default_rng(seed)
    blank = data.draw(st.integers(0, C - 1))
    lp = log_softmax(rng.standard_normal((T, 1, C)) * 2)
    everything = enumerate_labellings(lp[:, 0], blank)
    labels = [c for c in range(C) if c != blank]
    target = data.draw(st.lists(st.sampled_from(labels), max_size=T + 1))
    padded = np.array([target], np.int64).reshape(1, -1)
    loss, grad = ctc_loss(lp, padded, [T], [len(target)], blank, "none", backend="numpy")
    expected = -everything.get(tuple(target), -math.inf)
    assert loss[0] == pytest.approx(expected, rel=1e-12) if math.isfinite(expected) else \
        loss[0] == math.inf
    if math.isfinite(expected):
        for backend in ("native",) if ctc._native() is not None else ():
            other = ctc_loss(lp, padded, [T], [len(target)], blank, "none", backend=backend)
            assert other[0][0] == pytest.approx(loss[0], rel=1e-12)
            assert rel_err(other[1], grad) < 1e-12


# ---------------------------------------------------------------------- what the frames may hold
@pytest.mark.parametrize("backend", BACKENDS)
def test_padding_frames_and_labels_are_ignored(backend):
    lp, targets, il, tl, _ = make_case("many", seed=7)
    clean = ctc_loss(lp, targets, il, tl, reduction="none", backend=backend)
    dirty_lp, dirty_targets = lp.copy(), targets.copy()
    for b in range(lp.shape[1]):
        dirty_lp[il[b]:, b] = [np.nan, np.inf, 1e30, -np.inf, 5, 0][:lp.shape[2]]
        dirty_targets[b, tl[b]:] = -1
    dirty = ctc_loss(dirty_lp, dirty_targets, il, tl, reduction="none", backend=backend)
    np.testing.assert_array_equal(dirty[0], clean[0])
    np.testing.assert_array_equal(dirty[1], clean[1])
    assert not np.any(clean[1][~ctc._frame_mask(lp.shape[0], il)])


@pytest.mark.parametrize("backend", BACKENDS)
def test_impossible_classes_and_peaked_frames(backend):
    # classes of probability 0 (-inf) and frames far below the best path, in both dtypes
    rng = np.random.default_rng(8)
    z = rng.standard_normal((40, 3, 6)) * 60
    z[:, :, 5] = -np.inf                                  # never emitted
    lp = log_softmax(z)
    targets, il, tl = rng.integers(1, 5, (3, 12)), np.array([40, 33, 25]), np.array([12, 9, 4])
    loss, grad = ctc_loss(lp, targets, il, tl, reduction="sum", backend=backend)
    ref_loss, ref_grad = torch_ctc(lp, targets, il, tl, reduction="sum")
    # torch's gradient is nan where log_probs = -inf (it takes exp(-inf + inf)); the limit,
    # y - gamma = 0 - 0, is what bptt gives
    impossible = np.isneginf(lp) & ctc._frame_mask(40, il)[..., None]
    assert np.all(np.isnan(ref_grad[impossible])) and not np.any(grad[impossible])
    ref_grad[impossible] = 0
    assert_matches((loss, grad), (ref_loss, ref_grad), 1e-9)
    loss32, grad32 = ctc_loss(lp.astype(np.float32), targets, il, tl, reduction="sum",
                              backend=backend)
    ref32 = torch_ctc(lp.astype(np.float32).astype(np.float64), targets, il, tl,
                      reduction="sum")
    assert loss32 == pytest.approx(float(ref32[0]), rel=1e-5)
    assert rel_err(grad32, np.nan_to_num(ref32[1])) < 1e-4


@pytest.mark.parametrize("backend", BACKENDS)
def test_target_far_below_the_best_cells(backend):
    # an untrained model that says blank everywhere: the targets' ends sit hundreds of nats
    # below the best cell of each frame, and must not be lost to underflow in either dtype
    rng = np.random.default_rng(16)
    T, B, C, S = 120, 3, 8, 40
    z = rng.standard_normal((T, B, C))
    z[:, :, 0] += 9
    lp = log_softmax(z)
    targets, il, tl = rng.integers(1, C, (B, S)), np.array([120, 100, 90]), np.array([40, 35, 30])
    loss, grad = ctc_loss(lp, targets, il, tl, reduction="none", backend=backend)
    ref = torch_ctc(lp, targets, il, tl, reduction="none")
    assert np.all(loss > 150)                             # e^-150 is below float32's range
    assert_matches((loss, grad), ref, 1e-9)
    loss32, grad32 = ctc_loss(lp.astype(np.float32), targets, il, tl, reduction="none",
                              backend=backend)
    np.testing.assert_allclose(loss32, ref[0], rtol=1e-5)
    assert rel_err(grad32, ref[1]) < 1e-4


@pytest.mark.skipif(ctc._native() is None, reason="bptt.native._ctc was not built")
def test_native_results_do_not_depend_on_threads():
    lp, targets, il, tl, _ = make_case("many", seed=9)
    lp = lp.astype(np.float32)
    with threadpoolctl.threadpool_limits(1):
        one = ctc_loss(lp, targets, il, tl, reduction="none", backend="native")
    with threadpoolctl.threadpool_limits(2):
        two = ctc_loss(lp, targets, il, tl, reduction="none", backend="native")
    np.testing.assert_array_equal(one[0], two[0])
    np.testing.assert_array_equal(one[1], two[1])


# ---------------------------------------------------------------------- decoding
def test_greedy_decode_by_hand():
    # best classes per frame: b 1 1 b 1 2 2 b 3 | 3 (past the second sequence's length)
    best = [[0, 0], [1, 2], [1, 2], [0, 0], [1, 2], [2, 0], [2, 0], [0, 1], [3, 1], [3, 3]]
    scores = np.full((10, 2, 4), -5.0)
    for t, row in enumerate(best):
        for b, c in enumerate(row):
            scores[t, b, c] = -0.1
    assert ctc_greedy_decode(scores) == [[1, 1, 2, 3], [2, 2, 1, 3]]
    assert ctc_greedy_decode(scores, [10, 8]) == [[1, 1, 2, 3], [2, 2, 1]]
    # with blank = 1 the 1s are blanks and the 0s labels
    assert ctc_greedy_decode(scores, [10, 8], blank=1) == [[0, 0, 2, 0, 3], [0, 2, 0, 2, 0]]


def peaked(rng, T, B, C, top=0.97):
    """Log-probabilities whose most likely class in each frame has probability ``top``."""
    y = rng.random((T, B, C))
    y[..., :] *= (1 - top) / (y.sum(axis=-1, keepdims=True) - y.max(axis=-1, keepdims=True))
    best = rng.integers(0, C, (T, B))
    np.put_along_axis(y, best[..., None], 0, axis=-1)
    y *= (1 - top) / y.sum(axis=-1, keepdims=True)
    np.put_along_axis(y, best[..., None], top, axis=-1)
    return np.log(y)


def test_beam_width_one_is_greedy_on_a_peaked_posterior():
    # each frame's best class holds more than half the mass, and the best path most of the
    # likelihood of its labelling: the one kept prefix then follows it frame by frame
    rng = np.random.default_rng(10)
    lp = peaked(rng, 30, 4, 5)
    greedy = ctc_greedy_decode(lp)
    beams = ctc_beam_search(lp, beam_width=1)
    assert [list(beam[0][0]) for beam in beams] == greedy
    assert all(len(beam) == 1 for beam in beams)


def test_beam_scores_are_the_ctc_likelihoods_of_their_labellings():
    # a beam wide enough never drops a path: every score is log p(l | x) exactly
    rng = np.random.default_rng(11)
    T, B, C = 7, 3, 3
    lp = log_softmax(rng.standard_normal((T, B, C)))
    il = np.array([7, 5, 0])
    beams = ctc_beam_search(lp, il, beam_width=1000)
    assert beams[2] == [((), 0.0)]
    for b in range(2):
        everything = enumerate_labellings(lp[:il[b], b], 0)
        assert {lab for lab, _ in beams[b]} == set(everything)
        for lab, score in beams[b]:
            loss, _ = ctc_loss(lp[:, b:b + 1], np.array([lab], np.int64).reshape(1, -1),
                               [il[b]], [len(lab)], reduction="none")
            assert score == pytest.approx(-loss[0], rel=1e-12)
            assert score == pytest.approx(everything[lab], rel=1e-12)
        scores = [s for _, s in beams[b]]
        assert scores == sorted(scores, reverse=True)


def test_beam_best_score_is_its_ctc_likelihood_when_nothing_is_pruned():
    # 10 frames, 2 labels: at most 2**11 - 1 labellings, all of them kept by a beam of 2048
    rng = np.random.default_rng(12)
    T, B, C = 10, 3, 3
    lp = peaked(rng, T, B, C, top=0.6)
    for b, beam in enumerate(ctc_beam_search(lp, beam_width=2048, blank=1)):
        lab, score = beam[0]
        loss, _ = ctc_loss(lp[:, b:b + 1], np.array([lab]).reshape(1, -1), [T], [len(lab)],
                           blank=1, reduction="none")
        assert score == pytest.approx(-loss[0], rel=1e-12)
        assert lab == max(enumerate_labellings(lp[:, b], 1).items(), key=lambda kv: kv[1])[0]


@settings(max_examples=30, deadline=None)
@given(seed=st.integers(0, 2**32 - 1), width=st.integers(1, 6))
def test_beam_scores_never_exceed_the_likelihood(seed, width):
    rng = np.random.default_rng(seed)
    lp = log_softmax(rng.standard_normal((12, 1, 4)) * 2)
    for lab, score in ctc_beam_search(lp, beam_width=width)[0]:
        loss, _ = ctc_loss(lp, np.array([lab]).reshape(1, -1), [12], [len(lab)],
                           reduction="none")
        assert score <= -loss[0] + 1e-12 * abs(loss[0])


def test_beam_constraints_are_respected():
    rng = np.random.default_rng(13)
    T, C = 20, 6
    lp = peaked(rng, T, 1, C, top=0.6)
    free = ctc_beam_search(lp, beam_width=8)[0]
    used = set(free[0][0])
    banned = next(iter(used))                              # the free best uses it
    allowed = [c for c in range(1, C) if c != banned]
    only = ctc_beam_search(lp, beam_width=8, allowed_labels=allowed)[0]
    assert only and all(set(lab) <= set(allowed) for lab, _ in only)

    no_repeat = ctc_beam_search(lp, beam_width=8,
                                next_labels=lambda p: [c for c in range(1, C) if p[-1:] != (c,)])
    assert all(all(a != b for a, b in itertools.pairwise(lab)) for lab, _ in no_repeat[0])

    words = [free[0][0], free[0][0][:2], (banned, banned), tuple(allowed[:3])]
    in_lexicon = ctc_beam_search(lp, beam_width=64, lexicon=words)[0]
    assert in_lexicon and all(lab in words for lab, _ in in_lexicon)
    assert in_lexicon[0][0] == free[0][0]
    for lab, score in in_lexicon:                          # < 64 prefixes: nothing pruned
        loss, _ = ctc_loss(lp, np.array([lab]).reshape(1, -1), [T], [len(lab)],
                           reduction="none")
        assert score == pytest.approx(-loss[0], rel=1e-9)
    both = ctc_beam_search(lp, beam_width=8, lexicon=words, allowed_labels=allowed)[0]
    assert {lab for lab, _ in both} <= {w for w in words if set(w) <= set(allowed)}


# ---------------------------------------------------------------------- errors at the door
def good():
    lp, targets, il, tl, _ = make_case("many", seed=14)
    return {"log_probs": lp, "targets": targets, "input_lengths": il, "target_lengths": tl}


def bad(**changes):
    args = good()
    args.update(changes)
    return args


T_, B_, C_ = good()["log_probs"].shape


@pytest.mark.parametrize("args, error, words", [
    (bad(targets=np.zeros((B_, 7), np.int64)), ValueError, "other than blank=0, got [0"),
    (bad(targets=np.full((B_, 7), C_)), ValueError, f"in 0..{C_ - 1}"),
    (bad(targets=np.full((B_, 7), -2)), ValueError, "got [-2"),
    (bad(targets=np.ones((B_, 7)), ), TypeError, "integer targets"),
    (bad(targets=np.ones((B_ + 1, 7), np.int64)), ValueError, f"B={B_}"),
    (bad(targets=np.ones((B_, 7, 1), np.int64)), ValueError, "got shape (5, 7, 1)"),
    (bad(targets=np.ones(30, np.int64)), ValueError, "sum(target_lengths)"),
    (bad(input_lengths=np.full(B_, T_ + 1)), ValueError, f"input_lengths in 0..{T_}"),
    (bad(input_lengths=np.array([-1] + [T_] * (B_ - 1))), ValueError, "got [-1] at [0]"),
    (bad(input_lengths=np.full(B_ + 1, T_)), ValueError, "input_lengths of shape (B,)"),
    (bad(input_lengths=np.full(B_, 2.0)), TypeError, "input_lengths of integers"),
    (bad(target_lengths=np.full(B_, 8)), ValueError, "target_lengths in 0..7"),
    (bad(target_lengths=np.array([-3, 1, 1, 1, 1])), ValueError, "got [-3]"),
    (bad(log_probs=np.zeros((T_, C_))), ValueError, "log_probs of shape (T, B, C)"),
    (bad(log_probs=np.zeros((T_, B_, C_), np.float16)), TypeError, "got float16"),
    (bad(log_probs=np.random.default_rng(0).standard_normal((T_, B_, C_))), ValueError,
     "log-probabilities"),
    (bad(log_probs=np.full((T_, B_, C_), 1 / C_)), ValueError, "log-probabilities"),
])
def test_bad_inputs(args, error, words):
    with pytest.raises(error) as e:
        ctc_loss(**args)
    assert words in str(e.value) and "ctc_loss" in str(e.value)


def test_bad_options_and_a_nan_frame():
    args = good()
    for kwargs, words in [({"blank": C_}, "blank an int in 0..5"),
                          ({"reduction": "max"}, "reduction 'none', 'sum' or 'mean'"),
                          ({"backend": "cuda"}, "backend 'auto'")]:
        with pytest.raises(ValueError, match="ctc_loss: expected") as e:
            ctc_loss(**args, **kwargs)
        assert words in str(e.value)
    args["log_probs"][3, 1, 2] = np.nan
    with pytest.raises(ValueError, match=r"frame \(t=3, b=1\)"):
        ctc_loss(**args)
    args["log_probs"][3, 1, 2] = np.nan
    with pytest.raises(ValueError, match="ctc_loss_logits: expected logits without nan"):
        ctc_loss_logits(args["log_probs"], args["targets"], args["input_lengths"],
                        args["target_lengths"])
    with pytest.raises(TypeError, match="ctc_loss_logits: expected logits of dtype"):
        ctc_loss_logits(np.zeros((3, 1, 2), np.int64), [[1]], [3], [1])


def test_bad_decoder_arguments():
    lp = log_softmax(np.random.default_rng(15).standard_normal((6, 2, 4)))
    with pytest.raises(ValueError, match="ctc_greedy_decode: expected log_probs of shape"):
        ctc_greedy_decode(lp[:, 0])
    with pytest.raises(ValueError, match="ctc_greedy_decode: expected input_lengths in 0..6"):
        ctc_greedy_decode(lp, [7, 1])
    for kwargs, error, words in [
            ({"beam_width": 0}, ValueError, "beam_width an int >= 1, got 0"),
            ({"allowed_labels": [1, 4]}, ValueError, "allowed_labels in 0..3, got [1, 4]"),
            ({"allowed_labels": [1.5]}, TypeError, "allowed_labels to be integer"),
            ({"lexicon": [(1, 0)]}, ValueError, "other than blank=0, got [1, 0]"),
            ({"next_labels": [1, 2]}, TypeError, "next_labels a callable"),
            ({"next_labels": lambda p: [9]}, ValueError, "next_labels(()) to give labels"),
            ({"blank": -1}, ValueError, "blank an int in 0..3")]:
        with pytest.raises(error) as e:
            ctc_beam_search(lp, **kwargs)
        assert words in str(e.value) and "ctc_beam_search" in str(e.value)
    with pytest.raises(ValueError, match="ctc_beam_search: expected log_probs to be log-prob"):
        ctc_beam_search(lp + 1)


def test_without_the_extension_auto_runs_numpy(monkeypatch):
    args = good()
    numpy_result = ctc_loss(**args, reduction="none", backend="numpy")
    monkeypatch.setattr(ctc, "_NATIVE", False)
    auto = ctc_loss(**args, reduction="none")
    np.testing.assert_array_equal(auto[0], numpy_result[0])
    np.testing.assert_array_equal(auto[1], numpy_result[1])
    with pytest.raises(ValueError, match="ctc_loss: backend='native' needs the extension"):
        ctc_loss(**args, backend="native")
