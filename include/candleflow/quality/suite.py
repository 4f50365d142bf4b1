"""The per-batch GX 1.x suite of an OHLCV batch (`validate_ohlcv`).

Rules (severity and thresholds in include/config/quality.yaml, see docs/quality.md):
- schema: exactly ts, open, high, low, close, volume; ts a timestamp, the others float64;
- not_null; ohlc_consistency (high >= max(open, close), low <= min(open, close)); volume >= 0;
- timestamps: unique, strictly increasing, aligned to the timeframe;
- repeated_candle: a candle identical to the previous one (OHLC and a non-zero volume) under a
  later timestamp;
- continuity: the share of the window's candles that are missing;
- stale_price: runs of identical OHLC with zero volume longer than `max_run`;
- return_outliers: |log return − rolling median| beyond k × rolling MAD.

GX's Airflow provider does not support Airflow 3, so the suite runs from the task through GX's
ephemeral context on a pandas frame. Derived columns, computed once with vectorised pandas (in
time order, then put back in the batch's own row order so GX's examples point at real rows), let
plain GX expectations express every rule: `ts_ms`/`ts_offset_ms`, `oc_max`/`oc_min`,
`repeats_previous`, `stale_run` and `return_score`. One validation per batch: GX's cost is a
fixed ~15 ms per expectation, whatever the rows, so the suite has no expectation it does not need.
"""

from __future__ import annotations

import json
import logging
import math
import threading
from typing import TYPE_CHECKING

from candleflow.config import TIMEFRAME_MS, parse_timeframe
from candleflow.quality.report import QualityReport, describe_failures, summarise

if TYPE_CHECKING:
    import pandas as pd

    from candleflow.quality.settings import QualityConfig

COLUMNS = ["ts", "open", "high", "low", "close", "volume"]
PRICE_COLUMNS = ["open", "high", "low", "close"]
DERIVED = ["ts_ms", "ts_offset_ms", "oc_max", "oc_min", "repeats_previous", "stale_run", "return_score"]
GX_SEVERITY = {"error": "critical", "warn": "warning"}

_CONTEXT = None
_SUITES: dict[tuple, object] = {}
# GX's ephemeral context, its data asset and batch definition are shared objects: two threads
# validating at once would validate each other's dataframes. Tasks are processes, but the ingest
# checks chunks in worker threads and tests run collectors in threads, so validations are
# serialised (GX holds the GIL anyway).
GX_LOCK = threading.RLock()


def gx_context():
    """GX imported lazily (seconds of import) with its chatty logger and progress bars off."""
    global _CONTEXT
    logging.getLogger("great_expectations").setLevel(logging.WARNING)
    import great_expectations as gx

    if _CONTEXT is None:
        from great_expectations.data_context.types.base import ProgressBarsConfig

        _CONTEXT = gx.get_context(mode="ephemeral")
        _CONTEXT.variables.progress_bars = ProgressBarsConfig(globally=False)
    return gx, _CONTEXT


def dataframe_batch_definition(context, asset_name: str):
    """The whole-dataframe batch definition of a pandas asset, created on first use."""
    try:
        asset = context.data_sources.get("candleflow").get_asset(asset_name)
    except Exception:  # noqa: BLE001 - GX raises its own not-found types
        try:
            source = context.data_sources.get("candleflow")
        except Exception:  # noqa: BLE001
            source = context.data_sources.add_pandas("candleflow")
        asset = source.add_dataframe_asset(asset_name)
        asset.add_batch_definition_whole_dataframe("whole")
    return asset.get_batch_definition("whole")


def build_suite(timeframe: str, config: QualityConfig, name: str | None = None):
    """The batch suite of a timeframe under a configuration (rules that are `off` are left out)."""
    gx, _ = gx_context()
    import great_expectations.expectations as gxe

    suite = gx.ExpectationSuite(name=name or f"ohlcv_batch_{timeframe}")

    def add(rule: str, expectation) -> None:
        severity = config.severity(rule)
        if severity == "off":
            return
        expectation.severity = GX_SEVERITY[severity]
        expectation.meta = {"rule": rule, "severity": severity}
        suite.add_expectation(expectation)

    add("schema", gxe.ExpectTableColumnsToMatchSet(column_set=[*COLUMNS, *DERIVED], exact_match=True))
    add("schema", gxe.ExpectColumnValuesToBeOfType(column="ts", type_="Timestamp"))
    for column in [*PRICE_COLUMNS, "volume"]:
        add("schema", gxe.ExpectColumnValuesToBeOfType(column=column, type_="float64"))
    for column in COLUMNS:
        add("not_null", gxe.ExpectColumnValuesToNotBeNull(column=column))
    add("ohlc_consistency", gxe.ExpectColumnPairValuesAToBeGreaterThanB(
        column_A="high", column_B="oc_max", or_equal=True, ignore_row_if="either_value_is_missing"))
    add("ohlc_consistency", gxe.ExpectColumnPairValuesAToBeGreaterThanB(
        column_A="oc_min", column_B="low", or_equal=True, ignore_row_if="either_value_is_missing"))
    add("volume_non_negative", gxe.ExpectColumnValuesToBeBetween(column="volume", min_value=0))
    add("timestamps", gxe.ExpectColumnValuesToBeUnique(column="ts_ms"))
    add("timestamps", gxe.ExpectColumnValuesToBeIncreasing(column="ts_ms", strictly=True))
    add("timestamps", gxe.ExpectColumnValuesToBeInSet(column="ts_offset_ms", value_set=[0]))
    add("repeated_candle", gxe.ExpectColumnValuesToBeInSet(column="repeats_previous", value_set=[0]))
    # the window's expected count differs per batch: a suite parameter, resolved at validation
    add("continuity", gxe.ExpectTableRowCountToBeBetween(min_value={"$PARAMETER": "continuity_min_rows"}))
    add("stale_price", gxe.ExpectColumnValuesToBeBetween(column="stale_run",
                                                         max_value=config.batch["stale_price"]["max_run"]))
    add("return_outliers", gxe.ExpectColumnValuesToBeBetween(column="return_score",
                                                             max_value=config.batch["return_outliers"]["k"]))
    return suite


def derive(candles: pd.DataFrame, timeframe: str, config: QualityConfig) -> pd.DataFrame:
    """The batch plus the derived columns the suite's expectations read (same row order)."""
    import numpy as np
    import pandas as pd

    frame = candles.reset_index(drop=True).copy()
    ts = pd.to_datetime(frame["ts"], utc=True) if "ts" in frame else pd.Series(dtype="datetime64[ms, UTC]")
    frame["ts_ms"] = ts.astype("datetime64[ms, UTC]").astype("int64")
    frame["ts_offset_ms"] = frame["ts_ms"] % TIMEFRAME_MS[timeframe]
    prices = frame.reindex(columns=["open", "close"])
    frame["oc_max"] = prices.max(axis=1, skipna=False)
    frame["oc_min"] = prices.min(axis=1, skipna=False)

    n = len(frame)
    repeats = np.zeros(n, dtype="int64")
    stale = np.zeros(n, dtype="int64")
    score = np.full(n, np.nan)
    values = frame.reindex(columns=[*PRICE_COLUMNS, "volume"])
    if n > 1 and all(pd.api.types.is_numeric_dtype(values[c]) for c in values):
        # in time order (the rules are about consecutive candles), scattered back to the rows
        order = np.argsort(frame["ts_ms"].to_numpy(), kind="stable")
        t = frame["ts_ms"].to_numpy()[order]
        ohlcv = values.to_numpy(dtype="float64")[order]
        ohlc, volume = ohlcv[:, :4], ohlcv[:, 4]
        same_ohlc = np.r_[False, (ohlc[1:] == ohlc[:-1]).all(axis=1)]
        later = np.r_[False, t[1:] != t[:-1]]
        repeated = same_ohlc & later & np.r_[False, volume[1:] == volume[:-1]] & (volume > 0)
        repeats[order] = repeated.astype("int64")
        # stale: maximal runs of identical OHLC whose candles all have zero volume; each row of a
        # run carries the run's length (0 outside runs)
        zero = volume == 0
        starts = ~(same_ohlc & zero & np.r_[False, zero[:-1]])
        run_id = np.cumsum(starts)
        lengths = np.bincount(run_id, weights=zero.astype("float64"))
        stale[order] = np.where(zero, lengths[run_id], 0).astype("int64")
        rule = config.batch["return_outliers"]
        with np.errstate(divide="ignore", invalid="ignore"):
            log_close = np.log(np.where(ohlcv[:, 3] > 0, ohlcv[:, 3], np.nan))
        returns = pd.Series(np.r_[np.nan, np.diff(log_close)])
        window, min_periods = int(rule["window"]), int(rule["min_periods"])
        # trailing statistics of the *previous* returns: a jump does not hide itself
        past = returns.shift(1)
        median = past.rolling(window, min_periods=min_periods).median()
        mad = (past - median).abs().rolling(window, min_periods=min_periods).median()
        floor = rule["min_abs_return"] / rule["k"] if rule["k"] else 0.0
        scale = np.maximum(mad.to_numpy(), floor)
        with np.errstate(divide="ignore", invalid="ignore"):
            s = np.abs(returns.to_numpy() - median.to_numpy()) / scale
        s[~np.isfinite(s)] = np.nan
        score[order] = s
    frame["repeats_previous"] = repeats
    frame["stale_run"] = stale
    frame["return_score"] = score
    return frame


def continuity(ts_ms, timeframe: str, window: tuple[int, int] | None) -> dict:
    """Expected and present candles of the window ([first, last] of the batch when None), and the
    first missing spans."""
    import numpy as np

    tf = TIMEFRAME_MS[timeframe]
    t = np.unique(np.asarray(ts_ms, dtype="int64"))
    t = t[t % tf == 0]
    if window is None:
        if not len(t):
            return {"expected": 0, "present": 0, "missing": 0, "ratio": 0.0, "gaps": []}
        lo, hi = int(t[0]), int(t[-1]) + tf
    else:
        lo, hi = int(window[0]), int(window[1])
        lo = -(-lo // tf) * tf
    t = t[(t >= lo) & (t < hi)]
    expected = max(0, -(-(hi - lo) // tf))
    present = len(t)
    bounds = np.r_[lo - tf, t, hi]
    steps = np.diff(bounds) // tf - 1
    gaps = [(int(bounds[i] + tf), int(steps[i])) for i in np.flatnonzero(steps > 0)[:3]]
    missing = max(0, expected - present)
    return {"expected": int(expected), "present": int(present), "missing": int(missing),
            "ratio": (missing / expected) if expected else 0.0, "gaps": gaps,
            "gap_count": int((steps > 0).sum())}


def _as_ms(value) -> int:
    if hasattr(value, "timestamp"):
        return int(value.timestamp() * 1000)
    return int(value)


def validate_ohlcv(candles: pd.DataFrame, timeframe: str, *, context_label: str = "batch",
                   window: tuple | None = None, config: QualityConfig | None = None) -> QualityReport:
    """Run the suite on one batch; never raises on bad data (the report says what failed).

    `window` = (start, end) the batch should cover (datetimes or ms) for the continuity rule; by
    default the span from its first to its last candle. `report.success` is False only when an
    error-level rule failed; warn-level failures are in `report.warnings`."""
    from candleflow.quality.settings import load_quality

    timeframe = parse_timeframe(timeframe, "timeframe")
    config = config or load_quality()
    frame = derive(candles, timeframe, config)
    span = None if window is None else (_as_ms(window[0]), _as_ms(window[1]))
    gaps = continuity(frame["ts_ms"], timeframe, span)
    max_ratio = config.batch["continuity"]["max_missing_ratio"]
    min_rows = max(0, math.ceil(gaps["expected"] * (1 - max_ratio) - 1e-9))
    with GX_LOCK:
        result, evaluated = _run(frame, timeframe, config, {"continuity_min_rows": min_rows})
    failed = describe_failures(result, frame, COLUMNS, gaps, timeframe)
    summary = summarise(context_label, failed, evaluated, len(frame))
    return QualityReport(success=not any(f["severity"] == "error" for f in failed), evaluated_expectations=evaluated,
                         failed=failed, row_count=len(frame), summary=summary, gx_result=clean_result(result),
                         continuity=gaps)


def _run(frame, timeframe: str, config: QualityConfig, parameters: dict):
    _, context = gx_context()
    key = (timeframe, repr(sorted((k, v.severity, sorted(v.params.items())) for k, v in config.batch.items())))
    suite = _SUITES.get(key)
    if suite is None:
        suite = context.suites.add_or_update(build_suite(timeframe, config))
        _SUITES.clear()  # one suite per name in the context: a changed config replaces it
        _SUITES[key] = suite
    batch = dataframe_batch_definition(context, "batch").get_batch(batch_parameters={"dataframe": frame})
    # Most batches are clean: a pass/fail-only validation costs about a third of one that collects
    # counts and example rows, so those are asked for only when something failed.
    result = batch.validate(suite, result_format={"result_format": "BOOLEAN_ONLY"}, expectation_parameters=parameters)
    if not result.success:
        result = batch.validate(suite, result_format={"result_format": "SUMMARY", "partial_unexpected_count": 3},
                                expectation_parameters=parameters)
    return result, int(result.statistics["evaluated_expectations"])


def clean_result(result) -> dict:
    """GX's result as JSON, deterministic (no load times, no run ids) and bounded in size: full
    unexpected lists can be huge; counts and the first examples stay."""
    gx_json = json.loads(json.dumps(result.to_json_dict(), default=str))
    meta = gx_json.get("meta") or {}
    for key in ("batch_markers", "run_id", "validation_time", "checkpoint_id", "batch_spec"):
        meta.pop(key, None)
    for item in gx_json.get("results", []):
        res = item.get("result") or {}
        for key in ("unexpected_list", "unexpected_index_list", "partial_unexpected_counts", "unexpected_index_query"):
            res.pop(key, None)
        item.get("expectation_config", {}).pop("id", None)
    # GX returns results in no fixed order: sort them, so equal batches give equal bytes
    gx_json["results"] = sorted(gx_json.get("results", []), key=lambda r: json.dumps(r.get("expectation_config"),
                                                                                     sort_keys=True))
    return gx_json
