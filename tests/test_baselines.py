"""Baseline decoders and the per-subject re-centring transformer."""

import numpy as np
import pytest
import sklearn
from sklearn.base import clone
from sklearn.exceptions import NotFittedError
from sklearn.linear_model import LogisticRegression

from bci_qif.baselines import BASELINES, SubjectRecentering, TrialPart, _covariances, consumes_groups, make_baseline


def _riemann_mean(covs):
    from pyriemann.geometry.mean import mean_riemann

    return mean_riemann(covs, tol=1e-12, maxiter=200)


def _random_spd(rng, n_matrices, n_channels):
    A = rng.standard_normal((n_matrices, n_channels, 3 * n_channels))
    return A @ np.swapaxes(A, 1, 2) / (3 * n_channels) + 0.1 * np.eye(n_channels)


def _imagery_like_trials(rng, n_trials, n_channels=8, n_times=200, gains=None):
    """Two classes that differ in the power of two sources (as in motor imagery).

    Class 0 has a strong source 0, class 1 a strong source 1; a fixed mixing spreads
    the sources over the channels, and ``gains`` scales each channel (e.g. a subject's
    electrode impedances).
    """
    y = np.arange(n_trials) % 2
    mixing = np.eye(n_channels) + 0.3 * np.random.default_rng(7).standard_normal(
        (n_channels, n_channels)
    )
    sources = rng.standard_normal((n_trials, n_channels, n_times))
    sources[y == 0, 0] *= 2.5
    sources[y == 1, 1] *= 2.5
    X = mixing @ sources
    if gains is not None:
        X = gains[:, None] * X
    return X, y


def test_registry_names():
    assert set(BASELINES) == {"csp_lda", "ts_lr", "mdm", "ts_lr_recentered", "ts_lr_halves_recentered"}


def test_make_baseline_rejects_unknown_names_and_bad_sfreq():
    with pytest.raises(ValueError, match="name='eegnet'.*csp_lda"):
        make_baseline("eegnet")
    for sfreq in (0, -160.0, float("nan")):
        with pytest.raises(ValueError, match="sfreq"):
            make_baseline("ts_lr", sfreq=sfreq)


@pytest.mark.parametrize("name", sorted(BASELINES))
def test_baselines_are_fresh_clonable_and_learn(name):
    first, second = make_baseline(name, sfreq=160.0), make_baseline(name)
    assert first is not second
    clone(first)  # hyper-parameters stored unchanged, as sklearn requires
    rng = np.random.default_rng(0)
    X, y = _imagery_like_trials(rng, 80)
    X_test, y_test = _imagery_like_trials(rng, 40)
    with sklearn.config_context(enable_metadata_routing=True):
        model = first.fit(X[:80], y)
        accuracy = np.mean(model.predict(X_test) == y_test)
        proba = model.predict_proba(X_test)
    assert accuracy > 0.85
    assert proba.shape == (40, 2)
    np.testing.assert_allclose(proba.sum(axis=1), 1.0)


def test_only_the_recentered_baselines_ask_for_subject_ids():
    for name in BASELINES:
        wants = name.endswith("_recentered")
        for method in ("fit", "predict", "predict_proba"):
            assert consumes_groups(make_baseline(name), method) is wants
    assert consumes_groups(object()) is False
    assert consumes_groups(LogisticRegression()) is False
    # asking must not switch routing on for the caller
    assert sklearn.get_config()["enable_metadata_routing"] is False


@pytest.mark.parametrize("use_fit_transform", [True, False])
def test_recentering_makes_each_subject_mean_the_identity(use_fit_transform):
    rng = np.random.default_rng(1)
    n_channels = 6
    covs, groups = [], []
    for subject in ("a", "b", "c"):
        # a subject-specific congruence: its mean is far from the identity
        offset = rng.standard_normal((n_channels, n_channels)) + 2 * np.eye(n_channels)
        covs.append(offset @ _random_spd(rng, 12, n_channels) @ offset.T)
        groups += [subject] * 12
    covs, groups = np.concatenate(covs), np.asarray(groups)
    for subject in ("a", "b"):
        assert not np.allclose(_riemann_mean(covs[groups == subject]), np.eye(n_channels),
                               atol=0.1)

    recenter = SubjectRecentering()
    if use_fit_transform:
        out = recenter.fit_transform(covs, groups=groups)
    else:
        out = recenter.fit(covs, groups=groups).transform(covs, groups=groups)
    assert out.shape == covs.shape
    np.testing.assert_allclose(out, np.swapaxes(out, 1, 2))
    assert np.all(np.linalg.eigvalsh(out) > 0)
    for subject in ("a", "b", "c"):
        np.testing.assert_allclose(_riemann_mean(out[groups == subject]),
                                   np.eye(n_channels), atol=1e-6)
    assert set(recenter.means_) == {"a", "b", "c"}
    np.testing.assert_array_equal(recenter.groups_, ["a", "b", "c"])


def test_recentering_unseen_subject_and_no_groups():
    rng = np.random.default_rng(2)
    train, new = _random_spd(rng, 10, 4), 5.0 * _random_spd(rng, 10, 4)
    recenter = SubjectRecentering().fit(train, groups=np.zeros(10))
    # a subject never seen in fit is aligned by its own (unlabelled) batch
    out = recenter.transform(new, groups=np.full(10, 99))
    np.testing.assert_allclose(_riemann_mean(out), np.eye(4), atol=1e-6)
    # groups=None means one subject
    np.testing.assert_allclose(recenter.transform(new), out)


def test_recentering_errors():
    rng = np.random.default_rng(3)
    covs = _random_spd(rng, 5, 3)
    with pytest.raises(NotFittedError):
        SubjectRecentering().transform(covs)
    with pytest.raises(ValueError, match="groups"):
        SubjectRecentering().fit(covs, groups=[0, 1])
    with pytest.raises(ValueError, match="shape"):
        SubjectRecentering().fit(covs[:, :2, :])
    fitted = SubjectRecentering().fit(covs)
    with pytest.raises(ValueError, match="fitted on size 3"):
        fitted.transform(_random_spd(rng, 5, 4))


def test_recentering_transfers_across_subjects_with_different_channel_gains():
    """Train on one subject, test on another whose channel gains differ.

    Subject b's first channel is amplified and its second attenuated, so all its
    trials look like class 0 to a decoder trained on subject a; re-centring each
    subject by its own mean removes the gains and recovers the classes.
    """
    rng = np.random.default_rng(4)
    X_a, y_a = _imagery_like_trials(rng, 80)
    gains = np.ones(8)
    gains[0], gains[1] = 3.0, 1 / 3.0
    X_b, y_b = _imagery_like_trials(rng, 60, gains=gains)
    groups_a, groups_b = np.full(80, 1), np.full(60, 2)
    plain = make_baseline("ts_lr").fit(X_a, y_a)
    assert np.mean(plain.predict(X_b) == y_b) < 0.7
    with sklearn.config_context(enable_metadata_routing=True):
        model = make_baseline("ts_lr_recentered").fit(X_a, y_a, groups=groups_a)
        accuracy = np.mean(model.predict(X_b, groups=groups_b) == y_b)
    assert accuracy > 0.9


def test_halves_baseline_reads_the_time_course_that_one_covariance_averages_away():
    # Class 0: channel 0 strong in the first half, channel 1 in the second; class 1 the
    # reverse. The whole trial's covariance has the same law for both classes, each
    # half's does not.
    rng = np.random.default_rng(5)
    n_trials, n_channels, n_times = 120, 6, 200
    y = np.arange(n_trials) % 2
    X = rng.standard_normal((n_trials, n_channels, n_times))
    first, second = slice(0, n_times // 2), slice(n_times // 2, n_times)
    X[y == 0, 0, first] *= 2.5
    X[y == 0, 1, second] *= 2.5
    X[y == 1, 1, first] *= 2.5
    X[y == 1, 0, second] *= 2.5
    groups = np.zeros(n_trials, dtype=int)
    scores = {}
    with sklearn.config_context(enable_metadata_routing=True):
        for name in ("ts_lr_recentered", "ts_lr_halves_recentered"):
            model = make_baseline(name).fit(X[:80], y[:80], groups=groups[:80])
            scores[name] = np.mean(model.predict(X[80:], groups=groups[80:]) == y[80:])
    assert scores["ts_lr_halves_recentered"] > 0.9 and scores["ts_lr_recentered"] < 0.75


def test_trial_parts_are_the_encoder_segments():
    from bci_qif.encoding import TangentSpaceEncoder

    X = np.random.default_rng(6).standard_normal((3, 2, 481))
    parts = [TrialPart(index=k, n_parts=3).fit(X).transform(X) for k in range(3)]
    assert [p.shape[-1] for p in parts] == [160, 160, 161]
    np.testing.assert_array_equal(np.concatenate(parts, axis=-1), X)
    encoder = TangentSpaceEncoder(n_segments=3)
    expected = encoder._covariances(X)
    for k, part in enumerate(parts):
        np.testing.assert_allclose(expected[:, k], _covariances().transform(part))
    with pytest.raises(ValueError, match="index must be in"):
        TrialPart(index=3, n_parts=3).fit(X)
