"""Registry: runs, versions and the champion alias against the real MLflow server (artifacts
proxied to the moto S3)."""

from __future__ import annotations

import json
import uuid

import mlflow
import numpy as np
import torch

from candleflow import registry
from candleflow.training.model import N_FEATURES, PriceLSTM


def write_model_dir(path, seed: int, window: int = 6, hidden_size: int = 4):
    """What the entry point leaves in SM_MODEL_DIR, without training."""
    torch.manual_seed(seed)
    model = PriceLSTM(N_FEATURES, hidden_size)
    path.mkdir(parents=True)
    torch.save(model.state_dict(), path / "model.pt")
    (path / "model_config.json").write_text(json.dumps({"n_features": N_FEATURES, "hidden_size": hidden_size,
                                                         "window": window}))
    history = [{"epoch": e, "train_loss": 0.7 - 0.01 * e, "val_loss": 0.69 - 0.005 * e,
                "val_directional_accuracy": 0.5 + 0.01 * e} for e in (1, 2, 3)]
    metrics = {**{k: v for k, v in history[-1].items() if k != "epoch"}, "n_train": 100, "n_val": 25,
               "resumed_from_epoch": None, "history": history}
    (path / "metrics.json").write_text(json.dumps(metrics))
    example = np.random.default_rng(seed).normal(size=(1, window, N_FEATURES)).astype(np.float32)  # 1 row: widened
    (path / "input_example.json").write_text(json.dumps(example.tolist()))
    return model, metrics, example


def test_names():
    assert registry.model_name("BTC", "1h") == "candleflow-btc-1h"
    assert registry.experiment_name("1h") == "candleflow-1h"


def test_log_and_register_versions_lineage_and_load(mlflow_server, tmp_path):
    symbol = f"T{uuid.uuid4().hex[:6]}".upper()  # a model of its own on the session's server
    name = registry.model_name(symbol, "1h")
    sources = ["ohlcv/exchange=binance/symbol=X/timeframe=1h/2024-09.parquet"]
    first_model, metrics, example = write_model_dir(tmp_path / "m1", seed=1)
    common = dict(symbol=symbol, timeframe="1h", lake_sources=sources)

    partitions = [{"partition": "exchange=binance/symbol=X/timeframe=1h/date=2024-09-01", "objects": sources,
                   "rows": 24}]
    quality = {"verdict": "1 exchange-days: 1 complete, 0 partial, 0 quarantined (not trained on)", "exchanges": {}}
    v1 = registry.log_and_register(mlflow_server, model_dir=tmp_path / "m1", metrics=metrics,
                                   params={"epochs": 3, "window": 6}, job_name=f"cf-{symbol}-a",
                                   backend="local", lineage={"partitions": partitions, "quality": quality},
                                   **common)
    # registering sets no alias: the promotion decides (test_promotion.py)
    assert (v1.name, v1.version, v1.alias) == (name, "1", None)

    _, metrics2, _ = write_model_dir(tmp_path / "m2", seed=2)
    v2 = registry.log_and_register(mlflow_server, model_dir=tmp_path / "m2", metrics=metrics2,
                                   params={"epochs": 3}, job_name=f"cf-{symbol}-b", backend="sagemaker",
                                   **common)
    assert (v2.version, v2.alias) == ("2", None)

    # a retried register task of the same job returns that job's version instead of a duplicate
    again = registry.log_and_register(mlflow_server, model_dir=tmp_path / "m2", metrics=metrics2, params={},
                                      job_name=f"cf-{symbol}-b", backend="sagemaker", **common)
    assert (again.version, again.run_id) == ("2", v2.run_id)

    client = mlflow.MlflowClient(tracking_uri=mlflow_server, registry_uri=mlflow_server)
    assert len(client.search_model_versions(f"name = '{name}'")) == 2

    run = client.get_run(v1.run_id)
    assert run.info.run_name == f"cf-{symbol}-a" and run.info.status == "FINISHED"
    assert client.get_experiment(run.info.experiment_id).name == "candleflow-1h"
    assert run.data.tags["candleflow.backend"] == "local"
    assert run.data.tags["candleflow.job_name"] == f"cf-{symbol}-a"
    assert run.data.tags["candleflow.symbol"] == symbol
    assert client.get_run(v2.run_id).data.tags["candleflow.backend"] == "sagemaker"
    assert run.data.params == {"epochs": "3", "window": "6", "lake_partitions": "1", "lake_rows": "24",
                               "code_version": "unknown"}
    assert run.data.tags["candleflow.quality"] == quality["verdict"]
    assert mlflow.artifacts.load_dict(f"runs:/{v1.run_id}/lake_partitions.json") == partitions
    assert mlflow.artifacts.load_dict(f"runs:/{v1.run_id}/quality.json") == quality
    assert client.get_run(v2.run_id).data.tags["candleflow.sagemaker_job"] == f"cf-{symbol}-b"
    assert client.get_model_version(name, "1").tags["candleflow.window"] == "6"
    assert run.data.metrics["val_directional_accuracy"] == metrics["val_directional_accuracy"]
    assert run.data.metrics["n_train"] == 100
    curve = client.get_metric_history(v1.run_id, "val_loss")
    assert sorted((m.step, m.value) for m in curve) == [(h["epoch"], h["val_loss"]) for h in metrics["history"]]
    lake = mlflow.artifacts.load_dict(f"runs:/{v1.run_id}/lake_sources.json")
    assert lake == sources

    loaded = mlflow.pyfunc.load_model(f"models:/{name}/1")
    batch = np.random.default_rng(5).normal(size=(7, 6, N_FEATURES)).astype(np.float32)
    predicted = np.asarray(loaded.predict(batch)).reshape(-1)  # any batch size, not just the example's
    with torch.no_grad():
        expected = first_model(torch.from_numpy(batch)).numpy().reshape(-1)
    np.testing.assert_allclose(predicted, expected, rtol=1e-4, atol=1e-5)
