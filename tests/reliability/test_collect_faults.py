"""Faults injected for real by the emulator; the outcome in the lake is what is asserted.

Transient faults (throttling, 5xx, timeouts, broken 200 bodies, short pages) are retried and the
lake ends with every candle exactly once; a real outage is recorded in the gap ledger as a gap
with its reason, after a bounded number of requests.
"""

from __future__ import annotations

from datetime import UTC, datetime

import pandas as pd
import pytest

from candleflow import coverage, lake
from candleflow.config import CollectConfig, LakeConfig
from candleflow.ingest import ingest_exchange

pytestmark = [pytest.mark.reliability, pytest.mark.usefixtures("no_faults")]

EXCHANGES = ["binance", "coinbase", "bybit", "okx", "kraken"]
START, END = datetime(2024, 10, 25, tzinfo=UTC), datetime(2024, 10, 28, tzinfo=UTC)
DUE = 72
CFG = CollectConfig(max_attempts=4, backoff_seconds=0.05, timeout_ms=2000, enable_rate_limit=False,
                    empty_page_retries=2, chunk_days=31)


def ingest(emulator, s3, bucket, exchange, symbol="BTC", page_size=24):
    # 24 candles per page: a 3-day window is several pages, so faults land mid-window
    return ingest_exchange(s3, LakeConfig(bucket=bucket, aws_conn_id="unused"), exchange=exchange,
                           symbols=[symbol], timeframe="1h", start=START, end=END,
                           quotes=["USD", "USDT"] if exchange in ("coinbase", "kraken") else ["USDT", "USD"],
                           page_size=page_size, mode="emulator", emulator_url=emulator.url, collect_cfg=CFG)


TRANSIENT = [
    {"kind": "http_error", "status": 429, "retry_after": 0, "count": 2},
    {"kind": "http_error", "status": 418, "retry_after": 0, "count": 1},
    {"kind": "http_error", "status": 500, "count": 2},
    {"kind": "http_error", "status": 502, "count": 1},
    {"kind": "http_error", "status": 503, "count": 1},
    {"kind": "http_error", "status": 504, "count": 1},
    {"kind": "timeout", "seconds": 3, "count": 1},
    {"kind": "malformed_json", "count": 1},
    {"kind": "html_200", "count": 1},
    {"kind": "empty_body", "count": 1},
    {"kind": "empty_page", "count": 1},
    {"kind": "short_page", "count": 2},
    {"kind": "out_of_order"},
    {"kind": "duplicate"},
]


@pytest.mark.parametrize("exchange", ["binance", "coinbase", "bybit", "okx"])
@pytest.mark.parametrize("fault", TRANSIENT, ids=lambda f: f"{f['kind']}-{f.get('status', '')}")
def test_transient_faults_leave_every_candle_exactly_once(emulator, s3_client, bucket, exchange, fault):
    emulator.faults.set([{**fault, "exchange": exchange}])
    report = ingest(emulator, s3_client, bucket, exchange)
    assert [c.status for c in report.chunks] == ["published"], report.chunks
    frame = lake.read(s3_client, bucket, exchange=exchange, symbol="BTC", timeframe="1h")
    assert len(frame) == DUE and frame["ts"].is_unique
    assert list(frame["ts"]) == list(pd.date_range(START, END, freq="1h", inclusive="left"))


@pytest.mark.parametrize("exchange", EXCHANGES)
def test_an_outage_is_recorded_as_a_gap_not_retried_forever(emulator, s3_client, bucket, exchange):
    emulator.faults.set([{"exchange": exchange, "kind": "outage", "from": "2024-10-26T06:00:00Z",
                          "to": "2024-10-26T18:00:00Z"}])
    before = sum(v for v in emulator.stats.values() if isinstance(v, int))
    report = ingest(emulator, s3_client, bucket, exchange)
    requests = sum(v for v in emulator.stats.values() if isinstance(v, int)) - before
    assert [c.status for c in report.chunks] == ["published"]
    assert report.chunks[0].rows == DUE - 12
    assert requests < 40  # a handful of pages and retries, not a loop
    day = [e for e in coverage.read_entries(s3_client, bucket, exchange=exchange, symbol="BTC", timeframe="1h")
           if e.date == "2024-10-26"]
    assert [(g.start[11:16], g.end[11:16], g.count, g.reason) for e in day for g in e.gaps] == [
        ("06:00", "18:00", 12, "exchange_returned_none")]
    assert day[0].status == "complete"  # explained, and a re-fetch would not find it


def test_a_persistent_exchange_error_fails_the_chunk_and_spares_the_others(emulator, s3_client, bucket):
    emulator.faults.set([{"exchange": "okx", "kind": "http_error", "status": 503, "count": 100}])
    report = ingest(emulator, s3_client, bucket, "okx")
    assert [c.status for c in report.chunks] == ["failed"]
    assert "ExchangeNotAvailable" in report.chunks[0].detail or "503" in report.chunks[0].detail
    assert lake.list_objects(s3_client, bucket, "ohlcv/exchange=okx/") == {}
