"""QIFClassifier as a scikit-learn estimator, on real EEG (shared subject 1).

Fits are cheap once the simulator is compiled, and the compiled functions are cached
per (neuron, trial length, batch shape, event budget): every fit here uses ``SMALL``
(16 hidden neurons, batches of 15, 3 s trials) so that one compilation serves them all.
"""

import copy
import subprocess
import sys
import warnings

import jax
import numpy as np
import pytest
from sklearn.base import clone
from sklearn.exceptions import NotFittedError
from sklearn.model_selection import GridSearchCV, StratifiedKFold, cross_val_score
from sklearn.pipeline import Pipeline
from sklearn.preprocessing import FunctionTransformer
from sklearn.utils import estimator_checks

import bci_qif
from bci_qif import QIFClassifier
from bci_qif.datasets import load_eegbci
from bci_qif.estimator import ordinary_vote, soft_vote

# 45 trials of subject 1: batches of 15 divide them; 2 epochs are enough for contract tests.
# One network (n_members=1) for the contract tests; the ensemble tests below use two.
SMALL = dict(hidden_layer_sizes=(16,), batch_size=15, readout_tau=5.0, learning_rate=3e-2, epochs=2, n_members=1)


@pytest.fixture(scope="module")
def trials(data_root):
    """Subject 1, imagined left vs right fist (runs 4, 8, 12), 8-30 Hz, 0-3 s."""
    return load_eegbci([1], data_dir=data_root)


@pytest.fixture(scope="module")
def epochs(trials):
    return trials.to_epochs()


@pytest.fixture(scope="module")
def fitted(trials, epochs):
    """A QIF classifier fitted on mne.Epochs of subject 1."""
    return QIFClassifier(**SMALL).fit(epochs, trials.labels)


# --- package and scikit-learn contract -------------------------------------------------
def test_top_level_export_is_lazy():
    from bci_qif.estimator import QIFClassifier as direct

    assert bci_qif.QIFClassifier is direct
    assert "QIFClassifier" in bci_qif.__all__ and "QIFClassifier" in dir(bci_qif)
    with pytest.raises(AttributeError, match="no_such_name"):
        bci_qif.no_such_name  # noqa: B018
    # `import bci_qif` alone must not pull in JAX, scikit-learn or MNE.
    code = "import sys, bci_qif; print(sorted({'jax', 'sklearn', 'mne'} & set(sys.modules)))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


SKLEARN_CHECKS = [
    "check_no_attributes_set_in_init",
    "check_parameters_default_constructible",
    "check_get_params_invariance",
    "check_set_params",
    "check_estimators_unfitted",
    "check_estimator_repr",
    "check_estimator_cloneable",
    "check_mixin_order",
    "check_do_not_raise_errors_in_init_or_set_params",
]


@pytest.mark.parametrize("check", SKLEARN_CHECKS)
def test_sklearn_checks_that_apply_to_3d_input(check):
    getattr(estimator_checks, check)("QIFClassifier", QIFClassifier())


def test_tags_say_3d_input_classifier():
    from sklearn.utils import get_tags

    tags = get_tags(QIFClassifier())
    assert tags.estimator_type == "classifier"
    assert tags.input_tags.three_d_array and not tags.input_tags.two_d_array


def test_hyperparameters_stored_unchanged():
    hidden = [8, 4]  # a list, a bad tau and an unknown neuron: __init__ must neither copy nor validate
    clf = QIFClassifier(neuron="izhikevich", hidden_layer_sizes=hidden, tau=-1.0, patience=3)
    params = clf.get_params()
    assert params["hidden_layer_sizes"] is hidden
    assert (params["neuron"], params["tau"], params["patience"]) == ("izhikevich", -1.0, 3)


def test_get_params_set_params_clone_round_trip():
    clf = QIFClassifier(**SMALL)
    assert clf.set_params(neuron="lif", epochs=7) is clf
    assert clf.get_params()["neuron"] == "lif" and clf.epochs == 7
    twin = clone(clf)
    assert twin is not clf and twin.get_params() == clf.get_params()
    with pytest.raises(ValueError, match="no_such"):
        clf.set_params(no_such=1)


def test_not_fitted_error_before_fit(trials):
    clf = QIFClassifier(sfreq=trials.sfreq)
    for method in (clf.predict, clf.predict_proba, clf.decision_function):
        with pytest.raises(NotFittedError):
            method(trials.data)
    with pytest.raises(NotFittedError):
        clf.score(trials.data, trials.labels)
    with pytest.raises(NotFittedError):
        clf.spiking_metrics(trials.data, trials.labels)
    with pytest.raises(NotFittedError):
        clf.save("unused.npz")


def test_fitted_attributes_end_in_underscore_and_params_untouched(fitted):
    learned = set(vars(fitted)) - set(fitted.get_params())
    assert {"classes_", "params_", "encoder_", "history_", "sfreq_", "ch_names_", "n_channels_", "T_"} <= learned
    assert all(name.endswith("_") for name in learned), sorted(learned)
    assert fitted.get_params() == dict(QIFClassifier(**SMALL).get_params())
    # A clone of a fitted model is unfitted.
    assert not set(vars(clone(fitted))) - set(fitted.get_params())


def test_fitted_metadata_from_epochs(fitted, trials):
    assert fitted.sfreq_ == trials.sfreq and fitted.ch_names_ == list(trials.ch_names)
    assert fitted.n_channels_ == 64 and list(fitted.classes_) == [0, 1]
    assert len(fitted.history_) == SMALL["epochs"]


# --- outputs ------------------------------------------------------------------------------
def test_outputs_shapes_and_consistency(fitted, trials, epochs):
    n = len(trials)
    proba = fitted.predict_proba(epochs)
    assert proba.shape == (n, 2) and np.all(proba >= 0)
    np.testing.assert_allclose(proba.sum(axis=1), 1.0, atol=1e-6)
    decision = fitted.decision_function(epochs)
    assert decision.shape == (n,) and np.all(np.isfinite(decision))
    predicted = fitted.predict(epochs)
    assert predicted.shape == (n,) and set(predicted) <= {0, 1}
    # Binary decision > 0 means class 1 (its output neuron spiked first); so does proba.
    decided = decision != 0
    np.testing.assert_array_equal(predicted[decided], (decision[decided] > 0).astype(int))
    np.testing.assert_array_equal(predicted, fitted.classes_[np.argmax(proba, axis=1)])
    assert 0.0 <= fitted.score(epochs, trials.labels) <= 1.0
    # Arrays (sfreq known from the fit) give the same answers as Epochs.
    np.testing.assert_array_equal(fitted.predict(trials.data), predicted)


def test_spiking_metrics(fitted, epochs, trials):
    metrics = fitted.spiking_metrics(epochs, trials.labels)
    assert 0.0 <= metrics["acc_ord"] <= 1.0
    assert 0.0 <= metrics["silent_fraction"] <= 1.0
    assert metrics["spikes_per_trial"] >= 0


def test_a_network_without_hidden_layer_trains_with_sgd(trials):
    # Two output neurons reading the features (no hidden neurons to be silent), trained by SGD.
    settings = dict(SMALL, hidden_layer_sizes=(), optimizer="sgd", learning_rate=1.0)
    clf = QIFClassifier(**settings, sfreq=trials.sfreq).fit(trials.data, trials.labels)
    assert [layer["w"].shape for layer in clf.params_] == [(2, 2080)]
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no "mean of empty slice"
        metrics = clf.spiking_metrics(trials.data, trials.labels)
    assert np.isnan(metrics["silent_fraction"]) and 0.0 <= metrics["acc_ord"] <= 1.0
    assert metrics["spikes_per_trial"] > 0


def test_arrays_with_sfreq_reproduce_the_epochs_fit(fitted, trials):
    """Same seed, same trials as an array (and string labels): identical model."""
    names = np.array(trials.class_names)[trials.labels]
    clf = QIFClassifier(**SMALL, sfreq=trials.sfreq).fit(trials.data, names)
    assert list(clf.classes_) == sorted(trials.class_names)
    for mine, theirs in zip(clf.params_, fitted.params_):
        for key in ("w", "b"):
            np.testing.assert_array_equal(np.asarray(mine[key]), np.asarray(theirs[key]))
    np.testing.assert_array_equal(clf.predict(trials.data), clf.classes_[fitted.predict(trials.data)])
    np.testing.assert_array_equal(clf.predict_proba(trials.data), fitted.predict_proba(trials.data))
    assert clf.ch_names_ is None and clf.sfreq_ == trials.sfreq


# --- composition ----------------------------------------------------------------------------
def _to_microvolts(X):
    return X * 1e6


def test_pipeline_and_cross_val_score(trials):
    pipe = Pipeline([
        ("to_microvolts", FunctionTransformer(_to_microvolts)),
        ("qif", QIFClassifier(**SMALL, sfreq=trials.sfreq)),
    ])
    cv = StratifiedKFold(n_splits=2, shuffle=True, random_state=0)
    scores = cross_val_score(pipe, trials.data, trials.labels, cv=cv)
    assert scores.shape == (2,) and np.all((scores >= 0) & (scores <= 1))


def test_grid_search(trials):
    cv = StratifiedKFold(n_splits=2, shuffle=True, random_state=0)
    search = GridSearchCV(QIFClassifier(**dict(SMALL, epochs=1), sfreq=trials.sfreq),
                          {"learning_rate": [1e-2, 3e-2]}, cv=cv).fit(trials.data, trials.labels)
    assert search.best_params_["learning_rate"] in (1e-2, 3e-2)
    assert search.predict(trials.data).shape == (len(trials),)


def test_lif_neuron(trials):
    # A tenth of SMALL's learning rate: at 3e-2 the LIF rates run away within the epoch and the
    # growing event budget recompiles the gradient several times (80 s instead of 16 s).
    clf = QIFClassifier(**dict(SMALL, neuron="lif", epochs=1, learning_rate=3e-3), sfreq=trials.sfreq)
    clf.fit(trials.data, trials.labels)
    assert clf.history_[0]["n_nonfinite"] == 0
    proba = clf.predict_proba(trials.data)
    np.testing.assert_allclose(proba.sum(axis=1), 1.0, atol=1e-6)
    assert clf.predict(trials.data).shape == (len(trials),)


# --- clear errors ------------------------------------------------------------------------------
def test_array_without_sfreq_is_an_error(trials):
    with pytest.raises(ValueError, match="sfreq"):
        QIFClassifier(**SMALL).fit(trials.data, trials.labels)


def test_wrong_shapes_are_errors(trials):
    clf = QIFClassifier(**SMALL, sfreq=trials.sfreq)
    with pytest.raises(ValueError, match="n_trials, n_channels, n_times"):
        clf.fit(trials.data[:, 0], trials.labels)
    with pytest.raises(ValueError, match="labels"):
        clf.fit(trials.data, trials.labels[:-1])


def test_soft_targets_reach_training_in_class_order_and_bad_ones_fail_before_training(trials, monkeypatch):
    import bci_qif.estimator as estimator

    class Reached(Exception):
        pass

    def stop(*args, targets=None, **kwargs):  # stands in for training: records what fit passes on
        raise Reached(targets)

    monkeypatch.setattr(estimator, "train", stop)
    names = np.where(np.asarray(trials.labels) == 0, "left", "right")  # classes_ sorts the names
    soft = np.where(names[:, None] == np.array(["left", "right"]), 0.8, 0.2)
    with pytest.raises(Reached) as reached:
        QIFClassifier(**SMALL, sfreq=trials.sfreq).fit(trials.data, names, soft_targets=soft)
    np.testing.assert_allclose(reached.value.args[0], soft)
    with pytest.raises(ValueError, match=r"shape \(45, 2\)"):
        QIFClassifier(**SMALL, sfreq=trials.sfreq).fit(trials.data, names, soft_targets=soft[:-1])


def test_single_class_is_an_error(trials):
    left = trials.labels == 0
    with pytest.raises(ValueError, match="two classes"):
        QIFClassifier(**SMALL, sfreq=trials.sfreq).fit(trials.data[left], trials.labels[left])


@pytest.mark.parametrize("param, value", [("neuron", "izhikevich"), ("dtype", "float16"), ("encoding", "wavelets"),
                                          ("tau", 0.0), ("n_members", 0), ("n_members", 1.5),
                                          ("n_segments", 0)])
def test_bad_hyperparameters_are_named(trials, param, value):
    with pytest.raises(ValueError, match=param):
        QIFClassifier(**dict(SMALL, **{param: value}), sfreq=trials.sfreq).fit(trials.data, trials.labels)


def test_predict_rejects_other_channels_or_sfreq(fitted, trials, epochs):
    with pytest.raises(ValueError, match="10 channels.*64"):
        fitted.predict(trials.data[:, :10])
    resampled = epochs.copy()
    with resampled.info._unlock():
        resampled.info["sfreq"] = 2 * trials.sfreq
    with pytest.raises(ValueError, match="Hz"):
        fitted.predict(resampled)


def test_tangent_space_decoder_learns_round_trips_and_decodes_windows(trials, tmp_path):
    # The tangent-space encoding presents one constant feature vector per trial; with
    # 16 principal components the network separates subject 1's training trials. No
    # input noise: the default (2, tuned for all 2080 features) would drown 16 components.
    clf = QIFClassifier(encoding="tangent_space", n_components=16, rate_hz=10.0, tau=0.5,
                        hidden_layer_sizes=(16,), batch_size=15, epochs=20, learning_rate=1e-2,
                        readout_tau=1.0, input_noise=0.0, n_members=1, sfreq=trials.sfreq).fit(trials.data,
                                                                                                trials.labels)
    assert clf.score(trials.data, trials.labels) > 0.8
    assert clf.spiking_metrics(trials.data, trials.labels)["acc_ord"] > 0.8
    clf.save(tmp_path / "ts.npz")
    loaded = QIFClassifier.load(tmp_path / "ts.npz")
    np.testing.assert_array_equal(loaded.predict_proba(trials.data), clf.predict_proba(trials.data))
    # Shorter sliding windows (the real-time decoder's 2 s) go through the same encoder.
    windows = loaded.decode_windows(trials.data[:3, :, :320])
    assert windows["probabilities"].shape == (3, 2) and windows["window_s"] == 2.0


def test_segmented_decoder_sees_both_halves_round_trips_and_decodes_windows(trials, tmp_path):
    clf = QIFClassifier(**SMALL, n_segments=2, sfreq=trials.sfreq).fit(trials.data, trials.labels)
    assert clf.members_[0][0]["w"].shape == (16, 2 * 2080)  # the two halves' tangent vectors
    clf.save(tmp_path / "halves.npz")
    loaded = QIFClassifier.load(tmp_path / "halves.npz")
    assert loaded.n_segments == 2
    np.testing.assert_array_equal(loaded.predict_proba(trials.data), clf.predict_proba(trials.data))
    # A 2 s real-time window is cut into two 1 s halves the same way.
    windows = loaded.calibrate(trials.data[:6, :, :320]).decode_windows(trials.data[:3, :, :320])
    assert windows["probabilities"].shape == (3, 2) and np.all(np.isfinite(windows["probabilities"]))


# --- a new user's alignment ----------------------------------------------------------------------
def test_calibrate_aligns_windows_like_an_unseen_subject_and_can_be_undone(fitted, trials):
    model = copy.deepcopy(fitted)  # calibration is session state: keep the shared fixture untouched
    windows = trials.data[:12, :, 80:400]
    before = model.decode_windows(windows)["probabilities"]
    as_new_subject = model.decode_windows(windows, groups=np.full(12, 99))["probabilities"]
    assert not np.allclose(before, as_new_subject)  # subject 1's training mean vs these windows' own mean
    model.calibrate(windows)
    np.testing.assert_allclose(model.decode_windows(windows)["probabilities"], as_new_subject, rtol=1e-6)
    model.calibrate(None)
    np.testing.assert_allclose(model.decode_windows(windows)["probabilities"], before, rtol=1e-6)
    with pytest.raises(ValueError, match="at least 2 windows"):
        model.calibrate(windows[:1])


def test_adapt_keeps_a_running_mean_that_matches_the_batch_calibration(fitted, trials):
    from pyriemann.geometry.distance import distance_riemann
    from pyriemann.geometry.mean import mean_riemann

    model = copy.deepcopy(fitted)
    windows = trials.data[:12, :, 80:400]
    before = model.decode_windows(windows)["probabilities"]
    model.adapt(windows[:1])  # one window is no estimate of a mean: still the training reference
    np.testing.assert_allclose(model.decode_windows(windows)["probabilities"], before, rtol=1e-6)
    for window in windows[1:]:
        model.adapt(window[None])
    encoder = model.encoder_
    assert encoder.live_count_ == 12
    covs = encoder._covariances(windows)[:, 0]  # the one segment of a whole window
    batch = mean_riemann(covs)
    spread = np.mean([distance_riemann(c, batch) for c in covs])
    # Geodesic steps of 1/n give the geometric mean exactly for commuting matrices and a close
    # approximation of the Riemannian (Karcher) mean otherwise.
    assert distance_riemann(encoder.live_mean_[0], batch) < 0.05 * spread
    # Continuing a calibration: the calibrated windows count as the first ones.
    model.calibrate(windows[:6]).adapt(windows[6:])
    assert encoder.live_count_ == 12 and distance_riemann(encoder.live_mean_[0], batch) < 0.05 * spread
    model.calibrate(None)
    np.testing.assert_allclose(model.decode_windows(windows)["probabilities"], before, rtol=1e-6)
    with pytest.raises(ValueError, match="64 channels"):
        model.adapt(windows[:, :10])


def test_adapt_running_mean_is_the_geometric_mean_of_commuting_matrices(trials):
    from bci_qif.encoding import TangentSpaceEncoder

    # Diagonal covariances commute: their Riemannian mean is exp(mean(log)), which the running
    # geodesic mean must reproduce to rounding.
    encoder = TangentSpaceEncoder(sfreq=trials.sfreq, recenter=True).fit(trials.data, trials.labels)
    rng = np.random.default_rng(0)
    diagonals = rng.uniform(0.5, 3.0, size=(7, 4))
    encoder.n_channels_ = 4
    encoder._covariances = lambda X: np.stack([np.diag(d) for d in diagonals[:len(X)]])[:, None]
    encoder.adapt(np.zeros((7, 4, 10)))
    np.testing.assert_allclose(np.diag(encoder.live_mean_[0]), np.exp(np.log(diagonals).mean(axis=0)), rtol=1e-10)


def test_fine_tune_trains_on_from_the_fitted_weights(fitted, trials, tmp_path):
    X, y = trials.data, np.asarray(trials.labels)
    before = fitted.predict_proba(X)
    # A vanishing learning rate keeps the weights; subject 1's own trials align it by its training mean.
    still = copy.deepcopy(fitted).fine_tune(X, y, epochs=1, learning_rate=1e-12)
    np.testing.assert_allclose(still.predict_proba(X), before, rtol=1e-4)
    # No epochs: the user's trials only align (as a calibration would), the weights stay.
    few = X[:10]
    aligned = copy.deepcopy(fitted).fine_tune(few, y[:10], epochs=0)
    assert all(np.array_equal(np.asarray(new["w"]), np.asarray(old["w"]))
               for new, old in zip(aligned.members_[0], fitted.members_[0]))
    np.testing.assert_allclose(aligned.predict_proba(X), copy.deepcopy(fitted).calibrate(few).predict_proba(X),
                               rtol=1e-6)
    assert not np.allclose(aligned.predict_proba(X), before, rtol=1e-3)  # the alignment did change something
    with pytest.raises(ValueError, match="non-negative integer"):
        copy.deepcopy(fitted).fine_tune(X, y, epochs=-1)
    # Swapped labels: training goes on from the fitted weights towards the new targets.
    swapped = np.where(y == fitted.classes_[0], fitted.classes_[1], fitted.classes_[0])
    tuned = copy.deepcopy(fitted).fine_tune(X, swapped, epochs=10, learning_rate=3e-2)
    assert np.mean(tuned.predict(X) == swapped) > np.mean(fitted.predict(X) == swapped) + 0.3
    np.testing.assert_array_equal(tuned.encoder_.std_, fitted.encoder_.std_)  # standardization kept
    # The user's alignment is part of the tuned model: saved, and not undone by calibrate(None).
    outputs = copy.deepcopy(fitted).fine_tune(X, swapped, epochs=2, learning_rate=3e-2, output_only=True)
    for layer, (new, old) in enumerate(zip(outputs.members_[0], fitted.members_[0])):
        changed = not np.array_equal(np.asarray(new["w"]), np.asarray(old["w"]))
        assert changed == (layer == len(fitted.members_[0]) - 1)  # only the output layer trains
    user = copy.deepcopy(fitted).fine_tune(few, y[:10], epochs=2)
    user.save(tmp_path / "user.npz")
    loaded = QIFClassifier.load(tmp_path / "user.npz")
    np.testing.assert_allclose(loaded.predict_proba(X), user.calibrate(None).predict_proba(X), rtol=1e-6)
    np.testing.assert_allclose(loaded.predict_proba(X), copy.deepcopy(user).calibrate(few).predict_proba(X),
                               rtol=1e-5)
    with pytest.raises(ValueError, match="among"):
        copy.deepcopy(fitted).fine_tune(X, np.full(len(y), "up"))
    with pytest.raises(ValueError, match="channels"):
        copy.deepcopy(fitted).fine_tune(X[:, :10], y)


def test_calibrate_needs_a_recentring_tangent_space_encoder(trials):
    from bci_qif.encoding import TangentSpaceEncoder

    encoder = TangentSpaceEncoder(sfreq=trials.sfreq, recenter=False).fit(trials.data, trials.labels)
    with pytest.raises(ValueError, match="recenter=True"):
        encoder.calibrate(trials.data[:4])


# --- seed ensembles ----------------------------------------------------------------------------
def test_soft_vote_is_the_mean_of_the_members_softmax():
    t = np.array([[[0.2, 1.0], [3.0, 0.5]], [[0.9, 0.1], [2.0, 2.5]], [[0.0, 40.0], [1.0, 1.0]]])
    member_proba = np.exp(-t / 2.0) / np.exp(-t / 2.0).sum(axis=-1, keepdims=True)
    np.testing.assert_allclose(np.exp(soft_vote(t, 2.0)), member_proba.mean(axis=0), rtol=1e-12)
    np.testing.assert_allclose(np.exp(soft_vote(t[:1], 2.0)), member_proba[0], rtol=1e-12)
    # A class far behind keeps a finite log-probability (no log(0)).
    assert np.all(np.isfinite(soft_vote(np.array([[[0.0, 1e4]]]), 1.0)))


def test_ordinary_vote_needs_a_majority_of_ordinary_spikes():
    # 3 members x 4 trials x 2 classes.
    t = np.array([[[0.1, 0.2], [0.3, 0.1], [0.1, 0.2], [7.0, 9.0]],
                  [[0.1, 0.2], [0.2, 0.1], [0.3, 0.2], [7.0, 9.0]],
                  [[0.2, 0.1], [0.1, 0.3], [7.0, 8.0], [7.0, 9.0]]])
    ordinary = t < 5.0  # later first spikes are pseudospikes after the trial
    # trial 0: 0, 0, 1 -> 0; trial 1: 1, 1, 0 -> 1; trial 2: 0, 1, none -> no majority; trial 3: none fired.
    np.testing.assert_array_equal(ordinary_vote(t, ordinary), [0, 1, -1, -1])
    # One member: its earliest ordinary spike, as acc_ord of a single network.
    np.testing.assert_array_equal(ordinary_vote(t[:1], ordinary[:1]), [0, 1, 0, -1])
    # Two members that disagree decide nothing.
    np.testing.assert_array_equal(ordinary_vote(t[1:], ordinary[1:]), [-1, -1, -1, -1])


@pytest.fixture(scope="module")
def ensemble(trials, epochs):
    return QIFClassifier(**dict(SMALL, n_members=2)).fit(epochs, trials.labels)


@pytest.fixture(scope="module")
def second_seed(trials, epochs):
    """The network the ensemble's second member must be: one network with seed 1."""
    return QIFClassifier(**dict(SMALL, random_state=1)).fit(epochs, trials.labels)


def _same_params(a, b):
    return all(np.array_equal(np.asarray(x), np.asarray(y))
               for x, y in zip(jax.tree_util.tree_leaves(a), jax.tree_util.tree_leaves(b)))


def test_ensemble_members_are_the_networks_of_consecutive_seeds(ensemble, fitted, second_seed, epochs, trials):
    assert len(ensemble.members_) == 2 and ensemble.params_ is ensemble.members_[0]
    assert _same_params(ensemble.members_[0], fitted.params_)
    assert _same_params(ensemble.members_[1], second_seed.params_)
    assert not _same_params(ensemble.members_[0], ensemble.members_[1])
    assert [row["member"] for row in ensemble.history_] == [0, 0, 1, 1]
    assert [row["epoch"] for row in ensemble.history_] == [1, 2, 1, 2]
    # The ensemble's probabilities are the mean of its members' (soft vote) ...
    proba = ensemble.predict_proba(epochs)
    np.testing.assert_allclose(proba, (fitted.predict_proba(epochs) + second_seed.predict_proba(epochs)) / 2,
                               rtol=1e-6)
    np.testing.assert_array_equal(ensemble.predict(epochs), ensemble.classes_[np.argmax(proba, axis=1)])
    decision = ensemble.decision_function(epochs)
    np.testing.assert_allclose(decision, np.log(proba[:, 1]) - np.log(proba[:, 0]), rtol=1e-6, atol=1e-9)
    # ... and its spiking decision needs both members' earliest ordinary spikes to agree.
    outputs = [m._simulate(epochs) for m in (fitted, second_seed)]
    t = np.stack([o[0]["first_spike_times"] for o in outputs])
    ordinary = np.stack([o[0]["ordinary"] for o in outputs])
    expected = np.mean(ordinary_vote(t, ordinary) == trials.labels)
    assert ensemble.spiking_metrics(epochs, trials.labels)["acc_ord"] == pytest.approx(expected)


def test_ensemble_decodes_windows_with_votes_and_shows_the_first_member(ensemble, fitted, second_seed, trials):
    windows = trials.data[:5, :, 80:400]
    out = ensemble.decode_windows(windows)
    first, second = fitted.decode_windows(windows), second_seed.decode_windows(windows)
    np.testing.assert_allclose(out["probabilities"], (first["probabilities"] + second["probabilities"]) / 2,
                               rtol=1e-6)
    np.testing.assert_array_equal(out["predicted_index"], np.argmax(out["probabilities"], axis=1))
    np.testing.assert_array_equal(out["votes"], np.stack([first["ordinary_vote"], second["ordinary_vote"]], axis=1))
    agree = out["votes"][:, 0] == out["votes"][:, 1]
    np.testing.assert_array_equal(out["ordinary_vote"], np.where(agree, out["votes"][:, 0], -1))
    for key in ("first_spike_times", "ordinary", "silent_fraction"):  # the displayed network: member 0
        np.testing.assert_array_equal(out[key], first[key])


def test_window_scores_decode_every_window_of_the_trials(ensemble, trials):
    scores = ensemble.window_scores(trials.data, trials.labels, window_s=2.0, step_s=0.5)
    hits, hits_ord = [], []
    for start in (0, 80, 160):  # 2 s windows at 0, 0.5 and 1 s inside the 3 s trials
        out = ensemble.decode_windows(trials.data[:, :, start:start + 320])
        hits.append(out["predicted_index"] == trials.labels)
        hits_ord.append(out["ordinary_vote"] == trials.labels)
    assert scores == {"window_acc": pytest.approx(np.mean(hits)), "window_acc_ord": pytest.approx(np.mean(hits_ord))}
    with pytest.raises(ValueError, match="do not fit trials of 3 s"):
        ensemble.window_scores(trials.data, trials.labels, window_s=4.0)
