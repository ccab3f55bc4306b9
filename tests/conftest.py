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


@pytest.fixture(scope="session")
def model_path(tmp_path_factory, data_root) -> Path:
    """A small QIF decoder trained once per session on subject 1 (real-time and GUI tests)."""
    from bci_qif import QIFClassifier
    from bci_qif.datasets import load_eegbci

    path = tmp_path_factory.getbasetemp() / "realtime_model" / "model.npz"
    if not path.exists():
        trials = load_eegbci([1], data_dir=data_root)
        # Two members: the real-time path decodes with an ensemble, as the shipped default does.
        small = dict(hidden_layer_sizes=(16,), batch_size=15, readout_tau=5.0, learning_rate=3e-2, epochs=2,
                     n_members=2)
        clf = QIFClassifier(**small).fit(trials.to_epochs(), trials.labels)
        path.parent.mkdir(exist_ok=True)
        clf.save(path, context={"preprocessing": trials.config, "class_names": trials.class_names,
                                "subjects": [1]})
    return path
