"""The emulator enforces each exchange's published rate limits (include/config/emulator.yaml,
`rate_limits:`) the way the exchange does: sliding windows, weights, headers, 429 then a ban."""

from __future__ import annotations

import http.client
import json
import threading
import time
import urllib.error
import urllib.request

import ccxt
import pytest

from candleflow.emulator import EmulatorServer, ccxt_urls

CLOCK = "2024-10-30T00:30:00Z"
OCT1 = 1727740800000  # 2024-10-01T00:00Z
MINUTE = 60_000


@pytest.fixture(scope="module")
def emulator():
    with EmulatorServer(clock=CLOCK) as server:  # limits are enforced by default
        yield server


@pytest.fixture(autouse=True)
def fresh_limits(emulator):
    admin(emulator, "POST", "limits", {"enforce": True, "reset": True})
    yield
    admin(emulator, "POST", "limits", {"enforce": True, "reset": True})


def admin(emulator, method, what, body=None):
    req = urllib.request.Request(f"{emulator.url}/__admin/{what}", method=method,
                                 data=None if body is None else json.dumps(body).encode())
    try:
        with urllib.request.urlopen(req, timeout=10) as resp:
            return resp.status, json.loads(resp.read())
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read())


class Raw:
    """One keep-alive connection, as an unthrottled client would hold."""

    def __init__(self, emulator):
        host, port = emulator.httpd.server_address[:2]
        self.conn = http.client.HTTPConnection(host, port, timeout=10)

    def get(self, path):
        self.conn.request("GET", path)
        resp = self.conn.getresponse()
        body = resp.read()
        try:
            body = json.loads(body)
        except ValueError:
            body = body.decode()
        return resp.status, {k.lower(): v for k, v in resp.getheaders()}, body


def client(emulator, exchange_id, rate_limit=True):
    ex = getattr(ccxt, exchange_id)({"enableRateLimit": rate_limit, "options": {"fetchMarkets": {"types": ["spot"]}}})
    ex.urls["api"] = ccxt_urls(ex.urls["api"], emulator.url, exchange_id, getattr(ex, "hostname", None))
    return ex


def exchange_stats(emulator, exchange_id):
    return admin(emulator, "GET", "stats")[1]["exchanges"][exchange_id]


def test_binance_weight_header_then_429_then_418_ban(emulator):
    raw = Raw(emulator)
    before = exchange_stats(emulator, "binance")
    status, headers, _ = raw.get("/binance/api/v3/exchangeInfo")
    assert status == 200 and headers["x-mbx-used-weight-1m"] == "20"  # exchangeInfo weighs 20
    status, headers, _ = raw.get("/binance/api/v3/klines?symbol=BTCUSDT&interval=1m&limit=1000")
    assert headers["x-mbx-used-weight-1m"] == "22"                    # klines 2, whatever the limit
    used = 22
    while used < 6000:  # hammer: no throttle, no backoff
        status, headers, _ = raw.get("/binance/api/v3/klines?symbol=BTCUSDT&interval=1m&limit=1")
        assert status == 200
        used += 2
        assert headers["x-mbx-used-weight-1m"] == str(used)
    status, headers, body = raw.get("/binance/api/v3/klines?symbol=BTCUSDT&interval=1m&limit=1")
    assert status == 429 and body["code"] == -1003 and headers["x-mbx-used-weight-1m"] == "6000"
    assert 1 <= int(headers["retry-after"]) <= 60  # until enough weight leaves the rolling minute
    statuses = [raw.get("/binance/api/v3/ping")[0] for _ in range(3)]  # ignoring the Retry-After
    assert statuses == [429, 429, 418]
    status, headers, body = raw.get("/binance/api/v3/ping")
    assert status == 418 and 100 <= int(headers["retry-after"]) <= 120 and "banned until" in body["msg"]
    after = exchange_stats(emulator, "binance")
    assert after["rate_limited"] - before["rate_limited"] == 3 and after["banned"] - before["banned"] == 2
    with pytest.raises(ccxt.DDoSProtection):  # what ccxt makes of the ban
        client(emulator, "binance", rate_limit=False).fetch_time()
    _, state = admin(emulator, "GET", "limits")
    assert state["exchanges"]["binance"]["bans"] == 1 and state["exchanges"]["binance"]["banned_for_s"] > 100


def test_bybit_headers_then_10006_then_403(emulator):
    raw = Raw(emulator)
    status, headers, body = raw.get("/bybit/v5/market/time")
    assert status == 200 and body["retCode"] == 0
    assert headers["x-bapi-limit"] == "600" and headers["x-bapi-limit-status"] == "599"
    assert abs(int(headers["x-bapi-limit-reset-timestamp"]) - 1730248200000) < 60_000  # the emulated now
    for i in range(599):
        status, headers, body = raw.get("/bybit/v5/market/time")
        assert body["retCode"] == 0 and headers["x-bapi-limit-status"] == str(598 - i)
    status, headers, body = raw.get("/bybit/v5/market/time")
    assert status == 200 and body["retCode"] == 10006 and body["retMsg"] == "Too many visits!"
    assert headers["x-bapi-limit-status"] == "0"
    with pytest.raises(ccxt.RateLimitExceeded):
        client(emulator, "bybit", rate_limit=False).fetch_time()
    statuses = [raw.get("/bybit/v5/market/time")[0] for _ in range(2)]
    assert statuses == [200, 403]  # the third request ignoring the limit: "403, access too frequent"
    with pytest.raises(ccxt.RateLimitExceeded):  # ccxt maps bybit's 403 to RateLimitExceeded too
        client(emulator, "bybit", rate_limit=False).fetch_time()


def test_okx_limits_each_endpoint_per_2s(emulator):
    raw = Raw(emulator)
    history = "/okx/api/v5/market/history-candles?instId=BTC-USDT&bar=1m&limit=1"
    assert all(raw.get(history)[0] == 200 for _ in range(20))
    status, _, body = raw.get(history)
    assert status == 429 and body["code"] == "50011"
    assert raw.get("/okx/api/v5/market/candles?instId=BTC-USDT&bar=1m&limit=1")[0] == 200  # its own bucket
    with pytest.raises(ccxt.RateLimitExceeded):
        client(emulator, "okx", rate_limit=False).public_get_market_history_candles({"instId": "BTC-USDT"})
    time.sleep(2.05)  # the window slides
    assert raw.get(history)[0] == 200


def test_coinbase_public_10_per_second(emulator):
    raw = Raw(emulator)
    path = "/coinbase/api/v3/brokerage/time"
    assert all(raw.get(path)[0] == 200 for _ in range(10))
    status, _, _ = raw.get(path)
    assert status == 429
    with pytest.raises(ccxt.RateLimitExceeded):
        client(emulator, "coinbase", rate_limit=False).fetch_ohlcv("BTC/USD", "1h", since=OCT1, limit=10)
    assert raw.get("/coinbase/v2/currencies")[0] == 200  # the v2 API is metered separately (hourly)


def test_kraken_call_counter_per_pair_decays(emulator):
    raw = Raw(emulator)
    ohlc = "/kraken/0/public/OHLC?pair=XXBTZUSD&interval=60"
    assert all(raw.get(ohlc)[2]["error"] == [] for _ in range(15))
    status, _, body = raw.get(ohlc)
    assert body["error"] == ["EAPI:Rate limit exceeded"]
    assert raw.get("/kraken/0/public/OHLC?pair=XETHZUSD&interval=60")[2]["error"] == []  # per pair
    assert raw.get("/kraken/0/public/Time")[2]["error"] == []                            # per IP
    with pytest.raises(ccxt.DDoSProtection):
        client(emulator, "kraken", rate_limit=False).fetch_ohlcv("BTC/USD", "1h")
    time.sleep(1.1)  # the counter decays 1 per second
    assert raw.get(ohlc)[2]["error"] == []


def test_limits_can_be_switched_off_and_back(emulator):
    status, state = admin(emulator, "POST", "limits", {"enforce": False})
    assert status == 200 and state["enforce"] is False
    raw = Raw(emulator)
    assert all(raw.get("/coinbase/api/v3/brokerage/time")[0] == 200 for _ in range(30))
    status, body = admin(emulator, "POST", "limits", {"enforce": "yes"})
    assert status == 400 and body["error"].startswith("enforce:")
    admin(emulator, "POST", "limits", {"enforce": True})
    assert [raw.get("/coinbase/api/v3/brokerage/time")[0] for _ in range(11)][-1] == 429
    with EmulatorServer(clock=CLOCK, enforce_limits=False) as off:
        raw_off = Raw(off)
        assert all(raw_off.get("/coinbase/api/v3/brokerage/time")[0] == 200 for _ in range(30))


PAGES = {  # exchange: (market, timeframe, page size, pages); ccxt's spacing per page in the comment
    "binance": ("BTC/USDT", "1m", 1000, 60),   # rateLimit 50 ms x cost 0.4 = 20 ms (~32 ms measured): 2 s
    "bybit": ("BTC/USDT", "1m", 1000, 60),     # 20 ms x 5 = 100 ms: 6 s
    "okx": ("BTC/USDT", "1m", 100, 60),        # history-candles 110 ms x 1: 6.6 s (18.2 per 2 s of 20)
    "coinbase": ("BTC/USD", "1m", 300, 60),    # 34 ms x 3 = 102 ms: 6.1 s (9.8 per s of 10)
    "kraken": ("BTC/USD", "1h", 720, 8),       # 1000 ms x 1.2 = 1.2 s: 9.6 s
}


def test_ccxt_with_its_own_throttle_never_hits_the_published_limits(emulator):
    before = {x: exchange_stats(emulator, x) for x in PAGES}
    errors: list = []
    counts: dict = {}

    def run(exchange_id):
        market, tf, size, pages = PAGES[exchange_id]
        ex = client(emulator, exchange_id, rate_limit=True)
        try:
            ex.load_markets()
            tf_ms = ex.parse_timeframe(tf) * 1000
            since = 1730246400000 - pages * size * tf_ms
            got = 0
            for _ in range(pages):
                params = {} if exchange_id == "kraken" else {"until": since + size * tf_ms - 1}
                rows = ex.fetch_ohlcv(market, tf, since=since, limit=size, params=params)
                got += len(rows)
                since += size * tf_ms
            counts[exchange_id] = got
        except Exception as exc:  # noqa: BLE001 - reported below
            errors.append((exchange_id, repr(exc)))

    started = time.monotonic()
    threads = [threading.Thread(target=run, args=(x,)) for x in PAGES]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    elapsed = time.monotonic() - started
    assert errors == []
    for exchange_id, (_, _, size, pages) in PAGES.items():
        after = exchange_stats(emulator, exchange_id)
        assert after["rate_limited"] == before[exchange_id]["rate_limited"], exchange_id
        assert after["banned"] == before[exchange_id]["banned"], exchange_id
        assert after["requests"] - before[exchange_id]["requests"] >= pages
        if exchange_id != "kraken":
            assert counts[exchange_id] == size * pages, exchange_id
    assert elapsed < 40


def test_a_forced_ban_answers_like_the_exchange_until_it_ends(emulator):
    """`force_ban` (for tests of a client's ban handling) bans the client IP as continued abuse would."""
    raw = Raw(emulator)
    assert emulator.limits.exchanges["binance"].force_ban(2) == 2
    status, headers, body = raw.get("/binance/api/v3/klines?symbol=BTCUSDT&interval=1m&limit=10")
    assert status == 418 and int(headers["retry-after"]) in (1, 2) and body["code"] == -1003
    emulator.limits.exchanges["bybit"].force_ban(2)
    status, _, body = raw.get("/bybit/v5/market/time")
    assert status == 403 and "access too frequent" in body
    assert admin(emulator, "GET", "limits")[1]["exchanges"]["binance"]["bans"] == 1
    time.sleep(2.1)
    assert raw.get("/binance/api/v3/time")[0] == 200
    assert raw.get("/bybit/v5/market/time")[0] == 200
