"""The gap ledger and the coverage table: every candle is either in the lake or explained.

Each ingest of a (exchange, symbol, timeframe) window records, per UTC date of the window, how
many candles were due, how many landed, and every missing range with its reason:

    coverage/exchange=<ex>/symbol=<SYM>/timeframe=<tf>/date=<YYYY-MM-DD>/window-<from>_<to>.json

Like the lake's data parts, a ledger entry's key is a pure function of the window it describes
and its bytes a pure function of what was found, so re-running a run rewrites it identically and
concurrent runs of different windows never write the same object (no read-modify-write).
A day's coverage is the union of its windows, the later-named window winning where they overlap.

Reasons for a missing candle:
- `not_listed`: the exchange does not list the symbol (or not yet: before its first candle);
- `not_served`: the exchange's API does not serve that far back (kraken's 720-candle OHLC);
- `quarantined`: the batch failed its quality suite and sits in quarantine/;
- `exchange_returned_none`: the exchange answered, without those candles (an outage or a real gap);
- `not_closed`: the candle was still open at collection time (a later run fetches it).
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime, timedelta

from candleflow.config import TIMEFRAME_MS

COVERAGE_PREFIX = "coverage"
REASONS = ("not_listed", "not_served", "quarantined", "exchange_returned_none", "not_closed")
# A day counts as complete when nothing is missing, or what is missing cannot be fetched by
# trying again (the exchange never had it, or does not serve it).
FINAL_REASONS = {"not_listed", "not_served", "exchange_returned_none"}
_STAMP = "%Y%m%dT%H%M%SZ"


@dataclass
class Gap:
    start: str   # ISO, first missing candle
    end: str     # ISO, exclusive
    count: int
    reason: str


@dataclass
class LedgerEntry:
    exchange: str
    symbol: str
    timeframe: str
    date: str
    window_start: str
    window_end: str
    expected: int
    present: int
    market: str | None = None
    status: str = "complete"        # complete | partial | quarantined | not_listed
    gaps: list[Gap] = field(default_factory=list)

    @property
    def missing(self) -> int:
        return self.expected - self.present

    def to_json(self) -> dict:
        return asdict(self)

    @classmethod
    def from_json(cls, data: dict) -> LedgerEntry:
        return cls(**{**data, "gaps": [Gap(**g) for g in data.get("gaps", [])]})


def _iso(ms: int) -> str:
    return datetime.fromtimestamp(ms / 1000, UTC).isoformat()


def _ms(dt: datetime) -> int:
    return int(dt.timestamp() * 1000)


def find_gaps(present_ms: list[int] | set[int], start_ms: int, end_ms: int, tf_ms: int, reason: str) -> list[Gap]:
    """Maximal runs of missing candle times in [start, end), all with one reason."""
    present = set(present_ms)
    gaps, run_start, t = [], None, start_ms
    while t < end_ms:
        if t not in present:
            run_start = t if run_start is None else run_start
        elif run_start is not None:
            gaps.append(Gap(_iso(run_start), _iso(t), (t - run_start) // tf_ms, reason))
            run_start = None
        t += tf_ms
    if run_start is not None:
        gaps.append(Gap(_iso(run_start), _iso(end_ms), (end_ms - run_start) // tf_ms, reason))
    return gaps


def build_entries(*, exchange: str, symbol: str, timeframe: str, tf_ms: int, window_start: datetime,
                  window_end: datetime, present_ms: list[int], market: str | None, status: str,
                  reasons: list[tuple[int, int, str]] | None = None,
                  default_reason: str = "exchange_returned_none") -> list[LedgerEntry]:
    """One ledger entry per UTC date of the window.

    `reasons` are (start_ms, end_ms, reason) spans explaining missing candles (e.g. not served
    before kraken's 720-candle horizon, not closed after the exchange's clock); a missing candle
    outside every span gets `default_reason`. For quarantined or unlisted pairs nothing is
    present and every candle gets that status as its reason.
    """
    entries = []
    present = set(present_ms)
    day = datetime(window_start.year, window_start.month, window_start.day, tzinfo=UTC)
    while day < window_end:
        lo, hi = max(day, window_start), min(day + timedelta(days=1), window_end)
        lo_ms, hi_ms = _ms(lo), _ms(hi)
        due = list(range(-(-lo_ms // tf_ms) * tf_ms, hi_ms, tf_ms))
        here = [t for t in due if t in present]
        gaps: list[Gap] = []
        if status in ("quarantined", "not_listed"):
            gaps = find_gaps(set(), lo_ms, hi_ms, tf_ms, status)
        else:
            for gap in find_gaps(here, lo_ms, hi_ms, tf_ms, default_reason):
                gaps.extend(_split_by_reason(gap, reasons or [], tf_ms, default_reason))
        day_status = status if status in ("quarantined", "not_listed") else (
            "complete" if all(g.reason in FINAL_REASONS for g in gaps) else "partial")
        entries.append(LedgerEntry(exchange, symbol, timeframe, day.strftime("%Y-%m-%d"), lo.isoformat(),
                                   hi.isoformat(), expected=len(due), present=len(here), market=market,
                                   status=day_status, gaps=gaps))
        day += timedelta(days=1)
    return entries


def _split_by_reason(gap: Gap, reasons: list[tuple[int, int, str]], tf_ms: int, default: str) -> list[Gap]:
    start = _ms(datetime.fromisoformat(gap.start))
    end = _ms(datetime.fromisoformat(gap.end))
    out: list[Gap] = []
    t = start
    while t < end:
        reason = next((r for lo, hi, r in reasons if lo <= t < hi), default)
        run = t
        while t < end and next((r for lo, hi, r in reasons if lo <= t < hi), default) == reason:
            t += tf_ms
        out.append(Gap(_iso(run), _iso(t), (t - run) // tf_ms, reason))
    return out


def ledger_key(entry: LedgerEntry, prefix: str = COVERAGE_PREFIX) -> str:
    lo = datetime.fromisoformat(entry.window_start).strftime(_STAMP)
    hi = datetime.fromisoformat(entry.window_end).strftime(_STAMP)
    return (f"{prefix}/exchange={entry.exchange}/symbol={entry.symbol}/timeframe={entry.timeframe}/"
            f"date={entry.date}/window-{lo}_{hi}.json")


def write_entries(s3, bucket: str, entries: list[LedgerEntry], prefix: str = COVERAGE_PREFIX) -> list[str]:
    keys = []
    for entry in entries:
        key = ledger_key(entry, prefix)
        body = json.dumps(entry.to_json(), sort_keys=True, separators=(",", ":")).encode()
        s3.put_object(Bucket=bucket, Key=key, Body=body, ContentType="application/json")
        keys.append(key)
    return keys


def read_entries(s3, bucket: str, *, exchange: str | None = None, symbol: str | None = None,
                 timeframe: str | None = None, prefix: str = COVERAGE_PREFIX, start: datetime | None = None,
                 end: datetime | None = None) -> list[LedgerEntry]:
    """The ledger entries matching the filters, in key order. With `start`/`end`, only the entries
    of the UTC dates of [start, end) are read: pruned by the key's `date=` before any GET."""
    from candleflow.lake import _in_flight, _time_bounds, list_objects, listing_prefix

    listing = listing_prefix(prefix, exchange=exchange, symbol=symbol, timeframe=timeframe)
    first, last = _time_bounds(start, end, "%Y-%m-%d")
    keys = []
    for key in sorted(list_objects(s3, bucket, listing)):
        if not key.endswith(".json") or (timeframe and f"/timeframe={timeframe}/" not in key) \
                or (symbol and f"/symbol={symbol}/" not in key):
            continue
        if first or last:
            date = next((p[5:] for p in key.split("/") if p.startswith("date=")), None)
            if date is None or (first and date < first) or (last and date > last):
                continue
        keys.append(key)
    return _in_flight(lambda key: LedgerEntry.from_json(json.loads(s3.get_object(Bucket=bucket, Key=key)["Body"].read())),
                      keys)


def day_complete(entries: list[LedgerEntry], date: str, tf_ms: int) -> bool:
    """True when the windows recorded for `date` cover the whole day and none needs a re-fetch."""
    day_start = _ms(datetime.fromisoformat(date).replace(tzinfo=UTC))
    covered = set()
    for entry in entries:
        if entry.date != date:
            continue
        if entry.status not in ("complete", "not_listed"):
            return False
        lo, hi = _ms(datetime.fromisoformat(entry.window_start)), _ms(datetime.fromisoformat(entry.window_end))
        covered.update(range(lo, hi, tf_ms))
    return all(t in covered for t in range(day_start, day_start + 86_400_000, tf_ms))


def coverage_table(entries: list[LedgerEntry]):
    """exchange × symbol × timeframe: first and last candle day, expected vs present, gap counts by reason."""
    import pandas as pd

    if not entries:
        return pd.DataFrame(columns=["exchange", "symbol", "timeframe", "first_date", "last_date", "expected",
                                     "present", "missing", "coverage", *(f"gaps_{r}" for r in REASONS)])
    by_day: dict[tuple, list[LedgerEntry]] = {}
    for entry in entries:
        by_day.setdefault((entry.exchange, entry.symbol, entry.timeframe, entry.date), []).append(entry)
    records = []
    for (exchange, symbol, timeframe, date), windows in by_day.items():
        record = {"exchange": exchange, "symbol": symbol, "timeframe": timeframe, "date": date,
                  **day_counts(windows)}
        records.append(record)
    daily = pd.DataFrame(records)
    present_days = daily[daily["present"] > 0]
    table = daily.groupby(["exchange", "symbol", "timeframe"], as_index=False).agg(
        expected=("expected", "sum"), present=("present", "sum"),
        **{f"gaps_{r}": (f"gaps_{r}", "sum") for r in REASONS})
    span = present_days.groupby(["exchange", "symbol", "timeframe"], as_index=False).agg(
        first_date=("date", "min"), last_date=("date", "max"))
    table = table.merge(span, on=["exchange", "symbol", "timeframe"], how="left")
    table["missing"] = table["expected"] - table["present"]
    table["coverage"] = (table["present"] / table["expected"].where(table["expected"] > 0)).round(4)
    return table[["exchange", "symbol", "timeframe", "first_date", "last_date", "expected", "present", "missing",
                  "coverage", *(f"gaps_{r}" for r in REASONS)]]


def day_counts(windows: list[LedgerEntry]) -> dict:
    """expected/present/gaps of one day from its windows; where windows overlap, the later-named
    one (the newer fetch) decides each candle."""
    windows = sorted(windows, key=lambda e: (e.window_start, e.window_end))
    spans = [(_ms(datetime.fromisoformat(w.window_start)), _ms(datetime.fromisoformat(w.window_end))) for w in windows]
    overlapping = any(spans[i][1] > spans[i + 1][0] for i in range(len(spans) - 1))
    if not overlapping:
        out = {"expected": sum(w.expected for w in windows), "present": sum(w.present for w in windows)}
        for reason in REASONS:
            out[f"gaps_{reason}"] = sum(g.count for w in windows for g in w.gaps if g.reason == reason)
        return out
    tf_ms = TIMEFRAME_MS[windows[0].timeframe]
    state: dict[int, str | None] = {}
    for window, (lo, hi) in sorted(zip(windows, spans, strict=True), key=lambda x: ledger_key(x[0])):
        for t in range(-(-lo // tf_ms) * tf_ms, hi, tf_ms):
            state[t] = None
        for gap in window.gaps:
            g_lo, g_hi = _ms(datetime.fromisoformat(gap.start)), _ms(datetime.fromisoformat(gap.end))
            for t in range(g_lo, g_hi, tf_ms):
                state[t] = gap.reason
    out = {"expected": len(state), "present": sum(1 for r in state.values() if r is None)}
    for reason in REASONS:
        out[f"gaps_{reason}"] = sum(1 for r in state.values() if r == reason)
    return out


REPORT_PREFIX = "reports/coverage"


def heatmap_html(table, timeframe: str) -> str:
    """A self-contained HTML page: exchange × symbol cells coloured by coverage, with the counts
    and gap reasons in each cell's tooltip."""
    from html import escape

    symbols = sorted(table["symbol"].unique()) if len(table) else []
    exchanges = sorted(table["exchange"].unique()) if len(table) else []
    cells = {(r.exchange, r.symbol): r for r in table.itertuples()}

    def colour(ratio):
        if ratio != ratio:  # NaN: nothing was due
            return "#eeeeee"
        hue = int(120 * max(0.0, min(1.0, (ratio - 0.9) / 0.1)))  # red below 90 %, green at 100 %
        return f"hsl({hue}, 70%, 60%)"

    rows = []
    for exchange in exchanges:
        tds = []
        for symbol in symbols:
            r = cells.get((exchange, symbol))
            if r is None:
                tds.append('<td style="background:#ffffff">–</td>')
                continue
            reasons = ", ".join(f"{reason}: {getattr(r, f'gaps_{reason}')}" for reason in REASONS
                                if getattr(r, f"gaps_{reason}"))
            tip = (f"{exchange} {symbol} {timeframe}: {r.present}/{r.expected} candles, "
                   f"{r.first_date} → {r.last_date}" + (f"; missing — {reasons}" if reasons else ""))
            label = "n/l" if r.gaps_not_listed == r.expected and r.expected else (
                f"{r.coverage:.1%}" if r.coverage == r.coverage else "–")
            tds.append(f'<td title="{escape(tip)}" style="background:{colour(r.coverage)}">{label}</td>')
        rows.append(f"<tr><th>{escape(exchange)}</th>{''.join(tds)}</tr>")
    head = "".join(f"<th>{escape(s)}</th>" for s in symbols)
    return f"""<!doctype html><html><head><meta charset="utf-8"><title>candleflow coverage {timeframe}</title>
<style>body{{font-family:sans-serif}} td,th{{padding:4px 8px;text-align:center;font-size:13px}}
table{{border-collapse:collapse}} td{{border:1px solid #fff}}</style></head><body>
<h2>OHLCV coverage, {escape(timeframe)}</h2>
<p>Share of due candles present in the lake per exchange and symbol (hover a cell for counts and
the reason of every gap). n/l = not listed on that exchange. Source: the gap ledger under
<code>coverage/</code>; table: <code>coverage.parquet</code> beside this page.</p>
<table><tr><th></th>{head}</tr>{''.join(rows)}</table></body></html>"""


def publish_report(s3, bucket: str, timeframe: str, prefix: str = COVERAGE_PREFIX) -> dict:
    """Write the coverage table (parquet) and its heatmap (HTML) for one timeframe; returns the keys."""
    import io

    entries = read_entries(s3, bucket, timeframe=timeframe, prefix=prefix)
    table = coverage_table(entries)
    base = f"{REPORT_PREFIX}/timeframe={timeframe}/"
    sink = io.BytesIO()
    table.to_parquet(sink, index=False)
    s3.put_object(Bucket=bucket, Key=base + "coverage.parquet", Body=sink.getvalue())
    s3.put_object(Bucket=bucket, Key=base + "coverage.html", Body=heatmap_html(table, timeframe).encode(),
                  ContentType="text/html; charset=utf-8")
    return {"table": base + "coverage.parquet", "heatmap": base + "coverage.html", "pairs": len(table)}
