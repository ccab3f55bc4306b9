"""Classification metrics for decoders: accuracy family, ROC AUC and Wolpaw ITR."""

from __future__ import annotations

import logging
import math
import warnings

import numpy as np
from sklearn.metrics import (
    accuracy_score,
    balanced_accuracy_score,
    cohen_kappa_score,
    confusion_matrix,
    f1_score,
    roc_auc_score,
)

logger = logging.getLogger(__name__)

__all__ = ["classification_metrics", "wolpaw_bits_per_trial"]


def wolpaw_bits_per_trial(accuracy: float, n_classes: int) -> float:
    """Information transferred per trial by a decoder, after Wolpaw et al. (2002).

    ``B = log2 N + P log2 P + (1 - P) log2((1 - P) / (N - 1))`` for ``P > 1/N``, and 0
    for ``P <= 1/N`` (a decoder at or below chance transfers no information; the
    formula would give a positive value below chance, which is meaningless).

    Parameters
    ----------
    accuracy : float
        Probability ``P`` of a correct decision, in [0, 1].
    n_classes : int
        Number of classes ``N`` (at least 2).

    Returns
    -------
    bits : float
        Bits per trial, in [0, log2 N].
    """
    if not 0.0 <= accuracy <= 1.0:
        raise ValueError(f"accuracy must be in [0, 1], got {accuracy!r}.")
    if n_classes < 2:
        raise ValueError(f"n_classes must be at least 2, got {n_classes!r}.")
    p, n = float(accuracy), int(n_classes)
    if p <= 1.0 / n:
        return 0.0
    bits = math.log2(n) + p * math.log2(p)
    if p < 1.0:  # the (1 - P) term vanishes at P = 1 (limit x log x -> 0)
        bits += (1.0 - p) * math.log2((1.0 - p) / (n - 1))
    return max(bits, 0.0)


def _scores_for_auc(proba, n_labels: int) -> np.ndarray:
    scores = np.asarray(proba, dtype=float)
    if scores.ndim == 1:
        if n_labels != 2:
            raise ValueError(
                "proba must have one column per class for more than two classes, "
                f"got a 1-D array with {n_labels} classes."
            )
        return scores
    if scores.ndim != 2 or scores.shape[1] != n_labels:
        raise ValueError(
            f"proba must have shape (n_trials, {n_labels}) (one column per label), "
            f"got {scores.shape}."
        )
    return scores


def classification_metrics(
    y_true,
    y_pred,
    proba=None,
    trial_duration_s: float | None = None,
    class_names=None,
    labels=None,
) -> dict:
    """Score one set of decisions of a classifier.

    Parameters
    ----------
    y_true : array-like, shape (n_trials,)
        True labels.
    y_pred : array-like, shape (n_trials,)
        Predicted labels.
    proba : array-like, shape (n_trials, n_classes) | shape (n_trials,) | None
        Class probabilities (or scores), columns in the order of ``labels``. For two
        classes a 1-D array is read as the score of the second label. Needed for
        ROC AUC; without it ``roc_auc`` is NaN.
    trial_duration_s : float | None
        Time one decision takes, in seconds, for the ITR in bits/min. Without it
        ``itr_bits_per_min`` is NaN.
    class_names : sequence of str | None
        Display names of ``labels``, in the same order; default ``str(label)``.
    labels : array-like | None
        All class labels of the task, in the order of the ``proba`` columns (e.g. a
        fitted estimator's ``classes_``). Default: sorted union of ``y_true`` and
        ``y_pred``. Pass it whenever a test fold may miss a class: it fixes the
        confusion-matrix layout and the number of classes used by the ITR.

    Returns
    -------
    metrics : dict
        ``accuracy``, ``balanced_accuracy``, ``kappa`` (Cohen), ``roc_auc`` (binary:
        score of the second label; multiclass: one-vs-rest macro average), ``f1``
        (macro), ``confusion_matrix`` (ndarray, rows true, columns predicted, in
        ``labels`` order), ``labels``, ``class_names``, ``n_classes``,
        ``itr_bits_per_trial``, ``itr_bits_per_min``, and ``notes`` (a list of
        strings explaining any NaN value).

    Notes
    -----
    The ITR counts only the decision window (``trial_duration_s``), not cue or
    inter-trial pauses, so it is an upper bound of the rate a user would experience.
    """
    y_true = np.asarray(y_true)
    y_pred = np.asarray(y_pred)
    if y_true.ndim != 1 or y_true.shape != y_pred.shape:
        raise ValueError(
            "y_true and y_pred must be 1-D with the same length, got shapes "
            f"{y_true.shape} and {y_pred.shape}."
        )
    if len(y_true) == 0:
        raise ValueError("y_true is empty: nothing to score.")
    labels = np.unique(np.concatenate([y_true, y_pred])) if labels is None else (
        np.asarray(labels)
    )
    unknown = np.setdiff1d(np.concatenate([y_true, y_pred]), labels)
    if unknown.size:
        raise ValueError(f"labels lacks classes present in y_true/y_pred: {unknown}.")
    if class_names is None:
        class_names = [str(label) for label in labels]
    elif len(class_names) != len(labels):
        raise ValueError(
            f"class_names has {len(class_names)} names for {len(labels)} labels."
        )
    if trial_duration_s is not None and not trial_duration_s > 0:
        raise ValueError(
            f"trial_duration_s must be a positive number of seconds, got "
            f"{trial_duration_s!r}."
        )

    notes: list[str] = []
    present = np.unique(y_true)
    accuracy = float(accuracy_score(y_true, y_pred))
    with warnings.catch_warnings():
        # Folds that miss a class make sklearn warn about ill-defined scores; the
        # values it returns are the conventional ones, and the notes say why.
        warnings.simplefilter("ignore")
        balanced = float(balanced_accuracy_score(y_true, y_pred))
        kappa = float(cohen_kappa_score(y_true, y_pred, labels=labels))
        f1 = float(
            f1_score(y_true, y_pred, labels=labels, average="macro", zero_division=0)
        )
    if not np.isfinite(kappa):
        notes.append("kappa undefined: chance agreement is 1 (a single class).")

    roc_auc = float("nan")
    if proba is None:
        notes.append("roc_auc not computed: no probabilities given.")
    elif present.size < 2:
        notes.append(f"roc_auc undefined: y_true holds a single class ({present[0]}).")
    else:
        scores = _scores_for_auc(proba, len(labels))
        if len(scores) != len(y_true):
            raise ValueError(
                f"proba has {len(scores)} rows for {len(y_true)} trials."
            )
        if len(labels) == 2:
            positive = scores if scores.ndim == 1 else scores[:, 1]
            roc_auc = float(roc_auc_score(y_true == labels[1], positive))
        elif present.size < len(labels):
            notes.append(
                "roc_auc undefined: one-vs-rest AUC needs every class in y_true."
            )
        else:
            roc_auc = float(
                roc_auc_score(
                    y_true, scores, multi_class="ovr", average="macro", labels=labels
                )
            )

    n_classes = len(labels)
    bits = wolpaw_bits_per_trial(accuracy, n_classes) if n_classes >= 2 else 0.0
    if trial_duration_s is None:
        itr_per_min = float("nan")
        notes.append("itr_bits_per_min not computed: no trial_duration_s given.")
    else:
        itr_per_min = bits * 60.0 / trial_duration_s

    return {
        "accuracy": accuracy,
        "balanced_accuracy": balanced,
        "kappa": kappa,
        "roc_auc": roc_auc,
        "f1": f1,
        "confusion_matrix": confusion_matrix(y_true, y_pred, labels=labels),
        "labels": labels,
        "class_names": list(class_names),
        "n_classes": n_classes,
        "itr_bits_per_trial": bits,
        "itr_bits_per_min": itr_per_min,
        "notes": notes,
    }
