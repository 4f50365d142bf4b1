"""
### ohlcv_backfill — collect a chosen range of candles in one run, from a form

Trigger it with **Trigger Dag**: pick exchanges, symbols, the timeframe and the UTC window. The
request is validated before any exchange is called (unknown symbol, end before start, a window not
on a candle boundary are refused with the field named), and the `plan` task's log shows what it
will cost: requests per exchange and the projected wall time at the exchanges' rate limits.

The window is cut into chunks of whole UTC days (`collect.chunk_days`); each exchange's `ingest`
task collects, checks and publishes chunk by chunk, logging done/total and an ETA. A chunk the
gap ledger already shows complete is skipped unless **force** is set, so re-running after a crash
resumes where it stopped. Keys are deterministic per window and month: re-running the same request
leaves the lake as one run would.

Leave *exchanges* or *symbols* empty for the whole universe.
"""

from datetime import UTC, datetime

from airflow.sdk import Param, dag

from candleflow.config import BUDGETS, EXCHANGES, TIMEFRAMES
from candleflow_airflow.defaults import default_args
from candleflow_airflow.ingest import ohlcv_ingest_graph, plan_from_params


@dag(
    dag_id="ohlcv_backfill",
    schedule=None,
    start_date=datetime(2017, 1, 1, tzinfo=UTC),
    catchup=False,
    max_active_runs=1,
    default_args=default_args(),
    doc_md=__doc__,
    tags=["candleflow", "ingest", "ohlcv", "backfill"],
    params={
        "exchanges": Param([], type="array", items={"type": "string", "enum": list(EXCHANGES)},
                           title="Exchanges", description="Empty: every exchange of the universe."),
        "symbols": Param([], type="array", items={"type": "string"}, title="Symbols",
                         description="Base assets, e.g. BTC, ETH. Empty: every symbol of the universe."),
        "timeframe": Param("1h", type="string", enum=list(TIMEFRAMES), title="Timeframe"),
        "start": Param("2024-09-20T00:00:00+00:00", type="string", format="date-time", title="Start (UTC)",
                       description="Inclusive; on a candle boundary."),
        "end": Param("2024-10-30T00:00:00+00:00", type="string", format="date-time", title="End (UTC)",
                     description="Exclusive; after start."),
        "force": Param(False, type="boolean", title="Force",
                       description="Fetch chunks the gap ledger already shows complete (default: skip them)."),
        "budget": Param("ccxt", type="string", enum=list(BUDGETS), title="Rate-limit budget",
                        description="ccxt: ccxt's own spacing (conservative). published: each exchange's published "
                                    "limit × the margin in include/config/budgets.yaml (faster; see the README, "
                                    "'Choosing a rate-limit budget')."),
    },
)
def ohlcv_backfill():
    ohlcv_ingest_graph(plan_from_params(), timeframes=TIMEFRAMES, coverage=True)


ohlcv_backfill()
