"""candleflow.ingest.ingest_exchange against the real emulator and the moto S3 server."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from candleflow import coverage, lake
from candleflow.config import CollectConfig, LakeConfig
from candleflow.emulator import EmulatorServer
from candleflow.ingest import chunk_window, ingest_exchange

pytestmark = pytest.mark.usefixtures("no_faults")  # conftest: each test starts and ends without faults

FAST = CollectConfig(max_attempts=4, backoff_seconds=0.05, enable_rate_limit=False, chunk_days=3)
START, END = datetime(2024, 10, 20, tzinfo=UTC), datetime(2024, 10, 27, tzinfo=UTC)


def run(emulator, s3, bucket, exchange="binance", symbols=("BTC", "ETH"), **kw):
    return ingest_exchange(s3, LakeConfig(bucket=bucket, aws_conn_id="unused"), exchange=exchange,
                           symbols=list(symbols), timeframe="1h", start=kw.pop("start", START), end=kw.pop("end", END),
                           quotes=["USDT", "USD"], page_size=kw.pop("page_size", 100), mode="emulator",
                           emulator_url=emulator.url, collect_cfg=kw.pop("cfg", FAST), **kw)


def test_chunks_are_whole_days():
    chunks = chunk_window(datetime(2024, 10, 20, 6, tzinfo=UTC), datetime(2024, 10, 27, tzinfo=UTC), 3)
    assert [(a.day, a.hour, b.day) for a, b in chunks] == [(20, 6, 23), (23, 0, 26), (26, 0, 27)]


def test_every_symbol_lands_per_chunk_with_a_ledger(emulator, s3_client, bucket):
    report = run(emulator, s3_client, bucket, symbols=("BTC", "ETH", "THETA"), exchange="coinbase")
    statuses = {(c.symbol, c.status) for c in report.chunks}
    assert statuses == {("BTC", "published"), ("ETH", "published"), ("THETA", "skipped")}
    assert report.rows == 2 * 7 * 24
    frame = lake.read(s3_client, bucket, exchange="coinbase", timeframe="1h")
    assert frame.groupby("symbol").size().to_dict() == {"BTC": 168, "ETH": 168}
    ledger = coverage.read_entries(s3_client, bucket, exchange="coinbase", timeframe="1h")
    assert {e.symbol for e in ledger if e.status == "not_listed"} == {"THETA"}
    assert all(e.present == e.expected == 24 for e in ledger if e.symbol == "BTC")


def test_a_resumed_backfill_fetches_only_incomplete_chunks(emulator, s3_client, bucket):
    # every ETH batch is a bad print: quarantined, while BTC lands
    emulator.faults.set([{"exchange": "binance", "symbol": "ETH", "kind": "ohlc_inconsistent"}])
    first = run(emulator, s3_client, bucket)
    assert {c.status for c in first.chunks if c.symbol == "ETH"} == {"quarantined"}
    emulator.faults.set([])
    before = emulator.stats.copy()
    second = run(emulator, s3_client, bucket)
    klines = sum(v for k, v in emulator.stats.items() if isinstance(v, int) and k.endswith("klines")) - \
        sum(v for k, v in before.items() if isinstance(v, int) and k.endswith("klines"))
    assert {c.status for c in second.chunks if c.symbol == "BTC"} == {"complete"}
    assert {c.status for c in second.chunks if c.symbol == "ETH"} == {"published"}
    assert klines == sum(c.requests > 0 for c in second.chunks if c.symbol == "ETH") * 1  # one page per chunk
    forced = run(emulator, s3_client, bucket, force=True)
    assert {c.status for c in forced.chunks} == {"published"}


def test_scheduled_runs_write_each_interval_under_its_own_key(emulator, s3_client, bucket):
    hour = datetime(2024, 10, 29, 22, tzinfo=UTC)
    report = run(emulator, s3_client, bucket, symbols=("SOL",), start=hour - timedelta(hours=1),
                 end=hour + timedelta(hours=1), chunk=timedelta(hours=1))
    assert [c.start[11:16] for c in report.chunks] == ["21:00", "22:00"]
    # (each batch's quality result is kept as JSON beside its data: only the parquet parts here)
    keys = sorted(k for k in lake.list_objects(s3_client, bucket, "ohlcv/exchange=binance/symbol=SOL/")
                  if k.endswith(".parquet"))
    assert [k.rsplit("/", 1)[1] for k in keys] == ["part-20241029T210000Z_20241029T220000Z.parquet",
                                                   "part-20241029T220000Z_20241029T230000Z.parquet"]


@pytest.mark.parametrize("exchange", ["binance", "coinbase", "bybit", "okx"])
def test_a_backfill_from_before_the_listing_starts_at_the_first_candle(emulator, s3_client, bucket, exchange):
    from candleflow import listing

    listed = datetime(2021, 6, 23, tzinfo=UTC) if exchange == "coinbase" else datetime(2020, 8, 11, tzinfo=UTC)
    start, end = datetime(2019, 1, 1, tzinfo=UTC), listed + timedelta(days=2)
    before = sum(v for v in emulator.stats.values() if isinstance(v, int))
    report = run(emulator, s3_client, bucket, exchange=exchange, symbols=("SOL",), start=start, end=end,
                 page_size=300, cfg=CollectConfig(backoff_seconds=0.01, enable_rate_limit=False, chunk_days=400))
    requests = sum(v for v in emulator.stats.values() if isinstance(v, int)) - before
    assert report.rows == 48
    assert requests < 45, requests  # markets, time, a binary search, two days of pages: no empty years
    first = listing.read_cached(s3_client, bucket, exchange, "SOL", "1h")
    assert first == int(listed.timestamp() * 1000)
    ledger = coverage.read_entries(s3_client, bucket, exchange=exchange, symbol="SOL", timeframe="1h")
    early = [e for e in ledger if e.date == "2019-06-01"]
    assert early and early[0].gaps[0].reason == "not_listed" and early[0].status == "complete"


def test_binance_whole_past_months_come_from_the_checksummed_archive(emulator, s3_client, bucket):
    start, end = datetime(2024, 7, 20, tzinfo=UTC), datetime(2024, 10, 3, tzinfo=UTC)
    emulator.faults.set([{"exchange": "binance", "kind": "archive_corrupt", "interval": "1h", "period": "2024-09"}])
    before = dict(emulator.stats)
    report = run(emulator, s3_client, bucket, symbols=("BTC",), start=start, end=end, page_size=1000,
                 cfg=CollectConfig(backoff_seconds=0.01, enable_rate_limit=False, chunk_days=31))
    klines = sum(v for k, v in emulator.stats.items() if isinstance(v, int) and k.endswith("klines")) - \
        sum(v for k, v in before.items() if isinstance(v, int) and k.endswith("klines"))
    assert report.rows == (end - start).days * 24
    # one for the listing date; July (partial), September (corrupt archive) and October (partial)
    # by REST; August from the archive
    assert klines == 1 + 3
    frame = lake.read(s3_client, bucket, exchange="binance", symbol="BTC", timeframe="1h")
    assert len(frame) == report.rows and frame["ts"].is_unique


def test_kraken_history_fetched_earlier_survives_its_rolling_window(s3_client, bucket):
    # kraken serves its 720 most recent candles: an hour later, the oldest 5m candles of the first
    # fetch are no longer served. A re-run must not delete them from the lake.
    start, end = datetime(2024, 10, 27, 12, tzinfo=UTC), datetime(2024, 10, 28, tzinfo=UTC)
    lake_cfg = LakeConfig(bucket=bucket, aws_conn_id="unused")
    counts = []
    for clock in ("2024-10-30T02:00:00Z", "2024-10-30T03:00:00Z"):
        with EmulatorServer(clock=clock, enforce_limits=False) as server:
            report = ingest_exchange(s3_client, lake_cfg, exchange="kraken", symbols=["BTC"], timeframe="5m",
                                     start=start, end=end, quotes=["USD"], page_size=720, mode="emulator",
                                     emulator_url=server.url, collect_cfg=FAST, force=True)
        assert report.chunks[0].status == "published"
        counts.append(len(lake.read(s3_client, bucket, exchange="kraken", symbol="BTC", timeframe="5m")))
    assert counts[0] < 144 and counts[1] == counts[0]  # the second run served 12 fewer old candles
