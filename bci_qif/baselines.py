"""Classical motor-imagery decoders that the spiking decoders are compared against.

Every baseline is a scikit-learn estimator that takes raw trials of shape
``(n_trials, n_channels, n_times)`` and is built fresh by :func:`make_baseline`.

``ts_lr_recentered`` and ``ts_lr_halves_recentered`` need to know which subject each
trial belongs to. The subject ids travel as the ``groups`` metadata through
scikit-learn's metadata routing: the :class:`SubjectRecentering` step requests
``groups`` in ``fit`` and ``transform``, so inside
``sklearn.config_context(enable_metadata_routing=True)`` a call such as
``pipe.fit(X, y, groups=subjects)`` or ``pipe.predict(X, groups=subjects)`` reaches it.
:func:`consumes_groups` tells a caller (e.g. :func:`bci_qif.evaluation.evaluate`)
whether an estimator wants the subject ids at all.
"""

from __future__ import annotations

import logging
from collections.abc import Callable

import numpy as np
import sklearn
from sklearn.base import BaseEstimator, TransformerMixin
from sklearn.discriminant_analysis import LinearDiscriminantAnalysis
from sklearn.linear_model import LogisticRegression
from sklearn.pipeline import Pipeline
from sklearn.utils.validation import check_is_fitted

from .encoding import segment_bounds

logger = logging.getLogger(__name__)

__all__ = [
    "BASELINES",
    "SubjectRecentering",
    "TrialPart",
    "consumes_groups",
    "make_baseline",
]


def _riemann_mean_and_whitener(covs: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    # Imported lazily: pyriemann's import is slow-ish and only these helpers need it.
    from pyriemann.geometry.base import invsqrtm
    from pyriemann.geometry.mean import mean_riemann

    mean = mean_riemann(covs)
    return mean, invsqrtm(mean)


class SubjectRecentering(TransformerMixin, BaseEstimator):
    """Re-centre each subject's SPD matrices to the identity by its own Riemannian mean.

    For every subject ``s`` the Riemannian (affine-invariant) mean ``M_s`` of its
    matrices is estimated, and every matrix ``C`` of that subject becomes
    ``M_s^{-1/2} C M_s^{-1/2}``. Afterwards each subject's Riemannian mean is the
    identity, which removes the subject-specific "offset" (head shape, electrode
    impedances, overall power) that otherwise keeps covariance matrices of different
    subjects apart (Zanini et al. 2018, IEEE TBME 65(5)).

    The operation is unsupervised: labels are never used. Each subject's mean is
    estimated from the matrices passed to the current call (``fit_transform`` on the
    training set, ``transform`` on the test set), so a test subject is aligned by its
    own unlabelled test trials. This is transductive (a test trial's features depend
    on the other test trials of its subject) but uses no test label; every learned
    parameter downstream (tangent-space reference, classifier) comes from training
    trials only.

    Parameters
    ----------
    None. The transformer has no hyper-parameters.

    Attributes
    ----------
    n_channels_ : int
        Size of the matrices seen in ``fit``.
    groups_ : ndarray
        The distinct subject ids seen in ``fit``.
    means_ : dict
        Riemannian mean of each subject's matrices seen in ``fit`` (for inspection;
        ``transform`` re-estimates means from the matrices it is given).

    Notes
    -----
    ``groups=None`` means "all matrices come from one subject". Because ``transform``
    estimates a subject's mean from the batch it receives, it needs several trials per
    subject; a single trial would be mapped to the identity.

    Subject ids reach this step through scikit-learn metadata routing (it requests
    ``groups`` in ``fit`` and ``transform``)::

        with sklearn.config_context(enable_metadata_routing=True):
            pipe.fit(X_train, y_train, groups=subjects_train)
            y_pred = pipe.predict(X_test, groups=subjects_test)
    """

    # Request the subject ids by default, so that a Pipeline containing this step
    # forwards ``groups`` without every user having to call set_*_request.
    __metadata_request__fit = {"groups": True}
    __metadata_request__transform = {"groups": True}

    def fit(self, X, y=None, groups=None):
        """Record the subjects and their Riemannian means.

        Parameters
        ----------
        X : ndarray, shape (n_matrices, n_channels, n_channels)
            Symmetric positive definite matrices.
        y : None
            Ignored; present for API consistency.
        groups : array-like, shape (n_matrices,) | None
            Subject id of each matrix; None means one subject.

        Returns
        -------
        self : SubjectRecentering
        """
        self.fit_transform(X, y, groups=groups)
        return self

    def transform(self, X, groups=None):
        """Re-centre each subject's matrices by that subject's mean in ``X``.

        Parameters
        ----------
        X : ndarray, shape (n_matrices, n_channels, n_channels)
            Symmetric positive definite matrices.
        groups : array-like, shape (n_matrices,) | None
            Subject id of each matrix; None means one subject.

        Returns
        -------
        X_new : ndarray, shape (n_matrices, n_channels, n_channels)
            Re-centred matrices; each subject's Riemannian mean is the identity.
        """
        check_is_fitted(self, "n_channels_")
        X, groups = self._validate(X, groups)
        if X.shape[1] != self.n_channels_:
            raise ValueError(
                f"X has matrices of size {X.shape[1]}, but SubjectRecentering was "
                f"fitted on size {self.n_channels_}."
            )
        return self._recenter(X, groups)[0]

    def fit_transform(self, X, y=None, groups=None):
        """Fit and re-centre ``X`` in one pass (each subject's mean computed once).

        Parameters
        ----------
        X : ndarray, shape (n_matrices, n_channels, n_channels)
            Symmetric positive definite matrices.
        y : None
            Ignored; present for API consistency.
        groups : array-like, shape (n_matrices,) | None
            Subject id of each matrix; None means one subject.

        Returns
        -------
        X_new : ndarray, shape (n_matrices, n_channels, n_channels)
            Re-centred matrices.
        """
        X, groups = self._validate(X, groups)
        X_new, means = self._recenter(X, groups)
        self.n_channels_ = X.shape[1]
        self.groups_ = np.unique(groups)
        self.means_ = means
        return X_new

    @staticmethod
    def _recenter(X, groups) -> tuple[np.ndarray, dict]:
        out = np.empty_like(X)
        means = {}
        for g in np.unique(groups):
            mask = groups == g
            if mask.sum() < 2:
                logger.warning(
                    "Subject %r has a single trial in this batch: its mean is the trial "
                    "itself, so it is mapped to the identity.", g
                )
            means[g], whitener = _riemann_mean_and_whitener(X[mask])
            aligned = whitener @ X[mask] @ whitener
            # Symmetrize: rounding makes W C W slightly asymmetric, which later
            # eigen-decompositions (tangent space) do not tolerate well.
            out[mask] = 0.5 * (aligned + np.swapaxes(aligned, -1, -2))
        return out, means

    @staticmethod
    def _validate(X, groups):
        X = np.asarray(X, dtype=float)
        if X.ndim != 3 or X.shape[1] != X.shape[2]:
            raise ValueError(
                "X must be SPD matrices of shape (n_matrices, n_channels, n_channels), "
                f"got shape {X.shape}."
            )
        if groups is None:
            groups = np.zeros(len(X), dtype=int)
        groups = np.asarray(groups)
        if groups.shape != (len(X),):
            raise ValueError(
                f"groups must have one subject id per matrix ({len(X)}), "
                f"got shape {groups.shape}."
            )
        return X, groups


class TrialPart(TransformerMixin, BaseEstimator):
    """Keep one of ``n_parts`` consecutive, equal parts of every trial.

    The parts are cut as :class:`bci_qif.encoding.TangentSpaceEncoder` cuts its
    segments, so a baseline on the parts sees the same samples as the spiking decoder.

    Parameters
    ----------
    index : int
        Which part, from 0 (the first) to ``n_parts - 1``.
    n_parts : int
        Number of parts the trial is cut into.
    """

    def __init__(self, index=0, n_parts=2):
        self.index = index
        self.n_parts = n_parts

    def fit(self, X, y=None):
        """Check the settings; nothing is learned."""
        if not 0 <= self.index < self.n_parts:
            raise ValueError(f"index must be in [0, {self.n_parts}), got {self.index!r}")
        return self

    def transform(self, X):
        """The part's samples: ``(n_trials, n_channels, ~n_times / n_parts)``."""
        X = np.asarray(X)
        start, stop = segment_bounds(X.shape[-1], self.n_parts)[self.index]
        return X[..., start:stop]


def _covariances() -> object:
    from pyriemann.estimation import Covariances

    # OAS shrinkage: 64-channel covariances from 480 samples are ill-conditioned
    # enough that the plain sample covariance hurts Riemannian methods.
    return Covariances(estimator="oas")


def _csp_lda() -> Pipeline:
    from mne.decoding import CSP

    return Pipeline(
        [("csp", CSP(n_components=8, log=True)), ("lda", LinearDiscriminantAnalysis())]
    )


def _ts_lr() -> Pipeline:
    from pyriemann.tangentspace import TangentSpace

    return Pipeline(
        [
            ("cov", _covariances()),
            ("ts", TangentSpace(metric="riemann")),
            ("lr", LogisticRegression(max_iter=1000)),
        ]
    )


def _mdm() -> Pipeline:
    from pyriemann.classification import MDM

    return Pipeline([("cov", _covariances()), ("mdm", MDM(metric="riemann"))])


def _recentered_tangent_steps() -> list:
    """Covariance -> per-subject re-centring -> tangent space, as pipeline steps."""
    from pyriemann.tangentspace import TangentSpace

    return [
        ("cov", _covariances()),
        ("recenter", SubjectRecentering()),
        ("ts", TangentSpace(metric="riemann")),
    ]


def _ts_lr_recentered() -> Pipeline:
    return Pipeline(_recentered_tangent_steps() + [("lr", LogisticRegression(max_iter=1000))])


def _ts_lr_halves_recentered() -> Pipeline:
    from sklearn.pipeline import FeatureUnion

    # Each half of the trial (0-1.5 s, 1.5-3 s) gets its own covariance, re-centring
    # and tangent map; logistic regression sees both vectors (the linear counterpart of
    # QIFClassifier(n_segments=2)).
    def half(index):
        return Pipeline([("part", TrialPart(index=index, n_parts=2))] + _recentered_tangent_steps())

    return Pipeline(
        [
            ("halves", FeatureUnion([("first", half(0)), ("second", half(1))])),
            ("lr", LogisticRegression(max_iter=1000)),
        ]
    )


#: Registry of baseline builders: name -> zero-argument callable returning a fresh,
#: unfitted estimator for trials of shape (n_trials, n_channels, n_times).
BASELINES: dict[str, Callable[[], BaseEstimator]] = {
    "csp_lda": _csp_lda,
    "ts_lr": _ts_lr,
    "mdm": _mdm,
    "ts_lr_recentered": _ts_lr_recentered,
    "ts_lr_halves_recentered": _ts_lr_halves_recentered,
}


def make_baseline(name: str, sfreq: float | None = None) -> BaseEstimator:
    """Build a fresh, unfitted baseline decoder.

    Parameters
    ----------
    name : str
        One of ``BASELINES``: ``"csp_lda"`` (CSP with 8 log-power components + LDA),
        ``"ts_lr"`` (OAS covariances + Riemannian tangent space + logistic regression),
        ``"mdm"`` (OAS covariances + minimum distance to Riemannian mean),
        ``"ts_lr_recentered"`` (as ``ts_lr``, with each subject's covariances
        re-centred to the identity by :class:`SubjectRecentering`),
        ``"ts_lr_halves_recentered"`` (as ``ts_lr_recentered`` on each half of the
        trial, the two tangent vectors concatenated).
    sfreq : float | None
        Sampling frequency of the trials in Hz. The current baselines work on
        band-passed trials and do not need it; it is accepted (and validated) so that
        every decoder factory of the project has the same signature.

    Returns
    -------
    estimator : sklearn.pipeline.Pipeline
        Accepts X of shape (n_trials, n_channels, n_times).

    Raises
    ------
    ValueError
        If ``name`` is not a known baseline or ``sfreq`` is not positive.
    """
    if name not in BASELINES:
        raise ValueError(
            f"Unknown baseline name={name!r}; choose one of {sorted(BASELINES)}."
        )
    if sfreq is not None and not (np.isfinite(sfreq) and sfreq > 0):
        raise ValueError(f"sfreq must be a positive number of Hz, got {sfreq!r}.")
    return BASELINES[name]()


def consumes_groups(estimator, method: str = "fit", param: str = "groups") -> bool:
    """Whether ``estimator`` wants subject ids passed as ``groups`` to ``method``.

    Parameters
    ----------
    estimator : object
        Any estimator; objects without scikit-learn metadata routing never consume.
    method : str
        Method name, e.g. ``"fit"``, ``"predict"``, ``"predict_proba"``.
    param : str
        The metadata asked about: ``"groups"``, or ``"target_group"`` (the subject
        a fold tests, which :class:`bci_qif.finetuning.FineTunedQIF` fine-tunes on).

    Returns
    -------
    consumes : bool
    """
    if not hasattr(estimator, "get_metadata_routing"):
        return False
    # Routing objects can only be built while routing is enabled; the context is
    # thread-local and restored on exit, so the caller's configuration is untouched.
    with sklearn.config_context(enable_metadata_routing=True):
        routing = estimator.get_metadata_routing()
        return param in routing.consumes(method=method, params={param})
