"""MLflow tracking and model registry for the per-symbol models.

- one experiment per timeframe (`candleflow-1h`), one run per training job (named after it);
- one registered model per symbol and timeframe (`candleflow-btc-1h`);
- the first version of a model gets the alias `champion`; later versions are registered
  without an alias (promotion is a separate decision).

Everything goes through the tracking server over HTTP; with `--artifacts-destination` the server
proxies artifacts to its store (S3), so this client needs no S3 credentials.
"""

from __future__ import annotations

import json
import logging
import time
import warnings
from dataclasses import dataclass
from pathlib import Path

CHAMPION = "champion"
TAG_BACKEND = "candleflow.backend"
TAG_JOB_NAME = "candleflow.job_name"
TAG_SYMBOL = "candleflow.symbol"
TAG_TIMEFRAME = "candleflow.timeframe"
HISTORY_KEYS = ("train_loss", "val_loss", "val_directional_accuracy")

log = logging.getLogger(__name__)


def model_name(symbol: str, timeframe: str) -> str:
    return f"candleflow-{symbol.lower()}-{timeframe}"


def experiment_name(timeframe: str) -> str:
    return f"candleflow-{timeframe}"


@dataclass
class RegisteredVersion:
    name: str
    version: str
    run_id: str
    alias: str | None


def _client(tracking_uri: str):
    """A client bound to `tracking_uri`; the fluent API (log_model) is pointed there too."""
    import mlflow

    mlflow.set_tracking_uri(tracking_uri)
    mlflow.set_registry_uri(tracking_uri)
    return mlflow.MlflowClient(tracking_uri=tracking_uri, registry_uri=tracking_uri)


def _experiment_id(client, name: str) -> str:
    from mlflow.exceptions import MlflowException

    experiment = client.get_experiment_by_name(name)
    if experiment is not None:
        if experiment.lifecycle_stage == "deleted":
            client.restore_experiment(experiment.experiment_id)
        return experiment.experiment_id
    try:
        return client.create_experiment(name)
    except MlflowException:  # created concurrently by another symbol's task
        experiment = client.get_experiment_by_name(name)
        if experiment is None:
            raise
        return experiment.experiment_id


def _champion_version(client, name: str) -> str | None:
    from mlflow.exceptions import MlflowException

    try:
        return client.get_model_version_by_alias(name, CHAMPION).version
    except MlflowException:
        return None


def _existing_version(client, name: str, job_name: str):
    """The version an earlier attempt of the same job registered (an Airflow retry), if any."""
    from mlflow.exceptions import MlflowException

    try:
        versions = client.search_model_versions(f"name = '{name}'")
    except MlflowException:
        return None
    for mv in versions:
        if (mv.tags or {}).get(TAG_JOB_NAME) == job_name:
            return mv
    return None


def _load_model(model_dir: Path):
    import torch

    from candleflow.training.model import PriceLSTM

    config = json.loads((model_dir / "model_config.json").read_text())
    model = PriceLSTM(int(config["n_features"]), int(config["hidden_size"]))
    model.load_state_dict(torch.load(model_dir / "model.pt", map_location="cpu", weights_only=True))
    model.eval()
    return model


def _pip_requirements() -> list[str]:
    import numpy
    import torch

    # Explicit, so MLflow does not infer them (a subprocess, ~20 s). The `+cpu` local version is
    # dropped: serving environments choose their torch build (CPU wheel index or CUDA) themselves.
    return [f"torch=={torch.__version__.split('+')[0]}", f"numpy=={numpy.__version__}"]


def log_and_register(
    tracking_uri: str,
    *,
    symbol: str,
    timeframe: str,
    model_dir: Path,
    metrics: dict,
    params: dict,
    lake_sources: list[str],
    job_name: str,
    backend: str,
) -> RegisteredVersion:
    """Log one training job as a run and register its model; alias `champion` if there is none yet.

    Idempotent per job: when a version from the same `job_name` exists (a retried task), it is
    returned instead of registering a duplicate.
    """
    import mlflow
    import numpy as np
    from mlflow.entities import Metric, Param

    model_dir = Path(model_dir)
    client = _client(tracking_uri)
    name = model_name(symbol, timeframe)
    existing = _existing_version(client, name, job_name)
    if existing is not None:
        log.info("job %s is already registered as %s version %s", job_name, name, existing.version)
        alias = CHAMPION if _champion_version(client, name) == existing.version else None
        return RegisteredVersion(name, str(existing.version), existing.run_id, alias)

    experiment_id = _experiment_id(client, experiment_name(timeframe))
    tags = {TAG_BACKEND: backend, TAG_JOB_NAME: job_name, TAG_SYMBOL: symbol, TAG_TIMEFRAME: timeframe}
    run = client.create_run(experiment_id, run_name=job_name, tags=tags)
    run_id = run.info.run_id
    try:
        # per-epoch curves (step = epoch); their last step is the final value
        history = list(metrics.get("history") or [])
        now = int(time.time() * 1000)
        series: list[Metric] = []
        for row in history:
            step = int(row["epoch"])
            series += [Metric(key, float(row[key]), now, step) for key in HISTORY_KEYS if row.get(key) is not None]
        last_step = int(history[-1]["epoch"]) if history else 0
        finals = {k: float(v) for k, v in metrics.items()
                  if k != "history" and isinstance(v, int | float) and not isinstance(v, bool)}
        series += [Metric(k, v, now, last_step) for k, v in finals.items() if not any(
            m.key == k and m.step == last_step for m in series)]
        param_list = [Param(str(k), str(v)[:6000]) for k, v in sorted(params.items())]
        for i in range(0, len(param_list), 100):  # log_batch limits: 100 params, 1000 metrics
            client.log_batch(run_id, params=param_list[i:i + 100])
        for i in range(0, len(series), 1000):
            client.log_batch(run_id, metrics=series[i:i + 1000])
        client.log_dict(run_id, list(lake_sources), "lake_sources.json")
        client.log_dict(run_id, {k: v for k, v in metrics.items() if k != "history"}, "metrics.json")

        model = _load_model(model_dir)
        example = np.asarray(json.loads((model_dir / "input_example.json").read_text()), dtype=np.float32)
        with mlflow.start_run(run_id=run_id), warnings.catch_warnings():
            # torch.export notes that nn.LSTM re-assigns its flat weights while tracing: harmless
            warnings.filterwarnings("ignore", message=r".*_flat_weights.*were assigned during export")
            info = mlflow.pytorch.log_model(
                model,
                name="model",
                input_example=example,
                pip_requirements=_pip_requirements(),
                registered_model_name=name,
            )
        client.set_terminated(run_id, "FINISHED")
    except BaseException:
        client.set_terminated(run_id, "FAILED")
        raise

    version = str(info.registered_model_version)
    client.set_model_version_tag(name, version, TAG_JOB_NAME, job_name)
    client.set_model_version_tag(name, version, TAG_BACKEND, backend)
    alias = None
    if _champion_version(client, name) is None:
        client.set_registered_model_alias(name, CHAMPION, version)
        alias = CHAMPION
    return RegisteredVersion(name=name, version=version, run_id=run_id, alias=alias)


def load_champion(tracking_uri: str, symbol: str, timeframe: str):
    """The `champion` version of the symbol's model as an MLflow pyfunc model."""
    import mlflow

    _client(tracking_uri)
    return mlflow.pyfunc.load_model(f"models:/{model_name(symbol, timeframe)}@{CHAMPION}")
