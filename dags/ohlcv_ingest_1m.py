"""
### ohlcv_ingest_1m — 1m OHLCV candles from every exchange into the S3 lake, every minute

Each run collects exactly its **data interval** (the previous minute) of 1m candles, and the interval before
it again (late candles), for every symbol of `include/config/universe.yaml` on every exchange —
one `ingest_<exchange>` task per exchange, in its pool `candleflow_<exchange>`. Each batch is checked
with the Great Expectations suite and written to the Hive-partitioned parquet lake
(`ohlcv/exchange=…/symbol=…/timeframe=1m/month=…/`); a bad batch goes to `quarantine/` with its
report and fails that exchange's `verdict` (the other batches still land). Keys are deterministic
per interval: re-running a run replaces its objects. Every gap is recorded with its reason in the
gap ledger (`coverage/`); `lake_compaction` rebuilds the coverage heatmap daily at
`reports/coverage/timeframe=1m/coverage.html` in the lake bucket.

**Backfill** from the UI (Dag → Backfill, or `airflow backfill create --dag-id ohlcv_ingest_1m
--from-date … --to-date …`) runs one interval per run; for long ranges use `ohlcv_backfill`,
which chunks, resumes and rebuilds the coverage report of its months (backfill `lake_compaction`
over the same dates to compact them and refresh their coverage).
A run that lands candles updates the `candleflow_ohlcv_1m` asset, which
triggers `train_models`.
"""

from datetime import UTC, datetime

from airflow.sdk import CronDataIntervalTimetable, dag

from candleflow_airflow.defaults import default_args
from candleflow_airflow.ingest import ohlcv_ingest_graph, plan_interval


@dag(
    dag_id="ohlcv_ingest_1m",
    # Interval timetable: tasks read data_interval_start/end (a trigger timetable makes them equal).
    schedule=CronDataIntervalTimetable("* * * * *", timezone="UTC"),
    start_date=datetime(2017, 1, 1, tzinfo=UTC),
    catchup=False,
    max_active_runs=2,
    default_args=default_args(),
    doc_md=__doc__,
    tags=["candleflow", "ingest", "ohlcv", "1m"],
)
def ohlcv_ingest_1m():
    ohlcv_ingest_graph(plan_interval(timeframe="1m"), timeframes=("1m",))


ohlcv_ingest_1m()
