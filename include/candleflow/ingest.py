"""Ingest one exchange's symbols for a window: collect → check → publish (or quarantine) → ledger.

One call per exchange and run, because an exchange's rate limit belongs to one ccxt client (its
throttle only works inside a process) and because every task process pays seconds of imports: a
mapped task per (exchange, symbol) would spend more time starting than collecting.

The window is cut into chunks (whole UTC days, `collect.chunk_days` of them; a scheduled run's
window is one chunk). Each chunk of each symbol is collected, validated with the GX suite, and
then either written to the lake or quarantined with its report; then its gap ledger entries are
written (see `candleflow.coverage`). A chunk the ledger already shows complete is skipped unless
`force` — so a backfill re-run after a crash resumes where it stopped. Progress is logged as
done/total with an ETA.

A bad batch never stops the other symbols: the report lists what was published, quarantined,
skipped (not listed) and failed (an exchange error that survived the retries), and the Airflow
layer decides what fails the task.
"""

from __future__ import annotations

import asyncio
import logging
import math
import time
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime, timedelta

from candleflow import coverage, lake
from candleflow.config import TIMEFRAME_MS, CollectConfig, LakeConfig

log = logging.getLogger(__name__)


@dataclass
class ChunkOutcome:
    symbol: str
    start: str
    end: str
    status: str                    # published | quarantined | skipped | complete | failed
    market: str | None = None
    rows: int = 0
    expected: int = 0
    missing: int = 0
    requests: int = 0
    keys: list[str] = field(default_factory=list)
    detail: str = ""               # reason for skipped / failed, quality summary for quarantined


@dataclass
class ExchangeReport:
    exchange: str
    timeframe: str
    start: str
    end: str
    chunks: list[ChunkOutcome] = field(default_factory=list)

    def by_status(self, status: str) -> list[ChunkOutcome]:
        return [c for c in self.chunks if c.status == status]

    @property
    def rows(self) -> int:
        return sum(c.rows for c in self.chunks)

    def to_json(self) -> dict:
        return asdict(self)

    def summary(self) -> str:
        counts = {s: len(self.by_status(s)) for s in ("published", "complete", "quarantined", "skipped", "failed")}
        return (f"{self.exchange} {self.timeframe} {self.start} → {self.end}: {self.rows} candles in "
                + ", ".join(f"{n} {s}" for s, n in counts.items() if n))


def chunk_window(start: datetime, end: datetime, chunk_days: int) -> list[tuple[datetime, datetime]]:
    """[start, end) cut at UTC midnights every `chunk_days` days and at every month start (the first
    and last may be partial)."""
    if end - start <= timedelta(days=1) and start.date() == (end - timedelta(microseconds=1)).date():
        return [(start, end)]
    chunks, lo = [], start
    while lo < end:
        midnight = datetime(lo.year, lo.month, lo.day, tzinfo=UTC)
        next_month = datetime(lo.year + (lo.month == 12), lo.month % 12 + 1, 1, tzinfo=UTC)
        # never across a month boundary: whole past months can come from binance's archive
        hi = min(end, midnight + timedelta(days=chunk_days), next_month)
        chunks.append((lo, hi))
        lo = hi
    return chunks


def _chunk_complete(entries: list[coverage.LedgerEntry], lo: datetime, hi: datetime, tf_ms: int) -> bool:
    day = datetime(lo.year, lo.month, lo.day, tzinfo=UTC)
    if lo != day or hi != datetime(hi.year, hi.month, hi.day, tzinfo=UTC):
        return False  # only whole days are judged complete; partial days are always fetched
    while day < hi:
        if not coverage.day_complete(entries, day.strftime("%Y-%m-%d"), tf_ms):
            return False
        day += timedelta(days=1)
    return True


def _keep_unserved(s3, lake_cfg: LakeConfig, exchange: str, symbol: str, timeframe: str, lo: datetime,
                   served_from_ms: int, fetched):
    """The fetched candles plus those the lake already holds from before the exchange's horizon."""
    import pandas as pd

    held = lake.read(s3, lake_cfg.bucket, lake.ohlcv_spec(lake_cfg.ohlcv_prefix), exchange=exchange, symbol=symbol,
                     timeframe=timeframe, start=lo, end=datetime.fromtimestamp(served_from_ms / 1000, UTC))
    if held.empty:
        return fetched
    held = held[list(fetched.columns)]
    merged = pd.concat([held, fetched], ignore_index=True)
    return merged.drop_duplicates("ts", keep="last").sort_values("ts").reset_index(drop=True)


class _SyncView:
    """A blocking view of an async ccxt client for code that runs in a worker thread
    (`candleflow.listing`): its requests still go through the client's throttle and limiter."""

    def __init__(self, client, loop):
        self._client, self._loop = client, loop

    def __getattr__(self, name):
        return getattr(self._client, name)

    def fetch_ohlcv(self, *args, **kwargs):
        return asyncio.run_coroutine_threadsafe(self._client.fetch_ohlcv(*args, **kwargs), self._loop).result()


async def _listed_from(s3, bucket, client, exchange, symbol, timeframe, quotes, names, page_size, cfg) -> int | None:
    """The pair's first candle (cached in the lake), so a backfill spends no request before it.
    None when unknown: the chunks are then fetched from their start, as without discovery."""
    import ccxt

    from candleflow import listing
    from candleflow.collect import _with_retries, exchange_now, load_markets, resolve_market

    if exchange == "kraken":
        return None
    counter = [0]
    try:
        await load_markets(client, cfg, counter)
        market, _ = resolve_market(client, symbol, quotes, names)
        if market is None:
            return None
        now_ms = await exchange_now(client, cfg, counter)
        view = _SyncView(client, asyncio.get_running_loop())
        return await asyncio.to_thread(
            listing.first_candle, s3, bucket, view, exchange, symbol, market, timeframe, page_size=page_size,
            now_ms=now_ms, retry=lambda call, what: _with_retries(call, what, cfg, counter))
    except ccxt.BaseError as exc:  # the chunks will meet (and record) the same error, if it persists
        log.warning("%s %s: listing date unknown (%s: %s); fetching from the window's start",
                    exchange, symbol, type(exc).__name__, str(exc)[:200])
        return None


class _Progress:
    def __init__(self, label: str, total: int, every_seconds: float = 10.0):
        self.label, self.total, self.done = label, total, 0
        self.started = self.last = time.monotonic()
        self.every = every_seconds

    def step(self, what: str) -> None:
        self.done += 1
        now = time.monotonic()
        if self.done == self.total or now - self.last >= self.every or self.total <= 20:
            self.last = now
            elapsed = now - self.started
            eta = elapsed / self.done * (self.total - self.done)
            log.info("%s: %d/%d chunks (%.0f%%), %s, elapsed %.0f s, ETA %.0f s", self.label, self.done,
                     self.total, 100 * self.done / self.total, what, elapsed, eta)


def ingest_exchange(s3, lake_cfg: LakeConfig, *, exchange: str, symbols: list[str], timeframe: str,
                    start: datetime, end: datetime, quotes: list[str], page_size: int, mode: str,
                    emulator_url: str | None, collect_cfg: CollectConfig, force: bool = False,
                    chunk: timedelta | None = None, names: dict[str, list[str]] | None = None,
                    limiter=None, alert=None) -> ExchangeReport:
    """One exchange's symbols over [start, end): `collect.pairs_in_flight` symbols at once on one
    async ccxt client (one throttle, one limiter), each symbol's chunks in order. The blocking
    stages (GX, S3) run in worker threads so the event loop keeps fetching meanwhile. Synchronous
    (Airflow tasks): it runs its own event loop.

    `limiter`: a `candleflow.ratelimit.Limiter`; by default one is built from the config
    (`collect.budget`, include/config/budgets.yaml) unless ccxt's throttle is switched off, and
    `alert` (a callable taking a payload) is where it reports a ban."""
    if limiter is None and collect_cfg.enable_rate_limit:
        from candleflow import ratelimit

        limiter = ratelimit.limiter_for(exchange, collect_cfg, alert=alert, mode=mode)
    return asyncio.run(_ingest_exchange(
        s3, lake_cfg, exchange=exchange, symbols=symbols, timeframe=timeframe, start=start, end=end, quotes=quotes,
        page_size=page_size, mode=mode, emulator_url=emulator_url, collect_cfg=collect_cfg, force=force, chunk=chunk,
        names=names, limiter=limiter))


async def _ingest_exchange(s3, lake_cfg: LakeConfig, *, exchange: str, symbols: list[str], timeframe: str,
                           start: datetime, end: datetime, quotes: list[str], page_size: int, mode: str,
                           emulator_url: str | None, collect_cfg: CollectConfig, force: bool,
                           chunk: timedelta | None, names: dict[str, list[str]] | None, limiter) -> ExchangeReport:
    from candleflow.collect import make_exchange

    archive_base_url = None
    if exchange == "binance" and collect_cfg.binance_archive:
        from candleflow.archive import LIVE_BASE_URL

        archive_base_url = f"{emulator_url.rstrip('/')}/binance-archive" if mode == "emulator" else LIVE_BASE_URL
    client = make_exchange(exchange, mode=mode, emulator_url=emulator_url,
                           enable_rate_limit=collect_cfg.enable_rate_limit and collect_cfg.budget == "ccxt",
                           timeout_ms=collect_cfg.timeout_ms, asynchronous=True, limiter=limiter,
                           fast_parse=collect_cfg.fast_candle_parse)
    if chunk:  # scheduled runs: their interval and the overlap intervals before it, each on its own
        chunks = [(start + chunk * i, min(end, start + chunk * (i + 1)))
                  for i in range(math.ceil((end - start) / chunk))]
    else:
        chunks = chunk_window(start, end, collect_cfg.chunk_days)
    progress = _Progress(f"{exchange} {timeframe}", len(chunks) * len(symbols))
    pairs = asyncio.Semaphore(collect_cfg.pairs_in_flight)
    job = _SymbolJob(s3, lake_cfg, exchange, timeframe, quotes, page_size, collect_cfg, force, chunk, chunks,
                     names or {}, archive_base_url, client, progress)

    async def one(symbol: str) -> list[ChunkOutcome]:
        async with pairs:
            return await job.run(symbol)

    try:
        outcomes = await asyncio.gather(*(one(symbol) for symbol in symbols))
    finally:
        await client.close()
    report = ExchangeReport(exchange, timeframe, start.isoformat(), end.isoformat(),
                            chunks=[c for per_symbol in outcomes for c in per_symbol])
    log.info(report.summary())
    return report


@dataclass
class _SymbolJob:
    """Everything one symbol's chunks need; `run` collects them in order."""

    s3: object
    lake_cfg: LakeConfig
    exchange: str
    timeframe: str
    quotes: list[str]
    page_size: int
    collect_cfg: CollectConfig
    force: bool
    chunk: timedelta | None
    chunks: list[tuple[datetime, datetime]]
    names: dict[str, list[str]]
    archive_base_url: str | None
    client: object
    progress: _Progress

    async def run(self, symbol: str) -> list[ChunkOutcome]:
        import ccxt

        from candleflow.collect import collect_pair_async

        s3, bucket, exchange, timeframe = self.s3, self.lake_cfg.bucket, self.exchange, self.timeframe
        tf_ms, chunks, progress = TIMEFRAME_MS[timeframe], self.chunks, self.progress
        outcomes: list[ChunkOutcome] = []
        # Scheduled runs (`chunk` given) always fetch: their point is to catch late candles.
        # only the ledger entries of the chunks' dates: a pair's ledger holds its whole history
        ledger = [] if self.force or self.chunk or not chunks else await asyncio.to_thread(
            coverage.read_entries, s3, bucket, exchange=exchange, symbol=symbol, timeframe=timeframe,
            start=chunks[0][0], end=chunks[-1][1])
        listed_ms = None if self.chunk else await _listed_from(
            s3, bucket, self.client, exchange, symbol, timeframe, self.quotes, self.names.get(symbol), self.page_size,
            self.collect_cfg)
        for lo, hi in chunks:
            outcome = ChunkOutcome(symbol, lo.isoformat(), hi.isoformat(), "failed")
            outcomes.append(outcome)
            if ledger and _chunk_complete(ledger, lo, hi, tf_ms):
                outcome.status, outcome.detail = "complete", "already complete in the lake"
                progress.step(f"{symbol} {lo:%Y-%m-%d} already complete")
                continue
            if listed_ms is not None and int(hi.timestamp() * 1000) <= listed_ms:
                # before the pair's first candle: nothing to ask the exchange for
                await asyncio.to_thread(coverage.write_entries, s3, bucket, coverage.build_entries(
                    exchange=exchange, symbol=symbol, timeframe=timeframe, tf_ms=tf_ms, window_start=lo,
                    window_end=hi, present_ms=[], market=None, status="complete",
                    reasons=[(int(lo.timestamp() * 1000), listed_ms, "not_listed")]))
                outcome.status, outcome.detail = "complete", "before the pair's first candle"
                progress.step(f"{symbol} {lo:%Y-%m-%d} before listing")
                continue
            fetch_from = lo
            if listed_ms is not None and int(lo.timestamp() * 1000) < listed_ms:
                fetch_from = datetime.fromtimestamp(listed_ms / 1000, UTC)
            try:
                result = await collect_pair_async(self.client, symbol, timeframe, fetch_from, hi, quotes=self.quotes,
                                                  names=self.names.get(symbol), archive_base_url=self.archive_base_url,
                                                  page_size=self.page_size, cfg=self.collect_cfg)
            except ccxt.BaseError as exc:  # one symbol's exchange error must not stop the others
                outcome.detail = f"{type(exc).__name__}: {str(exc)[:300]}"
                log.error("%s %s %s → %s failed: %s", exchange, symbol, outcome.start, outcome.end, outcome.detail)
                progress.step(f"{symbol} failed")
                continue
            outcome.market, outcome.requests = result.market, result.requests
            outcome.expected, outcome.missing = result.expected, result.missing
            for note in result.notes:
                log.warning("%s %s: %s", exchange, symbol, note)
            if result.skipped_reason:
                outcome.status, outcome.detail = "skipped", result.skipped_reason
                log.info("%s %s skipped: %s", exchange, symbol, result.skipped_reason)
                await asyncio.to_thread(coverage.write_entries, s3, bucket, coverage.build_entries(
                    exchange=exchange, symbol=symbol, timeframe=timeframe, tf_ms=tf_ms, window_start=lo,
                    window_end=hi, market=None, present_ms=[], status="not_listed"))
                progress.step(f"{symbol} not listed")
                # a symbol the exchange does not list is not listed in the other chunks either
                for later_lo, later_hi in chunks[chunks.index((lo, hi)) + 1:]:
                    outcomes.append(ChunkOutcome(symbol, later_lo.isoformat(), later_hi.isoformat(), "skipped",
                                                 detail=result.skipped_reason))
                    progress.step(f"{symbol} not listed")
                break
            # GX and S3 block: a worker thread, while the loop keeps the other symbols fetching
            await asyncio.to_thread(_publish_chunk, s3, self.lake_cfg, result, outcome, lo, hi, fetch_from)
            progress.step(f"{symbol} {outcome.status}" if outcome.status != "published"
                          else f"{symbol} {outcome.rows} candles")
        return outcomes


def _publish_chunk(s3, lake_cfg: LakeConfig, result, outcome: ChunkOutcome, lo: datetime, hi: datetime,
                   fetch_from: datetime) -> None:
    """Check one collected chunk, then publish it (or quarantine it) and write its ledger entries."""
    from candleflow import quality

    exchange, symbol, timeframe = result.exchange, result.symbol, result.timeframe
    tf_ms, bucket = TIMEFRAME_MS[timeframe], lake_cfg.bucket
    entry_args = dict(exchange=exchange, symbol=symbol, timeframe=timeframe, tf_ms=tf_ms, window_start=lo,
                      window_end=hi, market=result.market)
    if result.served_from_ms is not None and result.served_from_ms > int(lo.timestamp() * 1000):
        # kraken's window rolls forward: candles an earlier run fetched before its horizon
        # are no longer served. Keep them, or a re-run would delete history from the lake.
        result.candles = _keep_unserved(s3, lake_cfg, exchange, symbol, timeframe, lo,
                                        result.served_from_ms, result.candles)
    label = f"{exchange} {result.market} {timeframe} {lo.isoformat()} → {hi.isoformat()}"
    # continuity is judged over what the exchange can serve: from the listing (on kraken, from the
    # oldest candle kept or served) to the last closed candle; same window on a re-run, same verdict
    expected_from = fetch_from
    if result.served_from_ms is not None:
        served = datetime.fromtimestamp(result.served_from_ms / 1000, UTC)
        expected_from = max(expected_from, min(served, result.candles["ts"].min()) if len(result.candles) else served)
    expected_to = datetime.fromtimestamp(result.closed_end_ms / 1000, UTC) if result.closed_end_ms is not None else hi
    checked = quality.validate_ohlcv(result.candles, timeframe, context_label=label,
                                     window=(expected_from, max(expected_from, expected_to)))
    kept = dict(ohlcv_prefix=lake_cfg.ohlcv_prefix, exchange=exchange, symbol=symbol, timeframe=timeframe,
                market=result.market, window_start=lo, window_end=hi)
    reasons = []
    if fetch_from > lo:
        reasons.append((int(lo.timestamp() * 1000), int(fetch_from.timestamp() * 1000), "not_listed"))
    if result.served_from_ms is not None:
        reasons.append((int(lo.timestamp() * 1000), result.served_from_ms, "not_served"))
    if result.closed_end_ms is not None:
        reasons.append((result.closed_end_ms, int(hi.timestamp() * 1000), "not_closed"))
    present = result.candles["ts"].astype("int64").tolist() if len(result.candles) else []
    if not checked.success:
        key = lake.quarantine_batch(s3, bucket, result.candles, checked.to_json(), exchange=exchange,
                                    symbol=symbol, timeframe=timeframe, market=result.market,
                                    window_start=lo, window_end=hi, prefix=lake_cfg.quarantine_prefix)
        quality.keep_batch_result(s3, bucket, checked, result_key=key.rsplit("/", 1)[0] + "/report.json", **kept)
        outcome.status, outcome.keys = "quarantined", [key]
        outcome.detail = f"{checked.summary}\n  Quarantined at s3://{bucket}/{key}."
        log.error(outcome.detail)
        coverage.write_entries(s3, bucket, coverage.build_entries(
            present_ms=[], status="quarantined", **entry_args))
        return
    written = lake.write_batch(s3, bucket, result.candles, exchange=exchange, symbol=symbol,
                               timeframe=timeframe, market=result.market, window_start=lo, window_end=hi,
                               prefix=lake_cfg.ohlcv_prefix)
    coverage.write_entries(s3, bucket, coverage.build_entries(
        present_ms=present, status="complete", reasons=reasons, **entry_args))
    outcome.status, outcome.rows, outcome.keys = "published", sum(o.rows for o in written), [o.key for o in written]
    quality.keep_batch_result(s3, bucket, checked, **kept)
    if checked.warnings:  # warn-level rules: published, and tagged in the report, the quality table and the log
        outcome.detail = checked.summary
        log.warning(checked.summary)
