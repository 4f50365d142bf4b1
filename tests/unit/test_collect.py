"""candleflow.collect against the real emulator over HTTP (ccxt unmodified)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import ccxt
import pandas as pd
import pytest

from candleflow.collect import collect_pair
from candleflow.config import CollectConfig
from candleflow.emulator import EmulatorServer

pytestmark = pytest.mark.usefixtures("no_faults")  # conftest: each test starts and ends without faults

UTC = UTC
FAST = CollectConfig(max_attempts=3, backoff_seconds=0.01)
QUOTES = {"binance": ["USDT", "USD"], "coinbase": ["USD", "USDT"], "kraken": ["USD", "USDT"],
          "bybit": ["USDT", "USD"], "okx": ["USDT", "USD"]}


@pytest.fixture(scope="module")
def emulator():
    with EmulatorServer(clock="2024-10-30T00:30:00Z") as server:
        yield server


def collect(emulator, exchange, symbol, start, end, **kw):
    return collect_pair(exchange, symbol, "1h", start, end, quotes=QUOTES[exchange], mode="emulator",
                        emulator_url=emulator.url, enable_rate_limit=False, cfg=FAST, **kw)


@pytest.mark.parametrize("exchange", list(QUOTES))
def test_a_multi_page_window_is_collected_exactly(emulator, exchange):
    # 20 days = 480 candles: several pages on coinbase (300) and okx (100); within kraken's 720
    start, end = datetime(2024, 10, 9, 12, tzinfo=UTC), datetime(2024, 10, 29, 12, tzinfo=UTC)
    result = collect(emulator, exchange, "BTC", start, end)
    ts = result.candles["ts"]
    assert result.skipped_reason is None and result.market.startswith("BTC/")
    assert len(result.candles) == result.expected == 480 and result.missing == 0
    assert ts.iloc[0] == pd.Timestamp(start) and ts.iloc[-1] == pd.Timestamp(end - timedelta(hours=1))
    assert ts.is_monotonic_increasing and ts.is_unique
    assert str(ts.dtype) == "datetime64[ms, UTC]"
    if exchange == "okx":
        assert result.requests >= 5 + 2  # 100 per page, plus markets and time


def test_the_still_open_candle_is_dropped(emulator):
    # The emulator's clock is 2024-10-30T00:30: the 00:00 candle is still open.
    result = collect(emulator, "binance", "ETH", datetime(2024, 10, 29, 22, tzinfo=UTC),
                     datetime(2024, 10, 30, 1, tzinfo=UTC))
    assert list(result.candles["ts"].dt.hour) == [22, 23]
    assert result.expected == 2 and any("not closed yet" in n for n in result.notes)


def test_a_symbol_the_exchange_does_not_list_is_skipped_with_its_reason(emulator):
    result = collect(emulator, "coinbase", "THETA", datetime(2024, 10, 1, tzinfo=UTC), datetime(2024, 10, 2, tzinfo=UTC))
    assert result.market is None and result.candles.empty
    assert "not listed" in result.skipped_reason and "THETA/USD" in result.skipped_reason


def test_kraken_history_beyond_720_candles_is_reported_missing_not_invented(emulator):
    result = collect(emulator, "kraken", "BTC", datetime(2024, 9, 1, tzinfo=UTC), datetime(2024, 10, 29, tzinfo=UTC))
    assert result.expected == 58 * 24
    assert 0 < len(result.candles) < result.expected and result.missing == result.expected - len(result.candles)
    assert any("720 most recent" in n for n in result.notes)


def test_transient_errors_are_retried_and_persistent_ones_raise(emulator):
    window = datetime(2024, 10, 20, tzinfo=UTC), datetime(2024, 10, 21, tzinfo=UTC)
    emulator.faults.set([{"exchange": "bybit", "kind": "http_error", "status": 502, "count": 2}])
    result = collect(emulator, "bybit", "SOL", *window)
    assert len(result.candles) == 24
    emulator.faults.set([{"exchange": "bybit", "kind": "http_error", "status": 429, "count": 10}])
    with pytest.raises(ccxt.RateLimitExceeded):
        collect(emulator, "bybit", "SOL", *window)


def test_candles_repeated_across_pages_are_kept_once(emulator):
    emulator.faults.set([{"exchange": "binance", "symbol": "BTC", "kind": "duplicate"}])
    result = collect(emulator, "binance", "BTC", datetime(2024, 10, 20, tzinfo=UTC), datetime(2024, 10, 21, tzinfo=UTC))
    assert len(result.candles) == 24 and result.candles["ts"].is_unique


def test_a_renamed_asset_resolves_through_its_alias(emulator):
    window = datetime(2024, 10, 20, tzinfo=UTC), datetime(2024, 10, 21, tzinfo=UTC)
    renamed = collect(emulator, "binance", "MATIC", *window, names=["MATIC", "POL"])
    assert renamed.market == "POL/USDT" and len(renamed.candles) == 24
    unrenamed = collect(emulator, "kraken", "MATIC", *window, names=["MATIC", "POL"])
    assert unrenamed.market == "MATIC/USD"
    without_alias = collect(emulator, "binance", "MATIC", *window)
    assert without_alias.market is None and "MATIC/USDT" in without_alias.skipped_reason
