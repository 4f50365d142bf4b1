"""The per-symbol training task graph of `train_models`.

    plan_training ──► symbol[…] (mapped task group) ──► announce_models
        prepare_dataset ─► choose_backend ─┬─► train_local ─────────────────────────────┐
                                           └─► sagemaker_config ─► submit_sagemaker ─► collect_sagemaker ─┤
                                                                                          register ◄──┘

Both backends run the same entry point under the SageMaker training-container contract and leave
`model.tar.gz` at `<output>/<job name>/output/`, plus a small `candleflow-result.json` beside the
request's job folder; `register` reads that, so it does not care which backend ran.
"""

from __future__ import annotations

from airflow.sdk import TriggerRule, get_current_context, task, task_group

from candleflow_airflow.assets import MODELS


def _s3_client(conn_id: str):
    from airflow.providers.amazon.aws.hooks.s3 import S3Hook

    return S3Hook(aws_conn_id=conn_id).get_conn()


def _tracking_uri(conn_id: str) -> str:
    import os

    from airflow.sdk import BaseHook
    from airflow.sdk.exceptions import AirflowNotFoundException

    try:
        conn = BaseHook.get_connection(conn_id)
    except AirflowNotFoundException:
        uri = os.environ.get("MLFLOW_TRACKING_URI")
        if uri:
            return uri
        raise
    host = conn.host or ""
    if "://" in host:
        return host.rstrip("/")
    schema = conn.schema or "http"
    return f"{schema}://{host}" + (f":{conn.port}" if conn.port else "")


@task
def plan_training() -> list[dict]:
    """One training request per symbol: from the form, or the whole universe for asset triggers.

    The training window ends where the triggering ingest run's data ended (asset event extra),
    or at the form's `end`, or now; it spans the configured lookback.
    """
    from datetime import datetime, timedelta, timezone

    from candleflow.config import ConfigError, load_training, load_universe, parse_timeframe, parse_utc
    from candleflow.training.sagemaker import job_name

    ctx = get_current_context()
    params = ctx["params"]
    universe = load_universe()
    training = load_training()
    timeframe = parse_timeframe(params.get("timeframe") or universe.timeframes[0], "timeframe")
    symbols = [s.upper() for s in (params.get("symbols") or [])] or list(universe.symbols)
    unknown = [s for s in symbols if s not in universe.symbols]
    if unknown:
        raise ConfigError(f"symbols: {', '.join(unknown)} not in the universe ({', '.join(universe.symbols)})")
    backend = params.get("backend") or training.backend
    if backend not in ("local", "sagemaker"):
        raise ConfigError(f"backend: {backend!r} is invalid; use 'local' or 'sagemaker'")

    end = None
    if params.get("end"):
        end = parse_utc(params["end"], "end")
    else:
        for events in (ctx.get("triggering_asset_events") or {}).values():
            for event in events:
                if event.extra and event.extra.get("end"):
                    event_end = parse_utc(event.extra["end"], "asset event end")
                    end = max(end, event_end) if end else event_end
    end = end or datetime.now(timezone.utc)
    lookback = int(params.get("lookback_days") or training.lookback_days)
    start = end - timedelta(days=lookback)
    hyperparameters = dict(training.hyperparameters)
    if params.get("epochs"):
        hyperparameters["epochs"] = int(params["epochs"])
    return [
        {
            "symbol": symbol,
            "timeframe": timeframe,
            "backend": backend,
            "start": start.isoformat(),
            "end": end.isoformat(),
            "job_name": job_name(ctx["run_id"], symbol, timeframe),
            "hyperparameters": hyperparameters,
        }
        for symbol in symbols
    ]


@task
def prepare_dataset(request: dict) -> dict:
    """Snapshot the symbol's candles (every exchange) into a training channel; return the job spec."""
    import dataclasses

    from airflow.sdk.exceptions import AirflowSkipException

    from candleflow import lake
    from candleflow.config import load_pipeline, load_training, parse_utc
    from candleflow.training.dataset import write_training_channel
    from candleflow.training.runner import TrainingJobSpec

    cfg = load_pipeline()
    training = load_training()
    s3 = _s3_client(cfg.lake.aws_conn_id)
    candles, sources = lake.read_with_sources(
        s3, cfg.lake.bucket, symbol=request["symbol"], timeframe=request["timeframe"],
        start=parse_utc(request["start"], "start"), end=parse_utc(request["end"], "end"),
    )
    if candles.empty:
        raise AirflowSkipException(f"no {request['symbol']} {request['timeframe']} candles in the lake between "
                                   f"{request['start']} and {request['end']}")
    prefix = f"{cfg.lake.datasets_prefix}/symbol={request['symbol']}/timeframe={request['timeframe']}/job={request['job_name']}"
    channel = write_training_channel(s3, cfg.lake.bucket, prefix, candles, sources)
    sm = training.sagemaker
    spec = TrainingJobSpec(
        job_name=request["job_name"],
        symbol=request["symbol"],
        timeframe=request["timeframe"],
        channels={"train": channel},
        output_s3_uri=f"s3://{cfg.lake.bucket}/{sm.output_prefix}",
        checkpoint_s3_uri=f"s3://{cfg.lake.bucket}/{sm.checkpoint_prefix}/{request['job_name']}",
        hyperparameters=request["hyperparameters"],
        instance_type=sm.instance_type,
        use_spot=sm.use_spot,
        max_run_seconds=sm.max_run_seconds,
        max_wait_seconds=sm.max_wait_seconds,
        image_uri=sm.image_uri,
        role_arn=sm.role_arn,
    )
    return {
        "spec": dataclasses.asdict(spec),
        "backend": request["backend"],
        "sources": sources,
        "rows": int(len(candles)),
        "exchanges": sorted(candles["exchange"].unique().tolist()),
        "window": [request["start"], request["end"]],
    }


@task.branch
def choose_backend(prepared: dict) -> str:
    group = get_current_context()["ti"].task_id.rsplit(".", 1)[0]
    return f"{group}.train_local" if prepared["backend"] == "local" else f"{group}.sagemaker_config"


def _result_key(spec: dict) -> tuple[str, str]:
    """Where a finished job's outcome is recorded (bucket, key): beside its output."""
    bucket, _, prefix = spec["output_s3_uri"].removeprefix("s3://").partition("/")
    return bucket, f"{prefix.rstrip('/')}/{spec['job_name']}/candleflow-result.json"


def _write_result(s3, spec: dict, result: dict) -> None:
    import json

    bucket, key = _result_key(spec)
    s3.put_object(Bucket=bucket, Key=key, Body=json.dumps(result, sort_keys=True).encode())


@task
def train_local(prepared: dict) -> dict:
    import logging
    import tempfile

    from candleflow.config import load_pipeline
    from candleflow.training.runner import TrainingJobSpec, run_training_job
    from candleflow.training.sagemaker import cost_line

    cfg = load_pipeline()
    s3 = _s3_client(cfg.lake.aws_conn_id)
    spec = TrainingJobSpec(**prepared["spec"])
    with tempfile.TemporaryDirectory(prefix=f"{spec.job_name}-") as workdir:
        result = run_training_job(spec, s3, workdir)
    logging.getLogger("candleflow.training").info("local job %s: %s", spec.job_name,
                                                   cost_line(spec, result.billable_seconds, local=True))
    outcome = {"job_name": result.job_name, "model_s3_uri": result.model_s3_uri,
               "billable_seconds": result.billable_seconds, "backend": "local"}
    _write_result(s3, prepared["spec"], outcome)
    return outcome


@task
def sagemaker_config(prepared: dict) -> dict:
    from candleflow.config import load_training
    from candleflow.training.runner import TrainingJobSpec
    from candleflow.training.sagemaker import training_job_config

    return training_job_config(TrainingJobSpec(**prepared["spec"]), load_training().sagemaker)


@task
def collect_sagemaker(prepared: dict, submitted: dict) -> dict:
    """Record the SageMaker job's outcome; offline (moto), first run the submitted spec locally."""
    import logging
    import tempfile

    from candleflow.config import load_pipeline, load_training
    from candleflow.training.runner import run_training_job
    from candleflow.training.sagemaker import cost_line, spec_from_description

    log = logging.getLogger("candleflow.training")
    cfg = load_pipeline()
    s3 = _s3_client(cfg.lake.aws_conn_id)
    description = submitted["Training"]
    spec = spec_from_description(description)
    if load_training().sagemaker.run_locally_after_submit:
        # moto accepts the job and marks it Completed without running anything: execute exactly
        # the submitted spec so the artifact exists where SageMaker would have put it.
        with tempfile.TemporaryDirectory(prefix=f"{spec.job_name}-") as workdir:
            result = run_training_job(spec, s3, workdir)
        model_uri, billable = result.model_s3_uri, result.billable_seconds
    else:
        model_uri = description["ModelArtifacts"]["S3ModelArtifacts"]
        billable = int(description.get("BillableTimeInSeconds") or 0)
    log.info("SageMaker job %s: %s", spec.job_name, cost_line(spec, billable))
    outcome = {"job_name": spec.job_name, "model_s3_uri": model_uri, "billable_seconds": billable,
               "backend": "sagemaker"}
    _write_result(s3, prepared["spec"], outcome)
    return outcome


@task(trigger_rule=TriggerRule.NONE_FAILED_MIN_ONE_SUCCESS)
def register(prepared: dict) -> dict:
    import json
    import tempfile

    from candleflow import registry
    from candleflow.config import load_pipeline
    from candleflow.training.runner import download_model

    cfg = load_pipeline()
    s3 = _s3_client(cfg.lake.aws_conn_id)
    spec = prepared["spec"]
    bucket, key = _result_key(spec)
    outcome = json.loads(s3.get_object(Bucket=bucket, Key=key)["Body"].read())
    with tempfile.TemporaryDirectory(prefix="model-") as tmp:
        model_dir = download_model(s3, outcome["model_s3_uri"], tmp)
        metrics = json.loads((model_dir / "metrics.json").read_text())
        version = registry.log_and_register(
            _tracking_uri(cfg.mlflow_conn_id),
            symbol=spec["symbol"], timeframe=spec["timeframe"], model_dir=model_dir, metrics=metrics,
            params={**spec["hyperparameters"], "rows": prepared["rows"], "exchanges": ",".join(prepared["exchanges"]),
                    "window_start": prepared["window"][0], "window_end": prepared["window"][1],
                    "instance_type": spec["instance_type"], "billable_seconds": outcome["billable_seconds"]},
            lake_sources=prepared["sources"], job_name=outcome["job_name"], backend=outcome["backend"],
        )
    return {"symbol": spec["symbol"], "name": version.name, "version": version.version,
            "run_id": version.run_id, "alias": version.alias}


@task_group(group_id="symbol")
def train_symbol(request: dict):
    from candleflow_airflow.sagemaker import ReattachingSageMakerTrainingOperator

    prepared = prepare_dataset(request)
    branch = choose_backend(prepared)
    local = train_local(prepared)
    config = sagemaker_config(prepared)
    submitted = ReattachingSageMakerTrainingOperator(
        task_id="submit_sagemaker", config=config, aws_conn_id="aws_default",
        wait_for_completion=True, print_log=False, check_interval=5,
    )
    collected = collect_sagemaker(prepared, submitted.output)
    branch >> [local, config]
    registered = register(prepared)
    [local, collected] >> registered
    return registered


@task(trigger_rule=TriggerRule.ALL_DONE, outlets=[MODELS])
def announce_models(registered, outlet_events=None) -> list[dict]:
    from airflow.sdk.exceptions import AirflowSkipException

    done = [r for r in (registered or []) if r]
    if not done:
        raise AirflowSkipException("no model was registered in this run")
    outlet_events[MODELS].extra = {"models": [f"{r['name']}/{r['version']}" for r in done]}
    return done


# The watcher only mirrors failures that already alerted: no alert, no retry of its own.
@task(trigger_rule=TriggerRule.ONE_FAILED, retries=0, on_failure_callback=None)
def fail_if_any_symbol_failed() -> None:
    from airflow.sdk.exceptions import AirflowFailException

    raise AirflowFailException("at least one symbol failed to train or register (see the failed tasks)")


def train_models_graph() -> None:
    registered = train_symbol.expand(request=plan_training())
    done = announce_models(registered)
    watcher = fail_if_any_symbol_failed()
    registered >> watcher
    done >> watcher

