"""The quality rules' configuration: `include/config/quality.yaml`, typed and checked.

A bad value raises `ConfigError` naming the file, the field and the fix, like the rest of
`candleflow.config`.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from candleflow.config import TIMEFRAMES, ConfigError, config_dir, load_yaml

SEVERITIES = ("error", "warn", "off")
# rule name -> its numeric parameters and their defaults (the YAML must name them all; defaults
# only document the shape and serve tests that build a config in code)
BATCH_RULES: dict[str, dict[str, float]] = {
    "schema": {},
    "not_null": {},
    "ohlc_consistency": {},
    "volume_non_negative": {},
    "timestamps": {},
    "repeated_candle": {},
    "continuity": {"max_missing_ratio": 0.05},
    "stale_price": {"max_run": 10},
    "return_outliers": {"k": 12.0, "window": 60, "min_periods": 20, "min_abs_return": 0.02},
}
INTEGER_PARAMS = {"max_run", "window", "min_periods", "min_others"}


@dataclass(frozen=True)
class Rule:
    severity: str
    params: dict[str, float] = field(default_factory=dict)

    @property
    def on(self) -> bool:
        return self.severity != "off"

    def __getitem__(self, name: str):
        return self.params[name]


@dataclass(frozen=True)
class QualityConfig:
    batch: dict[str, Rule]
    cross_exchange: Rule
    freshness: Rule
    freshness_max_lag: dict[str, int]
    results_dir: str = "_quality"
    data_docs_prefix: str = "reports/quality/data_docs"
    data_docs_include_passed: bool = False
    data_docs_history_runs: int = 50

    def severity(self, rule: str) -> str:
        return self.batch[rule].severity


def _rule(data: Any, name: str, params: dict[str, float], where: str) -> Rule:
    if not isinstance(data, dict):
        raise ConfigError(f"{where}: {name} must be a mapping like {{severity: warn}}; got {data!r}")
    severity = data.get("severity")
    if severity not in SEVERITIES:
        raise ConfigError(f"{where}: {name}.severity {severity!r} is invalid; use one of {', '.join(SEVERITIES)}")
    unknown = set(data) - {"severity", *params}
    if unknown:
        raise ConfigError(f"{where}: {name} has unknown field(s) {sorted(unknown)}; its fields are "
                          f"severity{''.join(', ' + p for p in params)}")
    values = {}
    for param, default in params.items():
        value = data.get(param, default)
        ok = isinstance(value, (int, float)) and not isinstance(value, bool) and value >= 0
        if param in INTEGER_PARAMS:
            ok = ok and float(value).is_integer() and value >= 1
        if not ok:
            kind = "a positive integer" if param in INTEGER_PARAMS else "a number >= 0"
            raise ConfigError(f"{where}: {name}.{param} {value!r} is invalid; use {kind}")
        values[param] = int(value) if param in INTEGER_PARAMS else float(value)
    return Rule(severity, values)


def parse_quality(data: dict, where: str = "quality.yaml") -> QualityConfig:
    batch_data = data.get("batch")
    if not isinstance(batch_data, dict):
        raise ConfigError(f"{where}: field 'batch' is missing; list the per-batch rules "
                          f"({', '.join(BATCH_RULES)}) with their severity")
    unknown = set(batch_data) - set(BATCH_RULES)
    if unknown:
        raise ConfigError(f"{where}: batch has unknown rule(s) {sorted(unknown)}; the rules are {', '.join(BATCH_RULES)}")
    missing = [r for r in BATCH_RULES if r not in batch_data]
    if missing:
        raise ConfigError(f"{where}: batch.{missing[0]} is missing; give every rule a severity (error, warn or off)")
    batch = {name: _rule(batch_data[name], f"batch.{name}", params, where) for name, params in BATCH_RULES.items()}
    if batch["return_outliers"].on and batch["return_outliers"]["min_periods"] > batch["return_outliers"]["window"]:
        raise ConfigError(f"{where}: batch.return_outliers.min_periods must not exceed its window")
    cross = _rule(data.get("cross_exchange", {"severity": "off"}), "cross_exchange",
                  {"max_deviation": 0.02, "min_others": 2}, where)
    fresh_data = dict(data.get("freshness") or {"severity": "off"})
    lag = fresh_data.pop("max_lag_intervals", None)
    freshness = _rule(fresh_data, "freshness", {}, where)
    if freshness.on:
        if not isinstance(lag, dict) or set(lag) != set(TIMEFRAMES):
            raise ConfigError(f"{where}: freshness.max_lag_intervals must map every timeframe "
                              f"({', '.join(TIMEFRAMES)}) to a number of intervals, e.g. {{1m: 5, 1h: 1}}")
        for tf, value in lag.items():
            if not isinstance(value, int) or isinstance(value, bool) or value < 0:
                raise ConfigError(f"{where}: freshness.max_lag_intervals.{tf} {value!r} is invalid; "
                                  "use an integer >= 0")
    results = data.get("results") or {}
    results_dir = str(results.get("results_dir", "_quality"))
    if not results_dir.startswith("_") or "/" in results_dir:
        raise ConfigError(f"{where}: results.results_dir {results_dir!r} must be one folder name starting "
                          "with '_' (so lake readers skip it)")
    history = results.get("data_docs_history_runs", 50)
    if not isinstance(history, int) or isinstance(history, bool) or history < 1:
        raise ConfigError(f"{where}: results.data_docs_history_runs {history!r} is invalid; use an integer >= 1 "
                          "(how many runs the Data Docs' runs.html lists)")
    return QualityConfig(batch=batch, cross_exchange=cross, freshness=freshness,
                         freshness_max_lag={k: int(v) for k, v in (lag or {}).items()},
                         results_dir=results_dir,
                         data_docs_prefix=str(results.get("data_docs_prefix", "reports/quality/data_docs")).strip("/"),
                         data_docs_include_passed=bool(results.get("data_docs_include_passed", False)),
                         data_docs_history_runs=history)


_CACHE: dict[tuple[str, int], QualityConfig] = {}


def load_quality() -> QualityConfig:
    """quality.yaml, parsed once per version of the file (every batch asks for it)."""
    path = config_dir() / "quality.yaml"
    try:
        key = (str(path), path.stat().st_mtime_ns)
    except OSError:
        key = None  # load_yaml names the missing file
    if key is not None and key in _CACHE:
        return _CACHE[key]
    config = parse_quality(load_yaml("quality.yaml"), str(path))
    if key is not None:
        _CACHE.clear()
        _CACHE[key] = config
    return config
