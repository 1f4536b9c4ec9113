"""Truncated BPTT, checkpointed BPTT under a memory budget, and clipping inside the backward pass.

References: torch autograd in float64 (TBPTT re-run from the detached state at the window's
start; message clipping through tensor hooks on every h_t), full BPTT for checkpointing, and the
checkpointing recursion itself, solved by brute force, for the plan.
"""

import tracemalloc

import numpy as np
import pytest
import torch
from conftest import rel_err, seed_of, torch_module

import bptt
from bptt import checkpointing as strategies
from bptt.checkpointing import _best_split, checkpoint_cost

FAMILIES = {
    "rnn": (bptt.RNN, {}),
    "rnn_relu": (bptt.RNN, {"nonlinearity": "relu"}),
    "lstm": (bptt.LSTM, {}),
    "gru": (bptt.GRU, {}),
    "gru_before": (bptt.GRU, {"reset_after": False}),
}


def make_layer(family, D, H, num_layers=1, **kwargs):
    cls, opts = FAMILIES[family]
    kwargs.setdefault("dtype", np.float64)
    return cls(D, H, num_layers, **opts, **kwargs)


def random_state(rng, layer, B):
    shape = (layer.num_layers * layer.directions, B, layer.hidden_size)
    if isinstance(layer, bptt.LSTM):
        return rng.standard_normal(shape), rng.standard_normal(shape)
    return rng.standard_normal(shape)


def as_tensor_state(h):
    if h is None:
        return None
    if isinstance(h, tuple):
        return tuple(torch.as_tensor(np.asarray(s, np.float64)) for s in h)
    return torch.as_tensor(np.asarray(h, np.float64))


def assert_grads_close(ours, ref, tol):
    assert set(ours) == set(ref)
    for k in ref:
        assert rel_err(ours[k], ref[k]) <= tol, (k, rel_err(ours[k], ref[k]))


# =============================================================================================
# Truncated BPTT
# =============================================================================================


def torch_tbptt(layer, x, dy, k1, k2, h0=None):
    """Brute force: for each update, run torch from the start without gradients to the window's
    start, detach, re-run the window with autograd and backpropagate the update's losses."""
    m = torch_module(layer)
    xt = torch.as_tensor(x)
    dyt = torch.as_tensor(dy)
    T = x.shape[0]
    updates = []
    for a in range(0, T, k1):
        t = min(a + k1, T)
        w = max(0, a - (k2 - k1))      # = t - k2 for a full block
        state = as_tensor_state(h0)
        if w > 0:
            with torch.no_grad():
                _, state = m(xt[:w], state)
        m.zero_grad()
        y, _ = m(xt[w:t], state)
        (y[a - w:] * dyt[a:t]).sum().backward()
        updates.append((t, {k: p.grad.numpy().copy() for k, p in m.named_parameters()}))
    return updates


TBPTT_CASES = {                        # T, k1, k2
    "k1=k2": (12, 4, 4),
    "k2>k1": (12, 3, 7),               # k2 > t for the first updates
    "T%k1!=0": (14, 4, 6),
    "k2>>T": (9, 2, 20),
    "k1=1": (6, 1, 3),
}


@pytest.mark.parametrize("case", list(TBPTT_CASES))
@pytest.mark.parametrize("family", ["rnn", "lstm", "gru"])
def test_tbptt_matches_torch(family, case):
    T, k1, k2 = TBPTT_CASES[case]
    rng = np.random.default_rng(seed_of("tbptt", family, case))
    layer = make_layer(family, 3, 4, seed=int(rng.integers(2**31)))
    B = 2
    x = rng.standard_normal((T, B, 3))
    dy = rng.standard_normal((T, B, 4))
    h0 = random_state(rng, layer, B)
    ours = bptt.tbptt_grads(layer, x, dy, k1, k2, h0)
    ref = torch_tbptt(layer, x, dy, k1, k2, h0)
    # an update every k1 steps, and one for the last partial block
    expected = list(range(k1, T + 1, k1)) + ([T] if T % k1 else [])
    assert [t for t, _ in ours] == [t for t, _ in ref] == expected
    for (_, g), (_, r) in zip(ours, ref):
        assert_grads_close(g, r, 1e-9)


@pytest.mark.parametrize("family", ["lstm", "gru", "rnn_relu"])
def test_tbptt_stack_matches_torch(family):
    """Two layers: the state before the window is every layer's, all held constant."""
    rng = np.random.default_rng(seed_of("tbptt-stack", family))
    layer = make_layer(family, 2, 3, num_layers=2, seed=int(rng.integers(2**31)))
    T, B, k1, k2 = 11, 3, 3, 5
    x = rng.standard_normal((T, B, 2))
    dy = rng.standard_normal((T, B, 3))
    ours = bptt.tbptt_grads(layer, x, dy, k1, k2)
    ref = torch_tbptt(layer, x, dy, k1, k2)
    assert [t for t, _ in ours] == [3, 6, 9, 11]
    for (_, g), (_, r) in zip(ours, ref):
        assert_grads_close(g, r, 1e-9)


def test_tbptt_with_k2_covering_the_stream_is_full_bptt():
    """One update over the whole stream with k1 = k2 = T is full BPTT."""
    rng = np.random.default_rng(3)
    layer = make_layer("lstm", 2, 3, num_layers=2, seed=4)
    x, dy = rng.standard_normal((8, 2, 2)), rng.standard_normal((8, 2, 3))
    [(t, g)] = bptt.tbptt_grads(layer, x, dy, 8, 8)
    _, _, tape = layer.forward(x)
    _, _, full = layer.backward(dy, tape)
    assert t == 8
    assert_grads_close(g, full, 1e-12)


@pytest.mark.parametrize("family", ["lstm", "gru"])
def test_stream_carries_the_exact_state(family):
    """Chunk by chunk, TBPTT.step gives the same y and final state as one forward over the
    whole stream, takes dy from a callable, and equals tbptt_grads."""
    rng = np.random.default_rng(seed_of("stream", family))
    layer = make_layer(family, 3, 4, num_layers=2, seed=5)
    T, B, k1, k2 = 17, 2, 5, 8
    x, dy = rng.standard_normal((T, B, 3)), rng.standard_normal((T, B, 4))
    h0 = random_state(rng, layer, B)
    tb = bptt.TBPTT(layer, k1, k2)
    state = tb.start(h0)
    ys, updates, seen = [], [], []
    for a in range(0, T, k1):
        def loss_grad(y, a=a):
            seen.append(y.copy())
            return dy[a:a + k1]
        state, y, g = tb.step(state, x[a:a + k1], loss_grad)
        ys.append(y)
        updates.append((state.t, g))
    y_full, h_full, _ = layer.forward(x, h0)
    assert rel_err(np.concatenate(ys), y_full) < 1e-13
    assert rel_err(np.concatenate(seen), y_full) < 1e-13
    h_n = state.h_n
    if family == "lstm":
        assert rel_err(h_n[0], h_full[0]) < 1e-13 and rel_err(h_n[1], h_full[1]) < 1e-13
    else:
        assert rel_err(h_n, h_full) < 1e-13
    assert state.t == T and state.tail.shape == (k2 - k1, B, 3)
    for (t, g), (t_ref, r) in zip(updates, bptt.tbptt_grads(layer, x, dy, k1, k2, h0)):
        assert t == t_ref
        assert_grads_close(g, r, 1e-13)


def test_tbptt_batch_first_equals_time_major():
    rng = np.random.default_rng(6)
    tm = make_layer("gru", 3, 4, seed=7)
    bf = make_layer("gru", 3, 4, seed=7, batch_first=True)
    x, dy = rng.standard_normal((10, 2, 3)), rng.standard_normal((10, 2, 4))
    ours = bptt.tbptt_grads(bf, x.transpose(1, 0, 2), dy.transpose(1, 0, 2), 3, 5)
    ref = bptt.tbptt_grads(tm, x, dy, 3, 5)
    assert len(ours) == len(ref) == 4
    for (t, g), (t_ref, r) in zip(ours, ref):
        assert t == t_ref
        assert_grads_close(g, r, 1e-13)
    state, y, _ = bptt.TBPTT(bf, 3, 5).step(bptt.TBPTT(bf, 3, 5).start(),
                                           x[:3].transpose(1, 0, 2), dy[:3].transpose(1, 0, 2))
    assert y.shape == (2, 3, 4)
    assert rel_err(y, tm.forward(x[:3])[0].transpose(1, 0, 2)) < 1e-13


def test_tbptt_clip_is_passed_to_the_backward_pass():
    rng = np.random.default_rng(8)
    layer = make_layer("lstm", 2, 3, seed=9)
    x, dy = rng.standard_normal((9, 2, 2)), 50 * rng.standard_normal((9, 2, 3))
    ours = bptt.tbptt_grads(layer, x, dy, 3, 6, clip=0.1)
    # the same windows by hand: the layer's own clipped backward from the carried state
    _, h3, _ = layer.forward(x[:3])
    _, _, tape = layer.forward(x[3:9], h3)
    dyw = np.zeros((6, 2, 3))
    dyw[3:] = dy[6:9]
    _, _, ref = layer.backward(dyw, tape, clip=0.1)
    assert ours[-1][0] == 9
    assert_grads_close(ours[-1][1], ref, 1e-13)
    _, _, unclipped = layer.backward(dyw, tape)
    assert rel_err(unclipped["weight_hh_l0"], ref["weight_hh_l0"]) > 1e-2  # the clip acted


def stream_peak(T, k1=50, k2=75, B=2, H=4):
    """tracemalloc peak of a TBPTT stream of T steps, chunks made on the fly and dropped."""
    layer = make_layer("lstm", 3, H, seed=0)
    tb = bptt.TBPTT(layer, k1, k2)
    rng = np.random.default_rng(0)
    state = tb.start()
    tracemalloc.start()
    try:
        for _ in range(T // k1):
            x = rng.standard_normal((k1, B, 3))
            state, _, _ = tb.step(state, x, lambda y: y)   # dy = y: the loss |y|^2 / 2
        return tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()


def test_tbptt_memory_does_not_grow_with_the_stream():
    short, long = stream_peak(1_000), stream_peak(10_000)
    assert long < 1.1 * short, (short, long)


STREAM_SCRIPT = """
import resource, sys
import numpy as np
import bptt
layer = bptt.LSTM(3, 8, dtype=np.float64, seed=0)
tb = bptt.TBPTT(layer, 100, 200)
rng = np.random.default_rng(0)
state = tb.start()
for _ in range(int(sys.argv[1]) // 100):
    state, _, grads = tb.step(state, rng.standard_normal((100, 2, 3)), lambda y: y)
assert state.t == int(sys.argv[1])
print(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss)  # KiB on Linux
"""


def stream_rss(T):
    import subprocess
    import sys
    out = subprocess.run([sys.executable, "-c", STREAM_SCRIPT, str(T)], check=True,
                         capture_output=True, text=True)
    return int(out.stdout.split()[-1])


@pytest.mark.slow
def test_tbptt_million_step_stream_runs_in_constant_memory():
    """10^6 steps in a fresh process: peak RSS as for 10^4 steps (tracemalloc would take
    an hour here)."""
    short, long = stream_rss(10_000), stream_rss(1_000_000)
    assert long < short + 4096, (short, long)   # KiB


# ------------------------------------------------------------------------------ TBPTT errors
def test_tbptt_errors():
    layer = make_layer("lstm", 3, 4)
    x, dy = np.zeros((10, 2, 3)), np.zeros((10, 2, 4))
    with pytest.raises(TypeError, match="expected a bptt.RNN, LSTM or GRU layer, got list"):
        bptt.TBPTT([], 2, 2)
    with pytest.raises(ValueError, match="bidirectional layer cannot stream"):
        bptt.TBPTT(make_layer("gru", 3, 4, bidirectional=True), 2, 2)
    with pytest.raises(ValueError, match="bidirectional layer cannot stream"):
        bptt.tbptt_grads(make_layer("gru", 3, 4, bidirectional=True), x, np.zeros((10, 2, 8)),
                         2, 2)
    for k1, k2, err, msg in [(0, 2, ValueError, "expected k1 a positive integer, got 0"),
                             (2, -1, ValueError, "expected k2 a positive integer, got -1"),
                             (1.5, 2, TypeError, "expected k1 a positive integer, got 1.5"),
                             (True, 2, TypeError, "expected k1 a positive integer, got True"),
                             (2, "3", TypeError, "expected k2 a positive integer, got '3'"),
                             (5, 3, ValueError, r"expected k2 >= k1 .*got k1=5, k2=3")]:
        with pytest.raises(err, match=msg):
            bptt.TBPTT(layer, k1, k2)
        with pytest.raises(err, match=msg):
            bptt.tbptt_grads(layer, x, dy, k1, k2)
    for clip in (0, -1.0, float("nan"), True, "1"):
        with pytest.raises(ValueError, match=f"TBPTT: expected clip a positive finite number or "
                                             f"None, got {clip!r}"):
            bptt.TBPTT(layer, 2, 2, clip=clip)
    with pytest.raises(ValueError, match=r"expected dy of shape \(T, B, H\) = \(10, 2, 4\) to "
                                         r"match x, got \(10, 2, 3\)"):
        bptt.tbptt_grads(layer, x, np.zeros((10, 2, 3)), 2, 2)
    with pytest.raises(ValueError, match=r"expected dy of shape .* got \(9, 2, 4\)"):
        bptt.tbptt_grads(layer, x, np.zeros((9, 2, 4)), 2, 2)


def test_tbptt_step_errors():
    layer = make_layer("rnn", 3, 4)
    tb = bptt.TBPTT(layer, 3, 5)
    s = tb.start()
    with pytest.raises(ValueError, match="expected a chunk of at most k1=3 steps, got 4"):
        tb.step(s, np.zeros((4, 2, 3)), np.zeros((4, 2, 4)))
    with pytest.raises(TypeError, match="expected the StreamState .* got tuple"):
        tb.step((0, None), np.zeros((3, 2, 3)), np.zeros((3, 2, 4)))
    with pytest.raises(ValueError, match=r"expected dy of shape \(r, B, H\) = \(3, 2, 4\), like "
                                         r"the chunk's y, got \(3, 2, 5\)"):
        tb.step(s, np.zeros((3, 2, 3)), np.zeros((3, 2, 5)))
    with pytest.raises(ValueError, match=r"expected dy returned by the callable of shape .* got "
                                         r"\(2, 4\)"):
        tb.step(s, np.zeros((3, 2, 3)), lambda y: y[0])
    s, _, _ = tb.step(s, np.zeros((3, 2, 3)), np.zeros((3, 2, 4)))
    with pytest.raises(ValueError, match="expected a chunk of B=2 sequences, the stream's batch, "
                                         "got B=1"):
        tb.step(s, np.zeros((3, 1, 3)), np.zeros((3, 1, 4)))
    with pytest.raises(ValueError, match=r"expected x of shape \(T, B, 3\)"):
        tb.step(s, np.zeros((3, 2, 5)), np.zeros((3, 2, 4)))


# =============================================================================================
# Checkpointed BPTT: the plan
# =============================================================================================


def recursion_table(N, M):
    """C(t, m) for t <= N, m <= M straight from the recursion (module doc), by brute force."""
    C = np.full((N + 1, M + 1), np.iinfo(np.int64).max // 4, dtype=np.int64)
    C[0, :] = 0
    for m in range(1, M + 1):
        for t in range(1, N + 1):
            y = np.arange(1, t + 1)
            C[t, m] = (y + C[t - y, m - 1] + C[y - 1, m]).min()
    return C


def test_closed_form_and_split_solve_the_recursion():
    N, M = 150, 9
    C = recursion_table(N, M)
    for m in range(1, M + 1):
        for t in range(1, N + 1):
            assert checkpoint_cost(t, m) == C[t, m], (t, m)
            y = np.arange(1, t + 1)
            f = y + C[t - y, m - 1] + C[y - 1, m]
            # the split taken is the recursion's argmin, the last one of its ties
            assert _best_split(t, m) == y[f == f.min()][-1], (t, m)
    assert all(checkpoint_cost(t, 1) == t * (t + 1) // 2 for t in range(1, N + 1))
    assert all(checkpoint_cost(t, m) == t for m in range(1, M + 1) for t in range(1, m + 1))


def test_plan_beats_keeping_bare_states():
    """Keeping only the state at the split (then re-running step y in the left part) is never
    better under the same count: C(t, m) <= min_y [y + C'(t-y, m-1) + C'(y, m)], with
    C'(t, 1) = t(t+1)/2 and C'(t, m) = t for m >= t."""
    N, M = 80, 6
    G = np.zeros((N + 1, M + 1), dtype=np.int64)
    for m in range(1, M + 1):
        for t in range(1, N + 1):
            if t <= m:
                G[t, m] = t
            elif m == 1:
                G[t, m] = t * (t + 1) // 2
            else:
                y = np.arange(1, t)
                G[t, m] = (y + G[t - y, m - 1] + G[y, m]).min()
    C = recursion_table(N, M)
    assert np.all(C[1:, 1:] <= G[1:, 1:])
    assert np.any(C[1:, 1:] < G[1:, 1:])


def walk_cost(plan):
    """Forward steps of the whole plan, node by node."""
    stack, cost = [(plan.T, min(plan.memory, plan.T))], 0
    while stack:
        sweep, run, right, left = plan.node(*stack.pop())
        cost += sweep + run
        stack += [k for k in (right, left) if k is not None]
    return cost


@pytest.mark.parametrize("T,memory", [(1, 1), (7, 1), (50, 3), (1000, 7), (100_000, 10),
                                      (100_000, 300)])
def test_plan_nodes_add_up_to_the_planned_cost(T, memory):
    plan = bptt.plan_checkpoints(T, memory)
    assert plan.forward_steps == walk_cost(plan)
    assert plan.recompute_steps == plan.forward_steps - T
    assert plan.ratio == plan.forward_steps / T


def test_plan_for_a_long_sequence_is_quick():
    import time
    t0 = time.perf_counter()
    plans = [bptt.plan_checkpoints(100_000, m) for m in (1, 2, 5, 100, 5000, 100_000)]
    assert time.perf_counter() - t0 < 0.5
    assert plans[0].forward_steps == 100_000 * 100_001 // 2
    assert plans[-1].forward_steps == 100_000
    assert [p.forward_steps for p in plans] == sorted((p.forward_steps for p in plans),
                                                      reverse=True)
    assert "Plan(T=100000, memory=100" in str(plans[3])


def test_plan_errors():
    for T, memory, err, msg in [(0, 3, ValueError, "expected T a positive integer, got 0"),
                                (5.0, 3, TypeError, "expected T a positive integer, got 5.0"),
                                (5, 0, ValueError, "expected memory a positive integer, got 0"),
                                (5, None, TypeError, "expected memory a positive integer, "
                                                     "got None")]:
        with pytest.raises(err, match=msg):
            bptt.plan_checkpoints(T, memory)


# =============================================================================================
# Checkpointed BPTT: the pass
# =============================================================================================


def both_passes(layer, x, memory, h0=None, lengths=None, dh_n=None, dy=None, clip=None,
                training=False, seed=0):
    """(full, checkpointed) results: y, h_n, dx, dh0, grads and the checkpointed tape."""
    out = []
    for m in (None, memory):
        rng = np.random.default_rng(seed)  # the same dropout masks in both
        y, h_n, tape = layer.forward(x, h0, lengths, m, training=training, rng=rng)
        dx, dh0, grads = layer.backward(dy, tape, dh_n, clip=clip)
        out.append(dict(y=y, h_n=h_n, dx=dx, dh0=dh0, grads=grads, tape=tape))
    return out


def assert_same(full, ck, tol):
    for k in ("y", "dx"):
        assert rel_err(ck[k], full[k]) < tol, k
    for k in ("h_n", "dh0"):
        for a, b in zip(np.atleast_1d(ck[k]) if not isinstance(ck[k], tuple) else ck[k],
                        np.atleast_1d(full[k]) if not isinstance(full[k], tuple) else full[k]):
            assert rel_err(a, b) < tol, k
    assert_grads_close(ck["grads"], full["grads"], tol)


@pytest.mark.parametrize("family", ["rnn", "lstm", "gru", "gru_before"])
def test_checkpointed_equals_full_bptt(family):
    rng = np.random.default_rng(seed_of("ckpt", family))
    layer = make_layer(family, 3, 4, seed=int(rng.integers(2**31)))
    T, B = 23, 3
    x = rng.standard_normal((T, B, 3))
    dy = rng.standard_normal((T, B, 4))
    h0, dh_n = random_state(rng, layer, B), random_state(rng, layer, B)
    for memory in (1, 2, 3, 4, 5, 7, 11, 22, 23, 40):
        full, ck = both_passes(layer, x, memory, h0, None, dh_n, dy)
        assert_same(full, ck, 1e-12)
        tape = ck["tape"]
        assert tape.plan.memory == memory
        [cell] = tape.cells
        # never more step states alive than the budget, and the budget is used
        assert cell.own.peak == min(memory, T)
        assert tape.state_count.peak == min(memory, T)
        assert tape.state_count.forward_steps == tape.plan.forward_steps == checkpoint_cost(
            T, min(memory, T))
        assert tape.state_count.alive == 0


@pytest.mark.parametrize("family", ["rnn_relu", "lstm", "gru"])
def test_checkpointed_stack_with_masks_dropout_and_clip(family):
    """Two bidirectional layers, ragged lengths, dropout between layers and message clipping:
    every (layer, direction) is checkpointed on its own, each within the budget."""
    rng = np.random.default_rng(seed_of("ckpt-stack", family))
    layer = make_layer(family, 2, 3, num_layers=2, bidirectional=True, dropout=0.3,
                       seed=int(rng.integers(2**31)))
    T, B = 19, 4
    x = rng.standard_normal((T, B, 2))
    dy = 5 * rng.standard_normal((T, B, 6))
    lengths = np.array([19, 4, 1, 12])
    h0, dh_n = random_state(rng, layer, B), random_state(rng, layer, B)
    for memory in (1, 3, 6, 19):
        for clip in (None, 0.3):
            full, ck = both_passes(layer, x, memory, h0, lengths, dh_n, dy, clip=clip,
                                   training=True, seed=memory)
            assert_same(full, ck, 1e-12)
            tape = ck["tape"]
            assert len(tape.cells) == 4
            assert all(c.own.peak == min(memory, T) for c in tape.cells)
            assert all(c.own.forward_steps == tape.plan.forward_steps for c in tape.cells)
            assert tape.state_count.peak <= 4 * memory
            assert tape.state_count.alive == 0


def test_checkpointed_batch_first():
    rng = np.random.default_rng(10)
    layer = make_layer("lstm", 3, 4, seed=11, batch_first=True)
    x, dy = rng.standard_normal((2, 15, 3)), rng.standard_normal((2, 15, 4))
    full, ck = both_passes(layer, x, 4, dy=dy)
    assert ck["y"].shape == (2, 15, 4)
    assert_same(full, ck, 1e-12)


def forward_peak(layer, x, memory):
    tracemalloc.start()
    try:
        y, h_n, tape = layer.forward(x, memory=memory)
        return tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()


def test_checkpointed_tape_holds_fewer_bytes():
    """The count is honest: with 8 of 3000 steps kept, the forward's peak is that of its output
    y (1/7 of an LSTM step) and its input, and not much more; the full tape is 7+ times y."""
    rng = np.random.default_rng(12)
    layer = make_layer("lstm", 4, 16, seed=13)
    x = rng.standard_normal((3000, 4, 4))
    full, ck = forward_peak(layer, x, None), forward_peak(layer, x, 8)
    y_bytes = 3000 * 4 * 16 * 8
    assert ck < 1.1 * (y_bytes + x.nbytes), (ck, y_bytes)
    assert full > 6 * y_bytes, (full, y_bytes)
    assert ck < full / 4, (ck, full)


def test_checkpointed_backward_records_the_messages_as_the_cell_does():
    """``record=`` (the cells' per-step dL/dh_t, for diagnostics) passes through the pieces."""
    rng = np.random.default_rng(14)
    layer = make_layer("gru", 3, 4, seed=15)
    cell, weights = layer.cell, layer._cell_weights(0, 0)
    x, dy, h0 = rng.standard_normal((17, 2, 3)), rng.standard_normal((17, 2, 4)), np.zeros((2, 4))
    _, _, tape = cell.forward(x, h0, weights)
    ref = np.zeros((17, 2, 4))
    cell.backward(dy, h0, tape, record=ref)
    _, _, ck = strategies.checkpointed_forward(cell, x, h0, weights, None,
                                               bptt.plan_checkpoints(17, 3),
                                               strategies.StateCount())
    ours = np.zeros((17, 2, 4))
    strategies.checkpointed_backward(dy, h0, ck, record=ours)
    assert np.abs(ref).min() > 0 and rel_err(ours, ref) < 1e-13


# ------------------------------------------------------------------------------ their errors
def test_memory_errors():
    layer = make_layer("gru", 3, 4)
    x = np.zeros((5, 2, 3))
    for memory, err in [(0, ValueError), (-3, ValueError), (2.5, TypeError), (True, TypeError),
                        ("4", TypeError)]:
        with pytest.raises(err, match=f"GRU: expected memory a positive integer .*, got "
                                      f"{memory!r}"):
            layer.forward(x, memory=memory)


def test_checkpointed_tape_backpropagates_once():
    layer = make_layer("lstm", 3, 4)
    x = np.ones((6, 2, 3))
    y, _, tape = layer.forward(x, memory=2)
    layer.backward(np.ones_like(y), tape)
    with pytest.raises(ValueError, match="LSTM: this tape was already backpropagated"):
        layer.backward(np.ones_like(y), tape)
    with pytest.raises(ValueError, match="checkpointed tape already backpropagated"):
        strategies.checkpointed_backward(np.ones((6, 2, 4)), None, tape.cells[0])
    # the full tape can be walked twice
    y, _, tape = layer.forward(x)
    _, _, g1 = layer.backward(np.ones_like(y), tape)
    _, _, g2 = layer.backward(np.ones_like(y), tape)
    assert_grads_close(g1, g2, 0)


# =============================================================================================
# Clipping inside the backward pass
# =============================================================================================


def torch_clipped(layer, x, dy, clip):
    """Single-layer torch reference: step by step, a hook clips dL/dh_t on every h_t."""
    m = torch_module(layer)
    lstm = isinstance(layer, bptt.LSTM)
    xt = torch.tensor(x, requires_grad=True)
    state, loss = None, 0
    for t in range(x.shape[0]):
        y, h_n = m(xt[t:t + 1], state)
        h = y[0]
        h.register_hook(lambda g: g.clamp(-clip, clip))
        state = (h[None], h_n[1]) if lstm else h[None]
        loss = loss + (h * torch.as_tensor(dy[t])).sum()
    loss.backward()
    return xt.grad.numpy(), {k: p.grad.numpy() for k, p in m.named_parameters()}


@pytest.mark.parametrize("family", ["rnn", "lstm", "gru"])
def test_clip_matches_torch_hooks(family):
    rng = np.random.default_rng(seed_of("clip", family))
    layer = make_layer(family, 3, 4, seed=int(rng.integers(2**31)))
    x, dy = rng.standard_normal((9, 2, 3)), 3 * rng.standard_normal((9, 2, 4))
    y, _, tape = layer.forward(x)
    dx, _, grads = layer.backward(dy, tape, clip=0.5)
    dx_ref, ref = torch_clipped(layer, x, dy, 0.5)
    assert rel_err(dx, dx_ref) < 1e-9
    assert_grads_close(grads, ref, 1e-9)
    _, _, unclipped = layer.backward(dy, tape)
    assert rel_err(unclipped["weight_hh_l0"], ref["weight_hh_l0"]) > 1e-2  # the clip acted
    # off by default: a clip wider than every message changes nothing
    _, _, wide = layer.backward(dy, tape, clip=1e6)
    assert_grads_close(wide, unclipped, 0)


def test_clip_errors():
    layer = make_layer("rnn", 3, 4)
    y, _, tape = layer.forward(np.zeros((4, 1, 3)))
    for clip, err, msg in [(0, ValueError, "expected clip a positive finite number or None, "
                                           "got 0"),
                           (-1.0, ValueError, "got -1.0"), (float("nan"), ValueError, "got nan"),
                           (float("inf"), ValueError, "got inf"),
                           (True, TypeError, "expected clip a positive number or None, got True"),
                           ("1", TypeError, "got '1'")]:
        with pytest.raises(err, match=f"^RNN: (expected clip .*)?{msg}$"):
            layer.backward(np.zeros_like(y), tape, clip=clip)
