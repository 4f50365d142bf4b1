"""Daily compaction (candleflow.compaction) against the moto server: merged = what readers saw,
no moment with a missing or doubled candle, late writes win, idempotent, safe against a writer
racing it."""

from __future__ import annotations

import io
import re
import threading
from datetime import UTC, datetime, timedelta

import boto3
import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from candleflow import compaction, lake

DAY = datetime(2024, 10, 20, tzinfo=UTC)
PREFIX = "ohlcv/exchange=binance/symbol=BTC/timeframe={tf}/month=2024-10/"
NOW = datetime(2024, 10, 21, 1, tzinfo=UTC)


def candles(start: datetime, n: int, freq: str = "1h", price: float = 100.0) -> pd.DataFrame:
    ts = pd.date_range(start, periods=n, freq=freq).astype("datetime64[ms, UTC]")
    close = price + np.arange(n, dtype="float64")
    return pd.DataFrame({"ts": ts, "open": close - 0.5, "high": close + 1, "low": close - 1, "close": close,
                         "volume": np.full(n, 3.0)})


def write(s3, bucket, frame, start, end, timeframe="1h", symbol="BTC", exchange="binance"):
    return lake.write_batch(s3, bucket, frame, exchange=exchange, symbol=symbol, timeframe=timeframe,
                            market=f"{symbol}/USDT", window_start=start, window_end=end)


def hourly_day(s3, bucket, symbol="BTC", exchange="binance", price=100.0):
    """24 hourly runs, each writing its hour and (overlap) the hour before with a revised close."""
    for h in range(24):
        lo = DAY + timedelta(hours=h)
        write(s3, bucket, candles(lo, 1, price=price + h), lo, lo + timedelta(hours=1), symbol=symbol, exchange=exchange)
    # a late revision of 05:00 arrives in the 06:00 run's overlap: same key, newer bytes
    lo = DAY + timedelta(hours=5)
    write(s3, bucket, candles(lo, 1, price=555.0), lo, lo + timedelta(hours=1), symbol=symbol, exchange=exchange)


def read_day(s3, bucket, tf="1h"):
    return lake.read(s3, bucket, exchange="binance", symbol="BTC", timeframe=tf, start=DAY, end=DAY + timedelta(days=1))


def test_compaction_merges_a_day_into_one_object_holding_exactly_what_readers_saw(s3_client, bucket):
    # a backfill's daily part, then the hourly runs overlapping it: the newer hourly fetches win,
    # 00:00 included (its part sorts before the daily one, which the 00:00 write therefore yields)
    write(s3_client, bucket, candles(DAY, 24, price=900.0), DAY, DAY + timedelta(days=1))
    hourly_day(s3_client, bucket)
    before = read_day(s3_client, bucket)
    assert before["close"].iloc[0] == 100.0 and not (before["close"] >= 900.0).any()
    assert len(lake.list_objects(s3_client, bucket, PREFIX.format(tf="1h"))) == 25
    [result] = compaction.compact_day(s3_client, bucket, "ohlcv", "2024-10-20", now=NOW, exchange="binance")
    assert result.status == "compacted" and result.merged == 25 and result.rows == 24 and result.kept == []
    listing = lake.list_objects(s3_client, bucket, PREFIX.format(tf="1h"))
    assert list(listing) == [PREFIX.format(tf="1h") + "compacted-20241020T000000Z_20241021T000000Z.parquet"]
    after = read_day(s3_client, bucket)
    pd.testing.assert_frame_equal(after, before)
    assert after.loc[after.ts == pd.Timestamp(DAY + timedelta(hours=5)), "close"].item() == 555.0
    body = s3_client.get_object(Bucket=bucket, Key=result.key)["Body"].read()
    table = pq.read_table(io.BytesIO(body))
    assert table.schema.equals(lake.OHLCV_SCHEMA, check_metadata=False)
    assert pq.ParquetFile(io.BytesIO(body)).metadata.row_group(0).column(1).compression == "ZSTD"

    # compacting twice is compacting once: nothing read, nothing written
    [again] = compaction.compact_day(s3_client, bucket, "ohlcv", "2024-10-20", now=NOW, exchange="binance")
    assert again.status == "single" and lake.list_objects(s3_client, bucket, PREFIX.format(tf="1h")) == listing


def test_a_late_write_after_compaction_wins_and_is_merged_next_time(s3_client, bucket):
    hourly_day(s3_client, bucket)
    compaction.compact_day(s3_client, bucket, "ohlcv", "2024-10-20", now=NOW)
    # the 00:00 run of the next day re-fetches 23:00 (overlap) and gets a corrected candle
    lo = DAY + timedelta(hours=23)
    write(s3_client, bucket, candles(lo, 1, price=-1.0), lo, lo + timedelta(hours=1))
    # hour 00:00, the part named lowest of the day, must win as well
    write(s3_client, bucket, candles(DAY, 1, price=-2.0), DAY, DAY + timedelta(hours=1))
    seen = read_day(s3_client, bucket)
    assert len(seen) == 24
    assert seen["close"].iloc[23] == -1.0 and seen["close"].iloc[0] == -2.0
    [result] = compaction.compact_day(s3_client, bucket, "ohlcv", "2024-10-20", now=NOW)
    assert result.status == "compacted" and result.merged == 3
    assert list(lake.list_objects(s3_client, bucket, PREFIX.format(tf="1h"))) == [result.key]
    pd.testing.assert_frame_equal(read_day(s3_client, bucket), seen)


def test_compacted_bytes_depend_only_on_the_rows(s3_client, bucket):
    """Two lakes that reached the same day through different parts compact to the same bytes."""
    hourly_day(s3_client, bucket)
    other = f"{bucket}-b"
    s3_client.create_bucket(Bucket=other)
    expected = read_day(s3_client, bucket)
    # the same final rows, written as two half-day parts
    write(s3_client, other, expected.iloc[:12][["ts", "open", "high", "low", "close", "volume"]], DAY,
          DAY + timedelta(hours=12))
    write(s3_client, other, expected.iloc[12:][["ts", "open", "high", "low", "close", "volume"]],
          DAY + timedelta(hours=12), DAY + timedelta(days=1))
    [a] = compaction.compact_day(s3_client, bucket, "ohlcv", "2024-10-20", now=NOW)
    [b] = compaction.compact_day(s3_client, other, "ohlcv", "2024-10-20", now=NOW)
    assert lake.list_objects(s3_client, bucket, "ohlcv/") == lake.list_objects(s3_client, other, "ohlcv/")
    assert a.bytes == b.bytes


def test_readers_never_see_a_missing_or_doubled_candle_while_compaction_runs(s3_client, bucket, moto_server):
    # a day of 1m candles in 24 hourly parts: every read lists and GETs while parts disappear
    for h in range(24):
        lo = DAY + timedelta(hours=h)
        write(s3_client, bucket, candles(lo, 60, freq="1min", price=1000.0 + h), lo, lo + timedelta(hours=1),
              timeframe="1m")
    expected = read_day(s3_client, bucket, tf="1m")
    assert len(expected) == 1440
    reader = boto3.client("s3", endpoint_url=moto_server, region_name="us-east-1",
                          aws_access_key_id="testing", aws_secret_access_key="testing")
    done, reads, wrong = threading.Event(), [], []

    def keep_reading():
        while not done.is_set():
            seen = read_day(reader, bucket, tf="1m")
            reads.append(len(seen))
            if not seen.equals(expected):
                wrong.append(seen)

    thread = threading.Thread(target=keep_reading)
    thread.start()
    try:
        [result] = compaction.compact_day(s3_client, bucket, "ohlcv", "2024-10-20", now=NOW, exchange="binance",
                                          timeframe="1m")
    finally:
        done.set()
        thread.join()
    assert result.status == "compacted" and len(result.deleted) == 24
    assert len(reads) >= 2 and wrong == []
    pd.testing.assert_frame_equal(read_day(s3_client, bucket, tf="1m"), expected)


def test_a_part_rewritten_while_compacting_is_kept_and_still_wins(s3_client, bucket, moto_server):
    hourly_day(s3_client, bucket)
    compactor = boto3.client("s3", endpoint_url=moto_server, region_name="us-east-1",
                             aws_access_key_id="testing", aws_secret_access_key="testing")
    late = DAY + timedelta(hours=7)
    rewritten = []

    def writer_strikes(params, **_):
        # a real concurrent writer, at the worst moment: after the merge was written, before the
        # first delete (the merged object holds the old 07:00)
        if not rewritten:
            rewritten.append(write(s3_client, bucket, candles(late, 1, price=777.0), late, late + timedelta(hours=1)))

    compactor.meta.events.register("before-call.s3.DeleteObject", writer_strikes)
    [result] = compaction.compact_day(compactor, bucket, "ohlcv", "2024-10-20", now=NOW)
    assert result.kept == [rewritten[0][0].key] and len(result.deleted) == 23
    seen = read_day(s3_client, bucket)
    assert len(seen) == 24 and seen.loc[seen.ts == pd.Timestamp(late), "close"].item() == 777.0
    [again] = compaction.compact_day(s3_client, bucket, "ohlcv", "2024-10-20", now=NOW)
    assert again.merged == 2 and again.kept == []
    pd.testing.assert_frame_equal(read_day(s3_client, bucket), seen)


def test_only_the_asked_partitions_and_finished_days_are_compacted(s3_client, bucket):
    hourly_day(s3_client, bucket)
    hourly_day(s3_client, bucket, symbol="ETH")
    hourly_day(s3_client, bucket, exchange="okx")
    nxt = DAY + timedelta(days=1)
    write(s3_client, bucket, candles(nxt, 2), nxt, nxt + timedelta(hours=2))
    untouched = {k: v for k, v in lake.list_objects(s3_client, bucket, "ohlcv/").items() if "exchange=okx" in k}
    with pytest.raises(ValueError, match=re.escape("date 2024-10-21: the UTC day is not finished")):
        compaction.compact_day(s3_client, bucket, "ohlcv", "2024-10-21", now=NOW)
    with pytest.raises(ValueError, match=re.escape("date '20241020': expected YYYY-MM-DD")):
        compaction.compact_day(s3_client, bucket, "ohlcv", "20241020", now=NOW)
    results = compaction.compact_day(s3_client, bucket, "ohlcv", "2024-10-20", now=NOW, exchange="binance")
    assert sorted(r.prefix for r in results) == [PREFIX.format(tf="1h"), PREFIX.format(tf="1h").replace("BTC", "ETH")]
    listing = lake.list_objects(s3_client, bucket, "ohlcv/")
    assert {k: v for k, v in listing.items() if "exchange=okx" in k} == untouched
    # the unfinished day's part shares BTC's month partition: it waits, untouched, for its own day
    assert [r.waiting for r in sorted(results, key=lambda r: r.prefix)] == [1, 0]
    assert sum("/part-20241021T000000Z_20241021T020000Z.parquet" in k for k in listing) == 1


def test_any_date_partitioned_table_compacts_and_a_misnamed_part_is_refused(s3_client, bucket):
    spec = lake.TableSpec("quality_test", pa.schema([pa.field("ts", pa.timestamp("ms", tz="UTC"), nullable=False),
                                                     pa.field("passed", pa.bool_())]),
                          ("exchange", "date"), ("ts",))
    part = {"exchange": "okx", "date": "2024-10-20"}
    frame = pd.DataFrame({"ts": pd.date_range(DAY, periods=4, freq="6h"), "passed": [True, False, True, True]})
    lake.write_partition(s3_client, bucket, spec, frame.iloc[:2], partition=part, object_name="part-00000.parquet")
    lake.write_partition(s3_client, bucket, spec, frame.iloc[1:].assign(passed=True), partition=part,
                         object_name="part-00001.parquet")
    result = compaction.compact_partition(s3_client, bucket, spec, part)
    assert result.status == "compacted" and result.rows == 4
    assert lake.read(s3_client, bucket, spec)["passed"].tolist() == [True, True, True, True]
    lake.write_partition(s3_client, bucket, spec, frame, partition=part, object_name="a-first.parquet")
    with pytest.raises(ValueError, match=re.escape("object(s) ['a-first.parquet'] sort before compacted-")):
        compaction.compact_partition(s3_client, bucket, spec, part)
    timeless = lake.TableSpec("timeless_test", spec.schema, ("exchange",), ("ts",))
    with pytest.raises(ValueError, match="not by date or month"):
        compaction.partitions_on(s3_client, bucket, timeless, "2024-10-20")


def test_compact_day_lists_each_partition_once(s3_client, bucket):
    hourly_day(s3_client, bucket)
    hourly_day(s3_client, bucket, symbol="ETH")
    listed = []

    def count(params, **_):
        listed.append(params["Prefix"])

    s3_client.meta.events.register("before-parameter-build.s3.ListObjectsV2", count)
    try:
        results = compaction.compact_day(s3_client, bucket, "ohlcv", "2024-10-20", now=NOW, exchange="binance")
    finally:
        s3_client.meta.events.unregister("before-parameter-build.s3.ListObjectsV2", count)
    assert [r.status for r in results] == ["compacted", "compacted"]
    day_listings = sorted(p for p in listed if "month=" in p)
    assert day_listings == [PREFIX.format(tf="1h"), PREFIX.format(tf="1h").replace("BTC", "ETH")]


def test_a_month_partition_takes_each_finished_day_into_one_growing_object(s3_client, bucket):
    """Day after day the month's compacted object absorbs the finished day's parts; parts of a day
    not finished (or a window reaching past the day) wait, and keep outranking the merge."""
    nxt = DAY + timedelta(days=1)
    hourly_day(s3_client, bucket)
    for h in range(3):   # the next day's first hours
        lo = nxt + timedelta(hours=h)
        write(s3_client, bucket, candles(lo, 1, price=300.0 + h), lo, lo + timedelta(hours=1))
    [first] = compaction.compact_day(s3_client, bucket, "ohlcv", "2024-10-20", now=NOW + timedelta(days=2))
    assert (first.status, first.merged, first.waiting, first.rows) == ("compacted", 24, 3, 24)
    assert first.key.endswith("compacted-20241020T000000Z_20241021T000000Z.parquet")
    # a backfill part reaching into the 23rd: it waits for that day, and so does every part after it
    late = nxt + timedelta(hours=20)
    write(s3_client, bucket, candles(late, 10, price=-5.0), late, late + timedelta(hours=10))
    for h in range(3, 24):
        lo = nxt + timedelta(hours=h)
        write(s3_client, bucket, candles(lo, 1, price=300.0 + h), lo, lo + timedelta(hours=1))
    seen = lake.read(s3_client, bucket, exchange="binance", timeframe="1h")
    [second] = compaction.compact_day(s3_client, bucket, "ohlcv", "2024-10-21", now=NOW + timedelta(days=2))
    # the old compacted object and hours 00:00-20:00 (the hourly 20:00 sorts before the longer window
    # of the same start); the window to 06:00 on the 22nd stops the merge, hours 21-23 wait behind it
    assert (second.status, second.merged, second.waiting) == ("compacted", 22, 4)
    assert second.key.endswith("compacted-20241020T000000Z_20241021T210000Z.parquet")
    assert first.key in second.deleted
    pd.testing.assert_frame_equal(lake.read(s3_client, bucket, exchange="binance", timeframe="1h"), seen)
    [third] = compaction.compact_day(s3_client, bucket, "ohlcv", "2024-10-22", now=NOW + timedelta(days=2))
    assert (third.status, third.merged, third.waiting) == ("compacted", 5, 0)
    assert list(lake.list_objects(s3_client, bucket, PREFIX.format(tf="1h"))) == [third.key]
    assert third.key.endswith("compacted-20241020T000000Z_20241022T060000Z.parquet")
    pd.testing.assert_frame_equal(lake.read(s3_client, bucket, exchange="binance", timeframe="1h"), seen)
    [again] = compaction.compact_day(s3_client, bucket, "ohlcv", "2024-10-22", now=NOW + timedelta(days=2))
    assert again.status == "single"


def test_no_reader_sees_a_revised_candle_revert_while_parts_are_deleted(s3_client, bucket, moto_server):
    """Each hourly run re-fetches the hour before (a revised close). Deleting the part holding the
    revision while the part holding the first print is still there would show the first print: a
    reader checks the day after every delete, while the lowest part's delete is slow."""
    for h in range(24):
        lo = DAY + timedelta(hours=max(h - 1, 0))
        frame = candles(lo, 2 if h else 1, price=1000.0 + 10 * h)
        if h:
            frame.loc[0, ["open", "high", "low", "close"]] += 0.25   # the revision of the hour before
        write(s3_client, bucket, frame, lo, DAY + timedelta(hours=h + 1))
    expected = read_day(s3_client, bucket)
    assert len(expected) == 24 and expected["close"].iloc[0] == 1010.25
    reader = boto3.client("s3", endpoint_url=moto_server, region_name="us-east-1",
                          aws_access_key_id="testing", aws_secret_access_key="testing")
    compactor = boto3.client("s3", endpoint_url=moto_server, region_name="us-east-1",
                             aws_access_key_id="testing", aws_secret_access_key="testing")
    lowest = PREFIX.format(tf="1h") + "part-20241020T000000Z_20241020T010000Z.parquet"
    wrong = []

    def slow_lowest(params, **_):
        if params["Key"] == lowest:
            import time

            time.sleep(0.5)

    def check(**_):
        seen = read_day(reader, bucket)
        if not seen.equals(expected):
            wrong.append(seen.loc[seen["close"] != expected["close"], ["ts", "close"]])

    compactor.meta.events.register("before-parameter-build.s3.DeleteObject", slow_lowest)
    compactor.meta.events.register("after-call.s3.DeleteObject", check)
    [result] = compaction.compact_day(compactor, bucket, "ohlcv", "2024-10-20", now=NOW)
    assert result.status == "compacted" and len(result.deleted) == 24
    assert wrong == []
    pd.testing.assert_frame_equal(read_day(s3_client, bucket), expected)


def test_a_losing_row_is_found_even_when_the_winning_row_holds_a_null():
    ts = pa.array(pd.to_datetime(["2024-10-20 05:00"], utc=True).astype("datetime64[ms, UTC]"))
    older = pa.table({"ts": ts, "volume": pa.array([3.0])})
    newer = pa.table({"ts": ts, "volume": pa.array([None], type=pa.float64())})
    spec = lake.TableSpec("t", older.schema, ("exchange", "date"), ("ts",))
    assert compaction._losers(spec, [older, newer]) == {0}
    assert compaction._losers(spec, [newer, older]) == {0}
    assert compaction._losers(spec, [older, older]) == set()
