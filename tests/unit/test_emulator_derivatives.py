"""The emulator's perpetual-futures endpoints: the venues' native shapes, paging rules, retention
and limits over raw HTTP, and what unmodified ccxt 4.5.90 makes of them."""

from __future__ import annotations

import json
import urllib.error
import urllib.request
from datetime import UTC, datetime

import pytest

from candleflow.emulator import EmulatorServer, ccxt_urls

CLOCK = "2024-10-30T00:30:00Z"
NOW = int(datetime(2024, 10, 30, 0, 30, tzinfo=UTC).timestamp() * 1000)
DAY, HOUR = 86_400_000, 3_600_000
T0 = int(datetime(2024, 10, 20, tzinfo=UTC).timestamp() * 1000)


@pytest.fixture(scope="module")
def server():
    with EmulatorServer(clock=CLOCK, enforce_limits=False) as srv:
        yield srv


def get(server, path, **query):
    from urllib.parse import urlencode

    url = f"{server.url}{path}" + (f"?{urlencode(query)}" if query else "")
    try:
        with urllib.request.urlopen(url, timeout=10) as resp:
            return resp.status, json.loads(resp.read())
    except urllib.error.HTTPError as err:
        return err.code, json.loads(err.read() or b"null")


def client(server, exchange, types):
    import ccxt

    c = getattr(ccxt, exchange)({"enableRateLimit": False, "options": {"fetchMarkets": {"types": types}}})
    c.urls["api"] = ccxt_urls(c.urls["api"], server.url, exchange, getattr(c, "hostname", None))
    return c


# -- binance ---------------------------------------------------------------------------------------
def test_binance_funding_info_lists_only_adjusted_intervals(server):
    status, body = get(server, "/binance/fapi/v1/fundingInfo")
    assert status == 200
    hours = {e["symbol"]: e["fundingIntervalHours"] for e in body}
    assert hours["SOLUSDT"] == 4 and hours["CRVUSDT"] == 1
    assert "BTCUSDT" not in hours and 8 not in hours.values()  # default-8h symbols are absent


def test_binance_funding_rate_pages_from_start_time_with_late_stamps(server):
    status, body = get(server, "/binance/fapi/v1/fundingRate", symbol="SOLUSDT", startTime=T0, limit=10)
    assert status == 200 and len(body) == 10
    times = [r["fundingTime"] for r in body]
    assert times == sorted(times) and times[0] >= T0
    # settlements every 4 h, stamped a few ms after the grid as binance does
    assert [t // HOUR * HOUR for t in times] == [T0 + i * 4 * HOUR for i in range(10)]
    assert all(0 <= t % HOUR < 20 for t in times) and any(t % HOUR for t in times)
    assert set(body[0]) == {"symbol", "fundingTime", "fundingRate", "markPrice"}
    # without startTime: the most recent `limit`, none after the clock
    _, recent = get(server, "/binance/fapi/v1/fundingRate", symbol="SOLUSDT", limit=3)
    assert recent[-1]["fundingTime"] // HOUR * HOUR == NOW // (4 * HOUR) * 4 * HOUR


def test_binance_refuses_bad_limit_and_unknown_symbol(server):
    assert get(server, "/binance/fapi/v1/fundingRate", symbol="SOLUSDT", limit=1001) == \
        (400, {"code": -1100, "msg": "Illegal characters found in parameter 'limit'; legal range is '1..1000'."})
    assert get(server, "/binance/fapi/v1/fundingRate", symbol="RENUSDT")[1]["code"] == -1121  # spot only
    assert get(server, "/binance/futures/data/openInterestHist", symbol="BTCUSDT", period="2m")[1]["code"] == -1130


def test_binance_open_interest_history_keeps_thirty_days(server):
    _, body = get(server, "/binance/futures/data/openInterestHist", symbol="BTCUSDT", period="1h",
                  startTime=NOW - 40 * DAY, limit=500)
    assert len(body) == 500
    assert body[0]["timestamp"] >= NOW - 30 * DAY > body[0]["timestamp"] - HOUR
    _, default = get(server, "/binance/futures/data/openInterestHist", symbol="BTCUSDT", period="1h")
    assert len(default) == 30 and default[-1]["timestamp"] == NOW // HOUR * HOUR


def test_ccxt_reads_binance_perpetuals_without_the_spot_twin(server):
    c = client(server, "binance", ["linear"])
    markets = c.load_markets()
    btc = markets["BTC/USDT:USDT"]
    assert btc["id"] == "BTCUSDT" and btc["swap"] and btc["linear"]  # the spot id, a different market
    assert not any(m["spot"] for m in markets.values())
    assert c.fetch_funding_intervals(["SOL/USDT:USDT"])["SOL/USDT:USDT"]["interval"] == "4h"


# -- bybit -----------------------------------------------------------------------------------------
def test_bybit_linear_instruments_carry_the_funding_interval(server):
    _, body = get(server, "/bybit/v5/market/instruments-info", category="linear")
    by_symbol = {i["symbol"]: i for i in body["result"]["list"]}
    assert by_symbol["SOLUSDT"]["fundingInterval"] == 240 and by_symbol["BTCUSDT"]["fundingInterval"] == 480
    assert by_symbol["CRVUSDT"]["fundingInterval"] == 60
    assert "MKRUSDT" not in by_symbol and by_symbol["BTCUSDT"]["contractType"] == "LinearPerpetual"
    _, prelaunch = get(server, "/bybit/v5/market/instruments-info", category="linear", status="PreLaunch")
    assert prelaunch["result"]["list"] == []


def test_bybit_funding_history_is_newest_first_and_refuses_a_lone_start(server):
    _, body = get(server, "/bybit/v5/market/funding/history", category="linear", symbol="BTCUSDT",
                  startTime=T0 - 200 * DAY, endTime=NOW, limit=500)
    rows = body["result"]["list"]
    assert len(rows) == 200  # capped at its documented maximum
    times = [int(r["fundingRateTimestamp"]) for r in rows]
    assert times == sorted(times, reverse=True) and times[0] == NOW // (8 * HOUR) * 8 * HOUR  # newest of the range
    _, lone = get(server, "/bybit/v5/market/funding/history", category="linear", symbol="BTCUSDT", startTime=T0)
    assert lone["retCode"] == 10001


def test_bybit_open_interest_pages_with_its_cursor(server):
    q = {"category": "linear", "symbol": "ETHUSDT", "intervalTime": "1h", "startTime": T0, "endTime": T0 + 9 * HOUR}
    _, first = get(server, "/bybit/v5/market/open-interest", **q, limit=5)
    page = first["result"]
    assert [int(r["timestamp"]) for r in page["list"]] == [T0 + h * HOUR for h in (9, 8, 7, 6, 5)]
    _, second = get(server, "/bybit/v5/market/open-interest", **q, limit=5, cursor=page["nextPageCursor"])
    assert [int(r["timestamp"]) for r in second["result"]["list"]] == [T0 + h * HOUR for h in (4, 3, 2, 1, 0)]
    assert second["result"]["nextPageCursor"] == ""


# -- okx -------------------------------------------------------------------------------------------
def test_okx_funding_rate_gives_the_interval_by_its_two_times(server):
    _, body = get(server, "/okx/api/v5/public/funding-rate", instId="CRV-USDT-SWAP")
    entry = body["data"][0]
    assert int(entry["nextFundingTime"]) - int(entry["fundingTime"]) == 4 * HOUR
    assert int(entry["fundingTime"]) > NOW
    assert get(server, "/okx/api/v5/public/funding-rate", instId="REN-USDT-SWAP")[1]["code"] == "51001"


def test_okx_funding_history_keeps_three_months_newest_first(server):
    _, body = get(server, "/okx/api/v5/public/funding-rate-history", instId="BTC-USDT-SWAP", before=0,
                  after=NOW, limit=400)
    times = [int(r["fundingTime"]) for r in body["data"]]
    assert len(times) == 92 * 3 and times == sorted(times, reverse=True)
    assert times[-1] >= NOW - 92 * DAY
    _, old = get(server, "/okx/api/v5/public/funding-rate-history", instId="BTC-USDT-SWAP",
                 after=NOW - 100 * DAY)
    assert old["data"] == []


def test_okx_open_interest_history_bounds_are_exclusive_and_units_consistent(server):
    _, body = get(server, "/okx/api/v5/rubik/stat/contracts/open-interest-history", instId="ETH-USDT-SWAP",
                  period="1H", begin=T0, end=T0 + 4 * HOUR, limit=100)
    rows = body["data"]
    assert [int(r[0]) for r in rows] == [T0 + 3 * HOUR, T0 + 2 * HOUR, T0 + HOUR]
    _, instruments = get(server, "/okx/api/v5/public/instruments", instType="SWAP")
    ct_val = float(next(i for i in instruments["data"] if i["instId"] == "ETH-USDT-SWAP")["ctVal"])
    for _, contracts, base, _usd in rows:
        assert float(contracts) * ct_val == pytest.approx(float(base), rel=1e-6)


def test_okx_history_routes_are_rate_limited_per_instrument():
    with EmulatorServer(clock=CLOCK) as limited:  # limits on
        answers = [get(limited, "/okx/api/v5/public/funding-rate-history", instId="BTC-USDT-SWAP", limit=1)
                   for _ in range(11)]
        assert [a[0] for a in answers[:10]] == [200] * 10
        assert answers[10] == (429, {"code": "50011", "msg": "Too Many Requests", "data": []})
        assert get(limited, "/okx/api/v5/public/funding-rate-history", instId="ETH-USDT-SWAP", limit=1)[0] == 200


# -- all -------------------------------------------------------------------------------------------
def test_the_same_clock_serves_the_same_history(server):
    with EmulatorServer(clock=CLOCK, enforce_limits=False) as again:
        for path, query in (("/binance/fapi/v1/fundingRate", {"symbol": "ETHUSDT", "startTime": T0, "limit": 50}),
                            ("/bybit/v5/market/open-interest", {"category": "linear", "symbol": "SOLUSDT",
                                                                "intervalTime": "1h", "endTime": T0}),
                            ("/okx/api/v5/public/funding-rate-history", {"instId": "SOL-USDT-SWAP", "after": T0})):
            first, second = get(server, path, **query)[1], get(again, path, **query)[1]
            for body in (first, second):  # bybit stamps its answer with the server's time
                if isinstance(body, dict):
                    body.pop("time", None)
            assert first == second


def test_an_outage_removes_settlements_and_statistics(server):
    req = urllib.request.Request(f"{server.url}/__admin/faults", method="POST", data=json.dumps(
        [{"kind": "outage", "exchange": "binance", "symbol": "SOL", "from": "2024-10-20T00:00:00Z",
          "to": "2024-10-20T08:00:00Z"}]).encode())
    urllib.request.urlopen(req, timeout=10).read()
    try:
        _, funding = get(server, "/binance/fapi/v1/fundingRate", symbol="SOLUSDT", startTime=T0, limit=3)
        assert [r["fundingTime"] // HOUR * HOUR for r in funding] == [T0 + 8 * HOUR, T0 + 12 * HOUR, T0 + 16 * HOUR]
        _, btc = get(server, "/binance/fapi/v1/fundingRate", symbol="BTCUSDT", startTime=T0, limit=1)
        assert btc[0]["fundingTime"] // HOUR * HOUR == T0  # other symbols unaffected
    finally:
        urllib.request.urlopen(urllib.request.Request(f"{server.url}/__admin/faults", method="DELETE"), timeout=10)
