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

from candleflow.training.baseline import nan_mean_std

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


def standardisation(X: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per-feature mean and deviation of training windows (NaN ignored; a column with no value or
    no spread gets 0 and 1), applied inside the model so serving needs nothing else."""
    mean, scale = nan_mean_std(np.asarray(X, dtype=np.float64).reshape(-1, X.shape[-1]), floor=1e-8)
    return mean.astype(np.float32), scale.astype(np.float32)


class PriceLSTM(nn.Module):
    """LSTM over a window of features -> one logit (next candle up) per sample.

    Inputs are standardised with the training samples' statistics (buffers `mean`, `scale`, saved
    with the weights); a missing value (NaN: an indicator still warming up, a Fear & Greed gap)
    becomes 0 after standardisation, i.e. the training mean.
    """

    def __init__(self, n_features: int = N_FEATURES, hidden_size: int = 32):
        super().__init__()
        self.n_features = n_features
        self.hidden_size = hidden_size
        self.register_buffer("mean", torch.zeros(n_features))
        self.register_buffer("scale", torch.ones(n_features))
        self.lstm = nn.LSTM(input_size=n_features, hidden_size=hidden_size, batch_first=True)
        self.head = nn.Linear(hidden_size, 1)

    def set_standardisation(self, mean: np.ndarray, scale: np.ndarray) -> None:
        self.mean.copy_(torch.as_tensor(mean, dtype=torch.float32))
        self.scale.copy_(torch.as_tensor(scale, dtype=torch.float32))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = torch.nan_to_num((x - self.mean) / self.scale, nan=0.0, posinf=0.0, neginf=0.0)
        out, _ = self.lstm(x)
        return self.head(out[:, -1, :]).squeeze(-1)


# ---- the features table (candleflow.features) as the dataset ------------------------------------
def features_per_ts(frame: pd.DataFrame, columns: list[str]) -> pd.DataFrame:
    """The features table's rows of one symbol averaged over its exchanges per candle (NaN skipped),
    with the mean label_return; index ts (the candle's open time)."""
    missing = [c for c in (*columns, "ts", "exchange", "label_return") if c not in frame.columns]
    if missing:
        raise ValueError(f"features frame lacks column(s) {', '.join(missing[:5])}: read it with "
                         "candleflow.features.load_training_frame")
    return frame.groupby("ts", sort=True)[[*columns, "label_return"]].mean()


def build_feature_samples(frame: pd.DataFrame, window: int, timeframe: str,
                          columns: list[str] | None = None) -> Samples:
    """Samples from the features table: the window of `window` candles' features ending at candle t;
    label = the cross-exchange mean `label_return` of t (close t → close t+1) > 0. Candles whose
    label is unknown (the last one, a gap) give no sample but still serve as history."""
    from candleflow.config import TIMEFRAME_MS
    from candleflow.features import FEATURE_COLUMNS

    columns = list(columns or FEATURE_COLUMNS)
    per_ts = features_per_ts(frame, columns)
    values = per_ts[columns].to_numpy(dtype=np.float32)
    ts = pd.DatetimeIndex(per_ts.index).as_unit("ms").asi8
    label = per_ts["label_return"].to_numpy(dtype=np.float64)
    ends = np.arange(window - 1, len(values))
    ends = ends[np.isfinite(label[ends])]
    if len(ends) == 0:
        empty = np.zeros((0,), np.int64)
        return Samples(np.zeros((0, window, len(columns)), np.float32), np.zeros((0,), np.float32), empty, empty,
                       np.zeros((0,), np.float64))
    idx = ends[:, None] - (window - 1) + np.arange(window)[None, :]
    return Samples(X=values[idx], y=(label[ends] > 0).astype(np.float32), decision_ts=ts[ends],
                   label_ts=ts[ends] + TIMEFRAME_MS[timeframe], ret=label[ends])


def feature_prediction_windows(frame: pd.DataFrame, window: int, columns: list[str]) -> tuple[np.ndarray, np.ndarray]:
    per_ts = features_per_ts(frame, columns)
    values = per_ts[columns].to_numpy(dtype=np.float32)
    n = len(values) - window + 1
    if n <= 0:
        raise ValueError(f"{len(values)} feature rows: a {window}-candle window needs at least {window}")
    idx = np.arange(window)[None, :] + np.arange(n)[:, None]
    return values[idx], pd.DatetimeIndex(per_ts.index).as_unit("ms").asi8[window - 1:]


def is_features_frame(frame: pd.DataFrame) -> bool:
    return "label_return" in frame.columns


def samples_for(frame: pd.DataFrame, window: int, feature_names: list[str]) -> Samples:
    """Samples of a model whose inputs are `feature_names`, from candles or a features frame; a
    ValueError says when this frame cannot feed that model."""
    if list(feature_names) == list(FEATURES):
        if is_features_frame(frame):
            raise ValueError("the model was trained on candle features (ret, range, dvol); these are features-table rows")
        return build_samples(frame, window)
    if not is_features_frame(frame):
        raise ValueError("the model was trained on the features table; these are candles")
    timeframes = frame["timeframe"].unique() if "timeframe" in frame else []
    if len(timeframes) != 1:
        raise ValueError(f"features frame holds timeframes {list(timeframes)}; give one")
    return build_feature_samples(frame, window, str(timeframes[0]), list(feature_names))


def windows_for(frame: pd.DataFrame, window: int, feature_names: list[str]) -> tuple[np.ndarray, np.ndarray]:
    """Every window (including the one ending at the last candle) for a model with these inputs."""
    if list(feature_names) == list(FEATURES):
        return prediction_windows(frame, window)
    return feature_prediction_windows(frame, window, list(feature_names))
