"""Split generators: no leakage, every trial tested once, subjects kept apart."""

import numpy as np
import pytest

from bci_qif.protocols import cross_subject_splits, within_subject_splits


def _design(n_subjects=3, per_class=(10, 12), seed=0, string_ids=False):
    """Trials of several subjects in shuffled order, with unequal class counts."""
    rng = np.random.default_rng(seed)
    subjects, labels = [], []
    for s in range(n_subjects):
        for cls, count in enumerate(per_class):
            subjects += [f"S{s:03d}" if string_ids else s + 1] * (count + s)
            labels += [cls] * (count + s)
    order = rng.permutation(len(labels))
    return np.asarray(subjects)[order], np.asarray(labels)[order]


@pytest.mark.parametrize("string_ids", [False, True])
def test_within_subject_folds_partition_each_subject(string_ids):
    subjects, labels = _design(string_ids=string_ids)
    splits = list(within_subject_splits(subjects, labels, n_splits=5, seed=42))
    assert len(splits) == 3 * 5
    tested = np.zeros(len(labels), dtype=int)
    for subject, fold, train, test in splits:
        assert 0 <= fold < 5
        assert np.intersect1d(train, test).size == 0
        assert set(subjects[train]) == {subject} and set(subjects[test]) == {subject}
        # train + test is the whole subject
        np.testing.assert_array_equal(
            np.sort(np.concatenate([train, test])), np.flatnonzero(subjects == subject)
        )
        # stratified: each class's share in the test fold is within one trial of its
        # share in the subject
        for cls in np.unique(labels):
            expected = np.mean(labels[subjects == subject] == cls) * len(test)
            assert abs(np.sum(labels[test] == cls) - expected) <= 1
        tested[test] += 1
    np.testing.assert_array_equal(tested, 1)


def test_within_subject_is_reproducible_and_seeded():
    subjects, labels = _design()

    def tests_of(seed):
        return [t.tolist() for *_, t in within_subject_splits(subjects, labels, 4, seed)]

    assert tests_of(42) == tests_of(42)
    assert tests_of(42) != tests_of(7)


@pytest.mark.parametrize("string_ids", [False, True])
def test_pooled_within_subject_adds_every_other_subject_to_training(string_ids):
    subjects, labels = _design(string_ids=string_ids)
    plain = list(within_subject_splits(subjects, labels, n_splits=5, seed=42))
    pooled = list(within_subject_splits(subjects, labels, n_splits=5, seed=42, pool_other_subjects=True))
    assert len(pooled) == len(plain)
    for (subject, fold, own_train, test), (p_subject, p_fold, train, p_test) in zip(plain, pooled):
        assert (p_subject, p_fold) == (subject, fold)
        np.testing.assert_array_equal(p_test, test)  # the same test folds as within-subject
        assert np.intersect1d(train, test).size == 0
        assert np.all(np.diff(train) > 0)
        # training = the subject's own training fold + every trial of the other subjects
        expected = np.union1d(own_train, np.flatnonzero(subjects != subject))
        np.testing.assert_array_equal(train, expected)
    one = subjects == subjects[0]
    with pytest.raises(ValueError, match="at least two subjects"):
        list(within_subject_splits(subjects[one], labels[one], pool_other_subjects=True))


@pytest.mark.parametrize("n_splits", [1, 0, 2.5, 11])
def test_within_subject_rejects_bad_n_splits(n_splits):
    subjects, labels = _design(per_class=(10, 10))
    with pytest.raises(ValueError, match="n_splits"):
        list(within_subject_splits(subjects, labels, n_splits=n_splits))


def test_inputs_must_be_consistent():
    with pytest.raises(ValueError, match="one entry per trial"):
        list(within_subject_splits([1, 1, 2], [0, 1]))
    with pytest.raises(ValueError, match="empty"):
        list(cross_subject_splits([], []))


@pytest.mark.parametrize("string_ids", [False, True])
def test_leave_one_subject_out_never_mixes_subjects(string_ids):
    subjects, labels = _design(n_subjects=4, string_ids=string_ids)
    splits = list(cross_subject_splits(subjects, labels))
    assert [s for s, *_ in splits] == sorted(set(subjects.tolist()))
    tested = np.zeros(len(labels), dtype=int)
    for subject, fold, train, test in splits:
        assert fold == 0
        assert set(subjects[test]) == {subject}
        assert subject not in set(subjects[train])
        np.testing.assert_array_equal(np.sort(np.concatenate([train, test])),
                                      np.arange(len(labels)))
        tested[test] += 1
    np.testing.assert_array_equal(tested, 1)


def test_calibration_trials_move_to_training():
    subjects, labels = _design(n_subjects=3)
    n_cal = 3
    for subject, _, train, test in cross_subject_splits(subjects, labels, n_calibration=n_cal):
        own_train = train[subjects[train] == subject]
        # n_cal per class of the test subject, and all trials of the others
        assert len(own_train) == n_cal * len(np.unique(labels))
        for cls in np.unique(labels):
            assert np.sum(labels[own_train] == cls) == n_cal
        assert np.intersect1d(train, test).size == 0
        np.testing.assert_array_equal(np.sort(np.concatenate([own_train, test])),
                                      np.flatnonzero(subjects == subject))
        assert np.sum(subjects[train] != subject) == np.sum(subjects != subject)


def test_calibration_draw_is_seeded_and_independent_of_other_subjects():
    subjects, labels = _design(n_subjects=3)

    def calibration_of(subjects_, labels_, target, seed=42):
        for subject, _, train, _ in cross_subject_splits(subjects_, labels_, 2, seed):
            if subject == target:
                return sorted(np.flatnonzero(subjects_ == target).tolist().index(i)
                              for i in train[subjects_[train] == target])
        raise AssertionError("subject not found")

    full = calibration_of(subjects, labels, 2)
    assert full == calibration_of(subjects, labels, 2)
    assert full != calibration_of(subjects, labels, 2, seed=1)
    keep = subjects != 3  # dropping another subject must not change subject 2's draw
    assert calibration_of(subjects[keep], labels[keep], 2) == full


def test_cross_subject_errors():
    subjects, labels = _design(n_subjects=1)
    with pytest.raises(ValueError, match="at least two subjects"):
        list(cross_subject_splits(subjects, labels))
    subjects, labels = _design(n_subjects=2, per_class=(3, 5))
    with pytest.raises(ValueError, match="n_calibration"):
        list(cross_subject_splits(subjects, labels, n_calibration=3))
    with pytest.raises(ValueError, match="n_calibration"):
        list(cross_subject_splits(subjects, labels, n_calibration=-1))
