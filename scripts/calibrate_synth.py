"""Refit the score maps of ``adfuse.data.synth`` after a change to the latent model.

The disease-process parameters (genetics, ``dx_noise_sd``, progression rates) are set by hand in
``SynthConfig``; this script then fits each score's knot values (expected score and noise SD at
fixed severity knots) by least squares so that the baseline group means and SDs, and their
24-month change, meet ``CALIBRATION_TARGETS``. It prints the fitted values to paste into
``_synth_config.py`` and the figures they give. Deterministic (fixed seeds).

Usage: ``python scripts/calibrate_synth.py [--subjects 60000] [--scores MMSE,CDRSB]``
"""

from __future__ import annotations

import argparse

import numpy as np

from adfuse.data._synth_config import CALIBRATION_TARGETS, ScoreModel, SynthConfig
from adfuse.data._synth_latent import _round_to, _score, simulate

GROUPS = ("CN", "MCI", "AD")
# score -> (config field, target key, rough 24-month change by group used as a soft target)
SCORES = {
    "MMSE": ("mmse", "mmse", {"CN": -0.1, "MCI": -1.5, "AD": -4.5}, 0.3),
    "CDRSB": ("cdrsb", "cdrsb", {"CN": 0.2, "MCI": 1.35, "AD": 3.0}, 2.0),
    "ADAS13": ("adas13", "adas13", {"CN": 0.0, "MCI": 2.5, "AD": 9.0}, 0.3),
    "ADAS_DELTA": ("adas_delta", None, None, 0.0),
    "RAVLT": ("ravlt", "ravlt_immediate", {"CN": -0.5, "MCI": -2.5, "AD": -4.0}, 1.0),
    "FAQ": ("faq", "faq", {"CN": 0.3, "MCI": 3.0, "AD": 8.0}, 0.3),
}
# ADAS13 - ADAS11 targets from the ADAS13 and ADAS11 rows of CALIBRATION_TARGETS.
ADAS_DELTA_TARGET = {"CN": (3.3, 1.8), "MCI": (7.1, 2.4), "AD": (10.3, 2.2)}


def fit_score(model: ScoreModel, target, change_target, change_weight, sample) -> ScoreModel:
    """Least-squares fit of the knot means (monotone) and SDs of one score."""
    from scipy.optimize import least_squares

    config, severity, later, education, groups, trait, noise_0, noise_24 = sample
    direction = 1.0 if model.mean[-1] > model.mean[0] else -1.0
    spread = abs(target["AD"][0] - target["CN"][0])
    n = len(model.knots)

    def unpack(p) -> ScoreModel:
        mean = model.mean[0] + direction * np.concatenate([[0], np.cumsum(np.exp(p[: n - 1]))])
        return model.model_copy(update={"mean": tuple(mean), "sd": tuple(np.exp(p[n - 1 :]))})

    def observe(candidate: ScoreModel, at, noise):
        return _round_to(_score(candidate, at, education, trait, noise, config), model.step)

    def residuals(p):
        candidate = unpack(p)
        before, after = observe(candidate, severity, noise_0), observe(candidate, later, noise_24)
        out = []
        for g in GROUPS:
            mean, sd = target[g]
            values = before[groups[g]]
            out += [
                (values.mean() - mean) / (0.01 * spread + 0.02),
                (values.std() - sd) / (0.03 * spread + 0.1 * sd + 0.02),
            ]
            if change_target:
                change = (after - before)[groups[g]].mean()
                out.append(change_weight * (change - change_target[g]) / (0.05 * spread + 0.05))
        out += list(np.diff(p[: n - 1], 2)) + list(0.3 * np.diff(p[n - 1 :], 2))
        return np.asarray(out)

    start = np.r_[
        np.log(np.maximum(np.abs(np.diff(model.mean)), 0.01)), np.log(np.maximum(model.sd, 0.01))
    ]
    return unpack(least_squares(residuals, start, diff_step=0.02, max_nfev=300).x)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--subjects", type=int, default=60_000)
    parser.add_argument("--scores", default=",".join(SCORES))
    args = parser.parse_args()

    config = SynthConfig()
    subjects = simulate(config, args.subjects, seed=7).subjects
    severity = subjects["severity_bl"].to_numpy()
    later = severity + 2.0 * subjects["rate"].to_numpy()
    education = subjects["PTEDUCAT"].to_numpy().astype(float)
    groups = {g: (subjects["group"] == g).to_numpy() for g in GROUPS}
    rng = np.random.default_rng(3)
    trait, noise_0, noise_24 = (rng.standard_normal(len(subjects)) for _ in range(3))
    sample = (config, severity, later, education, groups, trait, noise_0, noise_24)

    for name in args.scores.split(","):
        field, target_key, change_target, change_weight = SCORES[name]
        model: ScoreModel = getattr(config, field)
        target = (
            ADAS_DELTA_TARGET if target_key is None else CALIBRATION_TARGETS[target_key]["target"]
        )
        fitted = fit_score(model, target, change_target, change_weight, sample)
        before = _round_to(_score(fitted, severity, education, trait, noise_0, config), model.step)
        after = _round_to(_score(fitted, later, education, trait, noise_24, config), model.step)
        print(f"{field}: mean={tuple(np.round(fitted.mean, 2).tolist())}")
        print(f"{' ' * len(field)}    sd={tuple(np.round(fitted.sd, 2).tolist())}")
        for g in GROUPS:
            values = before[groups[g]]
            change = (after - before)[groups[g]].mean()
            print(
                f"   {g:<4} {values.mean():7.2f} +- {values.std():5.2f}   24-month change {change:+.2f}"
            )


if __name__ == "__main__":
    main()
