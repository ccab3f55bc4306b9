"""evaluate() and write_report() on real EEG (two shared subjects) and constructed data."""

import functools
import json
import types
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from sklearn.discriminant_analysis import LinearDiscriminantAnalysis

from bci_qif.baselines import BASELINES, make_baseline
from bci_qif.errors import EventBudgetError
from bci_qif.evaluation import RESULT_COLUMNS, EvalData, evaluate
from bci_qif.report import merge_runs, paired_tests, write_report

SUBJECTS = (1, 2)
N_SPLITS = 5
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
SCORES_IN_UNIT_INTERVAL = ["accuracy", "balanced_accuracy", "roc_auc", "f1"]


@pytest.fixture(scope="module")
def eeg(data_root) -> EvalData:
    """Left/right fist imagery of two subjects: runs 4, 8, 12, 8-30 Hz, 0-3 s.

    ``data_root`` (tests/conftest.py): env MNE_DATA, else ../shared/datasets.
    """
    import mne

    root = data_root
    X, y, subjects = [], [], []
    with mne.utils.use_log_level("ERROR"):
        for subject in SUBJECTS:
            files = mne.datasets.eegbci.load_data(subject, [4, 8, 12], path=str(root),
                                                  update_path=False)
            raw = mne.concatenate_raws([mne.io.read_raw_edf(f, preload=True) for f in files])
            mne.datasets.eegbci.standardize(raw)
            raw.filter(8.0, 30.0)
            events, _ = mne.events_from_annotations(raw, event_id={"T1": 1, "T2": 2})
            sfreq = raw.info["sfreq"]
            epochs = mne.Epochs(raw, events, {"T1": 1, "T2": 2}, tmin=0.0,
                                tmax=3.0 - 1.0 / sfreq, baseline=None, picks="eeg",
                                preload=True)
            X.append(epochs.get_data())
            y.append(epochs.events[:, 2] - 1)
            subjects.append(np.full(len(epochs), subject))
    return EvalData(X=np.concatenate(X), y=np.concatenate(y),
                    subjects=np.concatenate(subjects), sfreq=sfreq,
                    class_names=["left_fist", "right_fist"])


def _baselines():
    return {name: functools.partial(make_baseline, name) for name in BASELINES}


@pytest.fixture(scope="module")
def within(eeg):
    return evaluate(eeg, _baselines(), protocol="within-subject", n_splits=N_SPLITS,
                    n_jobs=2, progress=False)


@pytest.fixture(scope="module")
def loso(eeg):
    return evaluate(eeg, _baselines(), protocol="cross-subject", n_jobs=1, progress=False)


def _check_table(results, eeg, n_folds):
    assert list(results.columns[: len(RESULT_COLUMNS)]) == RESULT_COLUMNS
    assert len(results) == len(BASELINES) * len(SUBJECTS) * n_folds
    assert list(dict.fromkeys(results["pipeline"])) == list(BASELINES)
    assert set(results["subject"]) == set(SUBJECTS)
    for column in SCORES_IN_UNIT_INTERVAL:
        assert results[column].between(0, 1).all(), column
    assert results["kappa"].between(-1, 1).all()
    assert (results["itr_bits_per_min"] >= 0).all()
    assert (results["itr_bits_per_trial"] <= 1).all()
    assert (results["fit_seconds"] > 0).all()
    assert results[RESULT_COLUMNS].drop(columns="notes").notna().all().all()
    # every pipeline is scored on exactly the same folds, and tests every trial once
    folds = {
        name: table[["subject", "fold", "split_id", "n_train", "n_test"]]
        .sort_values(["subject", "fold"]).to_numpy().tolist()
        for name, table in results.groupby("pipeline")
    }
    assert all(f == folds["csp_lda"] for f in folds.values())
    for _, table in results.groupby("pipeline"):
        assert table["n_test"].sum() == len(eeg.y)
    for cm, n_test, classes in zip(results["confusion_matrix"], results["n_test"],
                                   results["classes"]):
        assert np.asarray(json.loads(cm)).sum() == n_test
        assert json.loads(classes) == ["left_fist", "right_fist"]


def test_within_subject_on_real_eeg(eeg, within):
    _check_table(within, eeg, N_SPLITS)
    assert (within["protocol"] == "within-subject").all()
    # each training fold is the rest of the same subject's trials
    per_subject = pd.Series(eeg.subjects).value_counts()
    for _, row in within.iterrows():
        assert row["n_train"] + row["n_test"] == per_subject[row["subject"]]
    # Riemannian tangent space + LR decodes these two subjects above chance
    assert within.loc[within.pipeline == "ts_lr", "accuracy"].mean() > 0.6


def test_cross_subject_on_real_eeg(eeg, loso):
    _check_table(loso, eeg, 1)
    per_subject = pd.Series(eeg.subjects).value_counts()
    for _, row in loso.iterrows():
        assert row["n_test"] == per_subject[row["subject"]]
        assert row["n_train"] == len(eeg.y) - per_subject[row["subject"]]


def test_pooled_within_subject_on_real_eeg(eeg, within):
    names = ["ts_lr", "ts_lr_recentered"]
    pooled = evaluate(eeg, {n: functools.partial(make_baseline, n) for n in names},
                      protocol="within-subject-pooled", n_splits=N_SPLITS, progress=False)
    assert (pooled["protocol"] == "within-subject-pooled").all()
    plain = within[within.pipeline.isin(names)].reset_index(drop=True)
    # the same test folds as within-subject; training adds the other subject's trials
    columns = ["pipeline", "subject", "fold", "split_id", "n_test"]
    pd.testing.assert_frame_equal(pooled[columns], plain[columns])
    per_subject = pd.Series(eeg.subjects).value_counts()
    np.testing.assert_array_equal(pooled["n_train"],
                                  plain["n_train"] + len(eeg.y) - pooled["subject"].map(per_subject))
    assert pooled["accuracy"].between(0, 1).all()
    one = EvalData(X=eeg.X[eeg.subjects == 1], y=eeg.y[eeg.subjects == 1],
                   subjects=eeg.subjects[eeg.subjects == 1], sfreq=eeg.sfreq)
    with pytest.raises(ValueError, match="at least two subjects"):
        evaluate(one, {"ts_lr": functools.partial(make_baseline, "ts_lr")},
                 protocol="within-subject-pooled", progress=False)


def test_parallel_and_sequential_runs_agree(eeg, loso):
    names = ["csp_lda", "ts_lr_recentered"]
    parallel = evaluate(eeg, {n: functools.partial(make_baseline, n) for n in names},
                        protocol="cross-subject", n_jobs=2, progress=False)
    sequential = loso[loso.pipeline.isin(names)].reset_index(drop=True)
    columns = ["subject", "pipeline", "split_id", "accuracy", "roc_auc", "confusion_matrix"]
    pd.testing.assert_frame_equal(parallel[columns], sequential[columns])


def test_calibration_trials_join_training(eeg):
    results = evaluate(eeg, {"ts_lr": functools.partial(make_baseline, "ts_lr")},
                       protocol="cross-subject", n_calibration=2, progress=False)
    per_subject = pd.Series(eeg.subjects).value_counts()
    for _, row in results.iterrows():
        assert row["n_test"] == per_subject[row["subject"]] - 2 * 2
        assert row["n_train"] == len(eeg.y) - per_subject[row["subject"]] + 2 * 2


def _is_png(path: Path) -> bool:
    return path.stat().st_size > 1000 and path.read_bytes()[:8] == PNG_SIGNATURE


@pytest.mark.parametrize("protocol", ["within-subject", "cross-subject"])
def test_report_files_on_real_results(within, loso, tmp_path, protocol):
    results = within if protocol == "within-subject" else loso
    paths = write_report(results, tmp_path, title=f"Baselines {protocol}")
    for name in ("results.csv", "report.md", "per_subject_accuracy.png",
                 "confusion_matrices.png"):
        assert (tmp_path / name).stat().st_size > 0, name
    assert _is_png(paths["per_subject"]) and _is_png(paths["confusion"])
    text = paths["markdown"].read_text()
    for heading in ("# Baselines", "## Summary", "## Per-subject accuracy", "## Paired tests"):
        assert heading in text
    assert "no paired test" in text  # no spiking pipeline among the baselines
    round_trip = pd.read_csv(paths["csv"])
    assert list(round_trip.columns) == list(results.columns)
    assert len(round_trip) == len(results)


def test_report_with_spiking_rows_tests_and_curves(within, tmp_path):
    # Stand-in spiking rows: copies of a baseline's rows renamed "qif", with the
    # columns a spiking model adds, and synthetic training curves.
    qif = within[within.pipeline == "ts_lr"].assign(
        pipeline="qif", acc_ord=0.5, silent_fraction=0.1, spikes_per_trial=12.0
    )
    results = pd.concat([within, qif], ignore_index=True)
    histories = [
        pd.DataFrame({"epoch": np.arange(5), "loss": np.linspace(1, 0.5, 5),
                      "acc": np.linspace(0.5, 0.7, 5), "acc_ord": np.linspace(0.3, 0.6, 5),
                      "silent_fraction": np.linspace(0.5, 0.1, 5)}).assign(pipeline="qif",
                                                                           fold=f)
        for f in range(2)
    ]
    histories.append({"pipeline": "lif", "fold": 0,
                      "history": [{"epoch": 0, "loss": 1.0, "acc": 0.5},
                                  {"epoch": 1, "loss": 0.9, "acc": 0.55}]})
    paths = write_report(results, tmp_path, extra_histories=histories)
    assert _is_png(paths["curves"])
    text = paths["markdown"].read_text()
    assert "underpowered" in text and "## Training curves" in text
    assert "acc_ord" in text and "silent_fraction" in text
    tests = paired_tests(results, ["qif"])
    assert set(tests["baseline"]) == set(BASELINES)
    assert (tests["n_subjects"] == len(SUBJECTS)).all()
    # qif is a copy of ts_lr: every difference is zero, no p-value, a reason instead
    row = tests.set_index("baseline").loc["ts_lr"]
    assert np.isnan(row["p_value"]) and "zero" in row["note"]
    other = tests.set_index("baseline").loc["mdm"]
    assert 0 < other["p_value"] <= 1


def test_runs_split_by_pipeline_merge_into_one_report(within, loso, tmp_path):
    from bci_qif.cli import main

    # Two runs on the same folds: baselines in one, a stand-in spiking pipeline with
    # training curves in the other (as when the slow pipelines run elsewhere).
    qif = within[within.pipeline == "ts_lr"].assign(pipeline="qif", acc_ord=0.5, silent_fraction=0.1,
                                                    spikes_per_trial=12.0)
    histories = [pd.DataFrame({"epoch": [1, 2, 3], "loss": [0.9, 0.7, 0.6], "acc": [0.5, 0.6, 0.7]})
                 .assign(pipeline="qif", subject=subject, fold=fold)
                 for subject, fold in qif[["subject", "fold"]].itertuples(index=False)]
    write_report(within, tmp_path / "baselines")
    write_report(qif, tmp_path / "spiking", extra_histories=histories)
    assert (tmp_path / "spiking" / "histories.csv").is_file()
    assert not (tmp_path / "baselines" / "histories.csv").exists()

    merged, merged_histories = merge_runs([tmp_path / "baselines", tmp_path / "spiking"])
    assert len(merged) == len(within) + len(qif)
    assert list(dict.fromkeys(merged["pipeline"])) == [*BASELINES, "qif"]
    np.testing.assert_allclose(merged.loc[merged.pipeline == "qif", "accuracy"], qif["accuracy"])
    assert len(merged_histories) == len(histories)
    assert all(list(h["loss"]) == [0.9, 0.7, 0.6] for h in merged_histories)

    assert main(["report", str(tmp_path / "baselines"), str(tmp_path / "spiking"),
                 "--out", str(tmp_path / "merged")]) == 0
    text = (tmp_path / "merged" / "report.md").read_text()
    assert "## Paired tests" in text and "## Training curves" in text and "| qif |" in text
    assert _is_png(tmp_path / "merged" / "training_curves.png")

    with pytest.raises(ValueError, match="more than one run"):
        merge_runs([tmp_path / "baselines", tmp_path / "baselines"])
    write_report(loso, tmp_path / "loso")
    with pytest.raises(ValueError, match="mix protocols"):
        merge_runs([tmp_path / "baselines", tmp_path / "loso"])
    write_report(qif.assign(split_id="other"), tmp_path / "other_folds")
    with pytest.raises(ValueError, match="different folds"):
        merge_runs([tmp_path / "baselines", tmp_path / "other_folds"])
    with pytest.raises(FileNotFoundError, match="results.csv"):
        merge_runs([tmp_path / "nowhere"])
    assert main(["report", str(tmp_path / "nowhere"), "--out", str(tmp_path / "x")]) == 2


def test_paired_tests_with_enough_subjects():
    rng = np.random.default_rng(0)
    subjects = np.arange(10)
    rows = [{"subject": s, "pipeline": p, "fold": 0, "accuracy": acc}
            for s in subjects
            for p, acc in (("csp_lda", 0.6 + 0.02 * rng.standard_normal()),
                           ("lif", 0.75 + 0.02 * rng.standard_normal()))]
    tests = paired_tests(pd.DataFrame(rows), ["lif"])
    assert len(tests) == 1
    assert tests["p_value"].iloc[0] == pytest.approx(2 / 2**10)  # all 10 differences > 0
    assert tests["note"].iloc[0] == ""


class _LogVarianceSpiker(LinearDiscriminantAnalysis):
    """A stand-in for a spiking model: LDA on log-variance, with the spiking hooks."""

    def fit(self, X, y):
        super().fit(np.log(X.var(axis=-1)), y)
        self.history_ = [{"epoch": e, "loss": 1.0 / (e + 1), "acc": 0.5 + 0.1 * e}
                         for e in range(3)]
        return self

    def predict(self, X):
        return super().predict(np.log(X.var(axis=-1)))

    def predict_proba(self, X):
        return super().predict_proba(np.log(X.var(axis=-1)))

    def spiking_metrics(self, X, y):
        return {"acc_ord": float(np.mean(self.predict(X) == y)) / 2,
                "silent_fraction": 0.25, "spikes_per_trial": float(len(X))}


def _constructed_data(n_subjects=3, n_trials=20, string_labels=False):
    rng = np.random.default_rng(0)
    y = np.tile(np.arange(2), n_subjects * n_trials // 2)
    X = rng.standard_normal((len(y), 4, 50))
    X[y == 1, 0] *= 3.0
    labels = np.where(y == 1, "right", "left") if string_labels else y
    return EvalData(X=X, y=labels, subjects=np.repeat(np.arange(n_subjects), n_trials),
                    sfreq=50.0)


def test_spiking_metrics_hook_and_histories():
    data = _constructed_data()
    results = evaluate(data, {"qif": _LogVarianceSpiker}, n_splits=2, progress=False)
    assert {"acc_ord", "silent_fraction", "spikes_per_trial"} <= set(results.columns)
    assert list(results.columns[len(RESULT_COLUMNS):]) == ["acc_ord", "silent_fraction",
                                                            "spikes_per_trial"]
    np.testing.assert_allclose(results["acc_ord"], results["accuracy"] / 2)
    np.testing.assert_array_equal(results["spikes_per_trial"], results["n_test"])
    histories = results.attrs["histories"]
    assert len(histories) == len(results)
    assert {"pipeline", "subject", "fold", "epoch", "loss"} <= set(histories[0].columns)
    assert data.trial_duration_s == pytest.approx(1.0)


def test_estimator_instances_and_string_labels():
    data = _constructed_data(string_labels=True)
    results = evaluate(data, {"lda": _LogVarianceSpiker()}, protocol="cross-subject",
                       progress=False)
    assert len(results) == 3
    assert (results["accuracy"] > 0.7).all()
    assert json.loads(results["classes"].iloc[0]) == ["left", "right"]


def test_eval_data_from_trialset_like_object():
    rng = np.random.default_rng(0)
    # labels index class_names, which also names a class absent from this set
    ts = types.SimpleNamespace(data=rng.standard_normal((6, 2, 10)).astype(np.float32),
                               labels=np.array([1, 2, 1, 2, 1, 2]),
                               subjects=np.array([1, 1, 1, 2, 2, 2]), sfreq=160.0,
                               class_names=["rest", "left", "right"])
    data = EvalData.from_trialset(ts)
    assert data.class_names == ["left", "right"]
    np.testing.assert_array_equal(data.labels, [1, 2])
    assert data.trial_duration_s == pytest.approx(10 / 160.0)
    with pytest.raises(ValueError, match="sfreq"):
        EvalData.from_trialset(types.SimpleNamespace(data=ts.data, labels=ts.labels,
                                                     subjects=ts.subjects))


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"protocol": "leave-one-out"}, "protocol"),
        ({"pipelines": {}}, "pipelines"),
        ({"pipelines": {"x": 3}}, r"pipelines\['x'\]"),
        ({"n_calibration": 2}, "n_calibration"),
        ({"n_calibration": 2, "protocol": "within-subject-pooled"}, "n_calibration"),
        ({"n_splits": 1}, "n_splits"),
    ],
)
def test_evaluate_argument_errors(kwargs, match):
    arguments = {"pipelines": {"lda": _LogVarianceSpiker}, "progress": False, **kwargs}
    with pytest.raises(ValueError, match=match):
        evaluate(_constructed_data(), **arguments)


def test_eval_data_validation():
    X = np.zeros((4, 2, 10))
    with pytest.raises(ValueError, match="one entry per trial"):
        EvalData(X=X, y=[0, 1, 0], subjects=[1, 1, 1, 1], sfreq=100.0)
    with pytest.raises(ValueError, match="two classes"):
        EvalData(X=X, y=[0, 0, 0, 0], subjects=[1, 1, 1, 1], sfreq=100.0)
    with pytest.raises(ValueError, match="class_names"):
        EvalData(X=X, y=[0, 1, 0, 1], subjects=[1, 1, 1, 1], sfreq=100.0,
                 class_names=["a"])
    with pytest.raises(ValueError, match="shape"):
        EvalData(X=X[0], y=[0, 1], subjects=[1, 1], sfreq=100.0)
    with pytest.raises(ValueError, match="report|protocols"):
        write_report(pd.DataFrame({"subject": [1, 1], "pipeline": ["a", "a"],
                                   "fold": [0, 0], "accuracy": [0.5, 0.6],
                                   "protocol": ["within-subject", "cross-subject"]}),
                     "/nonexistent-never-written")


class _GroupRecorder(LinearDiscriminantAnalysis):
    """LDA on log-variance that records which subject ids reach each method."""

    __metadata_request__fit = {"groups": True}
    __metadata_request__predict = {"groups": True}
    __metadata_request__predict_proba = {"groups": True}
    seen = []

    def fit(self, X, y, groups=None):
        _GroupRecorder.seen.append(("fit", None if groups is None else sorted(set(groups))))
        return super().fit(np.log(np.var(X, axis=-1)), y)

    def predict(self, X, groups=None):
        _GroupRecorder.seen.append(("predict", None if groups is None else sorted(set(groups))))
        return super().predict(np.log(np.var(X, axis=-1)))

    def predict_proba(self, X, groups=None):
        return super().predict_proba(np.log(np.var(X, axis=-1)))

    def spiking_metrics(self, X, y, groups=None):
        _GroupRecorder.seen.append(("spiking_metrics", None if groups is None else sorted(set(groups))))
        return {"acc_ord": float(np.mean(self.predict(X, groups=groups) == y)), "silent_fraction": 0.0,
                "spikes_per_trial": 1.0}


def test_subject_ids_reach_fit_predict_and_spiking_metrics(eeg):
    _GroupRecorder.seen = []
    results = evaluate(eeg, {"qif": _GroupRecorder}, protocol="cross-subject", progress=False)
    assert len(results) == 2 and results["acc_ord"].notna().all()
    calls = _GroupRecorder.seen
    # Every call got subject ids: each fold trains on one subject and tests on the other.
    assert all(groups is not None for _, groups in calls)
    assert sorted(tuple(g) for m, g in calls if m == "fit") == [(1,), (2,)]
    assert sorted(tuple(g) for m, g in calls if m == "spiking_metrics") == [(1,), (2,)]
    assert {tuple(g) for m, g in calls if m == "predict"} == {(1,), (2,)}


MARK = 123.0


class _RunawaySpiker(_LogVarianceSpiker):
    """Fits, then cannot simulate marked trials (as if its firing ran away there)."""

    def predict(self, X):
        if np.any(X[:, 3, 0] == MARK):
            raise EventBudgetError("a neuron fires more than 16 spikes between two input events")
        return super().predict(X)


def test_a_fold_whose_network_runs_away_is_kept_as_a_failure():
    data = _constructed_data()
    data.X[data.subjects == 1, 3, 0] = MARK  # only subject 1's test folds trip the runaway
    results = evaluate(data, {"qif": _RunawaySpiker, "lda": _LogVarianceSpiker}, n_splits=2, progress=False)
    failed = results[results["accuracy"].isna()]
    assert len(failed) == 2 and set(failed["pipeline"]) == {"qif"} and set(failed["subject"]) == {1}
    assert failed["notes"].str.contains("event budget").all() and (failed["failed"] == 1).all()
    assert results.loc[results["pipeline"] == "lda", "accuracy"].notna().all()
    assert results.loc[results["subject"] != 1, "accuracy"].notna().all()


def test_loss_curves_spanning_decades_get_a_log_axis():
    from bci_qif.report import _spans_decades

    assert _spans_decades([17000.0, 12.0, 0.4, 0.05])  # the pooled pretraining's first epochs
    assert not _spans_decades([0.9, 0.5, 0.3])
    assert not _spans_decades([3.0, 0.0, -1.0])  # not all positive: a log axis would hide points
    assert not _spans_decades([np.nan])
