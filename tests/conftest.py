"""Shared fixtures."""

from __future__ import annotations

import pytest


@pytest.fixture(scope="session")
def synth_small(tmp_path_factory):
    """Path of a generated 120-subject synthetic cohort (3 mm images, every modality, seed 0)."""
    from adfuse.data.synth import generate

    return generate(tmp_path_factory.mktemp("synth") / "small", n_subjects=120, seed=0)
