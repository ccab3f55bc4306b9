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

Encoders store their learned state as plain arrays (:meth:`to_arrays` /
:meth:`from_arrays`) so checkpoints never need pickle.
"""

from __future__ import annotations

import numpy as np
from sklearn.base import BaseEstimator, TransformerMixin
from sklearn.utils.validation import check_is_fitted

__all__ = ["CSPPowerEncoder", "SignalEncoder", "make_encoder", "ENCODERS"]


def _check_trials(X, name="X"):
    X = np.asarray(X, dtype=np.float64)
    if X.ndim != 3:
        raise ValueError(f"{name} must have shape (n_trials, n_channels, n_times), got {X.shape}")
    if not np.all(np.isfinite(X)):
        raise ValueError(f"{name} contains NaN or infinite values; clean or reject those trials first")
    return X


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


ENCODERS = {"csp_power": CSPPowerEncoder, "signal": SignalEncoder}


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
