"""Training channels: a symbol's candles from every exchange that lists it, frozen in S3.

A channel is the S3 prefix `{prefix}/train/` holding `candles.parquet` (the rows the job
trains on) and `sources.json` (the lake objects they were read from, for lineage). SageMaker
copies the prefix to `/opt/ml/input/data/train/`; the local runner does the same.
"""

from __future__ import annotations

import io
import json
from pathlib import Path

import pandas as pd

CANDLES_FILE = "candles.parquet"
SOURCES_FILE = "sources.json"
COLUMNS = ["ts", "exchange", "symbol", "timeframe", "open", "high", "low", "close", "volume"]
NUMERIC = ["open", "high", "low", "close", "volume"]


def _normalise(candles: pd.DataFrame) -> pd.DataFrame:
    missing = [c for c in COLUMNS if c not in candles.columns]
    if missing:
        raise ValueError(f"candles lack column(s) {', '.join(missing)}; expected {', '.join(COLUMNS)}")
    df = candles[COLUMNS].copy()
    ts = pd.to_datetime(df["ts"], utc=True)
    df["ts"] = ts.dt.as_unit("ms")
    for col in ("exchange", "symbol", "timeframe"):
        df[col] = df[col].astype(str)
    for col in NUMERIC:
        df[col] = df[col].astype("float64")
    return df.sort_values(["exchange", "ts"], kind="stable").reset_index(drop=True)


def write_training_channel(s3, bucket: str, prefix: str, candles: pd.DataFrame, sources: list[str]) -> str:
    """Write `candles` and their lake `sources` as the channel `s3://bucket/{prefix}/train/`; return it."""
    if candles.empty:
        raise ValueError("no candles to write into a training channel")
    base = f"{prefix.strip('/')}/train"
    buf = io.BytesIO()
    _normalise(candles).to_parquet(buf, index=False, engine="pyarrow")
    s3.put_object(Bucket=bucket, Key=f"{base}/{CANDLES_FILE}", Body=buf.getvalue(),
                  ContentType="application/vnd.apache.parquet")
    s3.put_object(Bucket=bucket, Key=f"{base}/{SOURCES_FILE}", Body=json.dumps(list(sources), indent=1).encode(),
                  ContentType="application/json")
    return f"s3://{bucket}/{base}/"


def load_channel(directory: str | Path) -> pd.DataFrame:
    """Read a downloaded channel directory (every parquet file in it) as one candle frame."""
    directory = Path(directory)
    files = sorted(directory.rglob("*.parquet"))
    if not files:
        raise FileNotFoundError(f"{directory}: no parquet file in the training channel")
    return _normalise(pd.concat([pd.read_parquet(f) for f in files], ignore_index=True))


def load_sources(directory: str | Path) -> list[str]:
    path = Path(directory) / SOURCES_FILE
    return json.loads(path.read_text()) if path.exists() else []
