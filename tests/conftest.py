"""Shared test fixtures. Keep this file small: one fixture per shared need."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

# Memory mappings a test process may hold before compiled programs are released (see below).
MAX_MAPPINGS_KEPT = 25_000


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


@pytest.fixture(autouse=True, scope="module")
def _release_compiled_programs():
    """Drop JAX's compiled programs after a test module once the process maps too much memory.

    The whole suite runs in one process and compiles hundreds of XLA programs; each keeps
    its machine code mapped until it is released, so the mappings grow towards the kernel's
    limit (vm.max_map_count, 65,530 here). Unreleased, XLA aborted while compiling late in the
    suite (``Fatal Python error: Aborted`` in ``backend_compile_and_load``, reproducibly in
    tests/test_training.py, which passes on its own); releasing them fixed it. One module adds
    up to ~20,000 mappings; past the threshold only, modules keep sharing compiled programs
    while that is safe (the suite peaked at ~36,000 mappings).
    """
    yield
    maps = Path("/proc/self/maps")  # Linux; elsewhere nothing to count
    if maps.exists() and maps.read_bytes().count(b"\n") > MAX_MAPPINGS_KEPT:
        import gc

        import jax

        jax.clear_caches()
        gc.collect()
