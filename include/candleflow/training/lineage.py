"""What a model was trained on and by which code: recorded with every MLflow run.

- `partition_rows`: the lake partitions (ohlcv: exchange × month) of the training window, the objects
  read for each and the rows each contributed after deduplication;
- `quality_summary`: what the gap ledger (the ingest's quality verdicts) said about those days:
  per exchange, the days complete, partial or quarantined and the candles missing by reason;
- `validation_results`: the GX results of the published batches behind those candles (the
  `_quality/<from>_<to>.json` documents the ingest keeps beside each pair's data): how many,
  whether they passed, the expectations that failed with warn severity, and their keys;
- `code_version`: `CANDLEFLOW_CODE_VERSION` (a training image bakes its git sha there), else the
  git commit of this checkout (`+dirty` when it has uncommitted changes), else the package version.
"""

from __future__ import annotations

import functools
import os
import subprocess
from collections import defaultdict
from pathlib import Path

import pandas as pd

LINEAGE_FILE = "lineage.json"


def partition_rows(rows: pd.DataFrame, sources: list[str],
                   levels: tuple[str, ...] = ("exchange", "symbol", "timeframe", "month")) -> list[dict]:
    """[{partition, objects, rows}] per lake partition read (ohlcv: exchange/symbol/timeframe/month;
    features: symbol/timeframe/date): the objects and the rows it contributed after deduplication.
    A time level (date, month) of a row is its `ts` in that level's key format."""
    from candleflow.lake import TIME_PARTITIONS

    objects: dict[tuple, list[str]] = defaultdict(list)
    for key in sources:
        v = dict(part.split("=", 1) for part in key.split("/") if "=" in part)  # Hive key=value levels
        objects[tuple(v.get(level) for level in levels)].append(key)
    if rows.empty:
        counts = {}
    else:
        ts = pd.to_datetime(rows["ts"], utc=True)
        periods = {level: ts.dt.strftime(TIME_PARTITIONS[level]) for level in levels if level in TIME_PARTITIONS}
        grouped = rows.assign(**periods).groupby(list(levels)).size()
        counts = {k if isinstance(k, tuple) else (k,): v for k, v in grouped.to_dict().items()}
    out = []
    for part in sorted(set(objects) | set(counts), key=lambda p: tuple(str(x) for x in p)):
        out.append({"partition": "/".join(f"{level}={value}" for level, value in zip(levels, part, strict=True)),
                    "objects": sorted(objects.get(part, [])), "rows": int(counts.get(part, 0))})
    return out


def quality_summary(entries, start: str, end: str) -> dict:
    """Ledger entries (candleflow.coverage.LedgerEntry) of the days in [start, end) by exchange.

    A day's counts come from `coverage.day_counts`: where its windows overlap (a whole-day backfill,
    then hourly runs) each candle is counted once, the later-named window deciding it."""
    from candleflow.config import parse_utc
    from candleflow.coverage import REASONS, day_counts
    from candleflow.lake import _time_bounds

    first, last = _time_bounds(parse_utc(start, "start"), parse_utc(end, "end"), "%Y-%m-%d")
    by_day: dict[tuple[str, str], list] = defaultdict(list)
    for entry in entries:
        if first <= entry.date <= last:
            by_day[(entry.exchange, entry.date)].append(entry)
    # a day's worst verdict wins: quarantined > partial > complete
    rank = {"complete": 0, "not_listed": 0, "partial": 1, "quarantined": 2}
    per_exchange: dict[str, dict] = {}
    for (exchange, date), windows in sorted(by_day.items()):
        ex = per_exchange.setdefault(exchange, {"days": {}, "expected": 0, "present": 0,
                                                "missing_by_reason": defaultdict(int)})
        status = None
        for window in windows:
            if status is None or rank.get(window.status, 1) > rank.get(status, 1):
                status = window.status
        ex["days"][date] = status
        counts = day_counts(windows)
        ex["expected"] += counts["expected"]
        ex["present"] += counts["present"]
        for reason in REASONS:
            if counts[f"gaps_{reason}"]:
                ex["missing_by_reason"][reason] += counts[f"gaps_{reason}"]
    summary = {}
    for exchange, ex in sorted(per_exchange.items()):
        statuses = list(ex["days"].values())
        summary[exchange] = {
            "days": len(statuses),
            "complete": sum(s in ("complete", "not_listed") for s in statuses),
            "partial": statuses.count("partial"),
            "quarantined": statuses.count("quarantined"),
            "quarantined_days": sorted(d for d, s in ex["days"].items() if s == "quarantined"),
            "candles_expected": ex["expected"],
            "candles_present": ex["present"],
            "missing_by_reason": dict(sorted(ex["missing_by_reason"].items())),
        }
    return {"source": "gap ledger (coverage/)", "window": [start, end], "exchanges": summary,
            "verdict": quality_verdict(summary)}


def quality_verdict(summary: dict) -> str:
    if not summary:
        return "no ledger entries for this window"
    q = sum(e["quarantined"] for e in summary.values())
    p = sum(e["partial"] for e in summary.values())
    days = sum(e["days"] for e in summary.values())
    return f"{days} exchange-days: {days - q - p} complete, {p} partial, {q} quarantined (not trained on)"


@functools.cache
def code_version() -> str:
    if os.environ.get("CANDLEFLOW_CODE_VERSION"):
        return os.environ["CANDLEFLOW_CODE_VERSION"]
    import candleflow

    root = Path(candleflow.__file__).resolve().parents[2]
    try:
        sha = subprocess.run(["git", "-C", str(root), "rev-parse", "HEAD"], capture_output=True, text=True,
                             timeout=10, check=True).stdout.strip()
        dirty = subprocess.run(["git", "-C", str(root), "status", "--porcelain", "--untracked-files=no"],
                               capture_output=True, text=True, timeout=10, check=True).stdout.strip()
        if sha:
            return f"git:{sha}" + ("+dirty" if dirty else "")
    except (OSError, subprocess.SubprocessError):
        pass
    from importlib.metadata import PackageNotFoundError, version

    try:
        return f"candleflow=={version('candleflow')}"
    except PackageNotFoundError:
        return "unknown"


def validation_results(s3, bucket: str, *, symbol: str, timeframe: str, exchanges, start: str, end: str,
                       ohlcv_prefix: str = "ohlcv", results_dir: str = "_quality") -> dict:
    """The GX results of the batches published for `symbol` whose windows overlap [start, end)."""
    import json
    from concurrent.futures import ThreadPoolExecutor

    from candleflow.lake import list_objects

    lo = pd.Timestamp(start).tz_convert("UTC").strftime("%Y%m%dT%H%M%SZ")
    hi = pd.Timestamp(end).tz_convert("UTC").strftime("%Y%m%dT%H%M%SZ")
    keys = []
    for exchange in sorted(set(exchanges)):
        prefix = f"{ohlcv_prefix}/exchange={exchange}/symbol={symbol}/timeframe={timeframe}/{results_dir}/"
        for key in sorted(list_objects(s3, bucket, prefix)):
            window = key.rsplit("/", 1)[-1].removesuffix(".json")
            w_lo, _, w_hi = window.partition("_")
            if key.endswith(".json") and w_lo < hi and w_hi > lo:  # the stamps sort as times
                keys.append(key)

    def get(key: str) -> dict:
        return json.loads(s3.get_object(Bucket=bucket, Key=key)["Body"].read())

    with ThreadPoolExecutor(max_workers=8) as pool:  # S3 GETs are latency-bound
        docs = list(pool.map(get, keys))
    warned = defaultdict(int)
    for doc in docs:
        for failure in doc.get("failed") or []:
            warned[f"{doc.get('exchange')}: {failure.get('expectation')} {failure.get('column') or ''}".strip()] += 1
    passed = sum(bool(d.get("success")) for d in docs)
    return {"source": f"GX batch results ({ohlcv_prefix}/…/{results_dir}/)", "batches": len(docs), "passed": passed,
            "failed": len(docs) - passed, "rows_validated": sum(int(d.get("row_count") or 0) for d in docs),
            "findings": dict(sorted(warned.items())), "result_keys": keys}
