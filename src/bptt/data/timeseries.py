r"""Time series for forecasting: the series, the splits, the scaling, the windows and the metrics.

The pieces, in the order a forecasting script uses them::

    s = load_series("airline")                    # or read_csv("my.csv", ["sales"])
    train_end, valid_end = split_points(len(s), test=24, valid=12)
    z = Scaler.fit(s.values[:train_end]).transform(s.values)       # fitted on training rows only
    x, y, origins = make_windows(z, window=24, horizon=12, start=valid_end)   # the test windows
    mase(actual, forecast, s.target_values[:valid_end], s.season)

A series is ``values`` (N, C): N time steps of C columns, float64, the forecast target being column
``target``. The named series are read from the CSV files that ship inside installed packages,
without downloading anything and without importing those packages:

- ``sunspots``: yearly sunspot numbers 1700-2008 (309), ``statsmodels``; season 11 (the solar
  cycle);
- ``co2``: Mauna Loa CO2 in ppm, ``statsmodels``' weekly 1958-2001 series as monthly means (526
  months; months without a reading, 5 of them, are interpolated linearly); season 12;
- ``airline``: monthly airline passengers 1949-1960 (144), Box & Jenkins, from ``sktime``;
  season 12;
- ``macrodata``: quarterly US real GDP, consumption and investment 1959-2009 (203), ``statsmodels``;
  multivariate, the target is real GDP; season 1 (the data are seasonally adjusted, so the
  seasonal-naive forecast is the last value).

A split is by position, never shuffled: rows ``[0, train_end)`` train, ``[train_end, valid_end)``
validate, ``[valid_end, N)`` test. A window of length W ending at origin o (the last observed row)
holds rows ``o-W+1 .. o`` as input and the target at ``o+1 .. o+H`` as the H values to forecast;
``make_windows(start, stop)`` returns the windows whose H targets all lie in ``[start, stop)``, so
training windows never see a validation or test target. Walk-forward evaluation is the test windows
in order: each origin in the test part is forecast from the actual history up to it, with the model
fitted once (no refitting per origin).

Metrics take actual and forecast values of one shape and average over all their elements:

.. math::
    \mathrm{MAE} = \overline{|y - \hat y|}, \quad
    \mathrm{RMSE} = \sqrt{\overline{(y - \hat y)^2}}, \quad
    \mathrm{sMAPE} = 100\, \overline{\frac{2|y - \hat y|}{|y| + |\hat y|}}, \quad
    \mathrm{MASE} = \frac{\mathrm{MAE}}{\frac{1}{n-m}\sum_{t=m}^{n-1} |h_t - h_{t-m}|}

where h is the history before the test part (training and validation rows) and m the season: MASE
scales the error by the in-sample error of the seasonal-naive forecast (Hyndman & Koehler 2006);
below 1 beats it in sample. In sMAPE a term with y = ŷ = 0 counts as 0.
"""

import csv
import importlib.util
import math
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np

MISSING = ("", "na", "nan", "n/a", "null", "none", "?", ".", "-")   # lower-cased, stripped
MISSING_POLICIES = ("error", "interpolate", "drop")


@dataclass(frozen=True)
class Series:
    """A multivariate time series: ``values`` (N, C) float64, ``columns`` (C names), ``times``
    (N labels, for plots), ``season`` (steps per seasonal cycle, 1 for none) and ``target``, the
    index of the column to forecast."""

    name: str
    values: np.ndarray
    columns: tuple
    times: tuple
    season: int = 1
    target: int = 0

    def __post_init__(self):
        v = self.values
        if v.ndim != 2 or v.shape[1] != len(self.columns) or len(self.times) != v.shape[0]:
            raise ValueError(f"Series: expected values (N, C) with C={len(self.columns)} columns "
                             f"and N={len(self.times)} times, got {v.shape}")
        if not 0 <= self.target < v.shape[1]:
            raise ValueError(f"Series: target column {self.target} out of range "
                             f"0..{v.shape[1] - 1}")

    def __len__(self):
        return self.values.shape[0]

    @property
    def target_values(self):
        """The column to forecast, (N,)."""
        return self.values[:, self.target]

    @property
    def target_name(self):
        return self.columns[self.target]


# ---------------------------------------------------------------------- the named series
def _package_dir(package, install):
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        raise ModuleNotFoundError(f"the series ships in the package {package}, which is not "
                                  f"installed; install it with: {install}")
    return Path(spec.submodule_search_locations[0])


STATSMODELS = ("statsmodels", "pip install statsmodels==0.15.0")
SKTIME = ("sktime", "pip install --no-deps sktime==1.2.0")
SERIES = {   # name -> (package, file in it, columns, time column, season)
    "sunspots": (STATSMODELS, "datasets/sunspots/sunspots.csv", ["SUNACTIVITY"], "YEAR", 11),
    "co2": (STATSMODELS, "datasets/co2/co2.csv", ["co2"], "date", 12),
    "airline": (SKTIME, "datasets/data/Airline/Airline.csv", ["Passengers"], "Date", 12),
    "macrodata": (STATSMODELS, "datasets/macrodata/macrodata.csv",
                  ["realgdp", "realcons", "realinv"], None, 1),
}


def load_series(name):
    """The named series (see the module docstring), read from its package's CSV file."""
    if name not in SERIES:
        raise ValueError(f"load_series: expected one of {', '.join(SERIES)}, got {name!r}")
    (package, install), file, columns, time_column, season = SERIES[name]
    path = _package_dir(package, install) / file
    if not path.is_file():
        raise FileNotFoundError(f"load_series: {name}: {path} is missing; reinstall with: "
                                f"{install}")
    if name == "co2":
        return _co2_monthly(path)
    s = read_csv(path, columns, time_column=time_column, season=season)
    times = s.times
    if name == "macrodata":
        year, quarter = (read_csv(path, [c]).values[:, 0].astype(int) for c in ("year", "quarter"))
        times = tuple(f"{y}Q{q}" for y, q in zip(year, quarter))
    elif name == "sunspots":
        times = tuple(str(int(float(t))) for t in times)
    return Series(name, s.values, s.columns, times, season)


def _co2_monthly(path):
    """The weekly series as the mean of each month's readings; empty months interpolated."""
    weekly = read_csv(path, ["co2"], time_column="date", missing="drop")
    months = [t[:4] + "-" + t[4:6] for t in weekly.times]
    first, last = months[0], months[-1]
    labels = []
    y, m = int(first[:4]), int(first[5:])
    while True:
        labels.append(f"{y:04d}-{m:02d}")
        if labels[-1] == last:
            break
        y, m = (y + 1, 1) if m == 12 else (y, m + 1)
    pos = {label: i for i, label in enumerate(labels)}
    sums, counts = np.zeros(len(labels)), np.zeros(len(labels))
    for label, v in zip(months, weekly.values[:, 0]):
        sums[pos[label]] += v
        counts[pos[label]] += 1
    with np.errstate(invalid="ignore"):
        monthly = sums / counts
    monthly = _interpolate(monthly[:, None])[0][:, 0]
    return Series("co2", monthly[:, None], ("co2",), tuple(labels), 12)


# ---------------------------------------------------------------------- CSV files
def read_csv(path, columns, *, time_column=None, missing="error", season=1, target=None):
    """Read ``columns`` (names, or one name) of a CSV file with a header row as a Series.

    Every value must be a finite number. Missing values (an empty cell or one of ``NA``, ``NaN``,
    ``N/A``, ``null``, ``None``, ``?``, ``.``, ``-``, any case) are handled by ``missing``:
    ``'error'`` (the default) raises naming the first one; ``'interpolate'`` fills each gap
    linearly between its neighbours in the same column and drops the rows before the first and
    after the last complete row; ``'drop'`` drops every row with a missing value (the remaining
    rows are then taken as equally spaced). A cell that is present but not a number (``abc``,
    ``1,5``, ``inf``) is always an error, naming its line and column. ``target`` names the column
    to forecast (default the first of ``columns``); ``time_column`` gives the labels of the rows
    (default: the row numbers).
    """
    name = "read_csv"
    if isinstance(columns, str):
        columns = [columns]
    columns = list(columns)
    if not columns or not all(isinstance(c, str) for c in columns):
        raise ValueError(f"{name}: expected one or more column names, got {columns!r}")
    if len(set(columns)) != len(columns):
        raise ValueError(f"{name}: column names repeat in {columns}")
    if missing not in MISSING_POLICIES:
        raise ValueError(f"{name}: expected missing one of {', '.join(MISSING_POLICIES)}, got "
                         f"{missing!r}")
    if isinstance(season, bool) or not isinstance(season, (int, np.integer)) or season < 1:
        raise ValueError(f"{name}: expected season a positive integer, got {season!r}")
    path = Path(os.fspath(path))
    if path.is_dir():
        raise ValueError(f"{name}: {path} is a directory, expected a CSV file")
    if not path.exists():
        raise FileNotFoundError(f"{name}: no such file: {path}")
    try:
        with open(path, newline="", encoding="utf-8-sig") as f:
            rows = list(csv.reader(f))
    except UnicodeDecodeError as e:
        raise ValueError(f"{name}: {path} is not UTF-8 text (offset {e.start})") from None
    rows = [r for r in rows if any(cell.strip() for cell in r)]       # blank lines
    if not rows:
        raise ValueError(f"{name}: {path} is empty, expected a header row and data rows")
    header = [h.strip() for h in rows[0]]
    wanted = columns + ([time_column] if time_column is not None else [])
    absent = [c for c in wanted if c not in header]
    if absent:
        raise ValueError(f"{name}: {path} has no column {', '.join(map(repr, absent))}; its "
                         f"columns are {', '.join(map(repr, header))}")
    index = [header.index(c) for c in columns]
    values = np.empty((len(rows) - 1, len(columns)))
    times = []
    for i, row in enumerate(rows[1:]):
        line = i + 2
        for j, (c, k) in enumerate(zip(columns, index)):
            cell = row[k].strip() if k < len(row) else ""
            values[i, j] = _number(cell, path, line, c)
        times.append(row[header.index(time_column)].strip() if time_column is not None
                     and header.index(time_column) < len(row) else str(i))
    lines = np.arange(2, len(rows) + 1)
    gaps = np.isnan(values)
    if gaps.any():
        if missing == "error":
            i, j = np.argwhere(gaps)[0]
            raise ValueError(f"{name}: {path}: {int(gaps.sum())} missing values, the first in "
                             f"column {columns[j]!r} at line {lines[i]}; pass missing="
                             f"'interpolate' (--missing interpolate) or 'drop' to accept them")
        if missing == "drop":
            keep = ~gaps.any(axis=1)
        else:
            values, keep = _interpolate(values)
        values, times = values[keep], [t for t, k in zip(times, keep) if k]
    if len(values) < 2:
        raise ValueError(f"{name}: {path}: expected at least 2 rows of data, got {len(values)}")
    target = columns[0] if target is None else target
    if target not in columns:
        raise ValueError(f"{name}: target {target!r} is not one of the columns {columns}")
    return Series(path.stem, values, tuple(columns), tuple(times), int(season),
                  columns.index(target))


def _number(cell, path, line, column):
    if cell.lower() in MISSING:
        return math.nan
    try:
        value = float(cell)
    except ValueError:
        raise ValueError(f"read_csv: {path}: line {line}, column {column!r}: {cell!r} is not a "
                         f"number") from None
    if not math.isfinite(value):
        raise ValueError(f"read_csv: {path}: line {line}, column {column!r}: {cell!r} is not a "
                         f"finite number")
    return value


def _interpolate(values):
    """Fill NaN gaps of each column linearly; return (values, rows to keep): the rows from the
    first to the last where every column has a value of its own."""
    values = values.copy()
    complete = ~np.isnan(values).any(axis=1)
    if not complete.any():
        raise ValueError("read_csv: no row has a value in every column; nothing to interpolate "
                         "between")
    first, last = np.flatnonzero(complete)[[0, -1]]
    keep = np.zeros(len(values), bool)
    keep[first:last + 1] = True
    t = np.arange(len(values))
    for j in range(values.shape[1]):
        col = values[:, j]
        known = ~np.isnan(col)
        col[~known] = np.interp(t[~known], t[known], col[known])
    return values, keep


# ---------------------------------------------------------------------- splits and scaling
def split_points(n, test, valid=0):
    """``(train_end, valid_end)`` for a series of n steps with the last ``test`` for testing and
    the ``valid`` before them for validation (counts of steps, or fractions of n when < 1)."""
    def count(what, v):
        if isinstance(v, bool) or not isinstance(v, (int, float, np.integer, np.floating)) \
                or v < 0:
            raise ValueError(f"split_points: expected {what} a count >= 0 or a fraction in "
                             f"[0, 1), got {v!r}")
        return int(round(v * n)) if v < 1 else int(v)

    n_test, n_valid = count("test", test), count("valid", valid)
    if n_test < 1 or n - n_test - n_valid < 2:
        raise ValueError(f"split_points: {n} steps cannot hold a test part of {n_test} and a "
                         f"validation part of {n_valid} with at least 2 steps left to train on")
    return n - n_test - n_valid, n - n_test


class Scaler:
    """Standardisation per column, ``z = (v - mean) / std``, with mean and std of the rows it is
    fitted on (a column with std 0 keeps std 1). Fit it on the training rows only."""

    def __init__(self, mean, std):
        self.mean = np.asarray(mean, np.float64)
        self.std = np.asarray(std, np.float64)

    @classmethod
    def fit(cls, values):
        values = np.asarray(values, np.float64)
        if values.ndim != 2 or len(values) < 2:
            raise ValueError(f"Scaler.fit: expected at least 2 rows of shape (N, C), got "
                             f"{values.shape}")
        std = values.std(axis=0)
        return cls(values.mean(axis=0), np.where(std > 0, std, 1.0))

    def transform(self, values):
        return (np.asarray(values, np.float64) - self.mean) / self.std

    def inverse(self, z, column=None):
        """Back to the original units; ``column`` picks one column's mean and std for an array
        of that column alone (e.g. forecasts of the target)."""
        if column is None:
            return np.asarray(z) * self.std + self.mean
        return np.asarray(z) * self.std[column] + self.mean[column]

    def to_json(self):
        return {"mean": self.mean.tolist(), "std": self.std.tolist()}

    @classmethod
    def from_json(cls, d):
        return cls(d["mean"], d["std"])


# ---------------------------------------------------------------------- windows
def make_windows(z, window, horizon, *, target=0, start=None, stop=None, anchor=False):
    """The sliding windows of ``z`` (N, C) whose ``horizon`` targets lie in rows [start, stop).

    Returns ``(x, y, origins)``: x (W, n, C) time-major inputs (rows o-W+1 .. o), y (n, H) the
    target column at rows o+1 .. o+H, origins (n,) the last input row o of each window, ascending.
    With ``anchor``, every window is taken relative to its last row: x - z[o] and
    y - z[o, target], so that the model sees shapes and changes rather than levels (for series
    that trend out of the training range); add z[o, target] back to a forecast.
    """
    z = np.asarray(z, np.float64)
    if z.ndim != 2:
        raise ValueError(f"make_windows: expected z of shape (N, C), got {z.shape}")
    for what, v in (("window", window), ("horizon", horizon)):
        if isinstance(v, bool) or not isinstance(v, (int, np.integer)) or v < 1:
            raise ValueError(f"make_windows: expected {what} a positive integer, got {v!r}")
    N = len(z)
    start = window if start is None else max(int(start), window)   # the first target row
    stop = N if stop is None else min(int(stop), N)
    origins = np.arange(start - 1, stop - horizon)                 # o+1 >= start, o+H <= stop
    if origins.size == 0:
        raise ValueError(f"make_windows: no window of {window} steps with {horizon} targets in "
                         f"rows {start}..{stop - 1} of a series of {N}")
    steps = np.arange(-window + 1, 1)
    x = z[origins[None, :] + steps[:, None]]                        # (W, n, C)
    y = z[origins[:, None] + np.arange(1, horizon + 1)[None, :], target]   # (n, H)
    if anchor:
        last = z[origins]                                           # (n, C)
        x = x - last[None]
        y = y - last[:, target:target + 1]
    return x, y, origins


def seasonal_naive(values, origins, horizon, season):
    """Forecasts (n, H) of a 1-d series: the value one season before each target, from the
    history up to the origin: ``y[o + k - m * ceil(k / m)]`` for k = 1..H (m = 1: last value)."""
    values = np.asarray(values, np.float64)
    origins = np.asarray(origins)
    k = np.arange(1, horizon + 1)
    back = season * np.ceil(k / season).astype(int)
    idx = origins[:, None] + k[None, :] - back[None, :]
    if idx.min() < 0:
        raise ValueError(f"seasonal_naive: an origin {origins.min()} is too early for season "
                         f"{season}")
    return values[idx]


def target_rows(origins, horizon):
    """The row index of every forecast (n, H): origin + k, k = 1..H."""
    return np.asarray(origins)[:, None] + np.arange(1, horizon + 1)[None, :]


# ---------------------------------------------------------------------- metrics
def _pair(actual, forecast):
    a, f = np.asarray(actual, np.float64), np.asarray(forecast, np.float64)
    if a.shape != f.shape or a.size == 0:
        raise ValueError(f"expected actual and forecast of one non-empty shape, got {a.shape} "
                         f"and {f.shape}")
    return a, f


def mae(actual, forecast):
    a, f = _pair(actual, forecast)
    return float(np.mean(np.abs(a - f)))


def rmse(actual, forecast):
    a, f = _pair(actual, forecast)
    return float(np.sqrt(np.mean((a - f) ** 2)))


def smape(actual, forecast):
    """Symmetric MAPE in percent (0..200); a term where both values are 0 counts as 0."""
    a, f = _pair(actual, forecast)
    den = np.abs(a) + np.abs(f)
    terms = np.divide(2 * np.abs(a - f), den, out=np.zeros_like(den), where=den > 0)
    return float(100 * np.mean(terms))


def mase(actual, forecast, history, season=1):
    """MAE scaled by the in-sample MAE of the seasonal-naive forecast on ``history``."""
    h = np.asarray(history, np.float64).ravel()
    if len(h) <= season:
        raise ValueError(f"mase: expected a history longer than the season {season}, got "
                         f"{len(h)} values")
    scale = np.mean(np.abs(h[season:] - h[:-season]))
    if scale == 0:
        raise ValueError("mase: the history is constant over every season; the scale is 0")
    return mae(actual, forecast) / float(scale)


def metrics(actual, forecast, history, season=1):
    """All four as a dict: mae, rmse, smape, mase."""
    return {"mae": mae(actual, forecast), "rmse": rmse(actual, forecast),
            "smape": smape(actual, forecast), "mase": mase(actual, forecast, history, season)}
