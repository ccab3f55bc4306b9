"""The Yin-Yang dataset, generated on the fly, and its spike-time encoding.

The Yin-Yang dataset (Kriener, Goeltz & Petrovici 2021, "The Yin-Yang
dataset", arXiv:2102.08211) is a small 2-D classification benchmark for
spiking networks: points of the yin-yang symbol are classified as *yin*,
*yang* or one of the two *dots*. It is not linearly separable, so a hidden
layer is needed, yet it is small enough to train in seconds. Nothing is
downloaded: :func:`make_yinyang` draws the points from the geometry below.

Geometry
--------
The symbol is a big circle of radius ``R = r_big`` centred at ``(R, R)``,
so points lie in ``[0, 2R]^2`` (``[0, 1]^2`` by default). Two medium
circles of radius ``R / 2`` are centred at ``(R / 2, R)`` (left) and
``(3R / 2, R)`` (right); a dot of radius ``r_small`` sits at the centre of
each.

* **dot** (label 2): inside either dot;
* **yin** (label 0): inside the left medium circle, or in the upper half
  (``y > R``) and outside the right medium circle;
* **yang** (label 1): everything else inside the big circle.

Encoding
--------
:func:`to_events` uses the standard time-to-first-spike encoding of the
dataset: each sample becomes five input spikes, one per channel
``(x, 1 - x, y, 1 - y, bias)``. A coordinate ``c`` in ``[0, 1]`` fires at
``t_early + c * (t_late - t_early)`` and the bias channel at ``bias_time``.
The mirrored channels ``1 - x`` and ``1 - y`` give every sample the same
number of spikes and the same mean spike time, so the position is carried
by spike timing only, not by the amount of input. Times are in model time
units (the neuron time constant ``tau`` is 1 unit); the defaults put all
inputs within two ``tau`` and :data:`DEFAULT_T` leaves the outputs two more
``tau`` to answer.

Training
--------
The event times differ between samples, so they are per-trial arrays of
shape ``(n, 5)``, which :func:`bci_qif.network.simulate` and
:func:`bci_qif.network.batch_loss` accept: slice ``times`` together with
``currents`` for each minibatch (:func:`bci_qif.training.train` expects
times shared by all trials). A QIF network ``(5, 30, 3)`` trained with Adam
(learning rate 3e-2, batches of 30) reaches about 0.6-0.8 training accuracy
on 300 samples within 6 epochs.
"""

from __future__ import annotations

import math

import numpy as np

from .errors import ConfigError
from .validation import is_integer

__all__ = [
    "CLASS_NAMES",
    "CHANNEL_NAMES",
    "DEFAULT_T",
    "make_yinyang",
    "classify",
    "to_events",
]

#: Label -> class name.
CLASS_NAMES = ("yin", "yang", "dot")

#: Input channel order of :func:`to_events` (the columns of its one-hot currents).
CHANNEL_NAMES = ("x", "1-x", "y", "1-y", "bias")

#: Trial length (model time units) to simulate encoded samples with: the latest
#: input spike comes at ``t_late = 2.0`` by default, and two more time constants
#: let the output neurons integrate it and fire.
DEFAULT_T = 4.0

# Candidate points drawn per rejection-sampling round; the rarest class (the
# dots, about 8 % of the disc by default) then needs only a few rounds.
_CHUNK = 4096


def _check_number(name: str, value, *, allow_zero: bool = False) -> float:
    """A finite positive (or non-negative) float, or a ConfigError that names ``name``."""
    if isinstance(value, bool) or not isinstance(value, (int, float, np.integer, np.floating)):
        raise ConfigError(f"{name} must be a number, got {value!r}.")
    value = float(value)
    if not (math.isfinite(value) and (value >= 0 if allow_zero else value > 0)):
        kind = "non-negative" if allow_zero else "positive"
        raise ConfigError(f"{name} must be a finite {kind} number, got {value!r}.")
    return value


def _check_count(name: str, value) -> int:
    """A non-negative int (bools refused: ``True`` samples is a bug, not 1)."""
    if not (is_integer(value) and value >= 0):
        raise ConfigError(f"{name} must be a non-negative integer, got {value!r}.")
    return int(value)


def _check_radii(r_small, r_big) -> tuple[float, float]:
    r_small = _check_number("r_small", r_small)
    r_big = _check_number("r_big", r_big)
    # A dot at least as large as its medium circle would swallow the yin or yang.
    if r_small >= r_big / 2:
        raise ConfigError(f"r_small must be smaller than r_big / 2, got r_small={r_small}, r_big={r_big}.")
    return r_small, r_big


def _check_points(points) -> np.ndarray:
    points = np.asarray(points)
    if points.ndim != 2 or points.shape[1] != 2 or not np.issubdtype(points.dtype, np.number):
        raise ConfigError(f"points must be numeric with shape (n, 2), got shape {points.shape}.")
    points = points.astype(np.float64, copy=False)
    if not np.all(np.isfinite(points)):
        raise ConfigError("points hold NaN or inf values.")
    return points


def classify(points, *, r_small: float = 0.1, r_big: float = 0.5) -> np.ndarray:
    """Class of each point of the yin-yang symbol (see the module notes).

    Parameters
    ----------
    points : array-like, shape (n, 2)
        ``(x, y)`` coordinates, expected inside the big circle.
    r_small, r_big : float
        Dot and big-circle radii, with ``r_small < r_big / 2``.

    Returns
    -------
    labels : ndarray of int64, shape (n,)
        0 (yin), 1 (yang) or 2 (dot). Points outside the big circle are not
        flagged; :func:`make_yinyang` never produces them.
    """
    r_small, r_big = _check_radii(r_small, r_big)
    points = _check_points(points)
    x, y = points[:, 0], points[:, 1]
    d_left = np.hypot(x - r_big / 2, y - r_big)
    d_right = np.hypot(x - 3 * r_big / 2, y - r_big)
    in_dot = (d_left <= r_small) | (d_right <= r_small)
    is_yin = (d_left <= r_big / 2) | ((y > r_big) & (d_right > r_big / 2))
    return np.where(in_dot, 2, np.where(is_yin, 0, 1)).astype(np.int64)


def _uniform_in_disc(rng: np.random.Generator, n: int, r_big: float) -> np.ndarray:
    """``n`` points drawn uniformly in the big circle (rejection from its square)."""
    kept = np.empty((0, 2))
    while len(kept) < n:
        candidates = rng.uniform(0.0, 2 * r_big, size=(max(_CHUNK, 2 * n), 2))
        inside = np.hypot(candidates[:, 0] - r_big, candidates[:, 1] - r_big) <= r_big
        kept = np.concatenate([kept, candidates[inside]])
    return kept[:n]


def make_yinyang(
    n_samples: int, *, r_small: float = 0.1, r_big: float = 0.5, seed: int = 0
) -> tuple[np.ndarray, np.ndarray]:
    """Draw a class-balanced Yin-Yang dataset.

    Points are uniform inside the big circle *given their class*: candidates
    are drawn uniformly in the disc and a candidate is kept only while its
    class still needs samples (rejection sampling). Without this the dots,
    which cover about 8 % of the disc, would be a small minority.

    Parameters
    ----------
    n_samples : int
        Number of points; the three class counts differ by at most one
        (the first ``n_samples % 3`` classes get the extra points).
    r_small : float
        Radius of the two dots.
    r_big : float
        Radius of the big circle; points lie in ``[0, 2 * r_big]^2``.
    seed : int
        Seed of the generator: the same arguments give the same dataset.

    Returns
    -------
    points : ndarray of float64, shape (n_samples, 2)
        ``(x, y)`` coordinates, in random order.
    labels : ndarray of int64, shape (n_samples,)
        0 (yin), 1 (yang) or 2 (dot), see :func:`classify`.

    Raises
    ------
    ConfigError
        (a ``ValueError``) A negative or non-integer ``n_samples``, non-positive radii, or
        ``r_small >= r_big / 2``.
    """
    n_samples = _check_count("n_samples", n_samples)
    r_small, r_big = _check_radii(r_small, r_big)
    if not is_integer(seed):
        raise ConfigError(f"seed must be an integer, got {seed!r}.")
    rng = np.random.default_rng(seed)
    wanted = [n_samples // 3 + (c < n_samples % 3) for c in range(3)]
    per_class = [np.empty((0, 2)) for _ in range(3)]
    while any(len(p) < w for p, w in zip(per_class, wanted)):
        candidates = _uniform_in_disc(rng, _CHUNK, r_big)
        labels = classify(candidates, r_small=r_small, r_big=r_big)
        for c in range(3):
            missing = wanted[c] - len(per_class[c])
            if missing > 0:
                per_class[c] = np.concatenate([per_class[c], candidates[labels == c][:missing]])
    points = np.concatenate(per_class)
    labels = np.repeat(np.arange(3, dtype=np.int64), wanted)
    # Shuffle so that minibatches taken in order are balanced too.
    order = rng.permutation(n_samples)
    return points[order], labels[order]


def to_events(
    points,
    *,
    t_early: float = 0.15,
    t_late: float = 2.0,
    bias_time: float = 0.9,
    time_scale: float = 1.0,
    extent: float = 1.0,
) -> tuple[np.ndarray, np.ndarray]:
    """Encode points as five timed input spikes per sample.

    Parameters
    ----------
    points : array-like, shape (n, 2)
        ``(x, y)`` in ``[0, extent]^2`` (from :func:`make_yinyang`).
    t_early, t_late : float
        Spike times of a coordinate at 0 and at ``extent`` (model time
        units before ``time_scale``); ``0 <= t_early < t_late``.
    bias_time : float
        Spike time of the bias channel, which fires the same on every sample
        and gives the network a fixed reference time.
    time_scale : float
        Factor applied to every time (e.g. to stretch the encoding relative to
        the neuron time constant). Simulate with ``T = DEFAULT_T * time_scale``
        for the default times.
    extent : float
        Side of the square the points live in (``2 * r_big``); coordinates are
        divided by it first.

    Returns
    -------
    times : ndarray of float32, shape (n, 5)
        Per-sample event times, sorted in increasing order (ties keep channel
        order), as :func:`bci_qif.network.simulate` and
        :func:`bci_qif.network.batch_loss` accept for per-trial times.
    currents : ndarray of float32, shape (n, 5, 5)
        ``currents[i, k]`` is the one-hot vector of the channel (in
        :data:`CHANNEL_NAMES` order) that fires the ``k``-th event of sample ``i``.

    Raises
    ------
    ConfigError
        (a ``ValueError``) Bad shapes, non-finite or out-of-range points, or inconsistent times.
    """
    t_early = _check_number("t_early", t_early, allow_zero=True)
    t_late = _check_number("t_late", t_late)
    bias_time = _check_number("bias_time", bias_time, allow_zero=True)
    time_scale = _check_number("time_scale", time_scale)
    extent = _check_number("extent", extent)
    if not t_early < t_late:
        raise ConfigError(f"t_early must be smaller than t_late, got t_early={t_early}, t_late={t_late}.")
    points = _check_points(points) / extent
    if points.size and (points.min() < 0 or points.max() > 1):
        raise ConfigError(f"points must lie in [0, extent]^2 = [0, {extent}]^2.")
    x, y = points[:, 0], points[:, 1]
    values = np.stack([x, 1 - x, y, 1 - y], axis=1)
    coord_times = t_early + values * (t_late - t_early)
    unsorted = np.concatenate([coord_times, np.full((len(points), 1), bias_time)], axis=1)
    # Stable sort: a coordinate spike that coincides with the bias keeps channel order.
    order = np.argsort(unsorted, axis=1, kind="stable")
    times = np.take_along_axis(unsorted, order, axis=1) * time_scale
    currents = np.eye(len(CHANNEL_NAMES), dtype=np.float32)[order]
    return times.astype(np.float32), currents

