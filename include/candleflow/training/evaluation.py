"""Honest evaluation: trade each predictor over a held-out window, after fees.

The samples are split in time order (`split`): the last `holdout_fraction` of them is the
evaluation window, never seen by training, validation or the baseline's scaler; validation is
the tail of what precedes it. A sample's features end at candle t and its label is candle t+1,
so every training label is earlier than every evaluation label.

Walk-forward trading rule (the same for every strategy, see docs/training.md):
  - at the close of candle t a strategy holds position p_t in {0, 1} (long or flat) over t+1;
    predictors go long when their probability of "up" is > `threshold`;
  - the position earns the symbol's simple return R = exp(r) - 1 of candle t+1 (r: the
    cross-exchange mean log return);
  - a fee of `fee_bps` / 10^4 is paid on every change of position (|p_t - p_{t-1}|, starting
    flat), and the position is closed after the last candle (one more fee);
  - net_t = p_t * R_{t+1} - fee * turnover_t; equity = prod(1 + net).
Metrics: directional accuracy (prediction "up" vs candle t+1 closing up), total return
(equity - 1), Sharpe (mean / std of net per candle, annualised by candles per year), max
drawdown (largest fall of equity from its running peak, as a positive fraction), trades.

Strategies: `model` (the LSTM), `baseline` (logistic regression on the same windows),
`buy_and_hold` (long over the whole window: one entry and one exit fee; it predicts nothing,
so no accuracy) and `always_long` (the classifier that always says "up": its accuracy is the
share of up candles, and it trades exactly like buy-and-hold).
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass

import numpy as np

from candleflow.config import TIMEFRAME_MS, ConfigError, config_section, number

STRATEGIES = ("model", "baseline", "buy_and_hold", "always_long")
METRICS = ("directional_accuracy", "total_return", "sharpe", "max_drawdown", "trades", "exposure")
MS_PER_YEAR = 365 * 86_400_000


@dataclass(frozen=True)
class EvaluationConfig:
    holdout_fraction: float = 0.2   # last share of samples: the held-out evaluation window
    fee_bps: float = 10.0           # per side, on every change of position
    threshold: float = 0.5          # long when P(up) > threshold
    min_samples: int = 24           # fewer evaluation samples than this is an error

    @property
    def fee(self) -> float:
        return self.fee_bps / 10_000.0

    def to_dict(self) -> dict:
        return asdict(self)


def evaluation_config(section: dict | None = None, where: str | None = None) -> EvaluationConfig:
    """The `evaluation:` section of include/config/training.yaml (or the given mapping)."""
    section, where = config_section("training.yaml", "evaluation", EvaluationConfig, section, where)
    d = EvaluationConfig()
    cfg = EvaluationConfig(
        holdout_fraction=number(section, "holdout_fraction", where, float, 0.0, 1.0, d.holdout_fraction),
        fee_bps=number(section, "fee_bps", where, float, 0.0, None, d.fee_bps),
        threshold=number(section, "threshold", where, float, 0.0, 1.0, d.threshold),
        min_samples=number(section, "min_samples", where, int, 2, None, d.min_samples),
    )
    if cfg.holdout_fraction <= 0:
        raise ConfigError(f"{where}: holdout_fraction must be > 0 (the evaluation window cannot be empty)")
    return cfg


@dataclass(frozen=True)
class Split:
    """Sample index ranges, in time order: [0, train_end) | [train_end, eval_start) | [eval_start, n)."""

    train_end: int
    eval_start: int
    n: int

    @property
    def train(self) -> slice:
        return slice(0, self.train_end)

    @property
    def validation(self) -> slice:
        return slice(self.train_end, self.eval_start)

    @property
    def evaluation(self) -> slice:
        return slice(self.eval_start, self.n)


def split(n: int, holdout_fraction: float, validation_fraction: float, min_eval: int = 1) -> Split:
    """Chronological train | validation | evaluation split of `n` samples (none shuffled across)."""
    n_eval = max(min_eval, int(round(n * holdout_fraction)))
    dev = n - n_eval
    n_val = max(1, int(round(dev * validation_fraction)))
    if dev - n_val < 2:
        raise ValueError(f"only {n} samples: not enough for {n_eval} evaluation, {n_val} validation and at least 2 "
                         "training samples; widen the lookback, shrink the window or the holdout_fraction")
    return Split(train_end=dev - n_val, eval_start=dev, n=n)


def periods_per_year(timeframe: str) -> float:
    if timeframe not in TIMEFRAME_MS:
        raise ValueError(f"timeframe {timeframe!r} is unknown; use one of {', '.join(TIMEFRAME_MS)}")
    return MS_PER_YEAR / TIMEFRAME_MS[timeframe]


def trade(positions: np.ndarray, log_returns: np.ndarray, fee: float, periods: float) -> dict:
    """Trading metrics of holding `positions[k]` over the candle whose log return is `log_returns[k]`."""
    p = np.asarray(positions, dtype=np.float64)
    r = np.asarray(log_returns, dtype=np.float64)
    if p.shape != r.shape or p.ndim != 1:
        raise ValueError(f"positions {p.shape} and returns {r.shape} must be 1-D and of one length")
    if len(p) == 0:
        raise ValueError("no samples to evaluate")
    turnover = np.abs(np.diff(p, prepend=0.0))
    turnover[-1] += abs(p[-1])  # close the position after the last candle
    net = p * np.expm1(r) - fee * turnover
    equity = np.cumprod(1.0 + net)
    peak = np.maximum.accumulate(np.concatenate([[1.0], equity]))[1:]
    std = float(net.std(ddof=1)) if len(net) > 1 else 0.0
    sharpe = float(net.mean() / std * math.sqrt(periods)) if std > 1e-15 else 0.0
    return {
        "total_return": float(equity[-1] - 1.0),
        "sharpe": sharpe,
        "max_drawdown": float(np.max(1.0 - equity / peak)),
        "trades": int(np.count_nonzero(turnover)),
        "exposure": float(p.mean()),
    }


def evaluate(probabilities: dict[str, np.ndarray], log_returns: np.ndarray, cfg: EvaluationConfig,
             timeframe: str) -> dict[str, dict]:
    """Metrics per strategy: every predictor in `probabilities` (P(up) per sample), plus
    buy_and_hold and always_long, all over the same samples."""
    r = np.asarray(log_returns, dtype=np.float64)
    up = r > 0
    periods = periods_per_year(timeframe)
    out: dict[str, dict] = {}
    for name, prob in probabilities.items():
        prob = np.asarray(prob, dtype=np.float64).reshape(-1)
        if prob.shape != r.shape:
            raise ValueError(f"{name}: {prob.shape[0]} predictions for {r.shape[0]} samples")
        pred_up = prob > cfg.threshold
        out[name] = {"directional_accuracy": float(np.mean(pred_up == up)),
                     **trade(pred_up.astype(np.float64), r, cfg.fee, periods)}
    held = trade(np.ones_like(r), r, cfg.fee, periods)  # both hold long throughout: one trade record
    out["buy_and_hold"] = {"directional_accuracy": None, **held}
    out["always_long"] = {"directional_accuracy": float(np.mean(up)), **held}
    return out


def window_of(label_ts: np.ndarray) -> dict:
    """The evaluation window as ISO instants of its first and last label candle, and its size."""
    import pandas as pd

    ts = np.asarray(label_ts, dtype=np.int64)
    return {"start": pd.Timestamp(int(ts.min()), unit="ms", tz="UTC").isoformat(),
            "end": pd.Timestamp(int(ts.max()), unit="ms", tz="UTC").isoformat(),
            "samples": int(len(ts))}


def flat_metrics(strategies: dict[str, dict], prefix: str = "eval") -> dict[str, float]:
    """`{prefix}_{strategy}_{metric}: value` for MLflow (undefined metrics left out)."""
    return {f"{prefix}_{name}_{metric}": float(value) for name, metrics in strategies.items()
            for metric, value in metrics.items() if value is not None}
