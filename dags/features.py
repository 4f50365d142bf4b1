"""
### features — model inputs from the lake's candles, per symbol, into the lake's `features` table

Runs when the `candleflow_ohlcv_1h` asset is updated (an ingest or backfill landed 1h candles),
for the symbols and the window that event names, and by hand with the form below. For each symbol
it rebuilds the daily partitions `features/symbol=…/timeframe=…/date=…/` from every exchange's
candles: TA-Lib indicators (trend, momentum, volatility, volume; parameters in
`include/config/features.yaml`), the last closed 1h/4h/1d bar, the spread to the cross-exchange
median and the volume share, the funding rate where collected, the daily Fear & Greed index, and
the labels (return and direction over the configured horizon). No feature sees anything observed
after its candle's close. Each object lists the lake objects it came from in its metadata; a re-run
writes identical bytes. When partitions were written, the `candleflow_features` asset is updated.
Details: docs/features.md.
"""

from datetime import UTC, datetime

from airflow.sdk import Param, dag

from candleflow.config import TIMEFRAMES
from candleflow_airflow.assets import OHLCV_BY_TIMEFRAME
from candleflow_airflow.defaults import default_args
from candleflow_airflow.features import features_graph


@dag(
    dag_id="features",
    schedule=[OHLCV_BY_TIMEFRAME["1h"]],  # features.yaml builds on 1h candles
    start_date=datetime(2024, 1, 1, tzinfo=UTC),
    catchup=False,
    max_active_runs=1,  # runs rewrite the same daily partitions: one at a time
    default_args=default_args(),
    doc_md=__doc__,
    tags=["candleflow", "features"],
    params={
        "symbols": Param([], type="array", items={"type": "string"}, title="Symbols",
                         description="Base assets, e.g. BTC. Empty: the symbols of the triggering event, else the universe."),
        "timeframe": Param("1h", type="string", enum=list(TIMEFRAMES), title="Base timeframe"),
        "start": Param(None, type=["null", "string"], format="date-time", title="From (UTC)",
                       description="Empty: where the triggering event's candles start, else one day before `end`."),
        "end": Param(None, type=["null", "string"], format="date-time", title="To (UTC, exclusive)",
                     description="Empty: where the triggering event's candles end, else now."),
    },
)
def features():
    features_graph()


features()
