"""MLflow tracking and model registry for the per-symbol models.

- one experiment per timeframe (`candleflow-1h`), one run per symbol and training job (named
  after the job): params, per-epoch metrics, the held-out evaluation of the model and its
  baselines, the lake partitions and row counts, the gap ledger's quality verdict, the code
  version and the (SageMaker) job name;
- one registered model per symbol and timeframe (`candleflow-btc-1h`), logged with a signature
  and an input example;
- `promote` decides whether a new version takes the alias `champion` or `challenger`
  (candleflow.training.promotion) and records the decision with its reason on the version (tags)
  and its run (`promotion/decision.json`); `champion_on(name, when)` answers "which version was
  champion at that time, and why" from those records. Aliases only, no (deprecated) stages.

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
TAG_CODE_VERSION = "candleflow.code_version"
TAG_QUALITY = "candleflow.quality"
TAG_WINDOW = "candleflow.window"            # candles per sample the version expects
TAG_FEATURES = "candleflow.features"
TAG_SEEN_UNTIL = "candleflow.seen_until"    # last label candle its fitting saw (ISO)
TAG_DECISION = "candleflow.decision"        # champion | challenger
TAG_DECIDED_AT = "candleflow.decided_at"
TAG_REASON = "candleflow.decision_reason"
DECISION_ARTIFACT = "promotion/decision.json"
MODEL_DIR_ARTIFACTS = ("evaluation.json", "evaluation_predictions.json", "baseline.json", "model_config.json")
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
    lineage: dict | None = None,
) -> RegisteredVersion:
    """Log one training job as a run and register its model (no alias: see `promote`).

    `lineage` may hold `partitions` (candleflow.training.lineage.partition_rows) and `quality`
    (lineage.quality_summary). Idempotent per job: when a version from the same `job_name`
    exists (a retried task), it is returned instead of registering a duplicate.
    """
    import mlflow
    import numpy as np
    from mlflow.entities import Metric, Param
    from mlflow.models import infer_signature

    model_dir = Path(model_dir)
    lineage = lineage or {}
    client = _client(tracking_uri)
    name = model_name(symbol, timeframe)
    existing = _existing_version(client, name, job_name)
    if existing is not None:
        log.info("job %s is already registered as %s version %s", job_name, name, existing.version)
        return RegisteredVersion(name, str(existing.version), existing.run_id, _alias_of(client, name, existing.version))

    experiment_id = _experiment_id(client, experiment_name(timeframe))
    config = json.loads((model_dir / "model_config.json").read_text())
    evaluation = _read_json(model_dir / "evaluation.json") or {}
    code_version = str(metrics.get("code_version") or "unknown")
    quality = lineage.get("quality") or {}
    tags = {TAG_BACKEND: backend, TAG_JOB_NAME: job_name, TAG_SYMBOL: symbol, TAG_TIMEFRAME: timeframe,
            TAG_CODE_VERSION: code_version, "mlflow.source.git.commit": code_version.removeprefix("git:")}
    if quality.get("verdict"):
        tags[TAG_QUALITY] = quality["verdict"]
    if backend == "sagemaker":
        tags["candleflow.sagemaker_job"] = job_name
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
        partitions = list(lineage.get("partitions") or [])
        all_params = dict(params)
        if partitions:
            all_params["lake_partitions"] = len(partitions)
            all_params["lake_rows"] = sum(int(p["rows"]) for p in partitions)
        all_params["code_version"] = code_version
        if evaluation.get("window"):
            all_params["eval_window_start"] = evaluation["window"]["start"]
            all_params["eval_window_end"] = evaluation["window"]["end"]
            all_params["fee_bps"] = evaluation.get("config", {}).get("fee_bps")
        param_list = [Param(str(k), str(v)[:6000]) for k, v in sorted(all_params.items())]
        for i in range(0, len(param_list), 100):  # log_batch limits: 100 params, 1000 metrics
            client.log_batch(run_id, params=param_list[i:i + 100])
        for i in range(0, len(series), 1000):
            client.log_batch(run_id, metrics=series[i:i + 1000])
        client.log_dict(run_id, list(lake_sources), "lake_sources.json")
        if partitions:
            client.log_dict(run_id, partitions, "lake_partitions.json")
        if quality:
            client.log_dict(run_id, quality, "quality.json")
        client.log_dict(run_id, {k: v for k, v in metrics.items() if k != "history"}, "metrics.json")
        for artifact in MODEL_DIR_ARTIFACTS:
            if (model_dir / artifact).exists():
                client.log_artifact(run_id, str(model_dir / artifact), "evaluation")

        model = _load_model(model_dir)
        example = np.asarray(json.loads((model_dir / "input_example.json").read_text()), dtype=np.float32)
        if len(example) < 2:
            # torch.export fixes a batch dimension of 1 in the exported program: give it two rows
            example = np.repeat(example, 2, axis=0)
        import torch

        with torch.no_grad():
            signature = infer_signature(example, model(torch.from_numpy(example)).numpy())
        with mlflow.start_run(run_id=run_id), warnings.catch_warnings():
            # torch.export notes that nn.LSTM re-assigns its flat weights while tracing: harmless
            warnings.filterwarnings("ignore", message=r".*_flat_weights.*were assigned during export")
            info = mlflow.pytorch.log_model(
                model,
                name="model",
                signature=signature,
                input_example=example,
                pip_requirements=_pip_requirements(),
                registered_model_name=name,
            )
        client.set_terminated(run_id, "FINISHED")
    except BaseException:
        client.set_terminated(run_id, "FAILED")
        raise

    version = str(info.registered_model_version)
    version_tags = {TAG_JOB_NAME: job_name, TAG_BACKEND: backend, TAG_CODE_VERSION: code_version,
                    TAG_WINDOW: str(config["window"]), TAG_FEATURES: ",".join(config.get("features") or [])}
    if evaluation.get("seen_until"):
        version_tags[TAG_SEEN_UNTIL] = evaluation["seen_until"]
    for key, value in version_tags.items():
        client.set_model_version_tag(name, version, key, value)
    return RegisteredVersion(name=name, version=version, run_id=run_id, alias=None)


def _read_json(path: Path):
    return json.loads(path.read_text()) if path.exists() else None


def _alias_of(client, name: str, version: str) -> str | None:
    mv = client.get_model_version(name, str(version))
    aliases = list(getattr(mv, "aliases", None) or [])
    return CHAMPION if CHAMPION in aliases else (aliases[0] if aliases else None)


def decision_of(tracking_uri: str, name: str, version: str):
    """The promotion decision recorded for a version (candleflow.training.promotion.Decision), or None."""
    from candleflow.training.promotion import Decision

    client = _client(tracking_uri)
    mv = client.get_model_version(name, str(version))
    if not (mv.tags or {}).get(TAG_DECISION):
        return None
    import mlflow

    data = mlflow.artifacts.load_dict(f"runs:/{mv.run_id}/{DECISION_ARTIFACT}")
    return Decision.from_dict(data)


def _champion_prob(client, name: str, champion, data, label_ts):
    """The champion's P(up) for each of `label_ts` (NaN where it has no window), or a reason why not.
    `data`: the job's channel rows (candles or features-table rows)."""
    import mlflow
    import numpy as np

    from candleflow.training.model import samples_for

    tags = champion.tags or {}
    try:
        window = int(tags[TAG_WINDOW])
        names = [f for f in tags[TAG_FEATURES].split(",") if f]
    except (KeyError, ValueError):
        return None, f"version {champion.version} has no {TAG_WINDOW}/{TAG_FEATURES} tags (registered before promotion)"
    try:
        samples = samples_for(data, window, names)
    except ValueError as exc:
        return None, f"its inputs cannot be rebuilt from this job's data: {exc}"
    if len(samples) == 0:
        return None, f"the job's data give no {window}-candle windows"
    model = mlflow.pyfunc.load_model(f"models:/{name}/{champion.version}")
    logits = np.concatenate([np.asarray(model.predict(samples.X[i:i + 4096])).reshape(-1)
                             for i in range(0, len(samples), 4096)])
    by_ts = dict(zip(samples.label_ts.tolist(), (1.0 / (1.0 + np.exp(-logits))).tolist(), strict=True))
    return np.array([by_ts.get(int(t), np.nan) for t in label_ts], dtype=np.float64), None


def promote(tracking_uri: str, *, name: str, version: str, model_dir: Path, candles, timeframe: str,
            policy=None, eval_cfg=None, now=None):
    """Decide `champion` or `challenger` for `version` against the current champion on the same
    window (candleflow.training.promotion), set the alias and record the decision; return it.
    `candles`: the job's channel rows (candles, or features-table rows for a features model).

    Idempotent: a version that already has a decision returns it unchanged.
    """
    import numpy as np
    import pandas as pd
    from mlflow.exceptions import MlflowException

    from candleflow.training import evaluation, promotion

    client = _client(tracking_uri)
    version = str(version)
    recorded = decision_of(tracking_uri, name, version)
    if recorded is not None:
        return recorded
    policy = policy or promotion.promotion_policy()
    model_dir = Path(model_dir)
    predictions = json.loads((model_dir / "evaluation_predictions.json").read_text())
    report = json.loads((model_dir / "evaluation.json").read_text())
    # the candidate was evaluated with the fee it was trained with; the comparison uses the same
    eval_cfg = eval_cfg or evaluation.EvaluationConfig(**report["config"])
    try:
        champion = client.get_model_version_by_alias(name, CHAMPION)
    except MlflowException:
        champion = None
    if champion is not None and str(champion.version) == version:
        champion = None
    kwargs = {}
    if champion is not None:
        prob, why_not = _champion_prob(client, name, champion, candles, predictions["label_ts"])
        seen = (champion.tags or {}).get(TAG_SEEN_UNTIL)
        kwargs = {"champion_version": str(champion.version), "champion_prob": prob, "champion_unavailable": why_not,
                  "champion_seen_until_ms": int(pd.Timestamp(seen).value // 1_000_000) if seen else None}
    decision = promotion.decide(policy, predictions, eval_cfg, timeframe, now=now, **kwargs)
    decision.version = version
    mv = client.get_model_version(name, version)
    client.log_dict(mv.run_id, decision.to_dict(), DECISION_ARTIFACT)
    client.set_registered_model_alias(name, decision.alias, version)
    for key, value in {TAG_DECISION: decision.alias, TAG_DECIDED_AT: decision.decided_at,
                       TAG_REASON: decision.reason[:4900]}.items():
        client.set_model_version_tag(name, version, key, value)
    for strategy, values in decision.strategies.items():
        metric = values.get(policy.metric)
        if metric is not None and np.isfinite(metric):
            client.log_metric(mv.run_id, f"promotion_{strategy}_{policy.metric}", float(metric))
    log.info("%s version %s → %s: %s", name, version, decision.alias, decision.reason)
    return decision


@dataclass
class ChampionRecord:
    name: str
    version: str
    since: str            # when it took the alias (ISO)
    until: str | None     # when the next champion took it (None: still champion)
    reason: str
    run_id: str


def decision_history(tracking_uri: str, name: str) -> list[dict]:
    """Every recorded decision of the model, oldest first: version, alias, decided_at, reason."""
    client = _client(tracking_uri)
    rows = []
    for mv in client.search_model_versions(f"name = '{name}'"):
        tags = mv.tags or {}
        if tags.get(TAG_DECISION):
            rows.append({"version": str(mv.version), "alias": tags[TAG_DECISION], "decided_at": tags[TAG_DECIDED_AT],
                         "reason": tags.get(TAG_REASON, ""), "run_id": mv.run_id})
    return sorted(rows, key=lambda r: (r["decided_at"], int(r["version"])))


def champion_on(tracking_uri: str, name: str, when) -> ChampionRecord | None:
    """Which version of `name` was champion at `when` (datetime or ISO), and why; None before the first."""
    from candleflow.config import parse_utc

    at = parse_utc(when, "when")
    champions = [r for r in decision_history(tracking_uri, name) if r["alias"] == CHAMPION]
    held = None
    for i, row in enumerate(champions):
        if parse_utc(row["decided_at"], "decided_at") <= at:
            until = champions[i + 1]["decided_at"] if i + 1 < len(champions) else None
            held = ChampionRecord(name=name, version=row["version"], since=row["decided_at"], until=until,
                                  reason=row["reason"], run_id=row["run_id"])
    return held


def predict(tracking_uri: str, symbol: str, timeframe: str, data, alias: str = CHAMPION):
    """P(next candle up) from `models:/<name>@<alias>` for every window of `data` — candles as read
    from the lake (every exchange) for a candle model, rows of the features table
    (features.load_training_frame) for a features model: decision_ts (the window's last candle), p_up."""
    import mlflow
    import numpy as np
    import pandas as pd

    from candleflow.training.model import windows_for

    client = _client(tracking_uri)
    name = model_name(symbol, timeframe)
    version = client.get_model_version_by_alias(name, alias)
    model = mlflow.pyfunc.load_model(f"models:/{name}/{version.version}")
    window = int(model.metadata.get_input_schema().inputs[0].shape[1])  # (-1, window, n_features)
    names = [f for f in (version.tags or {}).get(TAG_FEATURES, "").split(",") if f]
    X, decision_ts = windows_for(data, window, names)
    logits = np.asarray(model.predict(X)).reshape(-1)
    return pd.DataFrame({"decision_ts": pd.to_datetime(decision_ts, unit="ms", utc=True),
                         "p_up": 1.0 / (1.0 + np.exp(-logits))})
