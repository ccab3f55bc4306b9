"""Batch evaluation of decoders under a protocol without leakage.

:func:`evaluate` fits fresh copies of every pipeline on exactly the same training
folds, scores them on the matching test folds and returns one row per
subject x pipeline x fold. Nothing is fitted outside a training fold: each pipeline
carries its own preprocessing (scalers, CSP, covariance means), which is fitted by
its ``fit`` on the training trials only.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import sys
import tempfile
import time
from collections.abc import Callable, Mapping
from contextlib import ExitStack, nullcontext
from dataclasses import dataclass, field

import numpy as np
import pandas as pd
import sklearn
from joblib import Parallel, delayed, effective_n_jobs
from sklearn.base import clone
from sklearn.pipeline import Pipeline
from threadpoolctl import threadpool_limits
from tqdm.auto import tqdm

from .baselines import consumes_groups
from .errors import EventBudgetError
from .metrics import classification_metrics
from .protocols import PROTOCOLS, cross_subject_splits, within_subject_splits

logger = logging.getLogger(__name__)

__all__ = ["PROTOCOLS", "RESULT_COLUMNS", "EvalData", "evaluate"]

_SCORE_KEYS = (
    "accuracy",
    "balanced_accuracy",
    "kappa",
    "roc_auc",
    "f1",
    "itr_bits_per_trial",
    "itr_bits_per_min",
)

#: Columns present in every result table, in this order; spiking pipelines add the
#: keys of their ``spiking_metrics`` after these.
RESULT_COLUMNS = [
    "protocol",
    "subject",
    "pipeline",
    "fold",
    "split_id",
    "n_train",
    "n_test",
    *_SCORE_KEYS,
    "fit_seconds",
    "predict_seconds",
    "classes",
    "confusion_matrix",
    "notes",
]


@dataclass
class EvalData:
    """Trials to evaluate on, as plain arrays.

    Parameters
    ----------
    X : ndarray, shape (n_trials, n_channels, n_times)
        Preprocessed trials (e.g. band-passed epochs).
    y : ndarray, shape (n_trials,)
        Class label of each trial.
    subjects : ndarray, shape (n_trials,)
        Subject id of each trial.
    sfreq : float
        Sampling frequency in Hz.
    class_names : list of str | None
        Names of the classes in the order of ``labels`` (sorted unique ``y``);
        default ``str(label)``.
    trial_duration_s : float | None
        Length of the decision window in seconds, used for the ITR; default
        ``n_times / sfreq``.

    Attributes
    ----------
    labels : ndarray
        Sorted distinct labels of ``y``.
    """

    X: np.ndarray
    y: np.ndarray
    subjects: np.ndarray
    sfreq: float
    class_names: list[str] | None = None
    trial_duration_s: float | None = None
    labels: np.ndarray = field(init=False, repr=False)

    def __post_init__(self):
        self.X = np.asarray(self.X)
        self.y = np.asarray(self.y)
        self.subjects = np.asarray(self.subjects)
        if self.X.ndim != 3:
            raise ValueError(
                "X must have shape (n_trials, n_channels, n_times), got "
                f"{self.X.shape}."
            )
        if not np.issubdtype(self.X.dtype, np.floating):
            raise ValueError(f"X must be floating point, got dtype {self.X.dtype}.")
        n = len(self.X)
        if self.y.shape != (n,) or self.subjects.shape != (n,):
            raise ValueError(
                f"y {self.y.shape} and subjects {self.subjects.shape} must have one "
                f"entry per trial of X ({n})."
            )
        if not (np.isfinite(self.sfreq) and self.sfreq > 0):
            raise ValueError(f"sfreq must be a positive number of Hz, got {self.sfreq!r}.")
        self.labels = np.unique(self.y)
        if self.labels.size < 2:
            raise ValueError(f"y must hold at least two classes, got {self.labels}.")
        if self.class_names is None:
            self.class_names = [str(label) for label in self.labels]
        self.class_names = [str(name) for name in self.class_names]
        if len(self.class_names) != self.labels.size:
            raise ValueError(
                f"class_names has {len(self.class_names)} names for the "
                f"{self.labels.size} classes in y ({self.labels.tolist()})."
            )
        if self.trial_duration_s is None:
            self.trial_duration_s = self.X.shape[-1] / float(self.sfreq)
        elif not self.trial_duration_s > 0:
            raise ValueError(
                f"trial_duration_s must be positive, got {self.trial_duration_s!r}."
            )

    @classmethod
    def from_trialset(cls, ts) -> EvalData:
        """Build from a trial set with ``data, labels, subjects, sfreq, class_names``.

        Parameters
        ----------
        ts : object
            E.g. :class:`bci_qif.trials.TrialSet`; read by attribute only, so any
            object with those attributes works. Integer labels index
            ``class_names`` (as in a TrialSet); names of classes absent from the set
            are dropped. The decision window for the ITR is ``n_times / sfreq``.

        Returns
        -------
        data : EvalData
        """
        missing = [
            name
            for name in ("data", "labels", "subjects", "sfreq")
            if not hasattr(ts, name)
        ]
        if missing:
            raise ValueError(
                f"ts lacks the attribute(s) {missing} that EvalData.from_trialset reads."
            )
        labels = np.asarray(ts.labels)
        names = getattr(ts, "class_names", None)
        if names is not None and np.issubdtype(labels.dtype, np.integer):
            # A TrialSet's labels index its class_names, which may also name classes
            # absent from this set: keep the names of the labels present, in order.
            present = np.unique(labels)
            if present.min() < 0 or present.max() >= len(names):
                raise ValueError(
                    f"ts.labels {present.tolist()} do not index ts.class_names {names}."
                )
            names = [names[label] for label in present]
        return cls(
            X=np.asarray(ts.data),
            y=labels,
            subjects=np.asarray(ts.subjects),
            sfreq=float(ts.sfreq),
            class_names=names,
        )


def _as_eval_data(data) -> EvalData:
    return data if isinstance(data, EvalData) else EvalData.from_trialset(data)


def _as_factory(name: str, pipeline) -> Callable[[], object]:
    if callable(pipeline):
        return pipeline
    if hasattr(pipeline, "fit"):
        # An unfitted estimator instance: every fold gets its own clone.
        return lambda: clone(pipeline)
    raise ValueError(
        f"pipelines[{name!r}] must be a zero-argument callable returning a fresh "
        f"estimator (or an estimator to clone), got {type(pipeline).__name__}."
    )


def _split_id(test_idx: np.ndarray) -> str:
    # A short fingerprint of the test trials: equal ids across pipelines prove that
    # they were scored on the same fold.
    return hashlib.sha1(np.sort(test_idx).astype(np.int64).tobytes()).hexdigest()[:12]


def _group_kwargs(estimator, method: str, groups: np.ndarray) -> dict:
    return {"groups": groups} if consumes_groups(estimator, method) else {}


def _softmax(scores: np.ndarray) -> np.ndarray:
    shifted = scores - scores.max(axis=1, keepdims=True)
    expd = np.exp(shifted)
    return expd / expd.sum(axis=1, keepdims=True)


def _class_scores(estimator, X, labels, groups) -> np.ndarray | None:
    """Per-class probabilities in ``labels`` order (columns of absent classes: 0)."""
    classes = getattr(estimator, "classes_", None)
    if hasattr(estimator, "predict_proba"):
        scores = np.asarray(
            estimator.predict_proba(X, **_group_kwargs(estimator, "predict_proba", groups))
        )
    elif hasattr(estimator, "decision_function"):
        scores = np.asarray(
            estimator.decision_function(
                X, **_group_kwargs(estimator, "decision_function", groups)
            )
        )
        if scores.ndim == 1:  # binary: score of classes_[1]
            scores = np.column_stack([-scores, scores])
        scores = _softmax(scores)
    else:
        return None
    if classes is None:
        if scores.shape[1] != len(labels):
            return None
        return scores
    full = np.zeros((len(X), len(labels)))
    for column, cls in enumerate(classes):
        full[:, np.flatnonzero(labels == cls)[0]] = scores[:, column]
    return full


#: Length of the sliding windows on which spiking decoders are also scored (seconds).
WINDOW_S = 2.0


def _spiking_metrics(estimator, X, y, groups=None, duration=None) -> dict:
    """Call the ``spiking_metrics(X, y)`` hook of the model, if it has one.

    A model that also has ``window_scores(X, y, window_s=...)`` (the real-time
    decoding path) is scored on ``WINDOW_S`` windows when the trials are long enough.
    """
    if hasattr(estimator, "spiking_metrics"):
        # The same subject ids as predict gets, so acc_ord scores the same inputs.
        group_kwargs = _group_kwargs(estimator, "predict", groups)
        metrics = dict(estimator.spiking_metrics(X, y, **group_kwargs))
        if hasattr(estimator, "window_scores") and duration is not None and duration >= WINDOW_S:
            metrics.update(estimator.window_scores(X, y, window_s=WINDOW_S, **group_kwargs))
        return metrics
    if isinstance(estimator, Pipeline) and hasattr(estimator[-1], "spiking_metrics"):
        return dict(estimator[-1].spiking_metrics(estimator[:-1].transform(X), y))
    return {}


def _history(estimator) -> pd.DataFrame | None:
    final = estimator[-1] if isinstance(estimator, Pipeline) else estimator
    history = getattr(final, "history_", None)
    if history is None:
        return None
    try:
        return pd.DataFrame(history)
    except (TypeError, ValueError) as err:
        logger.warning("Ignoring history_ of %s: %s", type(final).__name__, err)
        return None


def _run_fold(
    name, factory, data_arrays, split, labels, class_names, duration, protocol,
    mne_log_level, blas_threads,
):
    """Fit a fresh pipeline on one training fold and score it on the test fold."""
    # limits=None leaves the thread pools as they are.
    with threadpool_limits(limits=blas_threads):
        return _fit_and_score(
            name, factory, data_arrays, split, labels, class_names, duration, protocol,
            mne_log_level,
        )


def _fit_and_score(
    name, factory, data_arrays, split, labels, class_names, duration, protocol,
    mne_log_level,
):
    if mne_log_level is not None:
        # A worker process imports MNE afresh, at MNE's default (chatty) log level;
        # use the caller's level instead.
        import mne

        mne.set_log_level(mne_log_level)
    X, y, subjects = data_arrays
    subject, fold, train, test = split
    estimator = factory()
    fit_kwargs = _group_kwargs(estimator, "fit", subjects[train])
    if consumes_groups(estimator, "fit", "target_group"):
        fit_kwargs["target_group"] = subject  # the user whose trials the fold tests
    with sklearn.config_context(enable_metadata_routing=True) if fit_kwargs else nullcontext():
        start = time.perf_counter()
        estimator.fit(X[train], y[train], **fit_kwargs)
        fit_seconds = time.perf_counter() - start

        X_test, y_test, groups_test = X[test], y[test], subjects[test]
        start = time.perf_counter()
        try:
            y_pred = np.asarray(
                estimator.predict(X_test, **_group_kwargs(estimator, "predict", groups_test))
            )
            proba = _class_scores(estimator, X_test, labels, groups_test)
            extra = _spiking_metrics(estimator, X_test, y_test, groups_test, duration)
        except EventBudgetError as err:
            # A trained spiking network whose firing runs away on the test trials
            # makes no decision: the fold is kept as a failure, not dropped silently.
            logger.warning("%s, subject %s, fold %s: %s", name, subject, fold, err)
            y_pred, proba, extra = None, None, {"failed": 1.0}
        predict_seconds = time.perf_counter() - start
    if y_pred is None:
        scores = {key: np.nan for key in _SCORE_KEYS}
        scores.update(class_names=list(class_names), confusion_matrix=np.zeros((0, 0)),
                      notes=["no decision: the network exceeded its event budget on the test trials"])
    else:
        scores = classification_metrics(
            y_test,
            y_pred,
            proba=proba,
            trial_duration_s=duration,
            class_names=class_names,
            labels=labels,
        )
    row = {
        "protocol": protocol,
        "subject": subject,
        "pipeline": name,
        "fold": fold,
        "split_id": _split_id(test),
        "n_train": len(train),
        "n_test": len(test),
        **{key: scores[key] for key in _SCORE_KEYS},
        "fit_seconds": fit_seconds,
        "predict_seconds": predict_seconds,
        "classes": json.dumps(scores["class_names"]),
        "confusion_matrix": json.dumps(scores["confusion_matrix"].tolist()),
        "notes": "; ".join(scores["notes"]),
    }
    clashes = set(extra) & set(row)
    if clashes:
        raise ValueError(
            f"spiking_metrics of pipeline {name!r} returned reserved column names "
            f"{sorted(clashes)}."
        )
    row.update({key: float(value) for key, value in extra.items()})
    history = _history(estimator)
    if history is not None:
        history = history.assign(pipeline=name, subject=subject, fold=fold)
    return row, history


def _splits(data: EvalData, protocol, n_splits, n_calibration, seed) -> list:
    if protocol in ("within-subject", "within-subject-pooled"):
        if n_calibration:
            raise ValueError(
                "n_calibration only applies to protocol='cross-subject', got "
                f"n_calibration={n_calibration!r} with protocol={protocol!r}."
            )
        pooled = protocol == "within-subject-pooled"
        return list(within_subject_splits(data.subjects, data.y, n_splits, seed, pool_other_subjects=pooled))
    if protocol == "cross-subject":
        return list(cross_subject_splits(data.subjects, data.y, n_calibration, seed))
    raise ValueError(f"protocol must be one of {PROTOCOLS}, got {protocol!r}.")


def evaluate(
    data,
    pipelines: Mapping[str, Callable[[], object]],
    protocol: str = "within-subject",
    n_splits: int = 5,
    n_calibration: int = 0,
    n_jobs: int = 1,
    seed: int = 42,
    progress: bool = True,
    blas_threads: int | None = 1,
) -> pd.DataFrame:
    """Fit and score every pipeline on the same folds of a protocol.

    Parameters
    ----------
    data : EvalData | TrialSet-like
        The trials; any object with ``data, labels, subjects, sfreq`` (and optionally
        ``class_names``) attributes is converted by :meth:`EvalData.from_trialset`.
    pipelines : dict of str to callable
        Name -> zero-argument factory returning a fresh, unfitted estimator taking X of
        shape (n_trials, n_channels, n_times) (e.g.
        ``functools.partial(make_baseline, "ts_lr")``). An unfitted estimator instance
        is accepted too and cloned for every fold.
    protocol : "within-subject" | "within-subject-pooled" | "cross-subject"
        Stratified k-fold inside each subject; the same test folds with every trial
        of the other subjects added to each training fold; or leave-one-subject-out.
    n_splits : int
        Folds per subject for the two within-subject protocols.
    n_calibration : int
        For ``"cross-subject"``: labelled trials per class of the test subject moved
        into training.
    n_jobs : int
        Number of folds fitted in parallel (joblib; -1 for all cores).
    seed : int
        Seed of the fold assignment (and of the calibration-trial draw).
    progress : bool
        Show a tqdm progress bar.
    blas_threads : int | None
        Threads that BLAS/OpenMP libraries may use inside each fold (threadpoolctl).
        The default 1 avoids oversubscription: the baselines work on many small
        (64 x 64) matrices, for which multi-threaded OpenBLAS was measured 5-6 times
        slower than one thread on a 2-core machine. None keeps the libraries' own
        settings. JAX/XLA thread pools are not affected either way.

    Returns
    -------
    results : pandas.DataFrame
        One row per subject x pipeline x fold with the columns of ``RESULT_COLUMNS``
        (``split_id`` fingerprints the test trials; ``classes`` and
        ``confusion_matrix`` are JSON strings, rows true, columns predicted) followed by
        any keys returned by a model's ``spiking_metrics``. Training histories of
        models with a ``history_`` attribute are in ``results.attrs["histories"]``
        (a list of DataFrames with ``pipeline``, ``subject`` and ``fold`` columns).

    Notes
    -----
    Subject ids reach estimators that request them (see
    :func:`bci_qif.baselines.consumes_groups`) as the ``groups`` argument of ``fit``,
    ``predict`` and ``predict_proba``, through scikit-learn metadata routing; one
    that requests ``target_group`` in ``fit`` also gets the subject the fold tests
    (:class:`bci_qif.finetuning.FineTunedQIF` fine-tunes on that subject's training
    trials).

    A fitted model exposing ``spiking_metrics(X, y) -> dict`` (directly, or as the
    last step of a Pipeline) is called on each test fold and its keys become extra
    columns, e.g. ``acc_ord``, ``silent_fraction``, ``spikes_per_trial``. One that
    also has ``window_scores`` (:class:`bci_qif.QIFClassifier`) adds its scores on
    the 2 s sliding windows the real-time decoder sees, ``window_acc`` and
    ``window_acc_ord``, when the trials are at least 2 s long (a test subject unseen
    in training is aligned by its own windows, as a calibrated live session).
    """
    data = _as_eval_data(data)
    if blas_threads is not None and (int(blas_threads) != blas_threads or blas_threads < 1):
        raise ValueError(f"blas_threads must be a positive integer or None, got {blas_threads!r}.")
    if not isinstance(pipelines, Mapping) or not pipelines:
        raise ValueError("pipelines must be a non-empty dict of name -> factory.")
    factories = {str(name): _as_factory(str(name), p) for name, p in pipelines.items()}
    splits = _splits(data, protocol, n_splits, n_calibration, seed)
    tasks = [(name, split) for split in splits for name in factories]
    logger.info(
        "Evaluating %d pipeline(s) on %d split(s) (%s, %d trials, %d subjects).",
        len(factories), len(splits), protocol, len(data.y), np.unique(data.subjects).size,
    )

    parallel = effective_n_jobs(n_jobs) > 1
    mne_log_level = logging.getLogger("mne").level if "mne" in sys.modules else None
    with ExitStack() as stack:
        X = data.X
        if parallel:
            # Workers would otherwise get a hashed, re-pickled copy of X per task;
            # one read-only memory map is shared by all of them instead.
            tmp = stack.enter_context(tempfile.TemporaryDirectory(prefix="bci_qif_"))
            path = os.path.join(tmp, "X.npy")
            np.save(path, X)
            X = np.load(path, mmap_mode="r")
        arrays = (X, data.y, data.subjects)
        jobs = (
            delayed(_run_fold)(
                name, factories[name], arrays, split, data.labels, data.class_names,
                data.trial_duration_s, protocol, mne_log_level, blas_threads,
            )
            for name, split in tasks
        )
        outputs = Parallel(n_jobs=n_jobs, return_as="generator")(jobs)
        outputs = list(
            tqdm(outputs, total=len(tasks), desc=f"evaluate {protocol}", disable=not progress)
        )

    rows = [row for row, _ in outputs]
    histories = [history for _, history in outputs if history is not None]
    results = pd.DataFrame(rows)
    extra = [column for column in results.columns if column not in RESULT_COLUMNS]
    results = results[RESULT_COLUMNS + extra]
    order = {name: i for i, name in enumerate(factories)}
    results = (
        results.assign(_order=results["pipeline"].map(order))
        .sort_values(["_order", "subject", "fold"], kind="stable")
        .drop(columns="_order")
        .reset_index(drop=True)
    )
    results.attrs["histories"] = histories
    return results
