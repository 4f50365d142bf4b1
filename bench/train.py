"""Benchmark: LSTM training speed on one symbol (the entry point's own training loop).

    .venv/bin/python bench/train.py [--device cpu|cuda|auto] [--epochs 5] [--days 60] [--exchanges 5]
    .venv/bin/python bench/train.py --source sol      # the real SOL/USDT 1h candles in ../shared/data
    .venv/bin/python bench/train.py --dataset features   # the features table's ~40 columns per step

It builds one symbol's training channel the way `prepare_dataset` does (every exchange's 1h
candles of the lookback; `--source synthetic` by default: a seeded random walk per exchange), runs
`candleflow.training.entrypoint.train` with the hyperparameters of include/config/training.yaml
(overridable) on the chosen device, and prints per epoch the seconds taken, then training samples/s
(training windows per second of an epoch, median over epochs 2..N: epoch 1 also pays data loading,
feature building and torch.optim's first import) and the time per epoch, plus the fastest epoch
(the least disturbed figure on a shared machine). No code changes for CUDA: `--device cuda` where torch
sees a GPU (it fails clearly where it does not).
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pandas as pd

REPO = Path(__file__).resolve().parents[1]
SOL_CSV = REPO.parent / "shared" / "data" / "real" / "SOL_USDT-1h.csv"


def synthetic(days: int, exchanges: int, seed: int = 0) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    n = days * 24
    ts = pd.date_range("2024-09-01", periods=n, freq="1h", tz="UTC").as_unit("ms")
    base = 60_000 * np.exp(np.cumsum(rng.normal(0, 0.006, n)))
    frames = []
    for i, ex in enumerate(["binance", "coinbase", "kraken", "bybit", "okx"][:exchanges]):
        close = base * (1 + rng.normal(0, 0.0004, n)) * (1 + 0.0005 * i)
        open_ = np.r_[close[0], close[:-1]]
        frames.append(pd.DataFrame({"ts": ts, "exchange": ex, "symbol": "BTC", "timeframe": "1h", "open": open_,
                                    "high": np.maximum(open_, close) * (1 + rng.uniform(0, 0.003, n)),
                                    "low": np.minimum(open_, close) * (1 - rng.uniform(0, 0.003, n)),
                                    "close": close, "volume": rng.uniform(10, 500, n)}))
    return pd.concat(frames, ignore_index=True)


def sol() -> pd.DataFrame:
    if not SOL_CSV.exists():
        sys.exit(f"{SOL_CSV} is absent: use --source synthetic")
    raw = pd.read_csv(SOL_CSV)
    return pd.DataFrame({"ts": pd.to_datetime(raw["timestamp"], utc=True).dt.as_unit("ms"), "exchange": "binance",
                         "symbol": "SOL", "timeframe": "1h", "open": raw["Open"], "high": raw["High"],
                         "low": raw["Low"], "close": raw["Close"], "volume": raw["Volume"]})


def main() -> int:
    from candleflow.config import load_training

    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--device", default="cpu", help="cpu | cuda | auto (default cpu)")
    parser.add_argument("--epochs", type=int, default=5)
    parser.add_argument("--days", type=int, default=load_training().lookback_days)
    parser.add_argument("--exchanges", type=int, default=5)
    parser.add_argument("--source", choices=("synthetic", "sol"), default="synthetic")
    parser.add_argument("--dataset", choices=("candles", "features"), default="candles",
                        help="features: the features table's columns, computed by candleflow.features")
    parser.add_argument("--hidden-size", type=int)
    parser.add_argument("--batch-size", type=int)
    parser.add_argument("--threads", type=int, help="torch.set_num_threads (default: torch's choice)")
    args = parser.parse_args()

    import torch

    from candleflow.training.entrypoint import train

    if args.threads:
        torch.set_num_threads(args.threads)
    candles = synthetic(args.days, args.exchanges) if args.source == "synthetic" else sol()
    hps = {**load_training().hyperparameters, "epochs": args.epochs, "device": args.device}
    if args.hidden_size:
        hps["hidden_size"] = args.hidden_size
    if args.batch_size:
        hps["batch_size"] = args.batch_size
    with tempfile.TemporaryDirectory(prefix="bench-train-") as tmp:
        tmp = Path(tmp)
        (tmp / "channel").mkdir()
        if args.dataset == "features":
            from candleflow import features

            rows = features.compute_features(candles.drop(columns=["symbol", "timeframe"]), timeframe="1h",
                                             cfg=features.load_config())
            rows.assign(symbol=candles["symbol"].iloc[0], timeframe="1h").to_parquet(
                tmp / "channel" / "features.parquet")
        else:
            candles.to_parquet(tmp / "channel" / "candles.parquet")
        stamps: list[float] = []

        def log(msg: str) -> None:
            if msg.startswith("{") and '"epoch"' in msg:
                stamps.append(time.perf_counter())

        start = time.perf_counter()
        metrics = train(tmp / "channel", tmp / "model", tmp / "checkpoints", hps, log=log)
        total = time.perf_counter() - start
    epochs = np.diff([start, *stamps]).tolist()
    steady = epochs[1:] or epochs
    per_epoch = statistics.median(steady)
    n_train = metrics["n_train"]
    print(f"source={args.source} dataset={args.dataset} candles={len(candles)} exchanges={candles['exchange'].nunique()} "
          f"device={metrics['device']} torch={torch.__version__} threads={torch.get_num_threads()}")
    print(f"hyperparameters: {json.dumps({k: hps[k] for k in ('window', 'hidden_size', 'batch_size', 'epochs')})}")
    print(f"samples: train={n_train} validation={metrics['n_val']} evaluation={metrics['n_eval']}")
    for i, seconds in enumerate(epochs, 1):
        print(f"  epoch {i}: {seconds:.3f} s" + ("  (includes data loading and features)" if i == 1 else ""))
    print(f"total (train() incl. baseline and evaluation): {total:.2f} s")
    # on a shared machine the fastest epoch is the least disturbed estimate of the code's speed
    print(f"best_epoch_s={min(steady):.3f} train_samples_per_s_best={n_train / min(steady):.0f}")
    print(f"time_per_epoch_s={per_epoch:.3f}")
    print(f"train_samples_per_s={n_train / per_epoch:.0f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
