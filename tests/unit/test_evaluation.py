"""Evaluation: the chronological split (no leakage), trading after fees, the four strategies, and
the baseline — checked against numbers worked out by hand."""

from __future__ import annotations

import json
import math

import numpy as np
import pandas as pd
import pytest

from candleflow.config import ConfigError
from candleflow.training import baseline, evaluation
from candleflow.training.entrypoint import train
from candleflow.training.evaluation import EvaluationConfig, evaluate, split, trade
from candleflow.training.model import build_feature_samples, build_samples, samples_for

HPS = {"epochs": 1, "window": 6, "hidden_size": 4, "learning_rate": 0.01, "batch_size": 32, "seed": 3,
       "validation_fraction": 0.25, "holdout_fraction": 0.2, "fee_bps": 10, "min_eval_samples": 10}


# ---- trading arithmetic --------------------------------------------------------------------------
def test_trade_charges_fees_on_every_position_change_and_the_final_exit():
    r = np.log([1.10, 0.95, 1.02, 1.01])          # simple returns +10%, -5%, +2%, +1%
    p = np.array([1.0, 0.0, 1.0, 1.0])
    fee = 0.001
    out = trade(p, r, fee, periods=4)
    # enter (+fee), exit (+fee), enter (+fee), hold, and exit after the last candle (+fee)
    net = np.array([0.10 - fee, -fee, 0.02 - fee, 0.01 - fee])
    assert out["trades"] == 4
    assert out["total_return"] == pytest.approx(np.prod(1 + net) - 1)
    assert out["sharpe"] == pytest.approx(net.mean() / net.std(ddof=1) * 2.0)
    assert out["exposure"] == 0.75
    equity = np.cumprod(1 + net)
    assert out["max_drawdown"] == pytest.approx(1 - equity[1] / equity[0])


def test_flat_strategy_has_no_return_no_trades_and_zero_sharpe():
    out = trade(np.zeros(5), np.log(np.linspace(0.9, 1.1, 5)), 0.001, periods=8760)
    assert out == {"total_return": 0.0, "sharpe": 0.0, "max_drawdown": 0.0, "trades": 0, "exposure": 0.0}


def test_evaluate_scores_the_four_strategies_on_the_same_samples():
    r = np.log(np.array([1.01, 0.99, 1.02, 0.98, 1.01, 1.00]))
    perfect = (r > 0).astype(float)
    cfg = EvaluationConfig(fee_bps=0.0)
    out = evaluate({"model": perfect, "baseline": np.full(6, 0.2)}, r, cfg, "1h")
    assert set(out) == {"model", "baseline", "buy_and_hold", "always_long"}
    assert out["model"]["directional_accuracy"] == 1.0
    assert out["model"]["total_return"] == pytest.approx(1.01 * 1.02 * 1.01 - 1)
    assert out["model"]["max_drawdown"] == 0.0
    assert out["baseline"]["directional_accuracy"] == pytest.approx(3 / 6)  # says "down" always; 1.00 is not up
    assert out["baseline"]["total_return"] == 0.0
    assert out["buy_and_hold"]["directional_accuracy"] is None
    assert out["always_long"]["directional_accuracy"] == pytest.approx(3 / 6)
    assert out["buy_and_hold"]["total_return"] == pytest.approx(np.prod(np.exp(r)) - 1)
    assert out["buy_and_hold"]["trades"] == 2
    # fees matter: the same perfect predictor at 50 bps per side trades 6 times
    costly = evaluate({"model": perfect}, r, EvaluationConfig(fee_bps=50), "1h")["model"]
    assert costly["trades"] == 6 and costly["total_return"] < out["model"]["total_return"] - 0.025


def test_sharpe_is_annualised_by_the_timeframe():
    r = np.log(np.array([1.01, 0.995, 1.02, 0.99]))
    hourly = evaluate({}, r, EvaluationConfig(fee_bps=0), "1h")["buy_and_hold"]["sharpe"]
    minute = evaluate({}, r, EvaluationConfig(fee_bps=0), "1m")["buy_and_hold"]["sharpe"]
    assert minute == pytest.approx(hourly * math.sqrt(60))


def test_bad_inputs_and_config_name_the_field():
    with pytest.raises(ValueError, match="model: 3 predictions for 4 samples"):
        evaluate({"model": np.ones(3)}, np.zeros(4), EvaluationConfig(), "1h")
    with pytest.raises(ConfigError, match="fee_bps"):
        evaluation.evaluation_config({"fee_bps": -1})
    with pytest.raises(ConfigError, match="holdout_fraction"):
        evaluation.evaluation_config({"holdout_fraction": 1.5})
    with pytest.raises(ConfigError, match="unknown field.*fees"):
        evaluation.evaluation_config({"fees": 10})
    shipped = evaluation.evaluation_config()
    assert 0 < shipped.holdout_fraction < 1 and shipped.fee_bps > 0


# ---- the split: no leakage ------------------------------------------------------------------------
def test_split_is_chronological_and_every_training_label_precedes_every_evaluation_label(synthetic_candles):
    samples = build_samples(synthetic_candles(300), window=12)
    parts = split(len(samples), holdout_fraction=0.2, validation_fraction=0.25)
    assert parts.train.stop == parts.validation.start and parts.validation.stop == parts.evaluation.start
    assert parts.evaluation.stop == len(samples)
    train_s, val_s, eval_s = (samples.take(parts.train), samples.take(parts.validation),
                              samples.take(parts.evaluation))
    assert len(eval_s) == round(len(samples) * 0.2)
    # the features of a sample end at its decision candle; a model fitted on train+validation has
    # seen nothing at or after the first evaluation label
    assert train_s.label_ts.max() < val_s.label_ts.min() <= val_s.label_ts.max() < eval_s.label_ts.min()
    assert eval_s.decision_ts.min() >= val_s.label_ts.max()
    np.testing.assert_array_equal(samples.label_ts[1:] > samples.label_ts[:-1], True)


def test_split_refuses_too_few_samples():
    with pytest.raises(ValueError, match="not enough"):
        split(5, holdout_fraction=0.2, validation_fraction=0.2, min_eval=3)


def test_evaluation_window_results_do_not_depend_on_data_after_it_or_on_it_for_training(tmp_path, synthetic_candles):
    """Changing the evaluation window's candles changes neither the trained LSTM nor the baseline."""
    base = synthetic_candles(240)
    (tmp_path / "a").mkdir()
    base.to_parquet(tmp_path / "a" / "candles.parquet")
    first = train(tmp_path / "a", tmp_path / "ma", tmp_path / "ca", HPS, log=lambda _: None)
    report = json.loads((tmp_path / "ma" / "evaluation.json").read_text())
    eval_start = pd.Timestamp(report["window"]["start"])
    changed = base.copy()
    # the evaluation window's candles (from its first label candle on) become a different market
    later = changed["ts"] >= eval_start
    changed.loc[later, ["open", "high", "low", "close"]] *= np.linspace(1, 2, later.sum())[:, None]
    (tmp_path / "b").mkdir()
    changed.to_parquet(tmp_path / "b" / "candles.parquet")
    second = train(tmp_path / "b", tmp_path / "mb", tmp_path / "cb", HPS, log=lambda _: None)
    assert first["history"] == second["history"]          # training and validation saw none of it
    assert baseline.load(tmp_path / "ma") == baseline.load(tmp_path / "mb")
    import torch

    a = torch.load(tmp_path / "ma" / "model.pt", weights_only=True)
    b = torch.load(tmp_path / "mb" / "model.pt", weights_only=True)
    assert all(torch.equal(a[k], b[k]) for k in a)
    # ... while the evaluation itself did change
    assert first["eval_buy_and_hold_total_return"] != second["eval_buy_and_hold_total_return"]


def test_entry_point_writes_the_evaluation_of_model_baseline_and_benchmarks(tmp_path, synthetic_candles):
    (tmp_path / "ch").mkdir()
    synthetic_candles(240).to_parquet(tmp_path / "ch" / "candles.parquet")
    metrics = train(tmp_path / "ch", tmp_path / "m", tmp_path / "ck", HPS, log=lambda _: None)
    report = json.loads((tmp_path / "m" / "evaluation.json").read_text())
    preds = json.loads((tmp_path / "m" / "evaluation_predictions.json").read_text())
    assert set(report["strategies"]) == {"model", "baseline", "buy_and_hold", "always_long"}
    assert report["config"]["fee_bps"] == 10
    assert report["window"]["samples"] == metrics["n_eval"] == len(preds["label_ts"]) == len(preds["model"])
    assert pd.Timestamp(report["seen_until"]) < pd.Timestamp(report["window"]["start"])
    # the written metrics are reproducible from the written predictions
    again = evaluate({"model": np.array(preds["model"]), "baseline": np.array(preds["baseline"])},
                     np.array(preds["ret"]), EvaluationConfig(**report["config"]), "1h")
    assert again == report["strategies"]
    assert metrics["eval_model_sharpe"] == report["strategies"]["model"]["sharpe"]
    assert metrics["code_version"].startswith(("git:", "candleflow==")) or metrics["code_version"] == "unknown"


# ---- the baseline --------------------------------------------------------------------------------
def test_baseline_learns_a_linear_signal_and_round_trips_as_json(tmp_path):
    rng = np.random.default_rng(1)
    X = rng.normal(size=(400, 4, 3)).astype(np.float32)
    y = (X[:, -1, 0] + 0.1 * rng.normal(size=400) > 0).astype(np.float32)
    params = baseline.fit(X[:300], y[:300], seed=0)
    assert params["kind"] == "logistic_regression"
    accuracy = np.mean((baseline.predict_proba(params, X[300:]) > 0.5) == (y[300:] > 0.5))
    assert accuracy > 0.85
    baseline.save(params, tmp_path)
    np.testing.assert_allclose(baseline.predict_proba(baseline.load(tmp_path), X[300:]),
                               baseline.predict_proba(params, X[300:]))
    from sklearn.linear_model import LogisticRegression

    flat = X[:300].reshape(300, -1).astype(np.float64)
    mean, std = flat.mean(0), flat.std(0)
    reference = LogisticRegression(max_iter=1000, random_state=0).fit((flat - mean) / std, y[:300])
    np.testing.assert_allclose(baseline.predict_proba(params, X[300:]),
                               reference.predict_proba((X[300:].reshape(100, -1) - mean) / std)[:, 1], rtol=1e-6)


def test_baseline_with_one_class_predicts_that_class_and_checks_the_input_size():
    params = baseline.fit(np.zeros((10, 2, 3)), np.ones(10), seed=0)
    assert params["kind"] == "constant"
    np.testing.assert_array_equal(baseline.predict_proba(params, np.zeros((2, 2, 3))), [1.0, 1.0])
    with pytest.raises(ValueError, match="windows of 6 numbers, got 9"):
        baseline.predict_proba(params, np.zeros((2, 3, 3)))


# ---- the features table as the dataset ------------------------------------------------------------
def features_frame(synthetic_candles, n: int = 400, seed: int = 0) -> pd.DataFrame:
    """What features.load_training_frame returns, computed by candleflow.features itself."""
    from candleflow import features

    rows = features.compute_features(synthetic_candles(n, seed=seed).drop(columns=["symbol", "timeframe"]), timeframe="1h",
                                     cfg=features.load_config())
    return rows.assign(symbol="BTC", timeframe="1h")


def test_feature_samples_average_exchanges_and_label_the_next_candle(synthetic_candles):
    from candleflow.features import FEATURE_COLUMNS

    rows = features_frame(synthetic_candles, 120)
    s = build_feature_samples(rows, window=5, timeframe="1h")
    per_ts = rows.groupby("ts").mean(numeric_only=True)
    assert s.X.shape[1:] == (5, len(FEATURE_COLUMNS))
    i = 40
    t = pd.Timestamp(int(s.decision_ts[i]), unit="ms", tz="UTC")
    assert s.label_ts[i] == s.decision_ts[i] + 3_600_000
    assert s.ret[i] == pytest.approx(per_ts.loc[t, "label_return"])
    assert s.y[i] == float(per_ts.loc[t, "label_return"] > 0)
    np.testing.assert_allclose(s.X[i, -1], per_ts.loc[t, FEATURE_COLUMNS].to_numpy(dtype=np.float32), rtol=1e-6)
    # the last candle has no next one: no sample ends there
    assert s.decision_ts[-1] < pd.DatetimeIndex(per_ts.index).as_unit("ms").asi8[-1]
    with pytest.raises(ValueError, match="trained on the features table; these are candles"):
        samples_for(synthetic_candles(50), 5, FEATURE_COLUMNS)
    with pytest.raises(ValueError, match="trained on candle features"):
        samples_for(rows, 5, ["ret", "range", "dvol"])


def test_training_on_the_features_table_keeps_the_evaluation_window_out(tmp_path, synthetic_candles):
    from candleflow.features import FEATURE_COLUMNS

    rows = features_frame(synthetic_candles, 400)
    (tmp_path / "a").mkdir()
    rows.to_parquet(tmp_path / "a" / "features.parquet")
    first = train(tmp_path / "a", tmp_path / "ma", tmp_path / "ca", HPS, log=lambda _: None)
    assert first["dataset"] == "features"
    config = json.loads((tmp_path / "ma" / "model_config.json").read_text())
    assert config["features"] == list(FEATURE_COLUMNS) and config["n_features"] == len(FEATURE_COLUMNS)
    report = json.loads((tmp_path / "ma" / "evaluation.json").read_text())
    assert set(report["strategies"]) == {"model", "baseline", "buy_and_hold", "always_long"}
    eval_start = pd.Timestamp(report["window"]["start"])
    # every row from the first evaluation label's decision candle on changes (its label is in the window)
    changed = rows.copy()
    later = changed["ts"] >= eval_start - pd.Timedelta(hours=1)
    changed.loc[later, FEATURE_COLUMNS] = changed.loc[later, FEATURE_COLUMNS] * 3 + 1
    changed.loc[later, "label_return"] = -changed.loc[later, "label_return"]
    (tmp_path / "b").mkdir()
    changed.to_parquet(tmp_path / "b" / "features.parquet")
    second = train(tmp_path / "b", tmp_path / "mb", tmp_path / "cb", HPS, log=lambda _: None)
    assert first["history"] == second["history"]
    assert baseline.load(tmp_path / "ma") == baseline.load(tmp_path / "mb")
    assert first["eval_buy_and_hold_total_return"] != second["eval_buy_and_hold_total_return"]


def test_prediction_windows_from_the_features_table_end_at_the_last_candle(synthetic_candles):
    from candleflow.features import FEATURE_COLUMNS
    from candleflow.training.model import windows_for

    rows = features_frame(synthetic_candles, 80)
    X, decision_ts = windows_for(rows, 6, FEATURE_COLUMNS)
    per_ts = rows.groupby("ts").mean(numeric_only=True)
    assert len(X) == len(per_ts) - 6 + 1
    assert decision_ts[-1] == pd.DatetimeIndex(per_ts.index).as_unit("ms").asi8[-1]
    np.testing.assert_allclose(X[-1, -1], per_ts[FEATURE_COLUMNS].iloc[-1].to_numpy(dtype=np.float32), rtol=1e-6)
