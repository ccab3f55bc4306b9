"""Train/test split generators for the evaluation protocols.

The generators yield ``(subject, fold, train_idx, test_idx)`` with indices into the
full trial arrays, so that every pipeline of an evaluation can be given exactly the
same folds.

- Within-subject: stratified k-fold inside each subject; training and test trials
  always come from the same subject.
- Within-subject, pooled: the same test folds, but every training fold also holds all
  trials of the other subjects (a new user's decoder trained on a database of earlier
  users plus the user's own calibration trials).
- Cross-subject: leave-one-subject-out; the test subject's trials are never used for
  training, except ``n_calibration`` labelled trials per class that can be moved into
  the training set to mimic a short calibration session.
"""

from __future__ import annotations

import zlib
from collections.abc import Iterator

import numpy as np
from sklearn.model_selection import StratifiedKFold

__all__ = ["PROTOCOLS", "cross_subject_splits", "within_subject_splits"]

#: Names of the evaluation protocols (``bci_qif.evaluation.evaluate(protocol=...)``).
PROTOCOLS = ("within-subject", "within-subject-pooled", "cross-subject")

Split = tuple[object, int, np.ndarray, np.ndarray]


def _validate(subjects, labels) -> tuple[np.ndarray, np.ndarray]:
    subjects = np.asarray(subjects)
    labels = np.asarray(labels)
    if subjects.ndim != 1 or labels.ndim != 1:
        raise ValueError(
            f"subjects and labels must be 1-D, got shapes {subjects.shape} and "
            f"{labels.shape}."
        )
    if len(subjects) != len(labels):
        raise ValueError(
            f"subjects ({len(subjects)}) and labels ({len(labels)}) must have one "
            "entry per trial."
        )
    if len(subjects) == 0:
        raise ValueError("subjects is empty: there are no trials to split.")
    return subjects, labels


def within_subject_splits(
    subjects, labels, n_splits: int = 5, seed: int = 42, pool_other_subjects: bool = False
) -> Iterator[Split]:
    """Stratified k-fold cross-validation inside each subject.

    Parameters
    ----------
    subjects : array-like, shape (n_trials,)
        Subject id of each trial.
    labels : array-like, shape (n_trials,)
        Class label of each trial.
    n_splits : int
        Number of folds per subject (at least 2).
    seed : int
        Seed of the fold shuffling; the same seed gives the same folds.
    pool_other_subjects : bool
        Add every trial of the other subjects to each training fold. The test folds
        do not change (the same seed gives the same test trials either way), and no
        trial of the subject's test fold is ever in its training fold.

    Yields
    ------
    subject : object
        Subject id (in sorted order).
    fold : int
        Fold number, 0 to ``n_splits - 1``.
    train_idx, test_idx : ndarray of int
        Indices into the trial arrays. ``test_idx`` belongs to ``subject`` only, and
        so does ``train_idx`` unless ``pool_other_subjects`` (then it is sorted).

    Raises
    ------
    ValueError
        If ``n_splits`` < 2, a subject has fewer than ``n_splits`` trials of one of
        its classes (then some folds could not contain that class), or
        ``pool_other_subjects`` is asked with trials of only one subject.
    """
    subjects, labels = _validate(subjects, labels)
    if int(n_splits) != n_splits or n_splits < 2:
        raise ValueError(f"n_splits must be an integer >= 2, got {n_splits!r}.")
    if pool_other_subjects and np.unique(subjects).size < 2:
        raise ValueError("pool_other_subjects (protocol 'within-subject-pooled') needs trials of at least two subjects.")
    for subject in np.unique(subjects):
        idx = np.flatnonzero(subjects == subject)
        classes, counts = np.unique(labels[idx], return_counts=True)
        if counts.min() < n_splits:
            raise ValueError(
                f"n_splits={n_splits} is larger than the {counts.min()} trials of class "
                f"{classes[counts.argmin()]!r} of subject {subject!r}."
            )
        cv = StratifiedKFold(n_splits=int(n_splits), shuffle=True, random_state=seed)
        others = np.flatnonzero(subjects != subject) if pool_other_subjects else idx[:0]
        for fold, (train, test) in enumerate(cv.split(idx, labels[idx])):
            yield subject, fold, np.sort(np.concatenate([idx[train], others])), idx[test]


def cross_subject_splits(
    subjects, labels, n_calibration: int = 0, seed: int = 42
) -> Iterator[Split]:
    """Leave-one-subject-out splits, optionally with calibration trials.

    Parameters
    ----------
    subjects : array-like, shape (n_trials,)
        Subject id of each trial; at least two distinct subjects.
    labels : array-like, shape (n_trials,)
        Class label of each trial.
    n_calibration : int
        Number of trials *per class* of the test subject moved into the training set
        (chosen at random, seeded). 0 gives pure leave-one-subject-out.
    seed : int
        Seed of the calibration-trial draw.

    Yields
    ------
    subject : object
        The test subject (in sorted order).
    fold : int
        Always 0: there is one fold per test subject.
    train_idx, test_idx : ndarray of int
        Training indices: all trials of the other subjects plus the calibration trials;
        test indices: the remaining trials of ``subject``.

    Raises
    ------
    ValueError
        If there are fewer than two subjects, ``n_calibration`` is negative, or a test
        subject has no trial of a class left to test after calibration.
    """
    subjects, labels = _validate(subjects, labels)
    if int(n_calibration) != n_calibration or n_calibration < 0:
        raise ValueError(
            f"n_calibration must be a non-negative integer, got {n_calibration!r}."
        )
    unique_subjects = np.unique(subjects)
    if unique_subjects.size < 2:
        raise ValueError(
            "cross-subject splits need at least two subjects, got "
            f"{unique_subjects.tolist()}."
        )
    for subject in unique_subjects:
        in_subject = subjects == subject
        others = np.flatnonzero(~in_subject)
        own = np.flatnonzero(in_subject)
        calibration = []
        if n_calibration:
            # One generator per test subject, so that a subject's calibration trials do
            # not depend on which other subjects are in the evaluation.
            rng = np.random.default_rng([seed, zlib.crc32(str(subject).encode())])
            for cls in np.unique(labels[own]):
                of_class = own[labels[own] == cls]
                if len(of_class) <= n_calibration:
                    raise ValueError(
                        f"n_calibration={n_calibration} leaves no test trial of class "
                        f"{cls!r} for subject {subject!r} ({len(of_class)} trials)."
                    )
                calibration.append(rng.choice(of_class, n_calibration, replace=False))
        calibration = np.sort(np.concatenate(calibration)) if calibration else (
            np.array([], dtype=int)
        )
        train = np.sort(np.concatenate([others, calibration])).astype(int)
        test = np.setdiff1d(own, calibration)
        yield subject, 0, train, test
