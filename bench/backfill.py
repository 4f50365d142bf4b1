"""Backfill benchmark: the full universe on the exchange emulator, all five exchanges at once.

    .venv/bin/python bench/backfill.py [--timeframe 1m] [--days 10 | --hours H] [--symbols N]
                                       [--exchanges binance,okx,...] [--budget ccxt|published]
                                       [--min-seconds S] [--emulator subprocess|inprocess]
                                       [--workers process|loop]
                                       [--no-compare] [--no-calibrate]

What it does (issue 3 "Speed", issue 6 "published limits"):

- starts the emulator (rate limits enforced, clock 2024-10-30T00:30:00Z) as
  `python -m candleflow.emulator` in its own process (default: a real exchange is not in the
  collector's process, and the server must not compete with it for one interpreter's GIL) or, with
  `--emulator inprocess`, as an `EmulatorServer` in this process;
- one process per exchange (`--workers process`, default: as one Airflow task per exchange runs;
  `--workers loop` puts them all in this process's event loop), each with one async ccxt client
  (`make_exchange(asynchronous=True)`) shared by every coroutine of that exchange, markets loaded
  once, then `collect_pair_async` for every symbol of its window [start, end) (end = the
  emulated clock's UTC midnight; start = end - days, or earlier with `--min-seconds`, below),
  `collect.pairs_in_flight` symbols and `collect.requests_in_flight` requests at once; all
  exchanges start their timed window together and share one limiter state directory;
- `--min-seconds S` (`--budget published` only; default 60; 0 = the plain `--days` window for all,
  as `--budget ccxt` always runs: issue 3's fixed range): a run shorter than a few of an exchange's rate-limit windows measures
  its burst, not its sustained rate (binance's 6000 weight / 60 s holds a 10-day backfill whole;
  bybit's 421 pages at 96/s last 5 s, mostly start-up and the initial burst), while okx and
  coinbase already take minutes over 10 days, so no single window fits every exchange. With S > 0
  each exchange's window is widened (never narrowed) back from the same end, so that at its
  published budget it lasts at least max(S, 3 × its binding bucket's window): pages = that × its
  pages/s (margin × limit / window / cost of a candle request in the tightest budgets.yaml window
  bucket metering its candle route), days = pages × page size / (symbols × candles per day), rounded up to
  whole hours. Kraken keeps the base window (its per-pair counter never binds; its OHLC serves 720
  candles whatever the window). The windows are printed before the run and in each report; every
  pass (the ccxt-pace comparison too) backfills and checks the same per-exchange windows;
- afterwards it calibrates the emulator itself (`emu/s`): each exchange's recorded candle-page
  request replayed by raw HTTP clients, limits off, all exchanges at once, so `ach/emu` shows
  whether the client or the emulator (its page rendering on this machine's cores) limits a run;
- `--budget ccxt` (default): ccxt's throttle paces (`enableRateLimit`), the limiter of
  `candleflow.ratelimit` only steers by the exchanges' headers and handles refusals. Per exchange:
  candles, requests, refusals (429 / bans, from the emulator's `/__admin/stats`), wall seconds,
  candles/s, requests/s, and achieved ÷ bound, where
      bound = 1000 / (client.rateLimit × cost ccxt charges the OHLCV call)   [requests/s]
  is what ccxt's own throttle permits for the candle endpoint (cost recorded from
  `calculate_rate_limiter_cost` on the live client); achieved = OHLCV requests / wall seconds.
  Last line `backfill_efficiency=<min over exchanges of achieved/bound>`;
- `--budget published`: ccxt's throttle off, the limiter paces at `margin` × each exchange's
  published limit (include/config/budgets.yaml). Per exchange and metered bucket: cost units
  spent per second ÷ the published rate (binance weight/min, bybit requests/5 s, okx per endpoint
  per 2 s, coinbase per second, kraken's counter per pair), the 429s and bans the emulator
  counted, and the wall time beside the same run at ccxt's pace (run first, unless
  `--no-compare`). Last line `published_limit_efficiency=<min over exchanges>`;
- correctness: every listed pair got exactly the expected candles (one per interval from its
  exchange's window start — or the pair's listing, or kraken's 720-candle horizon — to the window
  end; no gap, no duplicate, no conflicting twin), and the pairs an exchange does not list are the
  emulator's "not listed" ones;
- the projected wall time of a 3-year 1m backfill of 30 symbols at the achieved rates and at the bound.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import math
import os
import socket
import subprocess
import sys
import tempfile
import time
import urllib.parse
import urllib.request
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime, timedelta
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "include"))

from candleflow import ratelimit  # noqa: E402
from candleflow.collect import collect_pair_async, make_exchange  # noqa: E402
from candleflow.config import (  # noqa: E402
    BUDGETS,
    TIMEFRAME_MS,
    Budget,
    CollectConfig,
    load_budgets,
    load_pipeline,
    load_universe,
    load_yaml,
)

CLOCK = "2024-10-30T00:30:00Z"
EXCHANGES = ("binance", "coinbase", "kraken", "bybit", "okx")
OHLCV_PATHS = ("klines", "kline", "candles", "OHLC")   # the candle endpoint's path ends with one of these
THREE_YEARS_1M = 3 * 365 * 1440                         # candles per pair
# each exchange's candle routes on the emulator, as the limiter sees them (its path prefix stripped;
# coinbase's product id is an example): the budgets.yaml buckets metering these pace a backfill
CANDLE_ROUTES = {
    "binance": ("/api/v3/klines",),
    "bybit": ("/v5/market/kline",),
    "okx": ("/api/v5/market/history-candles", "/api/v5/market/candles"),
    "coinbase": ("/api/v3/brokerage/market/products/BTC-USD/candles",),
    "kraken": ("/0/public/OHLC",),
}


@dataclass
class ExchangeRun:
    exchange: str
    rate_limit_ms: float = 0.0
    ohlcv_endpoint: str = ""
    ohlcv_cost: float = 0.0
    page_size: int = 0
    setup_s: float = 0.0                 # client + load_markets, before the timed window
    wall_s: float = 0.0
    candles: int = 0
    expected: int = 0
    pairs: int = 0
    pairs_ok: int = 0
    skipped: dict[str, str] = field(default_factory=dict)
    problems: list[str] = field(default_factory=list)
    stats_before: dict = field(default_factory=dict)
    stats_after: dict = field(default_factory=dict)
    routes_before: dict = field(default_factory=dict)
    routes_after: dict = field(default_factory=dict)
    # client-side accounting, timed window only
    throttle_sleep_s: float = 0.0
    http_s: float = 0.0
    ohlcv_calls: int = 0
    ohlcv_call_s: float = 0.0            # wall inside fetch_ohlcv (throttle sleep + HTTP + parse)
    charged_ms: float = 0.0              # Σ rateLimit × cost over every request ccxt throttled
    charged_ohlcv_ms: float = 0.0
    costs: dict[str, float] = field(default_factory=dict)
    error: str | None = None
    limiter: object = None               # candleflow.ratelimit.Limiter of this exchange
    started_at: float = 0.0              # epoch seconds: the timed window (process workers)
    sample_url: str = ""                 # one candle-page request of the run
    ceiling: float = 0.0                 # candle pages/s the emulator serves this exchange at most (calibrated)
    ended_at: float = 0.0
    start: datetime | None = None        # this exchange's window [start, end) (see plan_windows)
    end: datetime | None = None
    window_note: str = ""                # why the window is what it is (pace, target duration)

    # --- derived -------------------------------------------------------------------------------
    def delta(self, key: str) -> int:
        return self.stats_after.get(key, 0) - self.stats_before.get(key, 0)

    @property
    def requests(self) -> int:
        return self.delta("requests")

    @property
    def ohlcv_requests(self) -> int:
        return sum(n - self.routes_before.get(route, 0) for route, n in self.routes_after.items()
                   if route.rstrip("/").endswith(OHLCV_PATHS))

    @property
    def bound(self) -> float:
        return 1000.0 / (self.rate_limit_ms * self.ohlcv_cost) if self.rate_limit_ms and self.ohlcv_cost else 0.0

    @property
    def achieved(self) -> float:
        return self.ohlcv_requests / self.wall_s if self.wall_s else 0.0

    @property
    def efficiency(self) -> float:
        return self.achieved / self.bound if self.bound else 0.0

    def published(self) -> list[tuple[str, float, int, float, float]]:
        """Per metered bucket: (name, spent units, keys, published units/s over those keys, spent/s ÷ it).
        A per-endpoint or per-pair bucket allows its rate for each key the run touched."""
        out = []
        if self.limiter is None or not self.wall_s:
            return out
        keys = self.limiter.snapshot().get("tat", {})
        for bucket in self.limiter.budget.buckets:
            spent = self.limiter.stats.spent.get(bucket.name, 0.0)
            if not spent:
                continue
            n = max(1, sum(1 for k in keys if k.split("|", 1)[0] == bucket.name))
            allowed = bucket.rate * n
            margin = self.limiter.margin
            burst = (margin if bucket.type == "counter" else (1 - margin) / 2) * bucket.limit
            # a bucket whose every key spent no more than its burst never made anyone wait: no
            # limit was approached there (kraken: one OHLC request per pair, each on its own counter)
            binds = spent / n > burst
            out.append((bucket.name, spent, n, allowed, spent / self.wall_s / allowed if binds else None))
        return out

    @property
    def published_efficiency(self) -> float | None:
        """Achieved ÷ published limit of the binding bucket the run leaned on most; None if none bound."""
        return max((e for *_, e in self.published() if e is not None), default=None)


# --- emulator ------------------------------------------------------------------------------------

class Emulator:
    """The emulator in this process (default) or in a child process; either way stats come over HTTP."""

    def __init__(self, how: str, clock: str):
        self.how, self.clock, self.server, self.proc = how, clock, None, None

    def __enter__(self) -> Emulator:
        if self.how == "inprocess":
            from candleflow.emulator import EmulatorServer

            self.server = EmulatorServer(clock=self.clock, enforce_limits=True).start()
            self.url = self.server.url
        else:
            with socket.socket() as s:
                s.bind(("127.0.0.1", 0))
                port = s.getsockname()[1]
            env = {**os.environ, "PYTHONPATH": str(ROOT / "include") + os.pathsep + os.environ.get("PYTHONPATH", "")}
            self.proc = subprocess.Popen([sys.executable, "-m", "candleflow.emulator", "--port", str(port),
                                          "--clock", self.clock, "--limits", "on"],
                                         env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
            self.url = f"http://127.0.0.1:{port}"
            for _ in range(200):
                try:
                    self.admin("health")
                    break
                except OSError:
                    time.sleep(0.05)
            else:
                raise SystemExit(f"the emulator subprocess did not answer on {self.url}")
        return self

    def __exit__(self, *exc):
        if self.server is not None:
            self.server.stop()
        if self.proc is not None:
            self.proc.terminate()
            self.proc.wait(timeout=10)

    def admin(self, what: str) -> dict:
        with urllib.request.urlopen(f"{self.url}/__admin/{what}", timeout=10) as resp:
            return json.loads(resp.read())

    def post(self, what: str, body: dict) -> dict:
        req = urllib.request.Request(f"{self.url}/__admin/{what}", data=json.dumps(body).encode(), method="POST")
        with urllib.request.urlopen(req, timeout=10) as resp:
            return json.loads(resp.read())

    def not_listed(self) -> dict[str, set[str]]:
        """{exchange: symbols the emulated exchange does not list} from include/config/emulator.yaml."""
        out: dict[str, set[str]] = {ex: set() for ex in EXCHANGES}
        for sym, per_ex in (load_yaml("emulator.yaml").get("listing_exceptions") or {}).items():
            for ex, first in (per_ex or {}).items():
                if str(first).strip().lower() == "not listed":
                    out.setdefault(ex, set()).add(str(sym).upper())
        return out


# --- one exchange --------------------------------------------------------------------------------

def instrument(client, run: ExchangeRun, timing: dict) -> None:
    """Record what ccxt charges its throttle, how long it sleeps and how long HTTP takes (summed
    over concurrent requests, so the parts may exceed the wall time)."""
    orig_cost, orig_throttle, orig_fetch, orig_ohlcv = (client.calculate_rate_limiter_cost, client.throttle,
                                                        client.fetch, client.fetch_ohlcv)

    def cost(api, method, path, params, config={}):  # noqa: B006 - ccxt's signature
        charged = orig_cost(api, method, path, params, config)
        run.costs[str(path)] = charged
        if str(path).endswith(OHLCV_PATHS):
            run.ohlcv_endpoint, run.ohlcv_cost = str(path), float(charged)
        if timing["on"]:
            run.charged_ms += client.rateLimit * charged
            if str(path).endswith(OHLCV_PATHS):
                run.charged_ohlcv_ms += client.rateLimit * charged
        return charged

    async def throttle(c=None):
        t = time.perf_counter()
        try:
            return await orig_throttle(c)
        finally:
            if timing["on"]:
                run.throttle_sleep_s += time.perf_counter() - t

    async def fetch(*args, **kwargs):
        t = time.perf_counter()
        url = str(args[0] if args else kwargs.get("url", ""))
        if not run.sample_url and urllib.parse.urlsplit(url).path.rstrip("/").endswith(OHLCV_PATHS):
            run.sample_url = url                # replayed by the emulator-ceiling calibration
        try:
            return await orig_fetch(*args, **kwargs)
        finally:
            if timing["on"]:
                run.http_s += time.perf_counter() - t

    async def fetch_ohlcv(*args, **kwargs):
        t = time.perf_counter()
        try:
            return await orig_ohlcv(*args, **kwargs)
        finally:
            run.ohlcv_calls += 1
            run.ohlcv_call_s += time.perf_counter() - t

    client.calculate_rate_limiter_cost, client.throttle = cost, throttle
    client.fetch_ohlcv = fetch_ohlcv
    # the limiter (installed later) wraps this fetch: HTTP time excludes the limiter's waits
    client.fetch = fetch


def check_pair(result, start_ms: int, end_ms: int, tf_ms: int) -> tuple[int, str | None]:
    """(expected candles, problem or None): one candle per interval, nothing else."""
    ts = [int(t) for t in result.candles["ts"].astype("int64").to_numpy()] if len(result.candles) else []
    lo = start_ms
    if result.served_from_ms is not None:          # kraken: its OHLC endpoint's horizon
        lo = max(start_ms, result.served_from_ms)
        # collect_pair derives the horizon from fetch_time, read ~1 s (ccxt's spacing) before the
        # OHLC request; if the emulated clock passed a candle boundary in between, the 720 most
        # recent candles start one (rarely two) candles later. That is the horizon moving, not a gap.
        if ts and lo < ts[0] <= lo + 2 * tf_ms:
            lo = ts[0]
    hi = result.closed_end_ms if result.closed_end_ms is not None else end_ms
    expected = max(0, (hi - lo) // tf_ms)
    if len(ts) != len(set(ts)):
        return expected, f"{len(ts) - len(set(ts))} duplicate timestamp(s)"
    want = list(range(lo, hi, tf_ms))
    if ts != want:
        missing = sorted(set(want) - set(ts))
        extra = sorted(set(ts) - set(want))
        first = datetime.fromtimestamp(missing[0] / 1000, UTC).isoformat() if missing else "-"
        return expected, f"{len(ts)} of {expected} candles: {len(missing)} missing (first {first}), {len(extra)} unexpected"
    if result.missing != 0 and result.served_from_ms is None:
        return expected, f"collect_pair reports {result.missing} missing"
    return expected, None


async def setup_exchange(run: ExchangeRun, emu: Emulator, cfg: CollectConfig, budget: str, state_dir: str):
    """The exchange's async client (limiter installed), markets loaded; None if that failed."""
    timing = {"on": False}
    try:
        t0 = time.perf_counter()
        limiter = ratelimit.limiter_for(run.exchange, replace(cfg, budget=budget), state_dir=state_dir)
        client = make_exchange(run.exchange, mode="emulator", emulator_url=emu.url,
                               enable_rate_limit=budget == "ccxt", timeout_ms=cfg.timeout_ms, asynchronous=True)
        instrument(client, run, timing)
        limiter.install(client)
        run.limiter = limiter
        await client.load_markets()
        run.rate_limit_ms = float(client.rateLimit)
        run.setup_s = time.perf_counter() - t0
        return client, timing
    except Exception as exc:  # noqa: BLE001 - reported, the other exchanges go on
        run.error = f"setup: {type(exc).__name__}: {exc}"
        return None, timing


async def run_exchange(run: ExchangeRun, client, timing: dict, emu: Emulator, symbols: list[str], aliases: dict,
                       quotes, timeframe: str, cfg: CollectConfig) -> None:
    """The timed backfill of every symbol over this exchange's window [run.start, run.end), then its check."""
    start, end = run.start, run.end
    stats = await asyncio.to_thread(emu.admin, "stats")
    run.stats_before = stats["exchanges"][run.exchange]
    run.routes_before = {k: v for k, v in stats.items() if k.startswith(run.exchange + " ")}
    run.limiter.stats = ratelimit.Stats()   # setup requests (markets) are not part of the timed window
    timing["on"] = True
    tf_ms = TIMEFRAME_MS[timeframe]
    start_ms, end_ms = int(start.timestamp() * 1000), int(end.timestamp() * 1000)
    pairs = asyncio.Semaphore(cfg.pairs_in_flight)

    async def one(symbol: str):
        async with pairs:
            try:
                return symbol, await collect_pair_async(client, symbol, timeframe, start, end, quotes=quotes,
                                                        names=[symbol, *aliases.get(symbol, ())],
                                                        page_size=run.page_size, cfg=cfg)
            except Exception as exc:  # noqa: BLE001
                return symbol, exc

    t0 = time.perf_counter()
    results = await asyncio.gather(*(one(symbol) for symbol in symbols))
    run.wall_s = time.perf_counter() - t0
    timing["on"] = False
    for symbol, result in results:
        if isinstance(result, Exception):
            run.pairs += 1
            run.problems.append(f"{symbol}: {type(result).__name__}: {str(result)[:200]}")
            continue
        if result.skipped_reason:
            run.skipped[symbol] = result.skipped_reason
            continue
        run.pairs += 1
        expected, problem = check_pair(result, start_ms, end_ms, tf_ms)
        run.expected += expected
        run.candles += len(result.candles)
        if problem:
            run.problems.append(f"{symbol} ({result.market}): {problem}")
        else:
            run.pairs_ok += 1
    stats = await asyncio.to_thread(emu.admin, "stats")
    run.stats_after = stats["exchanges"][run.exchange]
    run.routes_after = {k: v for k, v in stats.items() if k.startswith(run.exchange + " ")}


class EmulatorClient:
    """The admin API of an emulator started elsewhere (the worker processes' view of it)."""

    def __init__(self, url: str):
        self.url = url

    admin = Emulator.admin
    post = Emulator.post


def _exchange_process(run: ExchangeRun, url: str, args, cfg: CollectConfig, budget: str, state_dir: str,
                      go) -> ExchangeRun:
    """One exchange in its own process (as one Airflow task per exchange runs it)."""
    logging.basicConfig(level=logging.WARNING if args.verbose else logging.ERROR,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    emu, universe = EmulatorClient(url), load_universe()

    async def main():
        client, timing = await setup_exchange(run, emu, cfg, budget, state_dir)
        go.wait()                            # every exchange starts its timed window together
        run.started_at = time.time()
        if client is None:
            return
        try:
            await run_exchange(run, client, timing, emu, args.symbol_list, universe.aliases,
                               universe.exchanges[run.exchange].quotes, args.timeframe, cfg)
        finally:
            await client.close()
        run.limiter.alert = None

    asyncio.run(main())
    run.ended_at = time.time()
    return run


def run_processes(runs: list[ExchangeRun], emu: Emulator, args, cfg: CollectConfig,
                  budget: str) -> tuple[list[ExchangeRun], float]:
    """One process per exchange, all at once, one limiter state directory shared between them."""
    import multiprocessing
    from concurrent.futures import ProcessPoolExecutor

    state_dir = tempfile.mkdtemp(prefix=f"bench-limiter-{budget}-")
    ctx = multiprocessing.get_context("spawn")
    with ctx.Manager() as manager:
        go = manager.Barrier(len(runs))
        print(f"backfilling {len(args.symbol_list)} symbols × {len(runs)} exchanges, {args.timeframe}, "
              f"{window_text(runs)}, budget {budget}, one process per exchange ...", flush=True)
        with ProcessPoolExecutor(max_workers=len(runs), mp_context=ctx) as pool:
            futures = [pool.submit(_exchange_process, r, emu.url, args, cfg, budget, state_dir, go)
                       for r in runs]
            done = [f.result() for f in futures]
    wall = max(r.ended_at for r in done) - min(r.started_at for r in done)
    return done, wall


async def run_all(runs: list[ExchangeRun], emu: Emulator, args, universe, cfg: CollectConfig,
                  budget: str) -> float:
    """Every exchange at once in one event loop; returns the wall time until the last finished."""
    state_dir = tempfile.mkdtemp(prefix=f"bench-limiter-{budget}-")
    setups = await asyncio.gather(*(setup_exchange(r, emu, cfg, budget, state_dir) for r in runs))
    print(f"backfilling {len(args.symbol_list)} symbols × {len(runs)} exchanges, {args.timeframe}, "
          f"{window_text(runs)}, budget {budget} ...", flush=True)
    t0 = time.perf_counter()
    try:
        await asyncio.gather(*(run_exchange(r, client, timing, emu, args.symbol_list, universe.aliases,
                                            universe.exchanges[r.exchange].quotes, args.timeframe, cfg)
                               for r, (client, timing) in zip(runs, setups, strict=True) if client is not None))
    finally:
        for client, _ in setups:
            if client is not None:
                await client.close()
    return time.perf_counter() - t0


def calibrate(emu: Emulator, runs: list[ExchangeRun], in_flight: int, seconds: float = 4.0) -> None:
    """The emulator's own ceiling: each exchange's recorded candle-page request replayed by
    `in_flight` raw HTTP clients (no ccxt, limits off), all exchanges at once as in the run.
    Achieved ÷ ceiling shows whether the client or the emulator (its page rendering, one process
    on this machine's cores) is what limits a run."""
    import aiohttp

    async def hammer(run: ExchangeRun) -> None:
        count, stop = 0, time.perf_counter() + seconds
        async with aiohttp.ClientSession() as session:
            async def worker():
                nonlocal count
                while time.perf_counter() < stop:
                    async with session.get(run.sample_url) as resp:
                        await resp.read()
                        count += resp.status == 200
            await asyncio.gather(*(worker() for _ in range(in_flight)))
        run.ceiling = count / seconds

    emu.post("limits", {"enforce": False})
    try:
        asyncio.run(_gather(*(hammer(r) for r in runs if r.sample_url)))
    finally:
        emu.post("limits", {"enforce": True, "reset": True})


async def _gather(*coros):
    return await asyncio.gather(*coros)


# --- windows -------------------------------------------------------------------------------------

def binding_bucket(budget: Budget) -> tuple[str, float, float, float] | None:
    """(name, window seconds, cost per candle request, candle pages/s at margin × its published
    limit) of the window bucket that paces this exchange's candle pages most tightly (okx: its
    history-candles endpoint; coinbase: the public per-second bucket); None if no window bucket
    meters them (kraken: its OHLC counter is per pair, and one request per pair never waits)."""
    best = None
    for bucket in budget.buckets:
        if bucket.type != "window" or bucket.per_query:
            continue
        for route in CANDLE_ROUTES.get(budget.exchange, ()):
            cost = bucket.cost(route)
            if cost:
                pages_per_s = budget.margin * bucket.rate / cost
                if best is None or pages_per_s < best[3]:
                    best = (bucket.name, bucket.seconds, cost, pages_per_s)
    return best


def plan_windows(runs: list[ExchangeRun], base_start: datetime, end: datetime, *, min_seconds: float,
                 symbols: int, timeframe: str) -> None:
    """Each run's window [start, end): the base window, widened back from `end` (never narrowed) so
    that at its published budget it lasts at least max(min_seconds, 3 × its binding bucket's window):
    pages = that × pages/s; days = pages × page size / (symbols × candles per day), whole hours.
    A run shorter than a few of an exchange's windows measures its burst, not its rate."""
    budgets = load_budgets()[0] if min_seconds > 0 else {}
    tf_ms = TIMEFRAME_MS[timeframe]
    for r in runs:
        r.start, r.end = base_start, end
        if min_seconds <= 0:
            continue
        bind = binding_bucket(budgets[r.exchange]) if r.exchange in budgets else None
        if bind is None:
            r.window_note = "no window bucket meters its candle requests (per-pair counter): base window"
            continue
        name, bucket_s, cost, pages_per_s = bind
        seconds = max(min_seconds, 3 * bucket_s)
        pages = math.ceil(seconds * pages_per_s - 1e-9)
        hours = math.ceil(pages * r.page_size * 24 * tf_ms / (symbols * 86_400_000) - 1e-9)
        start = end - timedelta(hours=hours)
        start = datetime.fromtimestamp(int(start.timestamp() * 1000) // tf_ms * tf_ms / 1000, UTC)
        pace = f"published budget {pages_per_s:.2f} pages/s ({name}: margin × limit / {bucket_s:g} s / cost {cost:g})"
        if start < base_start:
            r.start = start
            r.window_note = f"≥ {seconds:g} s at {pace} = {pages} pages of {r.page_size}: widened"
        else:
            r.window_note = f"≥ {seconds:g} s at {pace} = {pages} pages of {r.page_size}: the base window already has that"


def _uniform(runs: list[ExchangeRun]) -> bool:
    return len({(r.start, r.end) for r in runs}) <= 1 and not any(r.window_note for r in runs)


def window_text(runs: list[ExchangeRun], where: str = "above") -> str:
    """'start .. end' when every exchange has the same plain window (as without --min-seconds)."""
    if _uniform(runs) and runs:
        return f"{runs[0].start.isoformat()} .. {runs[0].end.isoformat()}"
    return f"per-exchange windows (listed {where})"


def window_lines(runs: list[ExchangeRun]) -> list[str]:
    if _uniform(runs):
        return []
    return [f"  {r.exchange:9} {r.start.isoformat()} .. {r.end.isoformat()} "
            f"({(r.end - r.start) / timedelta(days=1):.2f} d)  {r.window_note}" for r in runs]


# --- report --------------------------------------------------------------------------------------

def fmt_duration(seconds: float) -> str:
    if seconds != seconds or seconds == float("inf"):
        return "n/a"
    h, rem = divmod(int(round(seconds)), 3600)
    m, s = divmod(rem, 60)
    return f"{h}h{m:02d}m" if h else f"{m}m{s:02d}s"


def report(runs: list[ExchangeRun], not_listed: dict[str, set[str]], args, total_wall: float,
           timeframe: str) -> float:
    print()
    print(f"backfill {timeframe} {window_text(runs, 'below')} ({len(args.symbol_list)} symbols), "
          f"emulator {args.emulator}, workers {args.workers}, clock {CLOCK}, budget {args.budget_label}"
          )
    for line in window_lines(runs):
        print(line)
    head = (f"{'exchange':9} {'pairs':>5} {'candles':>9} {'req':>5} {'ohlcv':>5} {'wall s':>7} {'candles/s':>10} "
            f"{'req/s':>6} {'ohlcv/s':>7} {'bound/s':>7} {'ach/bnd':>7} {'429':>4} {'ban':>4} {'emu/s':>6} {'ach/emu':>7}")
    print(head)
    print("-" * len(head))
    for r in runs:
        if r.error:
            print(f"{r.exchange:9} ERROR {r.error}")
            continue
        print(f"{r.exchange:9} {r.pairs:>5} {r.candles:>9} {r.requests:>5} {r.ohlcv_requests:>5} {r.wall_s:>7.1f} "
              f"{r.candles / r.wall_s if r.wall_s else 0:>10.0f} {r.requests / r.wall_s if r.wall_s else 0:>6.2f} "
              f"{r.achieved:>7.2f} {r.bound:>7.2f} {r.efficiency:>7.3f} {r.delta('rate_limited'):>4} "
              f"{r.delta('banned'):>4} {r.ceiling:>6.1f} {r.achieved / r.ceiling if r.ceiling else 0:>7.3f}")
    ok = [r for r in runs if not r.error]
    candles = sum(r.candles for r in ok)
    reqs = sum(r.requests for r in ok)
    print("-" * len(head))
    print(f"{'overall':9} {sum(r.pairs for r in ok):>5} {candles:>9} {reqs:>5} {sum(r.ohlcv_requests for r in ok):>5} "
          f"{total_wall:>7.1f} {candles / total_wall if total_wall else 0:>10.0f} {reqs / total_wall if total_wall else 0:>6.2f}"
          f"{'':>25} {sum(r.delta('rate_limited') for r in ok):>4} {sum(r.delta('banned') for r in ok):>4}")

    print("\nbound = 1000 / (ccxt rateLimit ms × cost ccxt charges the OHLCV call); achieved = OHLCV requests / wall;"
          "\nemu/s = candle pages/s the emulator itself serves (raw clients, limits off, all exchanges at once)")
    for r in ok if args.budget_label == "ccxt" else []:   # published: ccxt's throttle is off, no such bound
        print(f"  {r.exchange:9} {r.ohlcv_endpoint:48} rateLimit {r.rate_limit_ms:g} ms × cost {r.ohlcv_cost:g} "
              f"= {r.rate_limit_ms * r.ohlcv_cost:g} ms per page of {r.page_size} → {r.bound:.2f} req/s")

    print("\nwhere the wall time went (timed window; setup = client + load_markets, not timed):")
    print(f"  {'exchange':9} {'setup s':>7} {'throttle':>8} {'http':>6} {'other':>6}  {'ms/ohlcv':>8} {'spacing':>7}  "
          f"{'budget used':>11} {'by ohlcv':>8}  other charged requests")
    for r in ok:
        other = r.wall_s - r.throttle_sleep_s - r.http_s
        per_call = 1000 * r.ohlcv_call_s / r.ohlcv_calls if r.ohlcv_calls else 0
        used = r.charged_ms / 1000 / r.wall_s if r.wall_s else 0
        by_ohlcv = r.charged_ohlcv_ms / r.charged_ms if r.charged_ms else 0
        extras = {route.split(" ", 1)[1]: n - r.routes_before.get(route, 0) for route, n in r.routes_after.items()
                  if not route.rstrip("/").endswith(OHLCV_PATHS) and n - r.routes_before.get(route, 0)}
        extra_txt = ", ".join(f"{k} ×{v} (cost {r.costs.get(_ccxt_path(k, r.costs), '?')})" for k, v in extras.items())
        print(f"  {r.exchange:9} {r.setup_s:>7.2f} {r.throttle_sleep_s:>7.1f}s {r.http_s:>5.1f}s {other:>5.1f}s  "
              f"{per_call:>8.1f} {r.rate_limit_ms * r.ohlcv_cost:>5.0f}ms  {used:>10.0%} {by_ohlcv:>8.0%}  {extra_txt or '-'}")
    print("  (ms/ohlcv = wall of one fetch_ohlcv call incl. its throttle wait; budget used = Σ rateLimit×cost of all "
          "requests / wall; by ohlcv = the share of that spent on candle pages)")

    print("\ncorrectness (every listed pair: one candle per interval over the window, no gap, no duplicate):")
    all_ok = True
    for r in ok:
        unexpected_skip = sorted(set(r.skipped) - not_listed.get(r.exchange, set()))
        unexpected_list = sorted((not_listed.get(r.exchange, set()) & set(args.symbol_list)) - set(r.skipped))
        good = not r.problems and not unexpected_skip and not unexpected_list
        all_ok &= good
        note = " (kraken: its OHLC serves the 720 most recent candles; expected = that horizon ∩ window)" \
            if r.exchange == "kraken" else ""
        print(f"  {r.exchange:9} {'OK ' if good else 'BAD'} {r.pairs_ok}/{r.pairs} pairs exact, {r.candles}/{r.expected} "
              f"candles; not listed: {', '.join(sorted(r.skipped)) or '-'}{note}")
        for p in r.problems:
            print(f"      problem: {p}")
        if unexpected_skip:
            print(f"      skipped but the emulator lists them: {', '.join(unexpected_skip)}")
        if unexpected_list:
            print(f"      the emulator does not list these, yet they were collected: {', '.join(unexpected_list)}")
    print(f"  verdict: {'all pairs complete' if all_ok else 'INCOMPLETE — see problems above'}")

    print(f"\nprojected wall time, 3 years of 1m × 30 symbols ({THREE_YEARS_1M * 30:,} candles per exchange):")
    slowest_achieved = slowest_bound = (0.0, "")
    for r in ok:
        if r.exchange == "kraken":
            print(f"  {r.exchange:9} n/a: its OHLC endpoint serves only the 720 most recent candles "
                  f"(deep history must come from trades or be reported as a gap)")
            continue
        cps = r.candles / r.wall_s if r.wall_s else 0
        at_achieved = THREE_YEARS_1M * 30 / cps if cps else float("inf")
        pages = -(-THREE_YEARS_1M // r.page_size) * 30
        at_bound = pages / r.bound if r.bound else float("inf")
        slowest_achieved = max(slowest_achieved, (at_achieved, r.exchange))
        slowest_bound = max(slowest_bound, (at_bound, r.exchange))
        print(f"  {r.exchange:9} {fmt_duration(at_achieved):>8} at {cps:,.0f} candles/s   "
              f"(at the bound: {pages:,} pages → {fmt_duration(at_bound)})")
    if slowest_achieved[1]:
        print(f"  all exchanges in parallel: {fmt_duration(slowest_achieved[0])} at the achieved rates "
              f"({slowest_achieved[1]} decides); {fmt_duration(slowest_bound[0])} at the bound ({slowest_bound[1]})")
    return min((r.efficiency for r in runs), default=0.0) if all(not r.error for r in runs) else 0.0


def _ccxt_path(route: str, costs: dict[str, float]) -> str:
    """The ccxt path for an emulator route ('/api/v3/time' → 'time'), for the cost column."""
    for path in sorted(costs, key=len, reverse=True):
        if route.rstrip("/").endswith(path.split("{")[0].rstrip("/")) or route.rstrip("/").endswith(path):
            return path
    return route


# --- main ----------------------------------------------------------------------------------------

def report_published(runs: list[ExchangeRun], ccxt_runs: list[ExchangeRun] | None, total_wall: float,
                     ccxt_wall: float | None) -> float:
    print("\npublished budget: cost units spent per second ÷ the published limit (include/config/budgets.yaml; "
          "the limiter's margin is not applied to this ratio)")
    head = (f"  {'exchange':9} {'bucket':20} {'spent':>8} {'keys':>4} {'limit/s':>8} {'spent/s':>8} {'ach/pub':>7} "
            f"{'margin':>6} {'429':>4} {'ban':>4} {'wall s':>7} {'ccxt wall s':>11}")
    print(head)
    ccxt_by = {r.exchange: r for r in (ccxt_runs or [])}
    for r in runs:
        if r.error:
            print(f"  {r.exchange:9} ERROR {r.error}")
            continue
        other = ccxt_by.get(r.exchange)
        for i, (name, spent, n, allowed, eff) in enumerate(r.published()):
            tail = (f"{r.delta('rate_limited'):>4} {r.delta('banned'):>4} {r.wall_s:>7.1f} "
                    f"{(f'{other.wall_s:.1f}' if other else '-'):>11}") if i == 0 else ""
            eff_txt = f"{eff:>7.3f}" if eff is not None else f"{'n/a':>7}"
            print(f"  {r.exchange if i == 0 else '':9} {name:20} {spent:>8.0f} {n:>4} {allowed:>8.2f} "
                  f"{spent / r.wall_s:>8.2f} {eff_txt} {r.limiter.margin:>6.2f} {tail}")
    print(f"  full universe, all exchanges at once: {total_wall:.1f} s at the published budget"
          + (f" vs {ccxt_wall:.1f} s at ccxt's pace (published ÷ ccxt wall = {total_wall / ccxt_wall:.2f})"
             if ccxt_wall else ""))
    print("  (ach/pub of an exchange = its most-used binding bucket; a per-pair or per-endpoint bucket allows its "
          "rate once per key the run touched; n/a = no key spent more than its burst, so the limit never bound)")
    ok = [r for r in runs if not r.error]
    effs = [r.published_efficiency for r in ok if r.published_efficiency is not None]
    unbound = [r.exchange for r in ok if r.published_efficiency is None]
    if unbound:
        print(f"  not in the minimum (their published limit never bound in this run): {', '.join(unbound)}")
    return min(effs, default=0.0) if len(ok) == len(runs) else 0.0


def main(argv: list[str] | None = None) -> int:
    universe = load_universe()
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--timeframe", default="1m", choices=sorted(TIMEFRAME_MS, key=TIMEFRAME_MS.get))
    span = parser.add_mutually_exclusive_group()
    span.add_argument("--days", type=float, help="window length in days (default 10: binance's 450 pages take ~9 s; at 2 days its 90 pages finish in ~2 s and start-up dominates the rate)")
    span.add_argument("--hours", type=float, help="window length in hours")
    parser.add_argument("--symbols", type=int, default=len(universe.symbols),
                        help=f"the first N symbols of the universe (default all {len(universe.symbols)})")
    parser.add_argument("--exchanges", default=",".join(EXCHANGES), help="comma-separated (default all five)")
    parser.add_argument("--budget", default="ccxt", choices=BUDGETS,
                        help="ccxt (default): ccxt's own throttle paces. published: the limiter paces at the "
                             "exchanges' published limits × margin (include/config/budgets.yaml)")
    parser.add_argument("--min-seconds", type=float,
                        help="widen (never narrow) each exchange's window back from the same end so that at its "
                             "published budget it lasts at least max(S, 3 × its binding bucket's window): a run "
                             "shorter than a few windows measures the burst, not the rate (--budget published "
                             "only; default 60; 0 = the plain --days window for all)")
    parser.add_argument("--no-compare", action="store_true",
                        help="with --budget published: skip the run at ccxt's pace that it is compared with")
    parser.add_argument("--emulator", choices=("inprocess", "subprocess"), default="subprocess",
                        help="run the emulator in its own process (default: the exchange is not in the collector's "
                             "process in production) or in this one")
    parser.add_argument("--workers", choices=("process", "loop"), default="process",
                        help="process (default): one process per exchange, as one Airflow task per exchange "
                             "runs; loop: every exchange in this process's one event loop (shares its GIL)")
    parser.add_argument("--no-calibrate", action="store_true",
                        help="skip measuring the emulator's own page rate (the emu/s column)")
    parser.add_argument("--pairs-in-flight", type=int, help="override collect.pairs_in_flight")
    parser.add_argument("--requests-in-flight", type=int, help="override collect.requests_in_flight")
    parser.add_argument("-v", "--verbose", action="store_true", help="log collect.py's warnings (retries)")
    args = parser.parse_args(argv)

    exchanges = [e.strip() for e in args.exchanges.split(",") if e.strip()]
    for e in exchanges:
        if e not in universe.exchanges:
            parser.error(f"--exchanges: {e!r} is not in include/config/universe.yaml ({', '.join(universe.exchanges)})")
    if not 1 <= args.symbols <= len(universe.symbols):
        parser.error(f"--symbols: {args.symbols} must be between 1 and {len(universe.symbols)}")
    span_td = timedelta(hours=args.hours) if args.hours is not None else timedelta(days=args.days or 10)
    if span_td <= timedelta(0):
        parser.error("--days/--hours: the window must be longer than zero")
    if args.min_seconds is not None and args.budget == "ccxt":
        parser.error("--min-seconds: only with --budget published (the ccxt run keeps one fixed window)")
    if args.min_seconds is None:
        args.min_seconds = 60.0 if args.budget == "published" else 0.0
    if args.min_seconds < 0:
        parser.error("--min-seconds: must be 0 or more")
    args.symbol_list = list(universe.symbols[:args.symbols])
    logging.basicConfig(level=logging.WARNING if args.verbose else logging.ERROR,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")

    clock = datetime.fromisoformat(CLOCK.replace("Z", "+00:00"))
    end = clock.replace(hour=0, minute=0, second=0, microsecond=0)   # closed candles only
    start = end - span_td
    tf_ms = TIMEFRAME_MS[args.timeframe]
    start = datetime.fromtimestamp(int(start.timestamp() * 1000) // tf_ms * tf_ms / 1000, UTC)
    cfg = load_pipeline().collect
    overrides = {k: v for k, v in (("pairs_in_flight", args.pairs_in_flight),
                                   ("requests_in_flight", args.requests_in_flight)) if v}
    cfg = replace(cfg, **overrides, enable_rate_limit=True)

    passes = ["ccxt"] if args.budget == "ccxt" else (["published"] if args.no_compare else ["ccxt", "published"])
    results: dict[str, tuple[list[ExchangeRun], float]] = {}
    with Emulator(args.emulator, CLOCK) as emu:
        not_listed = emu.not_listed()
        # every pass backfills the same per-exchange windows, sized for the budget under test (with
        # --budget published the run at ccxt's pace it is compared with does the same work)
        windows = [ExchangeRun(e, page_size=universe.exchanges[e].page_size) for e in exchanges]
        plan_windows(windows, start, end, min_seconds=args.min_seconds,
                     symbols=len(args.symbol_list), timeframe=args.timeframe)
        if window_lines(windows):
            print(f"windows (--min-seconds {args.min_seconds:g}: each lasts at least max({args.min_seconds:g} s, "
                  f"3 × its binding bucket's window) at the {args.budget} budget; base {start.isoformat()} .. "
                  f"{end.isoformat()}):")
            for line in window_lines(windows):
                print(line)
        for budget in passes:
            emu.post("limits", {"reset": True})   # each pass starts with the exchanges' windows empty
            runs = [ExchangeRun(e, page_size=w.page_size, start=w.start, end=w.end, window_note=w.window_note)
                    for e, w in zip(exchanges, windows, strict=True)]
            if args.workers == "process":
                runs, total_wall = run_processes(runs, emu, args, cfg, budget)
            else:
                total_wall = asyncio.run(run_all(runs, emu, args, universe, cfg, budget))
            results[budget] = (runs, total_wall)
        if not args.no_calibrate:
            last = results[passes[-1]][0]
            calibrate(emu, last, cfg.requests_in_flight)
            for budget in passes:
                for r, c in zip(results[budget][0], last, strict=True):
                    r.ceiling = c.ceiling
    for budget in passes:
        runs, total_wall = results[budget]
        args.budget_label = budget
        efficiency = report(runs, not_listed, args, total_wall, args.timeframe)
        if budget == "ccxt" and args.budget == "ccxt":
            print(f"backfill_efficiency={efficiency:.3f}")
        elif budget == "ccxt":
            print(f"(ccxt pace: backfill_efficiency={efficiency:.3f})")
    if args.budget == "published":
        runs, total_wall = results["published"]
        ccxt_runs, ccxt_wall = results.get("ccxt", (None, None))
        published = report_published(runs, ccxt_runs, total_wall, ccxt_wall)
        print(f"published_limit_efficiency={published:.3f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
