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
"""

import argparse
import dataclasses
import json
import os
import time
import warnings
from dataclasses import dataclass

import numpy as np

from ..checkpoint import write_text
from ..cli_options import add_options
from ..data import timeseries as ts
from ..model import Model
from ..supervised import FitConfig, SequenceData, fit, predict

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

    series: str = "airline"           # a name in PRESETS, or 'csv' with csv= and columns=
    csv: str | None = None
    columns: tuple | None = None      # csv: the columns to read, the target first unless target=
    target: str | None = None
    time_column: str | None = None    # csv: the column naming each row (plots, reports)
    season: int | None = None         # csv: steps per seasonal cycle (default 1)
    missing: str = "error"            # csv: error | interpolate | drop
    window: int | None = None
    horizon: int | None = None
    test: float | None = None
    valid: float | None = None
    log: bool | None = None
    anchor: bool | None = None
    arima: tuple | None = None        # ((p, d, q), (P, D, Q, s)); csv default (1, 1, 1) + season
    cell: str = "lstm"
    hidden: int = 32
    layers: int = 1
    epochs: int = 300
    batch: int = 16
    lr: float = 3e-3
    weight_decay: float = 0.0
    patience: int = 40
    seed: int = 0
    baseline: bool = True             # fit and score ARIMA too (seasonal naive always)

    def resolved(self):
        """A copy with every None filled from the preset; checks the combination."""
        if self.series not in PRESETS:
            raise ValueError(f"forecast: expected series one of {', '.join(PRESETS)}, got "
                             f"{self.series!r}")
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


def run(cfg=None, out_dir=None, *, log=print):
    """Train and evaluate; return a report dict (also ``out_dir/report.json``, ``forecast.png``)."""
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
                  head="last", seed=cfg.seed)
    fit_cfg = FitConfig(epochs=cfg.epochs, batch=cfg.batch, lr=cfg.lr,
                        weight_decay=cfg.weight_decay, patience=cfg.patience, seed=cfg.seed,
                        loss="mse", clip=1.0)
    t0 = time.perf_counter()
    result = fit(model, parts["train"][0], parts["valid"][0], fit_cfg, out_dir)
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
CLI_OPTIONS = {   # option -> (type, help); None defaults come from PRESETS, the others from
    "window": (int, "input steps per window"),                       # ForecastConfig
    "horizon": (int, "steps forecast at once (1: one-step)"),
    "test": (float, "last steps held out for the test (a count, or a fraction when < 1)"),
    "valid": (float, "steps before the test part for early stopping (count or fraction)"),
    "cell": (str, "recurrent cell: lstm, gru or rnn"),
    "hidden": (int, "hidden units per layer"),
    "layers": (int, "stacked recurrent layers"),
    "epochs": (int, "most epochs"),
    "batch": (int, "windows per batch"),
    "lr": (float, "Adam learning rate"),
    "weight_decay": (float, "L2 weight decay"),
    "patience": (int, "early stopping: epochs without a better validation error"),
    "seed": (int, "initialisation and batch-order seed"),
    "season": (int, "steps per seasonal cycle (seasonal naive, MASE, seasonal ARIMA)"),
}


def add_parser(apps):
    """Register ``bptt train forecast`` on the ``train`` subparsers ``apps``."""
    p = apps.add_parser("forecast", help="time-series forecasting from a sliding window",
                        description="Forecast a series from a sliding window with an LSTM, "
                        "beside seasonal-naive and ARIMA forecasts on the same walk-forward "
                        "test part. Named series: " + ", ".join(k for k in PRESETS if k != "csv")
                        + "; or any CSV file with --csv PATH --column NAME.")
    p.add_argument("--series", default=None, help="a named series (default airline)")
    p.add_argument("--csv", metavar="PATH", help="a CSV file with a header row")
    p.add_argument("--column", action="append", metavar="NAME",
                   help="a CSV column to read; repeat for a multivariate series (the first is "
                        "the target unless --target)")
    p.add_argument("--target", metavar="NAME", help="the CSV column to forecast")
    p.add_argument("--time-column", metavar="NAME", help="the CSV column naming each row "
                   "(dates, for the plot and the report; default the row numbers)")
    p.add_argument("--missing", choices=ts.MISSING_POLICIES, default="error",
                   help="missing CSV values: error (default), interpolate (linearly) or drop")
    defaults = ForecastConfig()
    add_options(p, CLI_OPTIONS, defaults, none_label="per series")
    p.add_argument("--log", action=argparse.BooleanOptionalAction, default=None,
                   help="model log(values) (default per series)")
    p.add_argument("--anchor", action=argparse.BooleanOptionalAction, default=None,
                   help="windows relative to their last value (default per series)")
    p.add_argument("--no-baseline", dest="baseline", action="store_false",
                   help="skip ARIMA (seasonal naive is always reported)")
    p.add_argument("--out", metavar="DIR", help="run directory (default runs/forecast-SERIES)")
    p.set_defaults(func=cli_run)
    return p


def cli_run(args):
    if args.csv is None and (args.column or args.target or args.time_column):
        raise ValueError("forecast: --column, --target and --time-column go with --csv PATH")
    if args.csv is not None:
        if args.series not in (None, "csv"):
            raise ValueError("forecast: give either --series or --csv, not both")
        if not args.column:
            raise ValueError("forecast: --csv needs the columns to read: --column NAME (repeat "
                             "for several)")
    series = "csv" if args.csv is not None else (args.series or "airline")
    options = {k: getattr(args, k) for k in CLI_OPTIONS if getattr(args, k) is not None}
    for k in ("test", "valid"):
        if k in options and options[k] >= 1:
            options[k] = int(options[k])
    for k in ("log", "anchor"):
        if getattr(args, k) is not None:
            options[k] = getattr(args, k)
    cfg = ForecastConfig(series=series, csv=args.csv,
                         columns=tuple(args.column) if args.column else None, target=args.target,
                         time_column=args.time_column,
                         missing=args.missing, baseline=args.baseline, **options)
    out = args.out or f"runs/forecast-{series if series != 'csv' else 'csv'}"
    t0 = time.perf_counter()
    report = run(cfg, out)
    print(f"done in {time.perf_counter() - t0:.0f}s; report, forecast.png and the model in {out}/")
    return report
