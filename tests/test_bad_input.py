"""Every bad input gets a clear error naming the file, channel or value, and what to do."""

from __future__ import annotations

import os
import time
from pathlib import Path

import mne
import numpy as np
import pytest
import scipy.io

from bci_qif.currents import to_input_events
from bci_qif.datasets import (
    eegbci_files,
    load_eegbci,
    load_raw_trials,
    load_spike_dataset,
    read_raw_checked,
)
from bci_qif.errors import (
    ChannelError,
    ConfigError,
    CorruptFileError,
    DataError,
    DataNotFoundError,
    SamplingRateError,
)
from bci_qif.preprocessing import PreprocessingConfig, Standardizer, check_channels
from bci_qif.trials import TrialSet

EEGBCI_PARTS = ("MNE-eegbci-data", "files", "eegmmidb", "1.0.0")


def _small_raw(sfreq=100.0, seconds=30.0, names=("C3", "Cz", "C4"), seed=0):
    rng = np.random.default_rng(seed)
    data = rng.standard_normal((len(names), int(sfreq * seconds))) * 1e-5
    raw = mne.io.RawArray(data, mne.create_info(list(names), sfreq, "eeg"), verbose="error")
    raw.set_annotations(mne.Annotations([2, 6, 10, 14, 18, 22], [1] * 6, ["a", "b"] * 3))
    return raw


# ------------------------------------------------------------ missing data
def test_missing_data_root_is_fast_and_says_how_to_get_data(tmp_path):
    t0 = time.perf_counter()
    with pytest.raises(DataNotFoundError) as err:
        load_eegbci(1, data_dir=tmp_path / "nowhere", cache=False)
    assert time.perf_counter() - t0 < 2.0
    msg = str(err.value)
    assert "nowhere" in msg and "does not exist" in msg
    assert "download=True" in msg and "MNE_DATA" in msg and "data_dir" in msg
    assert isinstance(err.value, FileNotFoundError)


def test_missing_subject_files_offline(data_root):
    t0 = time.perf_counter()
    with pytest.raises(DataNotFoundError, match=r"subject 3 lacks run\(s\) \[4, 8, 12\].*S003R04\.edf") as err:
        load_eegbci([1, 3], data_dir=data_root, cache=False)
    assert time.perf_counter() - t0 < 2.0
    assert "Subjects with all runs there: [1, 2, 4" in str(err.value)
    assert "download=True" in str(err.value)


def test_subject_without_requested_runs(data_root):
    # S002 has the left/right runs but not the hands/feet runs in the shared folder.
    with pytest.raises(DataNotFoundError, match=r"subject 2 lacks run\(s\) \[6, 10, 14\]") as err:
        load_eegbci(2, task="hands_feet_imagery", data_dir=data_root, cache=False)
    assert "Subjects with all runs there: [1, 4, 42]" in str(err.value)


def test_download_failure_offline_is_reported(tmp_path, monkeypatch):
    import requests

    calls = []

    def offline(*args, **kwargs):
        calls.append(args)
        raise requests.exceptions.ConnectionError("Failed to resolve 'physionet.org'")

    monkeypatch.setattr(mne.datasets.eegbci, "load_data", offline)
    with pytest.raises(DataNotFoundError, match=r"Could not download .*\[5\].*ConnectionError.*internet"):
        load_eegbci(5, data_dir=tmp_path, download=True, cache=False)
    assert calls and calls[0][0] == [5] and calls[0][1] == [4, 8, 12]


def test_bad_subjects_and_task(data_root):
    with pytest.raises(ConfigError, match="subject 110 does not exist"):
        load_eegbci(110, data_dir=data_root)
    with pytest.raises(ConfigError, match="subject 0 does not exist"):
        load_eegbci([0], data_dir=data_root)
    with pytest.raises(ConfigError, match="repeats"):
        load_eegbci([1, 1], data_dir=data_root)
    with pytest.raises(ConfigError, match="Unknown EEGMMIDB task 'left_right'.*left_right_imagery"):
        load_eegbci(1, task="left_right", data_dir=data_root)


def test_missing_generic_file(tmp_path):
    with pytest.raises(DataNotFoundError, match="missing.fif"):
        load_raw_trials(tmp_path / "missing.fif", {"a": "a"})
    with pytest.raises(DataNotFoundError, match="not a registered spike dataset"):
        load_spike_dataset(tmp_path / "missing.mat")


# ------------------------------------------------------------ corrupt files
@pytest.fixture
def root_with_truncated_edf(data_root, tmp_path):
    base = tmp_path.joinpath(*EEGBCI_PARTS, "S001")
    base.mkdir(parents=True)
    files = eegbci_files(1, "left_right_imagery", data_root)
    full = files[0].read_bytes()
    (base / files[0].name).write_bytes(full[: len(full) // 2])  # interrupted download
    for f in files[1:]:
        os.symlink(f, base / f.name)
    return tmp_path


def test_truncated_edf(root_with_truncated_edf):
    with pytest.raises(CorruptFileError, match=r"S001R04\.edf is corrupt: it is truncated.*download it again"):
        load_eegbci(1, data_dir=root_with_truncated_edf, cache=False)


def test_corrupt_and_empty_files(tmp_path, data_root):
    empty = tmp_path / "empty.edf"
    empty.write_bytes(b"")
    with pytest.raises(CorruptFileError, match="empty.edf is empty"):
        read_raw_checked(empty)
    garbage = tmp_path / "garbage.edf"
    garbage.write_bytes(b"0       " + b"x" * 400)
    with pytest.raises(CorruptFileError, match="garbage.edf is corrupt"):
        read_raw_checked(garbage)
    fif = tmp_path / "broken_raw.fif"
    fif.write_bytes(os.urandom(4096))
    with pytest.raises(CorruptFileError, match=r"Cannot read .*broken_raw\.fif with MNE"):
        load_raw_trials(fif, {"a": "a"}, cache=False)
    mat = tmp_path / "bad.mat"
    mat.write_bytes(b"MATLAB but not really" * 10)
    with pytest.raises(CorruptFileError, match="bad.mat"):
        load_spike_dataset(mat)
    unknown = tmp_path / "other.mat"
    scipy.io.savemat(unknown, {"foo": np.zeros(3)})
    with pytest.raises(DataError, match=r"unknown MATLAB spike layout \(variables \['foo'\]\)"):
        load_spike_dataset(unknown)


# ------------------------------------------------------------ channels
def test_missing_channels(data_root):
    with pytest.raises(ChannelError, match=r"\['C3', 'CPz'\]"):
        check_channels(["Cz", "C4"], ["C3", "Cz", "CPz"])
    with pytest.raises(ChannelError, match=r"missing in .*S001R04\.edf: \['XX9'\]"):
        load_eegbci(1, data_dir=data_root, preprocessing={"channels": ["C3", "XX9"]}, cache=False)


def test_runs_with_different_channels(tmp_path):
    a, b = tmp_path / "a_raw.fif", tmp_path / "b_raw.fif"
    _small_raw().save(a, verbose="error")
    _small_raw(names=("C3", "Cz", "Pz")).save(b, verbose="error")
    with pytest.raises(ChannelError, match="ch_names differ"):
        load_raw_trials([a, b], {"a": "x", "b": "y"}, {"bandpass": (8, 30)}, cache=False)


# ------------------------------------------------------------ sampling rates
def test_sampling_rate_too_low_for_filters(tmp_path):
    path = tmp_path / "slow_raw.fif"
    _small_raw(sfreq=50.0).save(path, verbose="error")
    with pytest.raises(SamplingRateError, match=r"'bandpass' at 30 Hz .*Nyquist.*25 Hz.*slow_raw\.fif.*50 Hz"):
        load_raw_trials(path, {"a": "x", "b": "y"}, cache=False)
    with pytest.raises(SamplingRateError, match="resampled to 40 Hz"):
        load_raw_trials(path, {"a": "x", "b": "y"}, {"resample": 40, "bandpass": (8, 30)}, cache=False)


def test_mixed_sampling_rates(tmp_path):
    a, b = tmp_path / "a_raw.fif", tmp_path / "b_raw.fif"
    _small_raw(sfreq=100.0).save(a, verbose="error")
    _small_raw(sfreq=128.0).save(b, verbose="error")
    with pytest.raises(SamplingRateError, match=r"100 Hz: run 1; 128 Hz: run 2.*resample"):
        load_raw_trials([a, b], {"a": "x", "b": "y"}, cache=False)
    ts = load_raw_trials([a, b], {"a": "x", "b": "y"}, {"resample": 100.0}, cache=False)
    assert ts.sfreq == 100.0 and len(ts) == 12


# ------------------------------------------------------------ NaN / inf
def test_nonfinite_samples(tmp_path):
    raw = _small_raw()
    raw._data[1, 650:700] = np.nan
    path = tmp_path / "nan_raw.fif"
    raw.save(path, verbose="error")
    with pytest.raises(DataError, match=r"nan_raw\.fif: 50 non-finite sample.*'Cz' at 6\.500 s"):
        load_raw_trials(path, {"a": "x", "b": "y"}, {"artefact_policy": "raise"}, cache=False)
    ts = load_raw_trials(path, {"a": "x", "b": "y"}, cache=False)  # default: reject
    assert len(ts) == 5 and ts.config["artefacts"]["total"]["rejected_nonfinite"] == 1
    bad = np.zeros((2, 2, 5), dtype=np.float32)
    bad[1, 0, 3] = np.inf
    with pytest.raises(DataError, match=r"trial 1 .*channel 'x', sample 3"):
        TrialSet(bad, [0, 1], ["a", "b"], [1, 1], [1, 1], [0, 1], [0.0, 1.0], ["x", "y"], 100.0, 0.0)
    with pytest.raises(DataError, match="NaN or inf"):
        Standardizer().fit(bad)
    with pytest.raises(ValueError, match="NaN or inf"):
        to_input_events(bad, 100.0)


# ------------------------------------------------------------ classes and events
def test_class_with_no_trials(tmp_path):
    path = tmp_path / "run_raw.fif"
    _small_raw().save(path, verbose="error")
    with pytest.raises(DataError, match=r"Class\(es\) \['other'\] have no trials.*'a', 'b'"):
        load_raw_trials(path, {"a": "x", "zz": "other"}, cache=False)
    with pytest.raises(DataError, match=r"No events of \['q'\]"):
        load_raw_trials(path, {"q": "x"}, cache=False)


def test_class_emptied_by_artefact_rejection(data_root):
    # A threshold of 1 V calls every EEG channel flat: every trial is rejected.
    with pytest.raises(DataError, match=r"\['left', 'right'\] have no trials in EEGMMIDB subjects \[1\]"):
        load_eegbci(1, data_dir=data_root, preprocessing={"flat_threshold": 1.0}, cache=False)


def test_nwb_class_with_no_trials(tmp_path):
    from datetime import datetime, timezone

    from pynwb import NWBHDF5IO, NWBFile

    nwb = NWBFile("t", "id", datetime(2024, 1, 1, tzinfo=timezone.utc))
    nwb.add_trial_column("condition", "c")
    for i in range(4):
        nwb.add_trial(start_time=float(i), stop_time=i + 0.5, condition="left")
    nwb.add_unit(spike_times=[0.1, 1.2])
    path = tmp_path / "one_class.nwb"
    with NWBHDF5IO(str(path), "w") as io:
        io.write(nwb)
    with pytest.raises(DataError, match=r"\['right'\] have no trials.*one_class\.nwb"):
        load_spike_dataset(path, class_names=["left", "right"], bin_s=0.1, tmax=0.5)
    with pytest.raises(DataError, match="no column 'direction'"):
        load_spike_dataset(path, label_column="direction")


def test_events_outside_the_recording(tmp_path):
    path = tmp_path / "run_raw.fif"
    _small_raw().save(path, verbose="error")  # 30 s, last event at 22 s
    with pytest.raises(DataError, match=r"outside the recording \(0 to 30\.000 s\).*'b' at 22\.000 s.*\[22\.000, 32\.000\)"):
        load_raw_trials(path, {"a": "x", "b": "y"}, {"tmax": 10.0}, cache=False)
    with pytest.raises(DataError, match=r"'a' at 2\.000 s with window \[-1\.000"):
        load_raw_trials(path, {"a": "x", "b": "y"}, {"tmin": -3.0}, cache=False)
    ts = load_raw_trials(path, {"a": "x", "b": "y"}, {"tmax": 10.0, "events_outside": "drop"}, cache=False)
    assert len(ts) == 5 and ts.config["artefacts"]["total"]["dropped_outside"] == 1


def test_annotation_beyond_end_of_edf(tmp_path):
    import edfio

    path = tmp_path / "late.edf"
    mne.export.export_raw(path, _small_raw(), fmt="edf", verbose="error")
    edf = edfio.read_edf(path)
    edf.add_annotations([edfio.EdfAnnotation(45.0, 1.0, "b")])  # after the 30 s of data
    edf.write(path)
    with pytest.raises(DataError, match=r"late\.edf: 1 event annotation\(s\) lie outside.*'b' at 45\.000 s"):
        load_raw_trials(path, {"a": "x", "b": "y"}, cache=False)
    ts = load_raw_trials(path, {"a": "x", "b": "y"}, {"events_outside": "drop"}, cache=False)
    assert len(ts) == 6 and ts.config["artefacts"]["total"]["dropped_outside"] == 1


# ------------------------------------------------------------ config
def test_unknown_and_bad_config_values(data_root):
    with pytest.raises(ConfigError, match=r"'bandpas' \(did you mean 'bandpass'\?\)"):
        PreprocessingConfig.from_dict({"bandpas": [8, 30]})
    with pytest.raises(ConfigError, match=r"Unknown preprocessing config key\(s\): 'foo'"):
        load_eegbci(1, data_dir=data_root, preprocessing={"foo": 1})
    bad_values = [
        ({"tmin": 3.0, "tmax": 1.0}, "tmin < tmax"),
        ({"bandpass": (30, 8)}, "low < high"),
        ({"bandpass": 8}, "pair"),
        ({"filter_bank": [(8, 12), (12, 8)]}, "low < high"),
        ({"filter_bank": []}, "empty"),
        ({"artefact_policy": "ignore"}, "'artefact_policy' must be one of"),
        ({"reference": "median"}, "'reference'"),
        ({"resample": -100}, "'resample' must be > 0"),
        ({"tmax": "3"}, "'tmax' must be a finite number"),
        ({"channels": []}, "non-empty list"),
        ({"channels": ["C3", "C3"]}, "repeats"),
        ({"notch": True}, "'notch'"),
        ({"events_outside": "keep"}, "events_outside"),
        ({"filter_phase": "linear"}, "filter_phase"),
    ]
    for cfg, message in bad_values:
        with pytest.raises(ConfigError, match=message):
            PreprocessingConfig.from_dict(cfg)
    with pytest.raises(ConfigError, match="mapping"):
        PreprocessingConfig.from_dict([("tmin", 0)])
    with pytest.raises(ConfigError, match="event_map keys"):
        load_raw_trials(Path("x.fif"), {"a": "x", 2: "y"})
    with pytest.raises(ConfigError, match="bin_s"):
        load_spike_dataset("kramer_eden_stn_movement", data_dir=data_root, bin_s=0)
    with pytest.raises(ConfigError, match="multiple of the 1 ms"):
        load_spike_dataset("kramer_eden_stn_movement", data_dir=data_root, bin_s=0.0025)


def test_trialset_validation():
    good = dict(
        data=np.zeros((2, 1, 4)),
        labels=[0, 1],
        class_names=["a", "b"],
        subjects=[1, 1],
        runs=[1, 1],
        trial_ids=[0, 1],
        onsets=[0.0, 1.0],
        ch_names=["x"],
        sfreq=10.0,
        tmin=0.0,
    )
    ts = TrialSet(**good)
    assert ts.data.dtype == np.float32 and ts.labels.dtype == np.int64
    for change, message in [
        ({"labels": [0, 2]}, r"label 2 of trial 1 is outside class_names"),
        ({"labels": [0]}, "one entry per trial"),
        ({"trial_ids": [3, 3]}, "unique"),
        ({"ch_names": ["x", "y"]}, "1 channels in data but 2 names"),
        ({"data": np.zeros((2, 4))}, r"\(n_trials, n_channels, n_times\)"),
        ({"sfreq": 0.0}, "sfreq"),
        ({"labels": [0.5, 1.0]}, "integers"),
        ({"config": {"x": object()}}, "JSON"),
    ]:
        with pytest.raises(DataError, match=message):
            TrialSet(**{**good, **change})
    with pytest.raises(DataError, match="out of range"):
        ts.subset([5])
    assert len(ts.subset([True, False])) == 1 and ts.subset([1]).trial_ids.tolist() == [1]
