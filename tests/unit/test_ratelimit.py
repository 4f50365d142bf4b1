"""candleflow.ratelimit: the per-exchange limiter, against the emulator's enforcement of the
published limits and across real processes."""

from __future__ import annotations

import asyncio
import multiprocessing
import shutil
import time
from dataclasses import replace
from pathlib import Path

import pytest
import yaml

from candleflow import ratelimit
from candleflow.collect import make_exchange
from candleflow.config import CollectConfig, ConfigError, load_budgets, parse_budget
from candleflow.emulator import EmulatorServer

OKX_HISTORY = "https://www.okx.com/api/v5/market/history-candles?instId=BTC-USDT&bar=1m"


def _budget(exchange: str):
    return load_budgets()[0][exchange]


def _max_in_window(stamps: list[float], seconds: float) -> int:
    stamps = sorted(stamps)
    best, lo = 0, 0
    for hi, t in enumerate(stamps):
        while t - stamps[lo] >= seconds:
            lo += 1
        best = max(best, hi - lo + 1)
    return best


def _acquire_many(state_dir: str, n: int, start_at: float, out) -> None:
    """One process of the test below: n okx history-candles requests through a limiter on state_dir."""
    limiter = ratelimit.Limiter(_budget("okx"), state_dir, path_prefix="")

    async def run():
        stamps = []
        for _ in range(n):
            await limiter.acquire(OKX_HISTORY)
            stamps.append(time.time())
        return stamps

    time.sleep(max(0.0, start_at - time.time()))
    out.put(asyncio.run(run()))


def _run_processes(dirs: list[str], n: int) -> list[float]:
    ctx = multiprocessing.get_context("spawn")
    out = ctx.Queue()
    start_at = time.time() + 3.0   # after both interpreters started
    procs = [ctx.Process(target=_acquire_many, args=(d, n, start_at, out)) for d in dirs]
    for p in procs:
        p.start()
    stamps = [t for _ in procs for t in out.get(timeout=60)]
    for p in procs:
        p.join(timeout=10)
    return stamps


def test_two_processes_share_one_budget(tmp_path):
    # okx history-candles: 20 per 2 s published; margin 0.8 → 8/s and a burst of 2, so any 2 s
    # window holds at most (1 + 0.8) / 2 × 20 + 1 = 19 requests whoever sends them: within the limit
    shared = _run_processes([str(tmp_path / "shared")] * 2, 15)
    assert _max_in_window(shared, 2.0) <= 20
    assert max(shared) - min(shared) >= (30 - 2) / 8 - 0.3   # together they pace as one

    # the same two processes with a limiter each (no shared state) exceed the published limit
    apart = _run_processes([str(tmp_path / "a"), str(tmp_path / "b")], 15)
    assert _max_in_window(apart, 2.0) > 20


@pytest.fixture(scope="module")
def emulator():
    with EmulatorServer(clock="2024-10-30T00:30:00Z", enforce_limits=True) as server:
        yield server


def _pages(emulator, exchange: str, limiter, n: int, enable_rate_limit: bool = False) -> tuple[float, int]:
    """n candle pages, 8 in flight, through `limiter` (None: unthrottled); (seconds, pages refused)."""
    import ccxt

    async def run():
        client = make_exchange(exchange, mode="emulator", emulator_url=emulator.url,
                               enable_rate_limit=enable_rate_limit, asynchronous=True, limiter=limiter)
        gate, refused = asyncio.Semaphore(8), 0
        try:
            await client.load_markets()
            since = 1729900800000   # 2024-10-26

            async def page(i):
                nonlocal refused
                async with gate:
                    try:
                        await client.fetch_ohlcv("BTC/USD", "1m", since=since + i * 300 * 60_000, limit=300)
                    except ccxt.RateLimitExceeded:
                        refused += 1

            started = time.monotonic()
            await asyncio.gather(*(page(i) for i in range(n)))
            return time.monotonic() - started, refused
        finally:
            await client.close()

    emulator.limits.reset()
    return asyncio.run(run())


def test_the_published_budget_is_spent_without_a_refusal(emulator, tmp_path):
    # coinbase: 10 public requests per rolling second. Unthrottled, 8 in flight are refused at once.
    _, refused = _pages(emulator, "coinbase", None, 30)
    assert refused > 0
    before = emulator.outcomes["coinbase"]["rate_limited"]
    limiter = ratelimit.Limiter(_budget("coinbase"), tmp_path)
    seconds, refused = _pages(emulator, "coinbase", limiter, 40)
    assert refused == 0 and emulator.outcomes["coinbase"]["rate_limited"] == before
    # margin 0.8 of 10/s: 40 pages take about (40 - 1) / 8 s; a loaded machine may only slow it down
    assert seconds >= (40 - 1) / 8 - 0.3
    assert 40 / seconds >= 0.6 * 10


def test_a_429_holds_every_collector_for_retry_after_and_halves_the_pace(emulator, tmp_path):
    limiter = ratelimit.Limiter(_budget("binance"), tmp_path)
    emulator.faults.set([{"exchange": "binance", "kind": "http_error", "status": 429, "retry_after": 2, "count": 1}])
    try:
        async def run():
            import ccxt

            client = make_exchange("binance", mode="emulator", emulator_url=emulator.url, enable_rate_limit=False,
                                   asynchronous=True, limiter=limiter)
            try:
                with pytest.raises(ccxt.DDoSProtection):
                    await client.load_markets()
                refused_at = time.monotonic()
                await client.load_markets()   # waits for the Retry-After before it is sent
                return time.monotonic() - refused_at
            finally:
                await client.close()

        waited = asyncio.run(run())
    finally:
        emulator.faults.set([])
    assert waited >= 1.8
    state = limiter.snapshot()
    assert state["refusals"] == 1 and state["factor"] == pytest.approx(0.5, abs=0.05)
    assert limiter.stats.rate_limited == 1


def test_binance_used_weight_header_steers(tmp_path):
    limiter = ratelimit.Limiter(_budget("binance"), tmp_path, path_prefix="")
    url = "https://api.binance.com/api/v3/klines?symbol=BTCUSDT"
    now = time.time()
    limiter.observe(url, 200, {"X-MBX-USED-WEIGHT-1M": "3000"}, "[]")   # our own pace: no hold
    assert limiter.snapshot().get("hold_until", 0) < now
    # another client on the IP spent 5900 of 6000: hold until 500 weight (above 90 %) has drained
    limiter.observe(url, 200, {"X-MBX-USED-WEIGHT-1M": "5900"}, "[]")
    assert limiter.snapshot()["hold_until"] - now == pytest.approx(500 / 100, abs=0.5)


@pytest.mark.parametrize("exchange", ["binance", "bybit", "okx", "coinbase", "kraken"])
def test_the_limiter_meters_every_route_as_the_emulator_enforces_it(exchange, tmp_path):
    # budgets.yaml says it carries the figures the emulator enforces: for every route the emulator
    # serves (candles, markets, funding, open interest), the limiter must pace the same buckets at
    # the same cost. binance's futures routes used to be charged to the spot weight and okx's
    # derivative routes to nothing, so a derivatives backfill ran into 429s the limiter never saw.
    server = EmulatorServer(clock="2024-10-30T00:30:00Z")
    enforced = server.limits.exchanges[exchange]
    limiter = ratelimit.Limiter(_budget(exchange), tmp_path, path_prefix="")
    query = {"symbol": "BTCUSDT", "instId": "BTC-USDT", "pair": "XBTUSD"}
    for pattern in server.routes[exchange]:
        emulator_side = []
        for _, cost, b in enforced._buckets(pattern, query):
            counter = b.get("type") == "counter"
            limit = b["max"] if counter else b["limit"]
            seconds = b["max"] / b["decay_per_second"] if counter else b["seconds"]
            per_query = bool(b.get("per_query")) and pattern in b.get("per_query_endpoints", [pattern])
            emulator_side.append(("counter" if counter else "window", float(limit), float(seconds), cost, per_query))
        url = "https://example.com" + pattern.replace("*", "BTC-USD") + "?" + "&".join(f"{k}={v}" for k, v in query.items())
        limiter_side = [(b.type, float(b.limit), float(b.seconds), cost, b.per_query is not None)
                        for _, b, cost in limiter._charges(url)]
        # what a request spends, on each side: (type, limit, window seconds, cost, metered per query value)
        assert sorted(limiter_side) == sorted(emulator_side), f"{exchange} {pattern}"


def test_binance_futures_routes_are_paced_on_their_own_limits(tmp_path):
    limiter = ratelimit.Limiter(_budget("binance"), tmp_path, path_prefix="")
    funding = "https://fapi.binance.com/fapi/v1/fundingRate?symbol=BTCUSDT&limit=1000"
    klines = "https://api.binance.com/api/v3/klines?symbol=BTCUSDT&interval=1m&limit=1000"
    now = time.time()
    waits = [limiter._reserve(funding, now)[0] for _ in range(120)]
    # fundingRate shares 500 per 5 min: at 80 % that is 4 every 3 s after a burst of 50
    assert waits[49] == pytest.approx(0, abs=1e-6) and waits[119] == pytest.approx(70 * 300 / 400, rel=0.03)
    # the spot weight was not spent by them: a klines request goes at once
    assert limiter._reserve(klines, now)[0] == pytest.approx(0, abs=1e-6)
    # the used-weight header of a futures answer is the futures weight (2400 a minute), not spot's 6000
    limiter.observe(funding, 200, {"X-MBX-USED-WEIGHT-1M": "2300"}, "[]")
    assert limiter.snapshot()["holds"]["fapi_weight_1m"] - now == pytest.approx((2300 - 0.9 * 2400) / 40, abs=0.5)


def test_a_futures_hold_or_refusal_does_not_stop_spot_candles(tmp_path):
    """binance meters spot and USDⓈ-M futures apart: a futures route nearly spent by another client,
    or refused, holds and slows the futures routes only; a spot refusal still holds everything."""
    limiter = ratelimit.Limiter(_budget("binance"), tmp_path, path_prefix="")
    funding = "https://fapi.binance.com/fapi/v1/fundingRate?symbol=BTCUSDT&limit=1000"
    info = "https://fapi.binance.com/fapi/v1/exchangeInfo"
    klines = "https://api.binance.com/api/v3/klines?symbol=BTCUSDT&interval=1m&limit=1000"
    limiter.observe(info, 200, {"X-MBX-USED-WEIGHT-1M": "2390"}, "{}")
    limiter.observe(funding, 429, {"Retry-After": "30"}, '{"code":-1003}')
    now = time.time()
    assert limiter._reserve(klines, now) == (pytest.approx(0, abs=1e-6), True)   # spot goes on, unslowed
    wait, reserved = limiter._reserve(funding, now)
    assert not reserved and wait == pytest.approx(30, abs=1.0)
    assert limiter._reserve(info, now)[0] >= (2390 - 0.9 * 2400) / 40 - 0.5     # its own steer hold
    state = limiter.snapshot()
    assert state.get("hold_until", 0) < now and state.get("factor", 1.0) == 1.0
    assert state["factors"]["fapi_funding_5m"][0] == pytest.approx(0.5) and state["refusals"] == 1
    # a spot refusal: every collector of the exchange holds and halves its pace, as before
    limiter.observe(klines, 429, {"Retry-After": "5"}, '{"code":-1003}')
    state = limiter.snapshot()
    assert state["hold_until"] - time.time() == pytest.approx(5, abs=1.0) and state["factor"] == pytest.approx(0.5, abs=0.05)


def test_bybit_remaining_header_steers_until_its_reset(tmp_path):
    limiter = ratelimit.Limiter(_budget("bybit"), tmp_path, path_prefix="")
    url = "https://api.bybit.com/v5/market/kline?symbol=BTCUSDT"
    reset_ms = (time.time() + 1.5) * 1000
    limiter.observe(url, 200, {"X-Bapi-Limit": "600", "X-Bapi-Limit-Status": "400",
                               "X-Bapi-Limit-Reset-Timestamp": str(int(reset_ms))}, "{}")
    assert limiter.snapshot().get("hold_until", 0) < time.time()
    limiter.observe(url, 200, {"X-Bapi-Limit": "600", "X-Bapi-Limit-Status": "20",
                               "X-Bapi-Limit-Reset-Timestamp": str(int(reset_ms))}, "{}")
    assert limiter.snapshot()["hold_until"] == pytest.approx(reset_ms / 1000, abs=0.01)


@pytest.mark.parametrize(("exchange", "url", "body"), [
    ("bybit", "https://api.bybit.com/v5/market/kline?symbol=BTCUSDT",
     '{"retCode":10006,"retMsg":"Too many visits!","result":{}}'),
    ("bybit", "https://api.bybit.com/v5/market/kline?symbol=BTCUSDT",
     '{"retCode": 10006, "retMsg": "Too many visits!", "result": {}}'),
    ("kraken", "https://api.kraken.com/0/public/OHLC?pair=XBTUSD", '{"error":["EAPI:Rate limit exceeded"]}'),
])
def test_a_refusal_sent_with_http_200_is_recognised_from_the_budgets_markers(tmp_path, exchange, url, body):
    limiter = ratelimit.Limiter(_budget(exchange), tmp_path, path_prefix="")
    limiter.observe(url, 200, {}, body)
    assert limiter.stats.rate_limited == 1
    assert limiter.snapshot()["hold_until"] > time.time()


def test_only_the_budgets_ban_statuses_ban_and_markers_apply_to_their_exchange_only(tmp_path):
    # a 403 is bybit's ban, not binance's; bybit's refusal text in a binance body is just data
    binance = ratelimit.Limiter(_budget("binance"), tmp_path / "binance", path_prefix="")
    binance.observe("https://api.binance.com/api/v3/klines", 403, {}, "forbidden")
    binance.observe("https://api.binance.com/api/v3/klines", 200, {}, '{"retCode":10006}')
    assert binance.stats.rate_limited == 0 and binance.snapshot().get("bans", 0) == 0
    bybit = ratelimit.Limiter(replace(_budget("bybit"), ban_seconds=0.01), tmp_path / "bybit", path_prefix="")
    bybit.observe("https://api.bybit.com/v5/market/kline", 403, {}, "access too frequent")
    assert bybit.snapshot()["bans"] == 1


def test_kraken_meters_each_pair_on_its_own_counter(tmp_path):
    limiter = ratelimit.Limiter(_budget("kraken"), tmp_path, path_prefix="")
    charges = {key for key, _, _ in limiter._charges("https://api.kraken.com/0/public/OHLC?pair=XBTUSD&interval=1")}
    other = {key for key, _, _ in limiter._charges("https://api.kraken.com/0/public/OHLC?pair=ETHUSD&interval=1")}
    assert charges != other and len(charges) == len(other) == 1
    assert {k for k, _, _ in limiter._charges("https://api.kraken.com/0/public/Time")} == {"counter_ip"}


@pytest.fixture
def config_copy(tmp_path, monkeypatch):
    src = Path(__file__).resolve().parents[2] / "include" / "config"
    dst = tmp_path / "config"
    shutil.copytree(src, dst)
    monkeypatch.setenv("CANDLEFLOW_CONFIG_DIR", str(dst))
    return dst


def test_a_budget_without_its_source_is_refused_naming_the_field(config_copy):
    data = yaml.safe_load((config_copy / "budgets.yaml").read_text())
    del data["exchanges"]["bybit"]["source"]
    (config_copy / "budgets.yaml").write_text(yaml.safe_dump(data))
    with pytest.raises(ConfigError, match=r"exchanges\.bybit\.source"):
        load_budgets()


def test_a_margin_above_the_published_limit_is_refused(config_copy):
    data = yaml.safe_load((config_copy / "budgets.yaml").read_text())
    data["exchanges"]["okx"]["margin"] = 1.2
    (config_copy / "budgets.yaml").write_text(yaml.safe_dump(data))
    with pytest.raises(ConfigError, match=r"exchanges\.okx\.margin"):
        load_budgets()


def test_an_unknown_budget_choice_is_refused():
    with pytest.raises(ConfigError, match="params.budget.*'ccxt'.*'published'"):
        parse_budget("fast", "params.budget")
    assert ratelimit.limiter_for("okx", CollectConfig(budget="ccxt")).margin == load_budgets()[2]
    assert ratelimit.limiter_for("okx", CollectConfig(budget="published")).margin == _budget("okx").margin


def test_sync_clients_share_the_budget_too(emulator, tmp_path):
    """A synchronous ccxt client (e.g. another DAG's collector) goes through the same shared limiter."""
    import threading

    import ccxt

    emulator.limits.reset()
    before = emulator.outcomes["coinbase"]["rate_limited"]
    refused, errors = [], []

    def collect(offset: int) -> None:
        client = make_exchange("coinbase", mode="emulator", emulator_url=emulator.url, enable_rate_limit=False,
                               limiter=ratelimit.Limiter(_budget("coinbase"), tmp_path))
        try:
            client.load_markets()
            for i in range(12):
                client.fetch_ohlcv("BTC/USD", "1m", since=1729900800000 + (offset + i) * 300 * 60_000, limit=300)
        except ccxt.RateLimitExceeded as exc:
            refused.append(exc)
        except Exception as exc:  # noqa: BLE001 - reported by the assertion
            errors.append(exc)

    threads = [threading.Thread(target=collect, args=(k * 100,)) for k in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == [] and refused == []
    assert emulator.outcomes["coinbase"]["rate_limited"] == before
