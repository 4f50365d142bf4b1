"""SageMaker specifics: job names, the CreateTrainingJob request and back, and cost lines.

The request built here is what the amazon provider's `SageMakerTrainingOperator` submits; its
hyperparameters carry `candleflow_symbol` / `candleflow_timeframe`, so `spec_from_description`
can rebuild the job spec from a DescribeTrainingJob response alone (e.g. after a reattach, or
when the operator renamed the job to `<name>-r<N>`).
"""

from __future__ import annotations

import hashlib
import json
import re

from candleflow.training.runner import TrainingJobSpec

JOB_NAME_RE = re.compile(r"^[a-zA-Z0-9](-*[a-zA-Z0-9]){0,62}$")
# SageMaker allows 63 characters; 5 stay free for the `-r<N>` retry suffix
# (candleflow_airflow.sagemaker.ReattachingSageMakerTrainingOperator cuts to 58).
JOB_NAME_MAX = 58
CHECKPOINT_LOCAL_PATH = "/opt/ml/checkpoints"
HP_SYMBOL = "candleflow_symbol"
HP_TIMEFRAME = "candleflow_timeframe"

# On-demand SageMaker *training* list prices, USD per instance-hour, us-east-1, as published on
# the SageMaker pricing page in 2024. Approximate and region-dependent: used only to print an
# order-of-magnitude cost per job; check the pricing page for your region before relying on it.
ON_DEMAND_USD_PER_HOUR: dict[str, float] = {
    "ml.m5.large": 0.115,
    "ml.m5.xlarge": 0.23,
    "ml.c5.xlarge": 0.204,
    "ml.c5.2xlarge": 0.408,
    "ml.g4dn.xlarge": 0.736,
    "ml.g5.xlarge": 1.408,
    "ml.p3.2xlarge": 3.825,
}
# Managed spot training is advertised as saving "up to 90%" versus on-demand; typical savings
# are around 70%. The real discount depends on the spot market: treat this as an estimate.
TYPICAL_SPOT_SAVING = 0.70


def _slug(value: str) -> str:
    return re.sub(r"-+", "-", re.sub(r"[^a-z0-9]", "-", value.lower())).strip("-")


def job_name(run_id: str, symbol: str, timeframe: str) -> str:
    """A deterministic, SageMaker-valid name per (run, symbol, timeframe), at most 58 characters.

    `cf-<symbol>-<timeframe>-<tail of the sanitised run id>-<8 hex of sha1(run id)>`: the tail
    makes it readable, the hash keeps run ids that sanitise alike apart.
    """
    digest = hashlib.sha1(run_id.encode()).hexdigest()[:8]
    head = "-".join(p for p in ("cf", _slug(symbol)[:16], _slug(timeframe)[:6]) if p)
    room = JOB_NAME_MAX - len(head) - len(digest) - 2
    tail = _slug(run_id)[-room:].strip("-") if room > 0 else ""
    name = "-".join(p for p in (head, tail, digest) if p)
    assert JOB_NAME_RE.match(name) and len(name) <= JOB_NAME_MAX, name
    return name


def _hp_to_str(value) -> str:
    return value if isinstance(value, str) else json.dumps(value)


def _hp_from_str(value: str):
    try:
        return json.loads(value)
    except (TypeError, ValueError):
        return value


def training_job_config(spec: TrainingJobSpec, sm_cfg) -> dict:
    """The CreateTrainingJob request for `spec` (`sm_cfg`: candleflow.config.SageMakerConfig)."""
    hyperparameters = {str(k): _hp_to_str(v) for k, v in spec.hyperparameters.items()}
    hyperparameters[HP_SYMBOL] = spec.symbol
    hyperparameters[HP_TIMEFRAME] = spec.timeframe
    stopping = {"MaxRuntimeInSeconds": int(spec.max_run_seconds)}
    if spec.use_spot:
        stopping["MaxWaitTimeInSeconds"] = int(max(spec.max_wait_seconds, spec.max_run_seconds))
    config = {
        "TrainingJobName": spec.job_name,
        "AlgorithmSpecification": {"TrainingImage": spec.image_uri, "TrainingInputMode": "File"},
        "RoleArn": spec.role_arn,
        "InputDataConfig": [
            {
                "ChannelName": name,
                "DataSource": {"S3DataSource": {"S3DataType": "S3Prefix", "S3Uri": uri,
                                                "S3DataDistributionType": "FullyReplicated"}},
                "InputMode": "File",
            }
            for name, uri in sorted(spec.channels.items())
        ],
        "OutputDataConfig": {"S3OutputPath": spec.output_s3_uri},
        "ResourceConfig": {"InstanceType": spec.instance_type, "InstanceCount": int(sm_cfg.instance_count),
                           "VolumeSizeInGB": int(sm_cfg.volume_size_gb)},
        "StoppingCondition": stopping,
        "EnableManagedSpotTraining": bool(spec.use_spot),
        "HyperParameters": hyperparameters,
        "Tags": [{"Key": "candleflow:symbol", "Value": spec.symbol},
                 {"Key": "candleflow:timeframe", "Value": spec.timeframe}],
    }
    if spec.checkpoint_s3_uri:
        config["CheckpointConfig"] = {"S3Uri": spec.checkpoint_s3_uri, "LocalPath": CHECKPOINT_LOCAL_PATH}
    return config


def spec_from_description(desc: dict) -> TrainingJobSpec:
    """Rebuild the job spec from a DescribeTrainingJob response (or a CreateTrainingJob request).

    A job without managed spot has no MaxWaitTimeInSeconds: `max_wait_seconds` is then
    `max_run_seconds`.
    """
    hps = dict(desc.get("HyperParameters") or {})
    try:
        symbol, timeframe = hps.pop(HP_SYMBOL), hps.pop(HP_TIMEFRAME)
    except KeyError as exc:
        raise ValueError(f"training job {desc.get('TrainingJobName')} has no {exc.args[0]} hyperparameter: "
                         "it was not submitted by candleflow") from None
    hyperparameters = {k: _hp_from_str(v) for k, v in hps.items() if not k.startswith("candleflow_")}
    stopping = desc.get("StoppingCondition") or {}
    max_run = int(stopping.get("MaxRuntimeInSeconds", 0))
    return TrainingJobSpec(
        job_name=desc["TrainingJobName"],
        symbol=symbol,
        timeframe=timeframe,
        channels={c["ChannelName"]: c["DataSource"]["S3DataSource"]["S3Uri"] for c in desc.get("InputDataConfig", [])},
        output_s3_uri=desc["OutputDataConfig"]["S3OutputPath"],
        checkpoint_s3_uri=(desc.get("CheckpointConfig") or {}).get("S3Uri", ""),
        hyperparameters=hyperparameters,
        instance_type=desc["ResourceConfig"]["InstanceType"],
        use_spot=bool(desc.get("EnableManagedSpotTraining", False)),
        max_run_seconds=max_run,
        max_wait_seconds=int(stopping.get("MaxWaitTimeInSeconds", max_run)),
        image_uri=desc["AlgorithmSpecification"]["TrainingImage"],
        role_arn=desc["RoleArn"],
    )


REATTACH_STATES = ("InProgress", "Stopping")


def attempt_name(base: str, attempt: int) -> str:
    """The job name of an Airflow try: the base name first, `<base>-r<try>` for fresh jobs after it."""
    return base if attempt <= 1 else f"{base[:JOB_NAME_MAX]}-r{attempt}"


def plan_submission(base: str, try_number: int, describe) -> tuple[str, str, dict | None]:
    """What an Airflow try of a training task does, given `describe(name)` (a DescribeTrainingJob
    response, or None when no such job exists): ("reattach" | "reuse" | "start", job name, description).

    Every job an earlier try may have started (`base`, `base-r2`, …) is looked at, newest first:
    one still running is reattached to, a completed one is reused; only when none runs or
    completed does the try start a job, under a name no earlier job has (never a clash, never a
    second paid job for the same model).
    """
    try_number = max(1, int(try_number or 1))
    earlier = [attempt_name(base, k) for k in range(try_number, 0, -1)]
    seen: dict[str, dict] = {}
    for name in earlier:
        desc = describe(name)
        if desc is None:
            continue
        seen[name] = desc
        status = desc.get("TrainingJobStatus")
        if status in REATTACH_STATES:
            return "reattach", name, desc
        if status == "Completed":
            return "reuse", name, desc
    if not seen:
        return "start", base, None  # nothing was ever submitted (or the first try died before it)
    k = try_number
    name = attempt_name(base, max(k, 2))
    while name in seen or describe(name) is not None:
        k += 1
        name = attempt_name(base, max(k, 2))
    return "start", name, None


def cost_line(spec: TrainingJobSpec, billable_seconds: int, local: bool = False,
              training_seconds: int | None = None) -> str:
    """One human line on what the job cost (an estimate from ON_DEMAND_USD_PER_HOUR).

    With `training_seconds` (DescribeTrainingJob's TrainingTimeInSeconds) a spot job's saving is
    the measured one, 1 - billable / training; without it, the typical saving is assumed.
    """
    if local:
        return (f"ran locally in {billable_seconds} s (not on {spec.instance_type}): "
                "no SageMaker cost")
    price = ON_DEMAND_USD_PER_HOUR.get(spec.instance_type)
    line = f"{spec.instance_type}, {billable_seconds} billable s"
    if price is None:
        return line + f"; no on-demand price for {spec.instance_type} in ON_DEMAND_USD_PER_HOUR, cost unknown"
    on_demand = billable_seconds / 3600 * price
    line += f", on-demand ≈ ${on_demand:.4f} (at ${price}/h, us-east-1 list price)"
    if spec.use_spot and training_seconds:
        full = training_seconds / 3600 * price
        saved = 1 - billable_seconds / training_seconds
        line = (f"{spec.instance_type}, {billable_seconds} billable s of {training_seconds} s trained, "
                f"≈ ${on_demand:.4f} (at ${price}/h, us-east-1 list price); managed spot saved {saved:.0%} "
                f"(≈ ${full - on_demand:.4f} against on-demand)")
    elif spec.use_spot:
        spot = on_demand * (1 - TYPICAL_SPOT_SAVING)
        line += (f"; managed spot: estimated ≈ ${spot:.4f} assuming the typical ~{TYPICAL_SPOT_SAVING:.0%} "
                 "saving (estimate; the real spot discount varies)")
    else:
        line += "; on-demand (managed spot off)"
    return line
