"""The rules added to the batch suite (repeated candles, continuity, stale prices, return
outliers), severities from configuration, and the run-level suites (cross-exchange, freshness)."""

from __future__ import annotations

import copy
from datetime import UTC, datetime, timedelta

import numpy as np
import pandas as pd
import pytest
import yaml

from candleflow.config import ConfigError, config_dir
from candleflow.quality import validate_ohlcv
from candleflow.quality.runs import cross_exchange, cross_exchange_frame, freshness
from candleflow.quality.settings import load_quality, parse_quality


def candles(n=96, freq="1h", seed=3):
    rng = np.random.default_rng(seed)
    ts = pd.date_range("2024-10-20", periods=n, freq=freq, tz="UTC").astype("datetime64[ms, UTC]")
    close = 100 * np.exp(np.cumsum(rng.normal(0, 0.004, n)))
    open_ = np.r_[100, close[:-1]]
    return pd.DataFrame({"ts": ts, "open": open_, "high": np.maximum(open_, close) * 1.001,
                         "low": np.minimum(open_, close) * 0.999, "close": close,
                         "volume": rng.uniform(5, 50, n)})


def config(**changes):
    """The shipped quality.yaml with some rules changed, e.g. continuity={"severity": "error"}."""
    data = yaml.safe_load((config_dir() / "quality.yaml").read_text())
    data = copy.deepcopy(data)
    for rule, values in changes.items():
        data["batch"][rule].update(values)
    return parse_quality(data)


def rule_failures(report, rule):
    return [f for f in report.failed if f["rule"] == rule]


def test_the_shipped_configuration_loads_and_a_clean_batch_passes_every_rule():
    cfg = load_quality()
    assert cfg.severity("timestamps") == "error" and cfg.severity("continuity") == "warn"
    report = validate_ohlcv(candles(), "1h", config=cfg)
    assert report.success and report.failed == [] and report.evaluated_expectations == 23


def test_a_candle_repeated_under_the_next_timestamp_is_an_error():
    frame = candles()
    frame.loc[41, ["open", "high", "low", "close", "volume"]] = frame.loc[40, ["open", "high", "low", "close",
                                                                               "volume"]].to_numpy()
    report = validate_ohlcv(frame, "1h", context_label="binance BTC/USDT", config=config())
    assert not report.success
    [failure] = rule_failures(report, "repeated_candle")
    assert failure["severity"] == "error" and failure["unexpected_count"] == 1
    assert failure["examples"][0]["ts"] == frame.loc[41, "ts"].isoformat()
    # the same candles shuffled: still exactly that row (the rule looks at time order)
    shuffled = validate_ohlcv(frame.sample(frac=1.0, random_state=2), "1h", config=config())
    assert rule_failures(shuffled, "repeated_candle")[0]["unexpected_count"] == 1
    # severity is configuration: off, the batch passes
    assert validate_ohlcv(frame, "1h", config=config(repeated_candle={"severity": "off"})).success


def test_missing_candles_warn_over_the_window_and_error_when_configured():
    frame = candles().drop(index=[10, 11, 12]).reset_index(drop=True)
    start = datetime(2024, 10, 20, tzinfo=UTC)
    window = (start, start + timedelta(hours=100))  # 4 more candles due after the last one
    report = validate_ohlcv(frame, "1h", window=window, config=config())
    assert report.success  # warn: kept
    [failure] = report.warnings
    assert failure["rule"] == "continuity" and failure["unexpected_count"] == 7 and failure["expected"] == 100
    assert failure["examples"][0] == "3 candle(s) missing from 2024-10-20T10:00:00Z"
    assert "continuity" in report.summary and "7 of 100" in report.summary
    strict = validate_ohlcv(frame, "1h", window=window, config=config(continuity={"severity": "error"}))
    assert not strict.success and strict.errors[0]["rule"] == "continuity"
    # within the threshold: no failure
    assert validate_ohlcv(frame, "1h", window=window, config=config(continuity={"max_missing_ratio": 0.1})).failed == []


def test_a_frozen_feed_is_a_stale_price_run_but_a_quiet_candle_is_not():
    frame = candles()
    frozen = frame.loc[30, "close"]
    frame.loc[31:45, ["open", "high", "low", "close"]] = frozen   # 15 identical candles
    frame.loc[31:45, "volume"] = 0.0
    frame.loc[46, "open"] = frozen
    frame.loc[46, ["high", "low"]] = [max(frozen, frame.loc[46, "close"]) * 1.001,
                                      min(frozen, frame.loc[46, "close"]) * 0.999]
    frame.loc[60, ["open", "high", "low", "close", "volume"]] = [frame.loc[59, "close"]] * 4 + [0.0]
    frame.loc[61, "open"] = frame.loc[60, "close"]
    frame.loc[61, ["high", "low"]] = [max(frame.loc[61, ["open", "close"]]) * 1.001,
                                      min(frame.loc[61, ["open", "close"]]) * 0.999]
    report = validate_ohlcv(frame, "1h", config=config())
    [failure] = rule_failures(report, "stale_price")
    assert failure["severity"] == "warn" and failure["unexpected_count"] == 15
    assert {e["stale_run"] for e in failure["examples"]} == {"15"}
    assert report.success  # warn-level only
    assert not rule_failures(validate_ohlcv(frame, "1h", config=config(stale_price={"max_run": 15})), "stale_price")


def test_a_spike_is_a_return_outlier_and_a_steady_series_has_none():
    frame = candles(200)
    frame.loc[150, "close"] *= 1.25                      # a bad print: +25 % and back
    frame.loc[150, "high"] = frame.loc[150, "close"] * 1.001
    frame.loc[151, "open"] = frame.loc[150, "close"]
    frame.loc[151, "high"] = frame.loc[151, "open"] * 1.001
    report = validate_ohlcv(frame, "1h", config=config())
    [failure] = rule_failures(report, "return_outliers")
    flagged = {e["ts"] for e in failure["examples"]}
    assert failure["unexpected_count"] == 2 and frame.loc[150, "ts"].isoformat() in flagged
    assert validate_ohlcv(candles(200), "1h", config=config()).failed == []


@pytest.mark.parametrize("change,field", [
    ({"continuity": {"severity": "fatal"}}, "batch.continuity.severity"),
    ({"stale_price": {"max_run": 0}}, "batch.stale_price.max_run"),
    ({"return_outliers": {"min_periods": 100}}, "min_periods"),
    ({"continuity": {"max_ratio": 0.1}}, "unknown field"),
])
def test_a_bad_setting_names_its_field(change, field):
    with pytest.raises(ConfigError, match=field.replace(".", r"\.")):
        config(**change)


def test_a_missing_rule_is_named():
    data = yaml.safe_load((config_dir() / "quality.yaml").read_text())
    del data["batch"]["stale_price"]
    with pytest.raises(ConfigError, match=r"batch\.stale_price is missing"):
        parse_quality(data)


def closes(exchanges=("binance", "bybit", "okx", "kraken"), n=24):
    rows = []
    ts = pd.date_range("2024-10-20", periods=n, freq="1h", tz="UTC").astype("datetime64[ms, UTC]")
    for k, exchange in enumerate(exchanges):
        for symbol, base in (("BTC", 67000.0), ("ETH", 2600.0)):
            close = base * (1 + 0.0001 * k) * (1 + 0.001 * np.sin(np.arange(n)))
            rows.append(pd.DataFrame({"exchange": exchange, "symbol": symbol, "ts": ts, "close": close}))
    return pd.concat(rows, ignore_index=True)


def test_a_bad_print_on_one_exchange_is_flagged_against_the_others():
    frame = closes()
    bad = (frame["exchange"] == "okx") & (frame["symbol"] == "ETH") & (frame["ts"] == frame["ts"].iloc[5])
    frame.loc[bad, "close"] *= 1.08
    report, derived = cross_exchange(frame, "1h", load_quality())
    [failure] = report.failed
    assert failure["rule"] == "cross_exchange" and failure["unexpected_count"] == 1
    assert failure["examples"][0]["exchange"] == "okx" and failure["examples"][0]["symbol"] == "ETH"
    assert report.success  # warn by default
    flagged = derived[derived["deviation"] > 0.02]
    assert set(zip(flagged["exchange"], flagged["symbol"], strict=True)) == {("okx", "ETH")}


def test_a_wrong_symbol_mapping_flags_every_candle_of_that_pair_only():
    frame = closes()
    wrong = (frame["exchange"] == "kraken") & (frame["symbol"] == "BTC")
    frame.loc[wrong, "close"] = frame.loc[wrong, "close"] / 25   # another asset's price
    report, _ = cross_exchange(frame, "1h", load_quality())
    assert report.failed[0]["unexpected_count"] == 24
    assert {e["exchange"] for e in report.failed[0]["examples"]} == {"kraken"}


def test_too_few_exchanges_are_not_judged():
    derived = cross_exchange_frame(closes(exchanges=("binance", "okx")), min_others=2)
    assert derived["deviation"].isna().all()


def test_freshness_flags_a_pair_whose_newest_candle_is_late_or_missing():
    end = datetime(2024, 10, 21, tzinfo=UTC)
    newest = {("binance", "BTC"): end - timedelta(hours=1),      # the interval's last candle: age 0
              ("okx", "BTC"): end - timedelta(hours=2),          # one behind: allowed (1h: 1)
              ("kraken", "BTC"): end - timedelta(hours=5),       # four behind
              ("bybit", "BTC"): None}                            # nothing recent at all
    report, frame = freshness(newest, end, "1h", load_quality())
    assert frame.set_index("exchange")["age_intervals"].to_dict() == {"binance": 0.0, "bybit": 3.0, "kraken": 4.0,
                                                                     "okx": 1.0}
    [failure] = report.failed
    assert failure["rule"] == "freshness" and failure["unexpected_count"] == 2
    assert {e["exchange"] for e in failure["examples"]} == {"kraken", "bybit"}


def test_an_edited_quality_yaml_applies_to_the_next_validation(tmp_path, monkeypatch):
    import os
    import shutil

    shutil.copytree(config_dir(), tmp_path, dirs_exist_ok=True)
    monkeypatch.setenv("CANDLEFLOW_CONFIG_DIR", str(tmp_path))
    frame = candles().drop(index=[10, 11, 12]).reset_index(drop=True)
    assert validate_ohlcv(frame, "1h").success  # continuity: warn
    path = tmp_path / "quality.yaml"
    data = yaml.safe_load(path.read_text())
    data["batch"]["continuity"]["severity"] = "error"
    path.write_text(yaml.safe_dump(data))
    os.utime(path, ns=(path.stat().st_atime_ns, path.stat().st_mtime_ns + 1_000_000))
    report = validate_ohlcv(frame, "1h")
    assert not report.success and report.errors[0]["rule"] == "continuity"
