"""SHD loader: a small file in the official HDF5 layout is written at run time and read back."""

import gzip

import h5py
import numpy as np
import pytest

from bci_qif import shd
from bci_qif.errors import CorruptFileError, DataError, DataNotFoundError
from bci_qif.shd import ShdData, load_shd, to_events

# Three samples of hand-made spikes (seconds, unit); the middle one is empty.
SAMPLES = [
    (np.array([0.0, 0.004, 0.0125, 0.5, 0.995, 1.2], np.float32), np.array([0, 9, 10, 699, 5, 3], np.uint16)),
    (np.array([], np.float32), np.array([], np.uint16)),
    (np.array([0.03, 0.031, 0.02], np.float32), np.array([15, 19, 11], np.uint16)),
]
LABELS = np.array([3, 19, 0], np.uint16)
SPEAKERS = np.array([1, 4, 1], np.uint16)
KEYS = [f"digit-{k}" for k in range(20)]


def write_shd(path, samples=SAMPLES, labels=LABELS, speakers=SPEAKERS, keys=KEYS, skip=()):
    """Write ``samples`` in the official SHD layout (variable-length datasets); ``skip`` omits datasets."""
    with h5py.File(path, "w") as h5:
        if "spikes/times" not in skip:
            times = h5.create_dataset("spikes/times", (len(samples),), dtype=h5py.vlen_dtype(np.float32))
            for i, (t, _) in enumerate(samples):
                times[i] = t
        if "spikes/units" not in skip:
            units = h5.create_dataset("spikes/units", (len(samples),), dtype=h5py.vlen_dtype(np.uint16))
            for i, (_, u) in enumerate(samples):
                units[i] = u
        if "labels" not in skip:
            h5.create_dataset("labels", data=labels)
        if speakers is not None:
            h5.create_dataset("extra/speaker", data=speakers)
        if keys is not None:
            h5.create_dataset("extra/keys", data=np.array([k.encode() for k in keys]))
    return path


@pytest.fixture
def shd_file(tmp_path):
    return write_shd(tmp_path / "shd_train.h5")


def test_load_reads_the_file_back_exactly(shd_file):
    data = load_shd(shd_file)
    assert isinstance(data, ShdData) and len(data) == 3
    assert data.n_units == 700 and data.path == shd_file
    for (t, u), got_t, got_u in zip(SAMPLES, data.times, data.units):
        np.testing.assert_array_equal(got_t, t.astype(np.float64))
        np.testing.assert_array_equal(got_u, u.astype(np.int64))
        assert got_t.dtype == np.float64 and got_u.dtype == np.int64
    np.testing.assert_array_equal(data.labels, [3, 19, 0])
    np.testing.assert_array_equal(data.speakers, [1, 4, 1])
    assert data.keys == KEYS


def test_max_samples_reads_the_first_samples_only(shd_file):
    data = load_shd(shd_file, max_samples=2)
    assert len(data) == 2 and len(data.times) == len(data.units) == 2
    np.testing.assert_array_equal(data.labels, [3, 19])
    np.testing.assert_array_equal(data.speakers, [1, 4])
    assert len(load_shd(shd_file, max_samples=10)) == 3


def test_extras_are_optional(tmp_path):
    data = load_shd(write_shd(tmp_path / "plain.h5", speakers=None, keys=None))
    assert data.speakers is None and data.keys is None
    assert len(data) == 3


# ---------------------------------------------------------------------------------
# Events
# ---------------------------------------------------------------------------------
def test_binning_and_pooling_counts_are_exact(shd_file):
    data = load_shd(shd_file)
    times, currents, T = to_events(data, bin_s=0.01, T_s=1.0, n_channels=70, time_scale=20.0)
    assert times.shape == (100,) and currents.shape == (3, 100, 70) and currents.dtype == np.float32
    np.testing.assert_allclose(times, np.arange(100) * 0.2, rtol=1e-6)
    assert T == pytest.approx(20.0)

    expected = np.zeros((3, 100, 70), np.float32)
    # Sample 0: units 0 and 9 (channel 0) in bin 0, unit 10 (channel 1) in bin 1, unit 699
    # (channel 69) in bin 50, unit 5 (channel 0) in bin 99; the spike at 1.2 s is past T_s.
    expected[0, 0, 0] = 2
    expected[0, 1, 1] = 1
    expected[0, 50, 69] = 1
    expected[0, 99, 0] = 1
    # Sample 2: 0.03 s lies on a bin edge and belongs to bin 3 (with 0.031 s); units 15, 19 -> channel 1.
    expected[2, 3, 1] = 2
    expected[2, 2, 1] = 1
    np.testing.assert_array_equal(currents, expected)


def test_other_bins_and_channel_counts():
    data = ShdData(times=[np.array([0.0, 0.049, 0.05, 0.26, 0.3])], units=[np.array([0, 349, 350, 699, 1])],
                   labels=np.array([0]))
    times, currents, T = to_events(data, bin_s=0.05, T_s=0.3, n_channels=2, time_scale=10.0)
    np.testing.assert_allclose(times, [0.0, 0.5, 1.0, 1.5, 2.0, 2.5], rtol=1e-6)
    assert T == pytest.approx(3.0)
    # Units 0-349 -> channel 0, 350-699 -> channel 1; the spike at 0.3 s is at T_s, so dropped.
    np.testing.assert_array_equal(currents[0], [[2, 0], [0, 1], [0, 0], [0, 0], [0, 0], [0, 1]])
    # Channels that do not divide 700 get contiguous groups whose sizes differ by one at most.
    groups = shd.unit_groups(700, 3)
    assert np.all(np.diff(groups) >= 0) and sorted(np.bincount(groups).tolist()) == [233, 233, 234]
    # Pooling keeps every spike: with one channel the counts are the per-bin spike totals.
    _, pooled, _ = to_events(data, bin_s=0.05, T_s=0.3, n_channels=1)
    assert pooled.sum() == 4


@pytest.mark.parametrize("kwargs, match", [
    (dict(bin_s=0.0), "bin_s"),
    (dict(T_s=-1.0), "T_s"),
    (dict(bin_s=0.03, T_s=1.0), "whole multiple"),
    (dict(n_channels=0), "n_channels"),
    (dict(n_channels=701), "n_channels"),
    (dict(n_channels=7.0), "n_channels"),
    (dict(time_scale=float("nan")), "time_scale"),
])
def test_to_events_rejects_bad_arguments(shd_file, kwargs, match):
    with pytest.raises(ValueError, match=match):
        to_events(load_shd(shd_file), **kwargs)


# ---------------------------------------------------------------------------------
# Errors
# ---------------------------------------------------------------------------------
def test_missing_file(tmp_path):
    with pytest.raises(DataNotFoundError, match="does not exist.*gunzip") as info:
        load_shd(tmp_path / "shd_test.h5")
    assert isinstance(info.value, FileNotFoundError)


def test_not_an_hdf5_file(tmp_path):
    path = tmp_path / "shd_train.h5"
    path.write_bytes(b"this is not HDF5\n" * 10)
    with pytest.raises(CorruptFileError, match="Cannot read .* as HDF5"):
        load_shd(path)


def test_truncated_hdf5_file(shd_file):
    shd_file.write_bytes(shd_file.read_bytes()[:1000])
    with pytest.raises(CorruptFileError):
        load_shd(shd_file)


def test_still_gzipped_file(shd_file, tmp_path):
    gz = tmp_path / "shd_train.h5.gz"
    gz.write_bytes(gzip.compress(shd_file.read_bytes()))
    with pytest.raises(CorruptFileError, match="gunzip"):
        load_shd(gz)


@pytest.mark.parametrize("missing", ["spikes/times", "spikes/units", "labels"])
def test_missing_dataset(tmp_path, missing):
    path = write_shd(tmp_path / "partial.h5", skip=(missing,))
    with pytest.raises(DataError, match=f"no dataset '{missing}'"):
        load_shd(path)


def test_out_of_range_unit(tmp_path):
    samples = [SAMPLES[0], (np.array([0.1, 0.2], np.float32), np.array([3, 700], np.uint16)), SAMPLES[2]]
    with pytest.raises(DataError, match=r"sample 1 has units outside 0\.\.699"):
        load_shd(write_shd(tmp_path / "bad_unit.h5", samples=samples))


@pytest.mark.parametrize("bad", [np.nan, -0.5])
def test_nan_or_negative_time(tmp_path, bad):
    samples = [SAMPLES[0], SAMPLES[1], (np.array([0.1, bad, 0.3], np.float32), np.array([1, 2, 3], np.uint16))]
    with pytest.raises(DataError, match="sample 2 has (NaN|negative)"):
        load_shd(write_shd(tmp_path / "bad_time.h5", samples=samples))


def test_mismatched_lengths(tmp_path):
    with pytest.raises(DataError, match="one entry per sample"):
        load_shd(write_shd(tmp_path / "short_labels.h5", labels=LABELS[:2], speakers=None))
    samples = [SAMPLES[0], (np.array([0.1, 0.2], np.float32), np.array([3], np.uint16)), SAMPLES[2]]
    with pytest.raises(DataError, match="sample 1 has 2 spike times but 1 units"):
        load_shd(write_shd(tmp_path / "short_units.h5", samples=samples))
    with pytest.raises(DataError, match="extra/speaker"):
        load_shd(write_shd(tmp_path / "short_speakers.h5", speakers=SPEAKERS[:1]))


@pytest.mark.parametrize("value", [0, -1, 1.5, True])
def test_bad_max_samples(shd_file, value):
    with pytest.raises(ValueError, match="max_samples"):
        load_shd(shd_file, max_samples=value)
