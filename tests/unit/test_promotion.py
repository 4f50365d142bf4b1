"""Promotion: the rule (champion vs challenger, same window, margin, baselines), its records in the
real MLflow server, `champion_on` and a champion loaded by alias predicting on fresh lake data."""

from __future__ import annotations

import json
import uuid
from datetime import UTC, datetime, timedelta

import mlflow
import numpy as np
import pandas as pd
import pytest

from candleflow import lake, registry
from candleflow.config import ConfigError
from candleflow.training.entrypoint import train
from candleflow.training.evaluation import EvaluationConfig
from candleflow.training.promotion import PromotionPolicy, decide, promotion_policy

CFG = EvaluationConfig(fee_bps=10)
HOUR = 3_600_000


def predictions(n: int = 60, seed: int = 0, model=None) -> dict:
    rng = np.random.default_rng(seed)
    ret = rng.normal(0.0, 0.01, n)
    ts = 1_727_740_800_000 + HOUR * np.arange(n)
    perfect = np.where(ret > 0, 0.9, 0.1)
    return {"label_ts": ts.tolist(), "ret": ret.tolist(),
            "model": (perfect if model is None else model).tolist(), "baseline": np.full(n, 0.3).tolist()}


# ---- the rule ------------------------------------------------------------------------------------
def test_first_version_takes_champion_and_the_reason_says_how_it_did():
    d = decide(PromotionPolicy(), predictions(), CFG, "1h")
    assert (d.alias, d.promoted, d.champion_version) == ("champion", True, None)
    assert "first version" in d.reason and "beat baseline, buy_and_hold, always_long on sharpe" in d.reason
    flat = predictions(model=np.full(60, 0.1))  # never long: sharpe 0
    strict = decide(PromotionPolicy(first_version_champion=False, must_beat=("baseline",)), flat, CFG, "1h")
    assert strict.alias == "challenger" and "did not beat baseline" in strict.reason


def test_candidate_beating_champion_by_the_margin_and_the_baselines_is_promoted():
    p = predictions()
    champion = np.full(60, 0.7)  # always long: trades like buy-and-hold
    d = decide(PromotionPolicy(margin=0.5), p, CFG, "1h", champion_version="3", champion_prob=champion)
    assert d.alias == "champion" and "beat champion v3" in d.reason
    assert d.strategies["model"]["sharpe"] > d.strategies["champion"]["sharpe"] + 0.5
    assert d.window["samples"] == 60


def test_not_beating_the_champion_by_the_margin_is_challenger():
    p = predictions()
    champion = np.where(np.asarray(p["ret"]) > 0, 0.8, 0.2)  # the same perfect calls
    d = decide(PromotionPolicy(margin=0.1), p, CFG, "1h", champion_version="1", champion_prob=champion)
    assert d.alias == "challenger" and not d.promoted
    assert "did not beat champion v1" in d.reason and "margin 0.1" in d.reason


def test_beating_the_champion_but_not_buy_and_hold_is_challenger():
    rng = np.random.default_rng(5)
    n = 60
    ret = np.abs(rng.normal(0.003, 0.001, n))  # a market that only rises: nothing beats holding it
    p = {"label_ts": (HOUR * np.arange(n)).tolist(), "ret": ret.tolist(), "model": np.tile([0.9, 0.1], n // 2).tolist(),
         "baseline": np.full(n, 0.1).tolist()}
    d = decide(PromotionPolicy(metric="total_return", margin=0.0), p, CFG, "1h", champion_version="2",
               champion_prob=np.full(n, 0.1))
    assert d.alias == "challenger"
    assert "lost to a baseline" in d.reason and "buy_and_hold" in d.reason


def test_both_are_scored_only_after_what_the_champion_saw_in_training():
    p = predictions(60)
    ts = np.asarray(p["label_ts"])
    seen = int(ts[19])  # the champion was fitted on labels up to the 20th evaluation candle
    d = decide(PromotionPolicy(margin=0.0, min_samples=10), p, CFG, "1h", champion_version="1",
               champion_prob=np.full(60, 0.7), champion_seen_until_ms=seen)
    assert d.window["samples"] == 40
    assert pd.Timestamp(d.window["start"]).value // 1_000_000 == ts[20]
    # where the champion has no prediction (NaN: its window was longer), the candidate is not scored either
    champion = np.full(60, 0.7)
    champion[:30] = np.nan
    d2 = decide(PromotionPolicy(margin=0.0, min_samples=10), p, CFG, "1h", champion_version="1",
                champion_prob=champion)
    assert d2.window["samples"] == 30


def test_a_champion_that_saw_the_whole_window_cannot_be_beaten_on_it():
    p = predictions(30)
    d = decide(PromotionPolicy(), p, CFG, "1h", champion_version="4", champion_prob=np.full(30, 0.9),
               champion_seen_until_ms=p["label_ts"][-1])
    assert d.alias == "challenger" and "not comparable with champion v4" in d.reason and "only 0" in d.reason


def test_policy_config_errors_name_the_field():
    with pytest.raises(ConfigError, match="metric 'profit' is invalid"):
        promotion_policy({"metric": "profit"})
    with pytest.raises(ConfigError, match="must_beat lists coin_flip"):
        promotion_policy({"must_beat": ["coin_flip"]})
    with pytest.raises(ConfigError, match="margin -1.0 must be >= 0"):
        promotion_policy({"margin": -1})
    assert promotion_policy().metric in ("sharpe", "total_return", "directional_accuracy", "max_drawdown")


def test_max_drawdown_promotes_the_lower_one():
    p = predictions()
    d = decide(PromotionPolicy(metric="max_drawdown", margin=0.0, must_beat=()), p, CFG, "1h",
               champion_version="1", champion_prob=np.full(60, 0.7))
    assert d.strategies["model"]["max_drawdown"] < d.strategies["champion"]["max_drawdown"]
    assert d.alias == "champion"


# ---- recorded in MLflow ------------------------------------------------------------------------
HPS = {"epochs": 1, "window": 6, "hidden_size": 4, "learning_rate": 0.01, "batch_size": 32,
       "validation_fraction": 0.25, "holdout_fraction": 0.25, "fee_bps": 10, "min_eval_samples": 10}


def trained_dir(tmp_path, tag: str, candles: pd.DataFrame, seed: int, model_prob=None):
    """A real entry-point model dir; `model_prob(ret)` replaces the candidate's evaluation
    predictions so the decision under test is known in advance (the champion it is compared
    with is always re-scored by its real registered model)."""
    channel = tmp_path / f"ch-{tag}"
    channel.mkdir()
    candles.to_parquet(channel / "candles.parquet")
    model_dir = tmp_path / f"m-{tag}"
    metrics = train(channel, model_dir, tmp_path / f"ck-{tag}", {**HPS, "seed": seed}, log=lambda _: None)
    if model_prob is not None:
        path = model_dir / "evaluation_predictions.json"
        preds = json.loads(path.read_text())
        preds["model"] = model_prob(np.asarray(preds["ret"])).tolist()
        path.write_text(json.dumps(preds))
    return model_dir, metrics


@pytest.fixture(scope="module")
def history(mlflow_server, tmp_path_factory, synthetic_candles):
    tmp = tmp_path_factory.mktemp("promotion")
    symbol = f"P{uuid.uuid4().hex[:6]}".upper()
    candles = synthetic_candles(200, exchanges=("binance", "kraken"))
    policy = PromotionPolicy(metric="sharpe", margin=0.1, min_samples=10)
    day = datetime(2024, 11, 1, tzinfo=UTC)
    versions = {}
    for i, (tag, seed, prob) in enumerate([
        ("v1", 1, None),                                          # the first: champion by bootstrap
        ("v2", 2, lambda r: np.where(r > 0, 0.9, 0.1)),           # calls every candle right: champion
        ("v3", 3, lambda r: np.where(r > 0, 0.1, 0.9)),           # calls every candle wrong: challenger
    ]):
        model_dir, metrics = trained_dir(tmp, tag, candles, seed, prob)
        reg = registry.log_and_register(
            mlflow_server, symbol=symbol, timeframe="1h", model_dir=model_dir, metrics=metrics,
            params={"seed": seed}, lake_sources=[], job_name=f"cf-{symbol.lower()}-{tag}", backend="local")
        decision = registry.promote(mlflow_server, name=reg.name, version=reg.version, model_dir=model_dir,
                                    candles=candles, timeframe="1h", policy=policy,
                                    now=day + timedelta(days=2 * i))
        versions[tag] = (reg, decision, model_dir)
    return symbol, versions, candles, day


def test_aliases_follow_the_decisions(history, mlflow_server):
    symbol, versions, _, _ = history
    name = registry.model_name(symbol, "1h")
    assert [versions[t][1].alias for t in ("v1", "v2", "v3")] == ["champion", "champion", "challenger"]
    client = mlflow.MlflowClient(tracking_uri=mlflow_server)
    assert client.get_model_version_by_alias(name, "champion").version == versions["v2"][0].version
    assert client.get_model_version_by_alias(name, "challenger").version == versions["v3"][0].version
    v2 = versions["v2"][1]
    assert v2.champion_version == versions["v1"][0].version and "beat champion v1" in v2.reason
    assert set(v2.strategies) == {"model", "baseline", "buy_and_hold", "always_long", "champion"}
    assert "did not beat champion v2" in versions["v3"][1].reason


def test_each_decision_is_recorded_on_the_version_and_its_run(history, mlflow_server):
    symbol, versions, _, _ = history
    name = registry.model_name(symbol, "1h")
    client = mlflow.MlflowClient(tracking_uri=mlflow_server)
    reg, decision, _ = versions["v3"]
    mv = client.get_model_version(name, reg.version)
    assert mv.tags["candleflow.decision"] == "challenger"
    assert mv.tags["candleflow.decision_reason"] == decision.reason
    assert mv.tags["candleflow.decided_at"] == decision.decided_at
    stored = mlflow.artifacts.load_dict(f"runs:/{reg.run_id}/promotion/decision.json")
    assert stored == json.loads(json.dumps(decision.to_dict()))
    assert registry.decision_of(mlflow_server, name, reg.version).reason == decision.reason
    # promoting the same version again (a retried task) returns the recorded decision, changes nothing
    again = registry.promote(mlflow_server, name=name, version=reg.version, model_dir=versions["v3"][2],
                             candles=history[2], timeframe="1h", policy=PromotionPolicy(margin=0.0, must_beat=()))
    assert again.decided_at == decision.decided_at and again.alias == "challenger"


def test_champion_on_answers_which_version_and_why(history, mlflow_server):
    symbol, versions, _, day = history
    name = registry.model_name(symbol, "1h")
    assert registry.champion_on(mlflow_server, name, day - timedelta(hours=1)) is None
    first = registry.champion_on(mlflow_server, name, day + timedelta(days=1))
    assert first.version == versions["v1"][0].version and "first version" in first.reason
    assert first.until == versions["v2"][1].decided_at
    # v3 (day + 4) was a challenger: v2 stays champion after it, with v2's reason
    for when in (day + timedelta(days=3), (day + timedelta(days=5)).isoformat()):
        held = registry.champion_on(mlflow_server, name, when)
        assert held.version == versions["v2"][0].version and held.until is None
        assert "beat champion v1" in held.reason
    assert [r["alias"] for r in registry.decision_history(mlflow_server, name)] == ["champion", "champion",
                                                                                      "challenger"]


def test_run_records_lineage_code_version_and_a_signature(history, mlflow_server):
    symbol, versions, _, _ = history
    reg = versions["v1"][0]
    client = mlflow.MlflowClient(tracking_uri=mlflow_server)
    run = client.get_run(reg.run_id)
    assert run.data.tags["candleflow.code_version"] == run.data.params["code_version"]
    assert "eval_model_sharpe" in run.data.metrics and "eval_buy_and_hold_total_return" in run.data.metrics
    assert run.data.params["fee_bps"] == "10.0"
    info = mlflow.models.get_model_info(f"models:/{reg.name}/{reg.version}")
    assert info.signature is not None
    assert info.signature.inputs.inputs[0].shape == (-1, 6, 3)
    evaluation = mlflow.artifacts.load_dict(f"runs:/{reg.run_id}/evaluation/evaluation.json")
    assert set(evaluation["strategies"]) == {"model", "baseline", "buy_and_hold", "always_long"}


def test_champion_loads_by_alias_and_predicts_on_fresh_lake_data(history, mlflow_server, s3_client, bucket,
                                                                  synthetic_candles):
    """Candles that arrive after training land in the lake; the champion scores them."""
    import torch

    from candleflow.training.model import PriceLSTM, prediction_windows

    symbol, versions, _, _ = history
    fresh = synthetic_candles(48, start="2024-10-01", seed=9, exchanges=("binance", "kraken"))
    start, end = datetime(2024, 10, 1, tzinfo=UTC), datetime(2024, 10, 3, tzinfo=UTC)
    for exchange, part in fresh.groupby("exchange"):
        lake.write_batch(s3_client, bucket, part, exchange=exchange, symbol=symbol, timeframe="1h",
                         market=f"{symbol}/USDT", window_start=start, window_end=end)
    from_lake = lake.read(s3_client, bucket, symbol=symbol, timeframe="1h", start=start, end=end)
    assert len(from_lake) == 96

    scored = registry.predict(mlflow_server, symbol, "1h", from_lake)
    # 47 feature rows (the first candle has no previous close) give 42 six-candle windows
    assert len(scored) == 42 and scored["p_up"].between(0, 1).all()
    assert scored["decision_ts"].iloc[-1] == pd.Timestamp("2024-10-02T23:00", tz="UTC")

    # the same numbers as the champion's own weights on the same windows
    model_dir = versions["v2"][2]
    config = json.loads((model_dir / "model_config.json").read_text())
    model = PriceLSTM(config["n_features"], config["hidden_size"])
    model.load_state_dict(torch.load(model_dir / "model.pt", weights_only=True))
    model.eval()
    X, _ = prediction_windows(from_lake, config["window"])
    with torch.no_grad():
        expected = torch.sigmoid(model(torch.from_numpy(X))).numpy()
    np.testing.assert_allclose(scored["p_up"].to_numpy(), expected, rtol=1e-4, atol=1e-6)
