"""Conversion of trials to the engine's timed input events."""

from __future__ import annotations

import numpy as np
import pytest

from bci_qif.currents import (
    DEFAULT_TIME_SCALE,
    counts_to_spike_events,
    pad_events,
    spike_events,
    to_input_events,
    trials_to_input_events,
)
from bci_qif.datasets import load_spike_dataset
from bci_qif.trials import TrialSet


def test_sample_events_time_scale_and_gain():
    rng = np.random.default_rng(0)
    data = rng.standard_normal((4, 3, 480))
    times, currents = to_input_events(data, 160.0)
    assert DEFAULT_TIME_SCALE == 20.0
    assert times.shape == (480,) and times.dtype == np.float32
    assert currents.shape == (4, 480, 3) and currents.dtype == np.float32
    # Sample k at k / sfreq seconds = k / sfreq * time_scale model units (1 unit = 50 ms).
    np.testing.assert_allclose(times, np.arange(480) / 160.0 * 20.0, rtol=1e-6)
    assert times[160] == pytest.approx(20.0)  # 1 s of recording = 20 model units
    np.testing.assert_allclose(currents, np.transpose(data, (0, 2, 1)), rtol=1e-6)
    times2, currents2 = to_input_events(data, 160.0, time_scale=1000.0, gain=2.5, t0=7.0)
    np.testing.assert_allclose(times2, 7.0 + np.arange(480) / 160.0 * 1000.0, rtol=1e-6)
    np.testing.assert_allclose(currents2, 2.5 * currents, rtol=1e-6)
    # One real-time window (2-D) gives (n_times, n_channels).
    t1, c1 = to_input_events(data[0], 160.0)
    np.testing.assert_array_equal(c1, currents[0])
    np.testing.assert_array_equal(t1, times)


def test_trialset_events_use_its_sfreq():
    ts = TrialSet(
        data=np.ones((2, 2, 10), dtype=np.float32),
        labels=[0, 1],
        class_names=["a", "b"],
        subjects=[1, 1],
        runs=[1, 1],
        trial_ids=[0, 1],
        onsets=[0.0, 5.0],
        ch_names=["x", "y"],
        sfreq=100.0,
        tmin=0.0,
    )
    times, currents = trials_to_input_events(ts, time_scale=10.0)
    np.testing.assert_allclose(times[1], 0.1)
    assert currents.shape == (2, 10, 2)


def test_sample_events_reject_bad_input():
    with pytest.raises(ValueError, match="NaN"):
        to_input_events(np.full((1, 2, 3), np.nan), 100.0)
    with pytest.raises(ValueError, match="sfreq"):
        to_input_events(np.zeros((1, 2, 3)), 0.0)
    with pytest.raises(ValueError, match="time_scale"):
        to_input_events(np.zeros((1, 2, 3)), 100.0, time_scale=-1)
    with pytest.raises(ValueError, match="shape"):
        to_input_events(np.zeros(5), 100.0)


def test_spike_events_one_per_spike():
    times, currents = spike_events([0.30, 0.10, 0.20], [2, 0, 2], n_units=3, gain=0.5)
    np.testing.assert_allclose(times, [2.0, 4.0, 6.0])  # sorted, seconds * 20
    np.testing.assert_array_equal(
        currents, [[0.5, 0, 0], [0, 0, 0.5], [0, 0, 0.5]]
    )
    empty_t, empty_c = spike_events([], [], n_units=2)
    assert empty_t.shape == (0,) and empty_c.shape == (0, 2)
    with pytest.raises(ValueError, match="unit_ids"):
        spike_events([0.1], [3], n_units=3)
    with pytest.raises(ValueError, match="same length"):
        spike_events([0.1, 0.2], [0], n_units=1)


def test_counts_round_trip_and_padding():
    counts = np.array([[0, 2, 0, 1], [1, 0, 0, 0]])
    times, currents = counts_to_spike_events(counts, sfreq=10.0, time_scale=20.0)
    assert len(times) == counts.sum()
    # Re-binning the events gives the counts back.
    bins = np.round(times / 20.0 * 10.0).astype(int)
    rebinned = np.zeros_like(counts)
    np.add.at(rebinned, (currents.argmax(axis=1), bins), 1)
    np.testing.assert_array_equal(rebinned, counts)
    t_pad, c_pad, mask = pad_events([(times, currents), spike_events([0.05], [1], 2)])
    assert t_pad.shape == (2, 4) and c_pad.shape == (2, 4, 2)
    assert mask.sum() == 5 and np.all(np.isinf(t_pad[~mask])) and np.all(c_pad[~mask] == 0)
    with pytest.raises(ValueError, match="more than n_events"):
        pad_events([(times, currents)], n_events=2)
    with pytest.raises(ValueError, match="whole numbers"):
        counts_to_spike_events(np.array([[0.5]]), 10.0)


def test_real_spike_trials_both_encodings(data_root):
    ts = load_spike_dataset("kramer_eden_stn_movement", data_dir=data_root, bin_s=0.001)
    times, currents = to_input_events(ts.data, ts.sfreq)  # per 1 ms bin
    assert currents.shape == (50, 2000, 1)
    assert times[-1] == pytest.approx(1999 * 0.001 * 20.0)
    per_spike = [counts_to_spike_events(trial, ts.sfreq, ts.tmin) for trial in ts.data]
    assert [len(t) for t, _ in per_spike] == ts.data.sum(axis=(1, 2)).astype(int).tolist()
    t_pad, _, mask = pad_events(per_spike)
    assert t_pad.shape[1] == int(ts.data.sum(axis=(1, 2)).max())
    for (t, _), row, m in zip(per_spike, t_pad, mask):
        assert np.all(np.diff(t) >= 0)
        np.testing.assert_array_equal(row[m], t)
