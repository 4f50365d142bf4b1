"""
### derivatives_ingest — funding rates and open interest of the USDT perpetuals, every hour

For binance, bybit and okx, one mapped task per exchange collects, for every symbol of
`include/config/derivatives.yaml` (default: the universe) that has a linear USDT perpetual there:

- **funding rates** at the interval the exchange really uses for that symbol (8 h, 4 h or 1 h —
  read from the exchange, not assumed), with binance's mark price → lake table `funding`;
- **open interest** per hour (base units and, where published, value) → lake table `open_interest`.

Both are partitioned `exchange=…/symbol=…/month=…/`; each run merges its window into the month
objects, so re-runs write identical bytes. Every expected settlement or hour that the exchange did
not return is recorded with its reason under `derivatives_gaps/` (e.g. binance keeps open
interest for 30 days only). A symbol without a perpetual is skipped with the reason.

A scheduled run covers its **data interval** plus `lookback_hours` before it. **Backfill**: trigger
with `start`/`end` (and optionally `exchanges`, `symbols`), or use Airflow's native backfill.
Each run that lands data updates the `candleflow_funding` and `candleflow_open_interest` assets.
Details: docs/derivatives.md.
"""

from datetime import UTC, datetime

from airflow.sdk import CronDataIntervalTimetable, Param, dag

from candleflow_airflow.defaults import default_args
from candleflow_airflow.derivatives import derivatives_graph


@dag(
    dag_id="derivatives_ingest",
    # tasks read data_interval_start/end: an interval timetable, not a trigger one. Five past the
    # hour: the venues publish the last hour's open-interest statistic shortly after it closes.
    schedule=CronDataIntervalTimetable("5 * * * *", timezone="UTC"),
    start_date=datetime(2024, 1, 1, tzinfo=UTC),
    catchup=False,
    max_active_runs=1,  # runs merge into the same month objects: one at a time
    default_args=default_args(),
    doc_md=__doc__,
    params={
        "start": Param(None, type=["null", "string"], format="date-time",
                       description="Backfill from (ISO instant). Empty: the run's data interval."),
        "end": Param(None, type=["null", "string"], format="date-time", description="Backfill to (exclusive)."),
        "exchanges": Param(None, type=["null", "array"], description="Subset of binance, bybit, okx. Empty: all."),
        "symbols": Param(None, type=["null", "array"], description="Subset of the configured symbols. Empty: all."),
    },
    tags=["candleflow", "ingest", "derivatives"],
)
def derivatives_ingest():
    derivatives_graph()


derivatives_ingest()
