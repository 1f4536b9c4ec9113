r"""Forecasting a time series from a sliding window, beside seasonal-naive and ARIMA forecasts.

The model reads the last W steps of every column and gives the next H values of the target at
once: ``Model(C, hidden, H, input='linear', head='last')`` trained with the mean squared error on
the standardised series (scaler fitted on the training rows only). One-step forecasting is H = 1,
multi-step H > 1; a multivariate series is C > 1 input columns. Training windows have their
targets in the training rows; the validation rows choose the epoch (early stopping); the test
rows are forecast walk-forward, from every origin of the test part with the actual history up to
it (see ``bptt.data.timeseries``).

Windows of a trending series (co2, airline, macrodata, and CSV files by default) are *anchored*:
taken relative to their last value, so that the network forecasts the change from the origin
and never has to extrapolate a level outside the training range; ``log`` makes multiplicative
seasonality additive (airline, macrodata).

Two baselines on the same origins and targets:

- seasonal naive: each target is the value one season earlier (the last value for season 1);
- ARIMA: ``statsmodels``' SARIMAX with a fixed, textbook order per series: the airline model
  (0,1,1)(0,1,1)12 for airline, (1,1,1)(0,1,1)12 for co2, AR(9) for the sunspots, (1,1,0) with
  a drift for GDP, and (1,1,1) for a CSV file (with (0,1,1) at the season given by ``--season``).
  It is fitted once on the rows before the test part (training and validation), on log(y) where
  the network sees logs, then run forward over the actual history to each origin with those
  parameters, as the network is.

The checkpoint holds the configuration (and a CSV file's SHA-256), so ``bptt train forecast
--resume DIR`` rebuilds the same windows and continues the model where it stopped.
"""

import dataclasses
import hashlib
import json
import os
import time
import warnings
from dataclasses import dataclass

import numpy as np

from ..checkpoint import write_text
from ..config import (ConfigError, absolute, add_options, check_choice, merge, option,
                      resume_options)
from ..data import timeseries as ts
from ..layers import BACKEND_HELP, BACKENDS, DEFAULT_BACKEND, check_backend
from ..model import CELLS, Model
from ..supervised import FitConfig, SequenceData, fit, predict
from ..trainer import NONFINITE, load_run

NAME = "forecast"
# what --resume may change: budgets and bookkeeping (and whether ARIMA is scored); everything
# else is the run's own
RESUMABLE = {"epochs", "patience", "minutes", "checkpoint_every", "on_nonfinite", "baseline"}

# Per-series defaults, in one visible place. window and horizon in steps of the series; test and
# valid: the last steps for testing, the ones before for validation; log: model log(values);
# anchor: windows relative to their last row (for trending series); arima: (order, seasonal order).
PRESETS = {
    "sunspots": dict(window=22, horizon=1, test=44, valid=33, log=False, anchor=False,
                     arima=((9, 0, 0), (0, 0, 0, 0))),
    "co2": dict(window=24, horizon=12, test=60, valid=48, log=False, anchor=True,
                arima=((1, 1, 1), (0, 1, 1, 12))),
    "airline": dict(window=24, horizon=12, test=36, valid=24, log=True, anchor=True,
                    arima=((0, 1, 1), (0, 1, 1, 12))),
    "macrodata": dict(window=12, horizon=4, test=40, valid=24, log=True, anchor=True,
                      arima=((1, 1, 0), (0, 0, 0, 0))),
    "csv": dict(window=24, horizon=1, test=0.2, valid=0.1, log=False, anchor=True, arima=None),
}


@dataclass
class ForecastConfig:
    """What ``run`` does; None means the series' preset (``PRESETS``)."""

    series: str = option("airline", "a named series ('csv' with --csv)",
                         choices=tuple(k for k in PRESETS if k != "csv"))
    csv: str | None = option(None, "a CSV file with a header row", metavar="PATH")
    columns: tuple | None = option(None, "csv: the columns to read, the target first unless "
                                   "target", cli=False)
    target: str | None = option(None, "the CSV column to forecast", metavar="NAME",
                                shown="the first --column")
    time_column: str | None = option(None, "the CSV column naming each row (dates, for the plot "
                                     "and the report)", metavar="NAME", shown="the row numbers")
    season: int | None = option(None, "steps per seasonal cycle (seasonal naive, MASE, seasonal "
                                "ARIMA)", shown="per series")
    missing: str = option("error", "missing CSV values: an error, interpolated (linearly) or "
                          "dropped", choices=ts.MISSING_POLICIES)
    window: int | None = option(None, "input steps per window", shown="per series")
    horizon: int | None = option(None, "steps forecast at once (1: one-step)", shown="per series")
    test: float | None = option(None, "last steps held out for the test (a count, or a fraction "
                                "when < 1)", shown="per series")
    valid: float | None = option(None, "steps before the test part for early stopping (count or "
                                 "fraction)", shown="per series")
    log: bool | None = option(None, "model log(values)", shown="per series")
    anchor: bool | None = option(None, "windows relative to their last value",
                                 shown="per series")
    arima: tuple | None = option(None, "((p, d, q), (P, D, Q, s)); csv: (1, 1, 1) and (0, 1, 1) "
                                 "at the season", cli=False)
    cell: str = option("lstm", "recurrent cell", choices=tuple(CELLS))
    hidden: int = option(32, "hidden units per layer")
    layers: int = option(1, "stacked recurrent layers")
    epochs: int = option(300, "most epochs")
    batch: int = option(16, "windows per batch")
    lr: float = option(3e-3, "Adam learning rate")
    weight_decay: float = option(0.0, "L2 weight decay")
    patience: int = option(40, "early stopping: epochs without a better validation error")
    minutes: float | None = option(None, "time budget in minutes of training")
    checkpoint_every: int | None = option(None, "write the checkpoint every N updates",
                                          shown="after each epoch")
    on_nonfinite: str = option("stop", "a non-finite loss or gradient stops the run or skips "
                               "the update", choices=NONFINITE)
    seed: int = option(0, "initialisation and batch-order seed")
    backend: str = option(DEFAULT_BACKEND, BACKEND_HELP, choices=BACKENDS)
    baseline: bool = option(True, "fit and score ARIMA too (seasonal naive is always reported)")

    def __post_init__(self):
        check_backend(self.backend, "forecast")
        check_choice("forecast", "series", self.series, tuple(PRESETS))
        check_choice("forecast", "missing", self.missing, ts.MISSING_POLICIES)
        check_choice("forecast", "cell", self.cell, tuple(CELLS))
        self.fit_config()                       # the budgets' and the loop's own checks

    def fit_config(self):
        return FitConfig(epochs=self.epochs, batch=self.batch, lr=self.lr,
                         weight_decay=self.weight_decay, patience=self.patience, seed=self.seed,
                         loss="mse", clip=1.0, minutes=self.minutes,
                         checkpoint_every=self.checkpoint_every, on_nonfinite=self.on_nonfinite)

    def resolved(self):
        """A copy with every None filled from the preset; checks the combination."""
        if (self.series == "csv") != (self.csv is not None):
            raise ValueError("forecast: give a CSV file with series 'csv' (--csv PATH --column "
                             "NAME), and only then")
        if self.series == "csv" and not self.columns:
            raise ValueError("forecast: a CSV file needs the columns to read (--column NAME, "
                             "once per column; the first is the target unless --target)")
        preset = dict(PRESETS[self.series])
        if self.series == "csv":
            season = self.season or 1
            preset["arima"] = ((1, 1, 1), (0, 1, 1, season) if season > 1 else (0, 0, 0, 0))
        filled = {k: (preset[k] if getattr(self, k) is None and k in preset else getattr(self, k))
                  for k in (f.name for f in dataclasses.fields(self))}
        return dataclasses.replace(self, **filled)


def load(cfg):
    """The Series of a resolved configuration."""
    if cfg.series == "csv":
        columns = list(cfg.columns)
        if cfg.target is not None and cfg.target not in columns:
            columns = [cfg.target] + columns
        return ts.read_csv(cfg.csv, columns, time_column=cfg.time_column, missing=cfg.missing,
                           season=cfg.season or 1, target=cfg.target)
    s = ts.load_series(cfg.series)
    if cfg.season is not None:
        s = dataclasses.replace(s, season=cfg.season)
    return s


@dataclass
class Prepared:
    """A series made ready: the transformed values ``z`` (N, C), the scaler fitted on the
    training rows, the split and the windows of each part: ``parts[name] = (data, origins)``."""

    series: ts.Series
    values: np.ndarray            # the model's units before scaling: log(values) if cfg.log
    z: np.ndarray
    scaler: ts.Scaler
    train_end: int
    valid_end: int
    parts: dict


def prepare(cfg):
    """Load, transform, split, scale (on the training rows only) and window; see ``Prepared``."""
    cfg = cfg.resolved()
    s = load(cfg)
    values = s.values
    if cfg.log:
        if (values <= 0).any():
            raise ValueError(f"forecast: log needs positive values; {s.name} has values <= 0 "
                             f"(run with --no-log)")
        values = np.log(values)
    N = len(values)
    W, H = cfg.window, cfg.horizon
    train_end, valid_end = ts.split_points(N, cfg.test, cfg.valid)
    if train_end < W + H + 1:
        raise ValueError(f"forecast: {train_end} training steps cannot hold a window of {W} "
                         f"and a horizon of {H} (shorten --window or --horizon)")
    if N - valid_end < H:
        raise ValueError(f"forecast: the test part ({N - valid_end} steps) is shorter than the "
                         f"horizon {H}")
    if valid_end - train_end < H:
        raise ValueError(f"forecast: the validation part ({valid_end - train_end} steps) is "
                         f"shorter than the horizon {H}")
    if valid_end <= s.season:
        raise ValueError(f"forecast: {valid_end} steps before the test part are too few for "
                         f"season {s.season}")
    scaler = ts.Scaler.fit(values[:train_end])
    z = scaler.transform(values)
    parts = {}
    for part, (lo, hi) in {"train": (W, train_end), "valid": (train_end, valid_end),
                           "test": (valid_end, N)}.items():
        x, y, origins = ts.make_windows(z, W, H, target=s.target, start=lo, stop=hi,
                                        anchor=cfg.anchor)
        parts[part] = (SequenceData(x.astype(np.float32), y.astype(np.float32)), origins)
    return Prepared(s, values, z, scaler, train_end, valid_end, parts)


def run(cfg=None, out_dir=None, *, log=print, resume=False):
    """Train and evaluate; return a report dict (also ``out_dir/report.json``, ``forecast.png``).
    With ``resume``, a checkpoint in out_dir is continued (a finished one read back)."""
    cfg = (cfg or ForecastConfig()).resolved()
    p = prepare(cfg)
    s, values, z, scaler, parts = p.series, p.values, p.z, p.scaler, p.parts
    train_end, valid_end = p.train_end, p.valid_end
    N, C = values.shape
    W, H = cfg.window, cfg.horizon
    log(f"forecast {s.name}: {N} steps x {C} column{'s' * (C > 1)} ({', '.join(s.columns)}), "
        f"target {s.target_name}, season {s.season}; window {W}, horizon {H}; windows "
        f"train {len(parts['train'][0])} / valid {len(parts['valid'][0])} / test "
        f"{len(parts['test'][0])} (test = last {N - valid_end} steps, from {s.times[valid_end]})")

    model = Model(C, cfg.hidden, H, cell=cfg.cell, input="linear", num_layers=cfg.layers,
                  head="last", seed=cfg.seed, backend=cfg.backend)
    app = {"name": NAME, "config": dataclasses.asdict(cfg), "data": data_identity(cfg)}
    t0 = time.perf_counter()
    result = fit(model, parts["train"][0], parts["valid"][0], cfg.fit_config(), out_dir,
                 resume=resume, meta={"app": app})
    train_s = time.perf_counter() - t0
    log(f"trained {len(result.history)} epochs in {train_s:.1f}s; best epoch {result.best_epoch} "
        f"({result.stop_reason})")

    test, origins = parts["test"]
    out = predict(model, test).astype(np.float64)                         # (n, H), scaled
    if cfg.anchor:
        out += z[origins, s.target][:, None]
    rnn = _original_units(scaler.inverse(out, s.target), cfg.log)
    y = s.target_values
    rows = ts.target_rows(origins, H)
    actual = y[rows]
    forecasts = {f"{cfg.cell.upper()} (bptt)": rnn,
                 "seasonal naive": ts.seasonal_naive(y, origins, H, s.season)}
    if cfg.arima is not None and cfg.baseline:
        t1 = time.perf_counter()
        arima = arima_forecasts(values[:, s.target], origins, H, valid_end, *cfg.arima)
        forecasts[_arima_name(*cfg.arima)] = _original_units(arima, cfg.log)
        log(f"ARIMA fitted and run in {time.perf_counter() - t1:.1f}s")
    history = y[:valid_end]
    table = {name: ts.metrics(actual, f, history, s.season) for name, f in forecasts.items()}
    report = dict(series=s.name, columns=list(s.columns), target=s.target_name, steps=N,
                  season=s.season, window=W, horizon=H, train_end=train_end, valid_end=valid_end,
                  test_from=s.times[valid_end], origins=len(origins),
                  config=dataclasses.asdict(cfg), best_epoch=result.best_epoch,
                  epochs_run=len(result.history), train_seconds=round(train_s, 1),
                  metrics=table)
    log(format_table(table))
    if out_dir is not None:
        write_text(os.path.join(out_dir, "report.json"),
                   json.dumps(report, indent=1, default=_json_default))
        plot_forecasts(s, origins, H, forecasts, valid_end, os.path.join(out_dir, "forecast.png"))
    return report


def data_identity(cfg):
    """A CSV file's absolute path and SHA-256 (None for a named series): what ``--resume``
    checks before it rebuilds the windows."""
    if cfg.csv is None:
        return None
    with open(cfg.csv, "rb") as f:
        return {"path": absolute(cfg.csv), "sha256": hashlib.sha256(f.read()).hexdigest()}


def _original_units(v, log):
    return np.exp(v) if log else v


def _json_default(v):
    if isinstance(v, (np.integer, np.floating)):
        return v.item()
    raise TypeError(type(v).__name__)


def _arima_name(order, seasonal):
    name = f"ARIMA{tuple(order)}" + (f"{tuple(seasonal[:3])}{seasonal[3]}" if seasonal[3] else "")
    differences = order[1] + seasonal[1]
    return name + {0: " + mean", 1: " + drift"}.get(differences, "")


def arima_forecasts(y, origins, horizon, fit_end, order, seasonal_order):
    """SARIMAX(order, seasonal_order) fitted on y[:fit_end], then, with those parameters, filtered
    over y[:o + 1] for each origin o and forecast ``horizon`` steps: (n, H). With at most one
    difference the model has a constant (a mean, or a drift), with two or more none."""
    from statsmodels.tsa.statespace.sarimax import SARIMAX

    # a constant: the mean of a stationary series, or the drift of a once-differenced one
    trend = "c" if order[1] + seasonal_order[1] <= 1 else None
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")     # convergence chatter of the optimizer
        res = SARIMAX(y[:fit_end], order=order, seasonal_order=seasonal_order,
                      trend=trend).fit(disp=False)
        return np.stack([res.apply(y[:o + 1]).forecast(horizon) for o in origins])


def format_table(table):
    lines = [f"{'forecast':<34} {'MAE':>10} {'RMSE':>10} {'sMAPE %':>8} {'MASE':>7}"]
    for name, m in table.items():
        lines.append(f"{name:<34} {m['mae']:>10.4g} {m['rmse']:>10.4g} {m['smape']:>8.2f} "
                     f"{m['mase']:>7.3f}")
    return "\n".join(lines)


def plot_forecasts(s, origins, horizon, forecasts, valid_end, path):
    """Actual against forecast over the test part: the 1-step-ahead forecasts of every origin,
    and (for H > 1) the whole H-step forecast from the first test origin."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    y = s.target_values
    t = np.arange(len(y))
    lo = max(0, valid_end - 3 * max(s.season, horizon, 8))
    panels = 2 if horizon > 1 else 1
    fig, axes = plt.subplots(panels, 1, figsize=(9, 3.4 * panels), squeeze=False)
    styles = ["C3-", "C2:", "C1--"]
    ax = axes[0, 0]
    ax.plot(t[lo:], y[lo:], "k-", lw=1.4, label="actual")
    for (name, f), style in zip(forecasts.items(), styles):
        ax.plot(origins + 1, f[:, 0], style, lw=1.1, label=name)
    ax.axvline(valid_end - 0.5, color="gray", lw=0.8, ls="--")
    ax.set_title(f"{s.name}: {s.target_name}, one-step-ahead forecasts over the test part")
    if horizon > 1:
        ax = axes[1, 0]
        first = 0
        span = slice(max(lo, origins[first] - 2 * horizon), origins[first] + horizon + 1)
        ax.plot(t[span], y[span], "k-", lw=1.4, label="actual")
        for (name, f), style in zip(forecasts.items(), styles):
            ax.plot(origins[first] + np.arange(1, horizon + 1), f[first], style, lw=1.1,
                    label=name)
        ax.axvline(origins[first] + 0.5, color="gray", lw=0.8, ls="--")
        ax.set_title(f"the {horizon}-step forecast from the first test origin "
                     f"({s.times[origins[first]]})")
    for ax in axes[:, 0]:
        ticks = ax.get_xticks()
        ticks = ticks[(ticks >= 0) & (ticks < len(y))].astype(int)
        ax.set_xticks(ticks, [s.times[i] for i in ticks], fontsize=8)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


# ---------------------------------------------------------------------- command line
def add_parser(apps):
    """Register ``bptt train forecast`` on the ``train`` subparsers ``apps``."""
    p = apps.add_parser("forecast", help="time-series forecasting from a sliding window",
                        description="Forecast a series from a sliding window with an LSTM, "
                        "beside seasonal-naive and ARIMA forecasts on the same walk-forward "
                        "test part. Named series: " + ", ".join(k for k in PRESETS if k != "csv")
                        + "; or any CSV file with --csv PATH --column NAME.")
    add_options(p, ForecastConfig)
    p.add_argument("--column", action="append", metavar="NAME",
                   help="a CSV column to read; repeat for a multivariate series (the first is "
                        "the target unless --target) (default none)")
    p.add_argument("--out", metavar="DIR", help="run directory (default runs/forecast-SERIES)")
    p.add_argument("--resume", metavar="DIR", help="continue the run saved in DIR (only "
                   f"{', '.join(sorted(RESUMABLE))} may change)")
    p.add_argument("--config", metavar="FILE", help="read options from a TOML file")
    p.set_defaults(func=cli_run)
    return p


def cli_run(args):
    options, table = merge(ForecastConfig, args, extra=("column", "out"))
    columns = args.column if args.column is not None else table.get("column")
    if isinstance(columns, str):
        columns = [columns]
    if columns is not None and not (isinstance(columns, list) and columns and
                                    all(isinstance(c, str) for c in columns)):
        raise ConfigError(f"--config: column should be a column name or a list of them, got "
                          f"{columns!r}")
    for k in ("test", "valid"):
        if options.get(k) is not None and options[k] >= 1:
            options[k] = int(options[k])
    if columns is not None:
        options["columns"] = tuple(columns)
    if options.get("csv") is not None:
        options["csv"] = absolute(options["csv"])            # a resumed run finds it anywhere
    out = args.out if args.out is not None else table.get("out")
    if args.resume:
        cfg, out = resumed_config(args.resume, options, out), args.resume
    else:
        if "csv" not in options and any(k in options for k in ("columns", "target",
                                                               "time_column")):
            raise ValueError("forecast: --column, --target and --time-column go with --csv PATH")
        if "csv" in options:
            if options.get("series", "csv") != "csv":
                raise ValueError("forecast: give either --series or --csv, not both")
            if not columns:
                raise ValueError("forecast: --csv needs the columns to read: --column NAME "
                                 "(repeat for several)")
            options["series"] = "csv"
        cfg = ForecastConfig(**options)
        out = out or f"runs/forecast-{cfg.series}"
        if os.path.exists(os.path.join(out, "checkpoint.npz")):
            raise ConfigError(f"{out} already holds a run; continue it with --resume {out} or "
                              f"choose another --out")
    t0 = time.perf_counter()
    report = run(cfg, out, resume=bool(args.resume))
    print(f"done in {time.perf_counter() - t0:.0f}s; report, forecast.png and the model in {out}/")
    return report


def resumed_config(run_dir, options, out=None):
    """The configuration of the run in ``run_dir`` with ``options`` applied where they may
    change (``RESUMABLE``); a CSV file must still hold the data it trained on."""
    if out is not None and absolute(out) != absolute(run_dir):
        raise ConfigError(f"--out: a resumed run stays in its own directory {run_dir}; drop "
                          f"--out (or give the same path)")
    _, meta = load_run(run_dir, "fit")
    app = meta.get("app") or {}
    if app.get("name") != NAME:
        raise ConfigError(f"--resume: {run_dir} is not a run of `bptt train {NAME}`")
    saved = {k: _tuple(v) for k, v in app["config"].items()}    # JSON gave tuples as lists
    cfg = ForecastConfig(**resume_options(saved, options, RESUMABLE))
    if app["data"] is not None:
        try:
            now = data_identity(cfg)
        except FileNotFoundError:
            raise ConfigError(f"the run's data {cfg.csv} is not there any more") from None
        if now["sha256"] != app["data"]["sha256"]:
            raise ConfigError(f"{cfg.csv} is not the file this run trained on: its SHA-256 "
                              f"differs; the data file changed since training")
    return cfg


def _tuple(v):
    return tuple(map(_tuple, v)) if isinstance(v, list) else v
