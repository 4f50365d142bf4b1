"""Data quality of an OHLCV batch with Great Expectations 1.x.

The suite (every batch, before anything reaches the lake):
- schema: exactly the columns ts, open, high, low, close, volume; ts a timestamp, prices floats;
- not null: every column;
- OHLC consistency: high >= max(open, close), low <= min(open, close);
- volume >= 0;
- timestamps: unique, strictly increasing, aligned to the timeframe.

GX's Airflow provider does not support Airflow 3, so the suite runs from the task through GX's
ephemeral context on a pandas frame. Two derived columns (`ts_ms`, the open time in ms, and its
`ts_offset_ms` from the timeframe grid) and two (`oc_max`, `oc_min`) let plain GX expectations
express the rules. A failure yields a one-paragraph summary naming each failed expectation, how
many rows it hit and example rows; `QualityError` carries it out of the task.

Also a command: `python -m candleflow.quality check PATH --timeframe TF` checks any candle file
(parquet, CSV, feather; ms or ISO timestamps; any row order) and exits 1 when the suite fails.
"""

from __future__ import annotations

import json
import logging
import threading
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from candleflow.config import TIMEFRAME_MS, parse_timeframe

if TYPE_CHECKING:
    import pandas as pd

# pandas and GX are imported inside the functions: the DAGs' retry policy names QualityError, so
# the dag processor imports this module on every parse and must not pay for them.
COLUMNS = ["ts", "open", "high", "low", "close", "volume"]
PRICE_COLUMNS = ["open", "high", "low", "close"]


class QualityError(Exception):
    """A batch failed its quality suite; retrying cannot fix the data, so tasks fail fast on it."""


@dataclass
class QualityReport:
    success: bool
    evaluated_expectations: int
    failed: list[dict] = field(default_factory=list)
    row_count: int = 0
    summary: str = ""
    gx_result: dict = field(default_factory=dict)

    def to_json(self) -> dict:
        return {"success": self.success, "evaluated_expectations": self.evaluated_expectations,
                "row_count": self.row_count, "failed": self.failed, "summary": self.summary,
                "gx_result": self.gx_result}


_CONTEXT = None
# GX's ephemeral context, its data asset and batch definition are shared objects: two threads
# validating at once would validate each other's dataframes. Tasks are processes, but benchmarks
# and tests run collectors in threads, so validations are serialised (GX holds the GIL anyway).
_GX_LOCK = threading.RLock()


def _gx():
    """GX imported lazily (seconds of import) with its chatty logger and progress bars off."""
    global _CONTEXT
    logging.getLogger("great_expectations").setLevel(logging.WARNING)
    import great_expectations as gx

    if _CONTEXT is None:
        from great_expectations.data_context.types.base import ProgressBarsConfig

        _CONTEXT = gx.get_context(mode="ephemeral")
        _CONTEXT.variables.progress_bars = ProgressBarsConfig(globally=False)
    return gx, _CONTEXT


def build_suite(timeframe: str, name: str = "ohlcv_batch"):
    gx, _ = _gx()
    import great_expectations.expectations as gxe

    suite = gx.ExpectationSuite(name=name)
    add = suite.add_expectation
    add(gxe.ExpectTableColumnsToMatchSet(column_set=[*COLUMNS, "ts_ms", "ts_offset_ms", "oc_max", "oc_min"],
                                         exact_match=True))
    add(gxe.ExpectColumnValuesToBeOfType(column="ts", type_="Timestamp"))
    for column in COLUMNS:
        add(gxe.ExpectColumnValuesToNotBeNull(column=column))
    for column in [*PRICE_COLUMNS, "volume"]:
        add(gxe.ExpectColumnValuesToBeOfType(column=column, type_="float64"))
    add(gxe.ExpectColumnPairValuesAToBeGreaterThanB(column_A="high", column_B="oc_max", or_equal=True,
                                                    ignore_row_if="either_value_is_missing"))
    add(gxe.ExpectColumnPairValuesAToBeGreaterThanB(column_A="oc_min", column_B="low", or_equal=True,
                                                    ignore_row_if="either_value_is_missing"))
    add(gxe.ExpectColumnValuesToBeBetween(column="volume", min_value=0))
    add(gxe.ExpectColumnValuesToBeUnique(column="ts_ms"))
    add(gxe.ExpectColumnValuesToBeIncreasing(column="ts_ms", strictly=True))
    add(gxe.ExpectColumnValuesToBeInSet(column="ts_offset_ms", value_set=[0]))
    del timeframe  # the grid is in the derived column; kept in the signature for per-timeframe suites
    return suite


def _derived(candles: pd.DataFrame, timeframe: str) -> pd.DataFrame:
    import pandas as pd

    frame = candles.reset_index(drop=True).copy()
    ts = pd.to_datetime(frame["ts"], utc=True) if "ts" in frame else pd.Series(dtype="datetime64[ms, UTC]")
    frame["ts_ms"] = ts.astype("datetime64[ms, UTC]").astype("int64")
    frame["ts_offset_ms"] = frame["ts_ms"] % TIMEFRAME_MS[timeframe]
    prices = frame.reindex(columns=["open", "close"])
    frame["oc_max"] = prices.max(axis=1, skipna=False)
    frame["oc_min"] = prices.min(axis=1, skipna=False)
    return frame


def _describe(result, frame: pd.DataFrame) -> dict:
    cfg = result.expectation_config
    kwargs = {k: v for k, v in cfg.kwargs.items() if k in ("column", "column_A", "column_B", "type_", "value_set",
                                                            "min_value", "column_set")}
    res = result.result or {}
    failure = {"expectation": cfg.type, **kwargs,
               "unexpected_count": res.get("unexpected_count"), "observed_value": res.get("observed_value")}
    index = res.get("partial_unexpected_index_list")
    if index:
        failure["examples"] = frame.loc[index[:3], COLUMNS].astype(str).to_dict("records")
    else:
        failure["examples"] = [str(v) for v in (res.get("partial_unexpected_list") or [])[:3]]
    return failure


_RULES = {
    "expect_table_columns_to_match_set": "the columns are not exactly ts, open, high, low, close, volume",
    "expect_column_values_to_be_of_type": "{column} is not of type {type_}",
    "expect_column_values_to_not_be_null": "{column} has nulls",
    "expect_column_pair_values_a_to_be_greater_than_b": "{column_A} < {column_B}",
    "expect_column_values_to_be_between": "{column} below {min_value}",
    "expect_column_values_to_be_unique": "timestamps repeat",
    "expect_column_values_to_be_increasing": "timestamps are not strictly increasing",
    "expect_column_values_to_be_in_set": "timestamps off the timeframe grid",
}
_NAMES = {"oc_max": "max(open, close)", "oc_min": "min(open, close)"}


def _sentence(failure: dict) -> str:
    template = _RULES.get(failure["expectation"], failure["expectation"])
    words = template.format(**{k: _NAMES.get(v, v) if isinstance(v, str) else v
                               for k, v in failure.items() if isinstance(v, (str, int, float))} | {
        "column": _NAMES.get(failure.get("column"), failure.get("column")),
        "type_": failure.get("type_"), "min_value": failure.get("min_value")})
    count = failure.get("unexpected_count")
    rows = f" in {count} row(s)" if count else ""
    examples = failure.get("examples") or []
    example = f", e.g. {examples[0]}" if examples else ""
    return f"{words}{rows} ({failure['expectation']}){example}"


def validate_ohlcv(candles: pd.DataFrame, timeframe: str, *, context_label: str = "batch") -> QualityReport:
    """Run the suite on one batch; never raises on bad data (the report says what failed)."""
    timeframe = parse_timeframe(timeframe, "timeframe")
    frame = _derived(candles, timeframe)
    with _GX_LOCK:
        return _validate(frame, timeframe, context_label)


def _validate(frame, timeframe: str, context_label: str) -> QualityReport:
    _, context = _gx()
    name = f"ohlcv_{timeframe}"
    try:
        suite = context.suites.get(name)
    except Exception:  # noqa: BLE001 - GX raises its own not-found type
        suite = context.suites.add(build_suite(timeframe, name))
    try:
        asset = context.data_sources.get("candles").get_asset("batch")
    except Exception:  # noqa: BLE001
        asset = context.data_sources.add_pandas("candles").add_dataframe_asset("batch")
        asset.add_batch_definition_whole_dataframe("whole")
    batch = asset.get_batch_definition("whole").get_batch(batch_parameters={"dataframe": frame})
    result = batch.validate(suite, result_format={"result_format": "COMPLETE", "partial_unexpected_count": 3,
                                                  "include_unexpected_rows": False})
    failed = [_describe(r, frame) for r in result.results if not r.success]
    stats = result.statistics
    evaluated = int(stats["evaluated_expectations"])
    if failed:
        summary = (f"Quality check failed for {context_label}: {len(failed)} of {evaluated} expectations failed "
                   f"on {len(frame)} candles — " + "; ".join(_sentence(f) for f in failed) + ".")
    else:
        summary = f"Quality check passed for {context_label}: {evaluated} expectations on {len(frame)} candles."
    gx_json = json.loads(json.dumps(result.to_json_dict(), default=str))
    for item in gx_json.get("results", []):  # full unexpected lists can be huge; counts and examples stay
        res = item.get("result") or {}
        for key in ("unexpected_list", "unexpected_index_list", "partial_unexpected_counts"):
            res.pop(key, None)
    return QualityReport(success=bool(result.success), evaluated_expectations=evaluated, failed=failed,
                         row_count=len(frame), summary=summary, gx_result=gx_json)


# -- the command line -----------------------------------------------------------------------------
def read_candle_file(path: str) -> pd.DataFrame:
    """Any candle file as ts/open/high/low/close/volume: parquet, CSV or feather; the time column
    may be called ts, date, time, timestamp or open_time, in ms, s or ISO text."""
    from pathlib import Path

    import pandas as pd

    suffix = Path(path).suffix.lower()
    if suffix in (".parquet", ".pq"):
        frame = pd.read_parquet(path)
    elif suffix in (".feather", ".arrow"):
        frame = pd.read_feather(path)
    elif suffix in (".csv", ".txt"):
        frame = pd.read_csv(path)
    else:
        raise ValueError(f"PATH: {path} has an unknown extension; use .parquet, .csv or .feather")
    frame = frame.rename(columns={c: c.lower() for c in frame.columns})
    time_col = next((c for c in ("ts", "date", "time", "timestamp", "open_time", "datetime") if c in frame), None)
    if time_col is None:
        raise ValueError(f"PATH: {path} has no time column; name it ts, date or timestamp")
    raw = frame.pop(time_col)
    if pd.api.types.is_numeric_dtype(raw):
        unit = "ms" if raw.abs().max() > 1e11 else "s"
        ts = pd.to_datetime(raw, unit=unit, utc=True)
    else:
        ts = pd.to_datetime(raw, utc=True)
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

    parser = argparse.ArgumentParser(prog="python -m candleflow.quality",
                                     description="Check a candle file with the pipeline's GX suite.")
    sub = parser.add_subparsers(dest="command", required=True)
    check = sub.add_parser("check", help="validate one file; exit 1 if the suite fails")
    check.add_argument("path")
    check.add_argument("--timeframe", required=True, help="1m, 5m, 15m or 1h")
    check.add_argument("--json", action="store_true", help="print the full report as JSON")
    args = parser.parse_args(argv)
    try:
        frame = read_candle_file(args.path)
        report = validate_ohlcv(frame, args.timeframe, context_label=args.path)
    except (ValueError, OSError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(json.dumps(report.to_json(), indent=2, default=str) if args.json else report.summary)
    return 0 if report.success else 1


if __name__ == "__main__":
    raise SystemExit(main())
