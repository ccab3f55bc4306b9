"""On-disk cache of preprocessed trials."""

from __future__ import annotations

import json
import logging
import os
import time
from pathlib import Path

import mne
import numpy as np
import pytest

from bci_qif.cache import CACHE_ENV, TrialCache, cache_key, default_cache_dir, resolve_cache
from bci_qif.datasets import eegbci_files, load_eegbci, load_raw_trials


class _CountingReader:
    """Wraps mne.io.read_raw_edf, counting calls; can be switched to fail."""

    def __init__(self, real):
        self.real, self.calls, self.fail = real, 0, False

    def __call__(self, *args, **kwargs):
        self.calls += 1
        if self.fail:
            raise AssertionError("EDF read although the cache should have been used")
        return self.real(*args, **kwargs)


@pytest.fixture
def reader(monkeypatch):
    counting = _CountingReader(mne.io.read_raw_edf)
    monkeypatch.setattr(mne.io, "read_raw_edf", counting)
    return counting


def test_default_cache_dir(monkeypatch, tmp_path):
    monkeypatch.setenv(CACHE_ENV, str(tmp_path / "explicit"))
    assert default_cache_dir() == tmp_path / "explicit"
    monkeypatch.delenv(CACHE_ENV)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert default_cache_dir() == tmp_path / "xdg" / "bci_qif"
    monkeypatch.delenv("XDG_CACHE_HOME")
    assert default_cache_dir() == Path.home() / ".cache" / "bci_qif"
    assert resolve_cache(False) is None and resolve_cache(None) is None
    assert resolve_cache(tmp_path).directory == tmp_path
    assert resolve_cache(True).directory == Path.home() / ".cache" / "bci_qif"


def test_second_identical_call_reads_no_edf(data_root, tmp_path, reader, caplog):
    cache_dir = tmp_path / "cache"
    t0 = time.perf_counter()
    with caplog.at_level(logging.INFO, logger="bci_qif"):
        cold = load_eegbci(1, data_dir=data_root, cache=cache_dir)
    cold_s = time.perf_counter() - t0
    assert reader.calls == 3  # one EDF per run
    assert "0 from cache, 1 preprocessed from EDF" in caplog.text
    entries = sorted(p.suffix for p in cache_dir.iterdir())
    assert entries == [".json", ".npz"]  # one entry, no temporary files left
    reader.fail = True
    caplog.clear()
    t0 = time.perf_counter()
    with caplog.at_level(logging.INFO, logger="bci_qif"):
        warm = load_eegbci(1, data_dir=data_root, cache=cache_dir)
    warm_s = time.perf_counter() - t0
    assert "1 from cache, 0 preprocessed from EDF" in caplog.text
    np.testing.assert_array_equal(warm.data, cold.data)
    np.testing.assert_array_equal(warm.labels, cold.labels)
    np.testing.assert_array_equal(warm.onsets, cold.onsets)
    assert warm.ch_names == cold.ch_names and warm.config == cold.config
    assert warm_s < cold_s
    # The stored arrays need no pickle, the metadata is plain JSON.
    npz_path = next(cache_dir.glob("*.npz"))
    with np.load(npz_path, allow_pickle=False) as npz:
        assert set(npz.files) == {"data", "labels", "subjects", "runs", "trial_ids", "onsets"}
    meta = json.loads(npz_path.with_suffix(".json").read_text())
    assert meta["trials"]["sfreq"] == 160.0 and meta["info"]["files"][0].endswith("S001R04.edf")


def test_key_changes_with_config_and_files(data_root, tmp_path, reader):
    cache_dir = tmp_path / "cache"
    load_eegbci(1, data_dir=data_root, cache=cache_dir)
    load_eegbci(1, data_dir=data_root, cache=cache_dir, preprocessing={"tmax": 2.0})
    assert reader.calls == 6  # another config: another entry
    assert len(list(cache_dir.glob("*.npz"))) == 2
    # A changed file (new modification time) is a new key.
    files = eegbci_files(1, "left_right_imagery", data_root)
    params = {"x": 1}
    copy = tmp_path / "S001" / files[0].name
    copy.parent.mkdir()
    copy.write_bytes(files[0].read_bytes())
    key = cache_key([copy], params)
    assert cache_key([copy], params) == key
    assert cache_key([copy], {"x": 2}) != key
    os.utime(copy, ns=(0, 10**18))
    assert cache_key([copy], params) != key


def test_corrupt_entry_is_recomputed(data_root, tmp_path, reader, caplog):
    cache_dir = tmp_path / "cache"
    first = load_eegbci(1, data_dir=data_root, cache=cache_dir)
    npz_path = next(cache_dir.glob("*.npz"))
    npz_path.write_bytes(b"not a zip file")
    with caplog.at_level(logging.WARNING, logger="bci_qif"):
        again = load_eegbci(1, data_dir=data_root, cache=cache_dir)
    assert "unreadable cache entry" in caplog.text
    assert reader.calls == 6
    np.testing.assert_array_equal(again.data, first.data)
    assert TrialCache(cache_dir).load(npz_path.stem) is not None  # rewritten


def test_unwritable_cache_does_not_block_loading(data_root, tmp_path, caplog):
    blocker = tmp_path / "a_file"
    blocker.write_text("x")
    with caplog.at_level(logging.WARNING, logger="bci_qif"):
        ts = load_eegbci(1, data_dir=data_root, cache=blocker / "cache")
    assert len(ts) > 0
    assert "Cannot write the cache" in caplog.text


def test_default_cache_goes_to_env_dir_not_data_root(data_root, tmp_path, monkeypatch):
    monkeypatch.setenv(CACHE_ENV, str(tmp_path / "env_cache"))
    before = {p: p.stat().st_mtime_ns for p in data_root.rglob("*")}
    load_eegbci(2, data_dir=data_root)  # cache=True: the default directory
    assert len(list((tmp_path / "env_cache").glob("*.npz"))) == 1
    after = {p: p.stat().st_mtime_ns for p in data_root.rglob("*")}
    assert after == before  # nothing written under the data root


def test_generic_loader_cache(data_root, tmp_path, monkeypatch):
    raw = mne.io.read_raw_edf(eegbci_files(1, "left_right_imagery", data_root)[0], verbose="error")
    path = tmp_path / "run_raw.fif"
    raw.load_data().save(path, verbose="error")
    cache_dir = tmp_path / "cache"
    first = load_raw_trials(path, {"T1": "left", "T2": "right"}, cache=cache_dir)

    def fail(*args, **kwargs):
        raise AssertionError("file read although cached")

    monkeypatch.setattr(mne.io, "read_raw", fail)
    second = load_raw_trials(path, {"T1": "left", "T2": "right"}, cache=cache_dir)
    np.testing.assert_array_equal(first.data, second.data)
