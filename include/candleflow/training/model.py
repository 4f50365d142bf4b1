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


def build_features(candles: pd.DataFrame, window: int = 24) -> tuple[np.ndarray, np.ndarray]:
    """(X, y): X float32 [n, window, N_FEATURES], y float32 [n] (1.0 = next return > 0)."""
    if window < 1:
        raise ValueError(f"window must be >= 1, got {window}")
    values = feature_frame(candles).to_numpy(dtype=np.float32)
    n = len(values) - window
    if n <= 0:
        return np.zeros((0, window, N_FEATURES), np.float32), np.zeros((0,), np.float32)
    idx = np.arange(window)[None, :] + np.arange(n)[:, None]
    X = values[idx]
    y = (values[window:, 0] > 0).astype(np.float32)
    return X, y


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
