"""Spot interruption: a training job killed mid-way (SIGKILL, as a reclaimed spot instance) and
started again on the same checkpoint directory resumes from its last epoch and ends exactly where
an uninterrupted run of the same seed ends."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

pytestmark = [pytest.mark.reliability, pytest.mark.slow]

REPO = Path(__file__).resolve().parents[2]
EPOCHS = 8
HPS = {"epochs": EPOCHS, "window": 24, "hidden_size": 24, "learning_rate": 0.003, "batch_size": 32, "seed": 11,
       "validation_fraction": 0.2, "holdout_fraction": 0.2, "fee_bps": 10, "device": "cpu"}


def start_job(tmp: Path, name: str, checkpoints: Path) -> tuple[subprocess.Popen, Path]:
    """The entry point in its own process, with the SageMaker container environment."""
    model_dir = tmp / f"model-{name}"
    env = {**os.environ, "SM_CHANNEL_TRAIN": str(tmp / "channel"), "SM_MODEL_DIR": str(model_dir),
           "SM_OUTPUT_DIR": str(tmp / f"output-{name}"), "SM_HPS": json.dumps({k: str(v) for k, v in HPS.items()}),
           "CANDLEFLOW_CHECKPOINT_DIR": str(checkpoints), "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1",
           "CANDLEFLOW_CODE_VERSION": "test",
           "PYTHONPATH": os.pathsep.join(p for p in (str(REPO / "include"), os.environ.get("PYTHONPATH")) if p)}
    proc = subprocess.Popen([sys.executable, "-m", "candleflow.training.entrypoint"], env=env, cwd=str(tmp),
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    return proc, model_dir


def finish(proc: subprocess.Popen, timeout: float = 300) -> str:
    out, _ = proc.communicate(timeout=timeout)
    assert proc.returncode == 0, out[-3000:]
    return out


def test_killed_job_resumes_from_its_last_checkpoint_and_matches_an_uninterrupted_run(tmp_path, synthetic_candles):
    (tmp_path / "channel").mkdir()
    candles = synthetic_candles(40 * 24, seed=4, exchanges=("binance", "coinbase", "okx"), symbol="ETH", sigma=0.008,
                                wick=0.002)
    candles.to_parquet(tmp_path / "channel" / "candles.parquet")

    reference, ref_dir = start_job(tmp_path, "reference", tmp_path / "ckpt-reference")
    finish(reference)

    checkpoints = tmp_path / "ckpt-spot"
    victim, _ = start_job(tmp_path, "victim", checkpoints)
    deadline = time.monotonic() + 240
    while not (checkpoints / "checkpoint-epoch-0002.pt").exists():
        assert victim.poll() is None, "the job ended before it could be interrupted"
        assert time.monotonic() < deadline, "no second checkpoint within 240 s"
        time.sleep(0.01)
    victim.send_signal(signal.SIGKILL)  # no handler, no cleanup: what a reclaimed spot instance gets
    victim.wait(timeout=30)
    assert victim.returncode == -signal.SIGKILL
    done = sorted(int(p.stem.rsplit("-", 1)[1]) for p in checkpoints.glob("checkpoint-epoch-*.pt"))
    assert done and 2 <= done[-1] < EPOCHS, done

    resumed, resumed_dir = start_job(tmp_path, "resumed", checkpoints)
    out = finish(resumed)
    assert f"resuming from checkpoint-epoch-{done[-1]:04d}.pt (epoch {done[-1]})" in out

    metrics = json.loads((resumed_dir / "metrics.json").read_text())
    ref_metrics = json.loads((ref_dir / "metrics.json").read_text())
    assert metrics["resumed_from_epoch"] == done[-1] and ref_metrics["resumed_from_epoch"] is None
    # the resumed process trained only the epochs after the checkpoint ...
    trained_now = [json.loads(line)["epoch"] for line in out.splitlines() if line.startswith('{"epoch"')]
    assert trained_now == list(range(done[-1] + 1, EPOCHS + 1))
    # ... and ends exactly where the uninterrupted run ends
    assert metrics["history"] == ref_metrics["history"]
    a = torch.load(resumed_dir / "model.pt", weights_only=True)
    b = torch.load(ref_dir / "model.pt", weights_only=True)
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    for name in ("evaluation.json", "baseline.json"):
        assert json.loads((resumed_dir / name).read_text()) == json.loads((ref_dir / name).read_text()), name
