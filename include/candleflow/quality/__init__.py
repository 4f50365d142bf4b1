"""Data quality of OHLCV candles with Great Expectations 1.x (docs/quality.md).

- `validate_ohlcv`: the per-batch suite (schema, nulls, OHLC consistency, volume, timestamps,
  repeated candles, continuity, stale prices, return outliers), run on every collected batch;
- `runs.cross_exchange` and `runs.freshness`: the run-level suites, over what a run landed;
- `results`: each validation's JSON result beside the data it judged, the `quality` lake table
  (`TABLE_SPECS`) and the GX Data Docs site;
- `python -m candleflow.quality check PATH --timeframe TF`: the same batch suite on any candle file.

Severities and thresholds are configuration (include/config/quality.yaml): `error` quarantines
the batch and fails the task, `warn` keeps it, tagged.

This package is imported by the dag processor (the DAGs' retry policy names QualityError): pandas,
pyarrow and GX are imported inside functions only.
"""

from __future__ import annotations

from candleflow.quality.report import QualityError, QualityReport
from candleflow.quality.results import keep_batch_result
from candleflow.quality.suite import COLUMNS, PRICE_COLUMNS, validate_ohlcv

__all__ = ["COLUMNS", "PRICE_COLUMNS", "TABLE_SPECS", "QualityError", "QualityReport", "keep_batch_result", "main",
           "read_candle_file", "validate_ohlcv"]


def __getattr__(name: str):
    # lazily: the table spec needs pyarrow, the CLI pandas
    if name == "TABLE_SPECS":
        from candleflow.quality import results

        return getattr(results, name)
    if name in ("main", "read_candle_file"):
        from candleflow.quality import cli

        return getattr(cli, name)
    raise AttributeError(f"module 'candleflow.quality' has no attribute {name!r}")
