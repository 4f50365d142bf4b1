"""`python -m candleflow.quality check PATH --timeframe TF`: the batch suite on any candle file.

Reads parquet, CSV, feather or pandas JSON; the time column may be called ts, date, time,
timestamp, open_time or datetime, in s, ms, µs or ISO text (naive times are UTC); rows are judged
in the file's own order (out-of-order rows are a defect). Prints the summary (every failed rule
with its severity and three example rows) and exits 1 when an error-level rule failed, 0
otherwise (2 for an unreadable file or a bad argument).
"""

from __future__ import annotations

import json
from typing import TYPE_CHECKING

from candleflow.quality.suite import COLUMNS

if TYPE_CHECKING:
    import pandas as pd

TIME_COLUMNS = ("ts", "date", "time", "timestamp", "open_time", "datetime")


def read_candle_file(path: str) -> pd.DataFrame:
    """Any candle file as ts/open/high/low/close/volume, rows in the file's order."""
    from pathlib import Path

    import pandas as pd

    suffix = Path(path).suffix.lower()
    if suffix in (".parquet", ".pq"):
        frame = pd.read_parquet(path)
    elif suffix in (".feather", ".arrow"):
        frame = pd.read_feather(path)
    elif suffix in (".csv", ".txt"):
        frame = pd.read_csv(path)
    elif suffix == ".json":
        frame = pd.read_json(path, convert_dates=False)
    else:
        raise ValueError(f"PATH: {path} has an unknown extension; use .parquet, .csv, .feather or .json")
    frame = frame.rename(columns={c: str(c).lower() for c in frame.columns})
    time_col = next((c for c in TIME_COLUMNS if c in frame), None)
    if time_col is None:
        raise ValueError(f"PATH: {path} has no time column; name it one of {', '.join(TIME_COLUMNS)}")
    raw = frame.pop(time_col)
    if pd.api.types.is_numeric_dtype(raw):
        biggest = raw.abs().max()
        unit = "us" if biggest > 1e14 else "ms" if biggest > 1e11 else "s"
        ts = pd.to_datetime(raw, unit=unit, utc=True)
    else:
        try:
            ts = pd.to_datetime(raw, utc=True)
        except (ValueError, TypeError) as exc:
            raise ValueError(f"PATH: {path}: column {time_col!r} is neither epoch numbers nor ISO times ({exc})") from exc
    frame.insert(0, "ts", ts.astype("datetime64[ms, UTC]"))
    missing = [c for c in COLUMNS if c not in frame]
    if missing:
        raise ValueError(f"PATH: {path} lacks column(s) {', '.join(missing)}")
    for column in COLUMNS[1:]:
        frame[column] = pd.to_numeric(frame[column], errors="coerce").astype("float64")
    return frame[COLUMNS]


def main(argv: list[str] | None = None) -> int:
    import argparse
    import sys

    from candleflow.config import ConfigError
    from candleflow.quality.suite import validate_ohlcv

    parser = argparse.ArgumentParser(prog="python -m candleflow.quality",
                                     description="Check a candle file with the pipeline's GX suite.")
    sub = parser.add_subparsers(dest="command", required=True)
    check = sub.add_parser("check", help="validate one file; exit 1 if an error-level rule fails")
    check.add_argument("path")
    check.add_argument("--timeframe", required=True, help="1m, 5m, 15m or 1h")
    check.add_argument("--strict", action="store_true", help="exit 1 on warnings too")
    check.add_argument("--json", action="store_true", help="print the full report as JSON")
    args = parser.parse_args(argv)
    try:
        frame = read_candle_file(args.path)
        report = validate_ohlcv(frame, args.timeframe, context_label=args.path)
    except (ValueError, OSError) as exc:  # ConfigError is a ValueError
        kind = "configuration" if isinstance(exc, ConfigError) else "error"
        print(f"{kind}: {exc}", file=sys.stderr)
        return 2
    print(json.dumps(report.to_json(), indent=2, default=str) if args.json else report.summary)
    if not report.success or (args.strict and report.warnings):
        return 1
    return 0
