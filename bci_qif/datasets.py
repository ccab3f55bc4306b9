"""Dataset registry and loaders: recordings -> preprocessed :class:`TrialSet`.

Three kinds of source:

* **EEGMMIDB** (PhysioNet EEG Motor Movement/Imagery) through
  :func:`load_eegbci`, with the tasks of :data:`EEGBCI_TASKS`;
* **any recording MNE can read** (EDF/BDF/GDF/FIF/BrainVision/EEGLAB ...)
  through :func:`load_raw_trials`, with a mapping from annotation
  descriptions or stim-channel codes to class names;
* **spike recordings** through :func:`load_spike_dataset`: the two MATLAB files
  of the shared data folder and NWB files (units + trials tables). They are
  returned as a :class:`TrialSet` of *binned spike counts* (n_trials x n_units
  x n_bins, ``sfreq = 1 / bin_s``); :func:`bci_qif.currents.counts_to_spike_events`
  turns a trial back into one event per spike at bin resolution.

Data root
---------
:func:`resolve_data_root` picks the folder that contains ``MNE-eegbci-data/``
and ``spikes/``: an explicit ``data_dir`` argument (the CLI's ``--data-dir``),
else the environment variable ``MNE_DATA``, else MNE's own default (config
``MNE_DATASETS_EEGBCI_PATH``, config ``MNE_DATA``, then ``~/mne_data``).
"""

from __future__ import annotations

import logging
import os
import time
import warnings
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from .cache import cache_key, resolve_cache
from .errors import (
    BCIQIFError,
    ChannelError,
    ConfigError,
    CorruptFileError,
    DataError,
    DataNotFoundError,
    SamplingRateError,
)
from .preprocessing import PreprocessingConfig, _as_config, epoch_raw
from .trials import TrialSet, concatenate_trials
from .validation import is_integer

__all__ = [
    "DATASETS",
    "EEGBCI_TASKS",
    "DatasetInfo",
    "EEGBCITask",
    "available_subjects",
    "eegbci_files",
    "list_datasets",
    "load_eegbci",
    "load_raw_trials",
    "load_spike_dataset",
    "read_raw_checked",
    "resolve_data_root",
]

logger = logging.getLogger(__name__)


# ---------------------------------------------------------------------- registry
@dataclass(frozen=True)
class EEGBCITask:
    """An EEGMMIDB task: the runs it was recorded in and its class events."""

    runs: tuple[int, ...]
    events: dict[str, str]  # annotation description -> class name
    description: str

    @property
    def class_names(self) -> list[str]:
        return list(self.events.values())


#: Tasks of EEGMMIDB. ``T0`` (rest) annotations are ignored.
EEGBCI_TASKS: dict[str, EEGBCITask] = {
    "left_right_imagery": EEGBCITask(
        runs=(4, 8, 12),
        events={"T1": "left", "T2": "right"},
        description="imagined opening and closing of the left vs the right fist",
    ),
    "hands_feet_imagery": EEGBCITask(
        runs=(6, 10, 14),
        events={"T1": "hands", "T2": "feet"},
        description="imagined opening and closing of both fists vs both feet",
    ),
}

EEGBCI_SUBJECTS = range(1, 110)
# 160 Hz for all subjects but 88, 92 and 100 (128 Hz).
_EEGBCI_RATES = (160.0, 128.0)
_EEGBCI_FOLDER = ("MNE-eegbci-data", "files", "eegmmidb", "1.0.0")


@dataclass(frozen=True)
class DatasetInfo:
    """Registry entry: what a dataset is, where it lives and its licence."""

    name: str
    kind: str  # "eeg" or "spikes"
    description: str
    relpath: str  # relative to the data root
    source: str
    licence: str


DATASETS: dict[str, DatasetInfo] = {
    "eegmmidb": DatasetInfo(
        name="eegmmidb",
        kind="eeg",
        description="PhysioNet EEG Motor Movement/Imagery, 64-channel EEG at 160 Hz "
        "(a few subjects at 128 Hz), EDF+ with T0/T1/T2 annotations",
        relpath="MNE-eegbci-data/files/eegmmidb/1.0.0",
        source="PhysioNet EEGMMIDB 1.0.0, doi:10.13026/C28G6P (Schalk et al. 2004)",
        licence="ODC-By 1.0",
    ),
    "kramer_eden_stn_movement": DatasetInfo(
        name="kramer_eden_stn_movement",
        kind="spikes",
        description="one human STN neuron, 50 joystick trials of 2 s at 1 ms around the GO "
        "cue, label = movement direction (0 left, 1 right)",
        relpath="spikes/kramer_eden_stn_movement/Ch10-spikes-1.mat",
        source="Kramer & Eden (2016) Case Studies in Neural Data Analysis, MIT Press",
        licence="MIT (companion repository); no separate data licence stated",
    ),
    "kramer_eden_hippocampus_place": DatasetInfo(
        name="kramer_eden_hippocampus_place",
        kind="spikes",
        description="spike times of one rat hippocampal place cell with the position on a "
        "linear track (about 178 s); windows labelled by track segment",
        relpath="spikes/kramer_eden_hippocampus_place/Ch9-spikes-1.mat",
        source="Kramer & Eden (2016) Case Studies in Neural Data Analysis, MIT Press",
        licence="MIT (companion repository); no separate data licence stated",
    ),
}


def list_datasets() -> list[str]:
    """Names of the registered datasets."""
    return list(DATASETS)


# --------------------------------------------------------------------- data root
def resolve_data_root(data_dir: str | os.PathLike | None = None) -> Path:
    """Choose the data root: ``data_dir`` > env ``MNE_DATA`` > MNE default.

    Parameters
    ----------
    data_dir : path-like | None
        Explicit folder (the CLI's ``--data-dir``) containing
        ``MNE-eegbci-data/`` and/or ``spikes/``.

    Returns
    -------
    Path
        The chosen folder (not checked for existence here).

    Notes
    -----
    MNE's default is its config key ``MNE_DATASETS_EEGBCI_PATH``, then its
    config key ``MNE_DATA``, then ``~/mne_data``.
    """
    if data_dir is not None:
        return Path(data_dir).expanduser()
    env = os.environ.get("MNE_DATA")
    if env:
        return Path(env).expanduser()
    import mne

    for key in ("MNE_DATASETS_EEGBCI_PATH", "MNE_DATA"):
        value = mne.get_config(key)
        if value:
            return Path(value).expanduser()
    return Path("~/mne_data").expanduser()


def _root_origin(data_dir) -> str:
    if data_dir is not None:
        return "the data_dir argument"
    if os.environ.get("MNE_DATA"):
        return "the environment variable MNE_DATA"
    return "MNE's default (MNE_DATASETS_EEGBCI_PATH / MNE_DATA config, else ~/mne_data)"


_HOW_TO_GET_EEGBCI = (
    "To get the data: call load_eegbci(..., download=True) (or the CLI with --download) on "
    "a machine with internet access to fetch the files from PhysioNet into the data root, or "
    "point data_dir / --data-dir / the MNE_DATA environment variable at a folder that "
    "contains MNE-eegbci-data/files/eegmmidb/1.0.0/ (see datasets/README.md)."
)


# ------------------------------------------------------------------ reading files
def _edf_size_problem(path: Path) -> str | None:
    """Compare an EDF/BDF file's size with its header; describe a mismatch."""
    with open(path, "rb") as fh:
        head = fh.read(256)
        if len(head) < 256:
            return f"the file has {len(head)} bytes, fewer than a 256-byte EDF header"
        try:
            header_bytes = int(head[184:192].decode("ascii").strip())
            n_records = int(head[236:244].decode("ascii").strip())
            n_signals = int(head[252:256].decode("ascii").strip())
        except ValueError:
            return "its header fields are not numbers"
        if n_signals <= 0 or header_bytes != 256 * (n_signals + 1):
            return f"its header is inconsistent ({n_signals} signals, {header_bytes} header bytes)"
        fh.seek(256 + n_signals * 216)
        raw_counts = fh.read(8 * n_signals)
    try:
        per_record = sum(
            int(raw_counts[i : i + 8].decode("ascii").strip()) for i in range(0, 8 * n_signals, 8)
        )
    except ValueError:
        return "the samples-per-record fields of its header are not numbers"
    if n_records < 0:
        return None  # -1: length unknown (recording not closed); nothing to compare
    sample_bytes = 3 if head[:1] == b"\xff" else 2  # BDF stores 24-bit samples
    expected = header_bytes + n_records * per_record * sample_bytes
    actual = path.stat().st_size
    if actual < expected:
        return (
            f"it is truncated: the header announces {n_records} data records "
            f"({expected} bytes) but the file has {actual} bytes"
        )
    return None


def _read_raw(path: str | os.PathLike, reader=None, verbose=None):
    """:func:`read_raw_checked`, also returning the warnings MNE issued while reading."""
    import mne

    path = Path(path)
    if not path.is_file():
        raise DataNotFoundError(f"Recording file not found: {path}.")
    if path.stat().st_size == 0:
        raise CorruptFileError(
            f"Recording file {path} is empty (0 bytes); restore or re-download it."
        )
    if path.suffix.lower() in (".edf", ".bdf"):
        problem = _edf_size_problem(path)
        if problem:
            raise CorruptFileError(
                f"EDF file {path} is corrupt: {problem}. Delete it and download it again "
                "(EEGMMIDB: load_eegbci(..., download=True))."
            )
    reader = reader or mne.io.read_raw
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        try:
            raw = reader(path, preload=True, verbose="warning" if verbose is None else verbose)
        except (BCIQIFError, MemoryError):
            raise
        except Exception as err:  # the readers raise many unrelated types on bad files
            raise CorruptFileError(
                f"Cannot read {path} with MNE ({type(err).__name__}: {err}). Check that the "
                "file is complete and in a format mne.io.read_raw supports."
            ) from err
    messages = [str(w.message) for w in caught]
    for message in messages:
        logger.debug("%s: MNE warned: %s", path, message)
    return raw, messages


def read_raw_checked(path: str | os.PathLike, *, reader=None, verbose=None):
    """Read a recording with MNE, turning every failure into a clear error.

    Parameters
    ----------
    path : path-like
        Any file :func:`mne.io.read_raw` supports.
    reader : callable | None
        Reader to use (``mne.io.read_raw`` by default; EEGMMIDB uses
        ``mne.io.read_raw_edf``). Called as ``reader(path, preload=True, verbose=...)``.
    verbose : bool | str | int | None
        MNE log level (``None``: warnings only).

    Returns
    -------
    raw : mne.io.BaseRaw
        Preloaded.

    Raises
    ------
    DataNotFoundError
        The file does not exist.
    CorruptFileError
        The file is empty, truncated (EDF/BDF: size smaller than the header
        announces) or MNE cannot parse it.
    """
    return _read_raw(path, reader=reader, verbose=verbose)[0]


def _file_annotations(path: Path, raw) -> Any:
    """Annotations as stored in the file, including those MNE cropped on reading."""
    import mne

    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            return mne.read_annotations(path)
    except (ValueError, OSError, RuntimeError, KeyError, IndexError, NotImplementedError):
        return raw.annotations  # a format without stand-alone annotations: use Raw's


def _annotation_onsets(
    raw, path: Path, event_map: Mapping[str, str], config, read_warnings: list[str]
) -> tuple:
    """Onsets (s from first sample) and descriptions of the mapped annotations.

    Annotations that lie outside the data (MNE omits them on reading) are
    events outside the recording: raised or counted as dropped per
    ``config.events_outside``.
    """
    ann = raw.annotations
    # Sample index from the first sample, whatever the annotations' time origin.
    index = raw.time_as_index(ann.onset, use_rounding=True, origin=ann.orig_time)
    onsets = index / raw.info["sfreq"]
    keep = np.isin(ann.description, list(event_map))
    found_desc = [str(d) for d in ann.description[keep]]
    found_onsets = np.asarray(onsets[keep], dtype=np.float64)
    dropped = 0
    if any("outside data range" in w for w in read_warnings):
        stored = _file_annotations(path, raw)
        duration = raw.n_times / raw.info["sfreq"]
        outside = [
            (float(o), str(d))
            for o, d in zip(stored.onset, stored.description)
            if d in event_map and (o < 0 or o >= duration)
        ]
        if outside:
            msg = (
                f"{path}: {len(outside)} event annotation(s) lie outside the recording "
                f"(0 to {duration:.3f} s); first: {outside[0][1]!r} at {outside[0][0]:.3f} s."
            )
            if config.events_outside == "raise":
                raise DataError(
                    msg + " Fix the annotations, or set preprocessing events_outside='drop' "
                    "to skip them."
                )
            logger.info("%s Dropped (events_outside='drop').", msg)
            dropped = len(outside)
    order = np.argsort(found_onsets, kind="stable")
    return found_onsets[order], [found_desc[i] for i in order], dropped


def _stim_onsets(raw, path: Path, event_map: Mapping[int, str], stim_channel, verbose):
    import mne

    try:
        events = mne.find_events(
            raw,
            stim_channel=stim_channel,
            shortest_event=1,
            verbose="warning" if verbose is None else verbose,
        )
    except ValueError as err:
        raise DataError(
            f"{path}: cannot find stim-channel events ({err}). Name the channel with "
            "stim_channel=, or map annotation descriptions (strings) instead of codes."
        ) from None
    keep = np.isin(events[:, 2], list(event_map))
    onsets = (events[keep, 0] - raw.first_samp) / raw.info["sfreq"]
    return np.asarray(onsets, dtype=np.float64), [int(c) for c in events[keep, 2]], events


def _check_classes(labels: np.ndarray, class_names: list[str], where: str, found: str) -> None:
    counts = np.bincount(labels, minlength=len(class_names)) if len(labels) else np.zeros(
        len(class_names), dtype=int
    )
    empty = [name for name, c in zip(class_names, counts) if c == 0]
    if empty:
        raise DataError(
            f"Class(es) {empty} have no trials in {where} (trials per class: "
            f"{dict(zip(class_names, counts.tolist()))}; {found}). Check the event mapping, "
            "the runs/files chosen, and the artefact report (rejected trials)."
        )


def _sum_reports(reports: Iterable[dict]) -> dict:
    total: dict[str, int] = {}
    for report in reports:
        for key, value in report.items():
            if isinstance(value, (int, np.integer)):
                total[key] = total.get(key, 0) + int(value)
    return total


def _check_rates(parts: list[tuple[float, str]]) -> None:
    """Refuse trials at different rates (only possible without resampling)."""
    rates: dict[float, list[str]] = {}
    for sfreq, name in parts:
        rates.setdefault(sfreq, []).append(name)
    if len(rates) > 1:
        listing = "; ".join(
            f"{sfreq:g} Hz: {', '.join(names[:4])}{' ...' if len(names) > 4 else ''}"
            for sfreq, names in sorted(rates.items())
        )
        raise SamplingRateError(
            f"Recordings have different sampling rates ({listing}) and resampling is off. Set "
            f"the preprocessing 'resample' to one rate (e.g. {max(rates):g}) to combine them, or "
            "load them separately."
        )


# ------------------------------------------------------------------ EEGMMIDB
def _check_subjects(subjects) -> list[int]:
    if is_integer(subjects):
        subjects = [subjects]
    if isinstance(subjects, (str, bytes)) or not isinstance(subjects, Iterable):
        raise ConfigError(f"subjects must be an int or a list of ints, got {subjects!r}.")
    out = []
    for s in subjects:
        if not is_integer(s):
            raise ConfigError(f"EEGMMIDB subject numbers must be integers, got {s!r}.")
        if int(s) not in EEGBCI_SUBJECTS:
            raise ConfigError(
                f"EEGMMIDB subject {s} does not exist: subjects are numbered 1 to 109."
            )
        out.append(int(s))
    if not out:
        raise ConfigError("subjects is empty: give at least one EEGMMIDB subject.")
    if len(set(out)) != len(out):
        raise ConfigError(f"subjects repeats a subject: {out}.")
    return out


def _check_task(task: str) -> EEGBCITask:
    if task not in EEGBCI_TASKS:
        raise ConfigError(f"Unknown EEGMMIDB task {task!r}; choose one of {list(EEGBCI_TASKS)}.")
    return EEGBCI_TASKS[task]


def eegbci_files(
    subject: int, task: str = "left_right_imagery", data_dir: str | os.PathLike | None = None
) -> list[Path]:
    """Paths where the EDF files of a subject's task runs are expected (MNE layout).

    Parameters
    ----------
    subject : int
        EEGMMIDB subject, 1-109.
    task : str
        A key of :data:`EEGBCI_TASKS`.
    data_dir : path-like | None
        Data root (see :func:`resolve_data_root`).

    Returns
    -------
    list of Path
        ``<root>/MNE-eegbci-data/files/eegmmidb/1.0.0/SXXX/SXXXRYY.edf``, one per run.
    """
    (subject,) = _check_subjects([subject])
    runs = _check_task(task).runs
    base = resolve_data_root(data_dir).joinpath(*_EEGBCI_FOLDER)
    return [base / f"S{subject:03d}" / f"S{subject:03d}R{run:02d}.edf" for run in runs]


def available_subjects(
    task: str = "left_right_imagery", data_dir: str | os.PathLike | None = None
) -> list[int]:
    """Subjects whose every run of ``task`` is present under the data root (no download)."""
    _check_task(task)
    return [s for s in EEGBCI_SUBJECTS if all(f.is_file() for f in eegbci_files(s, task, data_dir))]


def _eegbci_load_data(subjects, task, root, verbose) -> dict[int, list[Path]]:
    """Paths from ``mne.datasets.eegbci.load_data`` (downloads what is missing).

    One call for all subjects: MNE parses its checksum registry on every call,
    which costs more than reading a cached subject.
    """
    from mne.datasets import eegbci

    runs = list(EEGBCI_TASKS[task].runs)
    try:
        # Positional subjects/runs: the first parameter was renamed across MNE releases.
        paths = eegbci.load_data(
            list(subjects), runs, path=str(root), update_path=False,
            verbose="warning" if verbose is None else verbose,
        )
    except (OSError, ValueError, RuntimeError) as err:
        # requests' ConnectionError/HTTPError are OSErrors; pooch hash errors ValueErrors.
        raise DataNotFoundError(
            f"Could not download EEGMMIDB subject(s) {list(subjects)} runs {runs} into {root} "
            f"({type(err).__name__}: {err}). Check the internet connection, or copy the "
            "files there by hand (see datasets/README.md)."
        ) from err
    paths = [Path(p) for p in paths]
    return {s: paths[i * len(runs) : (i + 1) * len(runs)] for i, s in enumerate(subjects)}


def _ensure_eegbci_files(
    subjects, task, root, data_dir, download, verbose
) -> dict[int, list[Path]]:
    """Check (or download) every expected file before reading any, so errors come fast."""
    spec = EEGBCI_TASKS[task]
    if not download and not root.is_dir():
        raise DataNotFoundError(
            f"Data root {root} (from {_root_origin(data_dir)}) does not exist. "
            + _HOW_TO_GET_EEGBCI
        )
    files = {s: eegbci_files(s, task, root) for s in subjects}
    missing = {s: [f for f in fs if not f.is_file()] for s, fs in files.items()}
    missing = {s: fs for s, fs in missing.items() if fs}
    if missing and not download:
        lines = []
        for s, fs in missing.items():
            runs = [int(f.stem[-2:]) for f in fs]
            lines.append(f"subject {s} lacks run(s) {runs} ({', '.join(f.name for f in fs)})")
        have = available_subjects(task, root)
        raise DataNotFoundError(
            f"EEGMMIDB task {task!r} (runs {list(spec.runs)}) is incomplete under the data "
            f"root {root} (from {_root_origin(data_dir)}): " + "; ".join(lines) + ". "
            f"Subjects with all runs there: {have if have else 'none'}. " + _HOW_TO_GET_EEGBCI
        )
    if missing:
        files.update(_eegbci_load_data(list(missing), task, root, verbose))
    return files


def _montage_1005() -> str:
    """Name of MNE's template 10-05 montage (renamed from "standard_1005" in MNE 1.13)."""
    import mne

    builtin = mne.channels.get_builtin_montages()
    return "colin27_1005" if "colin27_1005" in builtin else "standard_1005"


def _load_eegbci_subject(subject, task, files, config, verbose) -> TrialSet:
    """Read, standardize and epoch one subject's runs (no cache)."""
    import mne
    from mne.datasets import eegbci

    spec = EEGBCI_TASKS[task]
    code_of = {desc: i for i, desc in enumerate(spec.events)}
    parts, reports = [], {}
    for path, run in zip(files, spec.runs):
        raw, read_warnings = _read_raw(path, reader=mne.io.read_raw_edf, verbose=verbose)
        if raw.info["sfreq"] not in _EEGBCI_RATES:
            logger.warning(
                "%s: sampling rate %g Hz; EEGMMIDB files are recorded at 160 or 128 Hz. "
                "Check the file, or set preprocessing 'resample'.",
                path,
                raw.info["sfreq"],
            )
        eegbci.standardize(raw)  # 'Fc5.' -> 'FC5': 10-05 names
        raw.set_montage(_montage_1005(), on_missing="ignore", verbose="error")
        onsets, descs, dropped = _annotation_onsets(
            raw, Path(path), spec.events, config, read_warnings
        )
        if not len(onsets):
            raise DataError(
                f"{path}: no {list(spec.events)} annotations (found "
                f"{sorted(set(map(str, raw.annotations.description)))}); is this run of task "
                f"{task!r}?"
            )
        result = epoch_raw(raw, onsets, config, event_names=descs, verbose=verbose)
        result.report["dropped_outside"] += dropped
        reports[Path(path).name] = result.report
        labels = np.array([code_of[d] for d in descs], dtype=np.int64)[result.kept]
        n = len(labels)
        parts.append(
            TrialSet(
                data=result.data,
                labels=labels,
                class_names=spec.class_names,
                subjects=np.full(n, subject),
                runs=np.full(n, run),
                trial_ids=np.arange(n),
                onsets=onsets[result.kept],
                ch_names=result.ch_names,
                sfreq=result.sfreq,
                tmin=config.tmin,
                config={"reports": {Path(path).name: result.report}},
            )
        )
    _check_rates([(p.sfreq, f"S{subject:03d}R{r:02d}.edf") for p, r in zip(parts, spec.runs)])
    return concatenate_trials(parts, config={"reports": reports})


def load_eegbci(
    subjects: int | Sequence[int],
    task: str = "left_right_imagery",
    data_dir: str | os.PathLike | None = None,
    preprocessing: PreprocessingConfig | Mapping | None = None,
    cache: bool | str | os.PathLike | Any = True,
    verbose: bool | str | int | None = None,
    *,
    download: bool = False,
) -> TrialSet:
    """Load EEGMMIDB motor-imagery trials, preprocessed.

    Parameters
    ----------
    subjects : int | sequence of int
        Subjects 1-109 (any subset; the shared data folder holds 17).
    task : "left_right_imagery" | "hands_feet_imagery"
        Runs 4, 8, 12 with T1 = left, T2 = right fist; or runs 6, 10, 14 with
        T1 = both fists ("hands"), T2 = both feet ("feet"). T0 (rest) is ignored.
    data_dir : path-like | None
        Data root; see :func:`resolve_data_root`.
    preprocessing : PreprocessingConfig | dict | None
        Preprocessing (defaults: all 64 EEG channels, 8-30 Hz, 0-3 s after
        the cue, no resampling, artefact policy "reject").
    cache : bool | path-like | TrialCache
        Cache of preprocessed subjects (see :mod:`bci_qif.cache`); a second call
        with the same files and config reads no EDF file.
    verbose : bool | str | int | None
        MNE log level (``None``: warnings only).
    download : bool
        If True, fetch missing files from PhysioNet into the data root (needs
        internet). If False (default), missing files raise at once.

    Returns
    -------
    TrialSet
        ``data`` (n_trials, n_channels, n_times) float32 in volts, channel
        names standardized to 10-05 (``C3``, ``FCz``, ...), labels indexing
        ``class_names`` (``["left", "right"]`` or ``["hands", "feet"]``),
        ``config`` with keys ``preprocessing``, ``dataset`` and ``artefacts``.

    Raises
    ------
    DataNotFoundError
        Data root or run files missing (offline: immediately, saying how to get them).
    CorruptFileError
        Truncated or unreadable EDF file (named).
    SamplingRateError
        Runs at different rates (e.g. subject 88 at 128 Hz next to 160 Hz
        subjects) with ``resample`` off, or a rate too low for the filters.
    ChannelError, DataError, ConfigError
        Missing channels, a class without trials, events outside a recording,
        invalid config.

    Notes
    -----
    Subjects 88, 92 and 100 of EEGMMIDB were recorded at 128 Hz: set
    ``preprocessing={"resample": 160.0}`` to pool them with the others.
    """
    t_start = time.perf_counter()
    config = _as_config(preprocessing)
    spec = _check_task(task)
    subjects = _check_subjects(subjects)
    root = resolve_data_root(data_dir)
    store = resolve_cache(cache)
    files = _ensure_eegbci_files(subjects, task, root, data_dir, download, verbose)

    per_subject: dict[int, TrialSet] = {}
    keys: dict[int, str] = {}
    if store is not None:
        for subject in subjects:
            keys[subject] = cache_key(
                files[subject],
                {"loader": "eegbci", "task": task, "subject": subject, "config": config.to_dict()},
            )
            cached = store.load(keys[subject])
            if cached is not None:
                per_subject[subject] = cached
    n_cached = len(per_subject)
    to_read = [s for s in subjects if s not in per_subject]
    if to_read:
        files.update(_eegbci_load_data(to_read, task, root, verbose))
    for subject in to_read:
        t0 = time.perf_counter()
        trials = _load_eegbci_subject(subject, task, files[subject], config, verbose)
        logger.debug("Subject %d preprocessed in %.2f s.", subject, time.perf_counter() - t0)
        if store is not None:
            store.save(keys[subject], trials, info={"files": [str(f) for f in files[subject]]})
        per_subject[subject] = trials
    per_subject = [per_subject[s] for s in subjects]

    _check_rates([(t.sfreq, f"subject {s}") for t, s in zip(per_subject, subjects)])
    reports = {}
    for t in per_subject:
        reports.update(t.config.get("reports", {}))
    artefacts = _sum_reports(reports.values())
    dataset = {
        "name": "eegmmidb",
        "task": task,
        "task_description": spec.description,
        "runs": list(spec.runs),
        "subjects": subjects,
        "events": dict(spec.events),
        "data_root": str(root),
        "ch_type": "eeg",
        "source": DATASETS["eegmmidb"].source,
        "licence": DATASETS["eegmmidb"].licence,
    }
    out_config = {
        "preprocessing": config.to_dict(),
        "dataset": dataset,
        "artefacts": {"total": artefacts, "per_file": reports},
    }
    trials = concatenate_trials(per_subject, config=out_config)
    _check_classes(
        trials.labels,
        trials.class_names,
        f"EEGMMIDB subjects {subjects} task {task!r}",
        f"annotations {dict(spec.events)}",
    )
    elapsed = time.perf_counter() - t_start
    logger.info(
        "load_eegbci: %d subject(s), %d trials in %.2f s (%d from cache, %d preprocessed from "
        "EDF); artefacts: %s",
        len(subjects),
        len(trials),
        elapsed,
        n_cached,
        len(subjects) - n_cached,
        {k: v for k, v in artefacts.items() if k.startswith(("rejected", "interpolated"))},
    )
    return trials


# ------------------------------------------------------------ generic recordings
def load_raw_trials(
    path: str | os.PathLike | Sequence[str | os.PathLike],
    event_map: Mapping[str, str] | Mapping[int, str],
    preprocessing: PreprocessingConfig | Mapping | None = None,
    *,
    subject: int = 0,
    stim_channel: str | list[str] | None = None,
    cache: bool | str | os.PathLike | Any = True,
    verbose: bool | str | int | None = None,
) -> TrialSet:
    """Load labelled trials from any recording MNE can read.

    Parameters
    ----------
    path : path-like | sequence of path-like
        One file, or several runs of one subject (numbered 1, 2, ... in order).
    event_map : dict
        Event -> class name. String keys are annotation descriptions; integer
        keys are stim-channel codes (found with :func:`mne.find_events`).
        Several events may map to one class; classes are ordered by first
        appearance among the values.
    preprocessing : PreprocessingConfig | dict | None
        See :class:`~bci_qif.preprocessing.PreprocessingConfig`.
    subject : int
        Subject number stored with the trials.
    stim_channel : str | list of str | None
        Stim channel(s) for integer codes (``None``: MNE's default search).
    cache : bool | path-like | TrialCache
        As for :func:`load_eegbci`.
    verbose : bool | str | int | None
        MNE log level (``None``: warnings only).

    Returns
    -------
    TrialSet

    Raises
    ------
    DataNotFoundError, CorruptFileError
        Missing or unreadable file.
    DataError
        A class with no trials, events outside the recording, non-finite
        data under ``artefact_policy="raise"``.
    ChannelError, SamplingRateError, ConfigError
        Missing channels, mixed or too low sampling rates, bad event map/config.
    """
    t_start = time.perf_counter()
    config = _as_config(preprocessing)
    paths = [path] if isinstance(path, (str, os.PathLike)) else list(path)
    paths = [Path(p) for p in paths]
    if not paths:
        raise ConfigError("load_raw_trials needs at least one file.")
    if not isinstance(event_map, Mapping) or not event_map:
        raise ConfigError(
            "event_map must be a non-empty dict of event (annotation description or stim "
            f"code) -> class name, got {event_map!r}."
        )
    key_kinds = {isinstance(k, str) for k in event_map}
    if len(key_kinds) != 1 or not all(
        isinstance(k, str) or is_integer(k)
        for k in event_map
    ):
        raise ConfigError(
            "event_map keys must be all annotation descriptions (str) or all stim codes "
            f"(int), got {list(event_map)}."
        )
    if not all(isinstance(v, str) and v for v in event_map.values()):
        raise ConfigError(f"event_map values must be class names (non-empty str), got {event_map}.")
    use_annotations = key_kinds == {True}
    class_names = list(dict.fromkeys(event_map.values()))
    for p in paths:
        if not p.is_file():
            raise DataNotFoundError(f"Recording file not found: {p}.")

    store = resolve_cache(cache)
    key = None
    if store is not None:
        key = cache_key(
            paths,
            {
                "loader": "raw",
                "event_map": {str(k): v for k, v in event_map.items()},
                "by": "annotation" if use_annotations else "stim",
                "stim_channel": stim_channel,
                "subject": int(subject),
                "config": config.to_dict(),
            },
        )
        cached = store.load(key)
        if cached is not None:
            logger.info(
                "load_raw_trials: %d trials from cache in %.2f s.",
                len(cached),
                time.perf_counter() - t_start,
            )
            return cached

    parts, reports, found = [], {}, {}
    for run, p in enumerate(paths, start=1):
        raw, read_warnings = _read_raw(p, verbose=verbose)
        if use_annotations:
            onsets, names, dropped = _annotation_onsets(raw, p, event_map, config, read_warnings)
            found[p.name] = sorted(set(map(str, raw.annotations.description)))
        else:
            onsets, names, events = _stim_onsets(raw, p, event_map, stim_channel, verbose)
            dropped = 0
            found[p.name] = sorted(set(events[:, 2].tolist()))
        labels = np.array([class_names.index(event_map[n]) for n in names], dtype=np.int64)
        if not len(onsets):
            reports[p.name] = {"n_events": 0, "n_trials": 0, "dropped_outside": dropped}
            continue
        result = epoch_raw(
            raw, onsets, config, event_names=[str(n) for n in names], verbose=verbose
        )
        result.report["dropped_outside"] += dropped
        reports[p.name] = result.report
        n = int(result.kept.sum())
        parts.append(TrialSet(
            data=result.data,
            labels=labels[result.kept],
            class_names=class_names,
            subjects=np.full(n, subject),
            runs=np.full(n, run),
            trial_ids=np.arange(n),
            onsets=onsets[result.kept],
            ch_names=result.ch_names,
            sfreq=result.sfreq,
            tmin=config.tmin,
        ))
    if not parts:
        raise DataError(
            f"No events of {list(event_map)} in {', '.join(map(str, paths))} (events found: "
            f"{found}). Check event_map against the file's annotations or stim codes."
        )
    _check_rates([(t.sfreq, f"run {t.runs[0]}") for t in parts if len(t)])
    config_out = {
        "preprocessing": config.to_dict(),
        "dataset": {
            "name": "raw",
            "files": [str(p) for p in paths],
            "event_map": {str(k): v for k, v in event_map.items()},
            "events_from": "annotations" if use_annotations else "stim channel",
            "subject": int(subject),
            "ch_type": "eeg",
        },
        "artefacts": {"total": _sum_reports(reports.values()), "per_file": reports},
    }
    try:
        trials = concatenate_trials(parts, config=config_out)
    except DataError as err:
        raise ChannelError(f"Runs {', '.join(map(str, paths))} do not match: {err}") from None
    _check_classes(
        trials.labels, class_names, ", ".join(map(str, paths)), f"events found per file: {found}"
    )
    if store is not None:
        store.save(key, trials, info={"files": [str(p) for p in paths]})
    logger.info(
        "load_raw_trials: %d trials from %d file(s) in %.2f s.", len(trials), len(paths),
        time.perf_counter() - t_start,
    )
    return trials


# ------------------------------------------------------------------ spike data
def _bin_spike_times(spike_times, starts, n_bins, bin_s) -> np.ndarray:
    """Counts (n_trials, n_bins) of one unit's spikes in [start, start + n_bins * bin_s)."""
    times = np.sort(np.asarray(spike_times, dtype=np.float64).ravel())
    counts = np.zeros((len(starts), n_bins), dtype=np.float32)
    for i, start in enumerate(starts):
        lo, hi = np.searchsorted(times, [start, start + n_bins * bin_s], side="left")
        # floor((t - start) / bin_s), guarded against round-off at the upper edge
        idx = np.minimum(((times[lo:hi] - start) / bin_s).astype(np.int64), n_bins - 1)
        np.add.at(counts[i], idx, 1.0)
    return counts


def _n_bins(tmin: float, tmax: float, bin_s: float) -> int:
    n = (tmax - tmin) / bin_s
    if abs(n - round(n)) > 1e-6 or round(n) < 1:
        raise ConfigError(
            f"The window {tmin:g} to {tmax:g} s must be a whole number (>= 1) of bins of "
            f"bin_s={bin_s:g} s."
        )
    return int(round(n))


def _check_bin(bin_s) -> float:
    number = isinstance(bin_s, (int, float)) and not isinstance(bin_s, bool)
    if not number or not np.isfinite(bin_s) or bin_s <= 0:
        raise ConfigError(f"bin_s must be a positive number of seconds, got {bin_s!r}.")
    return float(bin_s)


def _loadmat(path: Path) -> dict:
    import scipy.io

    try:
        # MATLAB files are read as plain arrays: no pickle, no object arrays executed.
        return scipy.io.loadmat(path, squeeze_me=False)
    except (ValueError, OSError, TypeError, NotImplementedError) as err:
        raise CorruptFileError(
            f"Cannot read MATLAB file {path} ({type(err).__name__}: {err}); files saved with "
            "-v7.3 (HDF5) are not supported, re-save with -v7."
        ) from err


def _stn_trials(mat: dict, path: Path, bin_s, tmin, tmax) -> TrialSet:
    train = np.asarray(mat["train"], dtype=np.float32)
    direction = np.asarray(mat["direction"]).ravel()
    t_ms = np.asarray(mat["t"], dtype=np.float64).ravel()
    if train.ndim != 2 or train.shape[0] != direction.size or train.shape[1] != t_ms.size:
        raise DataError(
            f"{path}: expected 'train' (n_trials x n_times), 'direction' (n_trials) and 't' "
            f"(n_times), got shapes {train.shape}, {direction.shape}, {t_ms.shape}."
        )
    dt = float(np.median(np.diff(t_ms))) / 1000.0
    t0, t_end = t_ms[0] / 1000.0, t_ms[-1] / 1000.0 + dt
    tmin = t0 if tmin is None else float(tmin)
    tmax = t_end if tmax is None else float(tmax)
    if tmin < t0 - 1e-9 or tmax > t_end + 1e-9:
        raise DataError(
            f"{path}: window {tmin:g} to {tmax:g} s is outside the recorded trials "
            f"({t0:g} to {t_end:g} s around the GO cue)."
        )
    n_bins = _n_bins(tmin, tmax, bin_s)
    per_bin = bin_s / dt
    if abs(per_bin - round(per_bin)) > 1e-6:
        raise ConfigError(f"bin_s must be a multiple of the {dt * 1000:g} ms resolution of {path}.")
    per_bin = int(round(per_bin))
    first = int(round((tmin - t0) / dt))
    window = train[:, first : first + n_bins * per_bin]
    counts = window.reshape(len(train), n_bins, per_bin).sum(axis=2)[:, None, :]
    n = len(train)
    return TrialSet(
        data=counts,
        labels=direction.astype(np.int64),
        class_names=["left", "right"],
        subjects=np.ones(n, dtype=np.int64),
        # Each trial is its own stored 2 s segment: it is its own "run", with the
        # GO cue at -t0 seconds from the segment start.
        runs=np.arange(1, n + 1),
        trial_ids=np.arange(n),
        onsets=np.full(n, -t0),
        ch_names=["stn_unit"],
        sfreq=1.0 / bin_s,
        tmin=tmin,
        config={},
    )


def _place_trials(mat: dict, path: Path, bin_s, window_s, n_position_bins) -> TrialSet:
    spikes = np.asarray(mat["spiketimes"], dtype=np.float64).ravel()
    pos = np.asarray(mat["X"], dtype=np.float64).ravel()
    t = np.asarray(mat["t"], dtype=np.float64).ravel()
    if pos.size != t.size or pos.size == 0:
        raise DataError(f"{path}: 'X' and 't' must have the same length, got {pos.size}, {t.size}.")
    if not (is_integer(n_position_bins) and n_position_bins >= 2):
        raise ConfigError(f"n_position_bins must be an integer >= 2, got {n_position_bins!r}.")
    window_s = _check_bin(window_s)
    n_bins = _n_bins(0.0, window_s, bin_s)
    starts = np.arange(t[0], t[-1] - window_s + 1e-9, window_s)
    edges = np.linspace(pos.min(), pos.max(), n_position_bins + 1)
    idx_lo = np.searchsorted(t, starts)
    idx_hi = np.searchsorted(t, starts + window_s)
    mean_pos = np.array([pos[a:b].mean() for a, b in zip(idx_lo, idx_hi)])
    labels = np.clip(np.digitize(mean_pos, edges[1:-1]), 0, n_position_bins - 1)
    counts = _bin_spike_times(spikes, starts, n_bins, bin_s)[:, None, :]
    n = len(starts)
    names = [f"{int(round(edges[i]))}-{int(round(edges[i + 1]))}cm" for i in range(n_position_bins)]
    return TrialSet(
        data=counts,
        labels=labels,
        class_names=names,
        subjects=np.ones(n, dtype=np.int64),
        runs=np.ones(n, dtype=np.int64),
        trial_ids=np.arange(n),
        onsets=starts,
        ch_names=["place_cell"],
        sfreq=1.0 / bin_s,
        tmin=0.0,
        config={"position_bin_edges_cm": edges.tolist(), "window_s": window_s},
    )


def _nwb_trials(path, bin_s, tmin, tmax, label_column, event_column, class_names) -> TrialSet:
    from pynwb import NWBHDF5IO

    try:
        io = NWBHDF5IO(str(path), mode="r")
        nwb = io.read()
    except Exception as err:
        raise CorruptFileError(
            f"Cannot read NWB file {path} ({type(err).__name__}: {err})."
        ) from err
    with io:
        if nwb.units is None or len(nwb.units) == 0:
            raise DataError(f"{path}: the NWB file has no units table (spike times per unit).")
        if nwb.trials is None or len(nwb.trials) == 0:
            raise DataError(f"{path}: the NWB file has no trials table.")
        trials_df = nwb.trials.to_dataframe()
        for col in (label_column, event_column):
            if col not in trials_df.columns:
                raise DataError(
                    f"{path}: the trials table has no column {col!r}; columns: "
                    f"{list(trials_df.columns)}. Pass label_column= / event_column=."
                )
        unit_ids = [int(i) for i in nwb.units.id[:]]
        unit_spikes = [np.asarray(nwb.units["spike_times"][i]) for i in range(len(unit_ids))]
        subject_id = getattr(nwb.subject, "subject_id", None) if nwb.subject is not None else None
    events = trials_df[event_column].to_numpy(dtype=np.float64)
    values = [str(v) for v in trials_df[label_column].tolist()]
    names = sorted(set(values)) if class_names is None else [str(c) for c in class_names]
    keep = np.array([v in names for v in values])
    if not keep.all():
        logger.info(
            "%s: %d trial(s) with labels outside %s skipped.", path, int((~keep).sum()), names
        )
    labels = np.array([names.index(v) for v, k in zip(values, keep) if k], dtype=np.int64)
    _check_classes(labels, names, str(path), f"labels found: {sorted(set(values))}")
    if tmax is None:
        tmax = float((trials_df["stop_time"] - trials_df[event_column]).min())
    tmin = 0.0 if tmin is None else float(tmin)
    n_bins = _n_bins(tmin, tmax, bin_s)
    starts = events[keep] + tmin
    counts = np.stack([_bin_spike_times(s, starts, n_bins, bin_s) for s in unit_spikes], axis=1)
    try:
        subject = int(subject_id) if subject_id is not None else 0
    except ValueError:
        subject = 0
    n = len(labels)
    return TrialSet(
        data=counts,
        labels=labels,
        class_names=names,
        subjects=np.full(n, subject),
        runs=np.ones(n, dtype=np.int64),
        trial_ids=np.arange(n),
        onsets=events[keep],
        ch_names=[f"unit{u}" for u in unit_ids],
        sfreq=1.0 / bin_s,
        tmin=tmin,
        config={"label_column": label_column, "event_column": event_column},
    )


def load_spike_dataset(
    name_or_path: str | os.PathLike,
    *,
    data_dir: str | os.PathLike | None = None,
    bin_s: float = 0.01,
    tmin: float | None = None,
    tmax: float | None = None,
    window_s: float = 0.5,
    n_position_bins: int = 2,
    label_column: str = "condition",
    event_column: str = "start_time",
    class_names: Sequence[str] | None = None,
) -> TrialSet:
    """Load a spike recording as trials of binned spike counts.

    Parameters
    ----------
    name_or_path : str | path-like
        A registered name (``"kramer_eden_stn_movement"``,
        ``"kramer_eden_hippocampus_place"``), or a path to a ``.mat`` file of
        one of those layouts, or to an ``.nwb`` file with a units table
        (``spike_times``) and a trials table.
    data_dir : path-like | None
        Data root for registered names (see :func:`resolve_data_root`).
    bin_s : float
        Bin width in seconds (default 10 ms); ``sfreq`` of the result is
        ``1 / bin_s``. The STN data have 1 ms resolution, so ``bin_s=0.001``
        keeps every spike time exactly.
    tmin, tmax : float | None
        Trial window relative to the event (STN: the GO cue, default the full
        -1 to 1 s; NWB: ``event_column``, default 0 to the shortest trial).
    window_s : float
        Place-cell data: length of the consecutive windows that become trials.
    n_position_bins : int
        Place-cell data: the track is cut into this many equal segments; a
        window's label is the segment of its mean position.
    label_column, event_column : str
        NWB: trials-table columns holding the class label and the event time.
    class_names : sequence of str | None
        NWB: the classes to keep, in label order (default: sorted labels).

    Returns
    -------
    TrialSet
        ``data`` (n_trials, n_units, n_bins) float32 spike counts;
        ``config["dataset"]`` says which file and layout.

    Raises
    ------
    DataNotFoundError, CorruptFileError, DataError, ConfigError
    """
    bin_s = _check_bin(bin_s)
    name = str(name_or_path)
    info = DATASETS.get(name)
    if info is not None and info.kind == "spikes":
        path = resolve_data_root(data_dir) / info.relpath
        if not path.is_file():
            raise DataNotFoundError(
                f"Spike dataset {name!r} not found at {path} (data root from "
                f"{_root_origin(data_dir)}). Point data_dir / MNE_DATA at the folder that "
                "contains spikes/ (see datasets/README.md for the source of the file)."
            )
    elif info is not None:
        raise ConfigError(f"{name!r} is an EEG dataset; load it with load_eegbci().")
    else:
        path = Path(name_or_path)
        if not path.is_file():
            raise DataNotFoundError(
                f"Spike recording {path} not found, and {name!r} is not a registered spike "
                f"dataset ({[n for n, d in DATASETS.items() if d.kind == 'spikes']})."
            )

    suffix = path.suffix.lower()
    if suffix == ".nwb":
        trials = _nwb_trials(path, bin_s, tmin, tmax, label_column, event_column, class_names)
        layout = "nwb units+trials"
    elif suffix == ".mat":
        mat = _loadmat(path)
        variables = sorted(k for k in mat if not k.startswith("__"))
        if {"train", "direction", "t"} <= set(variables):
            trials, layout = _stn_trials(mat, path, bin_s, tmin, tmax), "kramer_eden_stn_movement"
        elif {"spiketimes", "X", "t"} <= set(variables):
            trials = _place_trials(mat, path, bin_s, window_s, n_position_bins)
            layout = "kramer_eden_hippocampus_place"
        else:
            raise DataError(
                f"{path}: unknown MATLAB spike layout (variables {variables}); expected "
                "'train'/'direction'/'t' (trial spike trains) or 'spiketimes'/'X'/'t' "
                "(spike times with position)."
            )
    else:
        raise DataError(f"{path}: spike recordings must be .mat or .nwb files, got {suffix!r}.")
    _check_classes(trials.labels, trials.class_names, str(path), f"layout {layout}")
    dataset = {
        "name": info.name if info else path.stem,
        "file": str(path),
        "layout": layout,
        "ch_type": "misc",
        "unit": "spike counts per bin",
        "bin_s": bin_s,
    }
    if info:
        dataset.update(source=info.source, licence=info.licence)
    dataset.update(trials.config)
    config = {"preprocessing": {"bin_s": bin_s, "tmin": trials.tmin}, "dataset": dataset}
    logger.info("load_spike_dataset: %r -> %r", name, trials)
    return TrialSet(
        data=trials.data,
        labels=trials.labels,
        class_names=trials.class_names,
        subjects=trials.subjects,
        runs=trials.runs,
        trial_ids=trials.trial_ids,
        onsets=trials.onsets,
        ch_names=trials.ch_names,
        sfreq=trials.sfreq,
        tmin=trials.tmin,
        config=config,
    )
