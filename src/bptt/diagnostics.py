r"""Gradient flow over time: what BPTT's backward pass does to the gradient, step by step.

Everything here reads a forward tape and walks the same backward pass as training, asking the
cells to copy out the backward message :math:`\delta_t = \partial L / \partial h_t` at every step
(the cells' ``record=`` argument). Training never calls this module unless asked (the trainer's
``diagnose_every``), so it costs nothing when off.

Quantities, for each (layer l, direction d) of the stack (keys ``l0``, ``l0_reverse``, ...):

- **step norms** :math:`\|\delta_t\|` for t = 0..T-1, the whole batch's message at step t
  (Frobenius norm over the (B, H) array; the loss is a mean over the batch).
- **lag profile** :math:`g(k) = \|\partial L_t / \partial h_{t-k}\|`, k = 0, 1, ...: the gradient
  that the loss at one step t alone (``dout`` kept at step t, zero elsewhere) sends back k steps.
  k counts steps in the direction's own order: back in time for the forward direction
  (h_{t-k}), forward in time for the reverse one (h_{t+k}). For a ``last`` head the loss sits on
  the final state: t = T - 1 (the reverse direction's final state is at step 0). For a ``step``
  head t defaults to the last step where ``dout`` is non-zero.
- **gate saturation**: the share of a gate's activations, over all valid (step, sequence, unit),
  that sit where the derivative is small: a sigmoid below 0.05 or above 0.95, a tanh of
  magnitude above 0.95. LSTM: i, f, o, g and tanh(c); GRU: r, z, n; tanh RNN: h. A relu RNN has
  no saturation; its ``relu_zero`` is the share of units at zero, where no gradient passes.
- **spectral norm and radius** of each gate's (H, H) block of ``weight_hh``: the largest singular
  value and the largest eigenvalue magnitude. For a linear RNN the message shrinks at least as
  fast as the norm's powers when the norm is below 1 (Pascanu et al. 2013).

**Verdict**, from the lag profile of the top layer's forward direction, with r(k) = g(k) / g(0):

- *vanishing* if r(k) < 1e-3 at some lag; the **effective memory** is the first such k;
- *exploding* if r(k) > 1e3 at some lag (or a value overflows);
- *healthy* otherwise: the norm stays within three orders of magnitude over all T lags.

Each verdict also gives the **growth rate per step** :math:`\rho = e^{s}`, with s the
least-squares slope of :math:`\ln g(k)` against k over the lags where g > 0: :math:`\rho < 1`
shrinks, :math:`\rho > 1` grows, by that factor per step on average.
"""

import math

import numpy as np

from .cells import gru, lstm, rnn
from .layers import LSTM, Tape, _reverse_time  # the layers' own time reversal, within lengths
from .model import POOLED

SATURATION = 0.95          # |tanh| above, sigmoid within 0.05 of 0 or 1: saturated
VANISHED = 1e-3            # r(k) under this: vanished
EXPLODED = 1e3             # r(k) over this: exploded
GATE_NAMES = {rnn: ("h",), lstm: ("i", "f", "g", "o"), gru: ("r", "z", "n")}  # PyTorch's order


# ---------------------------------------------------------------------- the recorded backward
def record_backward(layer, tape, dy, dh_n=None, *, clip=None):
    """``layer.backward`` that also returns the backward messages.

    Returns ``(dx, dh0, grads, messages)``: the first three as ``layer.backward`` gives them, and
    ``messages``, a dict from ``l{layer}{_reverse}`` to dL/dh_t of every step, (T, B, H), in the
    input's time order (the cells record them; see ``bptt.cells``).
    """
    if isinstance(tape, Tape) and tape.plan is not None:
        raise ValueError(f"record_backward({type(layer).__name__}): the tape keeps only "
                         f"checkpoints (forward ran with memory=); diagnostics need a full tape")
    messages = {}
    dx, dh0, grads = layer.backward(dy, tape, dh_n, clip=clip, record=messages)
    messages = {k: messages[k] for k in sorted(messages, key=_layer_order)}
    return dx, dh0, grads, messages


def head_backward(model, dout, tape):
    """``(dy, dh_n)`` for the recurrent stack from dL/dout: the head's part of ``Model.backward``
    (dh_n None for the ``step`` and pooling (``mean``, ``max``, ``meanmax``) heads)."""
    dout = np.asarray(dout, model.dtype)
    T, B = tape["T"], tape["B"]
    expected = tape["feat"].shape[:-1] + (model.output_size,)
    if dout.shape != expected:
        raise ValueError(f"diagnostics: expected dout of shape {expected} to match the model's "
                         f"output, got {dout.shape}")
    dfeat = dout @ model.params["head.weight"]                  # through out = feat W^T + b
    stack = model.rnn
    H, dirs = stack.hidden_size, stack.directions
    if model.head == "step":
        return dfeat, None
    if model.head in POOLED:
        return model.pool_backward(dfeat, tape), None
    shape = (stack.num_layers * dirs, B, H)
    dh = np.zeros(shape, model.dtype)
    for d in range(dirs):                                       # feat = the top layer's h_n
        dh[shape[0] - dirs + d] = dfeat[:, d * H:(d + 1) * H]
    dh_n = (dh, np.zeros(shape, model.dtype)) if isinstance(stack, LSTM) else dh
    return np.zeros((T, B, dirs * H), model.dtype), dh_n


def messages(model, tape, dout):
    """The backward messages dL/dh_t of the model's stack for the loss whose gradient is dout."""
    dy, dh_n = head_backward(model, dout, tape)
    return record_backward(model.rnn, tape["rnn"], dy, dh_n)[3]


# ---------------------------------------------------------------------- the quantities
def step_norms(msgs):
    """||dL/dh_t|| (Frobenius over the batch) for each step: name -> (T,) float64."""
    return {k: np.sqrt(np.einsum("tbh,tbh->t", m.astype(np.float64), m.astype(np.float64)))
            for k, m in msgs.items()}


def lag_profile(model, tape, dout, t=None):
    """g(k) = ||dL_t/dh_{t-k}|| for k = 0, 1, ...: name -> (K+1,) float64, and the step t.

    ``dout`` is the loss's gradient with respect to the model's output; only its step t is used
    (a ``step`` head) or all of it (a ``last`` head, whose loss sits on the final state).
    """
    rnn_tape = tape["rnn"]
    T = rnn_tape.T
    if model.head in POOLED:
        raise ValueError(f"lag_profile: a {model.head!r} head's loss reads every step; the lag "
                         f"from one loss step is defined for 'step' and 'last' heads")
    if rnn_tape.mask is not None:
        raise ValueError("lag_profile: expected sequences of equal length (no lengths=)")
    if model.head == "last":
        if t is not None and t != T - 1:
            raise ValueError(f"lag_profile: a 'last' head's loss is at step T-1 = {T - 1}, got "
                             f"t={t!r}")
        t, one_step = T - 1, dout
    else:
        dout = np.asarray(dout)
        if t is None:
            nonzero = np.flatnonzero(np.any(dout != 0, axis=tuple(range(1, dout.ndim))))
            t = int(nonzero[-1]) if nonzero.size else T - 1
        if isinstance(t, bool) or not isinstance(t, (int, np.integer)) or not 0 <= t < T:
            raise ValueError(f"lag_profile: expected t an integer in 0..{T - 1}, got {t!r}")
        one_step = np.zeros_like(dout)
        one_step[t] = dout[t]
    msgs = messages(model, tape, one_step)
    profile = {}
    for k, m in msgs.items():
        reverse = k.endswith("_reverse")
        if not reverse:
            steps = m[t::-1]                            # h_t, h_{t-1}, ..., h_0
        else:
            origin = 0 if model.head == "last" else t   # the reverse direction ends at step 0
            steps = m[origin:]                          # h_t, h_{t+1}, ..., h_{T-1}
        profile[k] = step_norms({k: steps})[k]
    return profile, int(t)


def gate_saturation(layer, tape):
    """Share of saturated activations per gate: name -> {gate: share} (see the module doc)."""
    valid = None if tape.mask is None else tape.mask[..., 0] > 0          # (T, B)
    out = {}
    for k, cell_tape in enumerate(tape.cells):
        if not isinstance(cell_tape, dict):
            raise ValueError("gate_saturation: the tape keeps only checkpoints (forward ran "
                             "with memory=); diagnostics need a full tape")
        lay, d = divmod(k, layer.directions)
        name = f"l{lay}{layer._suffixes()[d]}"
        acts = {}                                                         # gate -> ((T,B,H), kind)
        family = type(layer).cell                 # layer.cell may be a compiled twin (backend=)
        if family is rnn:
            h = cell_tape["h"][1:]
            acts = {"relu_zero": (h, "zero")} if cell_tape["relu"] else {"h": (h, "tanh")}
        elif family is lstm:
            gates = cell_tape["gates"]                                    # (T, B, 4, H): o, i, f, g
            for j, gate in enumerate("oifg"):
                acts[gate] = (gates[:, :, j], "tanh" if gate == "g" else "sigmoid")
            acts["tanh_c"] = (cell_tape["tanh_c"], "tanh")
        else:
            gates = cell_tape["gates"]                                    # (T, B, 3, H): r, z, n
            for j, gate in enumerate("rzn"):
                acts[gate] = (gates[:, :, j], "tanh" if gate == "n" else "sigmoid")
        shares = {}
        for gate, (a, kind) in acts.items():
            if kind == "sigmoid":
                hit = (a < 1 - SATURATION) | (a > SATURATION)
            elif kind == "tanh":
                hit = np.abs(a) > SATURATION
            else:
                hit = a == 0
            if valid is not None:
                v = valid if d == 0 else _reverse_time(valid, tape.reverse_index)
                hit = hit[v]
            shares[gate] = float(hit.mean()) if hit.size else math.nan
        order = [g for g in ("i", "f", "g", "o", "tanh_c", "r", "z", "n", "h", "relu_zero")
                 if g in shares]
        out[name] = {g: shares[g] for g in order}
    return out


def spectral(layer):
    """Spectral norm (largest singular value) and radius (largest |eigenvalue|) of each gate's
    (H, H) block of every weight_hh: ``weight_hh_l0`` -> {gate: {"norm", "radius"}}."""
    H = layer.hidden_size
    out = {}
    for key, W in layer.params.items():
        if not key.startswith("weight_hh"):
            continue
        W = W.astype(np.float64)
        blocks = {}
        for j, gate in enumerate(GATE_NAMES[type(layer).cell]):
            block = W[j * H:(j + 1) * H]
            blocks[gate] = {"norm": float(np.linalg.norm(block, 2)),
                            "radius": float(np.abs(np.linalg.eigvals(block)).max())}
        out[key] = blocks
    return out


def verdict(profile):
    """Vanishing, exploding or healthy, from a lag profile g(0), g(1), ... (see the module doc).

    Returns a dict: ``kind``, ``memory`` (the effective memory in steps, for vanishing),
    ``growth`` (the fitted factor per step), ``horizon`` (the longest lag seen), ``line`` (text).
    """
    g = np.asarray(profile, np.float64)
    if g.ndim != 1 or g.size < 2:
        raise ValueError(f"verdict: expected a lag profile of at least 2 lags, got shape "
                         f"{g.shape}")
    K = g.size - 1
    result = {"kind": None, "memory": None, "growth": None, "horizon": K}
    if not np.all(np.isfinite(g)):
        k = int(np.flatnonzero(~np.isfinite(g))[0])
        result.update(kind="exploding", growth=math.inf,
                      line=f"exploding: the gradient overflows {k} steps back")
        return result
    if g[0] == 0:
        result.update(kind="no gradient", line="no gradient: the loss's gradient at lag 0 is 0")
        return result
    r = g / g[0]
    lags = np.flatnonzero(r > 0)
    slope = np.polyfit(lags, np.log(r[lags]), 1)[0] if lags.size >= 2 else -math.inf
    growth = float(math.exp(slope)) if np.isfinite(slope) else 0.0
    result["growth"] = growth
    vanished = np.flatnonzero(r < VANISHED)
    exploded = np.flatnonzero(r > EXPLODED)
    if vanished.size and (not exploded.size or vanished[0] < exploded[0]):
        m = int(vanished[0])
        result.update(kind="vanishing", memory=m,
                      line=f"vanishing: effective memory {m} steps (the norm falls under "
                           f"{VANISHED:g} of its value at the loss {m} steps back); growth "
                           f"{growth:.3g} per step")
    elif exploded.size:
        m = int(exploded[0])
        result.update(kind="exploding",
                      line=f"exploding: growth {growth:.3g} per step (the norm passes "
                           f"{EXPLODED:g} times its value at the loss {m} steps back)")
    else:
        result.update(kind="healthy",
                      line=f"healthy: the norm stays within [{VANISHED:g}, {EXPLODED:g}] of its "
                           f"value at the loss over {K} steps back; growth {growth:.3g} per step")
    return result


# ---------------------------------------------------------------------- all of it
def report(model, tape, dout, *, t=None, loss=None):
    """Every diagnostic of ``model`` at one batch, from its forward ``tape`` and dL/dout, as a
    JSON-ready dict: ``step_norms``, ``lag`` (``t`` and ``profile``), ``saturation``,
    ``spectral``, ``verdict`` (from the top layer's forward direction) and ``loss`` if given.
    A pooling head (``mean``, ``max``, ``meanmax``) has no single loss step: its ``lag`` and
    ``verdict`` are None.

    Costs one backward pass through the stack (two for a ``step`` head: the whole loss, then the
    loss at step t alone); the tape can be backpropagated again afterwards.
    """
    stack, rnn_tape = model.rnn, tape["rnn"]
    norms = step_norms(messages(model, tape, dout))
    lag = verdict_ = None
    if model.head == "last":
        # the whole loss sits on the final state, so these messages are the lag profile already:
        # forward direction read from step T-1 back, reverse direction from step 0 on
        profile = {k: v if k.endswith("_reverse") else v[::-1] for k, v in norms.items()}
        t = rnn_tape.T - 1
    elif model.head == "step":
        profile, t = lag_profile(model, tape, dout, t)
    if model.head not in POOLED:
        lag = {"t": t, "profile": {k: v.tolist() for k, v in profile.items()}}
        verdict_ = verdict(profile[f"l{stack.num_layers - 1}"])
    return {"loss": loss, "T": rnn_tape.T, "B": rnn_tape.B,
            "step_norms": {k: v.tolist() for k, v in norms.items()},
            "lag": lag,
            "saturation": gate_saturation(stack, rnn_tape),
            "spectral": spectral(stack),
            "verdict": verdict_}


def diagnose(model, x, loss_and_grad, *, t=None):
    """Run ``model`` on x and report (see ``report``); ``loss_and_grad(out) -> (loss, dout)``."""
    out, _, tape = model.forward(x)
    loss, dout = loss_and_grad(out)
    return report(model, tape, dout, t=t, loss=float(loss))


# ---------------------------------------------------------------------- figures
def plot_lag(rep, path, title=None):
    """Gradient norm against lag, log scale, one line per (layer, direction); needs matplotlib."""
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(6.5, 4))
    for k, g in rep["lag"]["profile"].items():
        g = np.asarray(g, np.float64)
        ax.semilogy(np.arange(g.size), np.where(g > 0, g, np.nan), label=k)
    g0 = rep["lag"]["profile"][f"l{_top_layer(rep)}"][0]
    if g0 > 0:
        ax.axhline(g0 * VANISHED, color="grey", ls=":", lw=1, label=f"{VANISHED:g} x lag 0")
    ax.set_xlabel(f"lag k (steps back from the loss at t = {rep['lag']['t']})")
    ax.set_ylabel(r"$\|\partial L_t / \partial h_{t-k}\|$")
    ax.set_title(title or rep["verdict"]["line"], fontsize=8)
    ax.grid(alpha=0.3, which="both")
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def plot_heatmap(records, path, key=None, title=None):
    """Training step by lag: log10 of g(k) / g(0) from a list of reports that carry a ``step``."""
    plt = _pyplot()
    if not records:
        raise ValueError("plot_heatmap: expected at least one diagnostics record")
    key = key or f"l{_top_layer(records[0])}"
    K = max(len(r["lag"]["profile"][key]) for r in records)
    grid = np.full((len(records), K), np.nan)
    for i, r in enumerate(records):
        g = np.asarray(r["lag"]["profile"][key], np.float64)
        with np.errstate(divide="ignore", invalid="ignore"):
            grid[i, :g.size] = np.log10(g / g[0])
    grid[~np.isfinite(grid)] = np.nan
    steps = [r["step"] for r in records]
    fig, ax = plt.subplots(figsize=(7, 4))
    im = ax.imshow(np.clip(grid, -8, 4), aspect="auto", origin="lower", cmap="viridis",
                   extent=(-0.5, K - 0.5, -0.5, len(records) - 0.5), vmin=-8, vmax=4,
                   interpolation="nearest")
    ticks = np.unique(np.linspace(0, len(records) - 1, min(len(records), 8)).round().astype(int))
    ax.set_yticks(ticks, [str(steps[i]) for i in ticks])
    ax.set_xlabel("lag k (steps back from the loss)")
    ax.set_ylabel("training step")
    fig.colorbar(im, ax=ax, label=r"$\log_{10}\, g(k) / g(0)$")
    ax.set_title(title or f"gradient norm by lag over training ({key})", fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def _pyplot():
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    return plt


def _top_layer(rep):
    return max(int(k[1:].split("_")[0]) for k in rep["lag"]["profile"])


def _layer_order(name):
    lay, _, rest = name[1:].partition("_")
    return int(lay), rest
