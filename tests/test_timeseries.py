"""Time series: the named series, CSV files, splits, scaling, windows, metrics, the forecast app."""

import json
import math

import numpy as np
import pytest

from bptt import checkpoint
from bptt.apps import forecast
from bptt.cli import main
from bptt.data import timeseries as ts
from conftest import TIMING, run_killed


# --- the named series, read from the installed packages ----------------------------------------

def test_sunspots_is_309_years():
    s = ts.load_series("sunspots")
    assert s.values.shape == (309, 1) and s.columns == ("SUNACTIVITY",)
    assert (s.times[0], s.times[-1]) == ("1700", "2008")
    assert s.values[:3, 0].tolist() == [5.0, 11.0, 16.0] and s.season == 11


def test_co2_is_monthly_means_of_the_weekly_readings():
    s = ts.load_series("co2")
    assert s.values.shape == (526, 1) and s.season == 12
    assert (s.times[0], s.times[-1]) == ("1958-03", "2001-12")
    assert not np.isnan(s.values).any()
    # March 1958 has one reading (316.1); April 1958 four: 317.3, 317.6, 317.5, 316.4 (golden)
    assert s.values[0, 0] == pytest.approx(316.1)
    assert s.values[1, 0] == pytest.approx(np.mean([317.3, 317.6, 317.5, 316.4]))
    # June 1958 has no reading: the mean of May and July
    june = s.times.index("1958-06")
    assert s.values[june, 0] == pytest.approx((s.values[june - 1, 0] + s.values[june + 1, 0]) / 2)
    months = [int(t[:4]) * 12 + int(t[5:]) for t in s.times]
    assert np.all(np.diff(months) == 1)


def test_airline_is_box_jenkins_series_g():
    s = ts.load_series("airline")
    assert s.values.shape == (144, 1) and s.season == 12
    assert s.values[:4, 0].tolist() == [112, 118, 132, 129] and s.values[-1, 0] == 432
    assert s.values.sum() == 40363


def test_macrodata_is_multivariate():
    s = ts.load_series("macrodata")
    assert s.values.shape == (203, 3) and s.columns == ("realgdp", "realcons", "realinv")
    assert s.target == 0 and s.target_name == "realgdp"
    assert s.times[:2] == ("1959Q1", "1959Q2") and s.times[-1] == "2009Q3"
    assert s.values[0].tolist() == [2710.349, 1707.4, 286.898]


def test_unknown_series_is_an_error():
    with pytest.raises(ValueError, match="expected one of sunspots, co2"):
        ts.load_series("nile")


# --- CSV files ------------------------------------------------------------------------------------

def write(tmp_path, text, name="data.csv"):
    path = tmp_path / name
    path.write_text(text)
    return path


def test_csv_reads_the_named_columns(tmp_path):
    path = write(tmp_path, "month,a,b,c\n1,1.5,10,x\n2,2.5,20,y\n\n3,3.5,30,z\n")
    s = ts.read_csv(path, ["b", "a"], time_column="month", season=2)
    assert s.values.tolist() == [[10, 1.5], [20, 2.5], [30, 3.5]]
    assert s.columns == ("b", "a") and s.times == ("1", "2", "3") and s.season == 2
    assert s.target == 0 and s.name == "data"
    assert ts.read_csv(path, ["b", "a"], target="a").target == 1
    assert ts.read_csv(path, "a").values.shape == (3, 1)


@pytest.mark.parametrize("cell", ["", "NA", "nan", "?", "null"])
def test_csv_missing_value_is_an_error_by_default(tmp_path, cell):
    path = write(tmp_path, f"a,b\n1,2\n{cell},3\n4,5\n")
    with pytest.raises(ValueError, match=r"1 missing values, the first in column 'a' at line 3; "
                                         r"pass missing='interpolate'"):
        ts.read_csv(path, ["a", "b"])


def test_csv_missing_values_interpolated_linearly(tmp_path):
    path = write(tmp_path, "a,b\nNA,0\n1,10\n,20\n,30\n7,40\n8,NA\n")
    s = ts.read_csv(path, ["a", "b"], missing="interpolate")
    # the first and last rows have a gap with nothing before / after: dropped
    assert s.values.tolist() == [[1, 10], [3, 20], [5, 30], [7, 40]]
    assert s.times == ("1", "2", "3", "4")


def test_csv_missing_values_dropped(tmp_path):
    path = write(tmp_path, "a,b\n1,10\n,20\n3,30\n4,\n5,50\n")
    s = ts.read_csv(path, ["a", "b"], missing="drop")
    assert s.values.tolist() == [[1, 10], [3, 30], [5, 50]]


@pytest.mark.parametrize("cell, what", [("abc", "is not a number"), ("1,5", "is not a number"),
                                        ("inf", "is not a finite number")])
def test_csv_non_numeric_value_is_an_error(tmp_path, cell, what):
    path = write(tmp_path, f'a,b\n1,2\n3,"{cell}"\n')
    with pytest.raises(ValueError, match=f"line 3, column 'b': '{cell}' {what}"):
        ts.read_csv(path, ["a", "b"], missing="interpolate")


def test_csv_missing_column_names_the_columns_there(tmp_path):
    path = write(tmp_path, "a,b\n1,2\n3,4\n")
    with pytest.raises(ValueError, match="has no column 'c'; its columns are 'a', 'b'"):
        ts.read_csv(path, ["a", "c"])
    with pytest.raises(ValueError, match="has no column 'when'"):
        ts.read_csv(path, ["a"], time_column="when")


def test_csv_file_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match="no such file"):
        ts.read_csv(tmp_path / "absent.csv", ["a"])
    with pytest.raises(ValueError, match="is a directory"):
        ts.read_csv(tmp_path, ["a"])
    with pytest.raises(ValueError, match="is empty"):
        ts.read_csv(write(tmp_path, "\n\n"), ["a"])
    with pytest.raises(ValueError, match="expected at least 2 rows of data, got 1"):
        ts.read_csv(write(tmp_path, "a\n1\n"), ["a"])
    with pytest.raises(ValueError, match="not UTF-8"):
        (tmp_path / "latin.csv").write_bytes(b"a\n1\n\xe9\n")
        ts.read_csv(tmp_path / "latin.csv", ["a"])
    with pytest.raises(ValueError, match="no row has a value in every column"):
        ts.read_csv(write(tmp_path, "a,b\n1,\n,2\n"), ["a", "b"], missing="interpolate")


def test_csv_argument_errors(tmp_path):
    path = write(tmp_path, "a,b\n1,2\n3,4\n")
    with pytest.raises(ValueError, match="expected missing one of error, interpolate, drop"):
        ts.read_csv(path, ["a"], missing="zero")
    with pytest.raises(ValueError, match="target 'b' is not one of the columns"):
        ts.read_csv(path, ["a"], target="b")
    with pytest.raises(ValueError, match="column names repeat"):
        ts.read_csv(path, ["a", "a"])
    with pytest.raises(ValueError, match="expected one or more column names"):
        ts.read_csv(path, [])
    with pytest.raises(ValueError, match="expected season a positive integer"):
        ts.read_csv(path, ["a"], season=0)


# --- splits, scaling, windows ---------------------------------------------------------------------

def test_split_points_counts_and_fractions():
    assert ts.split_points(100, test=20, valid=10) == (70, 80)
    assert ts.split_points(100, test=0.2, valid=0.1) == (70, 80)
    assert ts.split_points(10, test=3) == (7, 7)
    with pytest.raises(ValueError, match="cannot hold a test part of 9"):
        ts.split_points(10, test=9)
    with pytest.raises(ValueError, match="expected test a count >= 0"):
        ts.split_points(10, test=-1)


def test_scaler_standardises_with_the_rows_it_is_fitted_on():
    v = np.array([[1.0, 5.0], [3.0, 5.0], [100.0, 7.0]])
    sc = ts.Scaler.fit(v[:2])
    assert sc.mean.tolist() == [2.0, 5.0] and sc.std.tolist() == [1.0, 1.0]   # std 0 -> 1
    assert sc.transform(v).tolist() == [[-1, 0], [1, 0], [98, 2]]
    assert np.allclose(sc.inverse(sc.transform(v)), v)
    assert sc.inverse(np.array([98.0]), column=0).tolist() == [100.0]
    assert ts.Scaler.from_json(sc.to_json()).mean.tolist() == sc.mean.tolist()


def test_windows_by_hand():
    z = np.column_stack([np.arange(10.0), 100 + np.arange(10.0)])     # rows 0..9, two columns
    x, y, origins = ts.make_windows(z, window=3, horizon=2, start=5, stop=9)
    # targets o+1, o+2 in rows 5..8: origins 4, 5, 6
    assert origins.tolist() == [4, 5, 6]
    assert x.shape == (3, 3, 2) and y.shape == (3, 2)
    assert x[:, 0, 0].tolist() == [2, 3, 4] and x[:, 0, 1].tolist() == [102, 103, 104]
    assert x[:, 2, 0].tolist() == [4, 5, 6]
    assert y.tolist() == [[5, 6], [6, 7], [7, 8]]
    x, y, _ = ts.make_windows(z, 3, 2, target=1, start=5, stop=9, anchor=True)
    assert x[:, 0, 0].tolist() == [-2, -1, 0] and x[:, 0, 1].tolist() == [-2, -1, 0]
    assert y.tolist() == [[1, 2]] * 3                                 # z[o+k, 1] - z[o, 1]
    x, y, origins = ts.make_windows(z, 3, 1)                          # every window
    assert origins.tolist() == list(range(2, 9)) and y[:, 0].tolist() == list(range(3, 10))


def test_window_errors():
    z = np.zeros((10, 1))
    with pytest.raises(ValueError, match="no window of 3 steps with 5 targets"):
        ts.make_windows(z, 3, 5, start=7)
    with pytest.raises(ValueError, match="expected window a positive integer"):
        ts.make_windows(z, 0, 1)
    with pytest.raises(ValueError, match=r"expected z of shape \(N, C\)"):
        ts.make_windows(np.zeros(10), 3, 1)


def test_seasonal_naive_by_hand():
    y = np.arange(20.0)
    f = ts.seasonal_naive(y, [9, 10], horizon=5, season=4)
    # origin 9: targets 10..14 <- 6, 7, 8, 9, 10 - 8 = ... one season back from the history
    assert f.tolist() == [[6, 7, 8, 9, 6], [7, 8, 9, 10, 7]]
    assert ts.seasonal_naive(y, [9], 3, 1).tolist() == [[9, 9, 9]]
    assert ts.target_rows([9, 10], 2).tolist() == [[10, 11], [11, 12]]
    with pytest.raises(ValueError, match="too early for season 4"):
        ts.seasonal_naive(y, [2], 1, 4)


# --- metrics against hand computation -----------------------------------------------------------

def test_metrics_by_hand():
    actual, forecast_ = [1.0, 2.0, 3.0, 4.0], [2.0, 2.0, 5.0, 4.0]
    assert ts.mae(actual, forecast_) == 0.75                            # (1 + 0 + 2 + 0) / 4
    assert ts.rmse(actual, forecast_) == pytest.approx(math.sqrt(5 / 4))
    assert ts.smape(actual, forecast_) == pytest.approx(100 / 4 * (2 / 3 + 4 / 8))
    history = [1.0, 3.0, 2.0, 5.0]
    assert ts.mase(actual, forecast_, history, 1) == pytest.approx(0.75 / 2)   # |2|,|1|,|3|
    assert ts.mase(actual, forecast_, history, 2) == pytest.approx(0.75 / 1.5)  # |1|,|2|
    m = ts.metrics(np.array(actual)[None], np.array(forecast_)[None], history, 2)
    assert m == pytest.approx({"mae": 0.75, "rmse": math.sqrt(1.25), "smape": 100 / 4 * (7 / 6),
                               "mase": 0.5})


def test_metric_edge_cases():
    assert ts.smape([0.0, 1.0], [0.0, 1.0]) == 0.0                      # 0/0 counts as 0
    assert ts.smape([0.0], [2.0]) == 200.0
    with pytest.raises(ValueError, match="expected actual and forecast of one non-empty shape"):
        ts.mae([1.0, 2.0], [1.0])
    with pytest.raises(ValueError, match="the scale is 0"):
        ts.mase([1.0], [2.0], [3.0, 3.0, 3.0], 1)
    with pytest.raises(ValueError, match="longer than the season 4"):
        ts.mase([1.0], [2.0], [3.0, 4.0], 4)


# --- the forecast app's data: splits, scaling on train only, walk-forward -------------------------

def test_prepare_keeps_test_targets_out_of_training():
    cfg = forecast.ForecastConfig(series="airline")
    p = forecast.prepare(cfg)
    W, H = 24, 12
    assert (p.train_end, p.valid_end) == (144 - 36 - 24, 144 - 36)
    (train, o_train), (valid, o_valid), (test, o_test) = (p.parts[k] for k in
                                                          ("train", "valid", "test"))
    assert (o_train + H).max() < p.train_end                           # all targets in train
    assert o_valid.min() + 1 >= p.train_end and (o_valid + H).max() < p.valid_end
    assert o_test.min() + 1 == p.valid_end and (o_test + H).max() == 143
    assert len(test) == 36 - H + 1                                     # one per walk-forward origin
    assert train.x.shape == (W, len(o_train), 1) and train.y.shape == (len(o_train), H)
    # airline preset: log, anchored windows; the scaler saw the training rows only
    logs = np.log(ts.load_series("airline").values)
    assert p.scaler.mean[0] == pytest.approx(logs[:p.train_end].mean())
    assert p.scaler.std[0] == pytest.approx(logs[:p.train_end].std())
    o = o_test[3]
    z = (logs[:, 0] - p.scaler.mean[0]) / p.scaler.std[0]
    assert np.allclose(test.y[3], z[o + 1:o + 1 + H] - z[o], atol=1e-6)


def test_scaler_does_not_see_the_test_part(tmp_path):
    rng = np.random.default_rng(0)
    v = np.cumsum(rng.standard_normal(120)) + 50
    path = tmp_path / "a.csv"
    path.write_text("y\n" + "\n".join(map(str, v)) + "\n")
    cfg = forecast.ForecastConfig(series="csv", csv=str(path), columns=("y",), window=8,
                                  horizon=2, test=30, valid=20)
    before = forecast.prepare(cfg)
    v[-30:] *= 100                                                      # change only the test part
    path.write_text("y\n" + "\n".join(map(str, v)) + "\n")
    after = forecast.prepare(cfg)
    assert after.scaler.mean == before.scaler.mean and after.scaler.std == before.scaler.std
    assert np.array_equal(after.parts["train"][0].x, before.parts["train"][0].x)


def test_multivariate_windows_carry_every_column():
    p = forecast.prepare(forecast.ForecastConfig(series="macrodata"))
    data, origins = p.parts["train"]
    assert data.x.shape[2] == 3 and data.y.shape[1] == 4
    o = origins[0]
    assert np.allclose(data.x[-1, 0], 0) and np.allclose(data.x[0, 0], p.z[o - 11] - p.z[o],
                                                         atol=1e-6)


def test_forecast_runs_end_to_end_quickly(tmp_path):
    report = forecast.run(forecast.ForecastConfig(series="macrodata", epochs=2, hidden=8,
                                                  baseline=False), tmp_path, log=lambda *a: None)
    assert set(report["metrics"]) == {"LSTM (bptt)", "seasonal naive"}
    assert report["origins"] == 40 - 4 + 1 and report["columns"] == ["realgdp", "realcons",
                                                                      "realinv"]
    assert (tmp_path / "forecast.png").stat().st_size > 10_000
    assert (tmp_path / "report.json").exists() and (tmp_path / "checkpoint.npz").exists()


def test_forecast_config_errors(tmp_path):
    with pytest.raises(ValueError, match="expected series one of"):
        forecast.ForecastConfig(series="gold").resolved()
    with pytest.raises(ValueError, match="give a CSV file with series 'csv'"):
        forecast.ForecastConfig(series="airline", csv="x.csv").resolved()
    with pytest.raises(ValueError, match="needs the columns to read"):
        forecast.ForecastConfig(series="csv", csv="x.csv").resolved()
    with pytest.raises(ValueError, match="cannot hold a window of 100"):
        forecast.prepare(forecast.ForecastConfig(series="airline", window=100))
    path = tmp_path / "neg.csv"
    path.write_text("y\n" + "\n".join(str(i - 20) for i in range(60)) + "\n")
    with pytest.raises(ValueError, match="log needs positive values"):
        forecast.prepare(forecast.ForecastConfig(series="csv", csv=str(path), columns=("y",),
                                                 window=4, log=True))


def test_cli_reports_a_bad_csv_in_one_line(tmp_path, capsys):
    path = tmp_path / "gap.csv"
    path.write_text("y\n1\n\n2\nNA\n3\n")
    assert main(["train", "forecast", "--csv", str(path), "--column", "y",
                 "--out", str(tmp_path / "run")]) == 1
    err = capsys.readouterr().err
    assert err.startswith("bptt: error: read_csv:") and "missing values" in err
    assert err.count("\n") == 1
    assert main(["train", "forecast", "--csv", str(path), "--out", str(tmp_path / "r2")]) == 1
    assert "--column" in capsys.readouterr().err


# --- the documented result (minutes): the network beats seasonal naive -------------------------

@pytest.mark.slow
@pytest.mark.parametrize("series", ["sunspots", "airline"])
def test_forecast_beats_seasonal_naive(series):
    report = forecast.run(forecast.ForecastConfig(series=series, baseline=False),
                          log=lambda *a: None)
    m = report["metrics"]
    assert m["LSTM (bptt)"]["mase"] < m["seasonal naive"]["mase"]


# --- --config, kill and --resume ------------------------------------------------------------------



def test_forecast_config_file_and_a_killed_run_resumed(tmp_path, capsys):
    """Options from a TOML file (the command line over it); a run killed mid-epoch, after an
    epoch's metrics line and two updates past its last checkpoint, then --resume: the model,
    its best epoch, the optimizer, the metrics and the forecasts of an uninterrupted run."""
    a, b = tmp_path / "a", tmp_path / "b"
    common = ["--series", "sunspots", "--epochs", "3", "--hidden", "8", "--no-baseline",
              "--checkpoint-every", "4"]
    assert main(["train", "forecast", *common, "--out", str(a)]) == 0
    assert checkpoint.load(a / "checkpoint.npz")[1]["step"] == 3 * 14
    toml = tmp_path / "forecast.toml"
    toml.write_text('series = "sunspots"\nepochs = 3\nhidden = 20\nbaseline = false\n'
                    'checkpoint_every = 4\n')
    run_killed(["train", "forecast", "--config", toml, "--hidden", 8, "--out", b], after=14)
    assert checkpoint.load(b / "checkpoint.npz")[1]["step"] == 12
    assert len((b / "metrics.jsonl").read_text().splitlines()) == 1       # epoch 1, step 14
    capsys.readouterr()
    assert main(["train", "forecast", "--resume", str(b)]) == 0
    assert "LSTM (bptt)" in capsys.readouterr().out
    (arrays_a, meta_a), (arrays_b, meta_b) = (checkpoint.load(run / "checkpoint.npz")
                                              for run in (a, b))
    assert meta_b["finished"] and meta_b["step"] == meta_a["step"] and set(arrays_a) == set(
        arrays_b)
    for k in arrays_a:
        if k.split("/")[0] in ("model", "best", "optim"):
            assert np.array_equal(arrays_a[k], arrays_b[k]), k
    metrics = [[{k: v for k, v in json.loads(s).items() if k not in TIMING}
                for s in (run / "metrics.jsonl").read_text().splitlines()] for run in (a, b)]
    assert metrics[0] == metrics[1] and len(metrics[0]) == 3
    reports = [json.loads((run / "report.json").read_text()) for run in (a, b)]
    assert reports[0]["metrics"] == reports[1]["metrics"]
    assert reports[0]["config"] == reports[1]["config"] and reports[1]["config"]["hidden"] == 8
    # what --resume refuses, in one line each; ARIMA may be asked for afterwards
    for argv, match in ((["--window", 10], "--window 10 (the run has 22)"),
                        (["--out", a], "stays in its own directory")):
        assert main(["train", "forecast", "--resume", str(b), *map(str, argv)]) == 1
        err = capsys.readouterr().err
        assert match in err and err.count("\n") == 1, err
    assert main(["train", "forecast", *common, "--out", str(b)]) == 1
    assert "already holds a run" in capsys.readouterr().err


def test_forecast_resume_finds_a_csv_file_by_its_absolute_path_and_notices_a_change(
        tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    path = tmp_path / "series.csv"
    path.write_text("y\n" + "\n".join(str(10 + i % 7 + i / 10) for i in range(80)) + "\n")
    assert main(["train", "forecast", "--csv", "series.csv", "--column", "y", "--window", "6",
                 "--epochs", "1", "--hidden", "4", "--no-baseline", "--out", "run"]) == 0
    monkeypatch.chdir("/")
    assert main(["train", "forecast", "--resume", str(tmp_path / "run"), "--epochs", "2"]) == 0
    assert checkpoint.load(tmp_path / "run" / "checkpoint.npz")[1]["history"][-1]["epoch"] == 2
    path.write_text(path.read_text().replace("\n10", "\n11", 1))
    capsys.readouterr()
    assert main(["train", "forecast", "--resume", str(tmp_path / "run"), "--epochs", "3"]) == 1
    assert "the data file changed since training" in capsys.readouterr().err
