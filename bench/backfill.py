"""Backfill benchmark: the full universe on the exchange emulator, all five exchanges at once.

    .venv/bin/python bench/backfill.py [--timeframe 1m] [--days 2 | --hours H] [--symbols N]
                                       [--exchanges binance,okx,...] [--budget ccxt]
                                       [--emulator inprocess|subprocess]

What it does (issue 3, "Speed"):

- starts the emulator (`EmulatorServer`, rate limits enforced, clock 2024-10-30T00:30:00Z) in this
  process (default) or, with `--emulator subprocess`, as `python -m candleflow.emulator` in its own
  process (so the server does not compete with the collectors for this interpreter's GIL);
- one thread per exchange, one stock ccxt client per exchange (`make_exchange`, `enableRateLimit`
  on: ccxt's throttle lives in the client), markets loaded once, then `collect_pair(client=...)` for
  every symbol of the window [end - days, end), end = the emulated clock's UTC midnight;
- per exchange: candles, requests and refusals (429 / bans, from the emulator's `/__admin/stats`),
  wall seconds, candles/s, requests/s, and achieved ÷ bound, where
      bound = 1000 / (client.rateLimit × cost ccxt charges the OHLCV call)   [requests/s]
  is what ccxt's own throttle permits for the candle endpoint; the cost is recorded from
  `calculate_rate_limiter_cost` on the live client, i.e. exactly what ccxt charged
  (binance spot klines 0.4 × 50 ms, bybit v5/market/kline 5 × 20 ms, okx market/history-candles
  1 × 110 ms, coinbase .../candles 3 × 34 ms, kraken OHLC 1.2 × 1000 ms in ccxt 4.5.90);
  achieved = OHLCV requests / wall seconds;
- where the time went: ccxt throttle sleeps, HTTP round trips (ccxt's `fetch`, JSON decode
  included), and the rest (ccxt parsing, collect.py, thread switching), plus how much of the
  throttle's budget went to requests other than candle pages (fetch_time per pair, load_markets);
- correctness: every listed pair got exactly the expected candles (one per interval from the
  window start, or kraken's 720-candle horizon, to the window end; no gap, no duplicate, no
  conflicting twin), and the pairs an exchange does not list are the emulator's "not listed" ones;
- the projected wall time of a 3-year 1m backfill of 30 symbols at the achieved rates (per
  exchange; the slowest exchange decides) and at the bound;
- last line: `backfill_efficiency=<min over exchanges of achieved/bound>`.

`--budget published` (spend the exchanges' published limits instead of ccxt's spacing) is issue 6
and not implemented yet.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import socket
import subprocess
import sys
import threading
import time
import traceback
import urllib.request
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "include"))

from candleflow.collect import collect_pair, make_exchange  # noqa: E402
from candleflow.config import TIMEFRAME_MS, CollectConfig, load_universe, load_yaml  # noqa: E402

CLOCK = "2024-10-30T00:30:00Z"
EXCHANGES = ("binance", "coinbase", "kraken", "bybit", "okx")
OHLCV_PATHS = ("klines", "kline", "candles", "OHLC")   # the candle endpoint's path ends with one of these
THREE_YEARS_1M = 3 * 365 * 1440                         # candles per pair


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

    def not_listed(self) -> dict[str, set[str]]:
        """{exchange: symbols the emulated exchange does not list} from include/config/emulator.yaml."""
        out: dict[str, set[str]] = {ex: set() for ex in EXCHANGES}
        for sym, per_ex in (load_yaml("emulator.yaml").get("listing_exceptions") or {}).items():
            for ex, first in (per_ex or {}).items():
                if str(first).strip().lower() == "not listed":
                    out.setdefault(ex, set()).add(str(sym).upper())
        return out


# --- one exchange --------------------------------------------------------------------------------

def instrument(client, run: ExchangeRun, timing: threading.Event) -> None:
    """Record what ccxt charges its throttle, how long it sleeps and how long HTTP takes."""
    orig_cost, orig_throttle, orig_fetch, orig_ohlcv = (client.calculate_rate_limiter_cost, client.throttle,
                                                        client.fetch, client.fetch_ohlcv)

    def cost(api, method, path, params, config={}):  # noqa: B006 - ccxt's signature
        charged = orig_cost(api, method, path, params, config)
        run.costs[str(path)] = charged
        if str(path).endswith(OHLCV_PATHS):
            run.ohlcv_endpoint, run.ohlcv_cost = str(path), float(charged)
        if timing.is_set():
            run.charged_ms += client.rateLimit * charged
            if str(path).endswith(OHLCV_PATHS):
                run.charged_ohlcv_ms += client.rateLimit * charged
        return charged

    def throttle(c=None):
        t = time.perf_counter()
        try:
            return orig_throttle(c)
        finally:
            if timing.is_set():
                run.throttle_sleep_s += time.perf_counter() - t

    def fetch(*args, **kwargs):
        t = time.perf_counter()
        try:
            return orig_fetch(*args, **kwargs)
        finally:
            if timing.is_set():
                run.http_s += time.perf_counter() - t

    def fetch_ohlcv(*args, **kwargs):
        t = time.perf_counter()
        try:
            return orig_ohlcv(*args, **kwargs)
        finally:
            run.ohlcv_calls += 1
            run.ohlcv_call_s += time.perf_counter() - t

    client.calculate_rate_limiter_cost, client.throttle = cost, throttle
    client.fetch, client.fetch_ohlcv = fetch, fetch_ohlcv


def time_once(client) -> None:
    """Experiment (--time-once): ask the exchange's clock once, then derive it from the local clock
    plus that offset — what collect.py could do instead of one fetch_time per collect_pair call."""
    orig, offset = client.fetch_time, []

    def fetch_time(params=None):
        if not offset:
            offset.append(orig(params or {}) - client.milliseconds())
        return client.milliseconds() + offset[0]

    client.fetch_time = fetch_time


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


def run_exchange(run: ExchangeRun, emu: Emulator, symbols: list[str], aliases: dict, quotes, timeframe: str,
                 start: datetime, end: datetime, cfg: CollectConfig, go: threading.Barrier,
                 time_once_: bool = False) -> None:
    timing = threading.Event()
    try:
        t0 = time.perf_counter()
        client = make_exchange(run.exchange, mode="emulator", emulator_url=emu.url,
                               enable_rate_limit=True, timeout_ms=cfg.timeout_ms)
        instrument(client, run, timing)
        if time_once_:
            time_once(client)
        client.load_markets()
        run.rate_limit_ms = float(client.rateLimit)
        run.setup_s = time.perf_counter() - t0
    except Exception as exc:  # noqa: BLE001 - reported, the other exchanges go on
        run.error = f"setup: {type(exc).__name__}: {exc}"
        go.wait()
        return
    go.wait()                               # every exchange starts its timed window together
    stats = emu.admin("stats")
    run.stats_before = stats["exchanges"][run.exchange]
    run.routes_before = {k: v for k, v in stats.items() if k.startswith(run.exchange + " ")}
    timing.set()
    tf_ms = TIMEFRAME_MS[timeframe]
    start_ms, end_ms = int(start.timestamp() * 1000), int(end.timestamp() * 1000)
    t0 = time.perf_counter()
    for symbol in symbols:
        try:
            result = collect_pair(run.exchange, symbol, timeframe, start, end, quotes=quotes, mode="emulator",
                                  emulator_url=emu.url, names=[symbol, *aliases.get(symbol, ())],
                                  page_size=run.page_size, cfg=cfg, client=client)
        except Exception as exc:  # noqa: BLE001
            run.pairs += 1
            run.problems.append(f"{symbol}: {type(exc).__name__}: {str(exc)[:200]}")
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
    run.wall_s = time.perf_counter() - t0
    timing.clear()
    stats = emu.admin("stats")
    run.stats_after = stats["exchanges"][run.exchange]
    run.routes_after = {k: v for k, v in stats.items() if k.startswith(run.exchange + " ")}


# --- report --------------------------------------------------------------------------------------

def fmt_duration(seconds: float) -> str:
    if seconds != seconds or seconds == float("inf"):
        return "n/a"
    h, rem = divmod(int(round(seconds)), 3600)
    m, s = divmod(rem, 60)
    return f"{h}h{m:02d}m" if h else f"{m}m{s:02d}s"


def report(runs: list[ExchangeRun], not_listed: dict[str, set[str]], args, start, end, total_wall: float,
           timeframe: str) -> float:
    print()
    print(f"backfill {timeframe} {start.isoformat()} .. {end.isoformat()} ({len(args.symbol_list)} symbols), "
          f"emulator {args.emulator}, clock {CLOCK}, budget {args.budget}"
          f"{', EXPERIMENT --time-once' if args.time_once else ''}")
    head = (f"{'exchange':9} {'pairs':>5} {'candles':>9} {'req':>5} {'ohlcv':>5} {'wall s':>7} {'candles/s':>10} "
            f"{'req/s':>6} {'ohlcv/s':>7} {'bound/s':>7} {'ach/bnd':>7} {'429':>4} {'ban':>4}")
    print(head)
    print("-" * len(head))
    for r in runs:
        if r.error:
            print(f"{r.exchange:9} ERROR {r.error}")
            continue
        print(f"{r.exchange:9} {r.pairs:>5} {r.candles:>9} {r.requests:>5} {r.ohlcv_requests:>5} {r.wall_s:>7.1f} "
              f"{r.candles / r.wall_s if r.wall_s else 0:>10.0f} {r.requests / r.wall_s if r.wall_s else 0:>6.2f} "
              f"{r.achieved:>7.2f} {r.bound:>7.2f} {r.efficiency:>7.3f} {r.delta('rate_limited'):>4} "
              f"{r.delta('banned'):>4}")
    ok = [r for r in runs if not r.error]
    candles = sum(r.candles for r in ok)
    reqs = sum(r.requests for r in ok)
    print("-" * len(head))
    print(f"{'overall':9} {sum(r.pairs for r in ok):>5} {candles:>9} {reqs:>5} {sum(r.ohlcv_requests for r in ok):>5} "
          f"{total_wall:>7.1f} {candles / total_wall if total_wall else 0:>10.0f} {reqs / total_wall if total_wall else 0:>6.2f}"
          f"{'':>25} {sum(r.delta('rate_limited') for r in ok):>4} {sum(r.delta('banned') for r in ok):>4}")

    print("\nbound = 1000 / (ccxt rateLimit ms × cost ccxt charges the OHLCV call); achieved = OHLCV requests / wall")
    for r in ok:
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

def main(argv: list[str] | None = None) -> int:
    universe = load_universe()
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--timeframe", default="1m", choices=sorted(TIMEFRAME_MS, key=TIMEFRAME_MS.get))
    span = parser.add_mutually_exclusive_group()
    span.add_argument("--days", type=float, help="window length in days (default 2)")
    span.add_argument("--hours", type=float, help="window length in hours")
    parser.add_argument("--symbols", type=int, default=len(universe.symbols),
                        help=f"the first N symbols of the universe (default all {len(universe.symbols)})")
    parser.add_argument("--exchanges", default=",".join(EXCHANGES), help="comma-separated (default all five)")
    parser.add_argument("--budget", default="ccxt", help="ccxt (default): ccxt's own throttle. published: issue 6")
    parser.add_argument("--emulator", choices=("inprocess", "subprocess"), default="inprocess",
                        help="run the emulator in this process (default) or in its own process")
    parser.add_argument("--time-once", action="store_true",
                        help="experiment: fetch each exchange's clock once and derive it after (collect.py asks per pair)")
    parser.add_argument("-v", "--verbose", action="store_true", help="log collect.py's warnings (retries)")
    args = parser.parse_args(argv)

    if args.budget == "published":
        print("--budget published is not implemented yet: spending the exchanges' published limits with an "
              "adaptive limiter is issue 6 (`issues show 6`). Use --budget ccxt (the default).", file=sys.stderr)
        return 2
    if args.budget != "ccxt":
        parser.error(f"--budget {args.budget!r}: use 'ccxt' ('published' is issue 6, not implemented yet)")
    exchanges = [e.strip() for e in args.exchanges.split(",") if e.strip()]
    for e in exchanges:
        if e not in universe.exchanges:
            parser.error(f"--exchanges: {e!r} is not in include/config/universe.yaml ({', '.join(universe.exchanges)})")
    if not 1 <= args.symbols <= len(universe.symbols):
        parser.error(f"--symbols: {args.symbols} must be between 1 and {len(universe.symbols)}")
    span_td = timedelta(hours=args.hours) if args.hours is not None else timedelta(days=args.days or 2)
    if span_td <= timedelta(0):
        parser.error("--days/--hours: the window must be longer than zero")
    args.symbol_list = list(universe.symbols[:args.symbols])
    logging.basicConfig(level=logging.WARNING if args.verbose else logging.ERROR,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")

    clock = datetime.fromisoformat(CLOCK.replace("Z", "+00:00"))
    end = clock.replace(hour=0, minute=0, second=0, microsecond=0)   # closed candles only
    start = end - span_td
    tf_ms = TIMEFRAME_MS[args.timeframe]
    start = datetime.fromtimestamp(int(start.timestamp() * 1000) // tf_ms * tf_ms / 1000, UTC)
    cfg = CollectConfig()

    runs = [ExchangeRun(e, page_size=universe.exchanges[e].page_size) for e in exchanges]
    with Emulator(args.emulator, CLOCK) as emu:
        go = threading.Barrier(len(runs) + 1)
        threads = [threading.Thread(target=_guard, name=f"bench-{r.exchange}",
                                    args=(run_exchange, r, emu, args.symbol_list, universe.aliases,
                                          universe.exchanges[r.exchange].quotes, args.timeframe, start, end, cfg, go, args.time_once))
                   for r in runs]
        for t in threads:
            t.start()
        go.wait()
        t0 = time.perf_counter()
        print(f"backfilling {len(args.symbol_list)} symbols × {len(runs)} exchanges, {args.timeframe}, "
              f"{start.isoformat()} .. {end.isoformat()} ...", flush=True)
        for t in threads:
            t.join()
        total_wall = time.perf_counter() - t0
        not_listed = emu.not_listed()
    efficiency = report(runs, not_listed, args, start, end, total_wall, args.timeframe)
    print(f"backfill_efficiency={efficiency:.3f}")
    return 0


def _guard(fn, run: ExchangeRun, *args) -> None:
    try:
        fn(run, *args)
    except Exception as exc:  # noqa: BLE001 - one exchange's crash is reported, not fatal
        run.error = f"{type(exc).__name__}: {exc}"
        traceback.print_exc()


if __name__ == "__main__":
    sys.exit(main())
