"""The Yin-Yang dataset: geometry, balance, determinism, event encoding, and a short training run."""

import jax
import numpy as np
import optax
import pytest

from bci_qif import network, yinyang
from bci_qif.training import TrainConfig, make_optimizer
from bci_qif.yinyang import DEFAULT_T, classify, make_yinyang, to_events

YIN, YANG, DOT = 0, 1, 2


def test_classes_are_balanced():
    _, labels = make_yinyang(300)
    assert np.bincount(labels).tolist() == [100, 100, 100]
    _, labels = make_yinyang(301, seed=3)
    assert np.bincount(labels).tolist() == [101, 100, 100]
    # Shuffled, so that a minibatch taken in order is not one class.
    assert len(np.unique(labels[:30])) == 3


@pytest.mark.parametrize("r_small, r_big", [(0.1, 0.5), (0.3, 2.0)])
def test_points_lie_inside_the_big_circle(r_small, r_big):
    points, labels = make_yinyang(600, r_small=r_small, r_big=r_big, seed=1)
    assert points.shape == (600, 2) and points.dtype == np.float64
    assert labels.dtype.kind == "i" and set(np.unique(labels)) == {YIN, YANG, DOT}
    assert np.all(np.hypot(points[:, 0] - r_big, points[:, 1] - r_big) <= r_big)
    assert points.min() >= 0 and points.max() <= 2 * r_big
    # The labels are the geometry's, not assigned independently of the points.
    np.testing.assert_array_equal(labels, classify(points, r_small=r_small, r_big=r_big))


@pytest.mark.parametrize("point, label", [
    ((0.25, 0.5), DOT),    # centre of the left dot
    ((0.75, 0.5), DOT),    # centre of the right dot
    ((0.32, 0.5), DOT),    # inside the left dot, 0.07 from its centre
    ((0.5, 0.9), YIN),     # upper half, far from the right medium circle
    ((0.25, 0.3), YIN),    # the yin's bulge into the lower half (left medium circle)
    ((0.1, 0.5), YIN),     # left medium circle, outside its dot
    ((0.5, 0.1), YANG),    # lower half
    ((0.75, 0.7), YANG),   # the yang's bulge into the upper half (right medium circle)
    ((0.9, 0.5), YANG),    # right medium circle, outside its dot
])
def test_hand_picked_points_have_their_known_class(point, label):
    assert classify([point])[0] == label
    # Scaled with the symbol, a point keeps its class.
    assert classify([[4 * point[0], 4 * point[1]]], r_small=0.4, r_big=2.0)[0] == label


def test_geometry_is_point_symmetric_and_has_the_expected_areas():
    rng = np.random.default_rng(0)
    square = rng.uniform(0, 1, size=(200_000, 2))
    disc = square[np.hypot(square[:, 0] - 0.5, square[:, 1] - 0.5) <= 0.5]
    labels = classify(disc)
    # Turning the symbol by 180 degrees swaps yin and yang and keeps the dots.
    np.testing.assert_array_equal(classify(1.0 - disc), np.array([YANG, YIN, DOT])[labels])
    # Areas: each dot is pi r^2, so dots cover 2 r^2 / R^2 = 8 % of the disc; yin and yang halve the rest.
    fractions = np.bincount(labels, minlength=3) / len(labels)
    np.testing.assert_allclose(fractions, [0.46, 0.46, 0.08], atol=0.005)


def test_dot_samples_fill_both_dots():
    points, labels = make_yinyang(600, seed=2)
    dots = points[labels == DOT]
    left = dots[:, 0] < 0.5
    assert 0.35 < left.mean() < 0.65
    assert np.all(np.hypot(dots[:, 0] - np.where(left, 0.25, 0.75), dots[:, 1] - 0.5) <= 0.1)


def test_same_seed_same_data_other_seed_other_data():
    a_points, a_labels = make_yinyang(90, seed=7)
    b_points, b_labels = make_yinyang(90, seed=7)
    np.testing.assert_array_equal(a_points, b_points)
    np.testing.assert_array_equal(a_labels, b_labels)
    c_points, _ = make_yinyang(90, seed=8)
    assert not np.allclose(a_points, c_points)


def test_zero_samples_is_an_empty_dataset():
    points, labels = make_yinyang(0)
    assert points.shape == (0, 2) and labels.shape == (0,)


# ---------------------------------------------------------------------------------
# Event encoding
# ---------------------------------------------------------------------------------
def _channel_times(times, currents):
    """Per sample, the time of each channel's spike (undoes the sort)."""
    return np.einsum("nk,nkc->nc", times, currents)


def test_events_have_the_engine_layout():
    points, _ = make_yinyang(60, seed=4)
    times, currents = to_events(points)
    assert times.shape == (60, 5) and times.dtype == np.float32
    assert currents.shape == (60, 5, 5) and currents.dtype == np.float32
    assert np.all(np.diff(times, axis=1) >= 0)
    # Every event is one-hot and every channel fires exactly once per sample.
    np.testing.assert_array_equal(currents.sum(axis=2), 1.0)
    np.testing.assert_array_equal(currents.sum(axis=1), 1.0)
    assert times.min() >= 0.15 and times.max() <= 2.0 < DEFAULT_T


def test_event_times_encode_the_coordinates_linearly():
    points, _ = make_yinyang(60, seed=5)
    times, currents = to_events(points, t_early=0.1, t_late=1.1, bias_time=0.5, time_scale=2.0)
    x, y = points[:, 0], points[:, 1]
    expected = 2.0 * np.stack([0.1 + x, 1.1 - x, 0.1 + y, 1.1 - y, np.full_like(x, 0.5)], axis=1)
    np.testing.assert_allclose(_channel_times(times, currents), expected, rtol=1e-6)


def test_hand_encoded_corner_point():
    # (x, y) = (0, 1): x and 1-y fire first at t_early, the bias at 0.9, then 1-x and y at t_late;
    # ties keep the channel order (x, 1-x, y, 1-y, bias).
    times, currents = to_events(np.array([[0.0, 1.0]]))
    np.testing.assert_allclose(times[0], [0.15, 0.15, 0.9, 2.0, 2.0], rtol=1e-6)
    assert np.argmax(currents[0], axis=1).tolist() == [0, 3, 4, 1, 2]
    assert yinyang.CHANNEL_NAMES == ("x", "1-x", "y", "1-y", "bias")


def test_extent_rescales_points_of_a_bigger_symbol():
    points, _ = make_yinyang(30, r_small=0.2, r_big=1.0, seed=6)
    big = to_events(points, extent=2.0)
    unit = to_events(points / 2.0)
    np.testing.assert_allclose(big[0], unit[0], rtol=1e-6)
    np.testing.assert_array_equal(big[1], unit[1])


# ---------------------------------------------------------------------------------
# Errors
# ---------------------------------------------------------------------------------
@pytest.mark.parametrize("kwargs, match", [
    (dict(n_samples=-1), "n_samples"),
    (dict(n_samples=2.5), "n_samples"),
    (dict(n_samples=True), "n_samples"),
    (dict(n_samples=10, r_small=0.0), "r_small"),
    (dict(n_samples=10, r_big=-1.0), "r_big"),
    (dict(n_samples=10, r_small=0.25), "r_small must be smaller"),
    (dict(n_samples=10, r_big=float("nan")), "r_big"),
    (dict(n_samples=10, seed="a"), "seed"),
])
def test_make_yinyang_rejects_bad_arguments(kwargs, match):
    with pytest.raises(ValueError, match=match):
        make_yinyang(**kwargs)


@pytest.mark.parametrize("points, kwargs, match", [
    (np.zeros((3, 3)), {}, "shape"),
    (np.zeros(4), {}, "shape"),
    (np.array([[0.5, np.nan]]), {}, "NaN"),
    (np.array([[0.5, 1.5]]), {}, r"\[0, extent\]"),
    (np.array([[-0.1, 0.5]]), {}, r"\[0, extent\]"),
    (np.array([["a", "b"]]), {}, "numeric"),
    (np.zeros((1, 2)), dict(t_early=2.0, t_late=1.0), "t_early must be smaller"),
    (np.zeros((1, 2)), dict(t_early=-0.1), "t_early"),
    (np.zeros((1, 2)), dict(bias_time=float("inf")), "bias_time"),
    (np.zeros((1, 2)), dict(time_scale=0), "time_scale"),
    (np.zeros((1, 2)), dict(extent="1"), "extent"),
])
def test_to_events_rejects_bad_arguments(points, kwargs, match):
    with pytest.raises(ValueError, match=match):
        to_events(points, **kwargs)


# ---------------------------------------------------------------------------------
# Training
# ---------------------------------------------------------------------------------
def test_qif_network_learns_yinyang_above_chance():
    # Per-trial event times go through network.batch_loss (training.train takes shared times only).
    # With these settings seeds 0-11 reach 0.6-0.8 training accuracy after 6 epochs; chance is 1/3.
    n, batch, epochs = 300, 30, 6
    points, labels = make_yinyang(n, seed=0)
    times, currents = to_events(points)
    params = network.init(jax.random.PRNGKey(0), (5, 30, 3))
    config = TrainConfig(epochs=epochs, batch_size=batch, learning_rate=3e-2)
    optimizer = make_optimizer(config, n // batch)
    opt_state, budget = optimizer.init(params), None

    def step(params, idx, budget):
        return network.batch_loss(params, times[idx], currents[idx], labels[idx], "qif", T=DEFAULT_T,
                                  readout_tau=config.readout_tau, gamma=config.gamma, budget=budget, grad=True)

    @jax.jit  # one small compile instead of an eager optax update per step
    def apply(params, opt_state, grads):
        updates, opt_state = optimizer.update(grads, opt_state, params)
        return optax.apply_updates(params, updates), opt_state

    epoch_losses = []
    for epoch in range(epochs):
        order = np.random.default_rng(epoch).permutation(n)
        losses = []
        for idx in order.reshape(-1, batch):
            ((loss, _), grads), budget = step(params, idx, budget)
            assert np.isfinite(float(loss))
            params, opt_state = apply(params, opt_state, grads)
            losses.append(float(loss))
        epoch_losses.append(np.mean(losses))

    # Accuracy of the final parameters, with the same compiled function (same batch shape).
    correct = 0
    for idx in np.arange(n).reshape(-1, batch):
        ((_, result), _), budget = step(params, idx, budget)
        correct += int(np.sum(network.predict(result)[0] == labels[idx]))
    assert epoch_losses[-1] < epoch_losses[0]
    assert correct / n > 0.45
