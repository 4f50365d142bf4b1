"""What a validation found, for people: `QualityReport` and its summary.

A failed task's log ends with the summary: per failed rule its severity, what it means, the GX
expectation, how many rows it hit and three example rows.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import UTC, datetime


class QualityError(Exception):
    """A batch failed an error-level rule; retrying cannot fix the data, so tasks fail fast on it."""


@dataclass
class QualityReport:
    success: bool                       # False only when an error-level rule failed
    evaluated_expectations: int
    failed: list[dict] = field(default_factory=list)   # every failed rule, with its severity
    row_count: int = 0
    summary: str = ""
    gx_result: dict = field(default_factory=dict)
    continuity: dict = field(default_factory=dict)

    @property
    def errors(self) -> list[dict]:
        return [f for f in self.failed if f["severity"] == "error"]

    @property
    def warnings(self) -> list[dict]:
        return [f for f in self.failed if f["severity"] == "warn"]

    def to_json(self) -> dict:
        return {"success": self.success, "evaluated_expectations": self.evaluated_expectations,
                "row_count": self.row_count, "failed": self.failed, "summary": self.summary,
                "continuity": self.continuity, "gx_result": self.gx_result}


_RULES = {
    "expect_table_columns_to_match_set": "the columns are not exactly ts, open, high, low, close, volume",
    "expect_column_values_to_be_of_type": "{column} is not of type {type_}",
    "expect_column_values_to_not_be_null": "{column} has nulls",
    "expect_column_pair_values_a_to_be_greater_than_b": "{column_A} < {column_B}",
    "expect_column_values_to_be_unique": "timestamps repeat",
    "expect_column_values_to_be_increasing": "timestamps are not strictly increasing",
    "expect_table_row_count_to_be_between": "candles missing",
}
_BY_COLUMN = {
    ("expect_column_values_to_be_in_set", "ts_offset_ms"): "timestamps off the timeframe grid",
    ("expect_column_values_to_be_in_set", "repeats_previous"):
        "candles repeat the previous candle (OHLC and volume) under a later timestamp",
    ("expect_column_values_to_be_between", "volume"): "volume below {min_value}",
    ("expect_column_values_to_be_between", "stale_run"):
        "stale price: runs of identical OHLC with zero volume longer than {max_value} candles",
    ("expect_column_values_to_be_between", "return_score"):
        "return outliers: |log return| beyond {max_value} × rolling MAD",
}
_NAMES = {"oc_max": "max(open, close)", "oc_min": "min(open, close)"}
_EXAMPLE_COLUMN = {"repeats_previous": None, "stale_run": "stale_run", "return_score": "return_score",
                   "ts_offset_ms": None, "ts_ms": None}


def _iso(ms: int) -> str:
    return datetime.fromtimestamp(ms / 1000, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def _examples(frame, index: list, columns: list[str], extra: str | None) -> list[dict]:
    import pandas as pd

    rows = frame.loc[index[:3], [*columns, *([extra] if extra else [])]]
    out = []
    for record in rows.to_dict("records"):
        out.append({k: v.isoformat() if isinstance(v, pd.Timestamp) else
                    format(v, ".10g") if isinstance(v, float) else str(v) for k, v in record.items()})
    return out


def describe_failures(result, frame, columns: list[str], gaps: dict, timeframe: str) -> list[dict]:
    """One dict per failed expectation: rule, severity, expectation, its columns, unexpected count,
    observed value and three examples (rows of the batch, or missing spans for continuity)."""
    failures = []
    for res in result.results:
        if res.success:
            continue
        cfg = res.expectation_config
        meta = cfg.meta or {}
        kwargs = {k: v for k, v in cfg.kwargs.items() if k in ("column", "column_A", "column_B", "type_",
                                                                 "value_set", "min_value", "max_value")}
        raw = res.result or {}
        failure = {"rule": meta.get("rule", cfg.type), "severity": meta.get("severity", "error"),
                   "expectation": cfg.type, **kwargs, "unexpected_count": raw.get("unexpected_count"),
                   "observed_value": raw.get("observed_value")}
        if cfg.type == "expect_table_row_count_to_be_between":
            failure.update(unexpected_count=gaps["missing"], min_value=None, observed_value=gaps["present"],
                           expected=gaps["expected"], missing_ratio=round(gaps["ratio"], 6),
                           examples=[f"{n} candle(s) missing from {_iso(start)}" for start, n in gaps["gaps"]])
        elif res.exception_info and res.exception_info.get("raised_exception"):
            failure["examples"] = [str(res.exception_info.get("exception_message"))[:300]]
        else:
            index = raw.get("partial_unexpected_index_list")
            if index:
                column = kwargs.get("column")
                extra = _EXAMPLE_COLUMN.get(column, column if column not in columns else None)
                failure["examples"] = _examples(frame, index, [c for c in columns if c in frame], extra)
            else:
                failure["examples"] = [str(v) for v in (raw.get("partial_unexpected_list") or [])[:3]]
        if isinstance(failure.get("observed_value"), float):
            failure["observed_value"] = round(failure["observed_value"], 6)
        failures.append(failure)
    # errors first, then by rule: a stable, readable order
    failures.sort(key=lambda f: (f["severity"] != "error", f["rule"], f["expectation"], str(f.get("column"))))
    return failures


def sentence(failure: dict) -> str:
    """What failed, in words: the rule, its meaning, the GX expectation, how many rows."""
    template = _BY_COLUMN.get((failure["expectation"], failure.get("column")),
                              _RULES.get(failure["expectation"], failure["expectation"]))
    values = {k: _NAMES.get(v, v) if isinstance(v, str) else v for k, v in failure.items()}
    try:
        words = template.format(**values)
    except (KeyError, IndexError):
        words = template
    count = failure.get("unexpected_count")
    if failure["expectation"] == "expect_table_row_count_to_be_between":
        rows = (f": {failure['unexpected_count']} of {failure['expected']} "
                f"(ratio {failure['missing_ratio']:.4f})")
    else:
        rows = f" in {count} row(s)" if count else ""
    return f"{failure['rule']}: {words}{rows} ({failure['expectation']})"


def summarise(label: str, failed: list[dict], evaluated: int, rows: int) -> str:
    errors = [f for f in failed if f["severity"] == "error"]
    warnings = [f for f in failed if f["severity"] == "warn"]
    if not failed:
        return f"Quality check passed for {label}: {evaluated} expectations on {rows} candles."
    head = (f"Quality check failed for {label}: " if errors else f"Quality check passed with warnings for {label}: ")
    head += f"{len(errors)} error(s), {len(warnings)} warning(s) among {evaluated} expectations on {rows} rows."

    lines = [head]
    for failure in failed:
        lines.append(f"  {failure['severity'].upper()} {sentence(failure)}")
        for example in failure.get("examples") or []:
            lines.append(f"      {example}")
    return "\n".join(lines)
