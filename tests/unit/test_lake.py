"""candleflow.lake against the moto S3 server: keys, bytes, idempotency, quarantine, reads."""

from __future__ import annotations

import io
import json
from datetime import UTC, datetime, timedelta

import numpy as np
import pandas as pd
import pyarrow.parquet as pq
import pytest

from candleflow import lake

UTC = UTC


def candles(start: datetime, hours: int, price: float = 100.0) -> pd.DataFrame:
    ts = pd.date_range(start, periods=hours, freq="1h").astype("datetime64[ms, UTC]")
    close = price + np.arange(hours, dtype="float64")
    return pd.DataFrame({"ts": ts, "open": close - 0.5, "high": close + 1, "low": close - 1, "close": close,
                         "volume": np.full(hours, 3.0)})


def write(s3, bucket, frame, start, end, exchange="binance", symbol="BTC"):
    return lake.write_batch(s3, bucket, frame, exchange=exchange, symbol=symbol, timeframe="1h", market=f"{symbol}/USDT",
                            window_start=start, window_end=end)


def test_a_window_is_written_as_one_object_per_month_under_deterministic_keys(s3_client, bucket):
    start, end = datetime(2024, 11, 29, 12, tzinfo=UTC), datetime(2025, 1, 1, 6, tzinfo=UTC)
    written = write(s3_client, bucket, candles(start, 24 * 32 + 18), start, end)
    assert [o.key for o in written] == [
        "ohlcv/exchange=binance/symbol=BTC/timeframe=1h/month=2024-11/part-20241129T120000Z_20241201T000000Z.parquet",
        "ohlcv/exchange=binance/symbol=BTC/timeframe=1h/month=2024-12/part-20241201T000000Z_20250101T000000Z.parquet",
        "ohlcv/exchange=binance/symbol=BTC/timeframe=1h/month=2025-01/part-20250101T000000Z_20250101T060000Z.parquet",
    ]
    assert [o.rows for o in written] == [36, 24 * 31, 6]
    table = pq.read_table(io.BytesIO(s3_client.get_object(Bucket=bucket, Key=written[0].key)["Body"].read()))
    assert table.schema.equals(lake.OHLCV_SCHEMA, check_metadata=False)
    assert str(table.schema.field("ts").type) == "timestamp[ms, tz=UTC]"
    meta = pq.ParquetFile(io.BytesIO(s3_client.get_object(Bucket=bucket, Key=written[0].key)["Body"].read())).metadata
    assert meta.row_group(0).column(1).compression == "ZSTD"


def test_rewriting_a_window_leaves_identical_objects_and_drops_emptied_months(s3_client, bucket):
    start, end = datetime(2024, 10, 31, tzinfo=UTC), datetime(2024, 11, 2, tzinfo=UTC)
    frame = candles(start, 48)
    write(s3_client, bucket, frame, start, end)
    first = lake.list_objects(s3_client, bucket, "ohlcv/")
    write(s3_client, bucket, frame.sample(frac=1.0, random_state=3), start, end)  # same data, any order
    assert lake.list_objects(s3_client, bucket, "ohlcv/") == first
    # the exchange now returns nothing for November: its object must not linger
    write(s3_client, bucket, frame.iloc[:24], start, end)
    after = lake.list_objects(s3_client, bucket, "ohlcv/")
    assert len(first) == 2 and list(after) == [next(iter(first))]


def test_bad_batches_are_refused_before_anything_is_written(s3_client, bucket):
    start, end = datetime(2024, 10, 20, tzinfo=UTC), datetime(2024, 10, 21, tzinfo=UTC)
    frame = candles(start, 24)
    with pytest.raises(ValueError, match="duplicate"):
        write(s3_client, bucket, pd.concat([frame, frame.iloc[[0]]]), start, end)
    with pytest.raises(ValueError, match="outside the window"):
        write(s3_client, bucket, candles(start, 25), start, end)
    assert lake.list_objects(s3_client, bucket, "ohlcv/") == {}


def test_read_prunes_filters_deduplicates_and_sorts(s3_client, bucket):
    day = datetime(2024, 10, 20, tzinfo=UTC)
    write(s3_client, bucket, candles(day, 48), day, day + timedelta(days=2))
    write(s3_client, bucket, candles(day, 48, price=200), day, day + timedelta(days=2), exchange="okx")
    # an hourly run rewrote 10:00 with a corrected candle: it overlaps the backfill's object
    hour = day + timedelta(hours=10)
    write(s3_client, bucket, candles(hour, 1, price=999), hour, hour + timedelta(hours=1))
    frame, sources = lake.read_with_sources(s3_client, bucket, timeframe="1h", start=day + timedelta(hours=6),
                                            end=day + timedelta(hours=30))
    assert list(frame.columns) == ["exchange", "symbol", "timeframe", "ts", "open", "high", "low", "close",
                                   "volume", "market"]
    assert frame.groupby("exchange").size().to_dict() == {"binance": 24, "okx": 24}
    assert not frame.duplicated(["exchange", "symbol", "timeframe", "ts"]).any()
    assert frame.loc[(frame.exchange == "binance") & (frame.ts == pd.Timestamp(hour)), "close"].item() == 999
    assert frame.groupby("exchange")["ts"].apply(lambda s: s.is_monotonic_increasing).all()
    assert len(sources) == 3   # one month object per exchange, plus the hourly one
    only = lake.read(s3_client, bucket, exchange="okx", symbol="BTC", timeframe="1h", start=day, end=day + timedelta(hours=2))
    assert list(only["close"]) == [200.0, 201.0]
    assert lake.read(s3_client, bucket, symbol="ETH").empty


def test_quarantine_keeps_the_batch_as_collected_and_its_report(s3_client, bucket):
    start = datetime(2024, 10, 20, tzinfo=UTC)
    raw = candles(start, 5).iloc[[1, 0, 2, 3, 4, 4]].reset_index(drop=True)  # out of order, repeated
    qkey = lake.quarantine_batch(s3_client, bucket, raw, {"success": False, "summary": "high < low"},
                                 exchange="kraken", symbol="ETH", timeframe="1h", market="ETH/USD",
                                 window_start=start, window_end=start + timedelta(hours=5))
    assert qkey == ("quarantine/exchange=kraken/symbol=ETH/timeframe=1h/"
                    "window=20241020T000000Z_20241020T050000Z/candles.parquet")
    kept = pq.read_table(io.BytesIO(s3_client.get_object(Bucket=bucket, Key=qkey)["Body"].read())).to_pandas()
    # the exchange's row order and repeats are kept: they are part of what quality judged
    assert kept["ts"].tolist() == raw["ts"].tolist() and set(kept["market"]) == {"ETH/USD"}
    report = json.loads(s3_client.get_object(Bucket=bucket, Key=qkey.replace("candles.parquet", "report.json"))["Body"].read())
    assert report["success"] is False
    assert lake.list_objects(s3_client, bucket, "ohlcv/") == {}


def test_read_returns_the_same_rows_as_pandas_or_arrow_with_partition_columns(s3_client, bucket):
    day = datetime(2024, 10, 31, tzinfo=UTC)
    write(s3_client, bucket, candles(day, 30), day, day + timedelta(hours=30))
    frame = lake.read(s3_client, bucket, "ohlcv", exchange="binance", symbol="BTC", timeframe="1h",
                      start=day + timedelta(hours=20), end=day + timedelta(hours=26))
    arrow = lake.read(s3_client, bucket, "ohlcv", as_arrow=True, exchange="binance", symbol="BTC", timeframe="1h",
                      start=day + timedelta(hours=20), end=day + timedelta(hours=26))
    assert frame.columns.tolist() == arrow.column_names == ["exchange", "symbol", "timeframe", "month", *lake.OHLCV_SCHEMA.names]
    assert frame["month"].tolist() == ["2024-10"] * 4 + ["2024-11"] * 2
    pd.testing.assert_frame_equal(arrow.to_pandas(), frame)
    assert str(frame["ts"].dtype) == "datetime64[ms, UTC]"


def test_the_duckdb_query_in_docs_lake_md_runs_against_s3_and_matches_lake_read(s3_client, moto_server):
    """docs/lake.md's DuckDB block, executed as written (endpoint and bucket pointed at this
    session's moto server), returns what lake.read returns — late hourly overrides and a compacted
    day included."""
    import re
    from pathlib import Path

    doc = (Path(__file__).resolve().parents[2] / "docs" / "lake.md").read_text()
    [block] = [b for b in re.findall(r"```python\n(.*?)```", doc, flags=re.S) if "import duckdb" in b]
    bucket = "candleflow-lake-duckdb"
    s3_client.create_bucket(Bucket=bucket)
    start = datetime(2024, 9, 28, tzinfo=UTC)
    write(s3_client, bucket, candles(start, 24 * 35), start, start + timedelta(days=35))
    for hour in (datetime(2024, 10, 3, 5, tzinfo=UTC), datetime(2024, 10, 29, 23, tzinfo=UTC)):
        write(s3_client, bucket, candles(hour, 1, price=-1.0), hour, hour + timedelta(hours=1))
    write(s3_client, bucket, candles(start, 24 * 3), start, start + timedelta(days=3), exchange="okx")
    # a compacted day with a part written after compaction: the query must rank them as lake.read does
    from candleflow import compaction

    [done] = compaction.compact_day(s3_client, bucket, "ohlcv", "2024-10-31", exchange="binance")
    assert done.status == "compacted" and done.merged == 3
    late = datetime(2024, 10, 3, 7, tzinfo=UTC)
    write(s3_client, bucket, candles(late, 1, price=-3.0), late, late + timedelta(hours=1))
    code = block.replace('"127.0.0.1:5000"', repr(moto_server.removeprefix("http://"))).replace(
        "candleflow-lake/", f"{bucket}/")
    scope: dict = {}
    exec(compile(code, "docs/lake.md", "exec"), scope)  # noqa: S102 - the documented example itself
    got = scope["frame"]
    expected = lake.read(s3_client, bucket, exchange="binance", symbol="BTC", timeframe="1h",
                         start=datetime(2024, 10, 1, tzinfo=UTC), end=datetime(2024, 10, 30, tzinfo=UTC))
    assert len(expected) == 29 * 24 and (expected["close"] == -1.0).sum() == 2
    assert (expected["close"] == -3.0).sum() == 1
    got["ts"] = got["ts"].dt.tz_convert("UTC").astype("datetime64[ms, UTC]")
    pd.testing.assert_frame_equal(got, expected)


def test_a_time_bounded_read_lists_only_the_months_it_needs(s3_client, bucket):
    """A pair's folder holds its whole history and one `_quality/` result per batch: a read across
    a month's end lists from the first wanted month and stops paging after the last."""
    start, end = datetime(2024, 7, 1, tzinfo=UTC), datetime(2024, 12, 1, tzinfo=UTC)
    write(s3_client, bucket, candles(start, int((end - start) / timedelta(hours=1))), start, end)
    base = "ohlcv/exchange=binance/symbol=BTC/timeframe=1h/"
    for i in range(10):
        s3_client.put_object(Bucket=bucket, Key=f"{base}_quality/{i:02d}.json", Body=b"{}")
    lo, hi = datetime(2024, 9, 30, 6, tzinfo=UTC), datetime(2024, 10, 1, 2, tzinfo=UTC)
    whole = lake.read(s3_client, bucket, exchange="binance", symbol="BTC", timeframe="1h")
    requests = []

    def one_key_per_page(params, **_):  # every key listed costs a request: the count is the keys listed
        params["MaxKeys"] = 1
        requests.append(params.get("StartAfter"))

    s3_client.meta.events.register("before-parameter-build.s3.ListObjectsV2", one_key_per_page)
    try:
        frame, keys = lake.read_table(s3_client, bucket, "ohlcv", exchange="binance", symbol="BTC", timeframe="1h",
                                      start=lo, end=hi)
    finally:
        s3_client.meta.events.unregister("before-parameter-build.s3.ListObjectsV2", one_key_per_page)
    assert [k.split("/")[4] for k in keys] == ["month=2024-09", "month=2024-10"]
    expected = whole[(whole["ts"] >= lo) & (whole["ts"] < hi)].reset_index(drop=True)
    pd.testing.assert_frame_equal(frame, expected)
    # 2024-09, 2024-10 and the first key past the last month (which ends the paging); not 15 keys
    assert len(requests) == 3 and requests[0] == base + "month=2024-09"


def test_a_time_bounded_read_gets_only_the_objects_whose_window_it_overlaps(s3_client, bucket):
    """A month partition holds a day's hourly parts (and a compacted object): a read of two hours
    GETs the parts of those hours, and the compacted object only when its window reaches them."""
    from candleflow import compaction

    day = datetime(2024, 10, 20, tzinfo=UTC)
    for d in (2, 1):  # two daily backfill parts
        lo = day - timedelta(days=d)
        write(s3_client, bucket, candles(lo, 24, price=148.0 - 24 * d), lo, lo + timedelta(days=1))
    for h in range(24):
        write(s3_client, bucket, candles(day + timedelta(hours=h), 1, price=500.0 + h), day + timedelta(hours=h),
              day + timedelta(hours=h + 1))
    compaction.compact_day(s3_client, bucket, "ohlcv", "2024-10-19")   # the two days before: one object
    got = []

    def count(params, **_):
        got.append(params["Key"].rsplit("/", 1)[-1])

    s3_client.meta.events.register("before-parameter-build.s3.GetObject", count)
    try:
        frame = lake.read(s3_client, bucket, exchange="binance", start=day + timedelta(hours=5),
                          end=day + timedelta(hours=7))
        assert got == ["part-20241020T050000Z_20241020T060000Z.parquet", "part-20241020T060000Z_20241020T070000Z.parquet"]
        assert frame["close"].tolist() == [505.0, 506.0]
        got.clear()
        frame = lake.read(s3_client, bucket, exchange="binance", start=day - timedelta(hours=1),
                          end=day + timedelta(hours=1))
        assert got == ["compacted-20241018T000000Z_20241020T000000Z.parquet",
                       "part-20241020T000000Z_20241020T010000Z.parquet"]
        assert frame["close"].tolist() == [147.0, 500.0]
    finally:
        s3_client.meta.events.unregister("before-parameter-build.s3.GetObject", count)


def test_read_table_hands_back_each_objects_metadata_it_read(s3_client, bucket):
    day = datetime(2024, 10, 20, tzinfo=UTC)
    table = lake.to_table(candles(day, 3), "BTC/USDT")
    key = lake.partition_prefix("ohlcv", "binance", "BTC", "1h", "2024-10") + "part-a.parquet"
    lake.write_object(s3_client, bucket, key, table, metadata={"candleflow.sources": '["x"]'})
    frame, keys, metadata = lake.read_table(s3_client, bucket, "ohlcv", with_metadata=True, exchange="binance")
    assert keys == [key] and len(frame) == 3
    assert metadata[key]["candleflow.sources"] == '["x"]'
    assert lake.read_table(s3_client, bucket, "ohlcv", exchange="binance")[1] == [key]


def test_a_refetch_of_part_of_a_month_wins_over_the_month_object_whatever_its_name(s3_client, bucket):
    """A forced re-fetch of October's first days (same start, narrower window) sorts before the
    month chunk it revises; the write takes its window's rows out of that object, so the re-fetch is
    what is read — a candle it no longer finds included — and a re-run changes nothing."""
    month, tenth = datetime(2024, 10, 1, tzinfo=UTC), datetime(2024, 10, 10, tzinfo=UTC)
    write(s3_client, bucket, candles(month, 24 * 31, price=100.0), month, month + timedelta(days=31))
    refetch = candles(month, 24 * 9, price=500.0)
    refetch = refetch[refetch["ts"] != pd.Timestamp("2024-10-03 07:00", tz="UTC")]   # gone at the exchange
    [part] = write(s3_client, bucket, refetch, month, tenth)
    assert part.key.endswith("part-20241001T000000Z_20241010T000000Z.parquet")
    frame = lake.read(s3_client, bucket, exchange="binance", symbol="BTC", timeframe="1h")
    early = frame[frame["ts"] < pd.Timestamp(tenth)]
    assert len(early) == 24 * 9 - 1 and early["close"].min() >= 500.0
    assert frame[frame["ts"] >= pd.Timestamp(tenth)]["close"].tolist() == list(100.0 + np.arange(24 * 9, 24 * 31))
    listing = lake.list_objects(s3_client, bucket, "ohlcv/")
    write(s3_client, bucket, refetch, month, tenth)
    assert lake.list_objects(s3_client, bucket, "ohlcv/") == listing
    # an hour re-fetched afterwards is named after the re-fetch and wins; re-running the re-fetch
    # makes it the newest again: yield_window takes the hour's row back out of that part
    hour = datetime(2024, 10, 5, 3, tzinfo=UTC)
    write(s3_client, bucket, candles(hour, 1, price=-1.0), hour, hour + timedelta(hours=1))
    assert lake.read(s3_client, bucket, start=hour, end=hour + timedelta(hours=1))["close"].tolist() == [-1.0]
    assert lake.yield_window(s3_client, bucket, part.key, month, tenth) == [
        "ohlcv/exchange=binance/symbol=BTC/timeframe=1h/month=2024-10/part-20241005T030000Z_20241005T040000Z.parquet"]
