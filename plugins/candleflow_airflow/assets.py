"""Assets candleflow's DAGs produce and consume (data-aware scheduling).

Named, not URI-addressed: the bucket is deployment configuration, the asset is the table. (A URI
with a scheme also makes Airflow load every provider's URI normalisers — boto3 included — on
each parse of a DAG file: ~0.5 s.)
"""

from airflow.sdk import Asset

OHLCV = Asset(name="candleflow_ohlcv", group="candleflow", extra={"table": "ohlcv"})
MODELS = Asset(name="candleflow_models", group="candleflow", extra={"registry": "mlflow"})
