"""FineTunedQIF: pretrain on the other subjects, fine-tune on the user, inside the evaluation."""

import functools
import logging
import subprocess
import sys

import numpy as np
import pytest

from bci_qif import cli
from bci_qif.baselines import make_baseline
from bci_qif.config import validate_config
from bci_qif.datasets import load_eegbci
from bci_qif.estimator import QIFClassifier
from bci_qif.evaluation import EvalData, evaluate
from bci_qif.finetuning import FineTunedQIF, _fingerprint, pretrained_model

SMALL = dict(hidden_layer_sizes=(16,), batch_size=15, readout_tau=5.0, learning_rate=1e-2, epochs=2, n_members=1)


@pytest.fixture(scope="module")
def trials(data_root):
    """Subjects 1 and 2, imagined left vs right fist (runs 4, 8, 12), 8-30 Hz, 0-3 s."""
    return load_eegbci([1, 2], data_dir=data_root)


@pytest.fixture
def cache(tmp_path, monkeypatch):
    monkeypatch.setenv("BCI_QIF_CACHE", str(tmp_path / "cache"))
    return tmp_path / "cache" / "pretrained"


def _decoder(sfreq, **fine_tuning):
    return FineTunedQIF(QIFClassifier(**SMALL, sfreq=sfreq), epochs=2, **fine_tuning)


def test_pooled_evaluation_fine_tunes_on_the_tested_subject(trials, cache):
    data = EvalData.from_trialset(trials)
    results = evaluate(data, {"qif_finetuned": functools.partial(_decoder, trials.sfreq),
                              "ts_lr": functools.partial(make_baseline, "ts_lr")},
                       protocol="within-subject-pooled", n_splits=2, progress=False)
    tuned, baseline = (results[results.pipeline == name] for name in ("qif_finetuned", "ts_lr"))
    assert len(tuned) == 4 and sorted(tuned["split_id"]) == sorted(baseline["split_id"])  # the same folds
    assert tuned["accuracy"].between(0, 1).all() and tuned["acc_ord"].between(0, 1).all()
    assert tuned["window_acc"].between(0, 1).all()  # the 2 s windows the GUI decodes
    # One pretraining per subject (on the other subject's trials only), shared by its two folds.
    assert len(list(cache.glob("*.npz"))) == 2


def test_fine_tuned_decoder_is_the_pretrained_model_fine_tuned_on_the_users_trials(trials, cache):
    X, y, groups = trials.data, np.asarray(trials.labels), np.asarray(trials.subjects)
    user = np.flatnonzero(groups == 2)
    calibration, test = user[:20], user[20:]
    train = np.concatenate([np.flatnonzero(groups == 1), calibration])
    by_hand = QIFClassifier(**SMALL, sfreq=trials.sfreq).fit(X[groups == 1], y[groups == 1], groups=groups[groups == 1])
    by_hand.fine_tune(X[calibration], y[calibration], epochs=2, learning_rate=3e-3)
    expected = by_hand.predict_proba(X[test])
    for _ in ("pretrained", "from the cache"):
        tuned = _decoder(trials.sfreq).fit(X[train], y[train], groups=groups[train], target_group=2)
        assert tuned.fine_tuned_ and tuned.target_group_ == 2
        np.testing.assert_allclose(tuned.predict_proba(X[test], groups=groups[test]), expected, rtol=1e-6)
        assert len(list(cache.glob("*.npz"))) == 1
    # The user's trials are aligned by the calibration trials' mean, with or without subject ids.
    np.testing.assert_allclose(tuned.predict_proba(X[test]), expected, rtol=1e-6)
    assert set(tuned.spiking_metrics(X[test], y[test], groups=groups[test])) >= {"acc_ord", "silent_fraction"}
    # Without the user's trials in training: the pretrained model as it is.
    zero_shot = _decoder(trials.sfreq).fit(X[groups == 1], y[groups == 1], groups=groups[groups == 1],
                                           target_group=2)
    assert not zero_shot.fine_tuned_
    assert len(list(cache.glob("*.npz"))) == 1  # the same pretraining


def test_zero_epochs_from_the_config_file_give_the_pretrained_networks_aligned_to_the_user(trials, cache):
    X, y, groups = trials.data, np.asarray(trials.labels), np.asarray(trials.subjects)
    user = np.flatnonzero(groups == 2)
    calibration, test = user[:20], user[20:]
    train = np.concatenate([np.flatnonzero(groups == 1), calibration])
    config = validate_config({"model": dict(SMALL), "fine_tuning": {"epochs": 0, "learning_rate": 1e-3}})
    decoder = cli._pipelines(["qif_finetuned"], config, trials.sfreq)["qif_finetuned"]()
    assert (decoder.epochs, decoder.learning_rate) == (0, 1e-3)
    decoder.fit(X[train], y[train], groups=groups[train], target_group=2)
    pretrained = QIFClassifier(**SMALL, sfreq=trials.sfreq).fit(X[groups == 1], y[groups == 1],
                                                                groups=groups[groups == 1])
    np.testing.assert_allclose(decoder.predict_proba(X[test], groups=groups[test]),
                               pretrained.calibrate(X[calibration]).predict_proba(X[test]), rtol=1e-6)


def test_models_cached_before_a_setting_existed_keep_their_key(trials):
    # Models cached before ``optimizer`` and ``late_penalty`` existed were trained with Adam and no
    # late penalty: the defaults must hash as they did (without the settings), other values differently.
    X, y, groups = trials.data, np.asarray(trials.labels), np.asarray(trials.subjects)
    default = QIFClassifier(**SMALL, sfreq=trials.sfreq)

    class Older(QIFClassifier):  # the estimator as it was: every setting but the added ones
        def get_params(self, deep=True):
            return {k: v for k, v in super().get_params(deep).items() if k not in ("optimizer", "late_penalty")}

    older = Older(**SMALL, sfreq=trials.sfreq)
    assert _fingerprint(default, X, y, groups) == _fingerprint(older, X, y, groups)
    for changed in (dict(optimizer="sgd"), dict(late_penalty=1.0)):
        other = QIFClassifier(**SMALL, sfreq=trials.sfreq, **changed)
        assert _fingerprint(other, X, y, groups) != _fingerprint(default, X, y, groups)
    # Soft targets (distillation) are part of the key only when given.
    soft = 0.5 * np.eye(2)[np.unique(y, return_inverse=True)[1]] + 0.25
    assert _fingerprint(default, X, y, groups, None) == _fingerprint(default, X, y, groups)
    assert _fingerprint(default, X, y, groups, soft) != _fingerprint(default, X, y, groups)
    assert _fingerprint(default, X, y, groups, soft) != _fingerprint(default, X, y, groups, 0.5 + 0 * soft)


def test_the_pretrained_model_setting_applies_to_the_pretrained_networks_only(trials):
    # The configuration's fine_tuning.pretrained_model overrides `model` for qif_finetuned's pretraining;
    # the own-trials decoder (pipeline qif) keeps `model`.
    config = validate_config({"model": dict(SMALL), "fine_tuning": {"pretrained_model": {
        "late_penalty": 2.0, "hidden_layer_sizes": [4], "n_segments": 2}}})
    pipelines = cli._pipelines(["qif", "qif_finetuned"], config, trials.sfreq)
    own, pooled = pipelines["qif"]().get_params(), pipelines["qif_finetuned"]().estimator.get_params()
    assert {key for key in own if own[key] != pooled[key]} == {"late_penalty", "hidden_layer_sizes", "n_segments"}
    assert (own["late_penalty"], own["hidden_layer_sizes"], own["n_segments"]) == (0.0, (16,), 1)
    assert (pooled["late_penalty"], pooled["hidden_layer_sizes"], pooled["n_segments"]) == (2.0, (4,), 2)


def test_an_unreadable_cached_model_is_pretrained_again(trials, cache, caplog):
    X, y, groups = trials.data, np.asarray(trials.labels), np.asarray(trials.subjects)
    others = groups == 1
    base = QIFClassifier(**SMALL, sfreq=trials.sfreq)
    cache.mkdir(parents=True)
    path = cache / f"{_fingerprint(base, X[others], y[others], groups[others])}.npz"
    path.write_bytes(b"not a model")
    with caplog.at_level(logging.WARNING, logger="bci_qif.finetuning"):
        tuned = _decoder(trials.sfreq).fit(X, y, groups=groups, target_group=2)
    assert "unreadable cached model" in caplog.text
    assert QIFClassifier.load(path).classes_.tolist() == tuned.classes_.tolist()  # replaced by a good one


# Another process that holds the cache entry's lock while it "pretrains"; it publishes the model and
# lets go when told to on stdin (or when stdin closes).
_LOCK_HOLDER = """
import os, sys
from pathlib import Path
from bci_qif.finetuning import _exclusive
path, staged = map(Path, sys.argv[1:])
with _exclusive(path):
    print("locked", flush=True)
    sys.stdin.readline()
    os.replace(staged, path)
"""


class _ReleaseWhenWaiting(logging.Handler):
    """Tells the lock holder to finish once this process reports that it waits for it."""

    def __init__(self, holder):
        super().__init__(level=logging.INFO)
        self.holder = holder

    def emit(self, record):
        if "waiting for another process" in record.getMessage():
            self.holder.stdin.write("go\n")
            self.holder.stdin.flush()


def test_a_second_request_waits_for_the_pretraining_under_way(trials, cache, monkeypatch, caplog):
    X, y, groups = trials.data, np.asarray(trials.labels), np.asarray(trials.subjects)
    others = groups == 1
    base = QIFClassifier(**SMALL, sfreq=trials.sfreq)
    fitted = QIFClassifier(**SMALL, sfreq=trials.sfreq).fit(X[others], y[others], groups=groups[others])
    path = cache / f"{_fingerprint(base, X[others], y[others], groups[others])}.npz"
    staged = cache.parent / "staged.npz"
    fitted.save(staged)
    holder = subprocess.Popen([sys.executable, "-c", _LOCK_HOLDER, str(path), str(staged)],
                              stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    release = _ReleaseWhenWaiting(holder)
    logger = logging.getLogger("bci_qif.finetuning")
    logger.addHandler(release)
    try:
        assert holder.stdout.readline().strip() == "locked"
        assert not path.exists()  # a request now would pretrain, were it not for the lock

        def pretrain_again(*args, **kwargs):
            raise AssertionError("pretrained a second time instead of waiting for the first")

        monkeypatch.setattr(QIFClassifier, "fit", pretrain_again)
        with caplog.at_level(logging.INFO, logger="bci_qif.finetuning"):
            model = pretrained_model(base, X[others], y[others], groups[others])
    finally:
        logger.removeHandler(release)
        holder.stdin.close()
        assert holder.wait(timeout=120) == 0
    assert "waiting for another process" in caplog.text
    np.testing.assert_allclose(model.predict_proba(X[~others]), fitted.predict_proba(X[~others]), rtol=1e-6)


def test_clear_errors(trials, cache, data_root, capsys):
    X, y, groups = trials.data, np.asarray(trials.labels), np.asarray(trials.subjects)
    decoder = _decoder(trials.sfreq, cache=False)
    with pytest.raises(ValueError, match="groups .* and target_group"):
        decoder.fit(X, y, groups=groups)
    only_user = groups == 2
    with pytest.raises(ValueError, match="no other subjects to pretrain on"):
        decoder.fit(X[only_user], y[only_user], groups=groups[only_user], target_group=2)
    decoder.fit(X[:60], y[:60], groups=groups[:60], target_group=2)
    with pytest.raises(ValueError, match="fine-tuned for subject 2"):
        decoder.predict(X[:5], groups=groups[:5])  # subject 1's trials
    # The command line refuses the own-data protocol before loading anything.
    code = cli.main(["evaluate", "--pipelines", "qif_finetuned", "--protocol", "within-subject", "--subjects", "1",
                     "--data-dir", str(data_root), "--quiet"])
    assert code == 2 and "within-subject-pooled" in capsys.readouterr().err
