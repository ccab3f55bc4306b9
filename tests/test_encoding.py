"""Input encodings on real EEG: the tangent-space encoder against pyriemann's reference pipeline."""

import numpy as np
import pytest
from pyriemann.estimation import Covariances
from pyriemann.geometry.mean import mean_riemann
from pyriemann.tangentspace import TangentSpace

from bci_qif.datasets import load_eegbci
from bci_qif.encoding import TangentSpaceEncoder, make_encoder


@pytest.fixture(scope="module")
def two_subjects(data_root):
    """Subjects 1 and 2, imagined left vs right fist, 8-30 Hz, 0-3 s."""
    return load_eegbci([1, 2], data_dir=data_root)


def _subject(trials, subject):
    mask = trials.subjects == subject
    return trials.data[mask], np.asarray(trials.labels)[mask]


def test_tangent_features_match_pyriemann(two_subjects):
    X, y = _subject(two_subjects, 1)
    encoder = TangentSpaceEncoder(sfreq=two_subjects.sfreq, rate_hz=10.0).fit(X[:30], y[:30])
    ours = encoder.transform(X[30:])
    reference = TangentSpace(metric="riemann").fit(Covariances("oas").transform(X[:30]))
    train_vectors = reference.transform(Covariances("oas").transform(X[:30]))
    expected = (reference.transform(Covariances("oas").transform(X[30:])) - train_vectors.mean(0)) / (
        train_vectors.std(0) + 1e-12)
    n_frames = round(X.shape[-1] / two_subjects.sfreq * 10.0)
    assert ours.shape == (15, 64 * 65 // 2, n_frames) and ours.dtype == np.float32
    # One constant vector per trial, repeated once per frame.
    np.testing.assert_array_equal(ours, np.repeat(ours[:, :, :1], n_frames, axis=2))
    # Same reference point up to the iterative mean's tolerance; standardization
    # (dividing by small training stds) amplifies that to ~1e-3 on a few features.
    np.testing.assert_allclose(encoder.reference_[0], reference.reference_, rtol=1e-5, atol=1e-12)
    np.testing.assert_allclose(ours[:, :, 0], expected, rtol=1e-3, atol=5e-3)


def test_pca_keeps_uncorrelated_components_of_unit_mean_variance(two_subjects):
    X, y = _subject(two_subjects, 1)
    encoder = TangentSpaceEncoder(sfreq=two_subjects.sfreq, n_components=8).fit(X, y)
    features = encoder.transform(X)[:, :, 0].astype(np.float64)
    assert features.shape == (len(X), 8)
    cov = np.cov(features, rowvar=False)
    np.testing.assert_allclose(cov - np.diag(np.diag(cov)), 0.0, atol=1e-4)
    assert np.all(np.diff(np.diag(cov)) <= 1e-6)  # decreasing variance, principal axes first
    np.testing.assert_allclose(np.mean(np.diag(cov)), 1.0, rtol=1e-4)


def test_pca_never_keeps_more_components_than_the_trials_span(two_subjects):
    # 12 trials span 11 directions: asking for 32 keeps 11, and a new trial's features
    # stay on the training scale instead of being divided by ~0 singular values.
    X, y = _subject(two_subjects, 1)
    encoder = TangentSpaceEncoder(sfreq=two_subjects.sfreq, n_components=32).fit(X[:12], y[:12])
    features = encoder.transform(X[12:])[:, :, 0]
    assert features.shape[1] == 11
    assert np.abs(features).max() < 100


def test_recentering_centres_every_subject(two_subjects):
    X, groups = two_subjects.data, np.asarray(two_subjects.subjects)
    encoder = TangentSpaceEncoder(sfreq=two_subjects.sfreq, recenter=True).fit(X, two_subjects.labels, groups=groups)
    assert np.allclose(encoder.reference_[0], mean_riemann(Covariances("oas").transform(X)))
    # After re-centring each subject's Riemannian mean is the identity, whose tangent
    # vector is zero: per subject, the raw tangent vectors average to ~0.
    covs = encoder._covariances(X)
    aligned, reference = encoder._aligned(covs, groups)
    vectors = encoder._tangent_vectors(aligned, reference)
    for subject in (1, 2):
        assert np.abs(vectors[groups == subject].mean(axis=0)).max() < 1e-3
    # Without re-centring the two subjects' means are far apart.
    plain = TangentSpaceEncoder(sfreq=two_subjects.sfreq).fit(X, two_subjects.labels)
    raw = plain._tangent_vectors(covs, plain.reference_)
    assert np.abs(raw[groups == 1].mean(0) - raw[groups == 2].mean(0)).max() > 0.1


def test_arrays_round_trip_gives_identical_features(two_subjects):
    X, y = _subject(two_subjects, 2)
    encoder = TangentSpaceEncoder(sfreq=two_subjects.sfreq, n_components=5).fit(X, y)
    restored = make_encoder("tangent_space", two_subjects.sfreq, n_components=5).set_arrays(
        {k: np.array(v) for k, v in encoder.to_arrays().items()})
    np.testing.assert_array_equal(restored.transform(X), encoder.transform(X))


def test_bad_input_is_refused(two_subjects):
    X, y = _subject(two_subjects, 1)
    encoder = TangentSpaceEncoder(sfreq=two_subjects.sfreq).fit(X, y)
    with pytest.raises(ValueError, match="channels"):
        encoder.transform(X[:, :10])
    bad = X.copy()
    bad[0, 0, 0] = np.nan
    with pytest.raises(ValueError, match="NaN"):
        encoder.transform(bad)
    with pytest.raises(ValueError, match="rate_hz"):
        TangentSpaceEncoder(sfreq=two_subjects.sfreq, rate_hz=0.0).fit(X, y).transform(X)


def test_known_subjects_keep_their_training_mean_new_ones_use_their_own(two_subjects):
    X, y, groups = two_subjects.data, np.asarray(two_subjects.labels), np.asarray(two_subjects.subjects)
    first = groups == 1
    encoder = TangentSpaceEncoder(sfreq=two_subjects.sfreq, recenter=True).fit(X[first], y[first],
                                                                               groups=groups[first])
    # Subject 1 was seen: a trial's features do not depend on which other trials come with it.
    alone = encoder.transform(X[first][:3], groups=groups[first][:3])
    together = encoder.transform(X[first], groups=groups[first])[:3]
    np.testing.assert_allclose(alone, together, rtol=1e-5, atol=1e-5)
    # Without groups (a real-time window) the single training subject's mean is used.
    np.testing.assert_allclose(encoder.transform(X[first][:3]), alone, rtol=1e-5, atol=1e-5)
    # Subject 2 is new: it is re-centred by the mean of its own trials (unsupervised),
    # so its covariances average to the identity as subject 1's training trials do.
    aligned, _ = encoder._aligned(encoder._covariances(X[~first]), groups[~first])
    np.testing.assert_allclose(mean_riemann(aligned[:, 0]), np.eye(64), atol=1e-6)


# --- segments: the trial's consecutive parts, each encoded on its own ---------------------------
def _halves(X):
    middle = np.linspace(0, X.shape[-1], 3).astype(int)[1]
    return X[..., :middle], X[..., middle:]


def test_segments_are_the_parts_encoded_on_their_own_and_concatenated(two_subjects):
    # Part k of every trial has its own covariance, subject means and tangent map: two
    # halves encoded by a segmented encoder are exactly two whole-trial encoders, one per
    # half, side by side (features, alignment of a new subject and of calibrated windows).
    X, y, groups = two_subjects.data, np.asarray(two_subjects.labels), np.asarray(two_subjects.subjects)
    first = groups == 1
    sfreq = two_subjects.sfreq
    segmented = TangentSpaceEncoder(sfreq=sfreq, recenter=True, n_segments=2).fit(X[first], y[first],
                                                                                   groups=groups[first])
    parts = [TangentSpaceEncoder(sfreq=sfreq, recenter=True).fit(half, y[first], groups=groups[first])
             for half in _halves(X[first])]
    assert segmented.reference_.shape == (2, 64, 64) and segmented.subject_means_.shape == (1, 2, 64, 64)

    def side_by_side(data, **kwargs):
        return np.hstack([part.transform(half, **kwargs)[:, :, 0] for part, half in zip(parts, _halves(data))])

    features = segmented.transform(X, groups=groups)
    assert features.shape == (len(X), 2 * 64 * 65 // 2, round(X.shape[-1] / sfreq * 10.0))
    np.testing.assert_allclose(features[:, :, 0], side_by_side(X, groups=groups), rtol=1e-5, atol=1e-4)
    # A calibrated user's windows: each half aligned by the mean of the calibration windows' halves.
    windows = X[~first][:8, :, :320]
    segmented.calibrate(windows)
    for part, half in zip(parts, _halves(windows)):
        part.calibrate(half)
    assert segmented.live_mean_.shape == (2, 64, 64)
    np.testing.assert_allclose(segmented.transform(windows)[:, :, 0], side_by_side(windows), rtol=1e-5, atol=1e-4)
    # The halves really differ: the second half is not a copy of the first.
    assert not np.allclose(features[:, :2080, 0], features[:, 2080:, 0], atol=0.1)


def test_segmented_state_round_trips_and_older_files_still_load(two_subjects):
    X, y = _subject(two_subjects, 2)
    sfreq = two_subjects.sfreq
    segmented = TangentSpaceEncoder(sfreq=sfreq, recenter=True, n_segments=3).fit(X, y)
    restored = make_encoder("tangent_space", sfreq, recenter=True, n_segments=3).set_arrays(segmented.to_arrays())
    np.testing.assert_array_equal(restored.transform(X), segmented.transform(X))
    # Files written before segments existed hold one (c, c) reference and (n_subjects, c, c) means.
    whole = TangentSpaceEncoder(sfreq=sfreq, recenter=True).fit(X, y)
    old = dict(whole.to_arrays(), reference=whole.reference_[0], subject_means=whole.subject_means_[:, 0])
    np.testing.assert_array_equal(TangentSpaceEncoder(sfreq=sfreq, recenter=True).set_arrays(old).transform(X),
                                  whole.transform(X))
    with pytest.raises(ValueError, match="3 segments.*n_segments=2"):
        TangentSpaceEncoder(sfreq=sfreq, recenter=True, n_segments=2).set_arrays(segmented.to_arrays())


@pytest.mark.parametrize("n_segments", [0, 1.5, "2", True])
def test_bad_segment_counts_are_refused(two_subjects, n_segments):
    X, y = _subject(two_subjects, 1)
    with pytest.raises(ValueError, match="n_segments must be a positive integer"):
        TangentSpaceEncoder(sfreq=two_subjects.sfreq, n_segments=n_segments).fit(X, y)


def test_windows_too_short_to_cut_are_refused(two_subjects):
    X, y = _subject(two_subjects, 1)
    encoder = TangentSpaceEncoder(sfreq=two_subjects.sfreq, n_segments=2).fit(X, y)
    with pytest.raises(ValueError, match="3 samples cannot be cut into 2 parts"):
        encoder.transform(X[:, :, :3])


def test_common_scale_keeps_the_tangent_space_relative_scales(two_subjects):
    X, y = _subject(two_subjects, 1)
    sfreq = two_subjects.sfreq
    encoder = TangentSpaceEncoder(sfreq=sfreq).fit(X, y)
    per_feature = encoder.transform(X)[:, :, 0].astype(np.float64)
    common = TangentSpaceEncoder(sfreq=sfreq, scale="common").fit(X, y).transform(X)[:, :, 0].astype(np.float64)
    raw = encoder._tangent_vectors(*encoder._aligned(encoder._covariances(X), None))
    # Per feature: every training feature has unit variance. Common: only their average does,
    # and each feature keeps its share of the raw tangent vectors' variance.
    np.testing.assert_allclose(per_feature.std(axis=0), 1.0, rtol=1e-3)
    np.testing.assert_allclose(np.mean(common.var(axis=0)), 1.0, rtol=1e-3)
    np.testing.assert_allclose(common.std(axis=0) / raw.std(axis=0), np.sqrt(np.mean(raw.var(axis=0))) ** -1,
                               rtol=1e-3)
    assert common.std(axis=0).max() / common.std(axis=0).min() > 10  # the spread a z-score would erase
    with pytest.raises(ValueError, match="scale must be 'feature' or 'common'"):
        TangentSpaceEncoder(sfreq=sfreq, scale="robust").fit(X, y)
