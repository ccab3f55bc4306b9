"""Input encodings: preprocessed EEG trials -> feature time series for the network.

An encoder is a scikit-learn transformer fitted on *training* trials only. It maps
``X`` of shape ``(n_trials, n_channels, n_times)`` sampled at ``sfreq`` to
``(n_trials, n_features, n_frames)`` sampled at :attr:`frame_rate`, which
:func:`bci_qif.currents.to_input_events` turns into the engine's current events.

``"csp_power"``
    Common spatial patterns (fitted on the training trials) followed by the
    log-power envelope of each component, smoothed over ``window_s`` and sampled at
    ``rate_hz``, then standardized with training statistics. Motor imagery shows up
    as band-power changes of spatially filtered signals, which is what this keeps.
``"signal"``
    The (already band-passed) channels themselves, standardized per channel and
    decimated to ``rate_hz``.
``"tangent_space"``
    The trial's spatial covariance matrix mapped to the Riemannian tangent space
    at the training trials' mean (optionally after re-centring each subject to the
    identity), standardized with training statistics and optionally reduced by a
    PCA fitted on the training trials. The vector is presented as a constant
    current for the whole trial (one identical event per frame), so the network
    sees the same information as tangent space + logistic regression and decides
    by which output neuron it drives to fire first. With ``n_segments`` > 1 the
    trial is cut into that many consecutive equal parts, each with its own
    covariance, alignment and tangent map, and the vectors are concatenated: the
    features then say how the rhythms change during the trial.

Encoders store their learned state as plain arrays (:meth:`to_arrays` /
:meth:`from_arrays`) so checkpoints never need pickle.
"""

from __future__ import annotations

import numpy as np
from sklearn.base import BaseEstimator, TransformerMixin
from sklearn.utils.validation import check_is_fitted

from .validation import is_integer

__all__ = ["CSPPowerEncoder", "SignalEncoder", "TangentSpaceEncoder", "make_encoder", "segment_bounds", "ENCODERS"]


def _check_trials(X, name="X"):
    X = np.asarray(X, dtype=np.float64)
    if X.ndim != 3:
        raise ValueError(f"{name} must have shape (n_trials, n_channels, n_times), got {X.shape}")
    if not np.all(np.isfinite(X)):
        raise ValueError(f"{name} contains NaN or infinite values; clean or reject those trials first")
    return X


def segment_bounds(n_times, n_segments):
    """Sample ranges of ``n_segments`` consecutive, (nearly) equal parts of ``n_times`` samples.

    Returns
    -------
    list of (int, int)
        ``(start, stop)`` of each part; together they cover every sample once.
    """
    edges = np.linspace(0, n_times, n_segments + 1).astype(int)
    return list(zip(edges[:-1], edges[1:]))


def _frame_step(sfreq, rate_hz):
    step = int(round(sfreq / rate_hz))
    if step < 1:
        raise ValueError(f"rate_hz={rate_hz} is above the sampling rate {sfreq} Hz")
    return step


class CSPPowerEncoder(TransformerMixin, BaseEstimator):
    """CSP components -> standardized log-power envelopes.

    Parameters
    ----------
    sfreq : float
        Sampling rate of the input trials (Hz).
    n_components : int
        Number of CSP components (the most discriminative, from both ends).
    rate_hz : float
        Frame rate of the output envelopes (Hz).
    window_s : float
        Length of the moving-average window that smooths the power (s).
    reg : str or float or None
        Covariance regularization passed to :class:`mne.decoding.CSP`.
    """

    def __init__(self, sfreq=160.0, n_components=8, rate_hz=20.0, window_s=0.25, reg="ledoit_wolf"):
        self.sfreq = sfreq
        self.n_components = n_components
        self.rate_hz = rate_hz
        self.window_s = window_s
        self.reg = reg

    @property
    def frame_rate(self):
        """Output sampling rate (Hz)."""
        return self.sfreq / _frame_step(self.sfreq, self.rate_hz)

    def _envelopes(self, X):
        sources = np.einsum("kc,nct->nkt", self.filters_, X)
        width = max(1, int(round(self.window_s * self.sfreq)))
        kernel = np.ones(width) / width
        power = np.apply_along_axis(lambda p: np.convolve(p, kernel, mode="same"), -1, sources**2)
        step = _frame_step(self.sfreq, self.rate_hz)
        return np.log(power[..., ::step] + 1e-20)

    def fit(self, X, y):
        """Fit CSP filters and envelope statistics on training trials."""
        from mne.decoding import CSP
        from mne.utils import use_log_level

        X = _check_trials(X)
        y = np.asarray(y)
        if len(np.unique(y)) < 2:
            raise ValueError("CSP needs trials of at least two classes")
        n_components = min(int(self.n_components), X.shape[1])
        csp = CSP(n_components=n_components, reg=self.reg, log=True, norm_trace=False)
        with use_log_level("WARNING"):  # CSP logs every covariance estimate at INFO
            csp.fit(X, y)
        self.filters_ = np.asarray(csp.filters_[:n_components], dtype=np.float64)
        env = self._envelopes(X)
        self.mean_ = env.mean(axis=(0, 2))
        self.std_ = env.std(axis=(0, 2)) + 1e-12
        return self

    def transform(self, X):
        """Encode trials: ``(n_trials, n_components, n_frames)`` float32."""
        check_is_fitted(self, "filters_")
        X = _check_trials(X)
        if X.shape[1] != self.filters_.shape[1]:
            raise ValueError(f"X has {X.shape[1]} channels, the encoder was fitted on {self.filters_.shape[1]}")
        env = self._envelopes(X)
        return ((env - self.mean_[:, None]) / self.std_[:, None]).astype(np.float32)

    def to_arrays(self):
        """Learned state as plain arrays (for checkpoints)."""
        check_is_fitted(self, "filters_")
        return {"filters": self.filters_, "mean": self.mean_, "std": self.std_}

    def set_arrays(self, arrays):
        """Restore learned state written by :meth:`to_arrays`."""
        self.filters_ = np.asarray(arrays["filters"], dtype=np.float64)
        self.mean_ = np.asarray(arrays["mean"], dtype=np.float64)
        self.std_ = np.asarray(arrays["std"], dtype=np.float64)
        return self


class SignalEncoder(TransformerMixin, BaseEstimator):
    """Per-channel standardized signal, decimated to ``rate_hz``.

    Parameters
    ----------
    sfreq : float
        Sampling rate of the input trials (Hz).
    rate_hz : float or None
        Output frame rate; ``None`` keeps every sample.
    """

    def __init__(self, sfreq=160.0, rate_hz=None):
        self.sfreq = sfreq
        self.rate_hz = rate_hz

    @property
    def frame_rate(self):
        if self.rate_hz is None:
            return float(self.sfreq)
        return self.sfreq / _frame_step(self.sfreq, self.rate_hz)

    def _step(self):
        return 1 if self.rate_hz is None else _frame_step(self.sfreq, self.rate_hz)

    def fit(self, X, y=None):
        X = _check_trials(X)
        self.mean_ = X.mean(axis=(0, 2))
        self.std_ = X.std(axis=(0, 2)) + 1e-12
        return self

    def transform(self, X):
        check_is_fitted(self, "mean_")
        X = _check_trials(X)
        if X.shape[1] != self.mean_.shape[0]:
            raise ValueError(f"X has {X.shape[1]} channels, the encoder was fitted on {self.mean_.shape[0]}")
        Z = (X - self.mean_[:, None]) / self.std_[:, None]
        return Z[..., :: self._step()].astype(np.float32)

    def to_arrays(self):
        check_is_fitted(self, "mean_")
        return {"mean": self.mean_, "std": self.std_}

    def set_arrays(self, arrays):
        self.mean_ = np.asarray(arrays["mean"], dtype=np.float64)
        self.std_ = np.asarray(arrays["std"], dtype=np.float64)
        return self


class TangentSpaceEncoder(TransformerMixin, BaseEstimator):
    """Covariance -> tangent-space vector -> standardized, constant input currents.

    Parameters
    ----------
    sfreq : float
        Sampling rate of the input trials (Hz).
    rate_hz : float
        Frame rate of the output (Hz): the feature vector is repeated once per frame,
        which the synaptic filter turns into a nearly constant current.
    n_components : int or None
        Keep this many principal components of the standardized tangent vectors (PCA
        fitted on the training trials); ``None`` keeps all ``n_segments c (c + 1) / 2``.
    recenter : bool
        Re-centre each subject's covariances to the identity by that subject's own
        Riemannian mean before the tangent map (unsupervised alignment across
        subjects, as :class:`bci_qif.baselines.SubjectRecentering`). Subjects come
        as ``groups``. A subject seen in ``fit`` is aligned by the mean of its
        training trials; a new subject by the mean of its own trials passed to
        ``transform`` together (unlabelled, so pass several). Without ``groups``
        every trial is treated as coming from the training subject (the pooled
        training mean when several subjects were seen), or, after
        :meth:`calibrate`, from the calibrated user: what real-time windows need.
    n_segments : int
        Cut every trial (or real-time window) into this many consecutive parts of
        equal length. Each part has its own covariance, reference point and subject
        means (part ``k`` of a trial is only ever compared with part ``k`` of
        others); the parts' tangent vectors are concatenated into one feature
        vector. 1 (one covariance of the whole trial) is the classical encoding.
    scale : {"feature", "common"}
        ``"feature"`` divides every feature by its own training standard deviation;
        ``"common"`` divides all of them by one number (the root mean square of
        those deviations), which keeps the tangent space's own relative scales: a
        feature that barely varies stays small instead of being blown up to the
        size of the informative ones.

    Attributes
    ----------
    reference_ : ndarray, shape (n_segments, n_channels, n_channels)
        Tangent point of each part (before re-centring: the training mean).
    subject_means_ : ndarray, shape (n_subjects, n_segments, n_channels, n_channels)
        Riemannian mean of each training subject's trials, per part.

    Notes
    -----
    Covariances use Oracle Approximating Shrinkage: 64-channel covariances of a
    few hundred samples are too ill-conditioned for the matrix logarithm otherwise.
    """

    __metadata_request__fit = {"groups": True}
    __metadata_request__transform = {"groups": True}

    def __init__(self, sfreq=160.0, rate_hz=10.0, n_components=None, recenter=False, n_segments=1, scale="feature"):
        self.sfreq = sfreq
        self.rate_hz = rate_hz
        self.n_components = n_components
        self.recenter = recenter
        self.n_segments = n_segments
        self.scale = scale

    @property
    def frame_rate(self):
        """Output sampling rate (Hz)."""
        if not self.rate_hz > 0:
            raise ValueError(f"rate_hz must be positive, got {self.rate_hz!r}")
        return float(self.rate_hz)

    def _covariances(self, X):
        """Covariances of the trials' consecutive parts: ``(n_trials, n_segments, c, c)``."""
        from pyriemann.estimation import Covariances

        n_segments = self.n_segments
        if not (is_integer(n_segments) and n_segments >= 1):
            raise ValueError(f"n_segments must be a positive integer, got {n_segments!r}")
        # Each part needs two samples for a covariance at all (OAS shrinkage copes with
        # fewer samples than channels).
        if X.shape[-1] < 2 * n_segments:
            raise ValueError(f"trials of {X.shape[-1]} samples cannot be cut into {n_segments} parts")
        estimator = Covariances(estimator="oas")
        return np.stack([estimator.transform(X[..., a:b]) for a, b in segment_bounds(X.shape[-1], n_segments)],
                        axis=1)

    @staticmethod
    def _mean(covs):
        """Riemannian mean of ``(n, n_segments, c, c)`` covariances, per part."""
        from pyriemann.geometry.mean import mean_riemann

        return np.stack([mean_riemann(covs[:, k]) for k in range(covs.shape[1])])

    def _subject_mean(self, subject, covs):
        """Training mean of a known subject, else the Riemannian mean of ``covs``."""
        known = np.flatnonzero(self.subject_ids_ == subject) if subject is not None else []
        if len(known):
            return self.subject_means_[known[0]]
        if subject is None and self.live_mean_ is not None:
            return self.live_mean_
        if subject is None or len(covs) < 2:
            # One real-time window carries no estimate of a mean: use training's.
            return self.reference_
        return self._mean(covs)

    def calibrate(self, X):
        """Align un-grouped trials by the mean of a user's unlabelled EEG from now on.

        Parameters
        ----------
        X : array, shape (n_windows, n_channels, n_times) or None
            At least two windows (or trials) of the user, preprocessed like the
            training trials; ``None`` forgets the calibration (back to the training
            reference).

        Returns
        -------
        self
        """
        self._require_alignment("calibrate")
        if X is None:
            self.running_mean_, self.live_count_ = None, 0
            return self
        X = self._check_user_windows(X, "calibrate")
        if len(X) < 2:
            raise ValueError(f"calibrate needs at least 2 windows of {self.n_channels_} channels, got shape {X.shape}")
        self.running_mean_, self.live_count_ = self._mean(self._covariances(X)), len(X)
        return self

    def adapt(self, X):
        """Fold a user's new unlabelled windows into the mean that aligns un-grouped trials.

        A running Riemannian mean: each window's covariance moves the mean along the
        geodesic towards it by ``1 / n`` (``n`` windows so far, those of
        :meth:`calibrate` included), which keeps it the running estimate of the
        user's mean without storing the windows. Un-grouped trials are aligned by it
        from the second window on (before that: the training reference).

        Parameters
        ----------
        X : array, shape (n_windows, n_channels, n_times)

        Returns
        -------
        self
        """
        from pyriemann.geometry.geodesic import geodesic_riemann

        self._require_alignment("adapt")
        mean, count = getattr(self, "running_mean_", None), getattr(self, "live_count_", 0)
        for cov in self._covariances(self._check_user_windows(X, "adapt")):
            count += 1
            mean = cov if count == 1 else np.stack([geodesic_riemann(m, c, 1.0 / count) for m, c in zip(mean, cov)])
        self.running_mean_, self.live_count_ = mean, count
        return self

    @property
    def live_mean_(self):
        """The user's mean that aligns un-grouped trials (:meth:`calibrate`, :meth:`adapt`), else None.

        Shape ``(n_segments, n_channels, n_channels)``.
        """
        # One window aligned by itself would be the identity: a mean needs two.
        return self.running_mean_ if getattr(self, "live_count_", 0) >= 2 else None

    def adopt_reference(self, X):
        """Make the mean of a user's trials the reference of every un-grouped trial.

        Unlike :meth:`calibrate` this is learned state, saved with the encoder: a
        decoder fine-tuned on the user's trials keeps the alignment it was tuned with.
        Any calibration or running mean is forgotten.

        Parameters
        ----------
        X : array, shape (n_trials, n_channels, n_times)
            At least two trials (or windows) of the user.

        Returns
        -------
        self
        """
        self.calibrate(X)
        self.reference_ = self.live_mean_
        return self.calibrate(None)

    def _require_alignment(self, caller):
        check_is_fitted(self, "components_")
        if not self.recenter:
            raise ValueError(f"{caller} needs recenter=True: this encoder does not align subjects")

    def _check_user_windows(self, X, caller):
        X = _check_trials(X)
        if X.shape[1] != self.n_channels_:
            raise ValueError(f"{caller} needs windows of {self.n_channels_} channels, got shape {X.shape}")
        return X

    def _aligned(self, covs, groups):
        """Tangent-space inputs: (covariances, reference point of each part)."""
        if not self.recenter:
            return covs, self.reference_
        from pyriemann.geometry.base import invsqrtm

        def whiten(c, mean):  # c: (n, n_segments, ch, ch), mean: (n_segments, ch, ch)
            w = np.stack([invsqrtm(m) for m in mean])
            aligned = w @ c @ w
            return 0.5 * (aligned + np.swapaxes(aligned, -1, -2))  # exact symmetry for logm

        identity = np.broadcast_to(np.eye(covs.shape[-1]), covs.shape[1:])
        if groups is None:
            return whiten(covs, self._subject_mean(None, covs)), identity
        groups = np.asarray(groups)
        out = np.empty_like(covs)
        for subject in np.unique(groups):
            mask = groups == subject
            out[mask] = whiten(covs[mask], self._subject_mean(subject, covs[mask]))
        return out, identity

    @staticmethod
    def _tangent_vectors(covs, reference):
        """Concatenated tangent vectors of every part, each at its own reference point."""
        from pyriemann.geometry.tangentspace import tangent_space

        return np.hstack([tangent_space(covs[:, k], reference[k], metric="riemann") for k in range(covs.shape[1])])

    def fit(self, X, y=None, groups=None):
        """Fit the reference point(s), standardization and PCA on training trials."""
        if self.scale not in ("feature", "common"):
            raise ValueError(f"scale must be 'feature' or 'common', got {self.scale!r}")
        X = _check_trials(X)
        covs = self._covariances(X)
        self.reference_ = self._mean(covs)
        self.subject_ids_ = np.zeros(0, dtype=np.int64)
        self.subject_means_ = np.zeros((0,) + covs.shape[1:])
        if self.recenter:
            groups = np.zeros(len(covs), dtype=np.int64) if groups is None else np.asarray(groups, dtype=np.int64)
            self.subject_ids_ = np.unique(groups)
            self.subject_means_ = np.stack([self._mean(covs[groups == g]) for g in self.subject_ids_])
            if len(self.subject_ids_) == 1:  # un-grouped transforms then use this subject's mean
                self.reference_ = self.subject_means_[0]
        vectors = self._tangent_vectors(*self._aligned(covs, groups))
        self.mean_ = vectors.mean(axis=0)
        self.std_ = vectors.std(axis=0) + 1e-12
        if self.scale == "common":  # average feature variance 1, relative scales kept
            self.std_ = np.full_like(self.std_, np.sqrt(np.mean(self.std_**2)))
        z = (vectors - self.mean_) / self.std_
        # An empty projection means "keep every feature" (no 2080 x 2080 identity stored).
        self.components_ = np.zeros((0, z.shape[1]))
        if self.n_components is not None:
            # Principal axes of the training vectors. Not whitened: n trials span at
            # most n - 1 directions, and dividing by tiny singular values would blow
            # up new trials' features. One common scale gives the kept components
            # unit variance on average.
            _, singular, axes = np.linalg.svd(z - z.mean(axis=0), full_matrices=False)
            rank = int(np.sum(singular > singular[0] * 1e-6))
            n_keep = max(1, min(int(self.n_components), rank))
            variance = np.mean(singular[:n_keep] ** 2) / max(len(z) - 1, 1)
            self.components_ = axes[:n_keep] / np.sqrt(variance)
        self.n_channels_ = X.shape[1]
        return self

    def transform(self, X, groups=None):
        """Encode trials: ``(n_trials, n_features, n_frames)`` float32."""
        check_is_fitted(self, "components_")
        X = _check_trials(X)
        if X.shape[1] != self.n_channels_:
            raise ValueError(f"X has {X.shape[1]} channels, the encoder was fitted on {self.n_channels_}")
        if groups is not None and np.shape(groups) != (len(X),):
            raise ValueError(f"groups must hold one subject id per trial ({len(X)}), got shape {np.shape(groups)}")
        z = (self._tangent_vectors(*self._aligned(self._covariances(X), groups)) - self.mean_) / self.std_
        features = z @ self.components_.T if len(self.components_) else z
        n_frames = max(1, int(round(X.shape[-1] / self.sfreq * self.frame_rate)))
        return np.repeat(features[:, :, None], n_frames, axis=2).astype(np.float32)

    def to_arrays(self):
        """Learned state as plain arrays (for checkpoints)."""
        check_is_fitted(self, "components_")
        return {"reference": self.reference_, "mean": self.mean_, "std": self.std_,
                "components": self.components_, "n_channels": np.asarray(self.n_channels_),
                "subject_ids": self.subject_ids_, "subject_means": self.subject_means_}

    def set_arrays(self, arrays):
        """Restore learned state written by :meth:`to_arrays`."""
        for name in ("reference", "mean", "std", "components", "subject_means"):
            setattr(self, f"{name}_", np.asarray(arrays[name], dtype=np.float64))
        # Files written before n_segments existed hold one (c, c) matrix per point.
        if self.reference_.ndim == 2:
            self.reference_ = self.reference_[None]
            self.subject_means_ = self.subject_means_[:, None]
        if len(self.reference_) != self.n_segments:
            raise ValueError(f"the saved encoder has {len(self.reference_)} segments, this one n_segments="
                             f"{self.n_segments}")
        self.subject_ids_ = np.asarray(arrays["subject_ids"], dtype=np.int64)
        self.n_channels_ = int(arrays["n_channels"])
        return self


ENCODERS = {"csp_power": CSPPowerEncoder, "signal": SignalEncoder, "tangent_space": TangentSpaceEncoder}


def make_encoder(name, sfreq, **options):
    """Build an encoder by name (``"csp_power"`` or ``"signal"``).

    Parameters
    ----------
    name : str
    sfreq : float
        Sampling rate of the trials it will encode.
    **options
        Constructor arguments of the encoder class.
    """
    try:
        cls = ENCODERS[name]
    except KeyError:
        raise ValueError(f"encoding must be one of {sorted(ENCODERS)}, got {name!r}") from None
    return cls(sfreq=sfreq, **options)
