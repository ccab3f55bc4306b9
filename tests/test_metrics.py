"""Metrics on constructed cases whose values are computed by hand."""

import math

import numpy as np
import pytest

from bci_qif.metrics import classification_metrics, wolpaw_bits_per_trial


@pytest.mark.parametrize(
    ("accuracy", "n_classes", "bits"),
    [
        (1.0, 2, 1.0),  # perfect binary decision: one bit
        (1.0, 4, 2.0),  # perfect 4-class decision: two bits
        (0.5, 2, 0.0),  # chance
        (0.25, 2, 0.0),  # below chance is clipped to zero
        (0.25, 4, 0.0),  # chance with four classes
        # 1 + 0.75 log2 0.75 + 0.25 log2 0.25 = 1 - 0.311278 - 0.5
        (0.75, 2, 0.188722),
        # 2 + 0.5 log2 0.5 + 0.5 log2(0.5 / 3) = 2 - 0.5 - 1.292481
        (0.5, 4, 0.207519),
    ],
)
def test_wolpaw_bits_per_trial_hand_values(accuracy, n_classes, bits):
    assert wolpaw_bits_per_trial(accuracy, n_classes) == pytest.approx(bits, abs=1e-6)


@pytest.mark.parametrize(("accuracy", "n_classes"), [(1.2, 2), (-0.1, 2), (0.7, 1)])
def test_wolpaw_bits_per_trial_rejects_bad_input(accuracy, n_classes):
    with pytest.raises(ValueError, match="accuracy|n_classes"):
        wolpaw_bits_per_trial(accuracy, n_classes)


def test_binary_case_by_hand():
    y_true = [0, 0, 1, 1]
    y_pred = [0, 1, 1, 1]
    # Scores of class 1: both positives outrank both negatives -> AUC 1.
    m = classification_metrics(y_true, y_pred, proba=[[0.8, 0.2], [0.4, 0.6],
                                                      [0.3, 0.7], [0.1, 0.9]],
                               trial_duration_s=3.0)
    assert m["accuracy"] == pytest.approx(0.75)
    assert m["balanced_accuracy"] == pytest.approx((0.5 + 1.0) / 2)
    # p_o = 0.75, p_e = 0.5 * 0.25 + 0.5 * 0.75 = 0.5 -> kappa = 0.25 / 0.5
    assert m["kappa"] == pytest.approx(0.5)
    # class 0: P = 1, R = 0.5 -> F1 2/3; class 1: P = 2/3, R = 1 -> F1 0.8
    assert m["f1"] == pytest.approx((2 / 3 + 0.8) / 2)
    assert m["roc_auc"] == pytest.approx(1.0)
    np.testing.assert_array_equal(m["confusion_matrix"], [[1, 1], [0, 2]])
    bits = 1 + 0.75 * math.log2(0.75) + 0.25 * math.log2(0.25)
    assert m["itr_bits_per_trial"] == pytest.approx(bits)
    assert m["itr_bits_per_min"] == pytest.approx(bits * 60 / 3.0)
    assert m["n_classes"] == 2
    assert m["notes"] == []


def test_binary_auc_from_one_dimensional_scores():
    # Positive scores 0.7, 0.9 vs negative 0.2, 0.8: 3 of 4 pairs ordered -> 0.75.
    m = classification_metrics([0, 0, 1, 1], [0, 1, 1, 1], proba=[0.2, 0.8, 0.7, 0.9])
    assert m["roc_auc"] == pytest.approx(0.75)


def test_perfect_decoder_gives_one_bit_per_binary_trial():
    m = classification_metrics([0, 1, 0, 1], [0, 1, 0, 1], proba=[0.1, 0.9, 0.2, 0.8],
                               trial_duration_s=2.0)
    assert m["accuracy"] == m["kappa"] == m["roc_auc"] == m["f1"] == 1.0
    assert m["itr_bits_per_trial"] == pytest.approx(1.0)
    assert m["itr_bits_per_min"] == pytest.approx(30.0)


def test_chance_decoder_transfers_nothing():
    m = classification_metrics([0, 0, 1, 1], [0, 1, 0, 1], trial_duration_s=3.0)
    assert m["accuracy"] == 0.5
    assert m["kappa"] == pytest.approx(0.0)
    assert m["itr_bits_per_min"] == 0.0
    assert math.isnan(m["roc_auc"])
    assert any("no probabilities" in note for note in m["notes"])


def test_single_class_gives_nan_auc_with_reason():
    m = classification_metrics([1, 1, 1], [1, 0, 1], proba=[0.9, 0.4, 0.8], labels=[0, 1])
    assert math.isnan(m["roc_auc"])
    assert any("single class" in note for note in m["notes"])
    assert m["accuracy"] == pytest.approx(2 / 3)
    np.testing.assert_array_equal(m["confusion_matrix"], [[0, 0], [1, 2]])


def test_multiclass_ovr_macro_auc_and_labels_order():
    y_true = np.array(["a", "b", "c", "a", "b", "c"])
    y_pred = np.array(["a", "b", "c", "a", "c", "c"])
    # Each class's own column ranks its trials first -> every one-vs-rest AUC is 1.
    proba = np.array([
        [0.8, 0.1, 0.1], [0.1, 0.6, 0.3], [0.1, 0.2, 0.7],
        [0.7, 0.2, 0.1], [0.1, 0.5, 0.4], [0.2, 0.1, 0.7],
    ])
    m = classification_metrics(y_true, y_pred, proba=proba, class_names=["A", "B", "C"])
    assert m["roc_auc"] == pytest.approx(1.0)
    assert m["accuracy"] == pytest.approx(5 / 6)
    assert m["class_names"] == ["A", "B", "C"]
    np.testing.assert_array_equal(m["labels"], ["a", "b", "c"])
    np.testing.assert_array_equal(m["confusion_matrix"], [[2, 0, 0], [0, 1, 1], [0, 0, 2]])


def test_absent_class_keeps_layout_and_counts_for_itr():
    m = classification_metrics([0, 1, 0, 1], [0, 1, 0, 1], labels=[0, 1, 2],
                               trial_duration_s=1.0)
    assert m["confusion_matrix"].shape == (3, 3)
    assert m["n_classes"] == 3
    assert m["itr_bits_per_trial"] == pytest.approx(math.log2(3))


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"y_true": [0, 1], "y_pred": [0]}, "same length"),
        ({"y_true": [], "y_pred": []}, "empty"),
        ({"y_true": [0, 1], "y_pred": [0, 1], "proba": [[0.5, 0.5, 0.0]] * 2}, "proba"),
        ({"y_true": [0, 1], "y_pred": [0, 2], "labels": [0, 1]}, "labels"),
        ({"y_true": [0, 1], "y_pred": [0, 1], "class_names": ["x"]}, "class_names"),
        ({"y_true": [0, 1], "y_pred": [0, 1], "trial_duration_s": 0}, "trial_duration_s"),
    ],
)
def test_bad_arguments_raise_clear_errors(kwargs, match):
    with pytest.raises(ValueError, match=match):
        classification_metrics(**kwargs)
