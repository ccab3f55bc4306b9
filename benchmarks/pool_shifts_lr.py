"""Later windows of the other subjects' trials as extra pretraining data, screened with a linear readout.

The pooled decoder learns from ~720 trials of the other subjects. Each EEGMMIDB cue lasts ~4.1 s
while the decoder reads 0-3 s after it, so every trial also holds 3 s windows that start later
(``--offsets``, in seconds after the cue): as many more pool trials again per offset. Does a
logistic regression on the two halves' tangent vectors (``encoding_screen_lr.py``'s
``pool_halves`` recipe, inverse L2 strength ``--C``) gain from them?

Arms (the test trials are always the 0-3 s windows; every subject's windows at one offset are
re-centred by their own mean, the user's by the mean of its 0-3 s adaptation trials):

* ``pool_only``: the other subjects' 0-3 s trials; the user's trials give only the re-centring
  mean (= ``pool_halves_zero``);
* ``pool_shifts_only``: the same with their later windows added;
* ``pool+user``: the other subjects' and the user's 0-3 s trials (= ``pool_halves``);
* ``pool_shifts+user``: the other subjects' windows at every offset and the user's 0-3 s trials;
* ``pool_shifts+user_shifts``: the user's adaptation trials at every offset too.

Nested as the spiking screens (``finetune_search.py --inner-splits 3``): the same outer
within-subject folds (seed 42) and three stratified 75/25 inner splits of every outer training
fold; choose on the inner score (the mean of the three), the outer one is recorded only.

Run::

    python benchmarks/pool_shifts_lr.py --n-jobs 2
"""

from __future__ import annotations

import argparse
import time

import numpy as np
from joblib import Parallel, delayed
from pyriemann.estimation import Covariances
from pyriemann.geometry.mean import mean_riemann
from sklearn.linear_model import LogisticRegression

from bci_qif.config import load_config
from bci_qif.datasets import available_subjects, load_eegbci
from bci_qif.protocols import within_subject_splits

from decoder_search import _inner_split
from encoding_screen_lr import _aligned_vectors

WINDOW_S = 3.0  # the decoder's trial: 0-3 s after the cue (configs/default.yaml)
ARMS = ("pool_only", "pool_shifts_only", "pool+user", "pool_shifts+user", "pool_shifts+user_shifts")


def halves_covariances(X, sfreq, offsets):
    """offset -> the OAS covariances of the two halves of every trial's 3 s window starting ``offset`` s
    after the cue, each of shape (n_trials, n_channels, n_channels)."""
    length = int(round(WINDOW_S * sfreq))
    half = length // 2
    covariances = {}
    for offset in offsets:
        window = X[..., int(round(offset * sfreq)):][..., :length].astype(np.float64)
        if window.shape[-1] < length:
            raise ValueError(f"offset {offset} s: the trials end before {offset + WINDOW_S} s")
        covariances[offset] = [Covariances("oas").fit_transform(window[..., :half]),
                               Covariances("oas").fit_transform(window[..., half:2 * half])]
    return covariances


def halves_means(covariances, offset, trials):
    """The Riemannian means of ``trials``' two halves' covariances at ``offset``: a re-centring reference."""
    return [mean_riemann(half[trials]) for half in covariances[offset]]


def vectors(covariances, offset, trials, means):
    """The two halves' tangent vectors (concatenated) of ``trials``' windows at ``offset``, re-centred by
    ``means`` (:func:`halves_means`; the other subjects: each window offset by its own; the user: by its
    0-3 s adaptation trials', as the decoder's calibration does)."""
    return np.hstack([_aligned_vectors(half[trials], mean)[0] for half, mean in zip(covariances[offset], means)])


def score(arm, covariances, pooled, offsets, y, subjects, fit, test, C):
    """Accuracy on the user's trials ``test`` (0-3 s) of the LR that ``arm`` fits; ``pooled``: (subject,
    offset) -> that subject's vectors (they do not depend on the split)."""
    pool_offsets = offsets if "pool_shifts" in arm else (0.0,)
    user_offsets = offsets if arm.endswith("user_shifts") else (0.0,)
    others = [s for s in np.unique(subjects) if s != subjects[fit[0]]]
    pool = [pooled[s, offset] for offset in pool_offsets for s in others]
    pool_labels = [y[subjects == s] for _ in pool_offsets for s in others]
    reference = halves_means(covariances, 0.0, fit)
    user = [vectors(covariances, offset, fit, reference) for offset in user_offsets]
    weight = 1.0 if "user" in arm else 0.0  # 0: the user's trials give only their re-centring mean
    features = np.vstack(pool + user)
    labels = np.concatenate(pool_labels + [y[fit]] * len(user_offsets))
    weights = np.concatenate([np.ones(sum(map(len, pool_labels))), np.full(len(fit) * len(user_offsets), weight)])
    model = LogisticRegression(C=C, max_iter=2000).fit(features, labels, sample_weight=weights)
    return model.score(vectors(covariances, 0.0, test, reference), y[test])


def run_split(arm, covariances, pooled, offsets, y, subjects, split, seed, inner_splits, C):
    """(subject, inner accuracy of each inner split, outer accuracy) of one outer fold."""
    subject, fold, train, test = split
    inner = []
    for k in range(inner_splits):  # the seeds of finetune_search.py's inner splits
        fit, val = _inner_split(y[train], None, "within-subject", seed + fold + 1000 * k)
        inner.append(score(arm, covariances, pooled, offsets, y, subjects, train[fit], train[val], C))
    return subject, *inner, score(arm, covariances, pooled, offsets, y, subjects, train, test, C)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--arms", default=",".join(ARMS), help=f"comma-separated, from {','.join(ARMS)}")
    parser.add_argument("--offsets", type=float, nargs="+", default=[0.0, 0.5, 1.0],
                        help="window starts after the cue (s); 0 first (the decoder's window)")
    parser.add_argument("--C", type=float, default=0.1, help="inverse L2 strength (the pool_halves optimum)")
    parser.add_argument("--inner-splits", type=int, default=3)
    parser.add_argument("--n-jobs", type=int, default=1)
    parser.add_argument("--seed", type=int, default=42)
    args = parser.parse_args(argv)
    arms = args.arms.split(",")
    if sorted(set(arms) - set(ARMS)):
        parser.error(f"unknown arms {sorted(set(arms) - set(ARMS))}")
    if args.offsets[0] != 0.0 or min(args.offsets) < 0:
        parser.error("--offsets must start with 0 and hold no negative value")
    if args.inner_splits < 1:
        parser.error(f"--inner-splits must be at least 1, got {args.inner_splits}")
    preprocessing = load_config("configs/default.yaml")["preprocessing"]
    # Long enough for the latest window (the cue's annotation lasts ~4.1 s).
    preprocessing = dict(preprocessing, tmax=preprocessing["tmin"] + max(args.offsets) + WINDOW_S)
    trials = load_eegbci(list(available_subjects("left_right_imagery", None)), task="left_right_imagery",
                         preprocessing=preprocessing)
    y, subjects = np.asarray(trials.labels), np.asarray(trials.subjects)
    covariances = halves_covariances(trials.data, trials.sfreq, args.offsets)
    own = {s: np.flatnonzero(subjects == s) for s in np.unique(subjects)}
    pooled = {(s, offset): vectors(covariances, offset, own[s], halves_means(covariances, offset, own[s]))
              for s in own for offset in args.offsets}
    splits = list(within_subject_splits(subjects, y, n_splits=5, seed=args.seed))
    print(f"{len(y)} trials, windows at {args.offsets} s; LR C {args.C}")
    print(f"{'arm':26s} {'inner acc (mean of splits)':>27s} {'outer acc':>15s} {'seconds':>8s}")
    for arm in arms:
        t0 = time.perf_counter()
        rows = np.asarray(Parallel(n_jobs=args.n_jobs)(
            delayed(run_split)(arm, covariances, pooled, args.offsets, y, subjects, split, args.seed, args.inner_splits,
                               args.C) for split in splits))
        per_subject = np.asarray([rows[rows[:, 0] == s, 1:].mean(axis=0) for s in np.unique(rows[:, 0])])
        inner, outer = per_subject[:, :-1].mean(axis=1), per_subject[:, -1]
        print(f"{arm:26s} {inner.mean():.3f} ± {inner.std(ddof=1):.3f}{'':13s} {outer.mean():.3f} ± "
              f"{outer.std(ddof=1):.3f} {time.perf_counter() - t0:8.0f}", flush=True)


if __name__ == "__main__":
    main()
