"""Screen input encodings with a fast linear readout before spending spiking-network time on them.

Each encoding turns a trial into tangent-space features; logistic regression then
stands in for the spiking decoder. Scores use the nested within-subject protocol of
``decoder_search.py`` (same outer folds as ``app.py evaluate``, seed 42; one
stratified 75/25 inner split of every outer training fold): the *inner* score is the
one to choose on, the *outer* one is recorded only. Everything (tangent-space
reference, scaler, classifier, re-centring means) is fitted on the trials of the
training side of each split.

Encodings (``--encodings``, comma-separated):

* ``all``: OAS covariance of the 64 channels, tangent space, LR (= the ``ts_lr`` baseline);
* ``all_std``: the same, features standardized on the training side;
* ``motor`` / ``motor_std``: only the 21 sensorimotor channels (FC, C and CP rows);
* ``fb`` / ``fb_motor``: filter bank of five sub-bands of 8-30 Hz, tangent vectors concatenated;
* ``crops`` / ``crops_motor``: training trials augmented with five 2 s crops (0.5 s apart);
* ``pool`` / ``pool_motor``: the other subjects' trials added to training (each subject
  re-centred by its own Riemannian mean; the test subject by its training trials' mean);
* ``pool_w5`` / ``pool_w20``: the same with the subject's own trials weighted 5 or 20 times (the
  linear counterpart of fine-tuning a decoder pretrained on the others on the user's trials);
* ``pool_zero``: the other subjects' trials only; the subject's own training trials give only its
  re-centring mean (the linear counterpart of a pretrained decoder used zero-shot); ``pool_halves_zero``
  the same on the trial's halves (below);
* ``pool_halves_offspan``: the subject's own training trials only, on the halves (below), each vector
  first stripped of its part inside the span of the other subjects' vectors: how much class information
  the user's trials hold where the other subjects' trials give none (what joining the pool can add);
* ``pool_stretch``: ``pool``, each subject's re-centred tangent vectors also scaled to a common
  dispersion (the stretch of Riemannian Procrustes analysis; the test subject's scale from its
  training trials);
* ``pool_fb`` / ``pool_fb_stretch``: ``pool`` / ``pool_stretch`` on the filter bank (each sub-band
  re-centred on its own, tangent vectors concatenated);
* ``pool_halves`` / ``pool_thirds``: ``pool`` on the covariances of the trial's two halves (0-1.5 s,
  1.5-3 s) or three thirds, each re-centred on its own, vectors concatenated: is there class
  information in how the trial evolves, which a time-resolved input to the spiking network could use?
* ``pool_std`` / ``pool_halves_std``: ``pool`` / ``pool_halves`` with the features standardized on the
  training side (as the spiking decoder's encoder standardizes them);
* ``halves`` / ``thirds``: the same parts from the subject's own trials only (``all`` per part,
  tangent vectors concatenated; the counterpart of a decoder trained on the user's data alone).

Run::

    python benchmarks/encoding_screen_lr.py --encodings all,motor,fb,crops,pool --n-jobs 2

``--C 0.01 0.1 1`` repeats every encoding with each inverse regularization strength of the
logistic regression (default 1, scikit-learn's).
"""

from __future__ import annotations

import argparse
import itertools
import time

import numpy as np
from joblib import Parallel, delayed
from pyriemann.estimation import Covariances
from pyriemann.geometry.base import invsqrtm
from pyriemann.geometry.mean import mean_riemann
from pyriemann.geometry.tangentspace import tangent_space
from pyriemann.tangentspace import TangentSpace
from scipy.signal import butter, sosfiltfilt
from sklearn.linear_model import LogisticRegression
from sklearn.model_selection import StratifiedShuffleSplit
from sklearn.preprocessing import StandardScaler

from bci_qif.config import load_config
from bci_qif.datasets import available_subjects, load_eegbci
from bci_qif.encoding import segment_bounds
from bci_qif.protocols import within_subject_splits

MOTOR_CHANNELS = ["FC5", "FC3", "FC1", "FCz", "FC2", "FC4", "FC6", "C5", "C3", "C1", "Cz", "C2", "C4", "C6",
                  "CP5", "CP3", "CP1", "CPz", "CP2", "CP4", "CP6"]
SUB_BANDS = [(8, 12), (12, 16), (16, 20), (20, 24), (24, 30)]
CROP_STARTS_S = (0.0, 0.25, 0.5, 0.75, 1.0)
CROP_LENGTH_S = 2.0
SEGMENTS = {"halves": 2, "thirds": 3}  # equal consecutive parts of the trial


def _covariances(X):
    return Covariances(estimator="oas").transform(X)


def _recentred(covs, mean):
    w = invsqrtm(mean)
    aligned = w @ covs @ w
    return 0.5 * (aligned + np.swapaxes(aligned, 1, 2))


def _needed_sets(name):
    """Covariance sets an encoding reads: ``full``, ``fb`` or ``crops``, with ``_motor``."""
    suffix = "_motor" if "motor" in name else ""
    if name.startswith("pool"):
        return {_pooled_set(name)}
    if name.startswith("fb"):
        return {"fb" + suffix}
    if name.startswith("crops"):
        return {"crops" + suffix, "full" + suffix}  # crops use the full trials' reference point
    if name in SEGMENTS:
        return {name}
    return {"full" + suffix}


class Encodings:
    """Covariance sets of every trial, computed once and shared by all splits."""

    def __init__(self, X, sfreq, ch_names, names, subjects):
        motor = [ch_names.index(ch) for ch in MOTOR_CHANNELS]
        crop = int(round(CROP_LENGTH_S * sfreq))
        self.sets = {}
        for key in sorted(set().union(*map(_needed_sets, names))):
            Xc = X[:, motor] if key.endswith("_motor") else X
            kind = key.removesuffix("_motor")
            if key.startswith("full"):
                self.sets[key] = [_covariances(Xc)]
            elif kind in SEGMENTS:
                self.sets[key] = [_covariances(Xc[..., a:b]) for a, b in segment_bounds(Xc.shape[-1], SEGMENTS[kind])]
            elif key.startswith("fb"):
                self.sets[key] = [
                    _covariances(sosfiltfilt(butter(4, band, btype="band", fs=sfreq, output="sos"), Xc, axis=-1))
                    for band in SUB_BANDS]
            else:
                starts = [int(round(s * sfreq)) for s in CROP_STARTS_S]
                self.sets[key] = [_covariances(Xc[:, :, s:s + crop]) for s in starts]
        # Every subject re-centred by the mean of all its trials: how the pooled encodings see the
        # other subjects, whatever the split (computed once, not once per split).
        self.pooled = {}
        for key in {_pooled_set(name) for name in names if name.startswith("pool")}:
            for band, covs in enumerate(self.sets[key]):
                for subject in np.unique(subjects):
                    mine = covs[subjects == subject]
                    self.pooled[key, band, subject] = _aligned_vectors(mine, mean_riemann(mine))


def _tangent(covs_list, train, test):
    fitted = [TangentSpace(metric="riemann").fit(covs[train]) for covs in covs_list]
    return (np.hstack([ts.transform(c[train]) for ts, c in zip(fitted, covs_list)]),
            np.hstack([ts.transform(c[test]) for ts, c in zip(fitted, covs_list)]))


def _aligned_vectors(covs, mean):
    """Tangent vectors at the identity of ``covs`` re-centred by ``mean``, and their dispersion."""
    vectors = tangent_space(_recentred(covs, mean), np.eye(covs.shape[1]))
    return vectors, np.mean(np.sum(vectors**2, axis=1))


def span_axes(vectors):
    """Orthonormal principal axes (rows) of ``vectors`` about their mean: every axis of positive variance."""
    _, singular, axes = np.linalg.svd(vectors - vectors.mean(axis=0), full_matrices=False)
    return axes[singular > singular[0] * 1e-6]


def _pooled_set(name):
    kind = next((k for k in ("fb", *SEGMENTS) if f"_{k}" in name), "full")
    return kind + ("_motor" if "motor" in name else "")


def _score_pooled(name, enc, y, subjects, train, test, C=1.0):
    """``pool*`` encodings: the other subjects' trials added, every subject re-centred by its own mean."""
    set_key = _pooled_set(name)
    stretch = name.endswith("_stretch")
    own = subjects[train[0]]
    other_ids = [s for s in np.unique(subjects) if s != own]
    fit_parts, test_parts = [], []
    for band, covs in enumerate(enc.sets[set_key]):
        # (vectors, dispersion) per other subject (re-centred by the mean of all its trials), then the user's.
        others = [enc.pooled[set_key, band, s] for s in other_ids]
        own_mean = mean_riemann(covs[train])
        a, own_dispersion = _aligned_vectors(covs[train], own_mean)
        b, _ = _aligned_vectors(covs[test], own_mean)
        if not stretch:
            others, own_dispersion = [(v, 1.0) for v, _ in others], 1.0
        common = np.mean([d for _, d in others] + [own_dispersion])  # keeps the features' overall scale
        fit_parts.append(np.vstack([v * np.sqrt(common / d) for v, d in others]
                                   + [a * np.sqrt(common / own_dispersion)]))
        test_parts.append(b * np.sqrt(common / own_dispersion))
    labels = np.concatenate([y[subjects == s] for s in other_ids] + [y[train]])
    own_weight = {"pool_zero": 0.0, "pool_halves_zero": 0.0, "pool_w5": 5.0, "pool_w20": 20.0}.get(name, 1.0)
    weights = np.concatenate([np.ones(len(labels) - len(train)), np.full(len(train), own_weight)])
    fit_features, test_features = np.hstack(fit_parts), np.hstack(test_parts)
    if name.endswith("_offspan"):
        span = span_axes(fit_features[:-len(train)])
        fit_features, test_features = (v - (v @ span.T) @ span for v in (fit_features[-len(train):], test_features))
        labels, weights = y[train], None
    if name.endswith("_std"):  # standardized on the training side, as the spiking decoder's encoder does
        scaler = StandardScaler().fit(fit_features)
        fit_features, test_features = scaler.transform(fit_features), scaler.transform(test_features)
    model = LogisticRegression(C=C, max_iter=2000).fit(fit_features, labels, sample_weight=weights)
    return model.score(test_features, y[test])


def score(name, enc, y, subjects, train, test, C=1.0):
    """Accuracy of one encoding + LR (inverse L2 strength ``C``), fitted on ``train`` and scored on ``test``."""
    suffix = "_motor" if "motor" in name else ""
    if name.startswith("pool"):
        return _score_pooled(name, enc, y, subjects, train, test, C)
    if name.startswith("crops"):
        full = enc.sets["full" + suffix][0]
        reference = TangentSpace(metric="riemann").fit(full[train])
        a = np.vstack([reference.transform(full[train])]
                      + [reference.transform(c[train]) for c in enc.sets["crops" + suffix]])
        labels = np.tile(y[train], 1 + len(enc.sets["crops" + suffix]))
        return LogisticRegression(C=C, max_iter=2000).fit(a, labels).score(reference.transform(full[test]), y[test])
    key = name if name in SEGMENTS else ("fb" if name.startswith("fb") else "full") + suffix
    a, b = _tangent(enc.sets[key], train, test)
    if name.endswith("_std"):
        scaler = StandardScaler().fit(a)
        a, b = scaler.transform(a), scaler.transform(b)
    return LogisticRegression(C=C, max_iter=2000).fit(a, y[train]).score(b, y[test])


def run_split(name, enc, y, subjects, split, seed, C=1.0):
    subject, fold, train, test = split
    inner = StratifiedShuffleSplit(n_splits=1, test_size=0.25, random_state=seed + fold)
    fit_idx, val_idx = next(inner.split(np.zeros(len(train)), y[train]))
    return (subject, score(name, enc, y, subjects, train[fit_idx], train[val_idx], C),
            score(name, enc, y, subjects, train, test, C))


NAMES = ("all", "all_std", "motor", "motor_std", "fb", "fb_motor", "crops", "crops_motor", "pool", "pool_motor",
         "pool_zero", "pool_halves_zero", "pool_halves_offspan", "pool_w5", "pool_w20", "pool_stretch", "pool_fb",
         "pool_fb_stretch", "pool_halves", "pool_thirds", "halves", "thirds", "pool_std", "pool_halves_std")


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--encodings", default="all,motor,pool", help=f"comma-separated, from {','.join(NAMES)}")
    parser.add_argument("--n-jobs", type=int, default=1)
    parser.add_argument("--seed", type=int, default=42)
    parser.add_argument("--C", type=float, nargs="+", default=[1.0],
                        help="inverse regularization strengths of the LR (one row per encoding and value)")
    args = parser.parse_args(argv)
    names = args.encodings.split(",")
    unknown = sorted(set(names) - set(NAMES))
    if unknown:
        parser.error(f"unknown encodings {unknown}")
    config = load_config("configs/default.yaml")
    subjects_found = list(available_subjects("left_right_imagery", None))
    trials = load_eegbci(subjects_found, task="left_right_imagery", preprocessing=config["preprocessing"])
    X, y, subjects = trials.data, np.asarray(trials.labels), np.asarray(trials.subjects)
    t0 = time.perf_counter()
    enc = Encodings(X, trials.sfreq, list(trials.ch_names), names, subjects)
    print(f"covariances: {time.perf_counter() - t0:.0f} s", flush=True)
    splits = list(within_subject_splits(subjects, y, n_splits=5, seed=args.seed))
    print(f"{'encoding':16s} {'C':>7s} {'inner acc':>15s} {'outer acc':>15s} {'seconds':>8s}")
    for name, C in itertools.product(names, args.C):
        t0 = time.perf_counter()
        rows = np.asarray(Parallel(n_jobs=args.n_jobs)(
            delayed(run_split)(name, enc, y, subjects, split, args.seed, C) for split in splits))
        per_subject = np.asarray([rows[rows[:, 0] == s, 1:].mean(axis=0) for s in np.unique(rows[:, 0])])
        mean, std = per_subject.mean(axis=0), per_subject.std(axis=0, ddof=1)
        print(f"{name:16s} {C:7.3g} {mean[0]:.3f} ± {std[0]:.3f}   {mean[1]:.3f} ± {std[1]:.3f} "
              f"{time.perf_counter() - t0:8.0f}", flush=True)


if __name__ == "__main__":
    main()
