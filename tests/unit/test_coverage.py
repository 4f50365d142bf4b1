"""The gap ledger: entries per date and window, reasons, completeness and the coverage table."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

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
