"""Trials -> the engine's timed input-current events.

Time scale
----------
The engine works in dimensionless *model time units*; the neuron time
constant ``tau`` is expressed in them. Here **one model time unit is
``1 / time_scale`` seconds of recording** (default ``time_scale = 20``: one
unit = 50 ms), so a recording time ``t`` seconds becomes ``t0 + t * time_scale``.

Sampled signals (EEG)
---------------------
One event per sample: sample ``k`` of a trial happens at model time
``t0 + k / sfreq * time_scale`` and carries the whole channel vector
``gain * x_k`` (the first layer adds ``W_in @ (gain * x_k)`` to its synaptic
currents). All channels of a sample are one event, so a trial has ``n_times``
events, not ``n_times * n_channels``.

Spike recordings
----------------
Two encodings:

* **per time bin**: the binned counts of a :class:`~bci_qif.trials.TrialSet`
  from :func:`bci_qif.datasets.load_spike_dataset` go through
  :func:`to_input_events` like EEG (``sfreq = 1 / bin_s``), one event per
  bin with the count vector as its current;
* **per spike**: :func:`spike_events` gives one event per spike, at the
  spike's time, carrying ``gain`` on the spiking unit's input only (a one-hot
  vector); :func:`counts_to_spike_events` does the same from binned counts
  (spikes placed at their bin's start, a count of ``c`` gives ``c`` events),
  and :func:`pad_events` stacks trials with different spike numbers.
"""

from __future__ import annotations

import math

import numpy as np

from .validation import is_integer

__all__ = [
    "DEFAULT_TIME_SCALE",
    "to_input_events",
    "trials_to_input_events",
    "spike_events",
    "counts_to_spike_events",
    "pad_events",
]

#: Model time units per second of recording (one unit = 50 ms).
DEFAULT_TIME_SCALE = 20.0


def _check_scalar(name: str, value, *, positive: bool) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float, np.integer, np.floating)):
        raise ValueError(f"{name} must be a number, got {value!r}.")
    value = float(value)
    if not math.isfinite(value) or (positive and value <= 0):
        kind = "finite positive" if positive else "finite"
        raise ValueError(f"{name} must be a {kind} number, got {value!r}.")
    return value


def to_input_events(
    data,
    sfreq: float,
    time_scale: float = DEFAULT_TIME_SCALE,
    gain: float = 1.0,
    t0: float = 0.0,
) -> tuple[np.ndarray, np.ndarray]:
    """Convert sampled trials into one input event per sample.

    Parameters
    ----------
    data : array-like, shape (n_trials, n_channels, n_times) or (n_channels, n_times)
        Preprocessed (e.g. standardized) trials, or one trial / real-time window.
    sfreq : float
        Sampling rate of ``data`` in Hz (for binned spikes: ``1 / bin_s``).
    time_scale : float
        Model time units per second (model time unit = ``1 / time_scale`` s).
    gain : float
        Factor applied to every current.
    t0 : float
        Model time of the first sample.

    Returns
    -------
    times : ndarray of float32, shape (n_times,)
        ``t0 + k / sfreq * time_scale`` for sample ``k``; shared by all trials.
    currents : ndarray of float32, shape (n_trials, n_times, n_channels)
        ``gain * data`` with time before channels (shape ``(n_times,
        n_channels)`` for 2-D input): row ``k`` is the vector of event ``k``.

    Raises
    ------
    ValueError
        Wrong dimensions, non-finite data, or a non-positive ``sfreq`` /
        ``time_scale``.
    """
    data = np.asarray(data)
    if data.ndim not in (2, 3) or not np.issubdtype(data.dtype, np.number):
        raise ValueError(
            "data must be numeric with shape (n_trials, n_channels, n_times) or "
            f"(n_channels, n_times), got shape {data.shape} and dtype {data.dtype}."
        )
    if not np.all(np.isfinite(data)):
        raise ValueError("data holds NaN or inf values; they would poison the simulation.")
    sfreq = _check_scalar("sfreq", sfreq, positive=True)
    time_scale = _check_scalar("time_scale", time_scale, positive=True)
    gain = _check_scalar("gain", gain, positive=False)
    t0 = _check_scalar("t0", t0, positive=False)
    n_times = data.shape[-1]
    # Computed in float64 then cast, so long trials do not accumulate float32 error.
    times = (t0 + np.arange(n_times, dtype=np.float64) / sfreq * time_scale).astype(np.float32)
    currents = np.swapaxes(data, -1, -2).astype(np.float32) * np.float32(gain)
    return times, np.ascontiguousarray(currents)


def trials_to_input_events(
    trials, time_scale: float = DEFAULT_TIME_SCALE, gain: float = 1.0, t0: float = 0.0
) -> tuple[np.ndarray, np.ndarray]:
    """:func:`to_input_events` for a :class:`~bci_qif.trials.TrialSet` (uses its ``sfreq``)."""
    return to_input_events(trials.data, trials.sfreq, time_scale=time_scale, gain=gain, t0=t0)


def spike_events(
    spike_times,
    unit_ids,
    n_units: int,
    time_scale: float = DEFAULT_TIME_SCALE,
    gain: float = 1.0,
    t0: float = 0.0,
) -> tuple[np.ndarray, np.ndarray]:
    """One input event per recorded spike.

    Parameters
    ----------
    spike_times : array-like of float, shape (n_spikes,)
        Spike times in seconds from the trial's time origin.
    unit_ids : array-like of int, shape (n_spikes,)
        Unit (input channel) of each spike, in ``0..n_units-1``.
    n_units : int
        Number of input channels.
    time_scale, gain, t0 : float
        As in :func:`to_input_events`.

    Returns
    -------
    times : ndarray of float32, shape (n_spikes,)
        ``t0 + spike_time * time_scale``, sorted (stable, so simultaneous
        spikes keep their order).
    currents : ndarray of float32, shape (n_spikes, n_units)
        ``gain`` at the spiking unit, 0 elsewhere.
    """
    times = np.asarray(spike_times, dtype=np.float64).reshape(-1)
    units = np.asarray(unit_ids).reshape(-1)
    if units.size == 0:
        units = units.astype(np.int64)  # an empty list arrives as float
    if not (is_integer(n_units) and n_units >= 1):
        raise ValueError(f"n_units must be a positive integer, got {n_units!r}.")
    if times.shape != units.shape:
        raise ValueError(
            "spike_times and unit_ids must have the same length, got "
            f"{times.size} and {units.size}."
        )
    if units.size and (
        not np.issubdtype(units.dtype, np.integer) or units.min() < 0 or units.max() >= n_units
    ):
        raise ValueError(f"unit_ids must be integers in 0..{n_units - 1}.")
    if not np.all(np.isfinite(times)):
        raise ValueError("spike_times must be finite.")
    time_scale = _check_scalar("time_scale", time_scale, positive=True)
    gain = _check_scalar("gain", gain, positive=False)
    t0 = _check_scalar("t0", t0, positive=False)
    order = np.argsort(times, kind="stable")
    currents = np.zeros((times.size, n_units), dtype=np.float32)
    currents[np.arange(times.size), units[order]] = gain
    return (t0 + times[order] * time_scale).astype(np.float32), currents


def counts_to_spike_events(
    counts,
    sfreq: float,
    tmin: float = 0.0,
    time_scale: float = DEFAULT_TIME_SCALE,
    gain: float = 1.0,
    t0: float = 0.0,
) -> tuple[np.ndarray, np.ndarray]:
    """One event per spike from one trial of binned counts.

    Parameters
    ----------
    counts : array-like of int, shape (n_units, n_bins)
        Spike counts of one trial (e.g. ``TrialSet.data[i]`` of a spike dataset).
    sfreq : float
        Bins per second (``TrialSet.sfreq``).
    tmin : float
        Time in seconds of the first bin's start relative to the event
        (``TrialSet.tmin``); spikes are placed at ``tmin + b / sfreq`` for bin
        ``b``. The returned model times are measured from the window start:
        ``t0 + (b / sfreq) * time_scale``.
    time_scale, gain, t0 : float
        As in :func:`to_input_events`.

    Returns
    -------
    times, currents
        As :func:`spike_events`.
    """
    counts = np.asarray(counts)
    if counts.ndim != 2:
        raise ValueError(f"counts must have shape (n_units, n_bins), got {counts.shape}.")
    if not np.all(np.isfinite(counts)) or np.any(counts < 0) or np.any(counts != np.round(counts)):
        raise ValueError("counts must be non-negative whole numbers.")
    sfreq = _check_scalar("sfreq", sfreq, positive=True)
    _check_scalar("tmin", tmin, positive=False)
    reps = counts.astype(np.int64)
    units, bins = np.nonzero(reps)
    n = reps[units, bins]
    # tmin only labels the window; times run from the window start like to_input_events.
    return spike_events(
        np.repeat(bins / sfreq, n), np.repeat(units, n), counts.shape[0],
        time_scale=time_scale, gain=gain, t0=t0,
    )


def pad_events(events: list[tuple[np.ndarray, np.ndarray]], n_events: int | None = None):
    """Stack per-trial event lists of different lengths into fixed-size arrays.

    Parameters
    ----------
    events : list of (times, currents)
        Per trial, as from :func:`spike_events`.
    n_events : int | None
        Length to pad to (default: the longest trial). Trials with more events
        raise ``ValueError`` rather than silently losing spikes.

    Returns
    -------
    times : ndarray of float32, shape (n_trials, n_events)
        Padded with ``+inf``: a padding event never happens inside a trial.
    currents : ndarray of float32, shape (n_trials, n_events, n_units)
        Padded with zeros, so even a padding event processed adds nothing.
    mask : ndarray of bool, shape (n_trials, n_events)
        True for real events.
    """
    if not events:
        raise ValueError("pad_events needs at least one trial.")
    n_units = {c.shape[1] for _, c in events}
    if len(n_units) != 1:
        raise ValueError(f"All trials must have the same number of units, got {sorted(n_units)}.")
    longest = max(len(t) for t, _ in events)
    n_events = longest if n_events is None else int(n_events)
    if longest > n_events:
        raise ValueError(f"A trial has {longest} events, more than n_events={n_events}.")
    times = np.full((len(events), n_events), np.inf, dtype=np.float32)
    currents = np.zeros((len(events), n_events, n_units.pop()), dtype=np.float32)
    mask = np.zeros((len(events), n_events), dtype=bool)
    for i, (t, c) in enumerate(events):
        times[i, : len(t)] = t
        currents[i, : len(t)] = c
        mask[i, : len(t)] = True
    return times, currents, mask
