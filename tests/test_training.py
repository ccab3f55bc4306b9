"""Exact-gradient training: a short real run that learns, its history, and the optimiser pieces.

Subject 1 has 45 trials; batches of 15 divide them, and the model settings match
tests/test_estimator.py so that the compiled simulator is shared within a session.
"""

import json
import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from bci_qif import QIFClassifier, network
from bci_qif.datasets import load_eegbci
from bci_qif.training import (TrainConfig, TrainingState, _epoch_batches, _noisy, make_optimizer, steps_per_epoch,
                              train)

LEARN = dict(hidden_layer_sizes=(16,), batch_size=15, readout_tau=5.0, learning_rate=3e-2, epochs=15,
             random_state=0, n_members=1)
HISTORY_KEYS = {"epoch", "loss", "acc", "acc_ord", "silent_fraction", "silent_fraction_1", "grad_norm", "n_nonfinite"}


@pytest.fixture(scope="module")
def trials(data_root):
    """Subject 1, imagined left vs right fist, 8-30 Hz, 0-3 s after the cue."""
    return load_eegbci([1], data_dir=data_root)


@pytest.fixture(scope="module")
def trained(trials):
    return QIFClassifier(**LEARN, sfreq=trials.sfreq).fit(trials.data, trials.labels)


def test_learns_above_chance_on_training_trials(trained, trials):
    # Balanced classes (23 / 22): chance is about 0.5. With these settings the network
    # reaches about 0.9 in 15 epochs; 0.7 leaves room without accepting chance.
    assert np.bincount(trials.labels).min() >= 20
    assert trained.score(trials.data, trials.labels) > 0.7
    history = trained.history_
    assert history[-1]["loss"] < history[0]["loss"]
    assert history[-1]["acc"] > 0.7


def test_history_has_every_metric_per_epoch(trained):
    history = trained.history_
    assert [row["epoch"] for row in history] == list(range(1, LEARN["epochs"] + 1))
    for row in history:
        assert HISTORY_KEYS <= set(row), sorted(HISTORY_KEYS - set(row))
        assert row["n_nonfinite"] == 0
        assert math.isfinite(row["loss"]) and math.isfinite(row["grad_norm"]) and row["grad_norm"] >= 0
        for key in ("acc", "acc_ord", "silent_fraction", "silent_fraction_1"):
            assert 0.0 <= row[key] <= 1.0, (key, row[key])
    json.dumps(history)  # checkpoints store the history as JSON


def test_validation_split_and_early_stopping(trials):
    # A third held out: 15 validation trials, 30 training trials (two batches of 15).
    clf = QIFClassifier(**dict(LEARN, epochs=12), validation_fraction=1 / 3, patience=2,
                        sfreq=trials.sfreq).fit(trials.data, trials.labels)
    history = clf.history_
    assert 1 <= len(history) <= 12
    for row in history:
        assert {"val_loss", "val_acc", "val_acc_ord"} <= set(row)
        assert 0.0 <= row["val_acc"] <= 1.0 and 0.0 <= row["val_acc_ord"] <= 1.0
    if len(history) < 12:  # stopped early: the last `patience` epochs did not beat an earlier one
        assert len(history) >= 1 + 2
        best_before = max(row["val_acc_ord"] for row in history[:-2])
        assert all(row["val_acc_ord"] <= best_before for row in history[-2:])


def test_a_resumed_run_that_had_stopped_early_stays_stopped():
    # A checkpoint written at the early stop (patience used up) must not train on when resumed.
    rng = np.random.default_rng(0)
    times, currents = np.arange(3, dtype=np.float32), rng.normal(size=(6, 3, 4)).astype(np.float32)
    labels = np.array([0, 1] * 3)
    config = TrainConfig(epochs=5, batch_size=3, patience=2)
    params = network.init(jax.random.PRNGKey(0), (4, 2))
    optimizer = make_optimizer(config, steps_per_epoch(6, 3))
    stopped = TrainingState(params=params, opt_state=optimizer.init(params), epoch=3, best_params=params,
                            epochs_since_best=2)
    state = train(params, times, currents, labels, "qif", 3.0, config, validation=(currents, labels),
                  state=stopped, progress=False)
    assert state.epoch == 3 and state.history == []
    going = TrainingState(params=params, opt_state=optimizer.init(params), epoch=3, best_params=params,
                          epochs_since_best=1)
    state = train(params, times, currents, labels, "qif", 3.0, config, validation=(currents, labels),
                  state=going, progress=False)
    assert state.epoch > 3 and [row["epoch"] for row in state.history][0] == 4


@pytest.mark.parametrize("field, value", [("epochs", 0), ("batch_size", 0), ("epochs", 2.5), ("epochs", True),
                                          ("learning_rate", 0.0),
                                          ("grad_clip", -1.0), ("patience", 0),
                                          ("input_noise", -0.1), ("input_noise", math.nan),
                                          ("late_penalty", -1.0), ("optimizer", "rmsprop")])
def test_train_config_rejects_bad_values(field, value):
    with pytest.raises(ValueError, match=field):
        TrainConfig(**{field: value})


def test_sgd_steps_follow_the_gradient_and_adam_steps_its_sign():
    # The first update of each, from a known gradient (below the clipping norm): SGD moves by
    # -lr * g (plus lr * decay * w), Adam by about -lr * sign(g) whatever the gradient's size.
    params = [{"w": np.array([[1.0, -2.0]], np.float32), "b": np.array([0.5], np.float32)}]
    grads = [{"w": np.array([[0.01, -0.2]], np.float32), "b": np.array([0.3], np.float32)}]
    sgd = make_optimizer(TrainConfig(learning_rate=0.5, optimizer="sgd", weight_decay=0.1), steps_per_epoch=4)
    update, state = sgd.update(grads, sgd.init(params), params)
    np.testing.assert_allclose(update[0]["w"], -0.5 * (grads[0]["w"] + 0.1 * params[0]["w"]), rtol=1e-6)
    # Momentum: the second step adds 0.9 of the first (the schedule has barely moved).
    second, _ = sgd.update(grads, state, params)
    np.testing.assert_allclose(second[0]["b"], 1.9 * update[0]["b"], rtol=1e-3)
    adam = make_optimizer(TrainConfig(learning_rate=0.5), steps_per_epoch=4)
    update, _ = adam.update(grads, adam.init(params), params)
    np.testing.assert_allclose(update[0]["w"], -0.5 * np.sign(grads[0]["w"]), rtol=1e-3)
    assert QIFClassifier(optimizer="sgd")._train_config().optimizer == "sgd"


def test_sgd_trains_a_network():
    # Two classes told apart by the sign of their currents: SGD lowers the loss as Adam does.
    rng = np.random.default_rng(2)
    labels = np.array([0, 1] * 8)
    currents = (rng.normal(size=(16, 3, 4)) + np.where(labels == 0, 1.0, -1.0)[:, None, None]).astype(np.float32)
    times, params = np.arange(3, dtype=np.float32), network.init(jax.random.PRNGKey(0), (4, 6, 2))
    config = TrainConfig(epochs=20, batch_size=8, learning_rate=1.0, optimizer="sgd")
    history = train(params, times, currents, labels, "qif", 3.0, config, progress=False).history
    assert history[-1]["loss"] < 0.8 * history[0]["loss"]


def test_late_penalty_acts_only_on_trials_whose_outputs_fire_late():
    T = 6.0
    early, late = np.array([2.0, 7.5]), np.array([6.6, 8.1])  # soft minimum 4.4 (0.73 T) or 7.3 (1.22 T)
    for t in (early, late):
        soft_earliest = -T * np.log(np.mean(np.exp(-t / T)))
        extra = 2.0 * max(0.0, soft_earliest / T - network.LATE_DEADLINE)
        assert (extra > 0) == (t is late)
        value = float(network.trial_loss(jnp.asarray(t), 1, T, late_penalty=2.0))
        assert value == pytest.approx(float(network.trial_loss(jnp.asarray(t), 1, T)) + extra, rel=1e-6)
    # Its gradient pulls both outputs, in proportion to softmax(-t / T): nearly alike, neither class's
    # output singled out.
    grad = lambda t, penalty: np.asarray(jax.grad(lambda x: network.trial_loss(x, 1, T, late_penalty=penalty))(
        jnp.asarray(t)))
    weights = np.exp(-late / T) / np.exp(-late / T).sum()
    np.testing.assert_allclose(grad(late, 2.0) - grad(late, 0.0), 2.0 / T * weights, rtol=1e-5)
    assert 0.5 < weights[0] < 0.6
    np.testing.assert_allclose(grad(early, 2.0), grad(early, 0.0))


def test_late_penalty_pulls_silent_outputs_into_the_trial():
    # Labels the inputs cannot predict, weak inputs and negative biases: the output neurons fire
    # after the trial, and the cross-entropy (gamma 0) has no reason to move them; the late
    # penalty pulls them (all alike) inside the trial.
    rng = np.random.default_rng(3)
    labels = rng.permutation(np.array([0, 1] * 16))
    currents = (0.3 * rng.normal(size=(32, 6, 4))).astype(np.float32)
    times = np.arange(6, dtype=np.float32)
    params = network.init(jax.random.PRNGKey(1), (4, 2), weight_scale=1.0, bias=-0.3)

    def fired_in_trial(trained):
        result, _ = network.simulate(trained, times, currents, "qif", T=6.0)
        return float(np.mean(np.asarray(result.ordinary).any(axis=1)))

    fired = {penalty: fired_in_trial(train(params, times, currents, labels, "qif", 6.0,
                                           TrainConfig(epochs=10, batch_size=16, learning_rate=0.1, gamma=0.0,
                                                       late_penalty=penalty), progress=False).params)
             for penalty in (0.0, 5.0)}
    assert fired_in_trial(params) == 0.0 and fired[0.0] < 0.2
    assert fired[5.0] > 0.8
    assert QIFClassifier(late_penalty=5.0)._train_config().late_penalty == 5.0


def test_input_noise_is_one_draw_per_trial_and_input_held_over_the_events():
    currents = np.arange(4 * 6 * 3, dtype=np.float32).reshape(4, 6, 3)
    assert _noisy(currents, 0.0, (0, 0, 0)) is currents
    noisy = _noisy(currents, 0.5, (0, 1, 2))
    noise = noisy - currents
    assert noisy.dtype == np.float32 and noisy.shape == currents.shape
    np.testing.assert_allclose(noise, np.broadcast_to(noise[:, :1], noise.shape), atol=1e-5)
    assert np.all(noise[:, 0] != 0) and np.unique(noise[:, 0]).size == 4 * 3
    np.testing.assert_array_equal(noisy, _noisy(currents, 0.5, (0, 1, 2)))  # reproducible
    assert not np.array_equal(noisy, _noisy(currents, 0.5, (0, 1, 3)))  # fresh at every step
    big = _noisy(np.zeros((2000, 1, 5), np.float32), 0.5, (1,))
    assert abs(float(big.std()) - 0.5) < 0.02
    assert QIFClassifier(input_noise=0.3)._train_config().input_noise == 0.3


def test_frozen_layers_stay_exactly_as_they_were():
    rng = np.random.default_rng(1)
    times, currents = np.arange(3, dtype=np.float32), rng.normal(size=(8, 3, 4)).astype(np.float32)
    labels = np.array([0, 1] * 4)
    params = network.init(jax.random.PRNGKey(0), (4, 6, 2))
    config = TrainConfig(epochs=3, batch_size=4, learning_rate=0.05, weight_decay=0.1, trainable_layers=(-1,))
    trained = train(params, times, currents, labels, "qif", 3.0, config, progress=False).params
    for key in ("w", "b"):
        np.testing.assert_array_equal(np.asarray(trained[0][key]), np.asarray(params[0][key]))  # frozen, no decay
        assert not np.allclose(np.asarray(trained[1][key]), np.asarray(params[1][key]))  # the output layer learns


def test_training_state_round_trips_through_plain_arrays():
    config = TrainConfig(epochs=3, batch_size=4)
    params = network.init(jax.random.PRNGKey(0), (5, 4, 2))
    optimizer = make_optimizer(config, steps_per_epoch=2)
    opt_state = optimizer.init(params)
    # One real update so the Adam moments and step count are not all zero.
    grads = jax.tree_util.tree_map(lambda x: x * 0.5 + 0.1, params)
    _, opt_state = optimizer.update(grads, opt_state, params)
    state = TrainingState(params=params, opt_state=opt_state, epoch=2, best_params=params, best_score=-0.5,
                          epochs_since_best=1, history=[{"epoch": 1, "loss": 0.7}, {"epoch": 2, "loss": 0.6}],
                          budget=network.Budget(2, (32, 16), 5))
    arrays, meta = state.to_arrays()
    assert all(np.asarray(a).dtype != object for a in arrays.values())
    meta = json.loads(json.dumps(meta))
    restored = TrainingState.from_arrays(arrays, meta, params, optimizer)
    assert (restored.epoch, restored.best_score, restored.epochs_since_best) == (2, -0.5, 1)
    assert restored.history == state.history and restored.budget == state.budget
    for a, b in zip(jax.tree_util.tree_leaves((state.params, state.opt_state)),
                    jax.tree_util.tree_leaves((restored.params, restored.opt_state))):
        assert np.asarray(a).dtype == np.asarray(b).dtype
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))


def test_epoch_batches_are_full_and_cover_every_trial():
    # 5 trials, batches of 8: one batch that wraps around; 20 trials: 3 batches, every trial at least once.
    small = _epoch_batches(np.random.default_rng(0).permutation(5), 8)
    assert small.shape == (1, 8) and set(small.ravel()) == set(range(5))
    large = _epoch_batches(np.random.default_rng(0).permutation(20), 8)
    assert large.shape == (3, 8) and set(large.ravel()) == set(range(20))
    assert steps_per_epoch(20, 8) == 3 and steps_per_epoch(5, 8) == 1


def test_per_trial_event_times_stay_with_their_trials():
    # The class is carried only by *when* the single input event comes (currents are
    # identical): the network can learn it only if train() pairs each trial's times
    # with that trial through the shuffled minibatches.
    rng = np.random.default_rng(0)
    labels = rng.integers(0, 2, 48)
    onset = np.where(labels == 0, 0.2, 2.0) + rng.uniform(0, 0.1, 48)
    times = np.stack([onset, onset + 0.05], axis=1).astype(np.float32)
    currents = np.ones((48, 2, 1), np.float32)
    params = network.init(jax.random.PRNGKey(1), (1, 8, 2), weight_scale=2.0, bias=0.5)
    config = TrainConfig(epochs=25, batch_size=16, learning_rate=3e-2, readout_tau=1.0)
    state = train(params, times, currents, labels, "qif", 4.0, config, progress=False,
                  validation=(times[:16], currents[:16], labels[:16]))
    assert state.history[-1]["acc"] > 0.9
    assert state.history[-1]["val_acc"] > 0.9


def test_an_update_that_overflows_the_event_budget_is_undone(monkeypatch):
    # The 3rd simulation raises EventBudgetError (as a runaway update would): training
    # counts it, goes back to the parameters of the last good simulation and goes on.
    rng = np.random.default_rng(0)
    labels = rng.integers(0, 2, 16)
    times = np.linspace(0, 4, 20, endpoint=False).astype(np.float32)
    currents = (rng.normal(size=(16, 20, 3)) + labels[:, None, None]).astype(np.float32)
    params = network.init(jax.random.PRNGKey(0), (3, 4, 2), weight_scale=2.0, bias=0.5)
    real, seen = network.batch_loss, []

    def flaky(params, *args, **kwargs):
        seen.append(params)
        if len(seen) == 3:
            raise network.EventBudgetError("a neuron fires more than 16 spikes between two input events")
        return real(params, *args, **kwargs)

    monkeypatch.setattr(network, "batch_loss", flaky)
    state = train(params, times, currents, labels, "qif", 4.0, TrainConfig(epochs=2, batch_size=4), progress=False)
    assert [row["n_overflow"] for row in state.history] == [1, 0]
    # 2 epochs x 4 minibatches, then the final parameters are checked on all 16 trials (4 batches).
    assert len(seen) == 8 + 4
    for a, b in zip(jax.tree_util.tree_leaves(seen[3]), jax.tree_util.tree_leaves(seen[1])):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
    assert all(np.isfinite(row["loss"]) for row in state.history)


def test_soft_targets_are_the_expectation_of_the_class_losses():
    # trial_loss is linear in the target distribution: a one-hot distribution is exactly the class
    # index, a mixture the same mixture of the two class losses (late penalty included: it ignores
    # the target), and so are their exact gradients. (The next test runs soft targets through training.)
    T = 6.0
    t = jnp.asarray([4.2, 6.9])
    for label in (0, 1):
        np.testing.assert_allclose(network.trial_loss(t, jnp.eye(2)[label], T, late_penalty=2.0),
                                   network.trial_loss(t, label, T, late_penalty=2.0), rtol=1e-6)
    q = jnp.asarray([0.3, 0.7])
    loss = lambda times, target: network.trial_loss(times, target, T, gamma=0.5, late_penalty=2.0)
    np.testing.assert_allclose(loss(t, q), 0.3 * loss(t, 0) + 0.7 * loss(t, 1), rtol=1e-6)
    grad = jax.grad(loss)
    np.testing.assert_allclose(grad(t, q), 0.3 * grad(t, 0) + 0.7 * grad(t, 1), rtol=1e-5)


def test_one_hot_soft_targets_train_exactly_as_the_labels():
    rng = np.random.default_rng(5)
    labels = np.array([0, 1] * 8)
    currents = (rng.normal(size=(16, 3, 4)) + np.where(labels == 0, 1.0, -1.0)[:, None, None]).astype(np.float32)
    times, params = np.arange(3, dtype=np.float32), network.init(jax.random.PRNGKey(0), (4, 6, 2))
    config = TrainConfig(epochs=3, batch_size=8, learning_rate=1e-2)
    by_labels = train(params, times, currents, labels, "qif", 3.0, config, progress=False)
    by_targets = train(params, times, currents, labels, "qif", 3.0, config, progress=False,
                       targets=np.eye(2)[labels])
    for a, b in zip(jax.tree_util.tree_leaves(by_labels.params), jax.tree_util.tree_leaves(by_targets.params)):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-7)
    assert [row["acc"] for row in by_labels.history] == [row["acc"] for row in by_targets.history]
    # Targets that soften every label toward the other class train toward smaller margins.
    softened = train(params, times, currents, labels, "qif", 3.0, config, progress=False,
                     targets=0.6 * np.eye(2)[labels] + 0.2)
    assert softened.history[-1]["loss"] != by_labels.history[-1]["loss"]


@pytest.mark.parametrize("targets, match", [
    (np.full((16, 3), 1 / 3), "shape"),
    (np.full((15, 2), 0.5), "shape"),
    (np.tile([1.2, -0.2], (16, 1)), "non-negative"),
    (np.tile([np.nan, 1.0], (16, 1)), "finite"),
    (np.tile([0.5, 0.6], (16, 1)), "sum to 1"),
])
def test_bad_soft_targets_are_named(targets, match):
    times, params = np.arange(3, dtype=np.float32), network.init(jax.random.PRNGKey(0), (4, 6, 2))
    currents, labels = np.zeros((16, 3, 4), np.float32), np.array([0, 1] * 8)
    with pytest.raises(ValueError, match=match):
        train(params, times, currents, labels, "qif", 3.0, TrainConfig(epochs=1), progress=False, targets=targets)
