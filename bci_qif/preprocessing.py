"""Config-driven preprocessing of continuous recordings into trials.

The pipeline for one recording (:func:`epoch_raw`) is, in order:

1. pick the data channels (all EEG channels by default) and check that the
   channels the config needs exist (:func:`check_channels`);
2. find non-finite samples (NaN/inf) and fill them by linear interpolation in
   time, so that filters do not smear them over the whole recording; find flat
   channels in each trial window (peak-to-peak below ``flat_threshold``);
3. re-reference (``reference``), then keep the configured ``channels``;
4. notch filter, resample, band-pass (or a filter bank: one copy per band);
5. cut windows ``[onset + tmin, onset + tmax)`` around each event (``tmax`` is
   exclusive, so a window has ``round((tmax - tmin) * sfreq)`` samples);
6. apply the artefact policy to trials with non-finite samples or flat
   channels: ``"reject"`` drops them, ``"interpolate"`` keeps them (time-linear
   fill for non-finite samples, spherical-spline interpolation from the other
   electrodes for flat channels), ``"raise"`` refuses the recording. The
   counts are returned in a report and logged.

:class:`Standardizer` then scales channels with statistics fitted on training
trials only, and :func:`sliding_windows` cuts continuous data into the windows
that real-time decoding sees.
"""

from __future__ import annotations

import dataclasses
import difflib
import json
import logging
import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from sklearn.base import BaseEstimator, TransformerMixin

from .errors import ChannelError, ConfigError, DataError, SamplingRateError

__all__ = [
    "ARTEFACT_POLICIES",
    "PreprocessingConfig",
    "check_channels",
    "check_sampling_rate",
    "preprocess_raw",
    "epoch_raw",
    "EpochResult",
    "ContinuousResult",
    "Standardizer",
    "sliding_windows",
    "band_channel_names",
]

logger = logging.getLogger(__name__)

ARTEFACT_POLICIES = ("reject", "interpolate", "raise")
_EVENTS_OUTSIDE = ("raise", "drop")
_FILTER_PHASES = ("zero", "minimum")


# --------------------------------------------------------------------------- config
def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float, np.integer, np.floating)) and not isinstance(
        value, (bool, np.bool_)
    )


def _number(name: str, value: Any, *, positive: bool = False, allow_zero: bool = True) -> float:
    if not _is_number(value) or not math.isfinite(float(value)):
        raise ConfigError(f"Preprocessing config {name!r} must be a finite number, got {value!r}.")
    value = float(value)
    if positive and (value < 0 or (value == 0 and not allow_zero)):
        bound = ">= 0" if allow_zero else "> 0"
        raise ConfigError(f"Preprocessing config {name!r} must be {bound}, got {value!r}.")
    return value


def _band(name: str, value: Any, *, open_ends: bool) -> tuple[float | None, float | None]:
    if isinstance(value, (str, bytes)) or not isinstance(value, Sequence) or len(value) != 2:
        raise ConfigError(
            f"Preprocessing config {name!r} must be a pair (low_hz, high_hz), got {value!r}."
        )
    lo, hi = value
    if open_ends and lo is None and hi is None:
        raise ConfigError(f"Preprocessing config {name!r}: set at least one edge, or use None.")
    lo = None if (open_ends and lo is None) else _number(name, lo, positive=True)
    hi = None if (open_ends and hi is None) else _number(name, hi, positive=True, allow_zero=False)
    if lo is not None and hi is not None and not lo < hi:
        raise ConfigError(
            f"Preprocessing config {name!r} needs low < high, got ({lo:g}, {hi:g}) Hz."
        )
    if not open_ends and lo == 0:
        raise ConfigError(
            f"Preprocessing config {name!r}: band edges must be > 0 Hz, got {value!r}."
        )
    return lo, hi


def _str_list(name: str, value: Any) -> list[str]:
    if isinstance(value, str) or not isinstance(value, Iterable):
        raise ConfigError(f"Preprocessing config {name!r} must be a list of names, got {value!r}.")
    items = list(value)
    if not items or not all(isinstance(v, str) and v for v in items):
        raise ConfigError(
            f"Preprocessing config {name!r} must be a non-empty list of strings, got {value!r}."
        )
    if len(set(items)) != len(items):
        dup = sorted({v for v in items if items.count(v) > 1})
        raise ConfigError(f"Preprocessing config {name!r} repeats {dup}.")
    return items


@dataclass
class PreprocessingConfig:
    """How a recording becomes preprocessed trials.

    Parameters
    ----------
    channels : list of str | None
        Channels to keep, in this order. ``None`` keeps all EEG channels (all
        64 for EEGMMIDB; all data channels for recordings without EEG).
    reference : None | "average" | list of str
        ``None`` keeps the recorded reference; ``"average"`` applies a common
        average reference over all EEG channels before ``channels`` is applied;
        a list re-references to the mean of those channels.
    notch : float | list of float | None
        Line-noise frequencies to notch out (e.g. ``60.0`` for PhysioNet data).
    bandpass : (float | None, float | None) | None
        Band-pass edges in Hz (default 8-30 Hz, the mu and beta bands); an edge
        of ``None`` makes it a high- or low-pass. Not applied when a
        ``filter_bank`` is set.
    filter_bank : list of (float, float) | None
        When set, each channel is filtered into every band and the output has
        ``n_channels * n_bands`` channels, ordered channel-major (all bands of
        the first channel, then the next) and named ``"<channel>@<lo>-<hi>Hz"``.
    filter_phase : "zero" | "minimum"
        ``"zero"`` is the zero-phase (non-causal) FIR filter for offline work;
        ``"minimum"`` is a causal minimum-phase FIR, matching what an online
        decoder can do.
    resample : float | None
        Target sampling rate in Hz; ``None`` keeps the recorded rate (loading
        recordings of different rates then fails with a clear error).
    tmin, tmax : float
        Trial window relative to each event, in seconds; ``tmax`` is exclusive,
        so a trial has ``round((tmax - tmin) * sfreq)`` samples (480 for the
        default 0-3 s at 160 Hz).
    artefact_policy : "reject" | "interpolate" | "raise"
        What to do with trials containing non-finite samples or flat channels.
    flat_threshold : float | None
        A channel is flat in a trial when its peak-to-peak amplitude over the
        window, before filtering, is at most this value (in the channel's unit,
        volts for EEG). ``None`` disables the check.
    events_outside : "raise" | "drop"
        What to do with events whose window does not fit inside the recording.
    """

    channels: list[str] | None = None
    reference: str | list[str] | None = None
    notch: float | list[float] | None = None
    bandpass: tuple[float | None, float | None] | None = (8.0, 30.0)
    filter_bank: list[tuple[float, float]] | None = None
    filter_phase: str = "zero"
    resample: float | None = None
    tmin: float = 0.0
    tmax: float = 3.0
    artefact_policy: str = "reject"
    flat_threshold: float | None = 1e-7
    events_outside: str = "raise"

    def __post_init__(self) -> None:
        if self.channels is not None:
            self.channels = _str_list("channels", self.channels)
        if self.reference is not None:
            if isinstance(self.reference, str):
                if self.reference != "average":
                    raise ConfigError(
                        "Preprocessing config 'reference' must be None, 'average' or a list "
                        f"of channel names, got {self.reference!r}."
                    )
            else:
                self.reference = _str_list("reference", self.reference)
        if self.notch is not None:
            freqs = [self.notch] if _is_number(self.notch) else self.notch
            if isinstance(freqs, str) or not isinstance(freqs, Iterable):
                raise ConfigError(
                    "Preprocessing config 'notch' must be a frequency or a list, got "
                    f"{self.notch!r}."
                )
            freqs = [_number("notch", f, positive=True, allow_zero=False) for f in freqs]
            if not freqs:
                raise ConfigError("Preprocessing config 'notch' is an empty list; use None.")
            self.notch = freqs[0] if _is_number(self.notch) else freqs
        if self.bandpass is not None:
            self.bandpass = _band("bandpass", self.bandpass, open_ends=True)
        if self.filter_bank is not None:
            if isinstance(self.filter_bank, (str, bytes)) or not isinstance(
                self.filter_bank, Iterable
            ):
                raise ConfigError(
                    "Preprocessing config 'filter_bank' must be a list of (low_hz, high_hz) "
                    f"bands, got {self.filter_bank!r}."
                )
            bands = [_band("filter_bank", b, open_ends=False) for b in self.filter_bank]
            if not bands:
                raise ConfigError("Preprocessing config 'filter_bank' is empty; use None.")
            if len(set(bands)) != len(bands):
                raise ConfigError(f"Preprocessing config 'filter_bank' repeats a band: {bands}.")
            self.filter_bank = bands
        if self.filter_phase not in _FILTER_PHASES:
            raise ConfigError(
                f"Preprocessing config 'filter_phase' must be one of {_FILTER_PHASES}, "
                f"got {self.filter_phase!r}."
            )
        if self.resample is not None:
            self.resample = _number("resample", self.resample, positive=True, allow_zero=False)
        self.tmin = _number("tmin", self.tmin)
        self.tmax = _number("tmax", self.tmax)
        if not self.tmin < self.tmax:
            raise ConfigError(
                f"Preprocessing config needs tmin < tmax, got tmin={self.tmin:g} s, "
                f"tmax={self.tmax:g} s."
            )
        if self.artefact_policy not in ARTEFACT_POLICIES:
            raise ConfigError(
                f"Preprocessing config 'artefact_policy' must be one of {ARTEFACT_POLICIES}, "
                f"got {self.artefact_policy!r}."
            )
        if self.flat_threshold is not None:
            self.flat_threshold = _number("flat_threshold", self.flat_threshold, positive=True)
        if self.events_outside not in _EVENTS_OUTSIDE:
            raise ConfigError(
                f"Preprocessing config 'events_outside' must be one of {_EVENTS_OUTSIDE}, "
                f"got {self.events_outside!r}."
            )

    # -------------------------------------------------------------- (de)serialise
    @classmethod
    def from_dict(cls, d: Mapping[str, Any] | None) -> PreprocessingConfig:
        """Build a config from a mapping (e.g. parsed YAML), checking every key.

        Parameters
        ----------
        d : mapping | None
            Keys are the field names of this class; missing keys take their
            defaults. ``None`` gives the default config.

        Returns
        -------
        PreprocessingConfig

        Raises
        ------
        ConfigError
            If a key is unknown (the message names it and suggests the closest
            valid key) or a value is invalid.
        """
        if d is None:
            return cls()
        if not isinstance(d, Mapping):
            raise ConfigError(
                "A preprocessing config must be a mapping of keys to values, got "
                f"{type(d).__name__}."
            )
        valid = [f.name for f in dataclasses.fields(cls)]
        unknown = [k for k in d if k not in valid]
        if unknown:
            hints = []
            for key in unknown:
                close = difflib.get_close_matches(str(key), valid, n=1)
                hints.append(f"{key!r}" + (f" (did you mean {close[0]!r}?)" if close else ""))
            raise ConfigError(
                f"Unknown preprocessing config key(s): {', '.join(hints)}. "
                f"Valid keys: {', '.join(valid)}."
            )
        return cls(**dict(d))

    @classmethod
    def from_file(cls, path: str | Path) -> PreprocessingConfig:
        """Read a config from a YAML or JSON file (see :meth:`from_dict`)."""
        path = Path(path)
        try:
            text = path.read_text()
        except OSError as err:
            raise ConfigError(f"Cannot read preprocessing config file {path}: {err}.") from None
        try:
            if path.suffix.lower() == ".json":
                d = json.loads(text)
            else:
                import yaml

                d = yaml.safe_load(text)
        except Exception as err:  # the parsers raise several unrelated types
            raise ConfigError(f"Cannot parse preprocessing config file {path}: {err}.") from None
        # Allow the config to sit under a "preprocessing" key of a larger file.
        if isinstance(d, Mapping) and set(d) == {"preprocessing"}:
            d = d["preprocessing"]
        return cls.from_dict(d)

    def to_dict(self) -> dict[str, Any]:
        """Return a JSON-serialisable dict that :meth:`from_dict` turns back into this config."""
        out = {}
        for f in dataclasses.fields(self):
            value = getattr(self, f.name)
            if isinstance(value, tuple):
                value = list(value)
            elif isinstance(value, list):
                value = [list(v) if isinstance(v, tuple) else v for v in value]
            out[f.name] = value
        return out

    @property
    def bands(self) -> list[tuple[float | None, float | None]] | None:
        """The bands actually filtered: the filter bank, else the band-pass (or None)."""
        if self.filter_bank is not None:
            return list(self.filter_bank)
        return None if self.bandpass is None else [tuple(self.bandpass)]

    def n_times(self, sfreq: float) -> int:
        """Number of samples of a trial window at ``sfreq`` (``tmax`` exclusive)."""
        return int(round((self.tmax - self.tmin) * sfreq))


# ------------------------------------------------------------------------ checks
def check_channels(
    available: Sequence[str], required: Sequence[str], *, source: str | None = None
) -> None:
    """Raise if channels a model or config needs are missing from a recording.

    Parameters
    ----------
    available : sequence of str
        Channel names in the recording.
    required : sequence of str
        Channel names that must be present (exact, case-sensitive match).
    source : str | None
        File or dataset name used in the error message.

    Raises
    ------
    ChannelError
        Naming every missing channel, with case-insensitive near matches as
        hints (e.g. ``'Fc5.'`` for ``'FC5'``: EEGMMIDB names must be
        standardized with ``mne.datasets.eegbci.standardize``).
    """
    available = list(available)
    have = set(available)
    missing = [ch for ch in required if ch not in have]
    if not missing:
        return
    lower = {a.lower().strip(". "): a for a in available}
    hints = []
    for ch in missing:
        near = lower.get(ch.lower().strip(". ")) or next(
            iter(difflib.get_close_matches(ch, available, n=1)), None
        )
        if near is not None:
            hints.append(f"{ch!r} -> {near!r}?")
    where = f" in {source}" if source else ""
    msg = (
        f"{len(missing)} required channel(s) missing{where}: {missing}. "
        f"The recording has {len(available)} channels"
        + (f" (first ones: {available[:8]})" if available else "")
        + ". Choose channels that exist (preprocessing 'channels') or a recording that has them."
    )
    if hints:
        msg += " Near matches: " + ", ".join(hints) + " (names may need standardising)."
    raise ChannelError(msg)


def check_sampling_rate(
    sfreq: float, config: PreprocessingConfig, *, source: str | None = None
) -> float:
    """Check that a recording's rate supports the configured filters.

    Parameters
    ----------
    sfreq : float
        Sampling rate of the recording in Hz.
    config : PreprocessingConfig
        The preprocessing to apply.
    source : str | None
        File name used in error messages.

    Returns
    -------
    out_sfreq : float
        The rate of the output (``config.resample`` or ``sfreq``).

    Raises
    ------
    SamplingRateError
        If the rate is not positive, or a notch or band edge is at or above the
        Nyquist frequency of the recording or of the resampled output.
    """
    where = f" of {source}" if source else ""
    if not _is_number(sfreq) or not math.isfinite(sfreq) or sfreq <= 0:
        raise SamplingRateError(f"Sampling rate{where} must be a positive number, got {sfreq!r}.")
    out_sfreq = float(config.resample or sfreq)
    nyq = min(sfreq, out_sfreq) / 2.0
    freqs = []
    if config.notch is not None:
        notch = config.notch if isinstance(config.notch, list) else [config.notch]
        freqs += [("notch", f, sfreq / 2.0) for f in notch]
    for lo, hi in config.bands or []:
        edge = hi if hi is not None else lo
        name = "filter_bank" if config.filter_bank is not None else "bandpass"
        freqs.append((name, edge, nyq))
    for name, freq, limit in freqs:
        if freq is not None and freq >= limit:
            raise SamplingRateError(
                f"Preprocessing {name!r} at {freq:g} Hz is at or above the Nyquist frequency "
                f"({limit:g} Hz) of the sampling rate{where} ({sfreq:g} Hz"
                + (f", resampled to {out_sfreq:g} Hz" if config.resample else "")
                + "). Lower the frequency, or resample to more than "
                f"{2 * freq:g} Hz."
            )
    return out_sfreq


# --------------------------------------------------------------- continuous steps
def band_channel_names(ch_names: Sequence[str], bands: Sequence[tuple]) -> list[str]:
    """Names of filter-bank channels, channel-major: ``"<ch>@<lo>-<hi>Hz"``."""
    return [f"{ch}@{lo:g}-{hi:g}Hz" for ch in ch_names for lo, hi in bands]


def _fill_nonfinite(data: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Linearly interpolate non-finite samples in time, per channel (in place).

    Returns the mask of samples that were not finite, and a boolean per channel
    that is True when the whole channel was non-finite (then set to 0).
    """
    bad = ~np.isfinite(data)
    dead = bad.all(axis=1)
    for ch in np.flatnonzero(bad.any(axis=1)):
        if dead[ch]:
            data[ch] = 0.0
            continue
        good = ~bad[ch]
        x = np.arange(data.shape[1])
        data[ch, bad[ch]] = np.interp(x[bad[ch]], x[good], data[ch, good])
    return bad, dead


def _data_picks(raw, wanted: Sequence[str] = ()) -> list[str]:
    """All EEG channels (else all data channels), plus any explicitly wanted ones."""
    import mne

    idx = mne.pick_types(raw.info, eeg=True, exclude=[])
    if not len(idx):
        idx = mne.pick_types(
            raw.info, meg=True, seeg=True, ecog=True, dbs=True, fnirs=True, exclude=[]
        )
    picks = [raw.ch_names[i] for i in idx]
    # Channels named in the config count even when their type is not "data" (e.g. misc).
    picks += [c for c in wanted if c in raw.ch_names and c not in picks]
    if not picks:
        raise ChannelError(
            f"{_source(raw)} has no EEG or other data channels (channel types: "
            f"{sorted(set(raw.get_channel_types()))}). Name the channels to use in the "
            "preprocessing 'channels'."
        )
    return picks


def _source(raw) -> str:
    fnames = getattr(raw, "filenames", None) or []
    names = [str(f) for f in fnames if f is not None]
    return names[0] if names else "the recording"


@dataclass
class _Prepared:
    """Intermediate state of one recording: filtered bands and artefact masks."""

    bands: list[np.ndarray]  # each (n_channels, n_samples_out)
    sfreq: float
    ch_names: list[str]
    orig_sfreq: float
    orig_data: np.ndarray  # selected channels before reference/filtering, NaN filled
    nonfinite: np.ndarray  # (n_channels, n_samples_orig) mask of filled samples
    info: Any  # mne.Info of the selected channels (positions for interpolation)
    report: dict = field(default_factory=dict)


def _prepare(raw, config: PreprocessingConfig, *, source: str, verbose) -> _Prepared:
    """Steps 1-4 of the module docstring on a preloaded Raw (not modified)."""
    mne_verbose = "warning" if verbose is None else verbose
    required = list(config.channels or [])
    if isinstance(config.reference, list):
        required += [c for c in config.reference if c not in required]
    check_channels(raw.ch_names, required, source=source)
    picks = _data_picks(raw, required)
    raw = raw.copy().pick(picks)
    orig_sfreq = float(raw.info["sfreq"])
    out_sfreq = check_sampling_rate(orig_sfreq, config, source=source)
    selected = list(config.channels or picks)

    data = raw.get_data()
    nonfinite, dead = _fill_nonfinite(data)
    report = {"nonfinite_samples": int(nonfinite.sum())}
    if nonfinite.any():
        ch, sample = (int(i[0]) for i in np.nonzero(nonfinite))
        where = (
            f"{source}: {int(nonfinite.sum())} non-finite sample(s) (NaN or inf), first in "
            f"channel {picks[ch]!r} at {sample / orig_sfreq:.3f} s"
        )
        if config.artefact_policy == "raise":
            raise DataError(
                f"{where}. Set preprocessing artefact_policy to 'reject' (drop affected "
                "trials) or 'interpolate' (fill them), or repair the file."
            )
        logger.info("%s; filled by linear interpolation in time before filtering.", where)
        if dead.any():
            logger.warning(
                "%s: channel(s) %s have no finite sample at all.",
                source,
                [picks[i] for i in np.flatnonzero(dead)],
            )
        raw._data[:] = data  # filters must never see NaN: they would spread it everywhere
    sel_idx = [picks.index(c) for c in selected]

    if config.reference == "average":
        raw.set_eeg_reference("average", projection=False, verbose=mne_verbose)
    elif isinstance(config.reference, list):
        raw.set_eeg_reference(config.reference, projection=False, verbose=mne_verbose)
    raw.pick(selected)
    if config.notch is not None:
        raw.notch_filter(config.notch, phase=config.filter_phase, verbose=mne_verbose)
    if config.resample is not None and config.resample != orig_sfreq:
        raw.resample(config.resample, verbose=mne_verbose)
    bands = []
    for lo, hi in config.bands or [(None, None)]:
        # Only the filter bank needs copies; a single band-pass filters in place.
        band_raw = raw.copy() if config.filter_bank is not None else raw
        if lo is not None or hi is not None:
            band_raw.filter(lo, hi, phase=config.filter_phase, verbose=mne_verbose)
        bands.append(band_raw.get_data())
    return _Prepared(
        bands=bands,
        sfreq=out_sfreq,
        ch_names=selected,
        orig_sfreq=orig_sfreq,
        orig_data=data[sel_idx],
        nonfinite=nonfinite[sel_idx],
        info=raw.info,
        report=report,
    )


def _stack_bands(bands: list[np.ndarray]) -> np.ndarray:
    """Stack per-band arrays (..., n_channels, n_times) channel-major."""
    if len(bands) == 1:
        return bands[0]
    stacked = np.stack(bands, axis=-2)  # (..., n_channels, n_bands, n_times)
    return stacked.reshape(*stacked.shape[:-3], -1, stacked.shape[-1])


def _output_names(config: PreprocessingConfig, ch_names: list[str]) -> list[str]:
    if config.filter_bank is None:
        return list(ch_names)
    return band_channel_names(ch_names, config.filter_bank)


@dataclass
class ContinuousResult:
    """A preprocessed continuous recording (see :func:`preprocess_raw`)."""

    data: np.ndarray  # (n_channels_out, n_samples) float32
    sfreq: float
    ch_names: list[str]
    bad_samples: np.ndarray  # (n_samples,) bool: samples that were NaN/inf before filling
    report: dict


def preprocess_raw(raw, config: PreprocessingConfig | Mapping | None = None, *, verbose=None):
    """Preprocess a continuous recording without epoching it.

    Applies channel selection, re-referencing, notch, resampling and band-pass
    or filter bank (steps 1-4 of the module docstring), e.g. before
    :func:`sliding_windows` for real-time style decoding.

    Parameters
    ----------
    raw : mne.io.BaseRaw
        A preloaded recording; it is not modified.
    config : PreprocessingConfig | dict | None
        Preprocessing; ``tmin``/``tmax``/``events_outside`` are not used.
    verbose : bool | str | int | None
        MNE log level for the filtering steps (``None``: warnings only).

    Returns
    -------
    ContinuousResult
        ``data`` (n_channels_out, n_samples) float32, ``sfreq``, ``ch_names``,
        ``bad_samples`` (samples that held NaN/inf and were filled in time,
        mapped to the output rate) and a ``report`` of counts.

    Raises
    ------
    ChannelError, SamplingRateError, DataError
        Missing channels, rates too low for the filters, or non-finite samples
        under ``artefact_policy="raise"``.
    """
    config = _as_config(config)
    prep = _prepare(raw, config, source=_source(raw), verbose=verbose)
    data = _stack_bands(prep.bands).astype(np.float32)
    bad = np.zeros(data.shape[1], dtype=bool)
    bad_orig = np.flatnonzero(prep.nonfinite.any(axis=0))
    if bad_orig.size:
        idx = np.floor(bad_orig / prep.orig_sfreq * prep.sfreq).astype(np.int64)
        bad[np.clip(idx, 0, data.shape[1] - 1)] = True
    names = _output_names(config, prep.ch_names)
    return ContinuousResult(data, prep.sfreq, names, bad, prep.report)


def _as_config(config) -> PreprocessingConfig:
    if config is None:
        return PreprocessingConfig()
    if isinstance(config, PreprocessingConfig):
        return config
    if isinstance(config, Mapping):
        return PreprocessingConfig.from_dict(config)
    raise ConfigError(
        "preprocessing must be a PreprocessingConfig, a dict or None, "
        f"got {type(config).__name__}."
    )


# ---------------------------------------------------------------------- epoching
@dataclass
class EpochResult:
    """Trials cut from one recording (see :func:`epoch_raw`).

    Attributes
    ----------
    data : ndarray of float32, shape (n_kept, n_channels_out, n_times)
    kept : ndarray of bool, shape (n_events,)
        Which of the input events became trials (others were rejected or
        dropped; see ``report``).
    ch_names : list of str
    sfreq : float
    report : dict
        Counts: ``n_events``, ``n_trials``, ``dropped_outside``,
        ``nonfinite_samples``, ``rejected_nonfinite``, ``rejected_flat``,
        ``interpolated_nonfinite_trials``, ``interpolated_flat_channels``
        (trial-channel pairs).
    """

    data: np.ndarray
    kept: np.ndarray
    ch_names: list[str]
    sfreq: float
    report: dict


def _has_positions(info) -> bool:
    locs = np.array([ch["loc"][:3] for ch in info["chs"]])
    return bool(np.all(np.isfinite(locs)) and np.all(np.linalg.norm(locs, axis=1) > 0))


def _interpolate_flat(epochs_data, flat, info, ch_names, *, source, verbose) -> None:
    """Replace flat channels by spherical-spline interpolation, per group of trials."""
    import mne

    if not _has_positions(info):
        first = int(np.flatnonzero(flat.any(axis=1))[0])
        raise DataError(
            f"{source}: cannot interpolate flat channel(s) "
            f"{[ch_names[c] for c in np.flatnonzero(flat[first])]}: the recording has no "
            "electrode positions. Set a montage on the recording or use "
            "artefact_policy='reject'."
        )
    groups: dict[tuple[int, ...], list[int]] = {}
    for trial in np.flatnonzero(flat.any(axis=1)):
        groups.setdefault(tuple(np.flatnonzero(flat[trial]).tolist()), []).append(int(trial))
    for chans, trials in groups.items():
        ep_info = info.copy()
        ep_info["bads"] = [ch_names[c] for c in chans]
        epochs = mne.EpochsArray(epochs_data[trials], ep_info, verbose=False)
        epochs.interpolate_bads(reset_bads=True, verbose="error" if verbose is None else verbose)
        epochs_data[trials] = epochs.get_data()


def epoch_raw(
    raw,
    onsets: Sequence[float] | np.ndarray,
    config: PreprocessingConfig | Mapping | None = None,
    *,
    event_names: Sequence[str] | None = None,
    verbose=None,
) -> EpochResult:
    """Preprocess a recording and cut one trial per event.

    Parameters
    ----------
    raw : mne.io.BaseRaw
        A preloaded recording; it is not modified.
    onsets : array-like of float, shape (n_events,)
        Event times in seconds from the first sample of ``raw``.
    config : PreprocessingConfig | dict | None
        Preprocessing (defaults: all EEG channels, 8-30 Hz, 0-3 s).
    event_names : sequence of str | None
        Name of each event, used in error messages.
    verbose : bool | str | int | None
        MNE log level for filtering (``None``: warnings only).

    Returns
    -------
    EpochResult

    Raises
    ------
    DataError
        An event window outside the recording (``events_outside="raise"``),
        or non-finite samples / flat channels under ``artefact_policy="raise"``.
    ChannelError, SamplingRateError
        Missing channels, or a rate too low for the configured filters.

    Notes
    -----
    Artefacts are detected before filtering, on the selected channels: a
    trial is affected by non-finite samples inside its window, and a channel
    is flat in a trial when its peak-to-peak amplitude over the window is at
    most ``flat_threshold``.
    """
    config = _as_config(config)
    source = _source(raw)
    onsets = np.asarray(onsets, dtype=np.float64).reshape(-1)
    names = list(event_names) if event_names is not None else ["event"] * len(onsets)
    if not np.all(np.isfinite(onsets)):
        raise DataError(f"{source}: event onsets must be finite numbers of seconds.")
    prep = _prepare(raw, config, source=source, verbose=verbose)
    n_samples = prep.bands[0].shape[1]
    n_times = config.n_times(prep.sfreq)
    if n_times < 1:
        raise ConfigError(
            f"Trial window {config.tmin:g}-{config.tmax:g} s is shorter than one sample at "
            f"{prep.sfreq:g} Hz."
        )
    starts = np.round((onsets + config.tmin) * prep.sfreq).astype(np.int64)
    inside = (starts >= 0) & (starts + n_times <= n_samples)
    report = {
        "n_events": int(len(onsets)),
        "dropped_outside": int((~inside).sum()),
        "nonfinite_samples": prep.report["nonfinite_samples"],
    }
    if not inside.all():
        first = int(np.flatnonzero(~inside)[0])
        duration = n_samples / prep.sfreq
        msg = (
            f"{source}: {int((~inside).sum())} event(s) have a trial window outside the "
            f"recording (0 to {duration:.3f} s); first: {names[first]!r} at "
            f"{onsets[first]:.3f} s with window [{onsets[first] + config.tmin:.3f}, "
            f"{onsets[first] + config.tmax:.3f}) s."
        )
        if config.events_outside == "raise":
            raise DataError(
                msg + " Shorten tmin/tmax, fix the event times, or set preprocessing "
                "events_outside='drop' to skip such events."
            )
        logger.info("%s Dropped (events_outside='drop').", msg)

    idx = np.flatnonzero(inside)
    n_ch = len(prep.ch_names)
    # Artefact masks on the data before filtering, at the recorded rate.
    o_start = np.floor((onsets[idx] + config.tmin) * prep.orig_sfreq).astype(np.int64)
    o_stop = np.ceil((onsets[idx] + config.tmax) * prep.orig_sfreq).astype(np.int64)
    o_start = np.clip(o_start, 0, prep.orig_data.shape[1])
    o_stop = np.clip(np.maximum(o_stop, o_start + 1), 0, prep.orig_data.shape[1])
    trial_nonfinite = np.zeros(len(idx), dtype=bool)
    flat = np.zeros((len(idx), n_ch), dtype=bool)
    for j, (a, b) in enumerate(zip(o_start, o_stop)):
        trial_nonfinite[j] = prep.nonfinite[:, a:b].any()
        if config.flat_threshold is not None and b > a:
            seg = prep.orig_data[:, a:b]
            flat[j] = np.ptp(seg, axis=1) <= config.flat_threshold

    epochs = [
        np.stack([band[:, s : s + n_times] for s in starts[idx]]) if len(idx) else
        np.zeros((0, n_ch, n_times)) for band in prep.bands
    ]
    keep = np.ones(len(idx), dtype=bool)
    report.update(
        rejected_nonfinite=0,
        rejected_flat=0,
        interpolated_nonfinite_trials=0,
        interpolated_flat_channels=0,
    )
    if config.artefact_policy == "raise" and flat.any():
        j, c = (int(i[0]) for i in np.nonzero(flat))
        raise DataError(
            f"{source}: channel {prep.ch_names[c]!r} is flat (peak-to-peak <= "
            f"{config.flat_threshold:g}) in the trial of {names[idx[j]]!r} at "
            f"{onsets[idx[j]]:.3f} s ({int(flat.any(axis=1).sum())} trial(s) affected). Set "
            "artefact_policy to 'reject' or 'interpolate', drop the channel from "
            "'channels', or set flat_threshold=None."
        )
    if config.artefact_policy == "reject":
        keep = ~(trial_nonfinite | flat.any(axis=1))
        report["rejected_nonfinite"] = int(trial_nonfinite.sum())
        report["rejected_flat"] = int((flat.any(axis=1) & ~trial_nonfinite).sum())
    elif config.artefact_policy == "interpolate":
        report["interpolated_nonfinite_trials"] = int(trial_nonfinite.sum())
        all_flat = flat.all(axis=1)
        keep = ~all_flat  # nothing left to interpolate from
        report["rejected_flat"] = int(all_flat.sum())
        partial = flat & ~all_flat[:, None]
        if partial.any():
            for band in epochs:
                _interpolate_flat(
                    band, partial, prep.info, prep.ch_names, source=source, verbose=verbose
                )
            report["interpolated_flat_channels"] = int(partial.sum())
    data = _stack_bands([band[keep] for band in epochs]).astype(np.float32)
    kept = np.zeros(len(onsets), dtype=bool)
    kept[idx[keep]] = True
    report["n_trials"] = int(kept.sum())
    artefacts = {k: v for k, v in report.items() if k.startswith(("rejected", "interpolated"))}
    if any(artefacts.values()):
        logger.info("%s: artefacts (%s policy): %s", source, config.artefact_policy, artefacts)
    return EpochResult(data, kept, _output_names(config, prep.ch_names), prep.sfreq, report)


# ------------------------------------------------------------------ standardise
class Standardizer(TransformerMixin, BaseEstimator):
    """Scale each channel to zero mean and unit variance.

    Statistics are fitted on training trials only (over trials and time, per
    channel) and stored as plain arrays, so they can be saved with a model and
    applied unchanged to validation, test or streamed data.

    Parameters
    ----------
    eps : float
        Channels whose standard deviation is at most ``eps`` keep scale 1
        instead of being divided by (almost) zero.

    Attributes
    ----------
    mean_ : ndarray of float64, shape (n_channels,)
    scale_ : ndarray of float64, shape (n_channels,)
    n_channels_ : int
    """

    def __init__(self, eps: float = 1e-12):
        self.eps = eps

    @staticmethod
    def _check_X(X, name="X") -> np.ndarray:
        X = np.asarray(X)
        if X.ndim not in (2, 3) or not np.issubdtype(X.dtype, np.number):
            raise ValueError(
                f"{name} must be a numeric array of shape (n_trials, n_channels, n_times) "
                f"or (n_channels, n_times), got shape {X.shape} and dtype {X.dtype}."
            )
        if not np.all(np.isfinite(X)):
            raise DataError(f"{name} holds NaN or inf values; clean the data first.")
        return X

    def fit(self, X, y=None) -> Standardizer:
        """Fit per-channel mean and standard deviation.

        Parameters
        ----------
        X : array-like, shape (n_trials, n_channels, n_times) or (n_channels, n_times)
            Training data only (fitting on test data leaks information).
        y : ignored

        Returns
        -------
        self
        """
        X = self._check_X(X)
        X3 = X[None] if X.ndim == 2 else X
        if X3.shape[0] == 0 or X3.shape[2] == 0:
            raise ValueError("Standardizer.fit needs at least one trial and one sample.")
        self.mean_ = X3.mean(axis=(0, 2), dtype=np.float64)
        std = X3.std(axis=(0, 2), dtype=np.float64)
        self.scale_ = np.where(std > self.eps, std, 1.0)
        self.n_channels_ = int(X3.shape[1])
        return self

    def transform(self, X) -> np.ndarray:
        """Standardize data with the fitted statistics.

        Parameters
        ----------
        X : array-like, shape (n_trials, n_channels, n_times) or (n_channels, n_times)

        Returns
        -------
        ndarray of float32, same shape as ``X``
        """
        from sklearn.utils.validation import check_is_fitted

        check_is_fitted(self, ("mean_", "scale_"))
        X = self._check_X(X)
        if X.shape[-2] != self.n_channels_:
            raise ValueError(
                f"X has {X.shape[-2]} channels but the Standardizer was fitted on "
                f"{self.n_channels_}."
            )
        out = (X - self.mean_[:, None]) / self.scale_[:, None]
        return out.astype(np.float32)

    def apply(self, trials):
        """Return a copy of a :class:`~bci_qif.trials.TrialSet` with standardized data."""
        import copy

        from .trials import TrialSet

        config = copy.deepcopy(trials.config)
        config["standardized"] = True
        return TrialSet(
            data=self.transform(trials.data),
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

    def to_arrays(self) -> dict[str, np.ndarray]:
        """Fitted statistics as plain arrays: ``{"mean": ..., "scale": ...}``."""
        from sklearn.utils.validation import check_is_fitted

        check_is_fitted(self, ("mean_", "scale_"))
        return {"mean": self.mean_.copy(), "scale": self.scale_.copy()}

    @classmethod
    def from_arrays(cls, arrays: Mapping[str, np.ndarray], eps: float = 1e-12) -> Standardizer:
        """Rebuild a fitted Standardizer from :meth:`to_arrays` output."""
        try:
            mean = np.asarray(arrays["mean"], dtype=np.float64)
            scale = np.asarray(arrays["scale"], dtype=np.float64)
        except KeyError as err:
            raise DataError(f"Standardizer arrays lack {err.args[0]!r}.") from None
        if mean.ndim != 1 or mean.shape != scale.shape:
            raise DataError(
                f"Standardizer mean and scale must be 1-D of equal length, got {mean.shape} "
                f"and {scale.shape}."
            )
        if not (np.all(np.isfinite(mean)) and np.all(np.isfinite(scale)) and np.all(scale > 0)):
            raise DataError("Standardizer scale must be finite and > 0, mean finite.")
        self = cls(eps=eps)
        self.mean_, self.scale_, self.n_channels_ = mean, scale, int(mean.size)
        return self

    def save(self, path: str | Path) -> None:
        """Save the statistics to an ``.npz`` file (plain arrays, no pickle)."""
        with open(path, "wb") as fh:
            np.savez(fh, **self.to_arrays())

    @classmethod
    def load(cls, path: str | Path) -> Standardizer:
        """Load statistics saved by :meth:`save`."""
        with np.load(path, allow_pickle=False) as npz:
            return cls.from_arrays({k: npz[k] for k in npz.files})


# ---------------------------------------------------------------- sliding windows
def sliding_windows(
    data, sfreq: float, window_s: float, hop_s: float, *, t0: float = 0.0
) -> tuple[np.ndarray, np.ndarray]:
    """Cut continuous data into overlapping windows, as a real-time decoder sees it.

    Parameters
    ----------
    data : array-like, shape (n_channels, n_samples)
        Continuous (preprocessed) data.
    sfreq : float
        Sampling rate in Hz.
    window_s : float
        Window length in seconds (``round(window_s * sfreq)`` samples).
    hop_s : float
        Step between window starts in seconds (``round(hop_s * sfreq)`` samples).
    t0 : float
        Time in seconds of the first sample of ``data``.

    Returns
    -------
    windows : ndarray, shape (n_windows, n_channels, n_window_samples)
        A copy, same dtype as ``data``. Only complete windows are returned, so
        ``n_windows = 1 + (n_samples - n_window_samples) // n_hop`` (0 when the
        data are shorter than one window).
    start_times : ndarray of float64, shape (n_windows,)
        Time of the first sample of each window, in seconds.
    """
    data = np.asarray(data)
    if data.ndim != 2:
        raise ValueError(
            f"sliding_windows expects data of shape (n_channels, n_samples), got {data.shape}."
        )
    for name, value in (("sfreq", sfreq), ("window_s", window_s), ("hop_s", hop_s)):
        if not _is_number(value) or not math.isfinite(value) or value <= 0:
            raise ValueError(f"sliding_windows: {name} must be a positive number, got {value!r}.")
    n_win = int(round(window_s * sfreq))
    n_hop = int(round(hop_s * sfreq))
    if n_win < 1 or n_hop < 1:
        raise ValueError(
            f"sliding_windows: window_s={window_s} s and hop_s={hop_s} s must each span at "
            f"least one sample at {sfreq:g} Hz."
        )
    n_channels, n_samples = data.shape
    if n_samples < n_win:
        return np.zeros((0, n_channels, n_win), dtype=data.dtype), np.zeros(0)
    view = np.lib.stride_tricks.sliding_window_view(data, n_win, axis=1)[:, ::n_hop]
    windows = np.ascontiguousarray(view.transpose(1, 0, 2))
    start_times = t0 + np.arange(windows.shape[0]) * n_hop / sfreq
    return windows, start_times
