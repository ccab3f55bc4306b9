"""Pretrain on other subjects, fine-tune on the user's own trials (issue: decoder quality).

Within-subject test folds (the same stratified 5-fold splits, seed 42, as ``app.py
evaluate --protocol within-subject``). For each subject, the shipped default decoder
is first fitted on every trial of the **other** subjects (each re-centred by its own
mean: the leave-one-subject-out model, which never sees this subject). Then, per
fold, variants adapt it to the subject with the training fold only:

* ``zero_shot``: no training on the subject; its trials are aligned by the mean
  covariance of the training fold (:meth:`QIFClassifier.calibrate`);
* ``ft_<lr>_<epochs>``: the same alignment, then every network goes on training
  from its pretrained weights on the training fold's trials alone
  (:meth:`QIFClassifier.fine_tune`);
* ``ftout_<lr>_<epochs>``: the same, training the output layer only
  (``fine_tune(output_only=True)``; the hidden layer keeps its pretrained weights);
* ``ftsgd_<lr>_<epochs>``: the same with SGD (momentum 0.9) instead of Adam;
* ``joint_<lr>_<epochs>[_x<k>]``: the networks go on training from their pretrained weights on
  the pretraining trials and the user's adaptation trials together (the user's repeated k times;
  each subject re-centred by its own mean), as a logistic regression would be refitted on the pool
  with the user's trials added;
* ``wise_<a>``: weight-space interpolation between the pretrained and the fine-tuned
  (``ft_3e-3_20``) networks, ``(1 - a) * pretrained + a * fine-tuned`` (WiSE-FT,
  Wortsman et al. 2022), aligned by the user's mean as both are;
* ``ft_auto``: fine-tuning epochs chosen per user: the trials it adapts on are split
  once more (stratified 75/25), each of ``AUTO_EPOCHS`` (0: zero-shot) is fine-tuned on
  the 75 % and scored (acc_ord) on the 25 %, and the best (ties: the one nearest the
  default, 20) is fine-tuned on all of them. Peak learning rate 3e-3.

``--pretrain`` changes the pretrained decoder's settings (``PRETRAIN`` below; the
variant names then carry it as a prefix, e.g. ``h32/ft_3e-3_20``). A ``distill``
entry there pretrains on soft targets (knowledge distillation): ``(1 - w)`` times
the one-hot label plus ``w`` times the probabilities of a linear teacher (the
trial's two halves, each re-centred per subject and mapped to the tangent space at
the identity, into a logistic regression: ``ts_lr_halves_recentered``'s recipe)
that never saw the trial's subject: for each subject of the pretraining pool, a
teacher fitted on the pool's other subjects (cross-fitting; the tested subject is
never in the pool). Fine-tuning still uses the labels. Pretrained models
come from the bci_qif cache (``bci_qif.finetuning.pretrained_model``) when an
earlier run, or ``app.py evaluate --pipelines qif_finetuned``, fitted them.

**Nested**: inside every outer training fold one stratified 75/25 split is the
inner validation (adapt on 75 %, score on 25 %); variants are chosen on the inner
score only. The outer score (adapt on the whole training fold, score on the test
fold) is recorded, never used to choose. The pretrained model is shared by the
inner and outer fits of a subject: it holds none of the subject's trials.
``--inner-splits K`` repeats the inner split K times per outer fold (different
seeds; the first is the single split's), so that the inner score that decides
averages out the luck of one 25 % draw (rows carry ``inner_split``; give such a run
its own ``--out``: resuming skips saved subjects whatever their K).

Run::

    python benchmarks/finetune_search.py --n-jobs 2 --out finetune.csv

With ``--out``, each subject's rows are saved as soon as it finishes; the same
command run again (e.g. after an interruption) skips the subjects already saved.
"""

from __future__ import annotations

import argparse
import copy
import dataclasses
import functools
import time
from pathlib import Path

import jax
import numpy as np
import pandas as pd
from joblib import Parallel, delayed

from bci_qif.config import load_config
from bci_qif.datasets import available_subjects
from bci_qif.estimator import QIFClassifier
from bci_qif.finetuning import pretrained_model
from bci_qif.protocols import within_subject_splits
from bci_qif.training import train as train_network

from decoder_search import _inner_split, load_motor_imagery, summarize

# name -> (peak learning rate, epochs, output layer only[, settings changed while fine-tuning]); None: no
# fine-tuning (calibration only).
VARIANTS = {
    "zero_shot": None,
    "ft_3e-4_20": (3e-4, 20, False),  # LIF's counterpart of ft_3e-3_20 (its training rate is 1e-3, not 1e-2)
    "ft_1e-3_20": (1e-3, 20, False),
    "ft_3e-3_20": (3e-3, 20, False),
    "ft_1e-2_30": (1e-2, 30, False),
    "ftout_1e-2_20": (1e-2, 20, True),
    "ftout_3e-2_20": (3e-2, 20, True),
    "ft_auto": "auto",
    # Fine-tuning with input noise 2 (the default's) whatever the pretrained decoder's noise: a decoder
    # pretrained with little noise whose outputs may fall silent (docs/benchmarks.md, eleventh session).
    "ft_3e-3_20_noise2": (3e-3, 20, False, {"input_noise": 2.0}),
    # For decoders trained with SGD (optimizer "sgd"), whose learning rates are about 100 times Adam's.
    "ft_3e-1_20": (3e-1, 20, False),
    # SGD (momentum 0.9) fine-tuning of an Adam-pretrained decoder. Adam moves every input weight by about
    # the learning rate per step, in the ~700 feature directions the pretraining learned as much as in the
    # others; gradient descent moves the weights only along the user's trials (and the noise added to them),
    # as the logistic regression that gains from the user's trials does.
    "ftsgd_1e-1_20": (1e-1, 20, False, {"optimizer": "sgd"}),
    "ftsgd_3e-1_20": (3e-1, 20, False, {"optimizer": "sgd"}),
    "ftsgd_1_20": (1.0, 20, False, {"optimizer": "sgd"}),
    # Joint tuning: the pretrained networks go on training on the pretraining pool and the user's trials
    # together (the user's repeated k times), for a few epochs: the logistic regression on the same
    # features gains 2.4 points from the user's 36 trials when they join the pool (0.739 -> 0.763), and
    # scores 0.620 on the part of the user's trials outside the pool's span alone (encoding_screen_lr.py
    # pool_halves_zero, pool_halves_offspan).
    "joint_3e-3_5": ("joint", 3e-3, 5, 1),
    "joint_3e-3_5_x3": ("joint", 3e-3, 5, 3),
    # Fine-tuning gains on the inner splits (+1.4) and loses on the outer folds (-1.4) against zero-shot:
    # between the two. Both start from the same pretrained weights, so their straight-line mixtures stay
    # in one basin (the fine-tuning moves the weights little), and a mixture keeps the pool's decision
    # rule in part while it takes up the user's.
    "wise_0.25": ("wise", 0.25),
    "wise_0.5": ("wise", 0.5),
    "wise_0.75": ("wise", 0.75),
    # Batches hold exactly batch_size (32) trials, the last one filled by wrapping around: the inner splits'
    # 27 adaptation trials make one Adam step per epoch, the outer folds' 36 make two. So the outer fits take
    # twice the steps (and twice the schedule's learning-rate area) that the inner scores chose. Batches of
    # 64 give one step per epoch to both (every user with up to 64 trials).
    "ft_3e-3_20_b64": (3e-3, 20, False, {"batch_size": 64}),
}
# The fine-tuning that ``wise_*`` starts from (the shipped default's).
FINE_TUNING = VARIANTS["ft_3e-3_20"]
AUTO_EPOCHS = (0, 10, 20, 40)

CONFIGS = Path(__file__).resolve().parents[1] / "configs"


def _model_changes(config_name):
    """Model settings in which ``configs/<config_name>.yaml`` differs from the shipped default."""
    default, other = (load_config(CONFIGS / f"{name}.yaml")["model"] for name in ("default", config_name))
    return {key: value for key, value in other.items() if default.get(key) != value}


# name -> settings of the pretrained QIFClassifier that differ from the shipped default.
# The late-penalty decoder (two halves, common scale, noise 0.5, late penalty 2, readout_tau 0.25), which
# configs/default.yaml ships as fine_tuning.pretrained_model; later screens vary it.
LATE = dict(n_segments=2, scale="common", input_noise=0.5, late_penalty=2.0, readout_tau=0.25)

PRETRAIN = {
    "default": {},
    "h8": dict(hidden_layer_sizes=(8,)),
    "h32": dict(hidden_layer_sizes=(32,)),
    "h64": dict(hidden_layer_sizes=(64,)),
    "h16x2": dict(hidden_layer_sizes=(16, 16)),
    "ep60": dict(epochs=60),
    "noise1": dict(input_noise=1.0),
    "noise3": dict(input_noise=3.0),
    "seg2": dict(n_segments=2),  # the trial's two halves, each its own covariance (encoding_screen_lr pool_halves)
    "seg3": dict(n_segments=3),
    # Halves repeat much of the whole trial's information: the same noise per feature
    # regularizes less, so also screen more of it.
    "seg2_noise3": dict(n_segments=2, input_noise=3.0),
    "seg2_noise4": dict(n_segments=2, input_noise=4.0),
    # One common scale for all features instead of a z-score per feature (encoding_screen_lr
    # pool_std: the per-feature z-score costs the linear readout 3 points).
    "common": dict(scale="common"),
    "seg2_common": dict(n_segments=2, scale="common"),
    "seg2_common_noise3": dict(n_segments=2, scale="common", input_noise=3.0),
    # Noise injection acts like an L2 penalty. On the common scale, noise 2 is roughly the penalty of a
    # logistic regression with C ~ 0.02 on the raw tangent vectors, where C = 0.1 scores best
    # (encoding_screen_lr.py --encodings pool_halves --C ...): screen less noise.
    "seg2_common_noise1": dict(n_segments=2, scale="common", input_noise=1.0),
    "seg2_common_noise0.5": dict(n_segments=2, scale="common", input_noise=0.5),
    # With less noise some outputs stop firing inside the trial (acc_ord < accuracy): a stronger pull of
    # the correct output's first spike into the trial (the loss's gamma * (exp(t / T) - 1), default 0.01).
    "seg2_common_noise0.5_gamma0.1": dict(n_segments=2, scale="common", input_noise=0.5, gamma=0.1),
    # gamma pulls the correct output's spike earlier on every trial, which cost accuracy; the late
    # penalty pulls all outputs alike, and only on trials whose outputs fire late (network.trial_loss).
    # (Its first version, which pulled the earliest output alone, ran as "..._late1" at commit f406a96.)
    "seg2_common_noise0.5_late2": dict(n_segments=2, scale="common", input_noise=0.5, late_penalty=2.0),
    # Outputs pulled into the trial fire with smaller time differences; a sharper readout softmax
    # (readout_tau 0.5 instead of 1) asks for the same margins without larger weights.
    "seg2_common_noise0.5_late2_rt0.5": dict(n_segments=2, scale="common", input_noise=0.5, late_penalty=2.0,
                                             readout_tau=0.5),
    "seg2_common_noise0.5_late2_rt0.25": LATE,
    # The sharper readout without the late penalty: which of the two does the work?
    "seg2_common_noise0.5_rt0.25": dict(n_segments=2, scale="common", input_noise=0.5, readout_tau=0.25),
    # The outputs kept firing by the late penalty and the sharper readout, at noise 1 (the best outer score of
    # the one-network rows without them; eleventh session) instead of 0.5.
    "seg2_common_noise1_late2_rt0.25": dict(LATE, input_noise=1.0),
    # Distillation from the linear teacher that the spiking decoder trails on pooled trials (0.767 vs 0.729,
    # docs/evaluate_within-subject-pooled): half label, half the teacher's cross-fitted probabilities.
    "late_distill0.5": dict(LATE, distill=0.5),
    # The teacher's probabilities alone (the labels only through the teacher).
    "late_distill1": dict(LATE, distill=1.0),
    # The shipped pretraining reaches training accuracy 1.0 on the pooled trials by epoch ~10 of 30
    # (docs/evaluate_within-subject-pooled/training_curves.png): half the epochs.
    "late_ep15": dict(LATE, epochs=15),
    # The ~720 pooled trials span at most ~720 of the 4160 feature directions. Weights on the other directions
    # never meet a training signal, so they keep their random initial values (or Adam's noise-driven drift)
    # and turn a new subject's out-of-span features into noise in the hidden currents. PCA fitted on the
    # pooled trials (unsupervised) keeps the span only (every direction of positive variance).
    "late_pca_full": dict(LATE, n_components=4160),
    # The kept axes are rescaled to unit variance on average: the 4160 features' variance (1 each on the
    # common scale) on ~704 axes, ~5.9 each, so the signal shrinks ~2.4 times against the same noise.
    # Noise 0.2 keeps the shipped signal-to-noise ratio.
    "late_pca_full_noise0.2": dict(LATE, n_components=4160, input_noise=0.2),
    # LIF through the same protocol, with configs/lif.yaml's settings (learning rate 1e-3, weight scale 0.5).
    "lif": _model_changes("lif"),
    # No hidden layer: with constant input currents the two output neurons' first spikes compare two
    # linear projections of the features, the spiking counterpart of the linear readout that gains
    # from halves on pooled trials (encoding_screen_lr pool_halves); the first session's h0 rows
    # (own trials only) used weight scale 1 and bias 1.
    "h0_seg2_common": dict(hidden_layer_sizes=(), n_segments=2, scale="common"),
    "h0_seg2_common_ws1_b1": dict(hidden_layer_sizes=(), n_segments=2, scale="common", weight_scale=1.0, bias=1.0),
    # SGD with momentum instead of Adam (learning rate 1 ~ Adam's 1e-2), from small initial weights: on
    # thousands of inputs and a few hundred trials Adam's sign-like steps move every weight alike, while
    # gradient descent stays in the span of the trials, as the L2-penalized logistic regression does.
    "h0_seg2_common_sgd": dict(hidden_layer_sizes=(), n_segments=2, scale="common", optimizer="sgd",
                               learning_rate=1.0, weight_scale=0.1),
    "seg2_common_sgd": dict(n_segments=2, scale="common", optimizer="sgd", learning_rate=1.0),
}


def teacher_features(X, groups):
    """Per trial: the two halves' OAS covariances, each re-centred by its subject's own mean and
    mapped to the tangent space at the identity (each subject's mean after re-centring), concatenated.

    Every step uses one trial, or one subject's unlabelled trials, so features of different
    subjects never mix and can be computed once for all of them.
    """
    from pyriemann.estimation import Covariances
    from pyriemann.geometry.tangentspace import tangent_space

    from bci_qif.baselines import SubjectRecentering

    half = X.shape[-1] // 2
    parts = []
    for segment in (X[..., :half], X[..., half:2 * half]):
        covariances = SubjectRecentering().fit_transform(Covariances(estimator="oas").fit_transform(segment),
                                                         groups=groups)
        parts.append(tangent_space(covariances, np.eye(X.shape[1]), metric="riemann"))
    return np.concatenate(parts, axis=1)


def teacher_targets(features, y, groups, weight):
    """Soft targets ``(1 - weight) * one_hot(y) + weight * p``, ``p`` from a logistic regression on
    ``features`` fitted without the trial's subject (one fit per subject of ``groups``)."""
    from sklearn.linear_model import LogisticRegression

    classes, y_index = np.unique(y, return_inverse=True)
    probabilities = np.empty((len(y), len(classes)))
    for subject in np.unique(groups):
        own = groups == subject
        teacher = LogisticRegression(max_iter=1000).fit(features[~own], y_index[~own])
        probabilities[own] = teacher.predict_proba(features[own])
    return (1 - weight) * np.eye(len(classes))[y_index] + weight * probabilities


def _auto_epochs(pretrained, X, y, seed):
    """Fine-tuning epochs chosen on a stratified 75/25 split of the user's trials ``X``."""
    fit, val = _inner_split(y, None, "within-subject", seed)
    scores = [_adapted(pretrained, (3e-3, epochs, False) if epochs else None, X[fit], y[fit])
              .spiking_metrics(X[val], y[val])["acc_ord"] for epochs in AUTO_EPOCHS]
    best = [epochs for epochs, score in zip(AUTO_EPOCHS, scores) if score == max(scores)]
    return min(best, key=lambda epochs: abs(epochs - 20))


def _joint_tuned(model, X, y, pool, learning_rate, epochs, repeats):
    """``model`` trained on from its weights on the ``pool`` (X, y, groups of the pretraining trials, each
    re-centred by its subject's mean) and the user's trials ``X`` (re-centred by their own mean, which also
    becomes the reference of un-grouped trials) repeated ``repeats`` times."""
    X_pool, y_pool, groups_pool = pool
    model.fine_tune(X, y, epochs=0)  # the user's mean becomes the reference
    data = np.concatenate([X_pool] + [X] * repeats)
    groups = np.concatenate([groups_pool] + [np.full(len(X), -1)] * repeats)
    times, currents = model._events(data, groups)
    labels = np.searchsorted(model.classes_, np.concatenate([y_pool] + [y] * repeats))
    config = dataclasses.replace(model._train_config(), epochs=epochs, learning_rate=learning_rate, patience=None)
    model.members_ = [train_network(params, times, currents, labels, model._neuron_model(), model.T_,
                                    dataclasses.replace(config, seed=int(model.random_state) + member),
                                    progress=False).best_params
                      for member, params in enumerate(model.members_)]
    model.params_ = model.members_[0]
    return model


def _interpolated(pretrained, fine_tuned, share):
    """``fine_tuned`` (a copy) with every network's weights ``(1 - share) * pretrained + share * fine_tuned``."""
    model = copy.deepcopy(fine_tuned)
    model.members_ = [jax.tree_util.tree_map(lambda before, after: (1 - share) * before + share * after, *pair)
                      for pair in zip(pretrained.members_, fine_tuned.members_)]
    model.params_ = model.members_[0]
    return model


def _adapted(pretrained, setting, X, y, pool=None, fine_tuned=None):
    """A copy of ``pretrained`` adapted to the trials ``X`` as ``setting`` (a ``VARIANTS`` value) says;
    ``pool``: the pretraining trials (X, y, groups), for joint tuning; ``fine_tuned``: a function
    returning ``pretrained`` fine-tuned on ``X`` as ``FINE_TUNING`` says, for ``wise_*`` (so that one
    fine-tuning serves them all)."""
    model = copy.deepcopy(pretrained)
    if setting is None:
        return model.calibrate(X)
    if setting[0] == "joint":
        return _joint_tuned(model, X, y, pool, *setting[1:])
    if setting[0] == "wise":
        return _interpolated(pretrained, fine_tuned(), setting[1])
    learning_rate, epochs, output_only, *changes = setting
    for name, value in (changes[0] if changes else {}).items():
        setattr(model, name, value)
    return model.fine_tune(X, y, epochs=epochs, learning_rate=learning_rate, output_only=output_only)


def _fine_tuned_once(cache, key, pretrained, X, y):
    """``pretrained`` fine-tuned on ``X`` as ``FINE_TUNING`` says, kept in ``cache[key]`` for the variants
    that start from it."""
    if key not in cache:
        cache[key] = _adapted(pretrained, FINE_TUNING, X, y)
    return cache[key]


def _epochs(setting):
    """Fine-tuning epochs on the user's trials of a ``VARIANTS`` value."""
    if setting is None:
        return 0
    if setting[0] == "wise":
        return FINE_TUNING[1]
    return setting[2] if setting[0] == "joint" else setting[1]


def _variant_name(pretrain, variant):
    """A variant's name in the results: prefixed by its pretraining unless that is the default."""
    return variant if pretrain == "default" else f"{pretrain}/{variant}"


def run_subject(subject, X, y, groups, sfreq, folds, variants, seed, n_members, pretrain="default", inner_splits=1,
                features=None):
    """Pretrain on the other subjects, then score every variant on every fold of ``subject``.

    ``features``: :func:`teacher_features` of all trials, for a ``distill`` pretraining.
    """
    t0 = time.perf_counter()
    others = groups != subject
    pool = (X[others], y[others], groups[others])  # the pretraining trials (sliced once: ~180 MB)
    settings = dict(PRETRAIN[pretrain])
    weight = settings.pop("distill", None)
    targets = None if weight is None else teacher_targets(features[others], *pool[1:], weight)
    base = QIFClassifier(sfreq=sfreq, n_members=n_members, **settings)
    pretrained = pretrained_model(base, *pool, soft_targets=targets)
    pretrain_s = time.perf_counter() - t0
    rows = []
    for fold, train, test in folds:
        # Inner split k draws with seed + fold + 1000 k: k = 0 is the single split of earlier runs.
        parts = []
        for k in range(inner_splits):
            fit, val = _inner_split(y[train], groups[train], "within-subject", seed + fold + 1000 * k)
            parts.append(("inner", k, train[fit], train[val]))
        parts.append(("outer", -1, train, test))
        fine_tunings = {}  # (part, inner split) -> the pretrained model fine-tuned as FINE_TUNING says
        for variant in variants:
            t1 = time.perf_counter()
            for part, inner_split, fit_idx, score_idx in parts:
                fine_tuned = functools.partial(_fine_tuned_once, fine_tunings, (part, inner_split), pretrained,
                                               X[fit_idx], y[fit_idx])
                setting = VARIANTS[variant]
                if setting == "auto":
                    epochs = _auto_epochs(pretrained, X[fit_idx], y[fit_idx], seed + fold)
                    setting = (3e-3, epochs, False) if epochs else None
                model = (fine_tuned() if setting == FINE_TUNING else
                         _adapted(pretrained, setting, X[fit_idx], y[fit_idx], pool, fine_tuned))
                # Un-grouped trials: aligned by the adaptation trials' mean (the calibration).
                acc = float(np.mean(model.predict(X[score_idx]) == y[score_idx]))
                acc_ord = model.spiking_metrics(X[score_idx], y[score_idx])["acc_ord"]
                rows.append(dict(variant=_variant_name(pretrain, variant), subject=subject, fold=fold, part=part,
                                 inner_split=inner_split, accuracy=acc, acc_ord=acc_ord, failed=0,
                                 epochs=_epochs(setting)))
            rows[-1]["seconds"] = time.perf_counter() - t1 + pretrain_s / len(folds)
    return rows


def _append_rows(path, frame):
    """Append ``frame`` to the CSV file ``path`` atomically (columns aligned by name; older files lack some)."""
    earlier = [pd.read_csv(path)] if path.exists() else []
    partial = path.with_name(path.name + ".partial")
    pd.concat(earlier + [frame], ignore_index=True).to_csv(partial, index=False)
    partial.replace(path)  # an interrupted write leaves the earlier rows intact


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--variants", default=",".join(VARIANTS), help=f"comma-separated, from {','.join(VARIANTS)}")
    parser.add_argument("--subjects", nargs="+", type=int, help="test subjects (default: all)")
    parser.add_argument("--n-members", type=int, default=3, help="networks of the pretrained decoder")
    parser.add_argument("--pretrain", default="default", choices=list(PRETRAIN),
                        help="settings of the pretrained decoder (PRETRAIN in this script)")
    parser.add_argument("--inner-splits", type=int, default=1,
                        help="inner 75/25 splits per outer fold, their scores averaged (default 1)")
    parser.add_argument("--n-jobs", type=int, default=1)
    parser.add_argument("--seed", type=int, default=42)
    parser.add_argument("--out", type=Path, help="CSV file to append per-fold rows to")
    args = parser.parse_args(argv)
    if args.inner_splits < 1:
        parser.error(f"--inner-splits must be at least 1, got {args.inner_splits}")
    variants = args.variants.split(",")
    unknown = sorted(set(variants) - set(VARIANTS))
    if unknown:
        parser.error(f"unknown variants {unknown}")

    everyone = list(available_subjects("left_right_imagery", None))
    trials = load_motor_imagery(everyone)
    X, y, groups = trials.data, np.asarray(trials.labels), np.asarray(trials.subjects)
    by_subject = {}
    for subject, fold, train, test in within_subject_splits(groups, y, n_splits=5, seed=args.seed):
        by_subject.setdefault(subject, []).append((fold, train, test))
    subjects = args.subjects or everyone
    if args.out and args.out.exists():  # resume: skip subjects whose rows an earlier run saved
        names = {_variant_name(args.pretrain, variant) for variant in variants}
        earlier = pd.read_csv(args.out)
        done = {subject for subject, rows in earlier.groupby("subject") if names <= set(rows["variant"])}
        if done & set(subjects):
            print(f"skipping subjects already in {args.out}: {sorted(done & set(subjects))}", flush=True)
        subjects = [subject for subject in subjects if subject not in done]
    features = teacher_features(X, groups) if "distill" in PRETRAIN[args.pretrain] else None
    t0 = time.perf_counter()
    # Subjects come back as they finish and their rows are saved at once: an interrupted run keeps
    # every finished subject (and the pretrained cache keeps every finished pretraining).
    finished = Parallel(n_jobs=args.n_jobs, return_as="generator_unordered")(
        delayed(run_subject)(subject, X, y, groups, trials.sfreq, by_subject[subject], variants, args.seed,
                             args.n_members, args.pretrain, args.inner_splits, features)
        for subject in subjects)
    frames = []
    for rows in finished:
        frames.append(pd.DataFrame(rows).fillna({"seconds": 0.0}).assign(protocol="within-subject-pretrained"))
        if args.out:
            _append_rows(args.out, frames[-1])
        print(f"subject {rows[0]['subject']} done ({len(frames)} subjects, {time.perf_counter() - t0:.0f} s)",
              flush=True)
    if not frames:
        return
    frame = pd.concat(frames, ignore_index=True)
    print(f"{time.perf_counter() - t0:.0f} s", flush=True)
    print(summarize(frame).round(3).to_string())


if __name__ == "__main__":
    main()
