"""The training task graph of `train_models`: two flat mapped lanes, one per backend.

    plan_training ─► prepare_dataset[sym] ─┬─► local_jobs ──────► train_local[sym] ─────────────────────► register_local[sym] ──┐
                                           └─► sagemaker_jobs ──► submit_sagemaker[sym] ─► collect_sagemaker[sym] ─► register_sagemaker[sym] ─┤
                                                                                                      announce_models ◄┘ (+ watcher)

The backend is chosen per run (form or include/config/training.yaml); the other lane maps over
an empty list and shows as skipped. (Branching inside a mapped task group does not skip reliably
in Airflow 3.3, hence lanes rather than a branch.) Both backends run the same entry point under
the SageMaker training-container contract and leave `model.tar.gz` at
`<output>/<job name>/output/`; the outcome each lane hands to `register` names it.
"""

from __future__ import annotations

from datetime import UTC

from airflow.sdk import TriggerRule, get_current_context, task

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
    from datetime import datetime, timedelta

    from candleflow.config import ConfigError, load_training, load_universe, parse_timeframe, parse_utc
    from candleflow.training.evaluation import evaluation_config
    from candleflow.training.promotion import promotion_policy
    from candleflow.training.sagemaker import job_name

    ctx = get_current_context()
    params = ctx["params"]
    universe = load_universe()
    training = load_training()
    timeframe = parse_timeframe(params.get("timeframe") or universe.timeframes[0], "timeframe")
    event_symbols = sorted({sym for events in (ctx.get("triggering_asset_events") or {}).values()
                            for event in events for sym in ((event.extra or {}).get("symbols") or [])})
    # the form's symbols, else those the triggering ingest run landed, else the whole universe
    symbols = [s.upper() for s in (params.get("symbols") or [])] or event_symbols or list(universe.symbols)
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
    end = end or datetime.now(UTC)
    lookback = int(params.get("lookback_days") or training.lookback_days)
    start = end - timedelta(days=lookback)
    promotion_policy()  # a bad promotion section fails here, before any training is paid for
    ev = evaluation_config()
    # the evaluation runs inside the job (SageMaker passes only hyperparameters): its settings travel along
    hyperparameters = {**training.hyperparameters, "holdout_fraction": ev.holdout_fraction, "fee_bps": ev.fee_bps,
                       "threshold": ev.threshold, "min_eval_samples": ev.min_samples}
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
    """Snapshot the symbol's training rows (every exchange) into a training channel; return the job spec.

    The rows are the lake's `features` table (`dataset: features` in training.yaml, the default:
    written by the features DAG, which runs before this one) or its candles (`dataset: candles`).
    Beside the channel, `lineage.json` records the lake objects read (and, for features, the
    candle objects they were computed from), the rows per partition and the gap ledger's verdict
    on those days; `register` logs it with the run.
    """
    import dataclasses
    import json

    from airflow.sdk.exceptions import AirflowSkipException

    from candleflow import coverage, lake
    from candleflow.config import load_pipeline, load_training, parse_utc
    from candleflow.quality.settings import load_quality
    from candleflow.training.dataset import write_features_channel, write_training_channel
    from candleflow.training.lineage import partition_rows, quality_summary, validation_results
    from candleflow.training.runner import TrainingJobSpec

    cfg = load_pipeline()
    training = load_training()
    s3 = _s3_client(cfg.lake.aws_conn_id)
    source = training.dataset
    start, end = parse_utc(request["start"], "start"), parse_utc(request["end"], "end")
    prefix = f"{cfg.lake.datasets_prefix}/symbol={request['symbol']}/timeframe={request['timeframe']}/job={request['job_name']}"
    inputs: list[str] = []
    if source == "features":
        from candleflow import features

        rows, sources, inputs = features.load_training_inputs(s3, cfg.lake.bucket, request["symbol"],
                                                              request["timeframe"], start, end)
        if rows.empty:
            raise AirflowSkipException(f"no {request['symbol']} {request['timeframe']} rows in the lake's features "
                                       f"table between {request['start']} and {request['end']}: the features DAG "
                                       "builds them (train_models runs on its asset)")
        channel = write_features_channel(s3, cfg.lake.bucket, prefix, rows, sources)
        levels = ("symbol", "timeframe", "date")
    else:
        rows, sources = lake.read_with_sources(s3, cfg.lake.bucket, symbol=request["symbol"],
                                               timeframe=request["timeframe"], start=start, end=end)
        if rows.empty:
            raise AirflowSkipException(f"no {request['symbol']} {request['timeframe']} candles in the lake between "
                                       f"{request['start']} and {request['end']}")
        channel = write_training_channel(s3, cfg.lake.bucket, prefix, rows, sources)
        levels = ("exchange", "symbol", "timeframe", "month")
    exchanges = sorted(rows["exchange"].unique().tolist())
    ledger = [entry for exchange in exchanges
              for entry in coverage.read_entries(s3, cfg.lake.bucket, exchange=exchange, symbol=request["symbol"],
                                                 timeframe=request["timeframe"], start=start, end=end)]
    quality = quality_summary(ledger, request["start"], request["end"])
    quality["validations"] = validation_results(s3, cfg.lake.bucket, symbol=request["symbol"],
                                                timeframe=request["timeframe"], exchanges=exchanges,
                                                start=request["start"], end=request["end"],
                                                ohlcv_prefix=cfg.lake.ohlcv_prefix,
                                                results_dir=load_quality().results_dir)
    checked = quality["validations"]
    quality["verdict"] += f"; {checked['batches']} GX batch results, {checked['passed']} passed"
    lineage = {"dataset": source, "sources": sources, "partitions": partition_rows(rows, sources, levels),
               "inputs": inputs, "quality": quality}
    lineage_key = f"{prefix}/lineage.json"
    s3.put_object(Bucket=cfg.lake.bucket, Key=lineage_key, Body=json.dumps(lineage, indent=1).encode(),
                  ContentType="application/json")
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
        "lineage_key": lineage_key,  # XCom carries keys and counts; the lists stay in S3
        "partitions": len(lineage["partitions"]),
        "rows": int(len(rows)),
        "dataset": source,
        "exchanges": exchanges,
        "window": [request["start"], request["end"]],
    }


@task(trigger_rule=TriggerRule.ALL_DONE)
def jobs_for_backend(prepared, backend: str) -> list[dict]:
    """The prepared jobs of this run's backend (all of them, or none); symbols whose dataset
    failed are left out here and fail the run through the watcher."""
    return [p for p in (prepared or []) if p and p["backend"] == backend]


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
    return {**prepared, "job_name": result.job_name, "model_s3_uri": result.model_s3_uri,
            "billable_seconds": result.billable_seconds, "backend": "local"}


@task
def sagemaker_config(prepared: dict) -> dict:
    from candleflow.config import load_training
    from candleflow.training.runner import TrainingJobSpec
    from candleflow.training.sagemaker import training_job_config

    return training_job_config(TrainingJobSpec(**prepared["spec"]), load_training().sagemaker)


@task
def collect_sagemaker(submitted: dict, prepared_jobs: list[dict]) -> dict:
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
    prepared = next(p for p in prepared_jobs if p["spec"]["symbol"] == spec.symbol)
    run_locally = load_training().sagemaker.run_locally_after_submit
    if run_locally:
        # moto accepts the job and marks it Completed without running anything: execute exactly
        # the submitted spec so the artifact exists where SageMaker would have put it.
        with tempfile.TemporaryDirectory(prefix=f"{spec.job_name}-") as workdir:
            result = run_training_job(spec, s3, workdir)
        model_uri, billable = result.model_s3_uri, result.billable_seconds
    else:
        model_uri = description["ModelArtifacts"]["S3ModelArtifacts"]
        billable = int(description.get("BillableTimeInSeconds") or 0)
    trained = None if run_locally else description.get("TrainingTimeInSeconds")
    log.info("SageMaker job %s: %s", spec.job_name, cost_line(spec, billable, training_seconds=trained))
    return {**prepared, "job_name": spec.job_name, "model_s3_uri": model_uri, "billable_seconds": billable,
            "backend": "sagemaker"}


@task
def register(outcome: dict) -> dict:
    """Log the job's run and register its model, then promote it: `champion` only when it beats the
    current champion on the same window by the configured margin and beats the baselines, else
    `challenger`; the decision and its reason are recorded with the version."""
    import json
    import logging
    import tempfile
    from pathlib import Path

    from candleflow import registry
    from candleflow.config import load_pipeline
    from candleflow.training.dataset import load_dataset
    from candleflow.training.promotion import promotion_policy
    from candleflow.training.runner import download_model, download_prefix

    cfg = load_pipeline()
    s3 = _s3_client(cfg.lake.aws_conn_id)
    spec = outcome["spec"]
    tracking_uri = _tracking_uri(cfg.mlflow_conn_id)
    lineage = json.loads(s3.get_object(Bucket=cfg.lake.bucket, Key=outcome["lineage_key"])["Body"].read())
    with tempfile.TemporaryDirectory(prefix="model-") as tmp:
        model_dir = download_model(s3, outcome["model_s3_uri"], Path(tmp) / "artifact")
        metrics = json.loads((model_dir / "metrics.json").read_text())
        version = registry.log_and_register(
            tracking_uri,
            symbol=spec["symbol"], timeframe=spec["timeframe"], model_dir=model_dir, metrics=metrics,
            params={**spec["hyperparameters"], "rows": outcome["rows"], "dataset": outcome.get("dataset", "candles"),
                    "exchanges": ",".join(outcome["exchanges"]),
                    "window_start": outcome["window"][0], "window_end": outcome["window"][1],
                    "instance_type": spec["instance_type"], "billable_seconds": outcome["billable_seconds"]},
            lake_sources=lineage["sources"], job_name=outcome["job_name"], backend=outcome["backend"],
            lineage=lineage,
        )
        # the champion is scored on the same rows the candidate was evaluated on: the job's channel
        download_prefix(s3, spec["channels"]["train"], Path(tmp) / "channel")
        decision = registry.promote(tracking_uri, name=version.name, version=version.version, model_dir=model_dir,
                                    candles=load_dataset(Path(tmp) / "channel")[1], timeframe=spec["timeframe"],
                                    policy=promotion_policy())
    logging.getLogger("candleflow.training").info("%s v%s: %s — %s", version.name, version.version, decision.alias,
                                                  decision.reason)
    return {"symbol": spec["symbol"], "name": version.name, "version": version.version,
            "run_id": version.run_id, "alias": decision.alias, "reason": decision.reason}


@task(trigger_rule=TriggerRule.ALL_DONE, outlets=[MODELS])
def announce_models(registered_local, registered_sagemaker, outlet_events=None) -> list[dict]:
    from airflow.sdk.exceptions import AirflowSkipException

    done = [r for r in [*(registered_local or []), *(registered_sagemaker or [])] if r]
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
    from candleflow_airflow.sagemaker import ReattachingSageMakerTrainingOperator

    prepared = prepare_dataset.expand(request=plan_training())
    local_jobs = jobs_for_backend.override(task_id="local_jobs")(prepared, backend="local")
    sagemaker_jobs = jobs_for_backend.override(task_id="sagemaker_jobs")(prepared, backend="sagemaker")

    registered_local = register.override(task_id="register_local").expand(
        outcome=train_local.expand(prepared=local_jobs))

    submitted = ReattachingSageMakerTrainingOperator.partial(
        task_id="submit_sagemaker", aws_conn_id="aws_default", wait_for_completion=True, print_log=False,
        check_interval=30, deferrable=True,  # the worker slot is freed while SageMaker trains
    ).expand(config=sagemaker_config.expand(prepared=sagemaker_jobs))
    collected = collect_sagemaker.partial(prepared_jobs=sagemaker_jobs).expand(submitted=submitted.output)
    registered_sagemaker = register.override(task_id="register_sagemaker").expand(outcome=collected)

    done = announce_models(registered_local, registered_sagemaker)
    watcher = fail_if_any_symbol_failed()
    [prepared, registered_local, registered_sagemaker, done] >> watcher
