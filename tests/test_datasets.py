"""Dataset loaders on the real shared recordings (and small files written at run time)."""

from __future__ import annotations

import os
from pathlib import Path

import mne
import numpy as np
import pytest
import scipy.io

from bci_qif.datasets import (
    DATASETS,
    EEGBCI_TASKS,
    available_subjects,
    eegbci_files,
    list_datasets,
    load_eegbci,
    load_raw_trials,
    load_spike_dataset,
    resolve_data_root,
)
from bci_qif.errors import SamplingRateError
from bci_qif.trials import TrialSet

EEGBCI_PARTS = ("MNE-eegbci-data", "files", "eegmmidb", "1.0.0")


def _annotation_counts(path: Path) -> dict[str, int]:
    ann = mne.read_annotations(path)
    return {d: int(np.sum(ann.description == d)) for d in ("T0", "T1", "T2")}


@pytest.fixture(scope="module")
def subject1(data_root) -> TrialSet:
    return load_eegbci(1, data_dir=data_root, cache=False)


# ------------------------------------------------------------------ data root
def test_data_root_precedence(monkeypatch, tmp_path):
    monkeypatch.setenv("MNE_DATA", str(tmp_path / "env"))
    assert resolve_data_root(tmp_path / "explicit") == tmp_path / "explicit"
    assert resolve_data_root() == tmp_path / "env"
    monkeypatch.delenv("MNE_DATA")
    # MNE's own default: its config keys (env vars count), then ~/mne_data.
    monkeypatch.setenv("MNE_DATASETS_EEGBCI_PATH", str(tmp_path / "mnecfg"))
    assert resolve_data_root() == tmp_path / "mnecfg"
    monkeypatch.delenv("MNE_DATASETS_EEGBCI_PATH")
    monkeypatch.setattr(mne, "get_config", lambda key, *a, **k: None)
    assert resolve_data_root() == Path("~/mne_data").expanduser()


def test_registry_and_layout(data_root):
    assert set(list_datasets()) == {
        "eegmmidb",
        "kramer_eden_stn_movement",
        "kramer_eden_hippocampus_place",
    }
    for info in DATASETS.values():
        assert (data_root / info.relpath).exists(), info.relpath
        assert info.licence and info.source
    files = eegbci_files(1, "left_right_imagery", data_root)
    assert [f.name for f in files] == ["S001R04.edf", "S001R08.edf", "S001R12.edf"]
    # The shared folder: 17 subjects with left/right runs, 3 of them with hands/feet runs.
    assert len(available_subjects("left_right_imagery", data_root)) == 17
    assert available_subjects("hands_feet_imagery", data_root) == [1, 4, 42]
    readme = Path(__file__).resolve().parents[1] / "datasets" / "README.md"
    text = readme.read_text()
    for name in DATASETS:
        assert name in text


# ------------------------------------------------------------------ EEGMMIDB
def test_eegbci_trials_match_annotations(subject1, data_root):
    ts = subject1
    files = eegbci_files(1, "left_right_imagery", data_root)
    counts = [_annotation_counts(f) for f in files]
    n_left = sum(c["T1"] for c in counts)
    n_right = sum(c["T2"] for c in counts)
    assert len(ts) == n_left + n_right
    assert 40 <= len(ts) <= 50  # about 45 per subject (MANIFEST)
    assert ts.class_names == ["left", "right"]
    assert ts.class_counts() == {"left": n_left, "right": n_right}
    for f, c in zip(files, counts):
        run = int(f.stem[-2:])
        sel = ts.runs == run
        assert np.sum(ts.labels[sel] == 0) == c["T1"]
        assert np.sum(ts.labels[sel] == 1) == c["T2"]
        ann = mne.read_annotations(f)
        cue = np.sort(ann.onset[np.isin(ann.description, ["T1", "T2"])])
        np.testing.assert_allclose(np.sort(ts.onsets[sel]), cue, atol=1 / 160)
    assert set(ts.runs.tolist()) == {4, 8, 12}
    assert np.all(ts.subjects == 1)
    assert len(np.unique(ts.trial_ids)) == len(ts)


def test_eegbci_shapes_names_and_values(subject1):
    ts = subject1
    assert ts.sfreq == 160.0
    assert ts.tmin == 0.0
    assert ts.data.shape == (len(ts), 64, 480)  # 0-3 s, tmax exclusive
    assert ts.data.dtype == np.float32
    assert ts.labels.dtype == np.int64 and ts.onsets.dtype == np.float64
    # Channel names standardized to 10-05 names (no trailing dots, proper case).
    names_1005 = "colin27_1005" if "colin27_1005" in mne.channels.get_builtin_montages() else "standard_1005"
    montage_names = set(mne.channels.make_standard_montage(names_1005).ch_names)
    assert set(ts.ch_names) <= montage_names
    assert {"C3", "Cz", "C4", "FCz", "Fp1", "Iz"} <= set(ts.ch_names)
    assert not any("." in ch for ch in ts.ch_names)
    # Band-passed EEG in volts: zero mean, microvolt amplitudes.
    std = ts.data.std(axis=(0, 2))
    assert np.all(std > 1e-7) and np.all(std < 1e-4)
    assert abs(float(ts.data.mean())) < 1e-6
    cfg = ts.config
    assert cfg["preprocessing"]["bandpass"] == [8.0, 30.0]
    assert cfg["dataset"]["task"] == "left_right_imagery"
    assert cfg["dataset"]["runs"] == [4, 8, 12]
    assert cfg["artefacts"]["total"]["n_trials"] == len(ts)
    epochs = ts.to_epochs()
    assert len(epochs) == len(ts) and epochs.info["sfreq"] == 160.0
    assert list(epochs.metadata["trial_id"]) == ts.trial_ids.tolist()


def test_eegbci_hands_feet_and_channel_subset(data_root):
    ts = load_eegbci(
        [1],
        task="hands_feet_imagery",
        data_dir=data_root,
        preprocessing={"channels": ["C3", "Cz", "C4"], "tmin": -0.5, "tmax": 2.0},
        cache=False,
    )
    assert ts.class_names == ["hands", "feet"]
    assert set(ts.runs.tolist()) == set(EEGBCI_TASKS["hands_feet_imagery"].runs)
    assert ts.ch_names == ["C3", "Cz", "C4"]
    assert ts.data.shape[1:] == (3, 400)
    assert ts.tmin == -0.5
    assert 40 <= len(ts) <= 50


def test_eegbci_two_subjects_pooled(data_root, subject1):
    ts = load_eegbci([1, 2], data_dir=data_root, cache=False)
    assert sorted(set(ts.subjects.tolist())) == [1, 2]
    np.testing.assert_array_equal(ts.data[ts.subjects == 1], subject1.data)
    assert np.array_equal(ts.trial_ids, np.arange(len(ts)))
    for s in (1, 2):
        counts = np.bincount(ts.labels[ts.subjects == s], minlength=2)
        assert abs(int(counts[0]) - int(counts[1])) <= 4  # balanced design


@pytest.fixture(scope="module")
def root_with_128hz_subject(data_root, tmp_path_factory):
    """A data root with subject 1 (160 Hz) and a 128 Hz 'subject 88' made from it."""
    root = tmp_path_factory.mktemp("root128")
    base = root.joinpath(*EEGBCI_PARTS)
    (base / "S001").mkdir(parents=True)
    (base / "S088").mkdir()
    for src in eegbci_files(1, "left_right_imagery", data_root):
        os.symlink(src, base / "S001" / src.name)
        raw = mne.io.read_raw_edf(src, preload=True, verbose="error")
        raw.resample(128.0, verbose="error")
        mne.export.export_raw(
            base / "S088" / src.name.replace("S001", "S088"), raw, fmt="edf", verbose="error"
        )
    return root


def test_eegbci_128hz_subject(root_with_128hz_subject):
    ts = load_eegbci(88, data_dir=root_with_128hz_subject, cache=False)
    assert ts.sfreq == 128.0 and ts.n_times == 384
    ts = load_eegbci(88, data_dir=root_with_128hz_subject, preprocessing={"resample": 160}, cache=False)
    assert ts.sfreq == 160.0 and ts.n_times == 480


def test_eegbci_mixed_rates(root_with_128hz_subject):
    with pytest.raises(SamplingRateError, match=r"128 Hz.*160 Hz.*resample"):
        load_eegbci([1, 88], data_dir=root_with_128hz_subject, cache=False)
    ts = load_eegbci(
        [1, 88], data_dir=root_with_128hz_subject, preprocessing={"resample": 160.0}, cache=False
    )
    assert ts.sfreq == 160.0
    a, b = ts.data[ts.subjects == 1], ts.data[ts.subjects == 88]
    assert a.shape == b.shape
    # Same recording through 128 Hz and back: the 8-30 Hz signal survives.
    corr = np.corrcoef(a[:, 10].ravel(), b[:, 10].ravel())[0, 1]
    assert corr > 0.9


# ---------------------------------------------------------------- generic files
@pytest.fixture(scope="module")
def real_run(data_root):
    path = eegbci_files(1, "left_right_imagery", data_root)[0]
    raw = mne.io.read_raw_edf(path, preload=True, verbose="error")
    mne.datasets.eegbci.standardize(raw)
    return raw


@pytest.mark.parametrize("fmt", ["fif", "edf"])
def test_load_raw_trials_from_annotations(real_run, tmp_path, fmt):
    path = tmp_path / f"run_raw.{fmt}"
    if fmt == "fif":
        real_run.save(path, verbose="error")
    else:
        mne.export.export_raw(path, real_run, fmt="edf", verbose="error")
    ts = load_raw_trials(path, {"T1": "left", "T2": "right"}, subject=7, cache=False)
    counts = _annotation_counts(Path(real_run.filenames[0]))
    assert ts.class_counts() == {"left": counts["T1"], "right": counts["T2"]}
    assert ts.data.shape[1:] == (64, 480)
    assert np.all(ts.subjects == 7) and np.all(ts.runs == 1)
    assert ts.config["dataset"]["events_from"] == "annotations"


def test_load_raw_trials_from_stim_channel(real_run, tmp_path):
    events, _ = mne.events_from_annotations(
        real_run, event_id={"T1": 2, "T2": 3}, verbose="error"
    )
    raw = real_run.copy().pick(["C3", "Cz", "C4"])
    stim = np.zeros((1, raw.n_times))
    stim[0, events[:, 0]] = events[:, 2]
    raw.add_channels(
        [mne.io.RawArray(stim, mne.create_info(["STI"], raw.info["sfreq"], "stim"), verbose="error")]
    )
    raw.set_annotations(None)
    path = tmp_path / "stim_raw.fif"
    raw.save(path, verbose="error")
    ts = load_raw_trials(path, {2: "left", 3: "right"}, cache=False)
    assert ts.ch_names == ["C3", "Cz", "C4"]  # the stim channel is not data
    assert ts.class_counts() == {
        "left": int(np.sum(events[:, 2] == 2)),
        "right": int(np.sum(events[:, 2] == 3)),
    }
    assert ts.config["dataset"]["events_from"] == "stim channel"


def test_load_raw_trials_several_runs(real_run, tmp_path):
    paths = []
    for i in range(2):
        p = tmp_path / f"r{i}_raw.fif"
        real_run.copy().crop(0, 60).save(p, verbose="error")
        paths.append(p)
    # The crop cuts the window of the last cue: dropped (and counted) on request.
    ts = load_raw_trials(
        paths,
        {"T1": "left", "T2": "left", "T0": "rest"},
        {"events_outside": "drop"},
        cache=False,
    )
    assert ts.class_names == ["left", "rest"]
    assert ts.config["artefacts"]["total"]["dropped_outside"] == 2
    assert set(ts.runs.tolist()) == {1, 2}
    assert np.sum(ts.runs == 1) == np.sum(ts.runs == 2)


# ------------------------------------------------------------------ spike data
def test_stn_spike_dataset(data_root):
    mat = scipy.io.loadmat(data_root / DATASETS["kramer_eden_stn_movement"].relpath)
    ts = load_spike_dataset("kramer_eden_stn_movement", data_dir=data_root)
    assert len(ts) == 50 and ts.class_names == ["left", "right"]
    np.testing.assert_array_equal(ts.labels, mat["direction"].ravel())
    assert ts.class_counts() == {"left": 25, "right": 25}
    assert ts.data.shape == (50, 1, 200) and ts.sfreq == 100.0 and ts.tmin == -1.0
    np.testing.assert_array_equal(ts.data.sum(axis=(1, 2)), mat["train"].sum(axis=1))
    fine = load_spike_dataset("kramer_eden_stn_movement", data_dir=data_root, bin_s=0.001)
    np.testing.assert_array_equal(fine.data[:, 0, :], mat["train"])
    window = load_spike_dataset(
        "kramer_eden_stn_movement", data_dir=data_root, bin_s=0.05, tmin=0.0, tmax=0.5
    )
    assert window.data.shape == (50, 1, 10)
    np.testing.assert_array_equal(window.data.sum(axis=(1, 2)), mat["train"][:, 1000:1500].sum(axis=1))
    # The same file by path.
    by_path = load_spike_dataset(data_root / DATASETS["kramer_eden_stn_movement"].relpath)
    np.testing.assert_array_equal(by_path.data, ts.data)


def test_place_cell_spike_dataset(data_root):
    mat = scipy.io.loadmat(data_root / DATASETS["kramer_eden_hippocampus_place"].relpath)
    ts = load_spike_dataset("kramer_eden_hippocampus_place", data_dir=data_root, window_s=1.0)
    spikes = mat["spiketimes"].ravel()
    t, x = mat["t"].ravel(), mat["X"].ravel()
    assert ts.data.shape == (len(ts), 1, 100)
    assert 170 <= len(ts) <= 178
    # Every spike inside the covered span is counted once.
    end = ts.onsets[-1] + 1.0
    assert ts.data.sum() == np.sum((spikes >= ts.onsets[0]) & (spikes < end))
    # Labels are the track half of the mean position in each window.
    mid = (x.min() + x.max()) / 2
    for i in (0, len(ts) // 2, len(ts) - 1):
        sel = (t >= ts.onsets[i]) & (t < ts.onsets[i] + 1.0)
        assert ts.labels[i] == int(x[sel].mean() >= mid)
    assert set(ts.class_names) == {"0-50cm", "50-100cm"}
    assert min(ts.class_counts().values()) > 30


def _write_nwb(path: Path, rng) -> tuple[list[np.ndarray], list[str], np.ndarray]:
    from datetime import datetime, timezone

    from pynwb import NWBHDF5IO, NWBFile
    from pynwb.file import Subject

    nwb = NWBFile(
        session_description="test",
        identifier="bci-qif-test",
        session_start_time=datetime(2024, 1, 1, tzinfo=timezone.utc),
        subject=Subject(subject_id="3", species="Mus musculus"),
    )
    nwb.add_trial_column("condition", "movement direction")
    starts = np.arange(12) * 2.0 + 1.0
    conditions = ["left", "right"] * 6
    for start, cond in zip(starts, conditions):
        nwb.add_trial(start_time=start, stop_time=start + 1.5, condition=cond)
    units = [np.sort(rng.uniform(0, 26, size=n)) for n in (40, 80, 5)]
    for spikes in units:
        nwb.add_unit(spike_times=spikes)
    with NWBHDF5IO(str(path), "w") as io:
        io.write(nwb)
    return units, conditions, starts


def test_nwb_spike_dataset(tmp_path):
    rng = np.random.default_rng(0)
    path = tmp_path / "session.nwb"
    units, conditions, starts = _write_nwb(path, rng)
    ts = load_spike_dataset(path, bin_s=0.1, tmin=-0.5, tmax=1.0)
    assert ts.class_names == ["left", "right"]
    np.testing.assert_array_equal(ts.labels, [c == "right" for c in conditions])
    assert ts.data.shape == (12, 3, 15)
    assert ts.ch_names == ["unit0", "unit1", "unit2"] and np.all(ts.subjects == 3)
    for u, spikes in enumerate(units):
        for i, s in enumerate(starts):
            expected = np.histogram(spikes, bins=s - 0.5 + np.arange(16) * 0.1)[0]
            np.testing.assert_array_equal(ts.data[i, u], expected)
    default = load_spike_dataset(path, bin_s=0.1)
    assert default.data.shape == (12, 3, 15) and default.tmin == 0.0  # up to the shortest trial
