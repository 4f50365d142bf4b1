"""Collect OHLCV candles for one (exchange, symbol, timeframe) window with async ccxt.

- The exchange is a stock `ccxt.async_support` client, one per exchange and run: every coroutine
  that collects from it shares its throttle (`enableRateLimit`) and, when installed, the
  cross-process budget limiter (`candleflow.ratelimit`). Several requests are in flight at once,
  bounded per client (`collect.requests_in_flight`), so a run is throttle-bound, not latency-bound.
  In emulator mode only `urls['api']` are re-rooted at the local emulator, nothing else changes.
- The market is resolved from `load_markets()` using the universe's quote preference
  (BTC → BTC/USDT on binance, BTC/USD on kraken, whose XBT ccxt already maps to BTC). A symbol
  the exchange does not list yields `skipped_reason`, not an exception.
- The window [start, end) is cut into page-sized segments fetched concurrently; inside a segment
  pages follow one another, each bounded by `since` and `until` (bybit and okx answer the
  *newest* candles of an open-ended request, so paging forward without an upper bound would
  silently skip history). Candles outside the window, duplicates and the still-open candle (by
  the exchange's clock) are dropped; what is missing is counted and explained in `notes`.
- Network errors, 429s and 5xx are retried with exponential backoff inside the task (a 40-page
  backfill should not restart from page one for one hiccup); anything else raises.

`collect_pair` is the synchronous entry point (it runs its own event loop); `collect_pair_async`
is what `candleflow.ingest` awaits with a shared client.
"""

from __future__ import annotations

import asyncio
import logging
import time
from dataclasses import dataclass, field
from datetime import UTC, datetime

import pandas as pd

from candleflow.config import TIMEFRAME_MS, CollectConfig, ConfigError, load_universe

log = logging.getLogger(__name__)

COLUMNS = ["ts", "open", "high", "low", "close", "volume"]
# ccxt sends `until` as the request's upper bound on these; kraken has no such parameter.
UNTIL_SUPPORTED = {"binance", "coinbase", "bybit", "okx"}


@dataclass
class CollectResult:
    exchange: str
    symbol: str
    timeframe: str
    market: str | None
    candles: pd.DataFrame
    skipped_reason: str | None = None
    requests: int = 0
    expected: int = 0
    missing: int = 0
    notes: list[str] = field(default_factory=list)
    closed_end_ms: int | None = None      # candles from here on were still open at collection time
    served_from_ms: int | None = None     # kraken: the oldest candle its OHLC endpoint still serves
    archive_files: int = 0                # binance: whole months read from its public data archive


def empty_candles() -> pd.DataFrame:
    frame = pd.DataFrame({c: pd.Series(dtype="float64") for c in COLUMNS})
    frame["ts"] = pd.Series(dtype="datetime64[ms, UTC]")
    return frame


def make_exchange(exchange_id: str, *, mode: str, emulator_url: str | None = None,
                  enable_rate_limit: bool = True, timeout_ms: int = 15_000, asynchronous: bool = False,
                  limiter=None, fast_parse: bool = True):
    """A ccxt client for `exchange_id` (`ccxt.async_support` when `asynchronous`); in emulator mode
    its REST roots point at the emulator. `limiter` (a `candleflow.ratelimit.Limiter`) gates
    every HTTP request and reads the exchange's rate-limit answers. `fast_parse`
    (`collect.fast_candle_parse`) parses candle pages with `candleflow.candle_pages` (the same
    rows as ccxt's `parse_ohlcvs`, a fraction of the CPU; exchanges it does not cover keep ccxt's)."""
    if asynchronous:
        import ccxt.async_support as ccxt_mod
    else:
        import ccxt as ccxt_mod

    if not hasattr(ccxt_mod, exchange_id):
        raise ConfigError(f"exchange: {exchange_id!r} is not a ccxt exchange id")
    client = getattr(ccxt_mod, exchange_id)({
        "enableRateLimit": enable_rate_limit,
        "timeout": timeout_ms,
        # spot markets only: one markets call instead of one per market type
        "options": {"fetchMarkets": {"types": ["spot"]}},
    })
    if mode == "emulator":
        if not emulator_url:
            raise ConfigError("emulator_url: required when exchange_mode is 'emulator' (include/config/pipeline.yaml)")
        from candleflow.emulator import ccxt_urls

        client.urls["api"] = ccxt_urls(client.urls["api"], emulator_url, exchange_id, getattr(client, "hostname", None))
    elif mode != "live":
        raise ConfigError(f"exchange_mode: {mode!r} is invalid; use 'emulator' or 'live'")
    if limiter is not None:
        limiter.install(client)
    if fast_parse:
        from candleflow import candle_pages

        candle_pages.install(client)
    return client


def resolve_market(client, symbol: str, quotes: list[str] | tuple[str, ...],
                   names: list[str] | tuple[str, ...] | None = None) -> tuple[str | None, str | None]:
    """(market symbol, None) for the first listed (name, quote), or (None, reason) if none is.

    `names` are the tickers the asset may trade under, the universe's symbol first, then its
    renames (MATIC → POL); quotes in preference order. Inactive (delisted) markets do not count.
    """
    markets = client.markets or {}
    names = list(names or [symbol])
    inactive = []
    for name in names:
        for quote in quotes:
            for market in markets.values():
                if market.get("spot") and market.get("base") == name and market.get("quote") == quote:
                    if market.get("active") is False:
                        inactive.append(market["symbol"])
                        continue
                    return market["symbol"], None
    wanted = " or ".join(f"{n}/{q}" for n in names for q in quotes)
    reason = f"not listed: {client.id} has no active spot market {wanted}"
    if inactive:
        reason += f" ({', '.join(inactive)} delisted)"
    return None, reason


class _ClientState:
    """Per-client coordination of the coroutines sharing it: how many requests may be in flight,
    and the exchange's clock offset (asked once)."""

    def __init__(self, in_flight: int):
        self.requests = asyncio.Semaphore(max(1, in_flight))
        self.clock_lock = asyncio.Lock()
        self.clock_offset: int | None = None


def _state(client, cfg: CollectConfig) -> _ClientState:
    state = getattr(client, "_candleflow_state", None)
    if state is None:
        state = client._candleflow_state = _ClientState(cfg.requests_in_flight)
    return state


def _retry_after(client) -> float | None:
    """Seconds of the Retry-After header of the client's last response, if it sent a number."""
    headers = getattr(client, "last_response_headers", None) or {}
    for name, value in headers.items():
        if name.lower() == "retry-after":
            try:
                return float(value)
            except (TypeError, ValueError):
                return None
    return None


def _with_retries(call, what: str, cfg: CollectConfig, counter: list[int], client=None):
    """Synchronous retries (used from worker threads, e.g. listing discovery, and by
    candleflow.derivatives). Given the `client`, a 429/418 waits at least its Retry-After."""
    import ccxt

    delay = cfg.backoff_seconds
    for attempt in range(1, cfg.max_attempts + 1):
        counter[0] += 1
        try:
            return call()
        except ccxt.NetworkError as exc:  # timeouts, 429 (DDoSProtection), 5xx (ExchangeNotAvailable)
            if attempt == cfg.max_attempts:
                raise
            wait = delay
            if client is not None and isinstance(exc, ccxt.RateLimitExceeded | ccxt.DDoSProtection):
                wait = max(delay, _retry_after(client) or 0)
            log.warning("%s failed (%s: %s); retry %d/%d in %.1f s", what, type(exc).__name__,
                        str(exc)[:200], attempt, cfg.max_attempts - 1, wait)
            time.sleep(wait)
            delay *= 2
    raise AssertionError("unreachable")


async def with_retries(client, call, what: str, cfg: CollectConfig, counter: list[int]):
    """Await `call()` (a coroutine factory) with exponential backoff on ccxt network errors, at
    most `collect.requests_in_flight` requests of this client at once."""
    import ccxt

    state = _state(client, cfg)
    delay = cfg.backoff_seconds
    for attempt in range(1, cfg.max_attempts + 1):
        counter[0] += 1
        try:
            async with state.requests:
                return await call()
        except ccxt.NetworkError as exc:  # timeouts, 429 (DDoSProtection), 5xx (ExchangeNotAvailable)
            if attempt == cfg.max_attempts:
                raise
            log.warning("%s failed (%s: %s); retry %d/%d in %.1f s", what, type(exc).__name__,
                        str(exc)[:200], attempt, cfg.max_attempts - 1, delay)
            await asyncio.sleep(delay)
            delay *= 2
    raise AssertionError("unreachable")


async def exchange_now(client, cfg: CollectConfig, counter: list[int]) -> int:
    """The exchange's clock (ms). Asked once per client, then the local clock plus that offset:
    ccxt charges fetch_time to the same throttle as the candle pages (a coinbase time call costs
    as much as three pages)."""
    state = _state(client, cfg)
    async with state.clock_lock:
        if state.clock_offset is None:
            offset = 0
            if client.has.get("fetchTime"):
                asked_at = client.milliseconds()
                server = await with_retries(client, client.fetch_time, f"{client.id} fetch_time", cfg, counter)
                offset = server - (asked_at + client.milliseconds()) // 2
            state.clock_offset = offset
    return client.milliseconds() + state.clock_offset


async def load_markets(client, cfg: CollectConfig, counter: list[int]) -> dict:
    if client.markets:
        return client.markets
    return await with_retries(client, client.load_markets, f"{client.id} load_markets", cfg, counter)


async def fetch_candles(client, market: str, timeframe: str, start_ms: int, end_ms: int, *, page_size: int,
                        cfg: CollectConfig | None = None, counter: list[int] | None = None) -> list[list]:
    """Every candle with start_ms <= ts < end_ms the exchange returns.

    The window is cut into page-sized segments fetched concurrently (the client's in-flight bound
    and throttle pace them); within a segment pages follow each other. A candle served twice
    (overlapping pages) is kept once; two *different* candles for one timestamp are both kept, for
    the quality check to reject.
    """
    cfg = cfg or CollectConfig()
    counter = counter if counter is not None else [0]
    tf_ms = TIMEFRAME_MS[timeframe]
    rows: dict[int, list] = {}
    conflicts: list[list] = []

    async def fetch_page(since: int, until: int) -> tuple[list[list], list[list]]:
        params = {"until": until} if client.id in UNTIL_SUPPORTED else {}
        what = f"{client.id} {market} {timeframe} page from {client.iso8601(since)}"

        def call():
            return client.fetch_ohlcv(market, timeframe, since=since, limit=page_size, params=params)

        page = await with_retries(client, call, what, cfg, counter)
        # ccxt returns [] without an exception for a 200 with malformed JSON, HTML or an empty
        # body: an empty page where candles may be due is asked again before it counts as a gap.
        for attempt in range(cfg.empty_page_retries):
            if page:
                break
            log.warning("%s came back empty; asking again (%d/%d)", what, attempt + 1, cfg.empty_page_retries)
            await asyncio.sleep(cfg.backoff_seconds * (2 ** attempt))
            page = await with_retries(client, call, what, cfg, counter)
        in_window = [c for c in page if start_ms <= c[0] < end_ms]
        for candle in in_window:
            seen = rows.setdefault(int(candle[0]), candle)
            if seen is not candle and list(seen) != list(candle):
                # Two different candles for one timestamp: keep both so the quality check sees it.
                conflicts.append(candle)
        return page, in_window

    async def segment(lo: int, hi: int) -> None:
        since = lo
        while since < hi:
            until = min(hi, since + page_size * tf_ms) - 1
            page, in_window = await fetch_page(since, until)
            in_segment = [c for c in in_window if c[0] < hi]
            newest = max((c[0] for c in in_segment), default=None)
            if client.id not in UNTIL_SUPPORTED:
                if newest is None or newest <= since:
                    break  # kraken: nothing at or after `since` is served, so no later page will be either
                since = max(until + 1, newest + tf_ms)
                continue
            # bybit and okx answer the *newest* `limit` candles of a range: a full page that starts
            # late was cut at its old end, so ask again for what lies before it.
            sub_page, sub_window = page, in_window
            while sub_window and len(sub_page) >= page_size and min(c[0] for c in sub_window) > since:
                sub_page, sub_window = await fetch_page(since, min(c[0] for c in sub_window) - 1)
            # Continue right after the newest candle received: a short page (fewer candles than
            # asked, ending early) is completed by the next request instead of leaving a silent
            # hole. Only a page that stays empty after its retries moves on past its bound (a gap).
            since = newest + tf_ms if newest is not None else until + 1

    if client.id in UNTIL_SUPPORTED:
        span = page_size * tf_ms
        bounds = list(range(start_ms, end_ms, span))
        await asyncio.gather(*(segment(lo, min(end_ms, lo + span)) for lo in bounds))
    else:
        await segment(start_ms, end_ms)  # kraken answers everything since `since`: one page
    return sorted([*rows.values(), *conflicts], key=lambda c: c[0])


async def _from_archive(client, market: str, timeframe: str, start_ms: int, end_ms: int, now_ms: int,
                        base_url: str, result: CollectResult) -> tuple[list[list], list[tuple[int, int]]]:
    """Whole past months from binance's archive; returns their candles and the spans left for REST."""
    from candleflow import archive

    this_month = datetime.fromtimestamp(now_ms / 1000, UTC).replace(day=1, hour=0, minute=0, second=0,
                                                                     microsecond=0)
    market_id, interval = client.market(market)["id"], client.timeframes[timeframe]
    rows, spans, cursor = [], [], start_ms
    for year, month, lo, hi in archive.whole_months(start_ms, end_ms, int(this_month.timestamp() * 1000)):
        try:
            # a blocking download (urllib) and CSV parse: off the event loop
            month_rows = await asyncio.to_thread(archive.fetch_month, base_url, market_id, interval, year, month)
        except archive.ArchiveUnavailable as exc:
            result.notes.append(f"archive {year}-{month:02d} unusable, fetched by REST instead: {exc}")
            continue
        result.archive_files += 1
        rows += [r for r in month_rows if lo <= r[0] < hi]
        if lo > cursor:
            spans.append((cursor, lo))
        cursor = hi
    if cursor < end_ms:
        spans.append((cursor, end_ms))
    return rows, spans


async def collect_pair_async(client, symbol: str, timeframe: str, start: datetime, end: datetime, *,
                             quotes: list[str] | tuple[str, ...], names: list[str] | tuple[str, ...] | None = None,
                             page_size: int | None = None, archive_base_url: str | None = None,
                             cfg: CollectConfig | None = None) -> CollectResult:
    """Collect the closed candles of [start, end) for `symbol` with the async ccxt `client`."""
    cfg = cfg or CollectConfig()
    exchange_id = client.id
    if page_size is None:
        exchanges = load_universe().exchanges
        page_size = exchanges[exchange_id].page_size if exchange_id in exchanges else 500
    tf_ms = TIMEFRAME_MS[timeframe]
    start_ms, end_ms = int(start.timestamp() * 1000), int(end.timestamp() * 1000)
    expected = max(0, (end_ms - start_ms) // tf_ms)
    result = CollectResult(exchange_id, symbol, timeframe, None, empty_candles(), expected=expected)
    counter = [0]
    await load_markets(client, cfg, counter)
    market, reason = resolve_market(client, symbol, quotes, names)
    if market is None:
        result.skipped_reason, result.requests, result.missing = reason, counter[0], 0
        return result
    result.market = market

    now_ms = await exchange_now(client, cfg, counter)
    closed_end = min(end_ms, now_ms // tf_ms * tf_ms)  # the candle open at `now` is not final yet
    result.closed_end_ms = closed_end
    if closed_end < end_ms:
        open_candles = (end_ms - max(closed_end, start_ms)) // tf_ms
        result.expected = expected = max(0, expected - open_candles)
        result.notes.append(f"window ends after the exchange's clock ({client.iso8601(now_ms)}): "
                            f"{open_candles} candle(s) not closed yet, left to a later run")
    raw: list[list] = []
    if archive_base_url and closed_end > start_ms:
        raw, rest_spans = await _from_archive(client, market, timeframe, start_ms, closed_end, now_ms,
                                              archive_base_url, result)
    else:
        rest_spans = [(start_ms, closed_end)] if closed_end > start_ms else []
    pages = await asyncio.gather(*(fetch_candles(client, market, timeframe, lo, hi, page_size=page_size, cfg=cfg,
                                                 counter=counter) for lo, hi in rest_spans))
    for page in pages:
        raw += page
    raw.sort(key=lambda c: c[0])
    result.requests = counter[0]
    frame = pd.DataFrame(raw, columns=COLUMNS)
    frame["ts"] = pd.to_datetime(frame["ts"].astype("int64"), unit="ms", utc=True).astype("datetime64[ms, UTC]")
    for col in COLUMNS[1:]:
        frame[col] = frame[col].astype("float64")
    result.candles = frame.reset_index(drop=True)
    result.missing = expected - len(frame)
    if result.missing > 0 and closed_end > start_ms:
        served_from = frame["ts"].min() if len(frame) else None
        if exchange_id == "kraken" and (served_from is None or served_from > pd.Timestamp(start_ms, unit="ms", tz="UTC")):
            # its OHLC endpoint keeps 720 candles, the newest still open: the oldest served is the
            # horizon (read from the answer, not from a clock taken a request earlier)
            result.served_from_ms = int(served_from.timestamp() * 1000) if served_from is not None \
                else (now_ms // tf_ms - 719) * tf_ms
            result.notes.append("kraken's OHLC endpoint serves only its 720 most recent candles: "
                                f"{result.missing} older candle(s) of the window are not available from it")
        else:
            result.notes.append(f"{result.missing} of {expected} candles missing: the exchange returned none for them")
    return result


def collect_pair(exchange_id: str, symbol: str, timeframe: str, start: datetime, end: datetime, *,
                 quotes: list[str] | tuple[str, ...], mode: str, emulator_url: str | None = None,
                 names: list[str] | tuple[str, ...] | None = None, page_size: int | None = None,
                 archive_base_url: str | None = None, cfg: CollectConfig | None = None,
                 enable_rate_limit: bool = True) -> CollectResult:
    """Synchronous `collect_pair_async` with a client of its own (opened and closed here)."""
    cfg = cfg or CollectConfig()

    async def run() -> CollectResult:
        client = make_exchange(exchange_id, mode=mode, emulator_url=emulator_url, enable_rate_limit=enable_rate_limit,
                               timeout_ms=cfg.timeout_ms, asynchronous=True, fast_parse=cfg.fast_candle_parse)
        try:
            return await collect_pair_async(client, symbol, timeframe, start, end, quotes=quotes, names=names,
                                            page_size=page_size, archive_base_url=archive_base_url, cfg=cfg)
        finally:
            await client.close()

    return asyncio.run(run())
