"""Features and model: next-candle direction of one symbol from all exchanges that list it.

Features per exchange and candle t (each uses candles t and t-1 of that exchange only):
  - `ret`:   100 * log(close_t / close_{t-1})
  - `range`: 100 * log(high_t / low_t)
  - `dvol`:  log1p(volume_t) - log1p(volume_{t-1})
They are averaged over the exchanges that have candle t (one model per symbol, every venue).
A sample is the window of features at t-window+1 .. t; its label is 1 when the averaged return
of candle t+1 is > 0. Nothing is normalised with statistics of the whole frame, so a window
never sees data after its own last candle.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd
import torch
from torch import nn

FEATURES = ("ret", "range", "dvol")
N_FEATURES = len(FEATURES)


def feature_frame(candles: pd.DataFrame) -> pd.DataFrame:
    """Per-ts features averaged across exchanges, sorted by ts (index ts, columns FEATURES)."""
    df = candles.sort_values(["exchange", "ts"], kind="stable")
    by_exchange = df.groupby("exchange", sort=False)
    close = df["close"].astype("float64")
    feats = pd.DataFrame(
        {
            "ts": df["ts"],
            "ret": 100.0 * (np.log(close) - np.log(by_exchange["close"].shift(1).astype("float64"))),
            "range": 100.0 * (np.log(df["high"].astype("float64")) - np.log(df["low"].astype("float64"))),
            "dvol": np.log1p(df["volume"].astype("float64").clip(lower=0))
            - np.log1p(by_exchange["volume"].shift(1).astype("float64").clip(lower=0)),
        }
    )
    feats = feats.replace([np.inf, -np.inf], np.nan).dropna()
    return feats.groupby("ts", sort=True)[list(FEATURES)].mean()


@dataclass(frozen=True)
class Samples:
    """Windows, labels and what evaluation needs to trade them, one row per sample, in time order.

    Sample i ends at candle t (`decision_ts`, when a prediction is made) and its label is the
    direction of candle t+1 (`label_ts`); `ret` is that candle's cross-exchange mean log return
    (a fraction, not percent), the return a position held over it earns.
    """

    X: np.ndarray            # float32 [n, window, N_FEATURES]
    y: np.ndarray            # float32 [n], 1.0 = the next candle closed up
    decision_ts: np.ndarray  # int64 [n], ms
    label_ts: np.ndarray     # int64 [n], ms
    ret: np.ndarray          # float64 [n]

    def __len__(self) -> int:
        return len(self.y)

    def take(self, index) -> Samples:
        return Samples(self.X[index], self.y[index], self.decision_ts[index], self.label_ts[index], self.ret[index])


def build_samples(candles: pd.DataFrame, window: int = 24) -> Samples:
    if window < 1:
        raise ValueError(f"window must be >= 1, got {window}")
    frame = feature_frame(candles)
    values = frame.to_numpy(dtype=np.float32)
    ts = pd.DatetimeIndex(frame.index).as_unit("ms").asi8
    n = len(values) - window
    if n <= 0:
        empty = np.zeros((0,), np.int64)
        return Samples(np.zeros((0, window, N_FEATURES), np.float32), np.zeros((0,), np.float32), empty, empty,
                       np.zeros((0,), np.float64))
    idx = np.arange(window)[None, :] + np.arange(n)[:, None]
    ret = frame["ret"].to_numpy(dtype=np.float64)[window:] / 100.0
    return Samples(X=values[idx], y=(values[window:, 0] > 0).astype(np.float32), decision_ts=ts[window - 1:-1],
                   label_ts=ts[window:], ret=ret)


def prediction_windows(candles: pd.DataFrame, window: int) -> tuple[np.ndarray, np.ndarray]:
    """Every window of `candles` including the one ending at the last candle (whose next candle is
    not known yet): (X float32 [n, window, N_FEATURES], decision_ts int64 ms [n])."""
    frame = feature_frame(candles)
    values = frame.to_numpy(dtype=np.float32)
    n = len(values) - window + 1
    if n <= 0:
        raise ValueError(f"{len(values)} feature rows from {len(candles)} candles: a {window}-candle window needs "
                         f"at least {window + 1} candles")
    idx = np.arange(window)[None, :] + np.arange(n)[:, None]
    return values[idx], pd.DatetimeIndex(frame.index).as_unit("ms").asi8[window - 1:]


def build_features(candles: pd.DataFrame, window: int = 24) -> tuple[np.ndarray, np.ndarray]:
    """(X, y): X float32 [n, window, N_FEATURES], y float32 [n] (1.0 = next return > 0)."""
    samples = build_samples(candles, window)
    return samples.X, samples.y


class PriceLSTM(nn.Module):
    """LSTM over a window of features -> one logit (next candle up) per sample."""

    def __init__(self, n_features: int = N_FEATURES, hidden_size: int = 32):
        super().__init__()
        self.n_features = n_features
        self.hidden_size = hidden_size
        self.lstm = nn.LSTM(input_size=n_features, hidden_size=hidden_size, batch_first=True)
        self.head = nn.Linear(hidden_size, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out, _ = self.lstm(x)
        return self.head(out[:, -1, :]).squeeze(-1)
