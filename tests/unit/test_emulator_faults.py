"""What each emulator fault does to an unmodified ccxt 4.5.90 client, on all five exchanges.

These are the outcomes the collector has to survive; docs/emulator.md lists them. The loudest
trap: a 200 with malformed JSON, an HTML page or an empty body makes `fetch_ohlcv` return `[]`
with no exception, exactly like an honest empty page."""

from __future__ import annotations

import json
import time
import urllib.error
import urllib.request

import ccxt
import pytest

from candleflow.emulator import EmulatorServer, ccxt_urls

pytestmark = pytest.mark.usefixtures("no_faults")  # conftest: each test starts and ends without faults

CLOCK = "2024-10-30T00:30:00Z"
OCT20 = 1729382400000  # 2024-10-20T00:00Z
HOUR = 3_600_000
MARKETS = {"binance": "BTC/USDT", "coinbase": "BTC/USD", "kraken": "BTC/USD", "bybit": "BTC/USDT", "okx": "BTC/USDT"}
RAW = {  # one candle request per exchange, in its own dialect: 10 hourly candles from OCT20
    "binance": f"/binance/api/v3/klines?symbol=BTCUSDT&interval=1h&startTime={OCT20}&limit=10",
    "coinbase": f"/coinbase/api/v3/brokerage/market/products/BTC-USD/candles?granularity=ONE_HOUR"
                f"&start={OCT20 // 1000}&end={(OCT20 + 10 * HOUR) // 1000}",
    "kraken": f"/kraken/0/public/OHLC?pair=XXBTZUSD&interval=60&since={OCT20 // 1000 - 1}",
    "bybit": f"/bybit/v5/market/kline?category=spot&symbol=BTCUSDT&interval=60&start={OCT20}"
             f"&end={OCT20 + 10 * HOUR - 1}&limit=10",
    "okx": f"/okx/api/v5/market/history-candles?instId=BTC-USDT&bar=1H&after={OCT20 + 10 * HOUR}"
           f"&before={OCT20 - 1}&limit=10",
}
EXCHANGES = list(MARKETS)


@pytest.fixture(scope="module")
def emulator():
    with EmulatorServer(clock=CLOCK, enforce_limits=False) as server:
        yield server


@pytest.fixture(scope="module")
def clients(emulator):
    out = {}
    for exchange_id in EXCHANGES:
        ex = getattr(ccxt, exchange_id)({"enableRateLimit": False, "timeout": 5000,
                                         "options": {"fetchMarkets": {"types": ["spot"]}}})
        ex.urls["api"] = ccxt_urls(ex.urls["api"], emulator.url, exchange_id, getattr(ex, "hostname", None))
        ex.load_markets()
        out[exchange_id] = ex
    return out


def fetch(ex, exchange_id, n=10):
    params = {} if exchange_id == "kraken" else {"until": OCT20 + n * HOUR - 1}
    return ex.fetch_ohlcv(MARKETS[exchange_id], "1h", since=OCT20, limit=n, params=params)


def raw(emulator, path):
    try:
        with urllib.request.urlopen(emulator.url + path, timeout=10) as resp:
            return resp.status, dict(resp.headers), resp.read()
    except urllib.error.HTTPError as exc:
        return exc.code, dict(exc.headers), exc.read()


def post_faults(emulator, faults):
    req = urllib.request.Request(f"{emulator.url}/__admin/faults", method="POST", data=json.dumps(faults).encode())
    try:
        with urllib.request.urlopen(req, timeout=10) as resp:
            return resp.status, json.loads(resp.read())
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read())


@pytest.mark.parametrize("exchange_id", EXCHANGES)
@pytest.mark.parametrize("kind", ["malformed_json", "html_200", "empty_body"])
def test_a_broken_200_body_is_an_empty_list_not_an_error(emulator, clients, exchange_id, kind):
    """The trap: ccxt swallows an unparsable 200 and returns [] -- indistinguishable from "no
    candles" unless the collector knows candles were due. The fault hits one request by default."""
    emulator.faults.set([{"exchange": exchange_id, "kind": kind}])
    status, headers, body = raw(emulator, RAW[exchange_id])
    assert status == 200
    if kind == "malformed_json":
        with pytest.raises(ValueError):
            json.loads(body)
    elif kind == "html_200":
        assert body.lstrip().startswith(b"<!DOCTYPE html>")
    else:
        assert body == b""
    emulator.faults.set([{"exchange": exchange_id, "kind": kind}])
    assert fetch(clients[exchange_id], exchange_id) == []
    assert len(fetch(clients[exchange_id], exchange_id)) == 10  # count 1 is spent: a retry heals


@pytest.mark.parametrize("exchange_id", EXCHANGES)
def test_page_faults(emulator, clients, exchange_id):
    ex = clients[exchange_id]
    good = fetch(ex, exchange_id)
    emulator.faults.set([{"exchange": exchange_id, "symbol": "BTC", "kind": "empty_page"}])
    status, _, body = raw(emulator, RAW[exchange_id])
    assert status == 200 and emulator.venues[exchange_id].candle_list(json.loads(body)) == []
    # valid, native JSON (bybit retCode 0, okx code "0"), zero candles
    assert fetch(ex, exchange_id) == [] and fetch(ex, exchange_id) == []  # every request: no count
    emulator.faults.set([{"exchange": exchange_id, "kind": "short_page"}])
    short = fetch(ex, exchange_id)
    if exchange_id == "kraken":  # kraken's page is everything since `since` (240 rows): half still covers 10
        assert short == good
    else:
        assert short == good[:5]  # the chronologically first half: the page just ends early
    emulator.faults.set([{"exchange": exchange_id, "kind": "out_of_order"}])
    served = emulator.venues[exchange_id].candle_list(json.loads(raw(emulator, RAW[exchange_id])[2]))
    times = [int(r[0]) if isinstance(r, list) else int(r["start"]) for r in served]
    assert sorted(times) != times and sorted(times, reverse=True) != times  # shuffled on the wire ...
    assert fetch(ex, exchange_id) == good  # ... and ccxt sorts by time: harmless through ccxt


@pytest.mark.parametrize("exchange_id", EXCHANGES)
def test_an_outage_is_a_real_gap_on_every_request(emulator, clients, exchange_id):
    emulator.faults.set([{"exchange": exchange_id, "kind": "outage",
                          "from": "2024-10-20T03:00:00Z", "to": "2024-10-20T06:00:00Z"}])
    for _ in range(2):
        times = [c[0] for c in fetch(clients[exchange_id], exchange_id)]
        assert not [t for t in times if OCT20 + 3 * HOUR <= t < OCT20 + 6 * HOUR]
        assert OCT20 + 2 * HOUR in times and OCT20 + 6 * HOUR in times


@pytest.mark.parametrize("exchange_id", EXCHANGES)
def test_a_slow_answer_is_a_ccxt_request_timeout(emulator, clients, exchange_id):
    ex = clients[exchange_id]
    emulator.faults.set([{"exchange": exchange_id, "symbol": "BTC", "kind": "timeout", "seconds": 1.0}])
    ex.timeout = 300
    try:
        started = time.monotonic()
        with pytest.raises(ccxt.RequestTimeout):
            fetch(ex, exchange_id)
        assert time.monotonic() - started < 0.9
        time.sleep(0.8)  # let the server's handler finish its sleep
        assert len(fetch(ex, exchange_id)) == 10  # count 1 by default
    finally:
        ex.timeout = 5000


# what ccxt 4.5.90 raises for each status served with the venue's own body
HTTP_OUTCOMES = {
    429: {"binance": ccxt.DDoSProtection, "coinbase": ccxt.RateLimitExceeded, "kraken": ccxt.DDoSProtection,
          "bybit": ccxt.RateLimitExceeded, "okx": ccxt.RateLimitExceeded},
    418: {"binance": ccxt.DDoSProtection, "coinbase": ccxt.DDoSProtection, "kraken": ccxt.DDoSProtection,
          "bybit": ccxt.RateLimitExceeded, "okx": ccxt.RateLimitExceeded},
    500: dict.fromkeys(EXCHANGES, ccxt.ExchangeNotAvailable),
    502: dict.fromkeys(EXCHANGES, ccxt.ExchangeNotAvailable),
    503: dict.fromkeys(EXCHANGES, ccxt.ExchangeNotAvailable),
    504: dict.fromkeys(EXCHANGES, ccxt.RequestTimeout),
}


@pytest.mark.parametrize("status", list(HTTP_OUTCOMES))
@pytest.mark.parametrize("exchange_id", EXCHANGES)
def test_http_errors_map_to_these_ccxt_exceptions(emulator, clients, exchange_id, status):
    emulator.faults.set([{"exchange": exchange_id, "kind": "http_error", "status": status, "retry_after": 7}])
    got, headers, _ = raw(emulator, RAW[exchange_id])
    assert got == status
    if status in (418, 429):
        assert headers["Retry-After"] == "7"
    emulator.faults.set([{"exchange": exchange_id, "kind": "http_error", "status": status, "retry_after": 7}])
    with pytest.raises(HTTP_OUTCOMES[status][exchange_id]) as err:
        fetch(clients[exchange_id], exchange_id)
    assert isinstance(err.value, ccxt.NetworkError)  # all retryable in ccxt's own taxonomy
    assert len(fetch(clients[exchange_id], exchange_id)) == 10


def test_faults_are_scoped_by_symbol_and_exchange(emulator, clients):
    emulator.faults.set([{"exchange": "binance", "symbol": "ETH", "kind": "empty_page"},
                         {"kind": "http_error", "status": 503, "symbol": "SOL", "count": 10}])
    assert fetch(clients["binance"], "binance") != []   # BTC untouched
    assert clients["binance"].fetch_ohlcv("ETH/USDT", "1h", since=OCT20, limit=5) == []
    with pytest.raises(ccxt.ExchangeNotAvailable):       # no exchange given: all of them
        clients["okx"].fetch_ohlcv("SOL/USDT", "1h", since=OCT20, limit=5)
    assert clients["okx"].fetch_time() > 0              # a symbol-scoped fault spares the rest
    left = {f["kind"]: f.get("count") for f in emulator.faults.list()}
    assert left == {"empty_page": None, "http_error": 9}


@pytest.mark.parametrize("fault,field", [
    ({"kind": "meteor"}, "kind"),
    ({"kind": "gap", "exchange": "ftx"}, "exchange"),
    ({"kind": "gap", "symbol": "DOGE"}, "symbol"),
    ({"kind": "short_page", "count": 0}, "count"),
    ({"kind": "http_error", "status": 200}, "status"),
    ({"kind": "http_error", "status": 429, "retry_after": -1}, "retry_after"),
    ({"kind": "timeout", "seconds": "long"}, "seconds"),
    ({"kind": "outage", "from": "2024-10-20T00:00:00Z"}, "to"),
    ({"kind": "outage", "from": "yesterday", "to": "2024-10-20T00:00:00Z"}, "from"),
    ({"kind": "outage", "from": "2024-10-21", "to": "2024-10-20"}, "to"),
    ({"kind": "empty_page", "retry_after": 3}, "retry_after"),
    ({"kind": "empty_page", "endpoint": "markets"}, "endpoint"),
    ({"kind": "archive_corrupt", "exchange": "okx"}, "exchange"),
])
def test_admin_rejects_invalid_faults_naming_the_field(emulator, fault, field):
    status, body = post_faults(emulator, [{"exchange": "binance", **fault}] if "exchange" not in fault else [fault])
    assert status == 400 and f".{field}:" in body["error"], body
    assert emulator.faults.list() == []  # nothing half-applied


def test_admin_lists_faults_with_defaults(emulator):
    status, body = post_faults(emulator, [{"kind": "malformed_json", "exchange": "okx"},
                                          {"kind": "outage", "from": "2024-10-20T03:00:00Z", "to": "2024-10-20T04:00:00Z"}])
    assert status == 200
    assert body[0] == {"kind": "malformed_json", "exchange": "okx", "count": 1, "endpoint": "candles"}
    assert "count" not in body[1] and body[1]["endpoint"] == "candles"
