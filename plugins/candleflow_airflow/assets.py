"""Assets candleflow's DAGs produce and consume (data-aware scheduling).

Named, not URI-addressed: the bucket is deployment configuration, the asset is the table. (A URI
with a scheme also makes Airflow load every provider's URI normalisers — boto3 included — on
each parse of a DAG file: ~0.5 s.)
"""

from airflow.sdk import Asset

# One asset per timeframe: a 1m ingest every minute must not trigger what consumes 1h candles.
OHLCV_BY_TIMEFRAME = {
    tf: Asset(name=f"candleflow_ohlcv_{tf}", group="candleflow", extra={"table": "ohlcv", "timeframe": tf})
    for tf in ("1m", "5m", "15m", "1h")
}
MODELS = Asset(name="candleflow_models", group="candleflow", extra={"registry": "mlflow"})
# Features (candleflow.features): one event per features run; its extra names the symbols, timeframe, dates.
FEATURES = Asset(name="candleflow_features", group="candleflow", extra={"table": "features"})
# Perpetuals (candleflow.derivatives): one asset per lake table, updated once per derivatives_ingest run.
FUNDING = Asset(name="candleflow_funding", group="candleflow", extra={"table": "funding"})
OPEN_INTEREST = Asset(name="candleflow_open_interest", group="candleflow", extra={"table": "open_interest"})
