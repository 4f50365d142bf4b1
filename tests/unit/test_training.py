"""Training: features, the SageMaker-contract entry point via the local runner, and the
CreateTrainingJob request round trip, against the real moto server (S3 and SageMaker APIs)."""

from __future__ import annotations

import dataclasses
import json
import uuid

import boto3
import numpy as np
import pandas as pd
import pytest

from candleflow.config import load_training
from candleflow.training.dataset import load_channel, write_training_channel
from candleflow.training.model import FEATURES, N_FEATURES, build_samples
from candleflow.training.runner import TrainingJobSpec, download_model, run_training_job, split_s3_uri
from candleflow.training.sagemaker import (
    JOB_NAME_RE,
    cost_line,
    job_name,
    spec_from_description,
    training_job_config,
)

HPS = {"epochs": 2, "window": 12, "hidden_size": 8, "learning_rate": 0.01, "batch_size": 32, "seed": 7,
       "validation_fraction": 0.2}


def synthetic_candles(n: int = 300, exchanges=("binance", "kraken"), seed: int = 0) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    ts = pd.date_range("2024-09-01", periods=n, freq="1h", tz="UTC").as_unit("ms")
    base = 60_000 * np.exp(np.cumsum(rng.normal(0, 0.01, n)))
    frames = []
    for i, ex in enumerate(exchanges):
        close = base * (1 + rng.normal(0, 0.0005, n)) * (1 + 0.001 * i)
        open_ = np.r_[close[0], close[:-1]]
        high = np.maximum(open_, close) * (1 + rng.uniform(0, 0.003, n))
        low = np.minimum(open_, close) * (1 - rng.uniform(0, 0.003, n))
        frames.append(pd.DataFrame({"ts": ts, "exchange": ex, "symbol": "BTC", "timeframe": "1h", "open": open_,
                                    "high": high, "low": low, "close": close,
                                    "volume": rng.uniform(10, 100, n)}))
    return pd.concat(frames, ignore_index=True)


def make_spec(bucket: str, channel: str, name: str, hps: dict | None = None) -> TrainingJobSpec:
    sm = load_training().sagemaker
    return TrainingJobSpec(
        job_name=name, symbol="BTC", timeframe="1h", channels={"train": channel},
        output_s3_uri=f"s3://{bucket}/{sm.output_prefix}",
        checkpoint_s3_uri=f"s3://{bucket}/{sm.checkpoint_prefix}/{name}",
        hyperparameters=dict(hps or HPS), instance_type=sm.instance_type, use_spot=sm.use_spot,
        max_run_seconds=sm.max_run_seconds, max_wait_seconds=sm.max_wait_seconds, image_uri=sm.image_uri,
        role_arn=sm.role_arn,
    )


@pytest.fixture
def channel(s3_client, bucket):
    sources = ["ohlcv/exchange=binance/symbol=BTC/timeframe=1h/2024-09.parquet",
               "ohlcv/exchange=kraken/symbol=BTC/timeframe=1h/2024-09.parquet"]
    return write_training_channel(s3_client, bucket, "datasets/symbol=BTC/timeframe=1h/job=t", synthetic_candles(),
                                  sources)


# ---- names, requests, cost -------------------------------------------------------------------
def test_job_name_is_deterministic_valid_and_leaves_room_for_a_retry_suffix():
    run_ids = ["manual__2024-10-30T00:30:00+00:00", "asset_triggered__2026-11-25T16:13:44.123456+00:00",
               "x" * 300, "___", "scheduled__2024-10-30T00:00:00+00:00"]
    for run_id in run_ids:
        name = job_name(run_id, "BTC", "1h")
        assert name == job_name(run_id, "BTC", "1h")
        assert name.startswith("cf-btc-1h-") and len(name) <= 58
        assert JOB_NAME_RE.match(name) and JOB_NAME_RE.match(f"{name}-r12")
    assert job_name(run_ids[0], "BTC", "1h") != job_name(run_ids[0], "ETH", "1h")
    # run ids that sanitise alike stay apart through the hash
    assert job_name("a:b", "BTC", "1h") != job_name("a+b", "BTC", "1h")


def test_training_job_config_round_trips_through_moto_sagemaker(local_stack, s3_client, bucket, channel):
    spec = make_spec(bucket, channel, job_name(f"manual__{bucket}", "BTC", "1h"))
    assert json.loads(json.dumps(dataclasses.asdict(spec))) == dataclasses.asdict(spec)
    config = training_job_config(spec, load_training().sagemaker)
    assert config["EnableManagedSpotTraining"] is True
    assert config["StoppingCondition"]["MaxWaitTimeInSeconds"] >= config["StoppingCondition"]["MaxRuntimeInSeconds"]
    assert config["CheckpointConfig"] == {"S3Uri": spec.checkpoint_s3_uri, "LocalPath": "/opt/ml/checkpoints"}
    assert all(isinstance(v, str) for v in config["HyperParameters"].values())

    sm = boto3.client("sagemaker", endpoint_url=local_stack.s3_endpoint, region_name="us-east-1",
                      aws_access_key_id="testing", aws_secret_access_key="testing")
    sm.create_training_job(**config)
    desc = sm.describe_training_job(TrainingJobName=spec.job_name)
    assert spec_from_description(desc) == spec


def test_spec_without_spot_has_no_max_wait():
    spec = make_spec("b", "s3://b/datasets/x/train/", "cf-btc-1h-x")
    spec.use_spot = False
    config = training_job_config(spec, load_training().sagemaker)
    assert "MaxWaitTimeInSeconds" not in config["StoppingCondition"]
    back = spec_from_description(config)
    assert back.use_spot is False and back.max_wait_seconds == spec.max_run_seconds
    assert back.hyperparameters == spec.hyperparameters


def test_cost_line_states_instance_price_and_spot_estimate():
    spec = make_spec("b", "s3://b/x/train/", "cf-btc-1h-x")
    line = cost_line(spec, 3600)
    assert "ml.g4dn.xlarge" in line and "3600 billable s" in line and "$0.7360" in line
    assert "estimate" in line and "70%" in line
    local = cost_line(spec, 12, local=True)
    assert "locally" in local and "no SageMaker cost" in local


# ---- data and features -----------------------------------------------------------------------
def test_channel_round_trips_candles_and_sources(s3_client, bucket, channel, tmp_path):
    assert channel == f"s3://{bucket}/datasets/symbol=BTC/timeframe=1h/job=t/train/"
    _, prefix = split_s3_uri(channel)
    for name in ("candles.parquet", "sources.json"):
        s3_client.download_file(bucket, prefix + name, str(tmp_path / name))
    df = load_channel(tmp_path)
    assert len(df) == 600 and set(df["exchange"]) == {"binance", "kraken"}
    assert str(df["ts"].dtype) == "datetime64[ms, UTC]"
    assert len(json.loads((tmp_path / "sources.json").read_text())) == 2


def _xy(samples):
    return samples.X, samples.y


def test_build_samples_has_no_look_ahead():
    candles = synthetic_candles(120)
    X, y = _xy(build_samples(candles, window=10))
    assert X.shape[1:] == (10, N_FEATURES) and X.dtype == np.float32 and len(X) == len(y)
    cut = pd.Timestamp("2024-09-01", tz="UTC") + pd.Timedelta(hours=80)
    future = candles["ts"] >= cut
    changed = candles.copy()
    changed.loc[future, ["open", "high", "low", "close"]] *= 3.0
    changed.loc[future, "volume"] *= 0.1
    X2, y2 = _xy(build_samples(changed, window=10))
    # feature rows start at candle 1 (candle 0 has no previous close); window i ends at candle i+10,
    # its label is candle i+11. Every sample whose label candle is before the cut is unchanged.
    unchanged = 80 - 11
    np.testing.assert_array_equal(X[:unchanged], X2[:unchanged])
    np.testing.assert_array_equal(y[:unchanged], y2[:unchanged])
    assert not np.array_equal(X[unchanged + 1:], X2[unchanged + 1:])


def test_labels_are_the_next_candles_direction():
    candles = synthetic_candles(60, exchanges=("binance",))
    X, y = _xy(build_samples(candles, window=5))
    closes = candles["close"].to_numpy()
    ups = (np.diff(np.log(closes)) > 0).astype(np.float32)  # ups[k]: candle k+1 went up
    # sample i covers feature rows i..i+4 (candles i+1..i+5); the label is candle i+6
    np.testing.assert_array_equal(y, ups[5:])
    np.testing.assert_allclose(X[:, -1, 0], 100 * np.diff(np.log(closes))[4:-1], rtol=1e-4)


# ---- the entry point through the local runner ---------------------------------------------------
@pytest.fixture(scope="module")
def first_job(moto_server, tmp_path_factory):
    """One 1-epoch job run by the local runner (each job is a subprocess importing torch: ~10-20 s)."""
    s3 = boto3.client("s3", endpoint_url=moto_server, region_name="us-east-1",
                      aws_access_key_id="testing", aws_secret_access_key="testing")
    bucket = f"t-train-{uuid.uuid4().hex[:8]}"
    s3.create_bucket(Bucket=bucket)
    channel = write_training_channel(s3, bucket, "datasets/symbol=BTC/timeframe=1h/job=t", synthetic_candles(), [])
    spec = make_spec(bucket, channel, "cf-btc-1h-local-test")
    spec.hyperparameters = {k: str(v) for k, v in {**HPS, "epochs": 1}.items()}  # strings, as SageMaker passes
    workdir = tmp_path_factory.mktemp("first")
    result = run_training_job(spec, s3, workdir)
    return s3, bucket, spec, result, workdir


def test_run_training_job_trains_and_leaves_model_tar_where_sagemaker_would(first_job, tmp_path):
    s3, bucket, spec, result, _ = first_job
    assert result.model_s3_uri == f"s3://{bucket}/sagemaker/output/{spec.job_name}/output/model.tar.gz"
    assert result.billable_seconds >= 1 and result.job_name == spec.job_name
    for name in ("model.pt", "model_config.json", "metrics.json", "input_example.json"):
        assert (result.model_dir / name).exists(), name
    metrics = result.metrics
    assert {"val_directional_accuracy", "val_loss", "train_loss", "history"} <= metrics.keys()
    assert [h["epoch"] for h in metrics["history"]] == [1]
    assert set(metrics["history"][0]) == {"epoch", "train_loss", "val_loss", "val_directional_accuracy"}
    assert 0.0 <= metrics["val_directional_accuracy"] <= 1.0
    assert metrics["resumed_from_epoch"] is None
    assert json.loads((result.model_dir / "model_config.json").read_text()) == {
        "n_features": N_FEATURES, "hidden_size": 8, "window": 12, "dataset": "candles", "features": list(FEATURES)}
    for name in ("evaluation.json", "evaluation_predictions.json", "baseline.json"):
        assert (result.model_dir / name).exists(), name
    example = np.array(json.loads((result.model_dir / "input_example.json").read_text()), dtype=np.float32)
    assert example.shape == (2, 12, N_FEATURES)

    _, ckpt_prefix = split_s3_uri(spec.checkpoint_s3_uri)
    keys = [o["Key"] for o in s3.list_objects_v2(Bucket=bucket, Prefix=ckpt_prefix)["Contents"]]
    assert any(k.endswith("checkpoint-epoch-0001.pt") for k in keys)

    model_dir = download_model(s3, result.model_s3_uri, tmp_path / "dl")
    assert json.loads((model_dir / "metrics.json").read_text()) == metrics
    assert (model_dir / "model.pt").exists()


def test_training_resumes_from_the_latest_checkpoint(first_job, tmp_path):
    s3, _, spec, first, _ = first_job
    # a new container (fresh workdir) finds the epoch-1 checkpoint in S3 and continues from it
    spec = dataclasses.replace(spec, hyperparameters={**spec.hyperparameters, "epochs": "3"})
    second = run_training_job(spec, s3, tmp_path / "second")
    history = second.metrics["history"]
    assert second.metrics["resumed_from_epoch"] == 1
    assert [h["epoch"] for h in history] == [1, 2, 3]
    assert history[0] == first.metrics["history"][0]  # epoch 1 was not trained again
    assert second.metrics["val_loss"] == history[-1]["val_loss"]


def test_failed_entry_point_raises_with_the_stderr_tail(s3_client, bucket, channel, tmp_path):
    spec = make_spec(bucket, channel, "cf-btc-1h-bad", {**HPS, "window": 5000})
    with pytest.raises(RuntimeError, match=r"(?s)cf-btc-1h-bad.*exited with code 1.*not enough to train"):
        run_training_job(spec, s3_client, tmp_path / "work")


# ---- retries never pay twice ----------------------------------------------------------------------
def test_plan_submission_reattaches_reuses_or_starts_a_fresh_unique_name():
    from candleflow.training.sagemaker import plan_submission

    def jobs(**states):
        described = {name.replace("_", "-"): {"TrainingJobName": name.replace("_", "-"), "TrainingJobStatus": st}
                     for name, st in states.items()}
        return described.get

    assert plan_submission("cf-a", 1, jobs()) == ("start", "cf-a", None)
    assert plan_submission("cf-a", 2, jobs())[:2] == ("start", "cf-a")  # try 1 died before submitting
    assert plan_submission("cf-a", 2, jobs(cf_a="InProgress"))[:2] == ("reattach", "cf-a")
    assert plan_submission("cf-a", 3, jobs(cf_a="Stopping"))[:2] == ("reattach", "cf-a")
    assert plan_submission("cf-a", 2, jobs(cf_a="Completed"))[:2] == ("reuse", "cf-a")
    assert plan_submission("cf-a", 2, jobs(cf_a="Failed")) == ("start", "cf-a-r2", None)
    # try 3: try 2 started cf-a-r2 after cf-a failed, and it is still running -> reattach, no third job
    assert plan_submission("cf-a", 3, jobs(cf_a="Failed", cf_a_r2="InProgress"))[:2] == ("reattach", "cf-a-r2")
    assert plan_submission("cf-a", 3, jobs(cf_a="Failed", cf_a_r2="Completed"))[:2] == ("reuse", "cf-a-r2")
    assert plan_submission("cf-a", 3, jobs(cf_a="Failed", cf_a_r2="Stopped")) == ("start", "cf-a-r3", None)
    # a name taken by a (failed) job of a cleared and re-run task is skipped, never reused
    assert plan_submission("cf-a", 2, jobs(cf_a="Failed", cf_a_r2="Failed", cf_a_r3="Failed"))[:2] == (
        "start", "cf-a-r4")
    assert JOB_NAME_RE.match(plan_submission("x" * 58, 12, jobs())[1])


def test_operator_retry_reuses_the_job_it_started_on_moto(local_stack, s3_client, bucket, channel, monkeypatch):
    """Two tries of the submit task against the real moto SageMaker API: one job, not two."""
    from types import SimpleNamespace

    from candleflow_airflow.sagemaker import ReattachingSageMakerTrainingOperator

    monkeypatch.setenv("AIRFLOW_CONN_AWS_DEFAULT", local_stack.pipeline_env()["AIRFLOW_CONN_AWS_DEFAULT"])
    spec = make_spec(bucket, channel, job_name(f"retry__{bucket}", "BTC", "1h"))
    config = training_job_config(spec, load_training().sagemaker)
    sm = boto3.client("sagemaker", endpoint_url=local_stack.s3_endpoint, region_name="us-east-1",
                      aws_access_key_id="testing", aws_secret_access_key="testing")

    def run(try_number: int) -> dict:
        op = ReattachingSageMakerTrainingOperator(task_id="submit_sagemaker", config=json.loads(json.dumps(config)),
                                                  aws_conn_id="aws_default", wait_for_completion=True,
                                                  deferrable=True, print_log=False, check_interval=1)
        return op.execute({"ti": SimpleNamespace(try_number=try_number)})

    def ours() -> list[str]:
        return [j["TrainingJobName"] for j in sm.list_training_jobs(MaxResults=100)["TrainingJobSummaries"]
                if j["TrainingJobName"].startswith(spec.job_name)]

    first = run(1)
    assert first["Training"]["TrainingJobName"] == spec.job_name
    second = run(2)  # the retry finds the job Completed and hands it on
    assert second["Training"]["TrainingJobName"] == spec.job_name
    assert ours() == [spec.job_name]
    described = sm.describe_training_job(TrainingJobName=spec.job_name)
    assert described["EnableManagedSpotTraining"] is True
    assert described["ResourceConfig"]["InstanceType"] == load_training().sagemaker.instance_type
    assert described["InputDataConfig"][0]["DataSource"]["S3DataSource"]["S3Uri"] == channel
    assert described["CheckpointConfig"]["S3Uri"] == spec.checkpoint_s3_uri


def test_cost_line_uses_the_measured_spot_saving_when_sagemaker_reports_it():
    spec = make_spec("b", "s3://b/x/train/", "cf-btc-1h-x")
    line = cost_line(spec, 900, training_seconds=3600)
    assert "900 billable s of 3600 s" in line and "saved 75%" in line and "ml.g4dn.xlarge" in line


# ---- lineage: what a run trained on ----------------------------------------------------------------
def test_lineage_counts_rows_per_lake_partition_and_summarises_the_gap_ledger(s3_client, bucket):
    from datetime import UTC, datetime

    from candleflow import coverage, lake
    from candleflow.training.lineage import partition_rows, quality_summary

    start, end = datetime(2024, 9, 1, tzinfo=UTC), datetime(2024, 9, 3, tzinfo=UTC)
    frame = synthetic_candles(48)
    frame = frame[~((frame["exchange"] == "kraken") & (frame["ts"] >= pd.Timestamp("2024-09-02", tz="UTC")))]
    for exchange, part in frame.groupby("exchange"):
        lake.write_batch(s3_client, bucket, part, exchange=exchange, symbol="BTC", timeframe="1h",
                         market="BTC/USDT", window_start=start, window_end=end)
    candles, sources = lake.read_with_sources(s3_client, bucket, symbol="BTC", timeframe="1h", start=start, end=end)
    rows = partition_rows(candles, sources)
    assert [(r["partition"], r["rows"], len(r["objects"])) for r in rows] == [
        ("exchange=binance/symbol=BTC/timeframe=1h/month=2024-09", 48, 1),
        ("exchange=kraken/symbol=BTC/timeframe=1h/month=2024-09", 24, 1)]

    tf = 3_600_000
    day1 = [int(t) for t in range(int(start.timestamp() * 1000), int(start.timestamp() * 1000) + 86_400_000, tf)]
    entries = [*coverage.build_entries(exchange="binance", symbol="BTC", timeframe="1h", tf_ms=tf, window_start=start,
                                       window_end=end, present_ms=day1 + [t + 86_400_000 for t in day1],
                                       market="BTC/USDT", status="complete"),
               *coverage.build_entries(exchange="kraken", symbol="BTC", timeframe="1h", tf_ms=tf, window_start=start,
                                       window_end=datetime(2024, 9, 2, tzinfo=UTC), present_ms=day1,
                                       market="BTC/USD", status="complete"),
               *coverage.build_entries(exchange="kraken", symbol="BTC", timeframe="1h", tf_ms=tf,
                                       window_start=datetime(2024, 9, 2, tzinfo=UTC), window_end=end, present_ms=[],
                                       market="BTC/USD", status="quarantined"),
               # a day after the window (end is exclusive) is not part of it
               *coverage.build_entries(exchange="kraken", symbol="BTC", timeframe="1h", tf_ms=tf, window_start=end,
                                       window_end=datetime(2024, 9, 4, tzinfo=UTC), present_ms=[],
                                       market="BTC/USD", status="quarantined")]
    coverage.write_entries(s3_client, bucket, entries)
    # pruned to the window's dates by key before any GET: kraken's 2024-09-03 entry is not read
    ledger = [e for exchange in ("binance", "kraken")
              for e in coverage.read_entries(s3_client, bucket, exchange=exchange, symbol="BTC", timeframe="1h",
                                             start=start, end=end)]
    assert len(ledger) == 4
    summary = quality_summary(ledger, start.isoformat(), end.isoformat())
    assert summary["exchanges"]["binance"]["complete"] == 2
    kraken = summary["exchanges"]["kraken"]
    assert (kraken["complete"], kraken["quarantined"], kraken["quarantined_days"]) == (1, 1, ["2024-09-02"])
    assert kraken["missing_by_reason"] == {"quarantined": 24}
    assert summary["verdict"] == "4 exchange-days: 3 complete, 0 partial, 1 quarantined (not trained on)"


def test_lineage_counts_each_candle_once_where_ledger_windows_overlap():
    """The usual backfill-then-hourly pattern: a whole-day window, then two hourly windows inside it
    (re-fetches of candles the backfill already recorded). The day has 24 candles, not 26."""
    from datetime import UTC, datetime, timedelta

    from candleflow import coverage
    from candleflow.training.lineage import quality_summary

    tf = 3_600_000
    day = datetime(2024, 9, 1, tzinfo=UTC)
    hours = [int((day + timedelta(hours=h)).timestamp() * 1000) for h in range(24)]
    backfill = coverage.build_entries(exchange="binance", symbol="BTC", timeframe="1h", tf_ms=tf, window_start=day,
                                      window_end=day + timedelta(days=1), present_ms=hours[:20], market="BTC/USDT",
                                      status="complete")
    hourly = [e for h in (20, 21) for e in coverage.build_entries(
        exchange="binance", symbol="BTC", timeframe="1h", tf_ms=tf, window_start=day + timedelta(hours=h),
        window_end=day + timedelta(hours=h + 1), present_ms=[hours[h]], market="BTC/USDT", status="complete")]
    summary = quality_summary([*backfill, *hourly], day.isoformat(), (day + timedelta(days=1)).isoformat())
    binance = summary["exchanges"]["binance"]
    assert (binance["candles_expected"], binance["candles_present"]) == (24, 22)
    # the hourly runs fetched hours 20 and 21 the backfill lacked; 22 and 23 are still missing
    assert binance["missing_by_reason"] == {"exchange_returned_none": 2}
    assert (binance["days"], binance["complete"]) == (1, 1)


def test_training_dataset_defaults_to_features_and_a_bad_value_names_the_field(tmp_path, monkeypatch):
    import shutil

    import yaml

    from candleflow.config import CONFIG_DIR_ENV, ConfigError, config_dir

    shutil.copytree(config_dir(), tmp_path / "config")
    monkeypatch.setenv(CONFIG_DIR_ENV, str(tmp_path / "config"))
    path = tmp_path / "config" / "training.yaml"
    data = yaml.safe_load(path.read_text())
    data.pop("dataset")
    path.write_text(yaml.safe_dump(data))
    assert load_training().dataset == "features"
    path.write_text(yaml.safe_dump({**data, "dataset": "candles"}))
    assert load_training().dataset == "candles"
    path.write_text(yaml.safe_dump({**data, "dataset": "trades"}))
    with pytest.raises(ConfigError, match="dataset 'trades' is invalid; use features or candles"):
        load_training()


def test_lineage_lists_the_gx_results_of_the_batches_trained_on(s3_client, bucket):
    from datetime import UTC, datetime

    from candleflow.quality.results import batch_result_key
    from candleflow.training.lineage import validation_results

    def keep(exchange: str, lo: datetime, hi: datetime, failed: list) -> str:
        key = batch_result_key("ohlcv", "_quality", exchange, "BTC", "1h", lo, hi)
        body = {"exchange": exchange, "symbol": "BTC", "success": True, "row_count": 24, "failed": failed}
        s3_client.put_object(Bucket=bucket, Key=key, Body=json.dumps(body).encode())
        return key

    day = [datetime(2024, 9, d, tzinfo=UTC) for d in (1, 2, 3, 4)]
    inside = [keep("binance", day[0], day[1], []), keep("binance", day[1], day[2], []),
              keep("kraken", day[1], day[2], [{"expectation": "expect_column_values_to_be_between",
                                               "column": "volume", "severity": "warn"}])]
    keep("binance", day[2], day[3], [])   # after the window
    keep("okx", day[0], day[1], [])       # an exchange not trained on
    out = validation_results(s3_client, bucket, symbol="BTC", timeframe="1h", exchanges=["binance", "kraken"],
                             start=day[0].isoformat(), end=day[2].isoformat())
    assert sorted(out["result_keys"]) == sorted(inside)
    assert (out["batches"], out["passed"], out["failed"], out["rows_validated"]) == (3, 3, 0, 72)
    assert out["findings"] == {"kraken: expect_column_values_to_be_between volume": 1}
