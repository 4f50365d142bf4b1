"""Run a training job spec locally, the way SageMaker runs it.

`run_training_job` lays out a workdir like a training container (`input/data/<channel>`,
`checkpoints`, `model`, `output`), copies each channel's S3 prefix and the job's existing
checkpoints in, runs `python -m candleflow.training.entrypoint` in a subprocess with the
SageMaker environment variables, copies checkpoints back, and uploads the model directory as
`{output_s3_uri}/{job_name}/output/model.tar.gz` — where a SageMaker job leaves it. Both
backends therefore hand `register` the same artifact.
"""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
import tarfile
import time
from dataclasses import dataclass
from pathlib import Path

import candleflow

ENTRYPOINT_MODULE = "candleflow.training.entrypoint"
STDERR_TAIL_CHARS = 4000


@dataclass
class TrainingJobSpec:
    """Everything a training job needs; JSON-safe (round-trips through dataclasses.asdict)."""

    job_name: str
    symbol: str
    timeframe: str
    channels: dict[str, str]
    output_s3_uri: str
    checkpoint_s3_uri: str
    hyperparameters: dict
    instance_type: str
    use_spot: bool
    max_run_seconds: int
    max_wait_seconds: int
    image_uri: str
    role_arn: str

    def model_s3_uri(self) -> str:
        return f"{self.output_s3_uri.rstrip('/')}/{self.job_name}/output/model.tar.gz"


@dataclass
class TrainingJobResult:
    job_name: str
    model_s3_uri: str
    billable_seconds: int
    model_dir: Path
    metrics: dict


def split_s3_uri(uri: str) -> tuple[str, str]:
    if not uri.startswith("s3://"):
        raise ValueError(f"{uri!r} is not an s3:// URI")
    bucket, _, key = uri[len("s3://"):].partition("/")
    if not bucket:
        raise ValueError(f"{uri!r} names no bucket")
    return bucket, key


def download_prefix(s3, uri: str, dest: Path) -> int:
    """Copy every object under the S3 prefix `uri` into `dest` (relative paths kept); return the count."""
    bucket, prefix = split_s3_uri(uri)
    if prefix and not prefix.endswith("/"):
        prefix += "/"
    dest.mkdir(parents=True, exist_ok=True)
    count = 0
    for page in s3.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=prefix):
        for obj in page.get("Contents", []):
            rel = obj["Key"][len(prefix):]
            if not rel or rel.endswith("/"):
                continue
            target = (dest / rel).resolve()
            if dest.resolve() not in target.parents:
                raise ValueError(f"s3://{bucket}/{obj['Key']} would be written outside {dest}")
            target.parent.mkdir(parents=True, exist_ok=True)
            s3.download_file(bucket, obj["Key"], str(target))
            count += 1
    return count


def upload_dir(s3, src: Path, uri: str) -> int:
    bucket, prefix = split_s3_uri(uri)
    prefix = prefix.rstrip("/")
    count = 0
    for path in sorted(p for p in src.rglob("*") if p.is_file() and not p.name.endswith(".tmp")):
        key = f"{prefix}/{path.relative_to(src).as_posix()}" if prefix else path.relative_to(src).as_posix()
        s3.upload_file(str(path), bucket, key)
        count += 1
    return count


def _channel_env_name(channel: str) -> str:
    return "SM_CHANNEL_" + "".join(c if c.isalnum() else "_" for c in channel).upper()


def run_training_job(spec: TrainingJobSpec, s3, workdir: str | Path) -> TrainingJobResult:
    """Run `spec` in a subprocess under the SageMaker contract; upload model.tar.gz; return the result.

    The returned `model_dir` lies inside `workdir`: read it before the caller removes workdir.
    """
    workdir = Path(workdir)
    data_dir = workdir / "input" / "data"
    checkpoint_dir = workdir / "checkpoints"
    model_dir = workdir / "model"
    output_dir = workdir / "output"
    for d in (data_dir, checkpoint_dir, model_dir, output_dir):
        d.mkdir(parents=True, exist_ok=True)

    env = dict(os.environ)
    for name, uri in spec.channels.items():
        if download_prefix(s3, uri, data_dir / name) == 0:
            raise RuntimeError(f"training job {spec.job_name}: channel {name!r} ({uri}) is empty")
        env[_channel_env_name(name)] = str(data_dir / name)
    if spec.checkpoint_s3_uri:
        download_prefix(s3, spec.checkpoint_s3_uri, checkpoint_dir)
    package_root = str(Path(candleflow.__file__).resolve().parent.parent)
    env.update({
        "SM_CHANNELS": json.dumps(sorted(spec.channels)),
        "SM_HPS": json.dumps(spec.hyperparameters),
        "SM_MODEL_DIR": str(model_dir),
        "SM_OUTPUT_DIR": str(output_dir),
        "SM_OUTPUT_DATA_DIR": str(output_dir / "data"),
        "SM_CURRENT_INSTANCE_TYPE": "local",
        "CANDLEFLOW_CHECKPOINT_DIR": str(checkpoint_dir),
        "PYTHONPATH": os.pathsep.join(p for p in (package_root, env.get("PYTHONPATH")) if p),
        "PYTHONUNBUFFERED": "1",
    })

    started = time.monotonic()
    try:
        proc = subprocess.run([sys.executable, "-m", ENTRYPOINT_MODULE], env=env, cwd=str(workdir),
                              capture_output=True, text=True, timeout=spec.max_run_seconds)
        returncode, stdout, stderr = proc.returncode, proc.stdout, proc.stderr
    except subprocess.TimeoutExpired as exc:
        returncode, stdout = None, exc.stdout or ""
        stderr = (exc.stderr or "") if isinstance(exc.stderr, str) else (exc.stderr or b"").decode(errors="replace")
    elapsed = time.monotonic() - started
    (workdir / "stdout.log").write_text(stdout if isinstance(stdout, str) else stdout.decode(errors="replace"))
    (workdir / "stderr.log").write_text(stderr)
    # like SageMaker's CheckpointConfig sync: what was saved survives a failed or stopped job
    if spec.checkpoint_s3_uri:
        upload_dir(s3, checkpoint_dir, spec.checkpoint_s3_uri)
    if returncode != 0:
        reason = "timed out after MaxRuntime" if returncode is None else f"exited with code {returncode}"
        failure = output_dir / "failure"
        detail = failure.read_text().strip() if failure.exists() else ""
        raise RuntimeError(
            f"training job {spec.job_name} ({spec.symbol} {spec.timeframe}) {reason}"
            + (f": {detail}" if detail else "")
            + f"\n--- stderr (tail) ---\n{stderr[-STDERR_TAIL_CHARS:]}"
        )
    missing = [f for f in ("model.pt", "model_config.json", "metrics.json", "input_example.json")
               if not (model_dir / f).exists()]
    if missing:
        raise RuntimeError(f"training job {spec.job_name} wrote no {', '.join(missing)} into {model_dir}")

    tar_path = workdir / "model.tar.gz"
    with tarfile.open(tar_path, "w:gz") as tar:
        for path in sorted(model_dir.iterdir()):
            tar.add(path, arcname=path.name)
    model_uri = spec.model_s3_uri()
    bucket, key = split_s3_uri(model_uri)
    s3.upload_file(str(tar_path), bucket, key)
    return TrainingJobResult(
        job_name=spec.job_name,
        model_s3_uri=model_uri,
        billable_seconds=max(1, math.ceil(elapsed)),
        model_dir=model_dir,
        metrics=json.loads((model_dir / "metrics.json").read_text()),
    )


def download_model(s3, model_s3_uri: str, dest: str | Path) -> Path:
    """Fetch and unpack a model.tar.gz; return the directory that holds its metrics.json."""
    dest = Path(dest)
    dest.mkdir(parents=True, exist_ok=True)
    bucket, key = split_s3_uri(model_s3_uri)
    archive = dest / "model.tar.gz"
    s3.download_file(bucket, key, str(archive))
    extract_dir = dest / "model"
    extract_dir.mkdir(exist_ok=True)
    with tarfile.open(archive, "r:gz") as tar:
        tar.extractall(extract_dir, filter="data")
    found = sorted(extract_dir.rglob("metrics.json"), key=lambda p: len(p.parts))
    if not found:
        raise FileNotFoundError(f"{model_s3_uri}: the archive holds no metrics.json")
    return found[0].parent
