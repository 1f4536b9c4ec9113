r"""Optimizers that update a dict of parameter arrays in place, and learning-rate schedules.

Each optimizer follows ``torch.optim``'s update rule: the same formulas in the same order, the
same place for eps, weight decay and bias correction, so a run here and a run in PyTorch from the
same weights and gradients stay together step for step (within a few ulps: torch's kernels may
fuse a multiply-add). Only the single-tensor path's semantics are
reproduced (no amsgrad, maximize, foreach or parameter groups).

Use::

    opt = Adam(model.params, lr=1e-3)             # keeps the arrays themselves, writes into them
    schedule = Schedule("cosine", 1e-3, warmup=100, total_steps=10_000)
    for batch in batches:
        grads = ...                               # same keys and shapes as the params
        opt.lr = schedule(opt.step_count)
        opt.step(grads)

``state_dict()`` is flat: Python scalars (``optimizer``, ``step_count`` and the hyperparameters)
and one NumPy array per (state slot, parameter) under ``"slot/name"``, so the arrays go to an
``.npz`` and the scalars to JSON, and ``load_state_dict`` takes them back (0-d arrays as scalars
too, as ``np.load`` returns them). All parameters step together: one ``step_count``, where
PyTorch keeps one per parameter.
"""

import math
import numbers
import os

import numpy as np


class Optimizer:
    """Common machinery; use ``SGD``, ``Adam``, ``AdamW``, ``RMSprop`` or ``Adagrad``."""

    hyper = ("lr",)   # hyperparameter names, as attributes and as state_dict keys

    def __init__(self, params, hyper):
        self.params = _check_params(type(self).__name__, params)
        hyper = self._check_hyper(hyper)
        for name, value in hyper.items():
            setattr(self, name, value)
        self.step_count = 0
        self.state = {k: {slot: np.zeros_like(p) for slot in self._slots(hyper)}
                      for k, p in self.params.items()}

    # ------------------------------------------------------------------ hyperparameters
    @property
    def lr(self):
        return self._lr

    @lr.setter
    def lr(self, value):  # schedules set it between steps
        self._lr = _number(type(self).__name__, "lr", value)

    def _check_hyper(self, hyper):
        """Validate a dict holding exactly ``self.hyper``; return it with plain Python values."""
        return {"lr": _number(type(self).__name__, "lr", hyper["lr"])}

    @staticmethod
    def _slots(hyper):
        """Names of the per-parameter state arrays under these hyperparameters."""
        return ()

    # ------------------------------------------------------------------ the step
    def step(self, grads):
        """Apply one update from ``grads`` (same keys and shapes as the params) to the params."""
        name = type(self).__name__
        if not hasattr(grads, "keys"):
            raise TypeError(f"{name}: expected grads a dict of name -> array, got "
                            f"{type(grads).__name__}")
        _check_keys(name, "grads", self.params.keys(), grads.keys())
        checked = {}
        for k, p in self.params.items():  # all checked before any parameter moves
            g = np.asarray(grads[k])
            if g.dtype.kind not in "fiu":
                raise TypeError(f"{name}: grads[{k!r}]: expected real numbers, got dtype {g.dtype}")
            if g.shape != p.shape:
                raise ValueError(f"{name}: grads[{k!r}]: expected the parameter's shape {p.shape}, "
                                 f"got {g.shape}")
            checked[k] = g.astype(p.dtype, copy=False)
        self.step_count += 1
        for k, p in self.params.items():
            self._update(p, checked[k], self.state[k])

    def _update(self, p, g, state):
        """Update one parameter in place; g is read-only here (it may be the caller's array)."""
        raise NotImplementedError

    # ------------------------------------------------------------------ checkpoints
    def state_dict(self):
        """A flat dict of Python scalars and NumPy arrays (copies); see the module docstring."""
        d = {"optimizer": type(self).__name__, "step_count": self.step_count}
        d.update({h: getattr(self, h) for h in self.hyper})
        for k, slots in self.state.items():
            for slot, arr in slots.items():
                d[f"{slot}/{k}"] = arr.copy()
        return d

    def load_state_dict(self, state_dict):
        """Restore step count, hyperparameters and state exactly; all or nothing."""
        name = type(self).__name__
        if not hasattr(state_dict, "keys"):
            raise TypeError(f"{name}: expected a state dict (a mapping), got "
                            f"{type(state_dict).__name__}")
        scalars = ("optimizer", "step_count", *self.hyper)
        missing = [s for s in scalars if s not in state_dict]
        if missing:
            raise ValueError(f"{name}: state dict lacks {missing}")
        plain = {s: _scalar(state_dict[s]) for s in scalars}
        if plain["optimizer"] != name:
            raise ValueError(f"{name}: expected a state dict saved by {name}, got one saved by "
                             f"{plain['optimizer']!r}")
        step_count = plain["step_count"]
        if isinstance(step_count, bool) or not isinstance(step_count, numbers.Integral) \
                or step_count < 0:
            raise ValueError(f"{name}: expected step_count an integer >= 0, got {step_count!r}")
        hyper = self._check_hyper({h: plain[h] for h in self.hyper})
        slots = self._slots(hyper)
        arrays = [f"{slot}/{k}" for k in self.params for slot in slots]
        _check_keys(name, "state dict", [*scalars, *arrays], state_dict.keys())
        state = {k: {} for k in self.params}
        for k, p in self.params.items():
            for slot in slots:
                key = f"{slot}/{k}"
                v = np.asarray(state_dict[key])
                if v.dtype.kind != "f":
                    raise TypeError(f"{name}: state dict {key!r}: expected floats, got dtype "
                                    f"{v.dtype}")
                if v.shape != p.shape:
                    raise ValueError(f"{name}: state dict {key!r}: expected the parameter's "
                                     f"shape {p.shape}, got {v.shape}")
                state[k][slot] = v.astype(p.dtype, copy=True)
        for h, value in hyper.items():
            setattr(self, h, value)
        self.step_count = int(step_count)
        self.state = state

    def __repr__(self):
        options = ", ".join(f"{h}={getattr(self, h)!r}" for h in self.hyper)
        return f"{type(self).__name__}({len(self.params)} params, {options})"


class SGD(Optimizer):
    r"""Stochastic gradient descent with momentum, as ``torch.optim.SGD``:

    .. math::
        g_t &= \nabla_t + \lambda\,\theta_{t-1} \\
        b_1 &= g_1,\quad b_t = \mu\, b_{t-1} + (1-\tau)\, g_t \quad (t>1) \\
        \theta_t &= \theta_{t-1} - \gamma\,(g_t + \mu\, b_t \ \text{if nesterov else}\ b_t)

    with lr :math:`\gamma`, momentum :math:`\mu` (0: no buffer, the step is :math:`\gamma g_t`),
    dampening :math:`\tau` and weight_decay :math:`\lambda`. Nesterov needs momentum > 0 and no
    dampening.
    """

    hyper = ("lr", "momentum", "dampening", "weight_decay", "nesterov")

    def __init__(self, params, lr=1e-3, momentum=0.0, dampening=0.0, weight_decay=0.0,
                 nesterov=False):
        super().__init__(params, dict(lr=lr, momentum=momentum, dampening=dampening,
                                      weight_decay=weight_decay, nesterov=nesterov))

    def _check_hyper(self, hyper):
        name = type(self).__name__
        h = super()._check_hyper(hyper)
        h["momentum"] = _number(name, "momentum", hyper["momentum"])
        h["dampening"] = _number(name, "dampening", hyper["dampening"], high=1.0)
        h["weight_decay"] = _number(name, "weight_decay", hyper["weight_decay"])
        h["nesterov"] = _flag(name, "nesterov", hyper["nesterov"])
        if h["nesterov"] and (h["momentum"] == 0 or h["dampening"] != 0):
            raise ValueError(f"{name}: nesterov needs momentum > 0 and dampening 0, got "
                             f"momentum={h['momentum']}, dampening={h['dampening']}")
        return h

    @staticmethod
    def _slots(hyper):
        return ("momentum_buffer",) if hyper["momentum"] != 0 else ()

    def _update(self, p, g, state):
        if self.weight_decay != 0:
            g = g + self.weight_decay * p
        if self.momentum != 0:
            buf = state["momentum_buffer"]
            if self.step_count == 1:  # torch starts the buffer at the first gradient
                buf[...] = g
            else:
                buf *= self.momentum
                buf += (1 - self.dampening) * g
            g = g + self.momentum * buf if self.nesterov else buf
        p -= self.lr * g


class Adam(Optimizer):
    r"""Adam (Kingma & Ba 2015) with L2 weight decay added to the gradient, as ``torch.optim.Adam``:

    .. math::
        g_t &= \nabla_t + \lambda\,\theta_{t-1} \\
        m_t &= \beta_1 m_{t-1} + (1-\beta_1)\, g_t, \qquad
        v_t = \beta_2 v_{t-1} + (1-\beta_2)\, g_t^2 \\
        \theta_t &= \theta_{t-1} - \frac{\gamma}{1-\beta_1^t}\,
                    \frac{m_t}{\sqrt{v_t}/\sqrt{1-\beta_2^t} + \epsilon}

    with lr :math:`\gamma`, betas :math:`(\beta_1, \beta_2)`, weight_decay :math:`\lambda`;
    :math:`m_0 = v_0 = 0`. Note where eps sits: it is added to the bias-corrected
    :math:`\sqrt{\hat v_t}`. State: ``exp_avg`` (m), ``exp_avg_sq`` (v).
    """

    hyper = ("lr", "beta1", "beta2", "eps", "weight_decay")
    decoupled = False

    def __init__(self, params, lr=1e-3, betas=(0.9, 0.999), eps=1e-8, weight_decay=0.0):
        name = type(self).__name__
        if not isinstance(betas, (tuple, list)) or len(betas) != 2:
            raise TypeError(f"{name}: expected betas a pair (beta1, beta2), got {betas!r}")
        super().__init__(params, dict(lr=lr, beta1=betas[0], beta2=betas[1], eps=eps,
                                      weight_decay=weight_decay))

    @property
    def betas(self):
        return (self.beta1, self.beta2)

    def _check_hyper(self, hyper):
        name = type(self).__name__
        h = super()._check_hyper(hyper)
        h["beta1"] = _number(name, "beta1", hyper["beta1"], high=1.0, high_open=True)
        h["beta2"] = _number(name, "beta2", hyper["beta2"], high=1.0, high_open=True)
        h["eps"] = _number(name, "eps", hyper["eps"])
        h["weight_decay"] = _number(name, "weight_decay", hyper["weight_decay"])
        return h

    @staticmethod
    def _slots(hyper):
        return ("exp_avg", "exp_avg_sq")

    def _update(self, p, g, state):
        lr, beta1, beta2, t = self.lr, self.beta1, self.beta2, self.step_count
        m, v = state["exp_avg"], state["exp_avg_sq"]
        fused = _fused_adam()
        if fused is not None and fused(p, g, m, v, t, lr, beta1, beta2, self.eps,
                                       self.weight_decay, self.decoupled):
            return  # the lines below in one pass (bptt.native, where built): the same bits
        if self.weight_decay != 0:
            if self.decoupled:
                p *= 1 - lr * self.weight_decay
            else:
                g = g + self.weight_decay * p
        _lerp_(m, g, 1 - beta1)
        v *= beta2
        v += (1 - beta2) * g * g
        step_size = lr / (1 - beta1 ** t)
        denom = np.sqrt(v)
        denom /= (1 - beta2 ** t) ** 0.5
        denom += self.eps
        p -= step_size * (m / denom)


class AdamW(Adam):
    r"""Adam with decoupled weight decay (Loshchilov & Hutter 2019), as ``torch.optim.AdamW``:
    the parameter shrinks first, :math:`\theta \leftarrow \theta\,(1 - \gamma\lambda)`, and the
    Adam step above then uses the raw gradient :math:`g_t = \nabla_t`. weight_decay defaults to
    1e-2, as in PyTorch.
    """

    decoupled = True

    def __init__(self, params, lr=1e-3, betas=(0.9, 0.999), eps=1e-8, weight_decay=1e-2):
        super().__init__(params, lr=lr, betas=betas, eps=eps, weight_decay=weight_decay)


class RMSprop(Optimizer):
    r"""RMSprop (Hinton's lecture 6e), as ``torch.optim.RMSprop``:

    .. math::
        g_t &= \nabla_t + \lambda\,\theta_{t-1}, \qquad
        v_t = \alpha v_{t-1} + (1-\alpha)\, g_t^2 \\
        \tilde v_t &= v_t - \bar g_t^2,\ \ \bar g_t = \alpha \bar g_{t-1} + (1-\alpha)\, g_t
                     \ \text{if centered, else}\ \tilde v_t = v_t \\
        b_t &= \mu b_{t-1} + g_t / (\sqrt{\tilde v_t} + \epsilon), \qquad
        \theta_t = \theta_{t-1} - \gamma\, b_t

    with lr :math:`\gamma`, alpha :math:`\alpha`, momentum :math:`\mu` (0: the step is
    :math:`\gamma g_t/(\sqrt{\tilde v_t}+\epsilon)`, no buffer), weight_decay :math:`\lambda`.
    State: ``square_avg`` (v), ``grad_avg`` (centered), ``momentum_buffer`` (momentum > 0).
    """

    hyper = ("lr", "alpha", "eps", "weight_decay", "momentum", "centered")

    def __init__(self, params, lr=1e-2, alpha=0.99, eps=1e-8, weight_decay=0.0, momentum=0.0,
                 centered=False):
        super().__init__(params, dict(lr=lr, alpha=alpha, eps=eps, weight_decay=weight_decay,
                                      momentum=momentum, centered=centered))

    def _check_hyper(self, hyper):
        name = type(self).__name__
        h = super()._check_hyper(hyper)
        h["alpha"] = _number(name, "alpha", hyper["alpha"], high=1.0)
        h["eps"] = _number(name, "eps", hyper["eps"])
        h["weight_decay"] = _number(name, "weight_decay", hyper["weight_decay"])
        h["momentum"] = _number(name, "momentum", hyper["momentum"])
        h["centered"] = _flag(name, "centered", hyper["centered"])
        return h

    @staticmethod
    def _slots(hyper):
        return (("square_avg",) + (("grad_avg",) if hyper["centered"] else ())
                + (("momentum_buffer",) if hyper["momentum"] > 0 else ()))

    def _update(self, p, g, state):
        alpha = self.alpha
        if self.weight_decay != 0:
            g = g + self.weight_decay * p
        square_avg = state["square_avg"]
        square_avg *= alpha
        square_avg += (1 - alpha) * g * g
        if self.centered:
            grad_avg = state["grad_avg"]
            _lerp_(grad_avg, g, 1 - alpha)
            avg = np.sqrt(square_avg - grad_avg * grad_avg)
        else:
            avg = np.sqrt(square_avg)
        avg += self.eps
        if self.momentum > 0:
            buf = state["momentum_buffer"]
            buf *= self.momentum
            buf += g / avg
            p -= self.lr * buf
        else:
            p -= self.lr * (g / avg)


class Adagrad(Optimizer):
    r"""Adagrad (Duchi et al. 2011), as ``torch.optim.Adagrad``:

    .. math::
        g_t &= \nabla_t + \lambda\,\theta_{t-1}, \qquad
        \tilde\gamma_t = \frac{\gamma}{1 + (t-1)\,\eta} \\
        s_t &= s_{t-1} + g_t^2, \qquad
        \theta_t = \theta_{t-1} - \tilde\gamma_t\, \frac{g_t}{\sqrt{s_t} + \epsilon}

    with lr :math:`\gamma`, lr_decay :math:`\eta`, weight_decay :math:`\lambda` and
    :math:`s_0` = initial_accumulator_value. State: ``sum`` (s).
    """

    hyper = ("lr", "lr_decay", "weight_decay", "initial_accumulator_value", "eps")

    def __init__(self, params, lr=1e-2, lr_decay=0.0, weight_decay=0.0,
                 initial_accumulator_value=0.0, eps=1e-10):
        super().__init__(params, dict(lr=lr, lr_decay=lr_decay, weight_decay=weight_decay,
                                      initial_accumulator_value=initial_accumulator_value,
                                      eps=eps))
        for state in self.state.values():
            state["sum"][...] = self.initial_accumulator_value

    def _check_hyper(self, hyper):
        name = type(self).__name__
        h = super()._check_hyper(hyper)
        for key in ("lr_decay", "weight_decay", "initial_accumulator_value", "eps"):
            h[key] = _number(name, key, hyper[key])
        return h

    @staticmethod
    def _slots(hyper):
        return ("sum",)

    def _update(self, p, g, state):
        if self.weight_decay != 0:
            g = g + self.weight_decay * p
        clr = self.lr / (1 + (self.step_count - 1) * self.lr_decay)
        s = state["sum"]
        s += g * g
        std = np.sqrt(s)
        std += self.eps
        p -= clr * (g / std)


OPTIMIZERS = {"sgd": SGD, "adam": Adam, "adamw": AdamW, "rmsprop": RMSprop, "adagrad": Adagrad}


def build_optimizer(name, params, **kwargs):
    """The optimizer called ``name`` (any case: 'sgd', 'adam', 'adamw', 'rmsprop', 'adagrad')."""
    cls = OPTIMIZERS.get(name.lower()) if isinstance(name, str) else None
    if cls is None:
        raise ValueError(f"build_optimizer: expected one of {', '.join(OPTIMIZERS)}, "
                         f"got {name!r}")
    return cls(params, **kwargs)


class Schedule:
    r"""A learning rate as a function of the step: ``schedule(step) -> lr``, step = 0, 1, ...
    the number of updates already made (``opt.step_count``). It holds no state.

    .. math::
        \mathrm{constant}:\ \gamma_0 \qquad
        \mathrm{step}:\ \gamma_0\, \mathrm{gamma}^{\lfloor s / \mathrm{step\_size} \rfloor} \qquad
        \mathrm{cosine}:\ \gamma_{\min} + (\gamma_0 - \gamma_{\min})\,
                          \tfrac{1}{2}\big(1 + \cos(\pi \min(s, S)/S)\big)

    with S = total_steps (cosine holds at min_lr after S). A linear warm-up of W = ``warmup``
    steps multiplies any of them by :math:`(s+1)/(W+1)` for :math:`s < W`: the rate climbs from
    :math:`\gamma_0/(W+1)` and reaches the schedule at step W. The twins in
    ``torch.optim.lr_scheduler``: StepLR, CosineAnnealingLR (up to S) and, for the warm-up,
    LinearLR(start_factor=1/(W+1), total_iters=W), chained multiplicatively (ChainedScheduler).

    Options: 'step' needs ``step_size`` and takes ``gamma`` (0.1); 'cosine' needs
    ``total_steps`` and takes ``min_lr`` (0).
    """

    OPTIONS = {"constant": {}, "step": {"step_size": None, "gamma": 0.1},
               "cosine": {"total_steps": None, "min_lr": 0.0}}

    def __init__(self, kind, base_lr, warmup=0, **options):
        name = "Schedule"
        if kind not in self.OPTIONS:
            raise ValueError(f"{name}: expected kind one of {', '.join(self.OPTIONS)}, "
                             f"got {kind!r}")
        allowed = self.OPTIONS[kind]
        unexpected = [k for k in options if k not in allowed]
        if unexpected:
            raise TypeError(f"{name}: kind {kind!r} takes options {list(allowed)}, got "
                            f"unexpected {unexpected}")
        required = [k for k, default in allowed.items() if default is None and k not in options]
        if required:
            raise TypeError(f"{name}: kind {kind!r} needs {required}")
        self.kind = kind
        self.base_lr = _number(name, "base_lr", base_lr)
        self.warmup = _count(name, "warmup", warmup)
        self.options = {**allowed, **options}
        if kind == "step":
            self.options["step_size"] = _count(name, "step_size", options["step_size"], low=1)
            self.options["gamma"] = _number(name, "gamma", self.options["gamma"])
        elif kind == "cosine":
            self.options["total_steps"] = _count(name, "total_steps", options["total_steps"],
                                                 low=1)
            self.options["min_lr"] = _number(name, "min_lr", self.options["min_lr"],
                                             high=self.base_lr)

    def __call__(self, step):
        step = _count("Schedule", "step", step)
        o = self.options
        if self.kind == "step":
            lr = self.base_lr * o["gamma"] ** (step // o["step_size"])
        elif self.kind == "cosine":
            S = o["total_steps"]
            lr = o["min_lr"] + (self.base_lr - o["min_lr"]) * (1 + math.cos(math.pi * min(step, S)
                                                                            / S)) / 2
        else:
            lr = self.base_lr
        if step < self.warmup:
            lr *= (step + 1) / (self.warmup + 1)
        return lr

    def __repr__(self):
        options = "".join(f", {k}={v!r}" for k, v in self.options.items())
        return f"Schedule({self.kind!r}, {self.base_lr!r}, warmup={self.warmup}{options})"


# ---------------------------------------------------------------------- helpers
FUSED = os.environ.get("BPTT_FUSED_OPTIM", "1") != "0"
_FUSED_ADAM = []  # [the fused update, or None], once looked up


def _fused_adam():
    """``bptt.native.adam`` where the native extension was built (and ``FUSED`` is on: set
    ``BPTT_FUSED_OPTIM=0`` to keep every update in NumPy), else None. Adam's NumPy update makes
    ten passes over each parameter, each with a temporary of its size: 6.4 ms a step for the
    1.37 M parameters of the sentiment model, where one pass takes a fraction of it."""
    if not FUSED:
        return None
    if not _FUSED_ADAM:
        try:
            from .native import adam
        except ImportError:
            adam = None
        _FUSED_ADAM.append(adam)
    return _FUSED_ADAM[0]


def _lerp_(start, end, weight):
    """start += weight * (end - start), in place, rounded the way torch.lerp rounds it."""
    if weight < 0.5:
        start += weight * (end - start)
    else:
        start[...] = end - (end - start) * (1 - weight)


def _check_params(owner, params):
    if not hasattr(params, "items"):
        raise TypeError(f"{owner}: expected params a dict of name -> array, got "
                        f"{type(params).__name__}")
    if not params:
        raise ValueError(f"{owner}: expected at least one parameter, got an empty dict")
    for k, p in params.items():
        if not isinstance(k, str):
            raise TypeError(f"{owner}: expected parameter names as strings, got {k!r}")
        if not isinstance(p, np.ndarray):
            raise TypeError(f"{owner}: params[{k!r}]: expected a NumPy array (the optimizer "
                            f"writes into it), got {type(p).__name__}")
        if p.dtype not in (np.float32, np.float64):
            raise TypeError(f"{owner}: params[{k!r}]: expected dtype float32 or float64, got "
                            f"{p.dtype}")
        if not p.flags.writeable:
            raise ValueError(f"{owner}: params[{k!r}] is read-only; the optimizer writes into it")
    seen = {}
    for k, p in params.items():  # one array under two names would be stepped twice per step
        if id(p) in seen:
            raise ValueError(f"{owner}: params[{seen[id(p)]!r}] and params[{k!r}] are the same "
                             f"array; give a tied weight one entry and sum its gradients")
        seen[id(p)] = k
    return dict(params)


def _check_keys(owner, what, expected, got):
    expected, got = list(expected), list(got)
    expected_set, got_set = set(expected), set(got)
    missing = [k for k in expected if k not in got_set]
    unexpected = [k for k in got if k not in expected_set]
    if missing or unexpected:
        raise ValueError(f"{owner}: {what} does not match: missing keys {missing}, unexpected "
                         f"keys {unexpected}")


def _number(owner, what, value, low=0.0, high=None, high_open=False):
    """A finite real in [low, high] (or [low, high)) as a Python float."""
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, numbers.Real):
        raise TypeError(f"{owner}: expected {what} a real number, got {value!r}")
    value = float(value)
    above = high is not None and (value >= high if high_open else value > high)
    if not math.isfinite(value) or value < low or above:
        interval = f"[{low:g}, " + ("inf)" if high is None else f"{high:g}" + (")" if high_open
                                                                             else "]"))
        raise ValueError(f"{owner}: expected {what} in {interval}, got {value!r}")
    return value


def _count(owner, what, value, low=0):
    """An integer >= low as a Python int."""
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, numbers.Integral):
        raise TypeError(f"{owner}: expected {what} an integer, got {value!r}")
    if value < low:
        raise ValueError(f"{owner}: expected {what} >= {low}, got {value!r}")
    return int(value)


def _flag(owner, what, value):
    if not isinstance(value, (bool, np.bool_)):
        raise TypeError(f"{owner}: expected {what} a bool, got {value!r}")
    return bool(value)


def _scalar(value):
    """A Python scalar from itself or a 0-d array (what np.load gives back for one)."""
    if isinstance(value, (np.ndarray, np.generic)) and np.ndim(value) == 0:
        return value.item()
    return value
