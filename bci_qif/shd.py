"""Spiking Heidelberg Digits (SHD): loader for the official HDF5 files.

The SHD dataset (Cramer, Stradmann, Schemmel & Zenke 2020, "The Heidelberg
spiking data sets for the systematic evaluation of spiking neural
networks", IEEE TNNLS) holds spoken digits 0-9 in English and German (20
classes) converted by a cochlea model into spikes of 700 input units.

Getting the data
----------------
bci_qif never downloads SHD by itself. Get ``shd_train.h5.gz`` and
``shd_test.h5.gz`` from the Zenke lab's dataset page
(https://zenkelab.org/datasets/, linked from the paper) or its Zenodo
mirror, then **gunzip** them: :func:`load_shd` reads the uncompressed
``shd_train.h5`` / ``shd_test.h5`` (a ``.gz`` file is refused with a hint).
Keep them outside the repository (e.g. under ``$MNE_DATA/shd/``); data files
are never committed.

File layout
-----------
``spikes/times``
    One variable-length float array per sample: spike times in seconds.
``spikes/units``
    One variable-length unsigned integer array per sample, same lengths:
    the unit (0..699) of each spike.
``labels``
    One integer class per sample.
``extra/speaker`` (optional)
    The speaker of each sample.
``extra/keys`` (optional)
    Class names, indexed by label.

Only h5py reads the file; nothing is unpickled.

Events
------
:func:`to_events` bins every sample's spikes and pools the 700 units into a
few contiguous channel groups, then hands the counts to
:func:`bci_qif.currents.to_input_events`: one event per time bin, shared by
all samples, carrying the vector of pooled counts. This keeps the number of
input events per trial fixed and small (100 events for 1 s in 10 ms bins)
however many spikes a sample has.
"""

from __future__ import annotations

import dataclasses
import math
from pathlib import Path

import numpy as np

from .currents import to_input_events
from .errors import ConfigError, CorruptFileError, DataError, DataNotFoundError
from .validation import is_integer

__all__ = ["N_UNITS", "ShdData", "load_shd", "unit_groups", "binned_counts", "to_events"]

#: Number of input units (cochlea channels) of SHD.
N_UNITS = 700

# A spike this close (in bins) below a bin edge counts in the bin that starts there:
# decimal times stored in float32 fall just short of the edge they name
# (float32(0.03) / 0.01 = 2.99999993), and 1e-4 bin (1 us for 10 ms bins) is far
# below the timing precision of the data.
_EDGE_TOLERANCE = 1e-4

_TIMES, _UNITS, _LABELS = "spikes/times", "spikes/units", "labels"
_SPEAKER, _KEYS = "extra/speaker", "extra/keys"
_WHERE = (
    "Get shd_train.h5.gz / shd_test.h5.gz from https://zenkelab.org/datasets/ (or the Zenodo "
    "mirror) and gunzip them; bci_qif never downloads SHD itself."
)


@dataclasses.dataclass
class ShdData:
    """Samples of an SHD file.

    Attributes
    ----------
    times : list of ndarray of float64
        Per sample, spike times in seconds.
    units : list of ndarray of int64
        Per sample, the unit (``0..n_units-1``) of each spike.
    labels : ndarray of int64, shape (n_samples,)
        Class of each sample (0-19 in the official files).
    speakers : ndarray of int64 or None
        Speaker of each sample, when the file has ``extra/speaker``.
    keys : list of str or None
        Class names indexed by label, when the file has ``extra/keys``.
    n_units : int
        Number of input units (700).
    path : Path
        The file read.
    """

    times: list
    units: list
    labels: np.ndarray
    speakers: np.ndarray | None = None
    keys: list | None = None
    n_units: int = N_UNITS
    path: Path | None = None

    def __len__(self) -> int:
        return len(self.labels)


# ---------------------------------------------------------------------------------
# Loading
# ---------------------------------------------------------------------------------
def _check_max_samples(max_samples) -> int | None:
    if max_samples is None:
        return None
    if not (is_integer(max_samples) and max_samples >= 1):
        raise ConfigError(f"max_samples must be a positive integer or None, got {max_samples!r}.")
    return int(max_samples)


def _open(path: Path):
    """Open ``path`` read-only with h5py, turning h5py's OSError into a clear error."""
    import h5py  # imported here so that the rest of bci_qif works without it

    if not path.exists():
        raise DataNotFoundError(f"SHD file {path} does not exist. {_WHERE}")
    if not path.is_file():
        raise DataNotFoundError(f"SHD path {path} is not a file. {_WHERE}")
    if path.suffix == ".gz":
        raise CorruptFileError(f"{path} is still gzip-compressed: gunzip it and pass the .h5 file.")
    try:
        return h5py.File(path, "r")
    except OSError as err:
        raise CorruptFileError(
            f"Cannot read {path} as HDF5 (not an HDF5 file, or truncated/corrupt: {err}). {_WHERE}"
        ) from err


def _dataset(h5, name: str, path: Path):
    """The dataset ``name`` of an open file, or a DataError naming what is missing."""
    import h5py

    node = h5.get(name)
    if not isinstance(node, h5py.Dataset):
        raise DataError(
            f"{path}: no dataset {name!r}; an official SHD file has {_TIMES!r}, {_UNITS!r} and {_LABELS!r}."
        )
    return node


def _read(dataset, n: int | None, path: Path) -> np.ndarray:
    """The first ``n`` rows (all when None); read errors of a damaged file become CorruptFileError."""
    try:
        return dataset[()] if n is None else dataset[:n]
    except (OSError, RuntimeError) as err:
        raise CorruptFileError(f"{path}: cannot read dataset {dataset.name!r} ({err}).") from err


def _as_sample_arrays(rows, name: str, path: Path, kind: str) -> list:
    """Per-sample 1-D arrays from a variable-length dataset, checked for ``kind`` (float/int)."""
    if np.ndim(rows) == 0:
        raise DataError(f"{path}: {name} must hold one array per sample, got a scalar.")
    out = []
    for i, row in enumerate(rows):
        row = np.asarray(row)
        expected = np.floating if kind == "float" else np.integer
        if row.ndim != 1 or not (np.issubdtype(row.dtype, expected) or (row.size == 0 and row.ndim == 1)):
            raise DataError(f"{path}: {name}[{i}] must be a 1-D {kind} array, got {row.dtype} {row.shape}.")
        out.append(row.astype(np.float64 if kind == "float" else np.int64))
    return out


def _check_samples(times: list, units: list, labels: np.ndarray, n_units: int, path: Path) -> None:
    """Lengths match, units in range, times finite and non-negative (else DataError)."""
    if not len(times) == len(units) == len(labels):
        raise DataError(
            f"{path}: {_TIMES!r}, {_UNITS!r} and {_LABELS!r} must have one entry per sample, got "
            f"{len(times)}, {len(units)} and {len(labels)}."
        )
    for i, (t, u) in enumerate(zip(times, units)):
        if t.shape != u.shape:
            raise DataError(f"{path}: sample {i} has {t.size} spike times but {u.size} units.")
        if u.size and (u.min() < 0 or u.max() >= n_units):
            raise DataError(f"{path}: sample {i} has units outside 0..{n_units - 1} (min {u.min()}, max {u.max()}).")
        if not np.all(np.isfinite(t)):
            raise DataError(f"{path}: sample {i} has NaN or infinite spike times.")
        if t.size and t.min() < 0:
            raise DataError(f"{path}: sample {i} has negative spike times (min {t.min()}).")


def _read_labels(h5, n, path: Path) -> np.ndarray:
    labels = np.asarray(_read(_dataset(h5, _LABELS, path), n, path))
    if labels.ndim != 1 or not np.issubdtype(labels.dtype, np.integer):
        raise DataError(f"{path}: {_LABELS!r} must be a 1-D integer array, got {labels.dtype} {labels.shape}.")
    if labels.size and labels.min() < 0:
        raise DataError(f"{path}: {_LABELS!r} holds negative classes.")
    return labels.astype(np.int64)


def _read_extras(h5, n, n_samples: int, path: Path):
    """``extra/speaker`` (checked length) and ``extra/keys`` (decoded), each None when absent."""
    speakers = keys = None
    if _SPEAKER in h5:
        speakers = np.asarray(_read(_dataset(h5, _SPEAKER, path), n, path))
        if speakers.shape != (n_samples,) or not np.issubdtype(speakers.dtype, np.integer):
            raise DataError(f"{path}: {_SPEAKER!r} must hold one integer per sample, got {speakers.shape}.")
        speakers = speakers.astype(np.int64)
    if _KEYS in h5:
        raw = np.asarray(_read(_dataset(h5, _KEYS, path), None, path)).reshape(-1)
        keys = [k.decode("utf-8") if isinstance(k, bytes) else str(k) for k in raw]
    return speakers, keys


def load_shd(path, *, max_samples: int | None = None) -> ShdData:
    """Read an official SHD HDF5 file (``shd_train.h5`` or ``shd_test.h5``).

    Parameters
    ----------
    path : str or Path
        The uncompressed ``.h5`` file (see the module notes for where to get it).
    max_samples : int or None
        Read only the first ``max_samples`` samples (all when None); handy
        for quick experiments, since only those rows are read from disk.

    Returns
    -------
    ShdData
        Spike times (float64 seconds) and units (int64) per sample, labels,
        and speakers / class names when the file has them.

    Raises
    ------
    DataNotFoundError
        The file does not exist (also a ``FileNotFoundError``).
    CorruptFileError
        The file is gzip-compressed, not HDF5, or truncated / corrupt.
    DataError
        A required dataset is missing, lengths do not match, a unit is outside
        ``0..699``, or a spike time is NaN, infinite or negative.
    ConfigError
        ``max_samples`` is not a positive integer.
    """
    max_samples = _check_max_samples(max_samples)
    path = Path(path).expanduser()
    with _open(path) as h5:
        times_ds, units_ds = _dataset(h5, _TIMES, path), _dataset(h5, _UNITS, path)
        labels = _read_labels(h5, max_samples, path)
        times = _as_sample_arrays(_read(times_ds, max_samples, path), _TIMES, path, "float")
        units = _as_sample_arrays(_read(units_ds, max_samples, path), _UNITS, path, "int")
        _check_samples(times, units, labels, N_UNITS, path)
        speakers, keys = _read_extras(h5, max_samples, len(labels), path)
    return ShdData(times=times, units=units, labels=labels, speakers=speakers, keys=keys, n_units=N_UNITS,
                   path=path)


# ---------------------------------------------------------------------------------
# Events
# ---------------------------------------------------------------------------------
def _positive(name: str, value) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float, np.integer, np.floating)):
        raise ConfigError(f"{name} must be a number, got {value!r}.")
    value = float(value)
    if not (math.isfinite(value) and value > 0):
        raise ConfigError(f"{name} must be a finite positive number, got {value!r}.")
    return value


def _n_bins(bin_s: float, T_s: float) -> int:
    """Number of bins; ``T_s`` must be a whole number of bins so that T is exact."""
    n = round(T_s / bin_s)
    if n < 1 or not math.isclose(n * bin_s, T_s, rel_tol=1e-9):
        raise ConfigError(f"T_s must be a whole multiple of bin_s, got T_s={T_s}, bin_s={bin_s}.")
    return int(n)


def unit_groups(n_units: int, n_channels: int) -> np.ndarray:
    """Channel of every unit when ``n_units`` are pooled into ``n_channels`` contiguous groups.

    Group sizes differ by at most one (all equal when ``n_channels`` divides
    ``n_units``, e.g. 70 groups of 10 for SHD); neighbouring cochlea units
    have neighbouring frequencies, so contiguous groups are frequency bands.

    Returns
    -------
    ndarray of int64, shape (n_units,)
        Non-decreasing channel indices ``0..n_channels-1``.
    """
    if not (is_integer(n_channels) and 1 <= n_channels <= n_units):
        raise ConfigError(f"n_channels must be an integer in 1..{n_units}, got {n_channels!r}.")
    return np.arange(n_units, dtype=np.int64) * int(n_channels) // n_units


def binned_counts(data: ShdData, *, bin_s: float = 0.01, T_s: float = 1.0, n_channels: int = 70) -> np.ndarray:
    """Spike counts per sample, pooled channel and time bin.

    Bin ``b`` counts the spikes with ``b * bin_s <= t < (b + 1) * bin_s`` (up to
    a tolerance of 1e-4 bin at the edges, for times stored in float32);
    spikes at ``t >= T_s`` are dropped (SHD samples last up to about 1.4 s,
    most of the digit is in the first second).

    Returns
    -------
    ndarray of float32, shape (n_samples, n_channels, n_bins)
    """
    bin_s, T_s = _positive("bin_s", bin_s), _positive("T_s", T_s)
    n_bins = _n_bins(bin_s, T_s)
    groups = unit_groups(data.n_units, n_channels)
    counts = np.zeros((len(data.times), int(n_channels), n_bins), dtype=np.float32)
    for i, (t, u) in enumerate(zip(data.times, data.units)):
        bins = np.floor(np.asarray(t, np.float64) / bin_s + _EDGE_TOLERANCE).astype(np.int64)
        keep = bins < n_bins
        np.add.at(counts[i], (groups[np.asarray(u)[keep]], bins[keep]), 1.0)
    return counts


def to_events(
    data: ShdData,
    *,
    bin_s: float = 0.01,
    T_s: float = 1.0,
    n_channels: int = 70,
    time_scale: float = 20.0,
) -> tuple[np.ndarray, np.ndarray, float]:
    """Binned, pooled spike counts as timed input events for the engine.

    Parameters
    ----------
    data : ShdData
        From :func:`load_shd`.
    bin_s : float
        Bin width in seconds (10 ms by default).
    T_s : float
        Length of the window in seconds, a whole number of bins; spikes at or
        after ``T_s`` are dropped.
    n_channels : int
        Number of input channels: the 700 units are pooled (counts summed)
        into this many contiguous groups, see :func:`unit_groups`.
    time_scale : float
        Model time units per second (20: one unit = 50 ms, as
        :data:`bci_qif.currents.DEFAULT_TIME_SCALE`).

    Returns
    -------
    times : ndarray of float32, shape (n_bins,)
        Model time of every bin's start, ``b * bin_s * time_scale``, shared by
        all samples. The counts of a bin are delivered at its start, as in
        :func:`bci_qif.currents.counts_to_spike_events`.
    currents : ndarray of float32, shape (n_samples, n_bins, n_channels)
        Spike counts per bin and channel. Memory: 4 bytes per entry, about
        230 MB for the 8156 training samples with the defaults.
    T : float
        Trial length in model time, ``T_s * time_scale``.

    Raises
    ------
    ConfigError
        Non-positive ``bin_s``, ``T_s`` or ``time_scale``, ``T_s`` not a whole
        number of bins, or ``n_channels`` outside ``1..n_units``.
    """
    time_scale = _positive("time_scale", time_scale)
    counts = binned_counts(data, bin_s=bin_s, T_s=T_s, n_channels=n_channels)
    times, currents = to_input_events(counts, sfreq=1.0 / float(bin_s), time_scale=time_scale)
    return times, currents, float(T_s) * time_scale

