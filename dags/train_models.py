"""
### train_models — one model per symbol, trained on every exchange's candles, evaluated, registered, promoted

Runs when the `candleflow_features` asset is updated (the features DAG rebuilt features after an
ingest or backfill landed candles) and by hand with the form below. For each symbol it snapshots
the lake's `features` rows of the training window (all exchanges that list it; `dataset: candles`
in training.yaml trains on the candles instead) into a training channel, with the lake partitions,
row counts and the gap ledger's verdict beside it; trains the LSTM and a logistic-regression baseline with the
configured backend — `local` (default: a subprocess on this worker) or `sagemaker` (a real
SageMaker training job: deferrable, managed spot with max wait, checkpoints in S3, instance type
and hyperparameters from `include/config/training.yaml`); evaluates both, buy-and-hold and
always-long on a held-out window after fees; registers the model in MLflow as
`candleflow-<symbol>-<timeframe>`; and promotes it: alias `champion` only when it beats the current
champion on the same window by the configured margin and beats the baselines, else `challenger`.
Each decision is recorded with its reason (see docs/training.md).

Both backends run the same entry point (`candleflow.training.entrypoint`) under the SageMaker
container contract. A retry of the SageMaker task reattaches to its job instead of paying twice.
"""

from datetime import UTC, datetime

# The provider's operator module pulls in boto3 (~0.5 s). Named here at top level, the dag
# processor pre-imports it once in its parent process (parsing_pre_import_modules) instead of in
# every parse; the operator itself is built in candleflow_airflow.training.
from airflow.providers.amazon.aws.operators.sagemaker import SageMakerTrainingOperator  # noqa: F401
from airflow.sdk import Param, dag

from candleflow.config import TIMEFRAMES
from candleflow_airflow.assets import FEATURES
from candleflow_airflow.defaults import default_args
from candleflow_airflow.training import train_models_graph


@dag(
    dag_id="train_models",
    schedule=[FEATURES],  # after the features DAG rebuilt the 1h features the models train on
    start_date=datetime(2024, 1, 1, tzinfo=UTC),
    catchup=False,
    max_active_runs=1,
    default_args=default_args(retries=2),
    doc_md=__doc__,
    tags=["candleflow", "training", "mlflow"],
    params={
        "symbols": Param([], type="array", items={"type": "string"}, title="Symbols",
                         description="Base assets to train, e.g. BTC. Empty: every symbol of the universe."),
        "timeframe": Param("1h", type="string", enum=list(TIMEFRAMES), title="Timeframe"),
        "backend": Param(None, type=["null", "string"], enum=[None, "local", "sagemaker"], title="Backend",
                         description="Empty: the configured backend (include/config/training.yaml)."),
        "epochs": Param(None, type=["null", "integer"], minimum=1, maximum=500, title="Epochs",
                        description="Empty: the configured hyperparameters."),
        "lookback_days": Param(None, type=["null", "integer"], minimum=1, title="Lookback (days)",
                               description="Days of history to train on. Empty: the configured lookback."),
        "end": Param(None, type=["null", "string"], format="date-time", title="Window end (UTC)",
                     description="Empty: the end of the triggering features run's data, else now."),
    },
)
def train_models():
    train_models_graph()


train_models()
