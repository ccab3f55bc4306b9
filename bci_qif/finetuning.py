"""Pretrain on other subjects, fine-tune on the user: a decoder for pooled data.

:class:`FineTunedQIF` packages the recipe chosen by nested validation on pooled data
(``benchmarks/finetune_search.py``; docs/benchmarks.md, "Decoder quality") as one
scikit-learn estimator, so that ``app.py evaluate`` can score it beside the
baselines on the same folds (pipeline ``qif_finetuned``):

1. a :class:`~bci_qif.estimator.QIFClassifier` is trained on every trial of the
   subjects other than the user (each re-centred by its own mean);
2. the mean covariance of the user's labelled trials becomes its reference, and
   every network goes on training on those trials alone
   (:meth:`~bci_qif.estimator.QIFClassifier.fine_tune`).

Which subject is the user comes in as ``target_group`` (the evaluation passes the
subject a fold tests, through scikit-learn metadata routing). The pretrained model
holds none of the user's trials, so all folds of a user share it: it is kept in the
bci_qif cache folder (``pretrained/``, one ``.npz`` per model, no pickle), keyed by
a hash of its training trials and settings (:func:`pretrained_model`; parallel
processes that need the same model wait for the one fitting it).
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging

import numpy as np
from sklearn.base import BaseEstimator, ClassifierMixin, clone
from sklearn.utils.validation import check_is_fitted

from . import __version__
from .cache import default_cache_dir
from .estimator import QIFClassifier, _as_trials

__all__ = ["FineTunedQIF", "pretrained_model"]

logger = logging.getLogger(__name__)


class FineTunedQIF(ClassifierMixin, BaseEstimator):
    """A QIF decoder pretrained on other subjects and fine-tuned on the user's trials.

    Parameters
    ----------
    estimator : QIFClassifier, optional
        The unfitted decoder to pretrain (default: ``QIFClassifier()``, the shipped
        default). Give its ``sfreq`` when ``X`` is an array.
    epochs : int
        Fine-tuning epochs on the user's trials; 0 uses them only to align the
        user's trials (the pretrained networks as they are).
    learning_rate : float
        Peak learning rate of the fine-tuning schedule.
    cache : bool
        Keep pretrained models in the bci_qif cache folder (``BCI_QIF_CACHE``),
        so that every fold of a user reuses one pretraining.

    Attributes
    ----------
    model_ : QIFClassifier
        The fine-tuned decoder (pretrained only, if the user had no labelled
        trials in ``fit``).
    target_group_ : object
        The user's subject id.
    fine_tuned_ : bool
        Whether ``fit`` had labelled trials of the user to fine-tune on.
    classes_ : ndarray
    """

    # Subject ids and the user's id reach fit through scikit-learn metadata routing.
    __metadata_request__fit = {"groups": True, "target_group": True}
    __metadata_request__predict = {"groups": True}
    __metadata_request__predict_proba = {"groups": True}
    __metadata_request__decision_function = {"groups": True}

    def __init__(self, estimator=None, epochs=20, learning_rate=3e-3, cache=True):
        self.estimator = estimator
        self.epochs = epochs
        self.learning_rate = learning_rate
        self.cache = cache

    def __sklearn_tags__(self):
        tags = super().__sklearn_tags__()
        tags.input_tags.two_d_array = False
        tags.input_tags.three_d_array = True
        return tags

    def fit(self, X, y, groups=None, target_group=None):
        """Pretrain on the other subjects' trials, then fine-tune on ``target_group``'s.

        Parameters
        ----------
        X : mne.Epochs or array, shape (n_trials, n_channels, n_times)
        y : array, shape (n_trials,)
        groups : array, shape (n_trials,)
            Subject of each trial.
        target_group : object
            The user's subject id. Its trials in ``X`` (if any) are the fine-tuning
            trials; without any, the pretrained model is used as it is (aligned by
            the user's own trials when they come with ``groups``).

        Returns
        -------
        self
        """
        base = QIFClassifier() if self.estimator is None else self.estimator
        if groups is None or target_group is None:
            raise ValueError("FineTunedQIF.fit needs groups (the subject of each trial) and target_group (the user)")
        data, sfreq, _ = _as_trials(X, base.sfreq)
        base = clone(base).set_params(sfreq=sfreq)  # mne.Epochs bring their own rate
        y, groups = np.asarray(y), np.asarray(groups)
        if not len(y) == len(groups) == len(data):
            raise ValueError(f"X has {len(data)} trials, y {len(y)} labels and groups {len(groups)} subject ids")
        own = groups == target_group
        if own.all():
            raise ValueError(f"every trial belongs to the user (subject {target_group!r}): there are no other "
                             "subjects to pretrain on (use protocol within-subject-pooled or cross-subject)")
        model = pretrained_model(base, data[~own], y[~own], groups[~own], cache=self.cache)
        if own.any():
            model.fine_tune(data[own], y[own], epochs=self.epochs, learning_rate=self.learning_rate)
        self.model_, self.target_group_, self.fine_tuned_ = model, target_group, bool(own.any())
        self.classes_ = model.classes_
        return self

    def _model_groups(self, groups):
        """The ``groups`` to pass on to the fine-tuned model for these trials."""
        check_is_fitted(self, "model_")
        if groups is None or not self.fine_tuned_:
            return groups
        others = sorted(set(np.asarray(groups).tolist()) - {self.target_group_})
        if others:
            raise ValueError(f"this decoder was fine-tuned for subject {self.target_group_!r}; "
                             f"got trials of subject(s) {others}")
        # The user's trials are aligned by the mean of the fine-tuning trials (the model's reference).
        return None

    def predict(self, X, groups=None):
        """Predicted class of each trial (see :meth:`QIFClassifier.predict`)."""
        return self.model_.predict(X, groups=self._model_groups(groups))

    def predict_proba(self, X, groups=None):
        """Class probabilities (see :meth:`QIFClassifier.predict_proba`)."""
        return self.model_.predict_proba(X, groups=self._model_groups(groups))

    def decision_function(self, X, groups=None):
        """Log-probability scores (see :meth:`QIFClassifier.decision_function`)."""
        return self.model_.decision_function(X, groups=self._model_groups(groups))

    def spiking_metrics(self, X, y, groups=None):
        """``acc_ord``, silent fraction and spikes per trial (see :meth:`QIFClassifier.spiking_metrics`)."""
        return self.model_.spiking_metrics(X, y, groups=self._model_groups(groups))

    def window_scores(self, X, y, groups=None, *, window_s=2.0, step_s=0.5):
        """Accuracy on sliding windows, as the GUI decodes (see :meth:`QIFClassifier.window_scores`)."""
        return self.model_.window_scores(X, y, groups=self._model_groups(groups), window_s=window_s,
                                         step_s=step_s)

    @property
    def history_(self):
        """Training history of the pretrained networks (fine-tuning keeps none)."""
        check_is_fitted(self, "model_")
        return self.model_.history_


def pretrained_model(base, data, y, groups, cache=True, soft_targets=None):
    """``base`` fitted on these trials, from the bci_qif cache when it was fitted before.

    Parameters
    ----------
    base : QIFClassifier
        An unfitted decoder; it is fitted in place on a miss.
    data : array, shape (n_trials, n_channels, n_times)
    y, groups : array, shape (n_trials,)
        Labels and subject ids (each subject is re-centred by its own mean).
    cache : bool
        Look the model up in (and add it to) ``<cache>/pretrained/``, keyed by a
        hash of the trials and of ``base``'s settings. Processes that ask for the
        same model at once wait for the first one to fit it instead of fitting it
        again. An unreadable entry is logged and fitted again.
    soft_targets : array, shape (n_trials, n_classes), optional
        Class distributions to train towards instead of the labels
        (:meth:`QIFClassifier.fit`); part of the cache key.

    Returns
    -------
    QIFClassifier
    """
    if not cache:
        return base.fit(data, y, groups=groups, soft_targets=soft_targets)
    path = default_cache_dir() / "pretrained" / f"{_fingerprint(base, data, y, groups, soft_targets)}.npz"
    with _exclusive(path):
        if path.is_file():
            try:
                model = QIFClassifier.load(path)
                logger.info("pretrained model from the cache: %s", path)
                return model
            except (OSError, ValueError, KeyError) as err:
                logger.warning("ignoring an unreadable cached model %s (%s); pretraining again", path, err)
        model = base.fit(data, y, groups=groups, soft_targets=soft_targets)
        try:
            model.save(path)  # atomic: a reader without the lock never sees half a file
        except OSError as err:
            logger.warning("could not cache the pretrained model in %s: %s", path, err)
        return model


@contextlib.contextmanager
def _exclusive(path):
    """Hold an advisory lock on ``<path>.lock`` (POSIX; elsewhere, or if it cannot be made, no lock).

    The operating system drops the lock when its holder exits, so a killed run
    leaves no stale lock behind.
    """
    try:
        import fcntl
    except ImportError:  # Windows: two processes may fit the same model; both results are valid
        yield
        return
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        handle = open(path.with_suffix(".lock"), "a")
    except OSError as err:
        logger.warning("no lock for the pretrained-model cache (%s); going on without one", err)
        yield
        return
    with handle:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            logger.info("waiting for another process that is pretraining %s", path.name)
            fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


_ADDED_SETTINGS = {"optimizer": "adam", "late_penalty": 0.0}


def _fingerprint(base, data, y, groups, soft_targets=None):
    """Hash of the trials and settings a pretrained model depends on."""
    digest = hashlib.sha256()
    # Soft targets join the key only when given, so that models trained on labels keep theirs.
    arrays = (data, y, groups) if soft_targets is None else (data, y, groups, np.asarray(soft_targets, float))
    for array in arrays:
        array = np.ascontiguousarray(array)
        digest.update(f"{array.dtype.str}{array.shape}".encode())
        digest.update(array.tobytes() if array.dtype != object else json.dumps(array.tolist()).encode())
    settings = {k: v for k, v in base.get_params().items() if k != "verbose"}
    # Settings added after models were cached are left out at the value those models were trained
    # with, so that the cache stays valid across the addition.
    for key, old_behaviour in _ADDED_SETTINGS.items():
        if settings.get(key) == old_behaviour:
            del settings[key]
    digest.update(json.dumps([__version__, settings], sort_keys=True, default=str).encode())
    return digest.hexdigest()[:32]
