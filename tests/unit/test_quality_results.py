"""Quality results in the lake (moto S3 stand-in): each batch's JSON beside its candles, the
`quality` table, warn vs error in a real ingest (emulator faults), the run-level suites over the
lake, and the GX Data Docs site."""

from __future__ import annotations

import dataclasses
import json
from datetime import UTC, datetime, timedelta

import numpy as np
import pandas as pd

from candleflow import lake
from candleflow.config import CollectConfig, LakeConfig
from candleflow.ingest import ingest_exchange
from candleflow.quality import keep_batch_result, validate_ohlcv
from candleflow.quality.runs import check_run

FAST = CollectConfig(max_attempts=4, backoff_seconds=0.05, enable_rate_limit=False, chunk_days=3)
START, END = datetime(2024, 10, 20, tzinfo=UTC), datetime(2024, 10, 23, tzinfo=UTC)


def run(emulator, s3, bucket, symbols=("BTC", "ETH"), exchange="binance"):
    return ingest_exchange(s3, LakeConfig(bucket=bucket, aws_conn_id="unused"), exchange=exchange,
                           symbols=list(symbols), timeframe="1h", start=START, end=END, quotes=["USDT", "USD"],
                           page_size=100, mode="emulator", emulator_url=emulator.url, collect_cfg=FAST)


def test_warn_publishes_and_tags_error_quarantines_and_every_result_is_kept(emulator, s3_client, bucket):
    # BTC: every 7th candle missing (continuity, warn); ETH: high and low swapped (OHLC, error)
    emulator.faults.set([{"exchange": "binance", "symbol": "BTC", "kind": "gap"},
                         {"exchange": "binance", "symbol": "ETH", "kind": "ohlc_inconsistent"}])
    try:
        report = run(emulator, s3_client, bucket)
    finally:
        emulator.faults.set([])
    btc, eth = (next(c for c in report.chunks if c.symbol == s) for s in ("BTC", "ETH"))
    assert btc.status == "published" and "passed with warnings" in btc.detail and "continuity" in btc.detail
    assert eth.status == "quarantined" and "ohlc_consistency: high < max(open, close)" in eth.detail
    # the warned batch's JSON sits beside its candles; the quarantined one's report beside its candles
    keys = lake.list_objects(s3_client, bucket)
    [btc_json] = [k for k in keys if k.startswith("ohlcv/exchange=binance/symbol=BTC/timeframe=1h/_quality/")]
    document = json.loads(s3_client.get_object(Bucket=bucket, Key=btc_json)["Body"].read())
    assert document["success"] is True and document["failed"][0]["rule"] == "continuity"
    assert document["gx_result"]["suite_name"] == "ohlcv_batch_1h"
    assert not any(k.startswith("ohlcv/exchange=binance/symbol=ETH/") for k in keys)
    # the quality table: one row per expectation of each validation, queryable by severity
    table = lake.read(s3_client, bucket, "quality", timeframe="1h")
    assert set(table["symbol"]) == {"BTC", "ETH"} and (table.groupby("symbol").size() == 23).all()
    failed = table[~table["success"]].set_index(["symbol", "rule"])
    assert failed.loc[("BTC", "continuity"), "severity"] == "warn"
    assert failed.loc[("BTC", "continuity"), "unexpected_count"] > 0
    assert failed.loc[("ETH", "ohlc_consistency"), "severity"].eq("error").all()
    assert set(failed.loc["ETH", "result_key"]) == {eth.keys[0].replace("candles.parquet", "report.json")}
    # lake readers skip the '_quality' folder: the candles read back as before
    assert len(lake.read(s3_client, bucket, exchange="binance", symbol="BTC", timeframe="1h")) == btc.rows


def test_a_rerun_writes_the_same_result_bytes(emulator, s3_client, bucket):
    run(emulator, s3_client, bucket, symbols=("SOL",))
    before = lake.list_objects(s3_client, bucket, "ohlcv/")
    assert any("/_quality/" in k for k in before)
    run(emulator, s3_client, bucket, symbols=("SOL",))
    assert lake.list_objects(s3_client, bucket, "ohlcv/") == before


def frame_for(exchange_index: int, n=48):
    ts = pd.date_range(START, periods=n, freq="1h", tz="UTC").astype("datetime64[ms, UTC]")
    close = 2600 * (1 + 0.0002 * exchange_index) * (1 + 0.002 * np.sin(np.arange(n) / 3))
    open_ = np.r_[close[0], close[:-1]]
    return pd.DataFrame({"ts": ts, "open": open_, "high": np.maximum(open_, close) * 1.001,
                         "low": np.minimum(open_, close) * 0.999, "close": close, "volume": np.full(n, 3.0)})


def test_the_run_level_suites_read_the_lake_keep_results_and_build_data_docs(s3_client, bucket):
    exchanges = ["binance", "bybit", "okx", "coinbase"]
    window = (START, START + timedelta(hours=48))
    for i, exchange in enumerate(exchanges):
        frame = frame_for(i)
        if exchange == "okx":
            frame.loc[7, ["close", "high"]] = frame.loc[7, "close"] * 1.1   # a bad print
        if exchange == "coinbase":
            frame = frame.iloc[:40]                                          # stopped 8 hours early
        lake.write_batch(s3_client, bucket, frame, exchange=exchange, symbol="ETH", timeframe="1h", market="ETH/USDT",
                         window_start=window[0], window_end=window[1])
    # a warned batch of the run, whose result the Data Docs list too
    warned = validate_ohlcv(frame_for(0).drop(index=[3, 4]), "1h", window=window, context_label="binance ETH")
    key = keep_batch_result(s3_client, bucket, warned, ohlcv_prefix="ohlcv", exchange="binance", symbol="ETH",
                            timeframe="1h", market="ETH/USDT", window_start=window[0], window_end=window[1])
    summary = check_run(s3_client, bucket, ohlcv_prefix="ohlcv", timeframe="1h", window_start=window[0],
                        window_end=window[1], pairs=[(e, "ETH") for e in exchanges], scheduled=True,
                        batch_results=[("binance-ETH", key)], run_name="scheduled__2024-10-22T00:00:00+00:00")
    assert summary["errors"] == [] and len(summary["warnings"]) == 2   # both suites warn by default
    assert any("okx" in w for w in summary["warnings"]) and any("coinbase" in w for w in summary["warnings"])
    table = lake.read(s3_client, bucket, "quality", timeframe="1h")
    cross = table[table["suite"] == "cross_exchange"].set_index("exchange")
    assert cross.loc["okx", "unexpected_count"] == 1 and cross.drop("okx")["unexpected_count"].eq(0).all()
    fresh = table[table["suite"] == "freshness"].set_index("exchange")
    assert not fresh.loc["coinbase", "success"] and fresh.drop("coinbase")["success"].all()
    # Data Docs: an index and a page per validation, in the lake
    site = "reports/quality/data_docs/timeframe=1h/"
    keys = lake.list_objects(s3_client, bucket, site)
    assert summary["data_docs"] == site + "index.html" and site + "index.html" in keys
    pages = [k for k in keys if k.startswith(site + "validations/")]
    assert {p.split("/")[5] for p in pages} == {"cross_exchange_1h", "freshness_1h", "ohlcv_batch_1h"}
    index = s3_client.get_object(Bucket=bucket, Key=site + "index.html")["Body"].read().decode()
    assert "freshness_1h" in index and "binance-ETH" in index


def test_the_run_level_suites_read_candles_under_the_configured_ohlcv_prefix(s3_client, bucket):
    exchanges = ["binance", "bybit", "okx"]
    window = (START, START + timedelta(hours=48))
    for i, exchange in enumerate(exchanges):
        lake.write_batch(s3_client, bucket, frame_for(i), exchange=exchange, symbol="ETH", timeframe="1h",
                         market="ETH/USDT", window_start=window[0], window_end=window[1], prefix="candles")
    summary = check_run(s3_client, bucket, ohlcv_prefix="candles", timeframe="1h", window_start=window[0],
                        window_end=window[1], pairs=[(e, "ETH") for e in exchanges], scheduled=True)
    assert summary["errors"] == [] and summary["warnings"] == []
    [fresh_key] = summary["results"]["freshness"]
    assert fresh_key.startswith("candles/_quality/freshness/")
    table = lake.read(s3_client, bucket, "quality", timeframe="1h")
    fresh = table[table["suite"] == "freshness"]
    # every pair's candles were found under candles/: fresh, each judged on its 48 candles
    assert sorted(fresh["exchange"]) == exchanges and fresh["success"].all()
    cross = table[table["suite"] == "cross_exchange"]
    assert sorted(cross["exchange"]) == exchanges and cross["element_count"].eq(48).all()


def test_a_clean_run_writes_no_data_docs(s3_client, bucket):
    """Nothing failed or warned: no rendering, and the site keeps the last run that found something."""
    exchanges = ["binance", "bybit", "okx"]
    window = (START, START + timedelta(hours=48))
    for i, exchange in enumerate(exchanges):
        lake.write_batch(s3_client, bucket, frame_for(i), exchange=exchange, symbol="ETH", timeframe="1h",
                         market="ETH/USDT", window_start=window[0], window_end=window[1])
    summary = check_run(s3_client, bucket, ohlcv_prefix="ohlcv", timeframe="1h", window_start=window[0],
                        window_end=window[1], pairs=[(e, "ETH") for e in exchanges], scheduled=True,
                        run_name="scheduled__2024-10-22T00:00:00+00:00")
    assert summary["errors"] == [] and summary["warnings"] == [] and summary["data_docs"] is None
    assert set(summary["results"]) == {"cross_exchange", "freshness"}   # the results are still kept
    assert lake.list_objects(s3_client, bucket, "reports/") == {}


def test_a_backfill_window_is_judged_one_month_at_a_time_with_the_same_findings(s3_client, bucket, monkeypatch):
    """A long backfill is not loaded whole: each read spans one month at most, each month has its
    own result, and together they find what one pass over the whole window finds."""
    from candleflow.quality.runs import cross_exchange
    from candleflow.quality.settings import load_quality

    exchanges = ["binance", "bybit", "okx"]
    start, end = datetime(2024, 8, 15, tzinfo=UTC), datetime(2024, 10, 10, tzinfo=UTC)
    hours = int((end - start) / timedelta(hours=1))
    frames = {}
    for i, exchange in enumerate(exchanges):
        ts = pd.date_range(start, periods=hours, freq="1h", tz="UTC").astype("datetime64[ms, UTC]")
        close = 2600 * (1 + 0.0002 * i) * (1 + 0.002 * np.sin(np.arange(hours) / 3))
        frame = pd.DataFrame({"ts": ts, "open": close, "high": close * 1.001, "low": close * 0.999, "close": close,
                              "volume": np.full(hours, 3.0)})
        if exchange == "okx":   # bad prints in September, one of them on its last hour
            for when in ("2024-09-03 07:00", "2024-09-30 23:00"):
                frame.loc[frame["ts"] == pd.Timestamp(when, tz="UTC"), ["close", "high"]] *= 1.1
        lake.write_batch(s3_client, bucket, frame, exchange=exchange, symbol="ETH", timeframe="1h",
                         market="ETH/USDT", window_start=start, window_end=end)
        frames[exchange] = frame.assign(exchange=exchange, symbol="ETH")
    reads = []
    real_read = lake.read

    def observed_read(*args, **kwargs):   # the real reader; the test only notes each read's window
        reads.append((kwargs.get("start"), kwargs.get("end")))
        return real_read(*args, **kwargs)

    monkeypatch.setattr(lake, "read", observed_read)
    summary = check_run(s3_client, bucket, ohlcv_prefix="ohlcv", timeframe="1h", window_start=start, window_end=end,
                        pairs=[(e, "ETH") for e in exchanges], scheduled=False, run_name="backfill__x")
    assert sorted({(lo.month, hi - lo <= timedelta(days=31)) for lo, hi in reads}) == [(8, True), (9, True), (10, True)]
    assert [k.rsplit("/", 1)[1] for k in summary["results"]["cross_exchange"]] == [
        "20240815T000000Z_20240901T000000Z.json", "20240901T000000Z_20241001T000000Z.json",
        "20241001T000000Z_20241010T000000Z.json"]
    assert "freshness" not in summary["results"] and summary["errors"] == []
    [warning] = summary["warnings"]
    assert "2024-09-01" in warning and "okx" in warning
    table = lake.read(s3_client, bucket, "quality", timeframe="1h")
    per_month = table[(table["suite"] == "cross_exchange") & (table["exchange"] == "okx")].sort_values("ts")
    assert per_month["unexpected_count"].tolist() == [0, 2, 0]
    # one pass over the whole window (what check_run did before) finds the same, pair by pair
    _, frame = cross_exchange(pd.concat(frames.values(), ignore_index=True), "1h", load_quality())
    limit = load_quality().cross_exchange["max_deviation"]
    whole = frame.assign(bad=frame["deviation"] > limit).groupby("exchange")["bad"].sum().to_dict()
    months = table[table["suite"] == "cross_exchange"].groupby("exchange")["unexpected_count"].sum().to_dict()
    assert months == whole and whole["okx"] == 2
    assert table[table["suite"] == "cross_exchange"]["element_count"].sum() == frame["deviation"].notna().sum()


def test_runs_html_lists_the_runs_that_published_data_docs_newest_published_first(s3_client, bucket):
    """index.html shows the latest run; runs.html keeps the earlier ones reachable, with verdicts,
    in the order they published (a backfill of older data published last comes first), bounded."""
    import re

    from candleflow.quality.settings import load_quality

    exchanges = ["binance", "bybit", "okx"]
    site = "reports/quality/data_docs/timeframe=1h/"
    config = dataclasses.replace(load_quality(), data_docs_history_runs=2)
    # published in this order: the 21st, the 23rd, the 22nd (clean, published only with include_passed)
    for day, name in ((1, "scheduled__2024-10-21T00:00:00+00:00"), (3, "scheduled__2024-10-23T00:00:00+00:00"),
                      (2, "backfill__2024-10-22")):
        window = (START + timedelta(days=day - 1), START + timedelta(days=day))
        for i, exchange in enumerate(exchanges):
            frame = frame_for(i, n=24).assign(ts=lambda f, lo=window[0]: f["ts"] + (lo - START))
            if exchange == "okx" and day != 2:
                frame.loc[7, ["close", "high"]] = frame.loc[7, "close"] * 1.1   # a bad print, warned
            lake.write_batch(s3_client, bucket, frame, exchange=exchange, symbol="ETH", timeframe="1h",
                             market="ETH/USDT", window_start=window[0], window_end=window[1])
        config_day = config if day != 2 else dataclasses.replace(config, data_docs_include_passed=True)
        check_run(s3_client, bucket, ohlcv_prefix="ohlcv", timeframe="1h", window_start=window[0],
                  window_end=window[1], pairs=[(e, "ETH") for e in exchanges], scheduled=False, run_name=name,
                  config=config_day)
    keys = lake.list_objects(s3_client, bucket, site)
    assert len([k for k in keys if k.startswith(site + "runs/")]) == 2   # the oldest entry was dropped
    page = s3_client.get_object(Bucket=bucket, Key=site + "runs.html")["Body"].read().decode()
    rows = re.findall(r"<tr><td>[^<]+</td><td>(.*?)</td><td>(.*?)</td><td class=\"\w+\">(\w+)</td>", page)
    # the bad print is warn-level (kept): "warned"; the clean run published only because of include_passed
    assert rows == [("backfill__2024-10-22", "2024-10-22T00:00:00+00:00", "passed"),
                    ("scheduled__2024-10-23T00:00:00+00:00", "2024-10-23T00:00:00+00:00", "warned")]
    links = re.findall(r'href="(validations/[^"]+)"', page)
    assert len(links) == 2 and all(site + link in keys for link in links)
    index = s3_client.get_object(Bucket=bucket, Key=site + "index.html")["Body"].read().decode()
    assert '<a href="runs.html">' in index and "backfill__2024-10-22" in index and "scheduled__" not in index


def test_a_validation_verdict_is_warned_when_only_warn_level_expectations_failed():
    from candleflow.quality.results import _verdict

    clean = frame_for(0)
    gappy = clean.drop(index=[3, 4])                                   # continuity: warn
    broken = clean.assign(high=np.where(clean.index == 5, clean["low"] - 1, clean["high"]))   # high < low: error
    window = (START, START + timedelta(hours=48))
    verdicts = [_verdict(validate_ohlcv(f, "1h", window=window, context_label="t").gx_result)
                for f in (clean, gappy, broken)]
    assert verdicts == ["passed", "warned", "failed"]
