"""
### lake_compaction — merge each finished day's OHLCV parts into one object per partition, daily

An hourly ingest leaves 24 objects per pair and day (a 1m ingest 1440). Once a day, for the UTC day
of its **data interval** (and `lookback_days` days before it, for parts that arrived late), one
mapped `compact` task per exchange merges, in every `ohlcv/exchange=…/symbol=…/timeframe=…/month=…/`
partition, the objects of the days done into `compacted-<from>_<to>.parquet`: exactly the rows a
reader saw (later-named parts win). It then deletes what it merged — each only if it was not
rewritten meanwhile. Readers never see a candle missing, twice or stale: the merged object is
written before anything is deleted, and they deduplicate. A part written after compaction still
wins (compacted objects sort first) and is merged the next day. Re-running a run changes nothing:
a partition with nothing new to merge is left alone. The same task merges each pair's gap-ledger
windows of those days (`coverage/…/date=…/`, a 1m ingest writes 1,440 a day) into one entry per
covered stretch, with the verdict each candle had; then `coverage_reports` rebuilds the coverage
report of each timeframe found in those days' ledger, from those days' months. `quarantine/` is not touched. Details:
docs/lake.md.
"""

from datetime import UTC, datetime

from airflow.sdk import CronDataIntervalTimetable, Param, dag

from candleflow_airflow.compaction import lake_compaction_graph
from candleflow_airflow.defaults import default_args


@dag(
    dag_id="lake_compaction",
    # Interval timetable: the run for [D, D+1) starts when day D is over.
    schedule=CronDataIntervalTimetable("15 0 * * *", timezone="UTC"),
    start_date=datetime(2024, 1, 1, tzinfo=UTC),
    catchup=False,
    max_active_runs=1,
    default_args=default_args(),
    doc_md=__doc__,
    tags=["candleflow", "lake", "compaction"],
    params={
        "lookback_days": Param(1, type="integer", minimum=0, maximum=31, title="Lookback days",
                               description="Also compact this many days before the data interval's day."),
    },
)
def lake_compaction():
    lake_compaction_graph()


lake_compaction()
