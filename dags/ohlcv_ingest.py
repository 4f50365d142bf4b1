"""
### ohlcv_ingest — hourly OHLCV candles from every exchange into the S3 lake

Each run collects exactly its **data interval** (the previous hour) of 1h candles for every
(exchange, symbol) of the universe in `include/config/universe.yaml`, checks each batch with the
Great Expectations suite, and writes the good ones to the Hive-partitioned parquet lake
(`ohlcv/exchange=…/symbol=…/timeframe=…/date=…/`). Bad batches go to `quarantine/` with their
report and fail their task; the other pairs still land. Re-running a run replaces its objects.

**Backfill** from the UI (Dag → Backfill, or `airflow backfill create --dag-id ohlcv_ingest
--from-date … --to-date …`) runs one hourly interval per run; for long ranges in one run use
`ohlcv_backfill`. When the run lands anything it updates the `candleflow_ohlcv` asset, which
triggers `train_models`.
"""

from datetime import UTC, datetime

from airflow.sdk import CronDataIntervalTimetable, dag

from candleflow_airflow.defaults import default_args
from candleflow_airflow.ingest import ohlcv_ingest_graph, plan_interval


@dag(
    dag_id="ohlcv_ingest",
    # Interval timetable: tasks read data_interval_start/end (a trigger timetable makes them equal).
    schedule=CronDataIntervalTimetable("0 * * * *", timezone="UTC"),
    start_date=datetime(2017, 1, 1, tzinfo=UTC),
    catchup=False,
    max_active_runs=4,
    default_args=default_args(),
    doc_md=__doc__,
    tags=["candleflow", "ingest", "ohlcv"],
)
def ohlcv_ingest():
    ohlcv_ingest_graph(plan_interval(timeframe="1h"))


ohlcv_ingest()
