"""The oracle of a synthetic cohort: the Bayes-optimal prediction from the planted latents.

``truth.json`` (written by ``adfuse synth``) holds each subject's latent severity ``s`` and the
diagnosis rule: the diagnosis code is ``digitize(s(t) + eta, thresholds)`` into CN < SMC < EMCI <
LMCI < AD, where ``eta ~ N(0, dx_noise_sd)`` is the clinician's variability, fixed per subject and
independent of everything observable. Knowing ``s`` (no model can know more: every modality is a
noisy function of it), the best one can do is the posterior over ``eta``:

    P(code k | s) = Phi((t_k - s) / sd) - Phi((t_{k-1} - s) / sd)

- diagnosis-type tasks (``diagnosis``, ``cn_vs_ad``, ``cn_vs_mci``, ``stage4``): the codes summed
  into the task's classes, renormalised over the classes the task keeps;
- ``smci_vs_pmci``: with eta restricted to the baseline-MCI interval, pMCI when
  ``s_max + eta`` crosses the AD threshold, ``s_max`` the highest latent severity over the
  subject's observed visits up to month 36 (the task's horizon);
- ``progression`` (a regression of noisy, rounded scores): no oracle is computed.

Scores: accuracy, AUC and ECE use the posterior itself (Bayes-optimal for accuracy, and a
monotone transform of each class's likelihood ratio for AUC); balanced accuracy and macro F1 use
the decision ``argmax_k P(k | s) / prior_k`` (the Bayes rule for balanced accuracy), the prior being
the class frequencies among the task's subjects in the cohort.
"""

from __future__ import annotations

import json
from functools import lru_cache
from pathlib import Path

import numpy as np

CODES = ("CN", "SMC", "EMCI", "LMCI", "AD")
CLASS_CODES = {
    "diagnosis": {"CN": ("CN", "SMC"), "MCI": ("EMCI", "LMCI"), "AD": ("AD",)},
    "cn_vs_ad": {"CN": ("CN", "SMC"), "AD": ("AD",)},
    "cn_vs_mci": {"CN": ("CN", "SMC"), "MCI": ("EMCI", "LMCI")},
    "stage4": {"CN": ("CN",), "SMC": ("SMC",), "MCI": ("EMCI", "LMCI"), "AD": ("AD",)},
}
CONVERSION_MONTHS = 36
ORACLE_NOTE = (
    "Bayes posterior given the planted latent severity (clinician noise integrated out); "
    "balanced accuracy with the prior-corrected Bayes rule"
)


@lru_cache(maxsize=4)
def _truth(path: str) -> dict:
    return json.loads(Path(path).read_text())


def load_truth(dataset: str | Path) -> dict | None:
    """``truth.json`` of a synthetic dataset, or None for real data."""
    path = Path(dataset) / "truth.json"
    return _truth(str(path.resolve())) if path.exists() else None


def has_oracle(task: str) -> bool:
    return task in CLASS_CODES or task == "smci_vs_pmci"


def _code_probabilities(truth: dict, severity: np.ndarray) -> np.ndarray:
    """[n, 5] P(code | s) with eta ~ N(0, dx_noise_sd)."""
    from scipy.stats import norm

    sd = float(truth["config"]["dx_noise_sd"])
    thresholds = np.asarray(list(truth["severity"]["thresholds"].values()), dtype=np.float64)
    edges = np.concatenate([[-np.inf], thresholds, [np.inf]])
    if sd == 0:
        codes = np.digitize(severity, thresholds)
        return np.eye(len(CODES))[codes]
    cumulative = norm.cdf((edges[None, :] - severity[:, None]) / sd)
    return np.diff(cumulative, axis=1)


def posterior(truth: dict, task: str, ids: list[str]) -> np.ndarray:
    """[n, classes] oracle probabilities of the subjects ``ids`` (PTIDs) for ``task``."""
    subjects = {row["PTID"]: row for row in truth["subjects"]}
    missing = [i for i in ids if i not in subjects]
    if missing:
        from adfuse.errors import DataError

        raise DataError(f"subject {missing[0]} is not in truth.json", file="truth.json")
    severity = np.asarray([subjects[i]["severity_bl"] for i in ids], dtype=np.float64)
    if task == "smci_vs_pmci":
        return _conversion(truth, ids, severity)
    codes = _code_probabilities(truth, severity)
    groups = CLASS_CODES[task]
    columns = [
        codes[:, [CODES.index(c) for c in members]].sum(axis=1) for members in groups.values()
    ]
    probabilities = np.stack(columns, axis=1)
    total = probabilities.sum(axis=1, keepdims=True)
    return probabilities / np.where(total > 0, total, 1.0)


def _conversion(truth: dict, ids: list[str], severity: np.ndarray) -> np.ndarray:
    from scipy.stats import norm

    sd = float(truth["config"]["dx_noise_sd"])
    t = list(truth["severity"]["thresholds"].values())  # CN|SMC, SMC|EMCI, EMCI|LMCI, LMCI|AD
    peak = {i: -np.inf for i in ids}
    for visit in truth["visits"]:
        if visit["PTID"] in peak and visit["Month"] <= CONVERSION_MONTHS:
            peak[visit["PTID"]] = max(peak[visit["PTID"]], float(visit["severity"]))
    s_max = np.maximum(np.asarray([peak[i] for i in ids]), severity)
    low, high = (t[1] - severity) / sd, (t[3] - severity) / sd  # eta/sd range of baseline MCI
    crossing = np.clip((t[3] - s_max) / sd, low, high)
    mci = norm.cdf(high) - norm.cdf(low)
    converted = norm.cdf(high) - norm.cdf(crossing)
    p_convert = np.where(mci > 0, converted / np.where(mci > 0, mci, 1.0), 0.0)
    return np.stack([1 - p_convert, p_convert], axis=1)


def oracle_scores(
    truth: dict, task: str, ids: list[str], targets: np.ndarray, classes: list[str], prior
) -> dict[str, float]:
    """The oracle's metrics on these subjects (see the module docstring)."""
    from adfuse.metrics import classification_metrics

    probabilities = posterior(truth, task, ids)
    scores = classification_metrics(targets, probabilities, classes)
    weighted = probabilities / np.maximum(np.asarray(prior, dtype=np.float64), 1e-12)
    decided = classification_metrics(
        targets, weighted / weighted.sum(axis=1, keepdims=True), classes
    )
    scores["balanced_accuracy"] = decided["balanced_accuracy"]
    scores["macro_f1"] = decided["macro_f1"]
    return scores
