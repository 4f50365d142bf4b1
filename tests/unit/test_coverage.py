"""The gap ledger: entries per date and window, reasons, completeness and the coverage table."""

from __future__ import annotations

import io
from datetime import UTC, datetime, timedelta

import pandas as pd

from candleflow import coverage

HOUR = 3_600_000


def ms(dt: datetime) -> int:
    return int(dt.timestamp() * 1000)


def test_gaps_are_maximal_runs_with_counts():
    start = ms(datetime(2024, 10, 20, tzinfo=UTC))
    present = [start + i * HOUR for i in range(24) if i not in (3, 4, 5, 23)]
    gaps = coverage.find_gaps(present, start, start + 24 * HOUR, HOUR, "exchange_returned_none")
    assert [(g.count, g.start[11:16], g.end[11:16]) for g in gaps] == [(3, "03:00", "06:00"), (1, "23:00", "00:00")]


def test_entries_split_by_date_and_reason():
    lo, hi = datetime(2024, 10, 20, 12, tzinfo=UTC), datetime(2024, 10, 22, 6, tzinfo=UTC)
    present = [ms(lo) + i * HOUR for i in range(42) if i < 30]  # the last 12 hours missing
    entries = coverage.build_entries(
        exchange="kraken", symbol="BTC", timeframe="1h", tf_ms=HOUR, window_start=lo, window_end=hi,
        present_ms=present, market="BTC/USD", status="complete",
        reasons=[(ms(hi) - 2 * HOUR, ms(hi), "not_closed")])
    assert [(e.date, e.expected, e.present) for e in entries] == [
        ("2024-10-20", 12, 12), ("2024-10-21", 24, 18), ("2024-10-22", 6, 0)]
    last = entries[-1]
    assert [(g.reason, g.count) for g in last.gaps] == [("exchange_returned_none", 4), ("not_closed", 2)]
    assert last.status == "partial" and entries[0].status == "complete"


def test_day_completeness_needs_the_whole_day_covered():
    day = datetime(2024, 10, 20, tzinfo=UTC)
    half = coverage.build_entries(exchange="okx", symbol="ETH", timeframe="1h", tf_ms=HOUR, window_start=day,
                                  window_end=day + timedelta(hours=12), present_ms=[ms(day) + i * HOUR for i in range(12)],
                                  market="ETH/USDT", status="complete")
    assert not coverage.day_complete(half, "2024-10-20", HOUR)
    rest = coverage.build_entries(exchange="okx", symbol="ETH", timeframe="1h", tf_ms=HOUR,
                                  window_start=day + timedelta(hours=12), window_end=day + timedelta(days=1),
                                  present_ms=[], market="ETH/USDT", status="complete")
    # the exchange answered without those candles (an outage): recorded, explained, not retried forever
    assert rest[0].status == "complete" and rest[0].gaps[0].reason == "exchange_returned_none"
    assert coverage.day_complete(half + rest, "2024-10-20", HOUR)
    quarantined = coverage.build_entries(exchange="okx", symbol="ETH", timeframe="1h", tf_ms=HOUR, window_start=day,
                                         window_end=day + timedelta(days=1), present_ms=[], market="ETH/USDT",
                                         status="quarantined")
    assert not coverage.day_complete(quarantined, "2024-10-20", HOUR)


def test_ledger_round_trips_through_s3_and_the_table_counts_overlaps_once(s3_client, bucket):
    day = datetime(2024, 10, 20, tzinfo=UTC)
    full = coverage.build_entries(exchange="binance", symbol="BTC", timeframe="1h", tf_ms=HOUR, window_start=day,
                                  window_end=day + timedelta(days=1),
                                  present_ms=[ms(day) + i * HOUR for i in range(24) if i != 10],
                                  market="BTC/USDT", status="complete")
    # a later hourly run re-fetched 10:00 and found it
    hour = coverage.build_entries(exchange="binance", symbol="BTC", timeframe="1h", tf_ms=HOUR,
                                  window_start=day + timedelta(hours=10), window_end=day + timedelta(hours=11),
                                  present_ms=[ms(day) + 10 * HOUR], market="BTC/USDT", status="complete")
    keys = coverage.write_entries(s3_client, bucket, full + hour)
    assert keys[0].endswith("date=2024-10-20/window-20241020T000000Z_20241021T000000Z.json")
    coverage.write_entries(s3_client, bucket, coverage.build_entries(
        exchange="coinbase", symbol="THETA", timeframe="1h", tf_ms=HOUR, window_start=day,
        window_end=day + timedelta(days=1), present_ms=[], market=None, status="not_listed"))
    entries = coverage.read_entries(s3_client, bucket, timeframe="1h")
    assert len(entries) == 3
    table = coverage.coverage_table(entries).set_index(["exchange", "symbol"])
    assert table.loc[("binance", "BTC"), "expected"] == 24 and table.loc[("binance", "BTC"), "present"] == 24
    assert table.loc[("coinbase", "THETA"), "gaps_not_listed"] == 24
    published = coverage.publish_report(s3_client, bucket, "1h")
    page = s3_client.get_object(Bucket=bucket, Key=published["heatmap"])["Body"].read().decode()
    assert "n/l" in page and "100.0%" in page


# -- compaction of a finished day's windows -----------------------------------------------------------
DAY = datetime(2024, 10, 20, tzinfo=UTC)
NOW = DAY + timedelta(days=1, hours=1)


def window(lo, hi, present, status="complete", reasons=None, exchange="binance", symbol="BTC"):
    return coverage.build_entries(exchange=exchange, symbol=symbol, timeframe="1h", tf_ms=HOUR, window_start=lo,
                                  window_end=hi, present_ms=[ms(t) for t in present], market=f"{symbol}/USDT",
                                  status=status, reasons=reasons)


def hourly_runs(s3, bucket, hours=24, symbol="BTC"):
    """Scheduled runs: run h fetches [h-1, h+1); its newest candle h is still open (not_closed),
    and run h+1 re-fetches it closed."""
    for h in range(hours):
        lo, hi = DAY + timedelta(hours=max(h - 1, 0)), DAY + timedelta(hours=h + 1)
        coverage.write_entries(s3, bucket, window(lo, hi, [DAY + timedelta(hours=i) for i in range(max(h - 1, 0), h)],
                                                  reasons=[(ms(hi) - HOUR, ms(hi), "not_closed")], symbol=symbol))


def test_compacting_a_day_keeps_every_candles_verdict_in_one_object_per_covered_stretch(s3_client, bucket):
    hours = [DAY + timedelta(hours=i) for i in range(24)]
    # BTC: a backfill of the whole day (10:00 missing), hourly re-fetches finding 10:00, a quarantined 15:00
    coverage.write_entries(s3_client, bucket, window(DAY, DAY + timedelta(days=1), [t for t in hours if t.hour != 10]))
    coverage.write_entries(s3_client, bucket, window(hours[10], hours[11], [hours[10]]))
    coverage.write_entries(s3_client, bucket, window(hours[15], hours[16], [], status="quarantined"))
    # ETH: two stretches of hourly runs with a hole between them
    for h in list(range(0, 6)) + list(range(12, 18)):
        coverage.write_entries(s3_client, bucket, window(hours[h], hours[h] + timedelta(hours=1), [hours[h]],
                                                         symbol="ETH"))
    before = coverage.read_entries(s3_client, bucket)
    results = coverage.compact_day(s3_client, bucket, "2024-10-20", now=NOW)
    assert sorted((r["prefix"].split("/")[2], r["merged"], len(r["written"])) for r in results) == [
        ("symbol=BTC", 3, 1), ("symbol=ETH", 12, 2)]
    after = coverage.read_entries(s3_client, bucket)
    assert all(e.compacted for e in after) and len(after) == 3
    for symbol in ("BTC", "ETH"):
        old, new = ([e for e in entries if e.symbol == symbol] for entries in (before, after))
        assert coverage.day_counts(new) == coverage.day_counts(old)
        assert coverage.day_complete(new, "2024-10-20", HOUR) == coverage.day_complete(old, "2024-10-20", HOUR)
    btc = coverage.day_counts([e for e in after if e.symbol == "BTC"])
    assert (btc["present"], btc["gaps_quarantined"], btc["gaps_exchange_returned_none"]) == (23, 1, 0)
    assert [(e.window_start[11:16], e.window_end[11:16], e.expected) for e in after if e.symbol == "ETH"] == [
        ("00:00", "06:00", 6), ("12:00", "18:00", 6)]
    table_before, table_after = coverage.coverage_table(before), coverage.coverage_table(after)
    assert table_after.equals(table_before)

    # compacting twice is compacting once; a window written later still decides its candles
    listing = sorted(coverage.read_entries(s3_client, bucket), key=coverage.precedence)
    assert [r["status"] for r in coverage.compact_day(s3_client, bucket, "2024-10-20", now=NOW)] == ["single"] * 2
    assert sorted(coverage.read_entries(s3_client, bucket), key=coverage.precedence) == listing
    coverage.write_entries(s3_client, bucket, window(hours[15], hours[16], [hours[15]]))
    late = coverage.day_counts([e for e in coverage.read_entries(s3_client, bucket) if e.symbol == "BTC"])
    assert (late["present"], late["gaps_quarantined"]) == (24, 0)
    [again] = coverage.compact_day(s3_client, bucket, "2024-10-20", now=NOW, symbol="BTC")
    assert again["merged"] == 2 and again["kept"] == []
    assert coverage.day_counts(coverage.read_entries(s3_client, bucket, symbol="BTC")) == late


def test_no_reader_sees_a_revised_verdict_revert_while_windows_are_deleted(s3_client, bucket, moto_server):
    """Run h+1 re-fetches the candle run h saw still open: deleting run h+1's window before run h's
    would show that candle as not closed again. A reader checks the day after every delete, while
    the lowest window's delete is slow."""
    import time

    import boto3

    hourly_runs(s3_client, bucket)
    expected = coverage.day_counts(coverage.read_entries(s3_client, bucket))
    assert (expected["present"], expected["gaps_not_closed"]) == (23, 1)
    compactor = boto3.client("s3", endpoint_url=moto_server, region_name="us-east-1",
                             aws_access_key_id="testing", aws_secret_access_key="testing")
    lowest = "coverage/exchange=binance/symbol=BTC/timeframe=1h/date=2024-10-20/window-20241020T000000Z_20241020T010000Z.json"
    seen = []

    def slow_lowest(params, **_):
        if params["Key"] == lowest:
            time.sleep(0.5)

    def check(**_):
        seen.append(coverage.day_counts(coverage.read_entries(s3_client, bucket)))

    compactor.meta.events.register("before-parameter-build.s3.DeleteObject", slow_lowest)
    compactor.meta.events.register("after-call.s3.DeleteObject", check)
    [result] = coverage.compact_day(compactor, bucket, "2024-10-20", now=NOW)
    assert result["merged"] == 24 and len(result["deleted"]) == 24 and len(seen) == 24
    assert all(counts == expected for counts in seen)


def test_the_report_rebuilds_only_the_months_that_changed_and_equals_a_full_rebuild(s3_client, bucket):
    sep, octo = datetime(2024, 9, 29, tzinfo=UTC), datetime(2024, 10, 2, tzinfo=UTC)
    for lo, symbol in ((sep, "BTC"), (octo, "BTC"), (octo, "ETH")):
        coverage.write_entries(s3_client, bucket, window(lo, lo + timedelta(days=1),
                                                         [lo + timedelta(hours=i) for i in range(24) if i != 3],
                                                         symbol=symbol))
    full = coverage.publish_report(s3_client, bucket, "1h")
    assert full["pairs"] == 2 and full["months_rebuilt"] == 2
    september = coverage.month_table_key("1h", "2024-09")
    etag = s3_client.head_object(Bucket=bucket, Key=september)["ETag"]
    # a later run re-fetched October 2nd 03:00: only October is rebuilt, September's table is reused
    hour = octo + timedelta(hours=3)
    coverage.write_entries(s3_client, bucket, window(hour, hour + timedelta(hours=1), [hour]))
    listed = []

    def count(params, **_):
        listed.append((params["Prefix"], params.get("StartAfter")))

    s3_client.meta.events.register("before-parameter-build.s3.ListObjectsV2", count)
    try:
        coverage.publish_report(s3_client, bucket, "1h", months=["2024-10"])
    finally:
        s3_client.meta.events.unregister("before-parameter-build.s3.ListObjectsV2", count)
    assert s3_client.head_object(Bucket=bucket, Key=september)["ETag"] == etag
    # each pair's ledger is listed from October on (the key's date), not from its first day
    ledger = [(prefix, after) for prefix, after in listed if prefix.startswith("coverage/") and "/timeframe=" in prefix]
    assert ledger and all(after == f"{prefix}date=2024-10-01" for prefix, after in ledger)
    got = pd.read_parquet(io.BytesIO(s3_client.get_object(
        Bucket=bucket, Key="reports/coverage/timeframe=1h/coverage.parquet")["Body"].read()))
    expected = coverage.coverage_table(coverage.read_entries(s3_client, bucket, timeframe="1h"))
    pd.testing.assert_frame_equal(got.reset_index(drop=True), expected.reset_index(drop=True), check_dtype=False)
    assert got.set_index("symbol").loc["BTC", "present"] == 47
    # a timeframe nothing was ingested in gets no report
    assert coverage.publish_report(s3_client, bucket, "5m", months=["2024-10"])["table"] is None
    assert s3_client.list_objects_v2(Bucket=bucket, Prefix="reports/coverage/timeframe=5m/")["KeyCount"] == 0


def test_the_first_report_without_month_tables_covers_the_whole_ledger(s3_client, bucket):
    """A lake whose report predates the month tables: the first daily compaction after the upgrade
    names one month; rebuilding only it shrank the report to that month."""
    for day in (datetime(2024, 9, 10, tzinfo=UTC), datetime(2024, 10, 2, tzinfo=UTC), datetime(2024, 11, 2, tzinfo=UTC)):
        coverage.write_entries(s3_client, bucket, window(day, day + timedelta(days=1),
                                                         [day + timedelta(hours=i) for i in range(24)]))
    coverage.publish_report(s3_client, bucket, "1h")
    for key in [o["Key"] for o in s3_client.list_objects_v2(Bucket=bucket, Prefix="reports/coverage/timeframe=1h/days/")["Contents"]]:
        s3_client.delete_object(Bucket=bucket, Key=key)   # the report as the previous release left it
    published = coverage.publish_report(s3_client, bucket, "1h", months=["2024-11"])
    assert published["months_rebuilt"] == 3
    got = pd.read_parquet(io.BytesIO(s3_client.get_object(Bucket=bucket, Key=published["table"])["Body"].read()))
    assert (got.loc[0, "first_date"], got.loc[0, "last_date"], got.loc[0, "expected"]) == ("2024-09-10", "2024-11-02", 72)


def test_a_reader_listing_before_a_compaction_and_reading_after_it_misses_nothing(s3_client, bucket, moto_server):
    """read_entries lists, then GETs: lake_compaction may merge the day in between, deleting the
    listed windows. The day is listed again (the merged entry was written before the deletes)."""
    import boto3

    hourly_runs(s3_client, bucket)
    expected = coverage.day_counts(coverage.read_entries(s3_client, bucket))
    compactor = boto3.client("s3", endpoint_url=moto_server, region_name="us-east-1",
                             aws_access_key_id="testing", aws_secret_access_key="testing")
    compacted = []

    def compact_once(**_):
        if not compacted:
            compacted.extend(coverage.compact_day(compactor, bucket, "2024-10-20", now=NOW))

    s3_client.meta.events.register("before-call.s3.GetObject", compact_once)
    try:
        entries = coverage.read_entries(s3_client, bucket)
    finally:
        s3_client.meta.events.unregister("before-call.s3.GetObject", compact_once)
    assert compacted and compacted[0]["merged"] == 24
    assert [e.compacted for e in entries] == [True]
    assert coverage.day_counts(entries) == expected
