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
FEATURES_FILE = "features.parquet"   # rows of the lake's features table (candleflow.features)
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
    return _write_channel(s3, bucket, prefix, CANDLES_FILE, _normalise(candles), sources)


def write_features_channel(s3, bucket: str, prefix: str, frame: pd.DataFrame, sources: list[str]) -> str:
    """Write rows of the features table (features.load_training_frame) as the channel; return it."""
    if frame.empty:
        raise ValueError("no feature rows to write into a training channel")
    return _write_channel(s3, bucket, prefix, FEATURES_FILE,
                          frame.sort_values(["exchange", "ts"], kind="stable").reset_index(drop=True), sources)


def _write_channel(s3, bucket: str, prefix: str, file: str, rows: pd.DataFrame, sources: list[str]) -> str:
    base = f"{prefix.strip('/')}/train"
    buf = io.BytesIO()
    rows.to_parquet(buf, index=False, engine="pyarrow")
    s3.put_object(Bucket=bucket, Key=f"{base}/{file}", Body=buf.getvalue(),
                  ContentType="application/vnd.apache.parquet")
    s3.put_object(Bucket=bucket, Key=f"{base}/{SOURCES_FILE}", Body=json.dumps(list(sources), indent=1).encode(),
                  ContentType="application/json")
    return f"s3://{bucket}/{base}/"


def load_channel(directory: str | Path) -> pd.DataFrame:
    """Read a downloaded candle channel (`candles.parquet`, else every parquet file but features)."""
    directory = Path(directory)
    files = [directory / CANDLES_FILE] if (directory / CANDLES_FILE).exists() else sorted(
        f for f in directory.rglob("*.parquet") if f.name != FEATURES_FILE)
    if not files:
        raise FileNotFoundError(f"{directory}: no candles parquet file in the training channel")
    return _normalise(pd.concat([pd.read_parquet(f) for f in files], ignore_index=True))


def load_dataset(directory: str | Path) -> tuple[str, pd.DataFrame]:
    """("features", rows of the features table) when the channel holds features.parquet, else
    ("candles", the candles)."""
    directory = Path(directory)
    if (directory / FEATURES_FILE).exists():
        frame = pd.read_parquet(directory / FEATURES_FILE)
        frame["ts"] = pd.to_datetime(frame["ts"], utc=True).dt.as_unit("ms")
        return "features", frame
    return "candles", load_channel(directory)


def load_sources(directory: str | Path) -> list[str]:
    path = Path(directory) / SOURCES_FILE
    return json.loads(path.read_text()) if path.exists() else []
