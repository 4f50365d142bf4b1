"""The GX suite on good and broken batches, and the `python -m candleflow.quality` command."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from candleflow.quality import read_candle_file, validate_ohlcv

SHARED = Path(__file__).resolve().parents[2].parent / "shared" / "data" / "real"


def candles(n=48, freq="1h"):
    ts = pd.date_range("2024-10-20", periods=n, freq=freq, tz="UTC").astype("datetime64[ms, UTC]")
    close = 100 + np.cumsum(np.sin(np.arange(n)))
    open_ = np.r_[100, close[:-1]]
    return pd.DataFrame({"ts": ts, "open": open_, "high": np.maximum(open_, close) + 0.5,
                         "low": np.minimum(open_, close) - 0.5, "close": close, "volume": np.full(n, 10.0)})


def failed_types(report):
    return {f["expectation"] for f in report.failed}


def test_a_clean_batch_passes():
    report = validate_ohlcv(candles(), "1h", context_label="clean")
    assert report.success and report.row_count == 48 and report.evaluated_expectations >= 15
    assert report.to_json()["success"] is True


@pytest.mark.parametrize("defect,expected", [
    ("high_below_low", "expect_column_pair_values_a_to_be_greater_than_b"),
    ("negative_volume", "expect_column_values_to_be_between"),
    ("null_close", "expect_column_values_to_not_be_null"),
    ("duplicate", "expect_column_values_to_be_unique"),
    ("unaligned", "expect_column_values_to_be_in_set"),
    ("out_of_order", "expect_column_values_to_be_increasing"),
    ("extra_column", "expect_table_columns_to_match_set"),
])
def test_each_defect_fails_its_expectation_with_a_summary(defect, expected):
    frame = candles()
    if defect == "high_below_low":
        frame.loc[5, ["high", "low"]] = frame.loc[5, ["low", "high"]].to_numpy()
    elif defect == "negative_volume":
        frame.loc[7, "volume"] = -1.0
    elif defect == "null_close":
        frame.loc[9, "close"] = np.nan
    elif defect == "duplicate":
        frame = pd.concat([frame, frame.iloc[[3]]]).sort_values("ts", kind="stable").reset_index(drop=True)
    elif defect == "unaligned":
        frame.loc[11, "ts"] = frame.loc[11, "ts"] + pd.Timedelta(minutes=1)
    elif defect == "out_of_order":
        frame = frame.iloc[[1, 0, *range(2, len(frame))]].reset_index(drop=True)
    elif defect == "extra_column":
        frame["vwap"] = 1.0
    report = validate_ohlcv(frame, "1h", context_label="kraken ETH/USD 1h")
    assert not report.success
    assert expected in failed_types(report)
    assert report.summary.startswith("Quality check failed for kraken ETH/USD 1h")
    assert expected in report.summary
    if defect == "high_below_low":
        failure = next(f for f in report.failed if f["expectation"] == expected)
        assert failure["unexpected_count"] == 1 and failure["examples"]


def test_the_command_checks_real_files_and_exits_1_on_defects(tmp_path):
    source = SHARED / "ETH_BTC-5m.feather"
    if not source.exists():
        pytest.skip("shared recorded data not present on this machine")
    ok = subprocess.run([sys.executable, "-m", "candleflow.quality", "check", str(source), "--timeframe", "5m"],
                        capture_output=True, text=True, timeout=300)
    assert ok.returncode == 0, ok.stdout + ok.stderr
    assert "passed" in ok.stdout
    # the same candles as CSV with ISO times, shuffled, one candle repeated under a shifted time
    frame = read_candle_file(str(source))
    bad = pd.concat([frame, frame.iloc[[10]].assign(ts=frame["ts"].iloc[10] + pd.Timedelta(minutes=2))])
    bad = bad.sample(frac=1.0, random_state=1)
    path = tmp_path / "eth_btc.csv"
    bad.assign(date=bad["ts"].astype(str)).drop(columns="ts").to_csv(path, index=False)
    failed = subprocess.run([sys.executable, "-m", "candleflow.quality", "check", str(path), "--timeframe", "5m"],
                            capture_output=True, text=True, timeout=300)
    assert failed.returncode == 1, failed.stdout + failed.stderr
    assert "timestamps off the timeframe grid" in failed.stdout and "not strictly increasing" in failed.stdout


def test_the_command_names_a_bad_file(tmp_path):
    path = tmp_path / "x.csv"
    path.write_text("when,open\n1,2\n")
    result = subprocess.run([sys.executable, "-m", "candleflow.quality", "check", str(path), "--timeframe", "1h"],
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 2 and "time column" in result.stderr


def test_concurrent_validations_judge_their_own_batch():
    # GX's context is shared: without serialising, threads validated each other's dataframes
    from concurrent.futures import ThreadPoolExecutor

    good = candles()
    bad = candles()
    bad.loc[5, ["high", "low"]] = bad.loc[5, ["low", "high"]].to_numpy()
    jobs = [good, bad] * 6
    with ThreadPoolExecutor(max_workers=4) as pool:
        results = list(pool.map(lambda frame: validate_ohlcv(frame, "1h").success, jobs))
    assert results == [True, False] * 6


@pytest.mark.parametrize("name,timeframe,code,expected", [
    # an illiquid binance pair: candles re-sent under a later minute, and 30 % of the minutes missing
    ("XRP_ETH-1m.feather", "1m", 1, ["ERROR repeated_candle", "in 4 row(s)", "WARN continuity", "1091 of 3560"]),
    ("UNITTEST_BTC-1m.feather", "1m", 1, ["ERROR repeated_candle", "2017-11-09T12:58:00", "WARN continuity"]),
    # pandas 'columns' JSON with ms times: clean
    ("BTC_USDT-5m-2023.json", "5m", 0, ["passed"]),
])
def test_the_command_catches_the_defects_of_real_exchange_files(capsys, name, timeframe, code, expected):
    from candleflow.quality import main

    source = SHARED / name
    if not source.exists():
        pytest.skip("shared recorded data not present on this machine")
    assert main(["check", str(source), "--timeframe", timeframe]) == code
    out = capsys.readouterr().out
    for text in expected:
        assert text in out, out


def test_warnings_fail_the_command_only_when_strict(capsys, tmp_path):
    from candleflow.quality import main

    frame = candles(48).drop(index=[20, 21]).reset_index(drop=True)   # 2 of 48 missing: a warning
    path = tmp_path / "gappy.parquet"
    frame.to_parquet(path)
    assert main(["check", str(path), "--timeframe", "1h"]) == 0
    assert "passed with warnings" in capsys.readouterr().out
    assert main(["check", str(path), "--timeframe", "1h", "--strict"]) == 1


def test_the_failure_summary_names_the_rule_the_row_count_and_three_example_rows():
    frame = candles()
    for row in (5, 9, 13, 17):
        frame.loc[row, ["high", "low"]] = frame.loc[row, ["low", "high"]].to_numpy()
    report = validate_ohlcv(frame, "1h", context_label="okx BTC/USDT 1h")
    lines = report.summary.splitlines()
    assert lines[0].startswith("Quality check failed for okx BTC/USDT 1h: ")
    [head] = [i for i, line in enumerate(lines) if "high < max(open, close)" in line]
    assert lines[head].strip().startswith("ERROR ohlc_consistency") and "in 4 row(s)" in lines[head]
    examples = lines[head + 1:head + 4]
    assert [e.strip().startswith("{'ts': '2024-10-20T") for e in examples] == [True] * 3
    assert str(frame.loc[5, "ts"].isoformat()) in examples[0]
