"""The typed trial set that ingestion hands to the models.

A :class:`TrialSet` holds preprocessed, epoched trials together with everything
needed to interpret them (labels, class names, subject/run/trial ids, event
onsets, channel names, sampling rate, window start and the preprocessing
config). It validates itself on construction, so code downstream can rely on
consistent shapes, finite values and labels within ``class_names``.
"""

from __future__ import annotations

import copy
import json
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from .errors import DataError

__all__ = ["TrialSet", "concatenate_trials"]

# Array fields, in the order they are stored (see ``to_arrays``).
_INT_FIELDS = ("labels", "subjects", "runs", "trial_ids")


def _as_int64(name: str, values: Any, n_trials: int) -> np.ndarray:
    arr = np.asarray(values)
    if arr.ndim != 1 or arr.shape[0] != n_trials:
        raise DataError(
            f"TrialSet.{name} must be a 1-D array with one entry per trial "
            f"({n_trials}), got shape {arr.shape}."
        )
    if arr.size and not np.issubdtype(arr.dtype, np.integer):
        # Accept integral floats (e.g. labels read from MATLAB), refuse 0.5.
        if not np.issubdtype(arr.dtype, np.number) or not np.all(np.isfinite(arr)) or np.any(
            arr != np.round(arr)
        ):
            raise DataError(f"TrialSet.{name} must hold integers, got dtype {arr.dtype}.")
    return arr.astype(np.int64, copy=False)


@dataclass(frozen=True, eq=False)
class TrialSet:
    """Preprocessed trials with their labels and metadata.

    Parameters
    ----------
    data : ndarray of float32, shape (n_trials, n_channels, n_times)
        Preprocessed signal (EEG) or binned spike counts (spike datasets).
    labels : ndarray of int64, shape (n_trials,)
        Class index of each trial; ``class_names[label]`` is its name.
    class_names : list of str
        Name of each class, indexed by label.
    subjects, runs : ndarray of int64, shape (n_trials,)
        Subject and run (recording) number of each trial.
    trial_ids : ndarray of int64, shape (n_trials,)
        Identifier of each trial, unique within the set. ``subset`` keeps the
        ids, so they always point back to the trial in the set it came from.
    onsets : ndarray of float64, shape (n_trials,)
        Time in seconds of each trial's event (cue) from the start of its run.
    ch_names : list of str
        Name of each channel (for a filter bank ``"<channel>@<lo>-<hi>Hz"``).
    sfreq : float
        Sampling rate of ``data`` in Hz (for spike counts: 1 / bin width).
    tmin : float
        Start of the trial window relative to the event, in seconds; sample
        ``k`` of a trial lies at ``onset + tmin + k / sfreq``.
    config : dict
        JSON-serialisable description of how the set was made: the full
        preprocessing config, the dataset description and the artefact report.

    Raises
    ------
    DataError
        If shapes disagree, values are not finite, labels fall outside
        ``class_names`` or trial ids repeat.
    """

    data: np.ndarray
    labels: np.ndarray
    class_names: list[str]
    subjects: np.ndarray
    runs: np.ndarray
    trial_ids: np.ndarray
    onsets: np.ndarray
    ch_names: list[str]
    sfreq: float
    tmin: float
    config: dict = field(default_factory=dict)

    def __post_init__(self) -> None:
        set_ = object.__setattr__  # frozen dataclass: assign the coerced values once
        data = np.asarray(self.data)
        if data.ndim != 3:
            raise DataError(
                "TrialSet.data must have shape (n_trials, n_channels, n_times), "
                f"got {data.ndim} dimension(s) with shape {data.shape}."
            )
        if not np.issubdtype(data.dtype, np.number) or np.iscomplexobj(data):
            raise DataError(f"TrialSet.data must be real numbers, got dtype {data.dtype}.")
        data = data.astype(np.float32, copy=False)
        n_trials, n_channels, _ = data.shape
        set_(self, "data", data)
        for name in _INT_FIELDS:
            set_(self, name, _as_int64(name, getattr(self, name), n_trials))
        onsets = np.asarray(self.onsets, dtype=np.float64)
        if onsets.shape != (n_trials,):
            raise DataError(
                f"TrialSet.onsets must have shape ({n_trials},), got {onsets.shape}."
            )
        set_(self, "onsets", onsets)

        class_names = [str(c) for c in self.class_names]
        if not class_names:
            raise DataError("TrialSet.class_names is empty: at least one class is needed.")
        if len(set(class_names)) != len(class_names):
            raise DataError(f"TrialSet.class_names repeats a name: {class_names}.")
        set_(self, "class_names", class_names)
        ch_names = [str(c) for c in self.ch_names]
        if len(ch_names) != n_channels:
            raise DataError(
                f"TrialSet has {n_channels} channels in data but {len(ch_names)} "
                "names in ch_names."
            )
        if len(set(ch_names)) != len(ch_names):
            raise DataError("TrialSet.ch_names must be unique.")
        set_(self, "ch_names", ch_names)

        sfreq = float(self.sfreq)
        if not np.isfinite(sfreq) or sfreq <= 0:
            raise DataError(f"TrialSet.sfreq must be a positive number, got {self.sfreq!r}.")
        set_(self, "sfreq", sfreq)
        tmin = float(self.tmin)
        if not np.isfinite(tmin):
            raise DataError(f"TrialSet.tmin must be finite, got {self.tmin!r}.")
        set_(self, "tmin", tmin)

        bad_labels = (self.labels < 0) | (self.labels >= len(class_names))
        if bad_labels.any():
            first = int(np.flatnonzero(bad_labels)[0])
            raise DataError(
                f"TrialSet label {int(self.labels[first])} of trial {first} is outside "
                f"class_names {class_names} (valid labels: 0..{len(class_names) - 1})."
            )
        if np.unique(self.trial_ids).size != n_trials:
            raise DataError("TrialSet.trial_ids must be unique within the set.")
        if not np.all(np.isfinite(onsets)):
            raise DataError("TrialSet.onsets must be finite.")
        finite = np.isfinite(data)
        if not finite.all():
            trial, channel, sample = (int(i[0]) for i in np.nonzero(~finite))
            raise DataError(
                f"TrialSet.data holds non-finite values (NaN or inf), first at trial "
                f"{trial} (id {int(self.trial_ids[trial])}), channel "
                f"{ch_names[channel]!r}, sample {sample}. Use the preprocessing "
                "artefact_policy 'reject' or 'interpolate' to remove them."
            )
        if not isinstance(self.config, dict):
            raise DataError(f"TrialSet.config must be a dict, got {type(self.config).__name__}.")
        try:
            json.dumps(self.config)
        except (TypeError, ValueError) as err:
            raise DataError(f"TrialSet.config must be JSON-serialisable: {err}.") from None

    # ------------------------------------------------------------------ access
    def __len__(self) -> int:
        return int(self.data.shape[0])

    @property
    def n_channels(self) -> int:
        """Number of channels (units for spike data)."""
        return int(self.data.shape[1])

    @property
    def n_times(self) -> int:
        """Number of samples (bins) per trial."""
        return int(self.data.shape[2])

    @property
    def times(self) -> np.ndarray:
        """Time of each sample relative to the event, in seconds."""
        return self.tmin + np.arange(self.n_times) / self.sfreq

    def class_counts(self) -> dict[str, int]:
        """Number of trials of each class, by class name."""
        counts = np.bincount(self.labels, minlength=len(self.class_names))
        return {name: int(c) for name, c in zip(self.class_names, counts)}

    def subset(self, mask_or_indices: Any) -> TrialSet:
        """Return the trials selected by a boolean mask or integer indices.

        Parameters
        ----------
        mask_or_indices : array-like of bool, shape (n_trials,), or of int
            Boolean mask over trials, or indices into the set (repeats are
            refused because trial ids must stay unique).

        Returns
        -------
        TrialSet
            A new set holding copies of the selected trials; ``trial_ids``,
            class names and metadata are kept.
        """
        sel = np.asarray(mask_or_indices)
        if sel.dtype == bool:
            if sel.shape != (len(self),):
                raise DataError(
                    f"A boolean mask must have shape ({len(self)},), got {sel.shape}."
                )
            idx = np.flatnonzero(sel)
        else:
            if sel.size and not np.issubdtype(sel.dtype, np.integer):
                raise DataError(
                    f"subset() takes a boolean mask or integer indices, got dtype {sel.dtype}."
                )
            idx = sel.astype(np.int64).ravel()
            if idx.size and (idx.min() < -len(self) or idx.max() >= len(self)):
                raise DataError(f"subset() index out of range for {len(self)} trials.")
        return TrialSet(
            data=self.data[idx],
            labels=self.labels[idx],
            class_names=list(self.class_names),
            subjects=self.subjects[idx],
            runs=self.runs[idx],
            trial_ids=self.trial_ids[idx],
            onsets=self.onsets[idx],
            ch_names=list(self.ch_names),
            sfreq=self.sfreq,
            tmin=self.tmin,
            config=copy.deepcopy(self.config),
        )

    # ----------------------------------------------------------- persistence
    def to_arrays(self) -> tuple[dict[str, np.ndarray], dict]:
        """Split the set into plain arrays and JSON-serialisable metadata.

        Returns
        -------
        arrays : dict of str to ndarray
            ``data``, ``labels``, ``subjects``, ``runs``, ``trial_ids``, ``onsets``.
        meta : dict
            ``class_names``, ``ch_names``, ``sfreq``, ``tmin`` and ``config``.
        """
        arrays = {"data": self.data, "onsets": self.onsets}
        arrays.update({name: getattr(self, name) for name in _INT_FIELDS})
        meta = {
            "class_names": list(self.class_names),
            "ch_names": list(self.ch_names),
            "sfreq": self.sfreq,
            "tmin": self.tmin,
            "config": self.config,
        }
        return arrays, meta

    @classmethod
    def from_arrays(cls, arrays: dict[str, np.ndarray], meta: dict) -> TrialSet:
        """Rebuild a set from the output of :meth:`to_arrays` (validated again)."""
        try:
            return cls(
                data=arrays["data"],
                labels=arrays["labels"],
                class_names=meta["class_names"],
                subjects=arrays["subjects"],
                runs=arrays["runs"],
                trial_ids=arrays["trial_ids"],
                onsets=arrays["onsets"],
                ch_names=meta["ch_names"],
                sfreq=meta["sfreq"],
                tmin=meta["tmin"],
                config=meta.get("config", {}),
            )
        except KeyError as err:
            raise DataError(f"Stored trial set lacks the field {err.args[0]!r}.") from None

    # -------------------------------------------------------------------- MNE
    def to_epochs(self, ch_types: str | list[str] | None = None):
        """Return the trials as an :class:`mne.EpochsArray`.

        Parameters
        ----------
        ch_types : str | list of str | None
            Channel types; ``None`` uses ``config["dataset"]["ch_type"]`` when
            present, else ``"eeg"``.

        Returns
        -------
        epochs : mne.EpochsArray
            Events carry ``label + 1`` as codes with ``event_id`` built from
            ``class_names``; event samples are consecutive trial slots (onsets of
            different runs may coincide), and ``epochs.metadata`` holds the
            subject, run, trial id and onset of each trial. Filter-bank channels
            are typed ``"misc"`` unless told otherwise, because their names are
            not sensor names.
        """
        import mne
        import pandas as pd

        if ch_types is None:
            ch_types = self.config.get("dataset", {}).get("ch_type", "eeg")
            if self.config.get("preprocessing", {}).get("filter_bank"):
                ch_types = "misc"
        info = mne.create_info(list(self.ch_names), self.sfreq, ch_types)
        events = np.column_stack(
            [
                np.arange(len(self), dtype=np.int64) * self.n_times,
                np.zeros(len(self), dtype=np.int64),
                self.labels + 1,
            ]
        )
        present = set(np.unique(self.labels).tolist())
        event_id = {n: i + 1 for i, n in enumerate(self.class_names) if i in present}
        metadata = pd.DataFrame(
            {
                "subject": self.subjects,
                "run": self.runs,
                "trial_id": self.trial_ids,
                "onset": self.onsets,
                "label": self.labels,
            }
        )
        return mne.EpochsArray(
            self.data.astype(np.float64),
            info,
            events=events,
            tmin=self.tmin,
            event_id=event_id or None,
            metadata=metadata,
            verbose=False,
        )

    def __repr__(self) -> str:
        counts = ", ".join(f"{k}: {v}" for k, v in self.class_counts().items())
        return (
            f"<TrialSet | {len(self)} trials ({counts}), {self.n_channels} channels, "
            f"{self.n_times} samples at {self.sfreq:g} Hz, tmin {self.tmin:g} s, "
            f"subjects {sorted(set(self.subjects.tolist()))}>"
        )


def concatenate_trials(sets: list[TrialSet], config: dict | None = None) -> TrialSet:
    """Join trial sets with the same channels, rate, window and classes.

    Parameters
    ----------
    sets : list of TrialSet
        At least one set; trials keep their order (set by set).
    config : dict | None
        Config of the result; ``None`` keeps the first set's.

    Returns
    -------
    TrialSet
        ``trial_ids`` are renumbered ``0..n_trials-1`` so they stay unique.

    Raises
    ------
    DataError
        If the sets differ in class names, channel names, sampling rate,
        ``tmin`` or trial length (the message names the first difference).
    """
    if not sets:
        raise DataError("concatenate_trials needs at least one TrialSet.")
    first = sets[0]
    for i, other in enumerate(sets[1:], start=1):
        for attr in ("class_names", "ch_names", "sfreq", "tmin", "n_times"):
            a, b = getattr(first, attr), getattr(other, attr)
            if a != b:
                if isinstance(a, list):
                    diff = [x for x in b if x not in a][:5] or [x for x in a if x not in b][:5]
                    detail = f"first differences: {diff}" if diff else "same names, other order"
                else:
                    detail = f"{a!r} vs {b!r}"
                raise DataError(
                    f"Cannot concatenate trial sets 0 and {i}: {attr} differ ({detail})."
                )
    n = sum(len(s) for s in sets)
    return TrialSet(
        data=np.concatenate([s.data for s in sets]),
        labels=np.concatenate([s.labels for s in sets]),
        class_names=list(first.class_names),
        subjects=np.concatenate([s.subjects for s in sets]),
        runs=np.concatenate([s.runs for s in sets]),
        trial_ids=np.arange(n, dtype=np.int64),
        onsets=np.concatenate([s.onsets for s in sets]),
        ch_names=list(first.ch_names),
        sfreq=first.sfreq,
        tmin=first.tmin,
        config=copy.deepcopy(first.config if config is None else config),
    )
