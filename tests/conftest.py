"""Shared test fixtures. Keep this file small: one fixture per shared need."""

from __future__ import annotations

import os
from pathlib import Path

import pytest


@pytest.fixture(scope="session")
def data_root() -> Path:
    """The shared datasets folder: env MNE_DATA, else ../shared/datasets beside the repo."""
    env = os.environ.get("MNE_DATA")
    if env:
        return Path(env)
    return Path(__file__).resolve().parents[2] / "shared" / "datasets"


@pytest.fixture(autouse=True, scope="session")
def _isolated_trial_cache(tmp_path_factory):
    """Point BCI_QIF_CACHE at a temporary folder so tests never touch a user cache."""
    mp = pytest.MonkeyPatch()
    mp.setenv("BCI_QIF_CACHE", str(tmp_path_factory.mktemp("bci_qif_cache")))
    yield
    mp.undo()
