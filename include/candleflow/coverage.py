"""The gap ledger and the coverage table: every candle is either in the lake or explained.

Each ingest of a (exchange, symbol, timeframe) window records, per UTC date of the window, how
many candles were due, how many landed, and every missing range with its reason:

    coverage/exchange=<ex>/symbol=<SYM>/timeframe=<tf>/date=<YYYY-MM-DD>/window-<from>_<to>.json

Like the lake's data parts, a ledger entry's key is a pure function of the window it describes
and its bytes a pure function of what was found, so re-running a run rewrites it identically and
concurrent runs of different windows never write the same object (no read-modify-write).
A day's coverage is the union of its windows, the later-named window winning where they overlap.

A scheduled 1m ingest writes 1,440 windows per pair and day. The daily compaction
(`compact_day`, run by `lake_compaction`) merges a finished day's windows into
`compacted-<from>_<to>.json` entries, one per contiguous stretch of candles the windows covered,
holding exactly the per-candle verdict the windows gave (the later window deciding): readers of
the ledger (the coverage report, a backfill's skip-complete check, training lineage) then read one
object per pair and day. A compacted entry has the lowest precedence, so a window written later
still decides its candles.

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
    compacted: bool = False         # a merge of a finished day's windows (lowest precedence)

    @property
    def missing(self) -> int:
        return self.expected - self.present

    def to_json(self) -> dict:
        out = asdict(self)
        if not self.compacted:
            del out["compacted"]   # a window's bytes stay what they were before compaction existed
        return out

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
            f"date={entry.date}/{'compacted' if entry.compacted else 'window'}-{lo}_{hi}.json")


def precedence(entry: LedgerEntry) -> tuple:
    """Where entries of a day overlap, the greater decides a candle: compacted entries lowest,
    then windows by start, then end (a later fetch wins)."""
    return (not entry.compacted, entry.window_start, entry.window_end)


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
    bounds = {}
    if exchange and symbol and timeframe:   # the next level is date=: list only the wanted dates
        bounds = {"start_after": f"{listing}date={first}" if first else None,
                  "stop": f"{listing}date={last}/" if last else None}
    keys = []
    for key in sorted(list_objects(s3, bucket, listing, **bounds)):
        if not key.endswith(".json") or (timeframe and f"/timeframe={timeframe}/" not in key) \
                or (symbol and f"/symbol={symbol}/" not in key):
            continue
        if first or last:
            date = next((p[5:] for p in key.split("/") if p.startswith("date=")), None)
            if date is None or (first and date < first) or (last and date > last):
                continue
        keys.append(key)

    def get(key: str) -> LedgerEntry | None:
        try:
            return LedgerEntry.from_json(json.loads(s3.get_object(Bucket=bucket, Key=key)["Body"].read()))
        except s3.exceptions.NoSuchKey:
            return None

    got = dict(zip(keys, _in_flight(get, keys), strict=True))
    for _ in range(3):
        # a window listed but gone: lake_compaction merged its day meanwhile. The merged entry was
        # written before any window was deleted, so listing the day again finds it.
        gone = sorted({key.rsplit("/", 1)[0] + "/" for key, entry in got.items() if entry is None})
        if not gone:
            return [got[key] for key in sorted(got)]
        for day in gone:
            for key in [k for k in got if k.startswith(day)]:
                del got[key]
            fresh = [k for k in list_objects(s3, bucket, day) if k.endswith(".json")]
            got.update(zip(fresh, _in_flight(get, fresh), strict=True))
    raise RuntimeError(f"gap ledger {', '.join(gone)}: its entries kept changing while being read; "
                       "retry the task (a compaction of those days was running)")


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


DAY_COLUMNS = ["exchange", "symbol", "timeframe", "date", "expected", "present", *(f"gaps_{r}" for r in REASONS)]


def daily_counts(entries: list[LedgerEntry]):
    """One row per (exchange, symbol, timeframe, date): `day_counts` of that day's entries."""
    import pandas as pd

    by_day: dict[tuple, list[LedgerEntry]] = {}
    for entry in entries:
        by_day.setdefault((entry.exchange, entry.symbol, entry.timeframe, entry.date), []).append(entry)
    records = [{"exchange": exchange, "symbol": symbol, "timeframe": timeframe, "date": date, **day_counts(windows)}
               for (exchange, symbol, timeframe, date), windows in sorted(by_day.items())]
    if not records:
        return pd.DataFrame({c: pd.Series(dtype="int64" if c not in DAY_COLUMNS[:4] else "object")
                             for c in DAY_COLUMNS})
    return pd.DataFrame(records)[DAY_COLUMNS]


def aggregate_days(daily):
    """exchange × symbol × timeframe from daily rows: first and last day with candles, expected vs
    present, gap counts by reason."""
    import pandas as pd

    if daily.empty:
        return pd.DataFrame(columns=["exchange", "symbol", "timeframe", "first_date", "last_date", "expected",
                                     "present", "missing", "coverage", *(f"gaps_{r}" for r in REASONS)])
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


def coverage_table(entries: list[LedgerEntry]):
    """exchange × symbol × timeframe: first and last candle day, expected vs present, gap counts by reason."""
    return aggregate_days(daily_counts(entries))


def _verdicts(entry: LedgerEntry, tf_ms: int) -> dict[int, str | None]:
    """{candle open time: None (present) or the reason it is missing} over the entry's window."""
    lo, hi = _ms(datetime.fromisoformat(entry.window_start)), _ms(datetime.fromisoformat(entry.window_end))
    out: dict[int, str | None] = dict.fromkeys(range(-(-lo // tf_ms) * tf_ms, hi, tf_ms))
    for gap in entry.gaps:
        g_lo, g_hi = _ms(datetime.fromisoformat(gap.start)), _ms(datetime.fromisoformat(gap.end))
        out.update(dict.fromkeys(range(g_lo, g_hi, tf_ms), gap.reason))
    return out


def _candle_state(entries: list[LedgerEntry], tf_ms: int) -> dict[int, str | None]:
    """Each covered candle's verdict, the entry of greatest precedence deciding."""
    state: dict[int, str | None] = {}
    for entry in sorted(entries, key=precedence):
        state.update(_verdicts(entry, tf_ms))
    return state


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
    state = _candle_state(windows, TIMEFRAME_MS[windows[0].timeframe])
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


def month_table_key(timeframe: str, month: str) -> str:
    return f"{REPORT_PREFIX}/timeframe={timeframe}/days/month={month}.parquet"


def ledger_paths(s3, bucket: str, *, exchange: str | None = None, symbol: str | None = None,
                 timeframe: str | None = None, prefix: str = COVERAGE_PREFIX) -> list[str]:
    """`<prefix>/exchange=…/symbol=…/timeframe=…/` of every pair with a ledger (narrowed by the
    levels given), discovered level by level with delimiter listings: the cost is the number of
    pairs, not of entries."""
    from candleflow.compaction import _common_prefixes

    paths = [f"{prefix}/"]
    for level, value in (("exchange", exchange), ("symbol", symbol), ("timeframe", timeframe)):
        if value:
            paths = [f"{path}{level}={value}/" for path in paths]
            continue
        paths = [child for path in paths for child in _common_prefixes(s3, bucket, path)
                 if child[len(path):].startswith(f"{level}=")]
    return paths


def _read_timeframe(s3, bucket: str, timeframe: str, paths: list[str], prefix: str, start: datetime | None = None,
                    end: datetime | None = None) -> list[LedgerEntry]:
    """The timeframe's entries of [start, end) under `paths` (ledger_paths), a few pairs in flight,
    each listed from its first wanted date."""
    from candleflow.lake import _in_flight

    def pair(path: str) -> list[LedgerEntry]:
        levels = dict(part.split("=", 1) for part in path.strip("/").split("/")[1:])
        return read_entries(s3, bucket, exchange=levels["exchange"], symbol=levels["symbol"], timeframe=timeframe,
                            prefix=prefix, start=start, end=end)

    return [entry for entries in _in_flight(pair, paths) for entry in entries]


def _put_days(s3, bucket: str, key: str, daily) -> None:
    import io

    if daily.empty:
        s3.delete_object(Bucket=bucket, Key=key)
        return
    sink = io.BytesIO()
    daily.sort_values(["exchange", "symbol", "date"]).reset_index(drop=True).to_parquet(sink, index=False)
    s3.put_object(Bucket=bucket, Key=key, Body=sink.getvalue())


def _rebuild_all(s3, bucket: str, timeframe: str, prefix: str) -> int:
    """Every month's daily table from the timeframe's whole ledger, listed pair by pair; tables of
    months without entries are deleted. Returns the number of months written."""
    from candleflow.lake import list_objects

    paths = ledger_paths(s3, bucket, timeframe=timeframe, prefix=prefix)
    daily = daily_counts(_read_timeframe(s3, bucket, timeframe, paths, prefix))
    by_month = {month: rows for month, rows in daily.groupby(daily["date"].str[:7])} if len(daily) else {}
    for key in list_objects(s3, bucket, f"{REPORT_PREFIX}/timeframe={timeframe}/days/"):
        if key.rsplit("month=", 1)[-1][:7] not in by_month:
            s3.delete_object(Bucket=bucket, Key=key)
    for month, rows in by_month.items():
        _put_days(s3, bucket, month_table_key(timeframe, month), rows)
    return len(by_month)


def update_months(s3, bucket: str, timeframe: str, months: list[str], prefix: str = COVERAGE_PREFIX) -> list[str]:
    """Rebuild the daily table of each month (`…/days/month=YYYY-MM.parquet`) from that month's
    ledger entries only; returns the keys written."""
    from candleflow.lake import partition_window

    paths = ledger_paths(s3, bucket, timeframe=timeframe, prefix=prefix)
    keys = []
    for month in sorted(set(months)):
        key = month_table_key(timeframe, month)
        _put_days(s3, bucket, key, daily_counts(_read_timeframe(s3, bucket, timeframe, paths, prefix,
                                                                *partition_window("month", month))))
        keys.append(key)
    return keys


def publish_report(s3, bucket: str, timeframe: str, prefix: str = COVERAGE_PREFIX,
                   months: list[str] | None = None) -> dict:
    """Write the coverage table (parquet) and its heatmap (HTML) for one timeframe; returns the keys.

    The table is folded from per-month daily tables (`days/month=YYYY-MM.parquet`): `months` are
    rebuilt from their ledger entries (a backfill's months, the days a compaction merged), the
    others are read as they are, so a report costs the months that changed, not the ledger's whole
    history. months=None rebuilds every month from the whole ledger; so does the first report of a
    timeframe without month tables (a lake whose report predates them: rebuilding only the given
    months would shrink its report to them)."""
    import io

    import pandas as pd

    from candleflow.lake import _in_flight, list_objects

    days_prefix = f"{REPORT_PREFIX}/timeframe={timeframe}/days/"
    if months is None or not list_objects(s3, bucket, days_prefix):
        rebuilt = _rebuild_all(s3, bucket, timeframe, prefix)
    else:
        rebuilt = len(update_months(s3, bucket, timeframe, months, prefix))
    tables = _in_flight(lambda key: pd.read_parquet(io.BytesIO(s3.get_object(Bucket=bucket, Key=key)["Body"].read())),
                        sorted(list_objects(s3, bucket, days_prefix)))
    base = f"{REPORT_PREFIX}/timeframe={timeframe}/"
    if not tables and months is not None and not list_objects(s3, bucket, base + "coverage.parquet"):
        return {"table": None, "heatmap": None, "pairs": 0, "months_rebuilt": 0}  # never ingested
    daily = pd.concat(tables, ignore_index=True) if tables else daily_counts([])
    table = aggregate_days(daily)
    sink = io.BytesIO()
    table.to_parquet(sink, index=False)
    s3.put_object(Bucket=bucket, Key=base + "coverage.parquet", Body=sink.getvalue())
    s3.put_object(Bucket=bucket, Key=base + "coverage.html", Body=heatmap_html(table, timeframe).encode(),
                  ContentType="text/html; charset=utf-8")
    return {"table": base + "coverage.parquet", "heatmap": base + "coverage.html", "pairs": len(table),
            "months_rebuilt": rebuilt}


# -- compaction: a finished day's windows → one entry per covered stretch ------------------------
def _runs(state: dict[int, str | None], tf_ms: int) -> list[list[int]]:
    """Maximal stretches of consecutive covered candle times."""
    runs: list[list[int]] = []
    for t in sorted(state):
        if runs and t == runs[-1][-1] + tf_ms:
            runs[-1].append(t)
        else:
            runs.append([t])
    return runs


def merged_entries(entries: list[LedgerEntry]) -> list[LedgerEntry]:
    """One compacted entry per stretch of candles the day's entries covered, holding each candle's
    winning verdict (so `day_counts` and the coverage table read the same from them)."""
    first = entries[0]
    tf_ms = TIMEFRAME_MS[first.timeframe]
    state = _candle_state(entries, tf_ms)
    market = next((e.market for e in sorted(entries, key=precedence, reverse=True) if e.market), None)
    out = []
    for run in _runs(state, tf_ms):
        lo, hi = run[0], run[-1] + tf_ms
        gaps: list[Gap] = []
        for t in run:
            reason = state[t]
            if reason is None:
                continue
            if gaps and gaps[-1].reason == reason and _ms(datetime.fromisoformat(gaps[-1].end)) == t:
                gaps[-1] = Gap(gaps[-1].start, _iso(t + tf_ms), gaps[-1].count + 1, reason)
            else:
                gaps.append(Gap(_iso(t), _iso(t + tf_ms), 1, reason))
        present = sum(1 for t in run if state[t] is None)
        only = {g.reason for g in gaps}
        status = (only.pop() if present == 0 and len(only) == 1 and next(iter(only)) in ("quarantined", "not_listed")
                  else "complete" if all(g.reason in FINAL_REASONS for g in gaps) else "partial")
        out.append(LedgerEntry(first.exchange, first.symbol, first.timeframe, first.date, _iso(lo), _iso(hi),
                               expected=len(run), present=present, market=market, status=status, gaps=gaps,
                               compacted=True))
    return out


def _losers(entries: list[LedgerEntry], tf_ms: int) -> set[int]:
    """Indexes of entries giving some candle a verdict that a later entry overrode differently:
    deleting the overriding entry first would show that verdict for a moment."""
    state = _candle_state(entries, tf_ms)
    return {i for i, entry in enumerate(entries)
            if any(state[t] != verdict for t, verdict in _verdicts(entry, tf_ms).items())}


def compact_pair_day(s3, bucket: str, day_prefix: str) -> dict:
    """Merge the ledger objects under one `…/date=<D>/` prefix (module docstring). Objects are
    deleted only if unchanged (IfMatch); those holding an overridden verdict first, one by one in
    precedence order, so a reader never sees a verdict the windows had replaced."""
    from candleflow.compaction import _delete_if_unchanged
    from candleflow.lake import _in_flight, list_objects

    keys = sorted(k for k in list_objects(s3, bucket, day_prefix) if k.endswith(".json"))
    if len(keys) <= 1 or all(k[len(day_prefix):].startswith("compacted-") for k in keys):
        return {"prefix": day_prefix, "status": "single" if keys else "empty", "merged": 0, "written": [],
                "deleted": [], "kept": []}

    def get(key):
        response = s3.get_object(Bucket=bucket, Key=key)
        return LedgerEntry.from_json(json.loads(response["Body"].read())), response["ETag"]

    read = _in_flight(get, keys)
    entries = [entry for entry, _ in read]
    tf_ms = TIMEFRAME_MS[entries[0].timeframe]
    prefix = day_prefix.split("/", 1)[0]
    written = write_entries(s3, bucket, merged_entries(entries), prefix=prefix)
    losers = _losers(entries, tf_ms)
    order = sorted(range(len(keys)), key=lambda i: precedence(entries[i]))
    sources = [(i, keys[i], read[i][1]) for i in order if keys[i] not in written]
    gone = {key: _delete_if_unchanged(s3, bucket, key, etag) for i, key, etag in sources if i in losers}
    rest = [(key, etag) for i, key, etag in sources if i not in losers]
    gone.update(zip([key for key, _ in rest], _in_flight(lambda item: _delete_if_unchanged(s3, bucket, *item), rest),
                    strict=True))
    return {"prefix": day_prefix, "status": "compacted", "merged": len(keys), "written": written,
            "deleted": [k for _, k, _ in sources if gone[k]], "kept": [k for _, k, _ in sources if not gone[k]]}


def compact_day(s3, bucket: str, date: str, *, exchange: str | None = None, symbol: str | None = None,
                timeframe: str | None = None, prefix: str = COVERAGE_PREFIX, now: datetime | None = None) -> list[dict]:
    """Compact the ledger of a finished UTC day for every pair (narrowed by exchange, symbol,
    timeframe); pairs are discovered level by level with delimiter listings, not by listing their
    history. Returns one summary per pair-day that holds ledger objects."""
    from candleflow.compaction import _check_date

    _check_date(date, now)
    paths = ledger_paths(s3, bucket, exchange=exchange, symbol=symbol, timeframe=timeframe, prefix=prefix)
    results = [compact_pair_day(s3, bucket, f"{path}date={date}/") for path in paths]
    return [r for r in results if r["status"] != "empty"]
