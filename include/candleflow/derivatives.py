"""Funding rates and open interest of the linear USDT perpetuals of binance, bybit and okx, into
their own lake tables (`funding`, `open_interest`; docs/derivatives.md).

- Markets: `load_markets()` restricted to the perpetual market types (binance's spot BTC/USDT and
  its perpetual share the id BTCUSDT; a spot-and-swap client resolves ids ambiguously). The
  perpetual is the active swap with base = the symbol (or one of its aliases), linear, settled in
  USDT. A symbol without one is skipped with its reason, never an exception.
- Funding interval, per symbol, as the exchange states it today: binance `fapi/v1/fundingInfo`
  (which lists only the symbols whose interval was changed: the others settle every 8 h), bybit the
  instrument's `fundingInterval` (minutes), okx `nextFundingTime - fundingTime` of
  `public/funding-rate`. Settlements fall on multiples of the interval from 00:00 UTC.
- History is paged with our own since-loop in windows of `page × interval` (`until` bounds every
  request: bybit and okx answer the newest rows of a range). Every expected settlement (open
  interest: every period) of the window is checked for; a missing one is a recorded gap with its
  reason — before the venue's retention horizon, or the exchange returned none — never silence.
- Network errors, 429/418 and 5xx are retried with exponential backoff (honouring Retry-After);
  an empty page where rows are due is asked again before it counts as a gap.
- Lake: one object per (exchange, symbol, month) per table, the union of what the lake held and
  what this run fetched (a fetched row wins), conformed, deduplicated and sorted by
  `candleflow.lake.write_partition`: a re-run writes the same bytes, and history the venue no
  longer serves is kept. Gaps go to `derivatives_gaps/dataset=…/exchange=…/symbol=…/month=…/`.
"""

from __future__ import annotations

import io
import logging
import time
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime, timedelta

import pandas as pd
import pyarrow as pa

from candleflow.collect import _with_retries
from candleflow.config import CollectConfig, ConfigError, config_dir, load_universe, load_yaml, parse_utc
from candleflow.lake import TableSpec, partition_path, write_partition

log = logging.getLogger(__name__)

HOUR_MS = 3_600_000
DERIVATIVE_EXCHANGES = ("binance", "bybit", "okx")
PERIOD_MS = {"5m": 300_000, "15m": 900_000, "30m": 1_800_000, "1h": HOUR_MS, "4h": 4 * HOUR_MS, "1d": 24 * HOUR_MS}

FUNDING_SCHEMA = pa.schema([
    pa.field("market", pa.string(), nullable=False),        # the exchange's market, e.g. BTC/USDT:USDT
    pa.field("ts", pa.timestamp("ms", tz="UTC"), nullable=False),   # the settlement instant
    pa.field("funding_rate", pa.float64(), nullable=False),          # per interval, not annualised
    pa.field("interval_hours", pa.int16(), nullable=False),          # the symbol's settlement interval
    pa.field("mark_price", pa.float64()),                            # binance only (null elsewhere)
])
OPEN_INTEREST_SCHEMA = pa.schema([
    pa.field("market", pa.string(), nullable=False),
    pa.field("ts", pa.timestamp("ms", tz="UTC"), nullable=False),    # start of the statistics period
    pa.field("period", pa.string(), nullable=False),                 # e.g. 1h
    pa.field("open_interest", pa.float64(), nullable=False),         # base-asset units, all venues
    pa.field("open_interest_value", pa.float64()),                   # quote value; bybit publishes none
])
GAPS_SCHEMA = pa.schema([
    pa.field("ts", pa.timestamp("ms", tz="UTC"), nullable=False),    # the expected instant that is missing
    pa.field("reason", pa.string(), nullable=False),
])
PARTITION_KEYS = ("exchange", "symbol", "month")
TABLE_SPECS = {
    "funding": TableSpec("funding", FUNDING_SCHEMA, PARTITION_KEYS, ("ts",), ("ts",)),
    "open_interest": TableSpec("open_interest", OPEN_INTEREST_SCHEMA, PARTITION_KEYS, ("period", "ts"), ("period", "ts")),
}
GAPS = TableSpec("derivatives_gaps", GAPS_SCHEMA, ("dataset", "exchange", "symbol", "month"), ("ts",), ("ts",))
OBJECT_NAME = "part-00000.parquet"


class DerivativesError(RuntimeError):
    """Some symbols of an exchange could not be collected after the retries (the others landed)."""


# -- configuration ---------------------------------------------------------------------------
@dataclass(frozen=True)
class VenueConfig:
    market_types: tuple[str, ...]
    funding_page: int
    open_interest_page: int
    retention_days: dict[str, int] = field(default_factory=dict)


@dataclass(frozen=True)
class DerivativesConfig:
    exchanges: tuple[str, ...]
    symbols: tuple[str, ...]
    names: dict[str, tuple[str, ...]]       # symbol -> tickers it may be listed under (aliases)
    settle: str
    history_start: datetime
    lookback: timedelta
    open_interest_period: str
    snap_tolerance_ms: int
    venues: dict[str, VenueConfig]


def load_config() -> DerivativesConfig:
    """include/config/derivatives.yaml, validated; ConfigError names the field and the fix."""
    where = str(config_dir() / "derivatives.yaml")
    data = load_yaml("derivatives.yaml")
    universe = load_universe()
    exchanges = tuple(data.get("exchanges") or DERIVATIVE_EXCHANGES)
    for ex in exchanges:
        if ex not in DERIVATIVE_EXCHANGES:
            raise ConfigError(f"{where}: exchanges: {ex!r} has no perpetuals here; use some of "
                              f"{', '.join(DERIVATIVE_EXCHANGES)}")
    raw_symbols = data.get("symbols", "universe")
    if raw_symbols == "universe":
        symbols = universe.symbols
    elif isinstance(raw_symbols, list) and raw_symbols:
        symbols = tuple(str(s).upper() for s in raw_symbols)
    else:
        raise ConfigError(f"{where}: symbols: {raw_symbols!r} is invalid; write 'universe' or a list such as [BTC, ETH]")
    period = str(data.get("open_interest_period", "1h"))
    if period not in PERIOD_MS:
        raise ConfigError(f"{where}: open_interest_period: {period!r} is invalid; use one of {', '.join(PERIOD_MS)}")
    venues = {}
    for ex in exchanges:
        spec = (data.get("venues") or {}).get(ex)
        if not isinstance(spec, dict):
            raise ConfigError(f"{where}: venues.{ex} is missing; give market_types, funding_page, open_interest_page")
        try:
            venues[ex] = VenueConfig(market_types=tuple(spec["market_types"]), funding_page=int(spec["funding_page"]),
                                     open_interest_page=int(spec["open_interest_page"]),
                                     retention_days={k: int(v) for k, v in (spec.get("retention_days") or {}).items()})
        except (KeyError, TypeError, ValueError) as exc:
            raise ConfigError(f"{where}: venues.{ex}: {exc!r}; give market_types, funding_page, open_interest_page "
                              "(integers) and optional retention_days") from exc
        if venues[ex].funding_page < 1 or venues[ex].open_interest_page < 1:
            raise ConfigError(f"{where}: venues.{ex}: page sizes must be positive integers")
    lookback = float(data.get("lookback_hours", 8))
    if lookback < 0:
        raise ConfigError(f"{where}: lookback_hours: {lookback} must be >= 0")
    return DerivativesConfig(
        exchanges=exchanges, symbols=symbols, names={s: universe.names(s) if s in universe.symbols else (s,) for s in symbols},
        settle=str(data.get("settle", "USDT")).upper(),
        history_start=parse_utc(data.get("history_start", "2024-09-20T00:00:00Z"), f"{where}: history_start"),
        lookback=timedelta(hours=lookback), open_interest_period=period,
        snap_tolerance_ms=int(data.get("snap_tolerance_ms", 1000)), venues=venues)


# -- exchange access -------------------------------------------------------------------------
def open_client(exchange: str, venue: VenueConfig, *, mode: str, emulator_url: str | None,
                collect_cfg: CollectConfig, limiter=None):
    """A stock ccxt client (collect.make_exchange) that loads only the perpetual market types;
    `limiter` (candleflow.ratelimit) gates its requests as it gates the candle collectors'."""
    from candleflow.collect import make_exchange

    client = make_exchange(exchange, mode=mode, emulator_url=emulator_url,
                           enable_rate_limit=collect_cfg.enable_rate_limit, timeout_ms=collect_cfg.timeout_ms,
                           limiter=limiter)
    client.options["fetchMarkets"] = {"types": list(venue.market_types)}
    return client


class Caller:
    """`collect._with_retries` bound to one client: NetworkError (timeouts, 5xx, 429, 418) waits
    and tries again, exponential backoff from `backoff_seconds`, at least the Retry-After the venue
    sent; anything else (ExchangeError, BadSymbol) is raised at once. Counts requests."""

    def __init__(self, client, cfg: CollectConfig):
        self.client, self.cfg, self._counter = client, cfg, [0]

    @property
    def requests(self) -> int:
        return self._counter[0]

    def __call__(self, what: str, fn, *args, **kwargs):
        return _with_retries(lambda: fn(*args, **kwargs), f"{self.client.id} {what}", self.cfg, self._counter,
                             client=self.client)


def resolve_perpetual(client, symbol: str, names: tuple[str, ...], settle: str) -> tuple[str | None, str | None]:
    """(market symbol, None) of the active linear perpetual of `symbol` settled in `settle`, or
    (None, reason)."""
    inactive = []
    for name in names:
        for market in (client.markets or {}).values():
            if (market.get("swap") and market.get("linear") and market.get("base") == name
                    and market.get("quote") == settle and market.get("settle") == settle):
                if market.get("active") is False:
                    inactive.append(market["symbol"])
                    continue
                return market["symbol"], None
    wanted = " or ".join(f"{n}/{settle}:{settle}" for n in names)
    reason = f"not listed: {client.id} has no active {settle}-margined perpetual {wanted}"
    return None, reason + (f" ({', '.join(inactive)} inactive)" if inactive else "")


def _interval_hours(text, where: str) -> int:
    """'4h' (ccxt's unified interval) -> 4."""
    value = str(text or "").strip().lower()
    if value.endswith("h") and value[:-1].isdigit() and int(value[:-1]) > 0:
        return int(value[:-1])
    raise ValueError(f"{where}: funding interval {text!r} is not a whole number of hours")


def funding_intervals(client, call: Caller, markets: dict[str, str]) -> dict[str, int | str]:
    """{symbol: interval hours} as the exchange states it now; a string is why it is unknown."""
    out: dict[str, int | str] = {}
    if client.id == "binance":
        # fundingInfo lists only the symbols whose cap, floor or interval was adjusted; binance's
        # default for the others is 8 h
        listed = call("fetch_funding_intervals", client.fetch_funding_intervals)
        for symbol, market in markets.items():
            entry = listed.get(market)
            out[symbol] = _interval_hours(entry["interval"], market) if entry and entry.get("interval") else 8
    elif client.id == "bybit":
        for symbol, market in markets.items():
            minutes = client.market(market)["info"].get("fundingInterval")
            if minutes and int(minutes) % 60 == 0:
                out[symbol] = int(minutes) // 60
            else:
                out[symbol] = f"instrument gives no whole-hour fundingInterval ({minutes!r})"
    else:  # okx: the distance between the coming and the following settlement
        for symbol, market in markets.items():
            info = call(f"fetch_funding_interval {market}", client.fetch_funding_interval, market)
            try:
                out[symbol] = _interval_hours(info.get("interval"), market)
            except ValueError as exc:
                out[symbol] = str(exc)
    return out


# -- history ---------------------------------------------------------------------------------
def _windows(start_ms: int, end_ms: int, step_ms: int, page: int):
    since = start_ms
    while since < end_ms:
        until = min(end_ms, since + page * step_ms) - 1
        yield since, until
        since = until + 1


def _snap(ts: int, step_ms: int, tolerance_ms: int) -> int:
    nearest = round(ts / step_ms) * step_ms
    return nearest if abs(ts - nearest) <= tolerance_ms else ts


def _grid(start_ms: int, end_ms: int, step_ms: int) -> list[int]:
    first = -(-start_ms // step_ms) * step_ms
    return list(range(first, end_ms, step_ms))


@dataclass
class Series:
    """One dataset of one symbol over a window: the rows fetched, what was expected, the gaps."""

    rows: list[dict]
    expected: int
    gaps: list[tuple[int, str]]


def _page_loop(fetch_page, start_ms: int, end_ms: int, step_ms: int, page: int, retries: int,
               backoff: float, what: str) -> dict[int, dict]:
    """Rows by (snapped) time over [start, end): one bounded request per window of `page` steps; a
    full page that starts late (newest-first venues) is completed by asking for what lies before."""
    rows: dict[int, dict] = {}
    for since, until in _windows(start_ms, end_ms, step_ms, page):
        got = fetch_page(since, until, page)
        # rows are due when a grid instant lies in the window (windows never leave [start, end))
        due = -(-since // step_ms) * step_ms <= until
        for attempt in range(retries):
            if got or not due:
                break
            # ccxt turns a 200 with a broken body into []: where rows are due, ask again
            log.warning("%s %s..%s came back empty; asking again (%d/%d)", what, since, until, attempt + 1, retries)
            time.sleep(backoff * 2 ** attempt)
            got = fetch_page(since, until, page)
        while got:
            for row in got:
                if since <= row["ts"] <= until:
                    rows[row["ts"]] = row
            oldest = min(r["ts"] for r in got)
            if len(got) < page or oldest <= since:
                break
            got = fetch_page(since, oldest - 1, page)
    return rows


def _explain(missing: list[int], now_ms: int, retention_days: int | None, exchange: str) -> list[tuple[int, str]]:
    horizon = now_ms - retention_days * 86_400_000 if retention_days else None
    return [(t, f"before {exchange}'s retention horizon ({retention_days} days): the exchange no longer serves it")
            if horizon is not None and t < horizon else (t, "the exchange returned none") for t in missing]


def _history(fetch_page, *, step: int, start_ms: int, end_ms: int, now_ms: int, listed_ms: int | None, page: int,
             retention_days: int | None, retries: int, backoff: float, what: str, exchange: str,
             extra: dict) -> Series:
    """Every instant of the `step` grid in [start, end), from the listing up to `now_ms`, paged by
    `fetch_page(since, until, limit)`; each row gets `extra`, each missing instant a gap."""
    lo, hi = max(start_ms, listed_ms or 0), min(end_ms, now_ms + 1)
    expected = _grid(lo, hi, step) if lo < hi else []
    rows = _page_loop(fetch_page, lo, hi, step, page, retries, backoff, what) if expected else {}
    for row in rows.values():
        row.update(extra)
    missing = [t for t in expected if t not in rows]
    return Series(sorted(rows.values(), key=lambda r: r["ts"]), len(expected),
                  _explain(missing, now_ms, retention_days, exchange))


def fetch_funding(client, call: Caller, market: str, interval_hours: int, start_ms: int, end_ms: int, *,
                  now_ms: int, listed_ms: int | None, page: int, retention_days: int | None,
                  snap_tolerance_ms: int) -> Series:
    """Every settlement in [start, end) that has happened by `now_ms`, checked against the grid."""
    step = interval_hours * HOUR_MS

    def fetch_page(since, until, limit):
        # okx takes its own exclusive bounds (ccxt maps since to `before`); the others take `until`
        params = {"after": until + 1} if client.id == "okx" else {"until": until}
        raw = call(f"fetch_funding_rate_history {market} from {client.iso8601(since)}",
                   client.fetch_funding_rate_history, market, since=since, limit=limit, params=params)
        return [{"ts": _snap(int(r["timestamp"]), step, snap_tolerance_ms), "funding_rate": float(r["fundingRate"]),
                 "mark_price": _float((r.get("info") or {}).get("markPrice"))}
                for r in raw if r.get("timestamp") is not None and r.get("fundingRate") is not None]

    return _history(fetch_page, step=step, start_ms=start_ms, end_ms=end_ms, now_ms=now_ms, listed_ms=listed_ms,
                    page=page, retention_days=retention_days, retries=call.cfg.empty_page_retries,
                    backoff=call.cfg.backoff_seconds, what=f"{client.id} {market} funding", exchange=client.id,
                    extra={"market": market, "interval_hours": interval_hours})


def fetch_open_interest(client, call: Caller, market: str, period: str, start_ms: int, end_ms: int, *,
                        now_ms: int, listed_ms: int | None, page: int, retention_days: int | None) -> Series:
    """Open interest per `period` in [start, end), in base units on every venue (okx's contracts
    converted by its oiCcy column), checked against the period grid."""

    def fetch_page(since, until, limit):
        raw = call(f"fetch_open_interest_history {market} from {client.iso8601(since)}",
                   client.fetch_open_interest_history, market, period, since=since, limit=limit,
                   params={"until": until})
        out = []
        for r in raw:
            info = r.get("info")
            if client.id == "okx" and isinstance(info, list) and len(info) > 3:
                amount, value = _float(info[2]), _float(info[3])   # [ts, contracts, base, usd]
            else:
                amount, value = _float(r.get("openInterestAmount")), _float(r.get("openInterestValue"))
            if r.get("timestamp") is not None and amount is not None:
                out.append({"ts": int(r["timestamp"]), "open_interest": amount, "open_interest_value": value})
        return out

    return _history(fetch_page, step=PERIOD_MS[period], start_ms=start_ms, end_ms=end_ms, now_ms=now_ms,
                    listed_ms=listed_ms, page=page, retention_days=retention_days,
                    retries=call.cfg.empty_page_retries, backoff=call.cfg.backoff_seconds,
                    what=f"{client.id} {market} open interest", exchange=client.id,
                    extra={"market": market, "period": period})


def _float(value) -> float | None:
    if value is None or value == "":
        return None
    try:
        return float(value)
    except (TypeError, ValueError):
        return None


# -- lake ------------------------------------------------------------------------------------
def _months(start_ms: int, end_ms: int) -> list[tuple[str, int, int]]:
    """(YYYY-MM, first ms, end ms) of every month [start, end) touches."""
    out = []
    cursor = datetime.fromtimestamp(start_ms / 1000, UTC).replace(day=1, hour=0, minute=0, second=0, microsecond=0)
    while int(cursor.timestamp() * 1000) < end_ms:
        nxt = (cursor + timedelta(days=32)).replace(day=1)
        out.append((cursor.strftime("%Y-%m"), int(cursor.timestamp() * 1000), int(nxt.timestamp() * 1000)))
        cursor = nxt
    return out


def _read_object(s3, bucket: str, key: str) -> pd.DataFrame | None:
    import pyarrow.parquet as pq

    try:
        body = s3.get_object(Bucket=bucket, Key=key)["Body"].read()
    except s3.exceptions.NoSuchKey:
        return None
    return pq.read_table(io.BytesIO(body)).to_pandas()


def _frame(rows: list[dict], schema: pa.Schema) -> pd.DataFrame:
    frame = pd.DataFrame(rows, columns=schema.names)
    frame["ts"] = pd.to_datetime(frame["ts"].astype("int64"), unit="ms", utc=True).astype("datetime64[ms, UTC]")
    return frame


def write_series(s3, bucket: str, dataset: str, exchange: str, symbol: str, series: Series,
                 start_ms: int, end_ms: int) -> list[str]:
    """Merge the window's rows into each month object of `dataset`, and rewrite the month's gap
    record: gaps found now inside the window replace the old ones there; old gaps elsewhere stay
    unless the row has since arrived. Returns the keys written."""
    spec = TABLE_SPECS[dataset]
    fetched = _frame(series.rows, spec.schema)
    gaps = _frame(series.gaps, GAPS_SCHEMA)
    lo, hi = pd.Timestamp(start_ms, unit="ms", tz="UTC"), pd.Timestamp(end_ms, unit="ms", tz="UTC")
    keys = []
    for month, m_lo, m_hi in _months(start_ms, end_ms):
        partition = {"exchange": exchange, "symbol": symbol, "month": month}
        in_month = (fetched["ts"] >= pd.Timestamp(m_lo, unit="ms", tz="UTC")) & \
                   (fetched["ts"] < pd.Timestamp(m_hi, unit="ms", tz="UTC"))
        old = _read_object(s3, bucket, partition_path(spec, partition) + OBJECT_NAME)
        # old rows first: write_partition keeps the last of duplicates, so a fetched row wins
        pieces = [f for f in (old, fetched[in_month]) if f is not None and len(f)]
        merged = pd.concat(pieces, ignore_index=True) if pieces else fetched[in_month]
        written = write_partition(s3, bucket, spec, merged.astype({"ts": "datetime64[ms, UTC]"}),
                                  partition=partition, object_name=OBJECT_NAME)
        if written is not None:
            keys.append(written.key)
        gap_partition = {"dataset": dataset, **partition}
        old_gaps = _read_object(s3, bucket, partition_path(GAPS, gap_partition) + OBJECT_NAME)
        kept = old_gaps[(old_gaps["ts"] < lo) | (old_gaps["ts"] >= hi)] if old_gaps is not None else gaps.iloc[:0]
        present = set(merged["ts"]) if len(merged) else set()
        kept = kept[~kept["ts"].isin(present)]
        new = gaps[(gaps["ts"] >= pd.Timestamp(m_lo, unit="ms", tz="UTC")) &
                   (gaps["ts"] < pd.Timestamp(m_hi, unit="ms", tz="UTC"))]
        pieces = [f for f in (kept, new) if len(f)]
        month_gaps = pd.concat(pieces, ignore_index=True) if pieces else new
        written = write_partition(s3, bucket, GAPS, month_gaps, partition=gap_partition, object_name=OBJECT_NAME)
        if written is not None:
            keys.append(written.key)
    return keys


# -- one exchange ----------------------------------------------------------------------------
@dataclass
class SymbolReport:
    symbol: str
    market: str | None = None
    interval_hours: int | None = None
    skipped_reason: str | None = None
    funding_rows: int = 0
    funding_expected: int = 0
    funding_gaps: int = 0
    open_interest_rows: int = 0
    open_interest_expected: int = 0
    open_interest_gaps: int = 0
    error: str | None = None


@dataclass
class ExchangeReport:
    exchange: str
    start: str
    end: str
    symbols: list[SymbolReport] = field(default_factory=list)
    requests: int = 0
    objects: int = 0

    def summary(self) -> dict:
        """Small and JSON-able, for XCom and logs."""
        return {"exchange": self.exchange, "start": self.start, "end": self.end, "requests": self.requests,
                "objects": self.objects, "symbols": [asdict(s) for s in self.symbols]}


def ingest_exchange(s3, bucket: str, exchange: str, start: datetime, end: datetime, *,
                    cfg: DerivativesConfig, mode: str, emulator_url: str | None, collect_cfg: CollectConfig,
                    symbols: list[str] | None = None, client=None, limiter=None, alert=None) -> ExchangeReport:
    """Funding and open interest of every configured symbol's perpetual on `exchange` over
    [start, end) (clipped to history_start and to the exchange's clock) into the lake.

    A symbol without a perpetual is skipped with its reason; a symbol whose requests still fail
    after the retries is reported and, once the other symbols landed, raises DerivativesError.

    Requests go through the exchange's shared limiter (`limiter`, else `ratelimit.limiter_for`),
    as the candle collectors' do: bybit meters every endpoint of an IP in one budget, and a ban
    seen here must stop the candle collectors too (and the other way round). `alert` receives
    the ban alert."""
    if exchange not in cfg.venues:
        raise ConfigError(f"exchange: {exchange!r} is not configured in derivatives.yaml; use one of "
                          f"{', '.join(cfg.venues)}")
    if end <= start:
        raise ConfigError(f"end: {end.isoformat()} must be after start ({start.isoformat()})")
    venue = cfg.venues[exchange]
    symbols = list(symbols or cfg.symbols)
    start = max(start, cfg.history_start)
    report = ExchangeReport(exchange, start.isoformat(), end.isoformat())
    if client is None:
        from candleflow.ratelimit import limiter_for

        limiter = limiter or limiter_for(exchange, collect_cfg, alert=alert, mode=mode)
        client = open_client(exchange, venue, mode=mode, emulator_url=emulator_url, collect_cfg=collect_cfg,
                             limiter=limiter)
    call = Caller(client, collect_cfg)
    call("load_markets", client.load_markets)
    now_ms = int(call("fetch_time", client.fetch_time))
    start_ms, end_ms = int(start.timestamp() * 1000), int(end.timestamp() * 1000)
    markets: dict[str, str] = {}
    for symbol in symbols:
        market, reason = resolve_perpetual(client, symbol, cfg.names.get(symbol, (symbol,)), cfg.settle)
        if market is None:
            log.info("%s %s skipped: %s", exchange, symbol, reason)
            report.symbols.append(SymbolReport(symbol, skipped_reason=reason))
        else:
            markets[symbol] = market
    intervals = funding_intervals(client, call, markets) if markets and start_ms < end_ms else {}
    failures = []
    import ccxt

    for symbol, market in markets.items():
        rep = SymbolReport(symbol, market)
        report.symbols.append(rep)
        interval = intervals.get(symbol)
        if not isinstance(interval, int):
            rep.skipped_reason = f"funding interval unknown: {interval}"
            log.warning("%s %s skipped: %s", exchange, symbol, rep.skipped_reason)
            continue
        rep.interval_hours = interval
        listed = client.market(market).get("created")
        try:
            funding = fetch_funding(client, call, market, interval, start_ms, end_ms, now_ms=now_ms, listed_ms=listed,
                                    page=venue.funding_page, retention_days=venue.retention_days.get("funding"),
                                    snap_tolerance_ms=cfg.snap_tolerance_ms)
            oi = fetch_open_interest(client, call, market, cfg.open_interest_period, start_ms, end_ms, now_ms=now_ms,
                                     listed_ms=listed, page=venue.open_interest_page,
                                     retention_days=venue.retention_days.get("open_interest"))
        except ccxt.NetworkError as exc:
            rep.error = f"{type(exc).__name__}: {str(exc)[:300]}"
            failures.append(f"{symbol}: {rep.error}")
            continue
        except ccxt.ExchangeError as exc:  # permanent: the venue refuses this symbol
            rep.skipped_reason = f"exchange refused: {type(exc).__name__}: {str(exc)[:300]}"
            log.warning("%s %s skipped: %s", exchange, symbol, rep.skipped_reason)
            continue
        rep.funding_rows, rep.funding_expected, rep.funding_gaps = len(funding.rows), funding.expected, len(funding.gaps)
        rep.open_interest_rows, rep.open_interest_expected, rep.open_interest_gaps = len(oi.rows), oi.expected, len(oi.gaps)
        hi = min(end_ms, now_ms + 1)
        if start_ms < hi:
            report.objects += len(write_series(s3, bucket, "funding", exchange, symbol, funding, start_ms, hi))
            report.objects += len(write_series(s3, bucket, "open_interest", exchange, symbol, oi, start_ms, hi))
        log.info("%s %s (%s, funding every %d h): funding %d/%d, open interest %d/%d%s", exchange, symbol, market,
                 interval, rep.funding_rows, rep.funding_expected, rep.open_interest_rows, rep.open_interest_expected,
                 f"; gaps: {[g[1] for g in (funding.gaps + oi.gaps)][:1]} ×{rep.funding_gaps + rep.open_interest_gaps}"
                 if funding.gaps or oi.gaps else "")
    report.requests = call.requests
    if failures:
        raise DerivativesError(f"{exchange}: {len(failures)} symbol(s) failed after retries (the others landed): "
                               + "; ".join(failures))
    return report


def read_gaps(s3, bucket: str, dataset: str, **filters) -> pd.DataFrame:
    """The recorded gaps of `dataset` (funding | open_interest), filtered by exchange/symbol/month."""
    from candleflow.lake import read_table

    return read_table(s3, bucket, GAPS, dataset=dataset, **filters)[0]
