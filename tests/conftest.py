"""Shared fixtures. The environment the tests need (ENVIRONMENT.md) is set here as well as in the
Makefile, so a bare `pytest` behaves like `make test`: no network, no display, no stray files."""

from __future__ import annotations

import os

for _name, _value in {
    "HF_HUB_OFFLINE": "1",
    "TRANSFORMERS_OFFLINE": "1",
    "HF_HUB_DISABLE_PROGRESS_BARS": "1",
    "MPLBACKEND": "Agg",
    "CODECARBON_LOG_LEVEL": "error",
    "TOKENIZERS_PARALLELISM": "false",
    "RAY_USAGE_STATS_ENABLED": "0",
    "RAY_AUTH_MODE": "disabled",
    "RAY_AIR_NEW_OUTPUT": "0",
}.items():
    os.environ.setdefault(_name, _value)

import pytest  # noqa: E402


@pytest.fixture(scope="session")
def synth_small(tmp_path_factory):
    """Path of a generated 120-subject synthetic cohort (3 mm images, every modality, seed 0)."""
    from adfuse.data.synth import generate

    return generate(tmp_path_factory.mktemp("synth") / "small", n_subjects=120, seed=0)
