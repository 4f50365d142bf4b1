"""Promotion: does a new version take the alias `champion`, or `challenger`? (pure logic, no MLflow)

The rule (configured in include/config/training.yaml `promotion:`):
  1. the candidate and the current champion are scored on the SAME samples: the candidate's
     held-out evaluation window, minus any candle the champion saw while it was fitted (its
     `seen_until`), so neither is scored on data it trained on;
  2. the candidate must beat the champion on `metric` by `margin` (absolute; for max_drawdown,
     lower by `margin`) over at least `min_samples` shared samples;
  3. and beat every strategy in `must_beat` (baseline, buy_and_hold, always_long) on `metric`
     over the same samples (a strategy without that metric, e.g. buy-and-hold's accuracy, is
     skipped and the reason says so);
  4. with no champion yet, the first version takes the alias when `first_version_champion`
     (the reason records whether it beat the baselines), else only when it beats them.
Anything else leaves the champion where it is and gives the candidate `challenger`. Every
decision carries its reason, the window and the numbers it compared.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime

import numpy as np

from candleflow.config import ConfigError, config_section, number
from candleflow.training.evaluation import EvaluationConfig, evaluate, window_of

CHAMPION = "champion"
CHALLENGER = "challenger"
PROMOTION_METRICS = ("sharpe", "total_return", "directional_accuracy", "max_drawdown")
LOWER_IS_BETTER = {"max_drawdown"}
BASELINES = ("baseline", "buy_and_hold", "always_long")


@dataclass(frozen=True)
class PromotionPolicy:
    metric: str = "sharpe"
    margin: float = 0.1
    must_beat: tuple[str, ...] = BASELINES
    min_samples: int = 24
    first_version_champion: bool = True


def promotion_policy(section: dict | None = None, where: str | None = None) -> PromotionPolicy:
    """The `promotion:` section of include/config/training.yaml (or the given mapping)."""
    section, where = config_section("training.yaml", "promotion", PromotionPolicy, section, where)
    d = PromotionPolicy()
    metric = section.get("metric", d.metric)
    if metric not in PROMOTION_METRICS:
        raise ConfigError(f"{where}: metric {metric!r} is invalid; use one of {', '.join(PROMOTION_METRICS)}")
    must_beat = tuple(section.get("must_beat", d.must_beat) or ())
    bad = [b for b in must_beat if b not in BASELINES]
    if bad:
        raise ConfigError(f"{where}: must_beat lists {', '.join(map(str, bad))}; choose from {', '.join(BASELINES)}")
    margin = number(section, "margin", where, float, 0, None, d.margin)
    min_samples = number(section, "min_samples", where, int, 2, None, d.min_samples)
    first = section.get("first_version_champion", d.first_version_champion)
    if not isinstance(first, bool):
        raise ConfigError(f"{where}: first_version_champion must be true or false, got {first!r}")
    return PromotionPolicy(metric=metric, margin=margin, must_beat=must_beat, min_samples=min_samples,
                           first_version_champion=first)


def beats(metric: str, a: float, b: float, margin: float = 0.0) -> bool:
    """`a` is better than `b` by more than `margin` on `metric`."""
    return a < b - margin if metric in LOWER_IS_BETTER else a > b + margin


@dataclass
class Decision:
    alias: str                      # champion | challenger
    promoted: bool
    reason: str
    metric: str
    margin: float
    window: dict                    # the shared window both were scored on
    strategies: dict                # metrics per strategy over that window (model = the candidate)
    champion_version: str | None    # the champion it was compared with (None: there was none)
    decided_at: str = field(default_factory=lambda: datetime.now(UTC).isoformat())
    version: str | None = None      # filled in when recorded

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict) -> Decision:
        return cls(**{k: data.get(k) for k in cls.__dataclass_fields__})


def shared_samples(label_ts: np.ndarray, champion_prob: np.ndarray | None, champion_seen_until_ms: int | None):
    """Mask of the candidate's evaluation samples the champion can be scored on fairly."""
    mask = np.ones(len(label_ts), dtype=bool)
    if champion_prob is not None:
        mask &= ~np.isnan(champion_prob)
    if champion_seen_until_ms is not None:
        mask &= np.asarray(label_ts) > champion_seen_until_ms
    return mask


def _fmt(metric: str, value) -> str:
    return "n/a" if value is None else f"{metric} {value:.4f}"


def decide(policy: PromotionPolicy, predictions: dict, eval_cfg: EvaluationConfig, timeframe: str, *,
           champion_version: str | None = None, champion_prob: np.ndarray | None = None,
           champion_seen_until_ms: int | None = None, champion_unavailable: str | None = None,
           now: datetime | None = None) -> Decision:
    """Decide for the candidate whose evaluation `predictions` (label_ts, ret, model, baseline; the
    entry point's evaluation_predictions.json) are given; `champion_prob` is the champion's P(up)
    on the same label_ts (NaN where it has no prediction)."""
    m = policy.metric
    label_ts = np.asarray(predictions["label_ts"], dtype=np.int64)
    probs = {"model": np.asarray(predictions["model"], dtype=np.float64),
             "baseline": np.asarray(predictions["baseline"], dtype=np.float64)}
    ret = np.asarray(predictions["ret"], dtype=np.float64)
    has_champion = champion_version is not None
    mask = shared_samples(label_ts, champion_prob if has_champion else None,
                          champion_seen_until_ms if has_champion else None)
    if has_champion and champion_unavailable is None and mask.sum() < policy.min_samples:
        champion_unavailable = (f"only {int(mask.sum())} evaluation samples are after what champion v"
                                f"{champion_version} saw in training (min_samples {policy.min_samples})")
    if has_champion and champion_unavailable is None:
        probs["champion"] = np.asarray(champion_prob, dtype=np.float64)
    else:
        mask = np.ones(len(label_ts), dtype=bool)  # the candidate's whole window, for the record
    strategies = evaluate({k: v[mask] for k, v in probs.items()}, ret[mask], eval_cfg, timeframe)
    window = window_of(label_ts[mask])
    cand = strategies["model"][m]

    lost = []
    notes = []
    for b in policy.must_beat:
        theirs = strategies[b][m]
        if theirs is None:
            notes.append(f"{b} has no {m}: not compared")
        elif not beats(m, cand, theirs):
            lost.append(f"{b} ({_fmt(m, theirs)})")
    baseline_text = (f"beat {', '.join(b for b in policy.must_beat if strategies[b][m] is not None)} on {m}"
                     if not lost else f"did not beat {', '.join(lost)}")
    head = f"candidate {_fmt(m, cand)} on {window['samples']} samples {window['start']} → {window['end']}"

    def made(alias: str, why: str) -> Decision:
        text = f"{why}; {head}; {baseline_text}" + (f" ({'; '.join(notes)})" if notes else "")
        return Decision(alias=alias, promoted=alias == CHAMPION, reason=text, metric=m, margin=policy.margin,
                        window=window, strategies=strategies, champion_version=champion_version,
                        decided_at=(now or datetime.now(UTC)).isoformat())

    if not has_champion:
        if policy.first_version_champion or not lost:
            return made(CHAMPION, "no champion yet: the first version takes the alias"
                        + ("" if not lost else " (first_version_champion) although it lost to a baseline"))
        return made(CHALLENGER, "no champion yet, and the candidate lost to a baseline (first_version_champion off)")
    if champion_unavailable is not None:
        return made(CHALLENGER, f"not comparable with champion v{champion_version}: {champion_unavailable}")
    theirs = strategies["champion"][m]
    if not beats(m, cand, theirs, policy.margin):
        return made(CHALLENGER, f"did not beat champion v{champion_version} ({_fmt(m, theirs)}) by the margin "
                    f"{policy.margin} on the same window")
    if lost:
        return made(CHALLENGER, f"beat champion v{champion_version} ({_fmt(m, theirs)}) by more than "
                    f"{policy.margin} but lost to a baseline")
    return made(CHAMPION, f"beat champion v{champion_version} ({_fmt(m, theirs)}) by more than {policy.margin} "
                "on the same window and beat the baselines")
