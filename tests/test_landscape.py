"""The study's metrics on constructed cases with known answers."""

from __future__ import annotations

import math

import numpy as np
import pytest

from bci_qif import landscape

JUMPS = {-0.61: 0.8, 0.13: -0.5, 0.57: 0.3}  # position -> height, never on a grid point


def stepped(x):
    """sin(3x) plus three steps of known position and height."""
    x = np.asarray(x, dtype=float)
    return np.sin(3 * x) + sum(h * (x > p) for p, h in JUMPS.items())


def test_known_jumps_are_found_with_their_height_and_position():
    x = np.linspace(-1, 1, 81)  # smooth steps <= 0.075, well below the smallest jump
    out = landscape.slice_fragmentation(x, stepped(x), refine=lambda a: float(stepped(a)))
    assert out["n_jumps"] == 3
    assert np.allclose(sorted(out["jump_positions"]), sorted(JUMPS), atol=(x[1] - x[0]) / 8)
    assert out["tv_jump"] == pytest.approx(sum(abs(h) for h in JUMPS.values()), abs=0.05)
    # the smooth part is the total variation of sin(3x) on [-1, 1], computed finely
    smooth_tv = np.sum(np.abs(np.diff(np.sin(3 * np.linspace(-1, 1, 4001)))))
    assert out["tv_smooth"] == pytest.approx(smooth_tv, rel=0.05)
    assert 0 < out["jump_share"] < 1


def test_refinement_rejects_steep_but_smooth_steps():
    # A steep ramp: steps 20x above the local median, but it halves when refined.
    f = lambda x: np.tanh(np.asarray(x, float) / 0.05)  # noqa: E731
    x = np.linspace(-1, 1, 41)
    unrefined = landscape.detect_jumps(x, f(x))
    assert len(unrefined.candidates) >= 1  # the threshold alone would call it a jump
    refined = landscape.detect_jumps(x, f(x), refine=lambda a: float(f(a)))
    assert refined.count == 0
    assert refined.n_evaluations >= len(unrefined.candidates)


def test_constant_and_linear_functions_have_no_jumps():
    x = np.linspace(0, 1, 30)
    for values in (np.full(30, 2.5), 3 * x - 1, np.full(30, 2.5) + 1e-7 * np.random.default_rng(0).normal(size=30)):
        out = landscape.slice_fragmentation(x, values, refine=lambda a: 0.0)
        assert out["n_jumps"] == 0 and out["n_candidates"] == 0
        assert out["tv_jump"] == 0.0


def test_piecewise_constant_function_counts_every_step():
    # LIF-like: flat plateaus, every change is a jump (local median is 0).
    x = np.linspace(0, 1, 50)
    f = lambda a: np.floor(np.asarray(a, float) * 4.3) * 0.1  # noqa: E731
    out = landscape.slice_fragmentation(x, f(x), refine=lambda a: float(f(a)))
    assert out["n_jumps"] == 4
    assert out["tv_smooth"] == pytest.approx(0.0, abs=1e-12)
    assert out["jump_share"] == pytest.approx(1.0)


def test_nonfinite_values_are_ignored_not_counted():
    x = np.linspace(0, 1, 20)
    values = 2 * x
    values[7] = np.nan
    out = landscape.slice_fragmentation(x, values)
    assert out["n_jumps"] == 0 and out["n_nonfinite"] == 1


def test_grid_fragmentation_finds_a_step_edge():
    a = np.linspace(-1, 1, 11)
    X, Y = np.meshgrid(a, a)
    smooth = landscape.grid_fragmentation(X**2 + Y**2)
    assert smooth["n_jump_edges"] == 0
    stepped_grid = landscape.grid_fragmentation(X**2 + Y**2 + 2.0 * (X > 0.05))
    assert stepped_grid["n_jump_edges"] == 11  # the step crosses every row once
    assert stepped_grid["tv_jump"] == pytest.approx(11 * (2.0 + 0.2**2 - 0.0**2), rel=0.05)


def test_cosine_similarity_on_known_vectors_and_pytrees():
    g = [{"w": np.array([[1.0, 2.0], [3.0, 4.0]]), "b": np.array([0.5, -1.0])}]
    assert landscape.cosine_similarity(g, g) == pytest.approx(1.0)
    minus = [{k: -v for k, v in g[0].items()}]
    assert landscape.cosine_similarity(g, minus) == pytest.approx(-1.0)
    assert landscape.cosine_similarity(np.array([1.0, 0.0]), np.array([0.0, 3.0])) == pytest.approx(0.0)
    assert math.isnan(landscape.cosine_similarity(np.zeros(2), np.ones(2)))
    cos = landscape.neighbour_cosines([g, g, minus])
    assert np.allclose(cos, [1.0, -1.0])


def test_minibatch_gradient_stats():
    same = [np.array([1.0, 2.0, 3.0])] * 4
    out = landscape.minibatch_gradient_stats(same)
    assert out["relative_variance"] == pytest.approx(0.0)
    assert out["mean_pairwise_cosine"] == pytest.approx(1.0)
    # two opposite pairs around a mean (1, 0): deviations of norm 1 -> relative variance 1
    spread = [np.array([1.0, 1.0]), np.array([1.0, -1.0])]
    out = landscape.minibatch_gradient_stats(spread + [np.array([np.nan, 0.0])])
    assert out["relative_variance"] == pytest.approx(1.0)
    assert out["mean_pairwise_cosine"] == pytest.approx(0.0, abs=1e-12)
    assert out["n_nonfinite"] == 1 and out["zero_share"] == 0.0
    dead = landscape.minibatch_gradient_stats([np.zeros(3)] * 3)
    assert dead["zero_share"] == 1.0 and math.isnan(dead["relative_variance"])


def test_permanent_silence():
    # evaluations x neurons: 0 always fires, 1 silent from eval 2 on, 2 silent then
    # revives, 3 silent only at the very end, 4 silent throughout
    silent = np.array([
        [0, 0, 1, 0, 1],
        [0, 0, 1, 0, 1],
        [0, 1, 0, 0, 1],
        [0, 1, 0, 0, 1],
        [0, 1, 0, 1, 1],
    ], dtype=bool)
    assert landscape.silent_onsets(silent).tolist() == [-1, 2, -1, 4, 0]
    assert landscape.permanently_silent(silent, min_epochs=1).tolist() == [False, True, False, True, True]
    assert landscape.permanently_silent(silent, min_epochs=2).tolist() == [False, True, False, False, True]


def test_epochs_to_fraction():
    curve = [0.40, 0.55, 0.70, 0.81, 0.85, 0.90]
    assert landscape.epochs_to_fraction(curve, 0.9) == 4  # 0.9 * 0.90 = 0.81
    assert landscape.epochs_to_fraction(curve, 0.9, baseline=1 / 3) == 5  # 1/3 + 0.9 * (0.9 - 1/3) = 0.843
    assert math.isnan(landscape.epochs_to_fraction([0.5, 0.5], 0.9, baseline=0.5))  # no gain
    assert math.isnan(landscape.epochs_to_fraction([0.22, 0.31, 0.31], 0.9, baseline=1 / 3))  # below chance
    assert math.isnan(landscape.epochs_to_fraction([], 0.9))


def test_count_changes():
    a = np.array([[2, 0, 1], [0, 0, 3]])
    b = np.array([[2, 1, 0], [0, 0, 5]])
    out = landscape.count_changes(a, b)
    assert (out["appeared"], out["disappeared"], out["n_before"]) == (3, 1, 6)
    assert out["share"] == pytest.approx(4 / 6)
    assert out["changed_pairs"] == pytest.approx(3 / 6)
    assert out["changed_sets"] == pytest.approx(2 / 6)
    assert landscape.count_changes(a, a)["share"] == 0.0


def test_spike_changes_separate_inside_from_trial_end():
    T = 10.0
    times_a = np.array([1.0, 2.0, 5.0, 9.995, np.inf])
    sources_a = np.array([0, 1, 0, 2, 0])
    # neuron 0's spike at 5.0 vanished (inside), neuron 1 moved slightly (same spike),
    # neuron 2's spike crossed T (at the end), neuron 3 gained one at 4.0 (inside)
    times_b = np.array([1.0, 2.0004, 4.0, np.inf])
    sources_b = np.array([0, 1, 3, 0])
    out = landscape.spike_changes(times_a, sources_a, times_b, sources_b, T, tol=0.01)
    assert out == {"n_before": 4, "appeared_inside": 1, "disappeared_inside": 1,
                   "appeared_end": 0, "disappeared_end": 1}


def test_norm_scaled_direction_matches_row_norms():
    rng = np.random.default_rng(1)
    params = [{"w": rng.normal(size=(4, 3)), "b": rng.normal(size=4)},
              {"w": rng.normal(size=(2, 4)) * 5, "b": rng.normal(size=2)}]
    d = landscape.norm_scaled_direction(params, seed=3)
    for layer, dl in zip(params, d):
        assert np.allclose(np.linalg.norm(dl["w"], axis=1), np.linalg.norm(layer["w"], axis=1))
        assert np.linalg.norm(dl["b"]) == pytest.approx(np.linalg.norm(layer["b"]))
    again = landscape.norm_scaled_direction(params, seed=3)
    assert np.array_equal(landscape.flatten(d), landscape.flatten(again))
    moved = landscape.along(params, [d], [0.5])
    assert np.allclose(landscape.flatten(moved), landscape.flatten(params) + 0.5 * landscape.flatten(d))
