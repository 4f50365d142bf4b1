"""The training program: `python -m candleflow.training.entrypoint`.

It follows the SageMaker training-container contract, so the same code runs in a SageMaker job
and in the local runner (`candleflow.training.runner`):
  - input:  the `train` channel directory (`SM_CHANNEL_TRAIN`, default /opt/ml/input/data/train);
  - hyperparameters: `SM_HPS` (JSON; SageMaker passes every value as a string, coerced here),
    else /opt/ml/input/config/hyperparameters.json;
  - output: `SM_MODEL_DIR` (default /opt/ml/model) gets model.pt (state_dict), model_config.json,
    metrics.json and input_example.json; SageMaker tars it to <output>/<job>/output/model.tar.gz;
  - checkpoints: `CANDLEFLOW_CHECKPOINT_DIR` (default /opt/ml/checkpoints, synced to S3 by
    SageMaker's CheckpointConfig). One is written every epoch and the latest is resumed from,
    so an interrupted (spot) job continues where it stopped.
"""

from __future__ import annotations

import json
import os
import random
import re
import sys
from pathlib import Path

import numpy as np
import torch
from torch import nn

from candleflow.training.dataset import load_dataset
from candleflow.training.model import FEATURES, PriceLSTM, samples_for, standardisation

DEFAULTS: dict[str, int | float | str] = {
    "epochs": 5,
    "window": 24,
    "hidden_size": 32,
    "learning_rate": 0.003,
    "batch_size": 64,
    "seed": 42,
    "validation_fraction": 0.2,
    # the evaluation window and its trading costs (include/config/training.yaml `evaluation:`)
    "holdout_fraction": 0.2,
    "fee_bps": 10.0,
    "threshold": 0.5,
    "min_eval_samples": 24,
    "device": "auto",          # auto | cpu | cuda (auto: cuda when torch sees a GPU)
}
CHECKPOINT_RE = re.compile(r"^checkpoint-epoch-(\d+)\.pt$")
KEEP_CHECKPOINTS = 2


def coerce_hyperparameters(raw: dict) -> dict:
    """Known hyperparameters with their types (values may be strings, as SageMaker passes them)."""
    hps = dict(DEFAULTS)
    for key, default in DEFAULTS.items():
        if key not in raw or raw[key] is None or raw[key] == "":
            continue
        value = raw[key]
        if isinstance(default, str):
            hps[key] = str(value)
            continue
        try:
            hps[key] = int(float(value)) if isinstance(default, int) else float(value)
        except (TypeError, ValueError) as exc:
            raise ValueError(f"hyperparameter {key}={value!r} is not a number") from exc
    if hps["epochs"] < 1 or hps["window"] < 1 or hps["hidden_size"] < 1 or hps["batch_size"] < 1:
        raise ValueError(f"epochs, window, hidden_size and batch_size must be >= 1: {hps}")
    if not 0 < hps["validation_fraction"] < 1:
        raise ValueError(f"validation_fraction must be in (0, 1), got {hps['validation_fraction']}")
    if not 0 < hps["holdout_fraction"] < 1:
        raise ValueError(f"holdout_fraction must be in (0, 1), got {hps['holdout_fraction']}")
    if hps["device"] not in ("auto", "cpu", "cuda") and not str(hps["device"]).startswith("cuda:"):
        raise ValueError(f"device {hps['device']!r} is invalid; use auto, cpu or cuda")
    return hps


def resolve_device(name: str) -> torch.device:
    """`auto` picks CUDA when torch sees a GPU; asking for cuda without one is an error, not a fallback."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise ValueError(f"device {name!r} requested but torch sees no CUDA device (torch {torch.__version__}); "
                         "use device=cpu or auto")
    return torch.device(name)


def read_hyperparameters() -> dict:
    if os.environ.get("SM_HPS"):
        return json.loads(os.environ["SM_HPS"])
    path = Path("/opt/ml/input/config/hyperparameters.json")
    return json.loads(path.read_text()) if path.exists() else {}


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def latest_checkpoint(directory: Path) -> Path | None:
    found = [(int(m.group(1)), p) for p in directory.glob("checkpoint-epoch-*.pt")
             if (m := CHECKPOINT_RE.match(p.name))]
    return max(found)[1] if found else None


def save_checkpoint(directory: Path, state: dict) -> Path:
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / f"checkpoint-epoch-{state['epoch']:04d}.pt"
    tmp = path.with_suffix(".tmp")
    torch.save(state, tmp)
    tmp.replace(path)  # atomic: a job killed mid-write leaves the previous checkpoint intact
    olds = sorted((p for p in directory.glob("checkpoint-epoch-*.pt") if CHECKPOINT_RE.match(p.name)),
                  key=lambda p: int(CHECKPOINT_RE.match(p.name).group(1)))
    for old in olds[:-KEEP_CHECKPOINTS]:
        old.unlink(missing_ok=True)
    return path


def _predict_logits(model: nn.Module, X: torch.Tensor, device: torch.device) -> torch.Tensor:
    model.eval()
    with torch.no_grad():
        return torch.cat([model(X[i:i + 4096].to(device)).cpu() for i in range(0, len(X), 4096)])


def _validate(model: nn.Module, X: torch.Tensor, y: torch.Tensor, loss_fn, device) -> tuple[float, float]:
    logits = _predict_logits(model, X, device)
    return float(loss_fn(logits, y)), float(((logits > 0).float() == y).float().mean())


def train(channel_dir: Path, model_dir: Path, checkpoint_dir: Path, raw_hps: dict, log=print) -> dict:
    from candleflow.training import baseline, evaluation
    from candleflow.training.lineage import code_version

    hps = coerce_hyperparameters(raw_hps)
    device = resolve_device(hps["device"])
    seed_everything(hps["seed"])
    kind, rows = load_dataset(channel_dir)
    timeframes = sorted(rows["timeframe"].unique())
    if len(timeframes) != 1:
        raise ValueError(f"the training channel mixes timeframes {timeframes}; one job trains one timeframe")
    if kind == "features":
        from candleflow.features import FEATURE_COLUMNS

        feature_names = list(FEATURE_COLUMNS)
    else:
        feature_names = list(FEATURES)
    samples = samples_for(rows, hps["window"], feature_names)
    try:
        parts = evaluation.split(len(samples), hps["holdout_fraction"], hps["validation_fraction"],
                                 min_eval=int(hps["min_eval_samples"]))
    except ValueError as exc:
        raise ValueError(f"{exc} ({len(rows)} {kind} rows, window {hps['window']}): not enough to train, "
                         "validate and evaluate") from None
    # chronological: training, then validation, then the held-out evaluation window; never shuffled across
    train_s, val_s, eval_s = (samples.take(parts.train), samples.take(parts.validation),
                              samples.take(parts.evaluation))
    X_train, y_train = torch.from_numpy(train_s.X), torch.from_numpy(train_s.y)
    X_val, y_val = torch.from_numpy(val_s.X), torch.from_numpy(val_s.y)
    n_features = samples.X.shape[2]
    config = {"n_features": int(n_features), "hidden_size": hps["hidden_size"], "window": hps["window"]}

    model = PriceLSTM(n_features, hps["hidden_size"])
    model.set_standardisation(*standardisation(train_s.X))  # training samples only
    model = model.to(device)
    optimizer = torch.optim.Adam(model.parameters(), lr=hps["learning_rate"])
    loss_fn = nn.BCEWithLogitsLoss()
    history: list[dict] = []
    start_epoch = 1
    resumed_from = None

    ckpt_path = latest_checkpoint(checkpoint_dir)
    if ckpt_path is not None:
        state = torch.load(ckpt_path, map_location=device, weights_only=False)
        if state.get("model_config") == config and int(state["epoch"]) <= hps["epochs"]:
            model.load_state_dict(state["model"])
            optimizer.load_state_dict(state["optimizer"])
            history = list(state.get("history", []))
            resumed_from = int(state["epoch"])
            start_epoch = resumed_from + 1
            log(f"resuming from {ckpt_path.name} (epoch {resumed_from})")
        else:
            log(f"ignoring {ckpt_path.name}: model config {state.get('model_config')} != {config} "
                f"or epoch {state.get('epoch')} > {hps['epochs']}")

    for epoch in range(start_epoch, hps["epochs"] + 1):
        model.train()
        # a per-epoch generator: the shuffle order does not depend on whether the job resumed
        generator = torch.Generator().manual_seed(hps["seed"] * 100_003 + epoch)
        order = torch.randperm(len(X_train), generator=generator)
        total, count = 0.0, 0
        for start in range(0, len(order), hps["batch_size"]):
            batch = order[start:start + hps["batch_size"]]
            optimizer.zero_grad()
            loss = loss_fn(model(X_train[batch].to(device)), y_train[batch].to(device))
            loss.backward()
            nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            optimizer.step()
            total += loss.item() * len(batch)
            count += len(batch)
        val_loss, val_acc = _validate(model, X_val, y_val, loss_fn, device)
        row = {"epoch": epoch, "train_loss": total / max(count, 1), "val_loss": val_loss,
               "val_directional_accuracy": val_acc}
        history.append(row)
        log(json.dumps(row))
        save_checkpoint(checkpoint_dir, {"epoch": epoch, "model": model.state_dict(),
                                         "optimizer": optimizer.state_dict(), "history": history,
                                         "model_config": config, "hyperparameters": hps})

    if not history:  # nothing left to run and nothing to resume (cannot happen with epochs >= 1)
        raise RuntimeError("no epoch was trained")

    # the baseline sees exactly the LSTM's training samples
    base = baseline.fit(train_s.X, train_s.y, seed=hps["seed"])
    eval_cfg = evaluation.EvaluationConfig(holdout_fraction=hps["holdout_fraction"], fee_bps=hps["fee_bps"],
                                           threshold=hps["threshold"], min_samples=int(hps["min_eval_samples"]))
    model_prob = torch.sigmoid(_predict_logits(model, torch.from_numpy(eval_s.X), device)).numpy().astype(np.float64)
    base_prob = baseline.predict_proba(base, eval_s.X)
    strategies = evaluation.evaluate({"model": model_prob, "baseline": base_prob}, eval_s.ret, eval_cfg,
                                     timeframes[0])
    report = {
        "window": evaluation.window_of(eval_s.label_ts),
        "config": eval_cfg.to_dict(),
        "timeframe": timeframes[0],
        # the last label any fitted part of this model saw: a later comparison must start after it
        "seen_until": evaluation.window_of(val_s.label_ts)["end"],
        "train_window": evaluation.window_of(train_s.label_ts),
        "validation_window": evaluation.window_of(val_s.label_ts),
        "strategies": strategies,
    }
    predictions = {"label_ts": eval_s.label_ts.tolist(), "ret": eval_s.ret.tolist(),
                   "model": model_prob.tolist(), "baseline": base_prob.tolist()}

    last = history[-1]
    metrics = {
        "train_loss": last["train_loss"],
        "val_loss": last["val_loss"],
        "val_directional_accuracy": last["val_directional_accuracy"],
        "val_up_fraction": float(y_val.mean()),  # the accuracy of always answering "up"
        "n_train": int(len(train_s)),
        "n_val": int(len(val_s)),
        "n_eval": int(len(eval_s)),
        "n_rows": int(len(rows)),
        "dataset": kind,
        "epochs": int(last["epoch"]),
        "resumed_from_epoch": resumed_from,
        "device": str(device),
        "code_version": code_version(),
        **evaluation.flat_metrics(strategies),
        "history": history,
    }
    model_dir.mkdir(parents=True, exist_ok=True)
    torch.save({k: v.cpu() for k, v in model.state_dict().items()}, model_dir / "model.pt")
    (model_dir / "model_config.json").write_text(json.dumps({**config, "dataset": kind, "features": feature_names}))
    (model_dir / "metrics.json").write_text(json.dumps(metrics, indent=1))
    (model_dir / "evaluation.json").write_text(json.dumps(report, indent=1))
    (model_dir / "evaluation_predictions.json").write_text(json.dumps(predictions))
    baseline.save(base, model_dir)
    example = eval_s.X[-2:].astype(np.float32)  # two rows: an exported batch of 1 would stay fixed at 1
    (model_dir / "input_example.json").write_text(json.dumps(example.tolist()))
    return metrics


def main() -> int:
    channel_dir = Path(os.environ.get("SM_CHANNEL_TRAIN", "/opt/ml/input/data/train"))
    model_dir = Path(os.environ.get("SM_MODEL_DIR", "/opt/ml/model"))
    checkpoint_dir = Path(os.environ.get("CANDLEFLOW_CHECKPOINT_DIR", "/opt/ml/checkpoints"))
    try:
        metrics = train(channel_dir, model_dir, checkpoint_dir, read_hyperparameters(),
                        log=lambda msg: print(msg, flush=True))
    except Exception as exc:
        # SageMaker shows /opt/ml/output/failure as the job's FailureReason
        output_dir = Path(os.environ.get("SM_OUTPUT_DIR", "/opt/ml/output"))
        try:
            output_dir.mkdir(parents=True, exist_ok=True)
            (output_dir / "failure").write_text(f"{type(exc).__name__}: {exc}")
        except OSError:
            pass
        raise
    print(json.dumps({k: v for k, v in metrics.items() if k != "history"}), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
