"""The exchange emulator over real HTTP, read by unmodified ccxt clients."""

from __future__ import annotations

import json
import urllib.error
import urllib.request

import ccxt
import pytest

from candleflow.emulator import EmulatorServer, ccxt_urls

pytestmark = pytest.mark.usefixtures("no_faults")  # conftest: each test starts and ends without faults

CLOCK = "2024-10-30T00:30:00Z"
OCT20 = 1729382400000  # 2024-10-20T00:00Z
HOUR = 3_600_000


@pytest.fixture(scope="module")
def emulator():
    with EmulatorServer(clock=CLOCK) as server:
        yield server


def client(emulator, exchange_id):
    ex = getattr(ccxt, exchange_id)({"enableRateLimit": False, "options": {"fetchMarkets": {"types": ["spot"]}}})
    ex.urls["api"] = ccxt_urls(ex.urls["api"], emulator.url, exchange_id, getattr(ex, "hostname", None))
    return ex


def get(url):
    try:
        with urllib.request.urlopen(url, timeout=10) as resp:
            return resp.status, json.loads(resp.read())
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read())


@pytest.mark.parametrize("exchange_id,market", [("binance", "BTC/USDT"), ("coinbase", "BTC/USD"),
                                                ("kraken", "BTC/USD"), ("bybit", "BTC/USDT"), ("okx", "BTC/USDT")])
def test_ccxt_reads_markets_and_candles_in_each_native_format(emulator, exchange_id, market):
    ex = client(emulator, exchange_id)
    markets = ex.load_markets()
    assert market in markets and markets[market]["spot"]
    assert abs(ex.fetch_time() - 1730248200000) < 120_000  # the replayed clock, not the machine's
    params = {} if exchange_id == "kraken" else {"until": OCT20 + 50 * HOUR - 1}
    candles = ex.fetch_ohlcv(market, "1h", since=OCT20, limit=50, params=params)
    assert [c[0] for c in candles] == [OCT20 + i * HOUR for i in range(50)]
    for _, o, h, low, c, v in candles:
        assert low <= min(o, c) <= max(o, c) <= h and v > 0
        assert 20_000 < c < 200_000


def test_exchanges_agree_within_basis_and_candles_are_reproducible(emulator):
    closes = {}
    for exchange_id, market in [("binance", "ETH/USDT"), ("kraken", "ETH/USD"), ("okx", "ETH/USDT")]:
        closes[exchange_id] = [c[4] for c in client(emulator, exchange_id).fetch_ohlcv(
            market, "1h", since=OCT20, limit=24, params={} if exchange_id == "kraken" else {"until": OCT20 + 24 * HOUR - 1})]
    for a, b in zip(closes["binance"], closes["kraken"], strict=True):
        assert abs(a / b - 1) < 5e-4
    with EmulatorServer(clock=CLOCK) as again:
        again_closes = [c[4] for c in client(again, "binance").fetch_ohlcv(
            "ETH/USDT", "1h", since=OCT20, limit=24, params={"until": OCT20 + 24 * HOUR - 1})]
    assert again_closes == closes["binance"]


def test_recorded_market_data_is_served_where_it_exists(emulator):
    import pandas as pd

    recorded = emulator.config.real_data_dir / "SOL_USDT-1h.csv"
    if not recorded.exists():
        pytest.skip("shared recorded data not present on this machine")
    csv = pd.read_csv(recorded)
    csv_close = csv.set_index(pd.to_datetime(csv["timestamp"], utc=True))["Close"]
    candles = client(emulator, "binance").fetch_ohlcv("SOL/USDT", "1h", since=OCT20, limit=24,
                                                       params={"until": OCT20 + 24 * HOUR - 1})
    for ts, *_, close, _ in candles:
        assert close == pytest.approx(csv_close[pd.Timestamp(ts, unit="ms", tz="UTC")], rel=2e-4)


def test_page_limits_are_the_exchanges_own(emulator):
    status, body = get(f"{emulator.url}/binance/api/v3/klines?symbol=BTCUSDT&interval=1h&limit=1001")
    assert status == 400 and body["code"] == -1100
    start = OCT20 // 1000
    status, body = get(f"{emulator.url}/coinbase/api/v3/brokerage/market/products/BTC-USD/candles"
                       f"?granularity=ONE_HOUR&start={start}&end={start + 400 * 3600}")
    assert status == 400 and "350" in body["message"]
    # kraken: only the 720 most recent candles, whatever `since` asks for
    status, body = get(f"{emulator.url}/kraken/0/public/OHLC?pair=XXBTZUSD&interval=60&since=0")
    rows = body["result"]["XXBTZUSD"]
    assert len(rows) == 720 and rows[-1][0] * 1000 == 1730246400000  # the open candle of 00:00 is last
    # bybit: newest first, the newest `limit` of [start, end]
    status, body = get(f"{emulator.url}/bybit/v5/market/kline?category=spot&symbol=BTCUSDT&interval=60"
                       f"&start={OCT20}&limit=3")
    times = [int(r[0]) for r in body["result"]["list"]]
    assert times == sorted(times, reverse=True) and times[0] == 1730246400000


def test_listing_dates_and_unlisted_symbols(emulator):
    binance = client(emulator, "binance")
    binance.load_markets()
    listed = 1597104000000  # SOL 2020-08-11
    candles = binance.fetch_ohlcv("SOL/USDT", "1h", since=listed - 10 * HOUR, limit=20,
                                  params={"until": listed + 10 * HOUR - 1})
    assert candles[0][0] == listed and len(candles) == 10
    coinbase = client(emulator, "coinbase")
    assert "THETA/USD" not in coinbase.load_markets() and "BTC/USD" in coinbase.markets


def test_faults_are_injected_per_exchange_and_symbol(emulator):
    emulator.faults.set([{"exchange": "kraken", "symbol": "ETH", "kind": "ohlc_inconsistent"},
                         {"exchange": "okx", "kind": "http_error", "status": 503, "count": 1},
                         {"exchange": "bybit", "kind": "http_error", "status": 429, "count": 1}])
    kraken = client(emulator, "kraken")
    bad = kraken.fetch_ohlcv("ETH/USD", "1h", since=OCT20, limit=10)
    assert all(h < low for _, _, h, low, _, _ in bad)
    good = kraken.fetch_ohlcv("BTC/USD", "1h", since=OCT20, limit=10)
    assert all(h >= low for _, _, h, low, _, _ in good)
    okx = client(emulator, "okx")
    with pytest.raises(ccxt.ExchangeNotAvailable):
        okx.fetch_time()
    assert okx.fetch_time() > 0  # the fault's count is spent
    bybit = client(emulator, "bybit")
    with pytest.raises(ccxt.RateLimitExceeded):
        bybit.fetch_time()


def test_admin_api_validates_faults(emulator):
    req = urllib.request.Request(f"{emulator.url}/__admin/faults", method="POST",
                                 data=json.dumps([{"exchange": "binance", "kind": "meteor"}]).encode())
    with pytest.raises(urllib.error.HTTPError) as err:
        urllib.request.urlopen(req, timeout=10)
    assert err.value.code == 400 and "kind" in json.loads(err.value.read())["error"]
    status, body = get(f"{emulator.url}/__admin/health")
    assert status == 200 and body["status"] == "ok" and len(body["exchanges"]) == 5
