"""The baseline: logistic regression (scikit-learn) on the LSTM's own windows, flattened.

It is fitted on the training samples only (its standardisation too), so it sees exactly what the
LSTM sees; a missing input (NaN) counts as the training mean. It is stored as plain JSON numbers (`baseline.json` in the model directory), not a
pickle, and predicts with numpy alone.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

BASELINE_FILE = "baseline.json"


def fit(X: np.ndarray, y: np.ndarray, seed: int, C: float = 1.0) -> dict:
    """Fit on windows `X` [n, window, features] and labels `y`; return the JSON-safe parameters."""
    from sklearn.linear_model import LogisticRegression

    flat = np.asarray(X, dtype=np.float64).reshape(len(X), -1)
    y = np.asarray(y).astype(int)
    mean, scale = nan_mean_std(flat, floor=1e-12)
    classes = np.unique(y)
    if len(classes) < 2:
        # one class only: the honest model is the constant it saw
        return {"kind": "constant", "p_up": float(classes[0]) if len(classes) else 0.5,
                "n_inputs": int(flat.shape[1])}
    clf = LogisticRegression(C=C, max_iter=1000, random_state=seed)
    clf.fit(_standardise(flat, mean, scale), y)
    return {"kind": "logistic_regression", "C": C, "n_inputs": int(flat.shape[1]), "mean": mean.tolist(),
            "scale": scale.tolist(), "coef": clf.coef_[0].tolist(), "intercept": float(clf.intercept_[0])}


def nan_mean_std(flat: np.ndarray, floor: float) -> tuple[np.ndarray, np.ndarray]:
    """Per-column mean and (population) deviation of a 2-D float64 array, NaN/inf ignored; a
    column with no finite value gets 0, one whose deviation is not above `floor` gets scale 1.
    The LSTM's standardisation (candleflow.training.model) uses it too, with its own floor."""
    finite = np.isfinite(flat)
    count = finite.sum(axis=0)
    mean = np.divide(np.where(finite, flat, 0.0).sum(axis=0), count, out=np.zeros(flat.shape[1]), where=count > 0)
    scale = np.sqrt(np.divide((np.where(finite, flat - mean, 0.0) ** 2).sum(axis=0), count,
                              out=np.zeros(flat.shape[1]), where=count > 0))
    scale[~(scale > floor)] = 1.0
    return mean, scale


def _standardise(flat: np.ndarray, mean: np.ndarray, scale: np.ndarray) -> np.ndarray:
    # a missing input (NaN) becomes 0 after standardising: the training mean
    return np.nan_to_num((flat - mean) / scale, nan=0.0, posinf=0.0, neginf=0.0)


def predict_proba(params: dict, X: np.ndarray) -> np.ndarray:
    """P(up) per window."""
    flat = np.asarray(X, dtype=np.float64).reshape(len(X), -1)
    if flat.shape[1] != params["n_inputs"]:
        raise ValueError(f"baseline expects windows of {params['n_inputs']} numbers, got {flat.shape[1]}")
    if params["kind"] == "constant":
        return np.full(len(flat), params["p_up"])
    z = _standardise(flat, np.asarray(params["mean"]), np.asarray(params["scale"])) @ np.asarray(params["coef"])
    return 0.5 * (1.0 + np.tanh(0.5 * (z + params["intercept"])))  # the logistic function, without overflow


def save(params: dict, model_dir: Path) -> Path:
    path = Path(model_dir) / BASELINE_FILE
    path.write_text(json.dumps(params))
    return path


def load(model_dir: Path) -> dict:
    return json.loads((Path(model_dir) / BASELINE_FILE).read_text())
