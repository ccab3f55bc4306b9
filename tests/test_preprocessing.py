"""Preprocessing: config, filters, epoching, artefacts, standardization, windows."""

from __future__ import annotations

import json

import mne
import numpy as np
import pytest
from sklearn.base import clone
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import FunctionTransformer

from bci_qif.errors import ChannelError, ConfigError, DataError
from bci_qif.preprocessing import (
    PreprocessingConfig,
    Standardizer,
    band_channel_names,
    check_channels,
    epoch_raw,
    preprocess_raw,
    sliding_windows,
)

SFREQ = 160.0
CHANNELS = ["FC3", "FCz", "FC4", "C3", "Cz", "C4", "CP3", "CPz", "CP4"]


def make_raw(data=None, *, seconds=20.0, sfreq=SFREQ, montage=True, seed=0):
    """A small EEG recording with realistic names and positions."""
    n = int(seconds * sfreq)
    if data is None:
        rng = np.random.default_rng(seed)
        data = rng.standard_normal((len(CHANNELS), n)) * 1e-5
    info = mne.create_info(CHANNELS[: data.shape[0]], sfreq, "eeg")
    raw = mne.io.RawArray(data, info, verbose="error")
    if montage:
        name = "colin27_1005" if "colin27_1005" in mne.channels.get_builtin_montages() else "standard_1005"
        raw.set_montage(name, verbose="error")
    return raw


def sines(freqs_amps, seconds=20.0, sfreq=SFREQ, n_ch=len(CHANNELS)):
    t = np.arange(int(seconds * sfreq)) / sfreq
    sig = sum(a * np.sin(2 * np.pi * f * t) for f, a in freqs_amps)
    return np.tile(sig, (n_ch, 1))


# ---------------------------------------------------------------------- config
def test_config_defaults_and_round_trip(tmp_path):
    cfg = PreprocessingConfig()
    assert cfg.channels is None and cfg.reference is None and cfg.notch is None
    assert cfg.bandpass == (8.0, 30.0) and cfg.filter_bank is None and cfg.resample is None
    assert (cfg.tmin, cfg.tmax, cfg.artefact_policy) == (0.0, 3.0, "reject")
    assert cfg.n_times(160.0) == 480
    d = cfg.to_dict()
    json.dumps(d)
    assert PreprocessingConfig.from_dict(d) == cfg
    custom = PreprocessingConfig.from_dict(
        {"filter_bank": [[8, 12], [12, 30]], "notch": [50, 100], "reference": "average"}
    )
    assert custom.filter_bank == [(8.0, 12.0), (12.0, 30.0)]
    assert PreprocessingConfig.from_dict(custom.to_dict()) == custom
    yml = tmp_path / "pre.yaml"
    yml.write_text("preprocessing:\n  tmin: -0.5\n  tmax: 2.0\n  resample: 100\n")
    from_file = PreprocessingConfig.from_file(yml)
    assert (from_file.tmin, from_file.tmax, from_file.resample) == (-0.5, 2.0, 100.0)
    assert PreprocessingConfig.from_dict(None) == cfg


# ------------------------------------------------------------------ epoching
def test_epoch_window_alignment_and_length():
    ramp = np.tile(np.arange(int(20 * SFREQ), dtype=float), (3, 1)) * 1e-6
    raw = make_raw(ramp, montage=False)
    cfg = {"bandpass": None, "tmin": -0.5, "tmax": 1.0, "flat_threshold": None}
    res = epoch_raw(raw, [2.0, 10.0], cfg)
    assert res.data.shape == (2, 3, 240)  # tmax exclusive: 1.5 s * 160 Hz
    for i, onset in enumerate([2.0, 10.0]):
        first = int(round((onset - 0.5) * SFREQ))
        np.testing.assert_allclose(res.data[i, 0], ramp[0, first : first + 240], rtol=1e-6)
    assert res.report["n_trials"] == 2 and res.kept.all()


def test_bandpass_notch_and_resample():
    data = sines([(10, 1e-5), (45, 1e-5), (60, 1e-5)])
    raw = make_raw(data)
    res = epoch_raw(raw, [5.0, 10.0], {"bandpass": (8, 30)})
    spec = np.abs(np.fft.rfft(res.data[0, 0]))
    freqs = np.fft.rfftfreq(res.data.shape[-1], 1 / SFREQ)
    assert spec[np.argmin(abs(freqs - 10))] > 20 * spec[np.argmin(abs(freqs - 45))]
    notched = epoch_raw(raw, [5.0], {"bandpass": None, "notch": 60.0})
    spec = np.abs(np.fft.rfft(notched.data[0, 0]))
    assert spec[np.argmin(abs(freqs - 60))] < 0.05 * spec[np.argmin(abs(freqs - 10))]
    down = epoch_raw(raw, [5.0], {"resample": 80.0, "bandpass": (8, 30)})
    assert down.sfreq == 80.0 and down.data.shape[-1] == 240


def test_reference_channel_selection_and_filter_bank():
    raw = make_raw()
    avg = epoch_raw(raw, [5.0], {"reference": "average", "bandpass": None, "flat_threshold": None})
    np.testing.assert_allclose(avg.data[0].mean(axis=0), 0.0, atol=1e-12)
    sub = epoch_raw(raw, [5.0], {"channels": ["C4", "C3"]})
    assert sub.ch_names == ["C4", "C3"] and sub.data.shape[1] == 2
    # Reference to Cz, then keep other channels: Cz's signal is subtracted.
    ref = epoch_raw(raw, [5.0], {"reference": ["Cz"], "channels": ["C3", "Cz"], "bandpass": None})
    np.testing.assert_allclose(ref.data[0, 1], 0.0, atol=1e-12)
    # Filter bank: channel-major, each band keeps its own sine.
    data = sines([(10, 1e-5), (25, 1e-5)], n_ch=3)
    bank = epoch_raw(
        make_raw(data, montage=False), [5.0], {"filter_bank": [(8, 12), (20, 30)]}
    )
    assert bank.ch_names == band_channel_names(CHANNELS[:3], [(8, 12), (20, 30)])
    assert bank.ch_names[:2] == ["FC3@8-12Hz", "FC3@20-30Hz"]
    freqs = np.fft.rfftfreq(bank.data.shape[-1], 1 / SFREQ)
    low = np.abs(np.fft.rfft(bank.data[0, 0]))
    high = np.abs(np.fft.rfft(bank.data[0, 1]))
    i10, i25 = np.argmin(abs(freqs - 10)), np.argmin(abs(freqs - 25))
    assert low[i10] > 20 * low[i25] and high[i25] > 20 * high[i10]


# ------------------------------------------------------------------ artefacts
def _raw_with_nan(policy_seconds=(5.2, 5.4)):
    raw = make_raw()
    a, b = (int(s * SFREQ) for s in policy_seconds)
    raw._data[2, a:b] = np.nan
    raw._data[4, a + 3] = np.inf
    return raw


def test_nonfinite_reject_and_interpolate():
    onsets = [1.0, 5.0, 10.0]
    rejected = epoch_raw(_raw_with_nan(), onsets, {"artefact_policy": "reject"})
    assert rejected.kept.tolist() == [True, False, True]
    assert rejected.report["rejected_nonfinite"] == 1
    assert rejected.report["nonfinite_samples"] == 33
    assert np.all(np.isfinite(rejected.data))
    interp = epoch_raw(_raw_with_nan(), onsets, {"artefact_policy": "interpolate"})
    assert interp.kept.all() and interp.report["interpolated_nonfinite_trials"] == 1
    assert np.all(np.isfinite(interp.data))
    cont = preprocess_raw(_raw_with_nan(), {"artefact_policy": "interpolate"})
    assert cont.bad_samples.sum() == 32 and np.all(np.isfinite(cont.data))
    with pytest.raises(DataError, match=r"non-finite.*'FC4'.*5\.200 s"):
        epoch_raw(_raw_with_nan(), onsets, {"artefact_policy": "raise"})


def test_flat_channel_reject_and_interpolate():
    raw = make_raw()
    a, b = int(4.5 * SFREQ), int(8.5 * SFREQ)
    raw._data[CHANNELS.index("C3"), a:b] = 3e-6  # disconnected electrode: constant
    onsets = [1.0, 5.0, 12.0]
    rejected = epoch_raw(raw, onsets, {"artefact_policy": "reject"})
    assert rejected.kept.tolist() == [True, False, True]
    assert rejected.report["rejected_flat"] == 1
    interp = epoch_raw(raw, onsets, {"artefact_policy": "interpolate"})
    assert interp.kept.all() and interp.report["interpolated_flat_channels"] == 1
    # The interpolated C3 is built from its neighbours: no longer flat-filtered zero.
    c3 = CHANNELS.index("C3")
    assert np.std(interp.data[1, c3]) > 0.2 * np.std(interp.data[0, c3])
    with pytest.raises(DataError, match=r"'C3' is flat.*5\.000 s"):
        epoch_raw(raw, onsets, {"artefact_policy": "raise"})
    no_positions = make_raw(montage=False)
    no_positions._data[0, a:b] = 0.0
    with pytest.raises(DataError, match="no electrode positions"):
        epoch_raw(no_positions, onsets, {"artefact_policy": "interpolate"})
    off = epoch_raw(raw, onsets, {"flat_threshold": None})
    assert off.kept.all()


# ------------------------------------------------------------------ channels
def test_check_channels():
    check_channels(["C3", "Cz", "C4"], ["C4", "C3"])
    with pytest.raises(ChannelError, match=r"missing.*\['FC5'\].*'Fc5\.'"):
        check_channels(["Fc5.", "C3"], ["FC5", "C3"], source="S001R04.edf")


# -------------------------------------------------------------- standardizer
def test_standardizer_uses_training_statistics_only(tmp_path):
    rng = np.random.default_rng(1)
    train = rng.normal(2.0, 3.0, size=(20, 4, 50))
    test = rng.normal(10.0, 3.0, size=(5, 4, 50))
    st = Standardizer().fit(train)
    np.testing.assert_allclose(st.mean_, train.mean(axis=(0, 2)))
    z_train = st.transform(train)
    assert z_train.dtype == np.float32
    np.testing.assert_allclose(z_train.mean(axis=(0, 2)), 0, atol=1e-5)
    np.testing.assert_allclose(z_train.std(axis=(0, 2)), 1, atol=1e-5)
    z_test = st.transform(test)
    assert np.all(z_test.mean(axis=(0, 2)) > 2)  # shifted test data stay shifted
    np.testing.assert_allclose(st.transform(test[0]), z_test[0], rtol=1e-6)  # one window
    path = tmp_path / "std.npz"
    st.save(path)
    with np.load(path, allow_pickle=False) as npz:
        assert sorted(npz.files) == ["mean", "scale"]
    loaded = Standardizer.load(path)
    np.testing.assert_array_equal(loaded.transform(test), z_test)
    np.testing.assert_array_equal(Standardizer.from_arrays(st.to_arrays()).scale_, st.scale_)
    with pytest.raises(ValueError, match="3 channels.*fitted on 4"):
        st.transform(test[:, :3])
    constant = Standardizer().fit(np.ones((2, 1, 10)))
    assert constant.scale_[0] == 1.0  # no division by zero
    # scikit-learn compatible: clone and Pipeline.
    assert clone(st).get_params() == {"eps": 1e-12}
    pipe = make_pipeline(Standardizer(), FunctionTransformer(lambda x: x.reshape(len(x), -1)))
    assert pipe.fit_transform(train).shape == (20, 200)


# ------------------------------------------------------------ sliding windows
def test_sliding_windows():
    data = np.arange(3 * 1000, dtype=np.float32).reshape(3, 1000)
    windows, starts = sliding_windows(data, 100.0, window_s=2.0, hop_s=0.25)
    assert windows.shape == (33, 3, 200)  # 1 + (1000 - 200) // 25
    np.testing.assert_allclose(starts, np.arange(33) * 0.25)
    np.testing.assert_array_equal(windows[5], data[:, 125:325])
    assert windows.dtype == data.dtype and windows.flags["C_CONTIGUOUS"]
    w, s = sliding_windows(data[:, :150], 100.0, 2.0, 0.25, t0=3.0)
    assert w.shape == (0, 3, 200) and s.size == 0
    _, s = sliding_windows(data, 100.0, 2.0, 1.0, t0=3.0)
    assert s[0] == 3.0 and s[1] == 4.0
    with pytest.raises(ValueError, match="hop_s"):
        sliding_windows(data, 100.0, 2.0, 0.0)
    with pytest.raises(ValueError, match="n_channels, n_samples"):
        sliding_windows(data[None], 100.0, 2.0, 0.5)


def test_continuous_preprocessing_feeds_windows():
    raw = make_raw()
    cont = preprocess_raw(raw, {"channels": ["C3", "C4"], "resample": 80})
    assert cont.data.shape == (2, 1600) and cont.sfreq == 80.0 and cont.ch_names == ["C3", "C4"]
    windows, starts = sliding_windows(cont.data, cont.sfreq, 2.0, 0.5)
    assert windows.shape == (37, 2, 160) and starts[-1] == 18.0
    assert not cont.bad_samples.any()
    with pytest.raises(ConfigError):
        preprocess_raw(raw, {"tmax": -1})


def test_minimum_phase_filter_is_causal():
    data = np.zeros((3, int(20 * SFREQ)))
    data[:, int(10 * SFREQ)] = 1e-5  # an impulse at 10 s
    raw = make_raw(data, montage=False)
    cfg = {"bandpass": (8, 30), "tmin": -1.0, "tmax": 1.0, "flat_threshold": None}
    causal = epoch_raw(raw, [10.0], {**cfg, "filter_phase": "minimum"}).data[0, 0]
    zero = epoch_raw(raw, [10.0], cfg).data[0, 0]
    before = slice(0, int(SFREQ))  # the second before the impulse
    assert np.max(np.abs(causal[before])) < 1e-6 * np.max(np.abs(causal))
    assert np.max(np.abs(zero[before])) > 1e-3 * np.max(np.abs(zero))  # zero-phase leaks back
