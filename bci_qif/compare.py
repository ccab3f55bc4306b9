"""The LIF vs QIF study: a controlled comparison of the two neuron models.

``python app.py compare --config configs/compare_<task>.yaml [--quick]`` runs the
protocol of Wenig, Memmesheimer & Klos (arXiv:2606.03935) on one task and writes a
report. Only the neuron model differs between the two arms:

1. **Data** (one split for everything): PhysioNet imagined left vs right fist across
   subjects (training, validation and test *subjects*; CSP and standardization fitted
   on the training subjects only), Yin-Yang (generated; independent draws for the
   three splits) or Spiking Heidelberg Digits (official HDF5 files; validation drawn
   from the training file, the official test file for testing).
2. **Search**: the same random candidates (learning rate, time constant, weight scale,
   hidden size, weight decay; see ``search.space``) are trained for both models with
   the same seed; each is scored on the *validation* split only (``acc_ord``, ties
   broken by ``acc``, as in :func:`bci_qif.training.train`).
3. **Final runs**: the best candidate of each model is retrained with every seed of
   ``final.seeds``, keeping the parameters of the best validation epoch, and scored
   once on the test split. During these runs the whole training set is simulated
   after every epoch to measure silence and representation drift.
4. **Landscape**: at the selected parameters of the first seed, loss slices along
   norm-scaled random directions (1-D with gradients, 2-D without), minibatch
   gradients, and spike changes under small weight perturbations
   (:mod:`bci_qif.landscape` defines every metric).

Time units: every task gives event times in a base unit (seconds for EEG and SHD,
the encoding's units for Yin-Yang); the searched time constant ``tau`` is in the same
unit. The engine runs with ``tau = 1`` on times divided by ``tau`` (as
:class:`bci_qif.QIFClassifier` does), so ``readout_tau`` is in units of ``tau``.

Outputs (``--out``): ``report.md``, ``summary.json``, ``search.csv``, ``runs.csv``,
``history.csv``, ``loss_slices_1d.png``, ``loss_slices_2d.png``,
``silence_curves.png`` and ``accuracy_curves.png``.
"""

from __future__ import annotations

import copy
import dataclasses
import datetime
import json
import logging
import math
import os
import platform
import time
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pandas as pd
import yaml
from tqdm.auto import tqdm

from . import landscape, network
from .errors import ConfigError, DataNotFoundError
from .neurons import get_neuron
from .training import TrainConfig, make_optimizer

logger = logging.getLogger(__name__)

__all__ = ["MODELS", "OUTPUT_FILES", "load_compare_config", "load_task", "run_compare"]

#: The two arms of the study, in report order.
MODELS = ("qif", "lif")

#: Files every run writes into its output folder.
OUTPUT_FILES = ("report.md", "summary.json", "search.csv", "runs.csv", "history.csv", "loss_slices_1d.png",
                "loss_slices_2d.png", "silence_curves.png", "accuracy_curves.png")

# ---------------------------------------------------------------------------------
# Configuration
# ---------------------------------------------------------------------------------
#: Hyper-parameters of one network (``model``); any of them can be searched.
MODEL_DEFAULTS = {
    "learning_rate": 0.01, "tau": 1.0, "weight_scale": 3.0, "hidden_size": 64, "weight_decay": 0.0,
    "bias": 0.5, "readout_tau": 1.0, "gamma": 0.01, "batch_size": 32, "grad_clip": 1.0,
}
SEARCHABLE = ("learning_rate", "tau", "weight_scale", "hidden_size", "weight_decay", "bias")
SECTION_DEFAULTS = {
    "model": MODEL_DEFAULTS,
    "search": {"method": "random", "n_candidates": 8, "epochs": 10, "seed": 0, "space": {}},
    "final": {"seeds": [0, 1, 2], "epochs": 20},
    "landscape": {
        "radius": 0.5, "points_1d": 41, "points_2d": 11, "slice_batches": 2, "minibatches": 8,
        "perturbation": 1e-3, "n_perturbations": 3, "n_refine": 3, "jump_k": 4.0, "seed": 0,
        "permanent_min_epochs": 3, "convergence_fraction": 0.9, "probe_trials": 128,
    },
}
DATA_DEFAULTS = {
    "eeg": {"task": "left_right_imagery", "subjects": "all", "n_test_subjects": 4, "n_val_subjects": 3,
            "split_seed": 42, "preprocessing": {"bandpass": [8.0, 30.0], "tmin": 0.0, "tmax": 3.0},
            "encoding": "tangent_space", "recenter": True, "n_components": None, "rate_hz": 10.0,
            "input_gain": 1.0},
    "yinyang": {"n_train": 1500, "n_val": 500, "n_test": 1000, "seed": 0},
    "shd": {"train_file": "shd/shd_train.h5", "test_file": "shd/shd_test.h5", "max_train": None,
            "max_test": None, "val_fraction": 0.1, "split_seed": 0, "bin_s": 0.01, "T_s": 1.0,
            "n_channels": 70},
}
_TOP_KEYS = {"task", "description", "data", "model", "search", "final", "landscape", "quick"}


def _merge(base, override, where):
    """Deep-merge ``override`` into a copy of ``base``, refusing unknown keys."""
    out = copy.deepcopy(base)
    for key, value in (override or {}).items():
        if key not in base:
            raise ConfigError(f"unknown key {key!r} in {where}; allowed: {sorted(base)}")
        if isinstance(base[key], dict) and key != "preprocessing" and key != "space":
            if not isinstance(value, dict):
                raise ConfigError(f"{where}.{key} must be a mapping, got {value!r}")
            out[key] = _merge(base[key], value, f"{where}.{key}")
        elif key == "space":
            out[key] = dict(out[key] or {}, **(value or {}))
        else:
            out[key] = value
    return out


def _check_space(space):
    for name, spec in space.items():
        if name not in SEARCHABLE:
            raise ConfigError(f"search.space.{name} is not searchable; choose from {list(SEARCHABLE)}")
        if not isinstance(spec, dict) or len(spec) != 1:
            raise ConfigError(f"search.space.{name} must be one of {{log_uniform: [lo, hi]}}, "
                              f"{{uniform: [lo, hi]}} or {{choice: [...]}}, got {spec!r}")
        (kind, values), = spec.items()
        if kind not in ("log_uniform", "uniform", "choice"):
            raise ConfigError(f"search.space.{name}: unknown distribution {kind!r}")
        if not isinstance(values, list) or not values:
            raise ConfigError(f"search.space.{name}.{kind} needs a non-empty list, got {values!r}")
        if kind != "choice" and (len(values) != 2 or not float(values[0]) <= float(values[1])):
            raise ConfigError(f"search.space.{name}.{kind} needs [low, high] with low <= high, got {values!r}")
        if kind == "log_uniform" and float(values[0]) <= 0:
            raise ConfigError(f"search.space.{name}.log_uniform needs positive bounds, got {values!r}")


def _check_numbers(config):
    if config["search"]["method"] != "random":
        raise ConfigError(f"search.method must be 'random', got {config['search']['method']!r}")
    for section, key in (("search", "n_candidates"), ("search", "epochs"), ("final", "epochs"),
                         ("landscape", "points_1d"), ("landscape", "points_2d"), ("landscape", "slice_batches"),
                         ("landscape", "minibatches"), ("model", "batch_size"), ("model", "hidden_size")):
        value = config[section][key]
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ConfigError(f"{section}.{key} must be a positive integer, got {value!r}")
    seeds = config["final"]["seeds"]
    if not isinstance(seeds, list) or not seeds or not all(isinstance(s, int) for s in seeds):
        raise ConfigError(f"final.seeds must be a non-empty list of integers, got {seeds!r}")
    if config["landscape"]["points_1d"] < 3 or config["landscape"]["points_2d"] < 2:
        raise ConfigError("landscape.points_1d must be >= 3 and landscape.points_2d >= 2")
    for key in ("radius", "perturbation"):
        if not float(config["landscape"][key]) > 0:
            raise ConfigError(f"landscape.{key} must be positive, got {config['landscape'][key]!r}")


def load_compare_config(path, *, quick=False):
    """Read a study configuration, apply ``quick`` overrides and fill defaults.

    Parameters
    ----------
    path : str or Path
        YAML file with ``task`` (``eeg``, ``yinyang`` or ``shd``) and the sections
        ``data``, ``model``, ``search``, ``final``, ``landscape`` and ``quick`` (a
        partial copy of the others applied with ``--quick``).
    quick : bool
        Apply the ``quick`` section.

    Returns
    -------
    dict
        The complete configuration.

    Raises
    ------
    ConfigError
        Unknown task, section or key, or an invalid value (named).
    """
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"configuration file {path} not found (try configs/compare_yinyang.yaml)")
    with open(path) as f:
        raw = yaml.safe_load(f) or {}
    if not isinstance(raw, dict):
        raise ConfigError(f"{path}: a study configuration must be a mapping")
    unknown = sorted(set(raw) - _TOP_KEYS)
    if unknown:
        raise ConfigError(f"{path}: unknown section(s) {unknown}; allowed: {sorted(_TOP_KEYS)}")
    task = raw.get("task")
    if task not in DATA_DEFAULTS:
        raise ConfigError(f"{path}: task must be one of {sorted(DATA_DEFAULTS)}, got {task!r}")
    config = {"task": task, "description": raw.get("description", ""),
              "data": _merge(DATA_DEFAULTS[task], raw.get("data"), "data")}
    for section, defaults in SECTION_DEFAULTS.items():
        config[section] = _merge(defaults, raw.get(section), section)
    if quick:
        overrides = raw.get("quick") or {}
        bad = sorted(set(overrides) - {"data", *SECTION_DEFAULTS})
        if bad:
            raise ConfigError(f"{path}: unknown section(s) {bad} in quick")
        for section, value in overrides.items():
            config[section] = _merge(config[section], value, f"quick.{section}")
    _check_space(config["search"]["space"])
    _check_numbers(config)
    config["quick"] = bool(quick)
    config["source"] = str(path)
    return config


# ---------------------------------------------------------------------------------
# Tasks
# ---------------------------------------------------------------------------------
@dataclasses.dataclass
class Split:
    """Trials of one split: event ``times`` (shared ``(n_events,)`` or per trial
    ``(n, n_events)``), ``currents`` ``(n, n_events, n_inputs)`` and ``labels``."""

    times: np.ndarray
    currents: np.ndarray
    labels: np.ndarray

    def __len__(self):
        return len(self.labels)

    def times_of(self, index):
        """Event times of the trials ``index``."""
        return self.times[index] if self.times.ndim == 2 else self.times


@dataclasses.dataclass
class Task:
    """A prepared task: three splits, trial length ``T`` in the base time unit."""

    name: str
    train: Split
    val: Split
    test: Split
    T: float
    n_classes: int
    description: str
    time_unit: str


def _split_subjects(subjects, n_test, n_val, seed):
    """Shuffle subjects once and cut them into (train, val, test) lists."""
    subjects = list(subjects)
    if n_test < 1 or n_val < 1 or len(subjects) < n_test + n_val + 1:
        raise ConfigError(f"need at least n_test_subjects + n_val_subjects + 1 = {n_test + n_val + 1} subjects, "
                          f"got {len(subjects)}; n_test_subjects and n_val_subjects must be >= 1")
    order = [int(s) for s in np.random.default_rng(seed).permutation(subjects)]
    return sorted(order[n_test + n_val:]), sorted(order[n_test:n_test + n_val]), sorted(order[:n_test])


def _eeg_encoder(data, X, trials, train):
    """Fit the configured input encoding on the training subjects only.

    Returns a function ``mask -> (n_trials, n_features, n_frames)`` and a phrase for
    the report.
    """
    from .encoding import make_encoder

    encoding = data["encoding"]
    if encoding == "tangent_space":
        # Subjects are aligned by their own Riemannian mean when ``recenter``: the
        # validation and test subjects by their own unlabelled trials.
        encoder = make_encoder(encoding, trials.sfreq, n_components=data["n_components"], rate_hz=data["rate_hz"],
                               recenter=bool(data["recenter"]))
        encoder.fit(X[train], trials.labels[train], groups=trials.subjects[train])
        kept = "all" if data["n_components"] is None else f"{data['n_components']} principal"
        phrase = (f"Riemannian tangent-space vectors ({kept} features"
                  f"{', each subject re-centred by its own mean' if data['recenter'] else ''}) as constant "
                  f"currents at {data['rate_hz']:g} Hz, fitted on the training subjects")
        return (lambda mask: encoder.transform(X[mask], groups=trials.subjects[mask])), encoder.frame_rate, phrase
    if encoding == "csp_power":
        n_components = 8 if data["n_components"] is None else data["n_components"]
        encoder = make_encoder(encoding, trials.sfreq, n_components=n_components, rate_hz=data["rate_hz"])
        encoder.fit(X[train], trials.labels[train])
        phrase = (f"CSP log-power envelopes of {n_components} components at {data['rate_hz']:g} Hz fitted on the "
                  "training subjects")
        return (lambda mask: encoder.transform(X[mask])), encoder.frame_rate, phrase
    raise ConfigError(f"data.encoding must be 'tangent_space' or 'csp_power', got {encoding!r}")


def _load_eeg(data, data_dir):
    """PhysioNet EEGMMIDB across subjects, encoded as current events."""
    from .currents import to_input_events
    from .datasets import available_subjects, load_eegbci

    subjects = data["subjects"]
    if subjects == "all":
        subjects = available_subjects(data["task"], data_dir)
        if not subjects:
            raise DataNotFoundError("no EEGMMIDB subjects found under the data root; pass --data-dir or set "
                                    "MNE_DATA to the folder holding MNE-eegbci-data/")
    train_s, val_s, test_s = _split_subjects(subjects, data["n_test_subjects"], data["n_val_subjects"],
                                             data["split_seed"])
    trials = load_eegbci(sorted(train_s + val_s + test_s), task=data["task"], data_dir=data_dir,
                         preprocessing=data["preprocessing"])
    parts = {name: np.isin(trials.subjects, group) for name, group in
             (("train", train_s), ("val", val_s), ("test", test_s))}
    X = np.asarray(trials.data, np.float64)
    # The encoder (spatial filters, reference points, standardization) sees training subjects only.
    encode, frame_rate, phrase = _eeg_encoder(data, X, trials, parts["train"])
    splits = {}
    for name, mask in parts.items():
        times, currents = to_input_events(encode(mask), frame_rate, time_scale=1.0, gain=float(data["input_gain"]))
        splits[name] = Split(np.asarray(times, np.float32), np.asarray(currents, np.float32),
                             np.asarray(trials.labels[mask], np.int64))
    T = X.shape[-1] / trials.sfreq
    description = (f"PhysioNet EEGMMIDB {data['task']}, cross-subject: train subjects {train_s}, validation "
                   f"subjects {val_s}, test subjects {test_s}; {phrase}")
    return Task("eeg", splits["train"], splits["val"], splits["test"], T, len(trials.class_names), description,
                "s")


def _load_yinyang(data):
    """Yin-Yang, generated: three independent draws for train, validation and test."""
    from . import yinyang

    splits = []
    for offset, key in enumerate(("n_train", "n_val", "n_test")):
        points, labels = yinyang.make_yinyang(int(data[key]), seed=int(data["seed"]) + offset)
        times, currents = yinyang.to_events(points)
        splits.append(Split(np.asarray(times, np.float32), np.asarray(currents, np.float32), labels))
    description = (f"Yin-Yang (generated, seed {data['seed']}): {data['n_train']} training, {data['n_val']} "
                   f"validation, {data['n_test']} test points; five timed input spikes per point")
    return Task("yinyang", *splits, float(yinyang.DEFAULT_T), 3, description, "encoding units")


def _resolve(path, data_dir):
    path = Path(os.path.expanduser(str(path)))
    if path.is_absolute():
        return path
    from .datasets import resolve_data_root

    try:
        root = resolve_data_root(data_dir)
    except (DataNotFoundError, FileNotFoundError):
        root = Path(data_dir or ".")
    return root / path


def _load_shd(data, data_dir):
    """Spiking Heidelberg Digits from the official HDF5 files (binned, pooled counts)."""
    from . import shd

    files = {key: _resolve(data[key], data_dir) for key in ("train_file", "test_file")}
    for key, path in files.items():
        if not path.is_file():
            raise DataNotFoundError(
                f"SHD {key.split('_')[0]} file {path} not found. Get shd_train.h5.gz and shd_test.h5.gz from "
                "https://zenkelab.org/datasets/ (or its Zenodo mirror), gunzip them, and put them under "
                f"<data root>/shd/ or set data.{key} in the configuration (relative paths are read from "
                "--data-dir / $MNE_DATA)."
            )
    train_all = shd.load_shd(files["train_file"], max_samples=data["max_train"])
    test = shd.load_shd(files["test_file"], max_samples=data["max_test"])
    options = {"bin_s": data["bin_s"], "T_s": data["T_s"], "n_channels": data["n_channels"], "time_scale": 1.0}
    times, currents, T = shd.to_events(train_all, **options)
    times_test, currents_test, _ = shd.to_events(test, **options)
    labels = train_all.labels
    order = np.random.default_rng(data["split_seed"]).permutation(len(labels))
    n_val = max(1, int(round(float(data["val_fraction"]) * len(labels))))
    if n_val >= len(labels):
        raise ConfigError(f"data.val_fraction leaves no SHD training samples ({len(labels)} in the file)")
    val_idx, train_idx = np.sort(order[:n_val]), np.sort(order[n_val:])
    n_classes = int(max(labels.max(), test.labels.max()) + 1)
    make = lambda t, c, y: Split(np.asarray(t, np.float32), np.asarray(c, np.float32), np.asarray(y, np.int64))  # noqa: E731
    description = (f"Spiking Heidelberg Digits ({files['train_file'].name}: {len(train_idx)} training and "
                   f"{len(val_idx)} validation samples; {files['test_file'].name}: {len(test.labels)} test "
                   f"samples), {data['n_channels']} pooled channels in {data['bin_s'] * 1000:g} ms bins")
    return Task("shd", make(times, currents[train_idx], labels[train_idx]), make(times, currents[val_idx],
                labels[val_idx]), make(times_test, currents_test, test.labels), float(T), n_classes,
                description, "s")


def load_task(config, data_dir=None):
    """Load and split the data of a study configuration (see module notes)."""
    task, data = config["task"], config["data"]
    if task == "eeg":
        return _load_eeg(data, data_dir)
    if task == "yinyang":
        return _load_yinyang(data)
    return _load_shd(data, data_dir)


# ---------------------------------------------------------------------------------
# Candidates
# ---------------------------------------------------------------------------------
def sample_candidates(config):
    """The random search candidates: ``model`` settings with ``search.space`` drawn.

    The same list is trained for both neuron models (same budget, same candidates).
    """
    rng = np.random.default_rng(config["search"]["seed"])
    out = []
    for _ in range(config["search"]["n_candidates"]):
        hp = dict(config["model"])
        for name, spec in sorted(config["search"]["space"].items()):
            (kind, values), = spec.items()
            if kind == "choice":
                value = values[int(rng.integers(len(values)))]
            elif kind == "uniform":
                value = float(rng.uniform(float(values[0]), float(values[1])))
            else:
                value = float(np.exp(rng.uniform(np.log(float(values[0])), np.log(float(values[1])))))
            hp[name] = int(value) if name == "hidden_size" else value
        out.append(hp)
    return out


# ---------------------------------------------------------------------------------
# Training with instrumentation
# ---------------------------------------------------------------------------------
@dataclasses.dataclass
class Run:
    """One training run of one model with one configuration and seed."""

    model: str
    seed: int
    hp: dict
    history: list
    silent: np.ndarray | None = None          # (n_evaluations, n_hidden) on the training set
    probe_counts: np.ndarray | None = None    # (n_evaluations, n_probe, n_hidden)
    best_params: list | None = None
    best_epoch: int = 0
    best_score: float = -math.inf
    test: dict = dataclasses.field(default_factory=dict)
    budget: network.Budget | None = None
    failed: str | None = None
    seconds: float = 0.0


def _engine(task, hp, model):
    """Neuron (``tau = 1``), time factor and trial length in units of ``tau``."""
    tau = float(hp["tau"])
    if not tau > 0:
        raise ConfigError(f"tau must be positive, got {tau!r}")
    return get_neuron(model, tau=1.0), 1.0 / tau, task.T / tau


def _batches(n, batch_size):
    """Index batches of exactly ``batch_size`` (a short split is padded by repetition)."""
    for start in range(0, n, batch_size):
        idx = np.arange(start, min(start + batch_size, n))
        n_real = len(idx)
        if n_real < batch_size:
            idx = np.concatenate([idx, np.resize(np.arange(n), batch_size - n_real)])
        yield idx, n_real


def _trial_losses(t, labels, T, gamma, readout_tau):
    """Per-trial loss of :func:`bci_qif.network.trial_loss` (the study's models have no late penalty)."""
    loss = lambda times, label: network.trial_loss(times, label, T, gamma=gamma, readout_tau=readout_tau)
    return np.asarray(jax.vmap(loss)(jnp.asarray(t), jnp.asarray(labels)))


def _evaluate(params, split, neuron, scale, T, hp, budget, *, limit=None):
    """Forward pass over a split: loss, accuracies and hidden spike counts per trial."""
    n = len(split) if limit is None else min(limit, len(split))
    bs = int(hp["batch_size"])
    firsts, ordinary, counts = [], [], []
    for idx, n_real in _batches(n, bs):
        (_, result), budget = network.batch_loss(params, split.times_of(idx) * scale, split.currents[idx],
                                                 split.labels[idx], neuron, T=T, gamma=hp["gamma"],
                                                 readout_tau=hp["readout_tau"], budget=budget)
        firsts.append(np.asarray(result.first_spike_times)[:n_real])
        ordinary.append(np.asarray(result.ordinary)[:n_real])
        counts.append(np.asarray(result.spike_counts[0])[:n_real])
    t, ordinary, counts = np.concatenate(firsts), np.concatenate(ordinary), np.concatenate(counts)
    labels = split.labels[:n]
    predicted, predicted_ord = network.predict(network.SimulationResult(t, ordinary, (), (), (), False, (), False))
    losses = _trial_losses(t, labels, T, hp["gamma"], hp["readout_tau"])
    metrics = {"loss": float(np.mean(losses)), "acc": float(np.mean(predicted == labels)),
               "acc_ord": float(np.mean(predicted_ord == labels)), "counts": counts}
    return metrics, budget


@jax.jit
def _finite(tree):
    return jnp.all(jnp.stack([jnp.all(jnp.isfinite(x)) for x in jax.tree_util.tree_leaves(tree)]))


def _score(metrics):
    # Same selection rule as training.train: acc_ord first, acc then loss break ties.
    return metrics["acc_ord"] + 1e-3 * metrics["acc"] - 1e-6 * metrics["loss"]


def train_run(task, model, hp, seed, epochs, *, track=False, probe_trials=128, budget=None, progress=False):
    """Train one network by exact gradient descent and measure it after every epoch.

    Parameters
    ----------
    task : Task
    model : {"qif", "lif"}
    hp : dict
        Hyper-parameters (``MODEL_DEFAULTS`` keys).
    seed : int
        Seed of the initialisation and of the minibatch order.
    epochs : int
    track : bool
        Also simulate the whole training set after every epoch (and before the
        first) for silence and representation drift.
    probe_trials : int
        Training trials whose per-neuron spike counts are kept per evaluation.
    budget : network.Budget, optional
        Starting event budget (pass the previous run's ``budget``: budgets only grow,
        so compiled simulations are reused instead of recompiled).
    progress : bool
        Show a progress bar over epochs.

    Returns
    -------
    Run
        ``history`` rows (epoch 0 is the initial network when ``track``) with
        ``loss``, ``acc``, ``acc_ord`` (training minibatches), ``val_*``,
        ``silent_fraction`` (whole training set, with ``track``) and
        ``n_nonfinite`` (skipped steps with a non-finite loss or gradient).
    """
    neuron, scale, T = _engine(task, hp, model)
    n_inputs = task.train.currents.shape[-1]
    params = network.init(jax.random.PRNGKey(seed), (n_inputs, int(hp["hidden_size"]), task.n_classes),
                          weight_scale=float(hp["weight_scale"]), bias=float(hp["bias"]))
    bs = min(int(hp["batch_size"]), len(task.train))
    steps = max(1, len(task.train) // bs)
    config = TrainConfig(epochs=int(epochs), batch_size=bs, learning_rate=float(hp["learning_rate"]),
                         grad_clip=hp["grad_clip"], weight_decay=float(hp["weight_decay"]), gamma=float(hp["gamma"]),
                         readout_tau=float(hp["readout_tau"]), seed=int(seed))
    optimizer = make_optimizer(config, steps)
    opt_state = optimizer.init(params)

    @jax.jit
    def update(params, opt_state, grads):
        updates, opt_state = optimizer.update(grads, opt_state, params)
        return jax.tree_util.tree_map(lambda p, u: p + u, params, updates), opt_state

    run = Run(model, seed, dict(hp), [], budget=budget)
    silent, probes = [], []
    t0 = time.perf_counter()

    def measure(epoch, row):
        nonlocal silent, probes
        if track:
            train_metrics, run.budget = _evaluate(params, task.train, neuron, scale, T, hp, run.budget)
            counts = train_metrics["counts"]
            silent.append(counts.sum(axis=0) == 0)
            probes.append(counts[:probe_trials])
            row.update(silent_fraction=float(np.mean(silent[-1])),
                       spikes_per_trial=float(counts.sum(axis=1).mean()))
            if epoch == 0:
                row.update(loss=train_metrics["loss"], acc=train_metrics["acc"], acc_ord=train_metrics["acc_ord"])
        val, run.budget = _evaluate(params, task.val, neuron, scale, T, hp, run.budget)
        row.update(val_loss=val["loss"], val_acc=val["acc"], val_acc_ord=val["acc_ord"])
        run.history.append(row)
        if epoch > 0 and _score(val) > run.best_score:
            run.best_score, run.best_params, run.best_epoch = _score(val), params, epoch

    try:
        if track:
            measure(0, {"epoch": 0, "n_nonfinite": 0})
        else:
            # Size the event budget with the cheaper forward pass first, so that the
            # gradient is compiled once instead of once per budget doubling.
            _, run.budget = _evaluate(params, task.train, neuron, scale, T, hp, run.budget, limit=bs)
        bar = tqdm(range(1, epochs + 1), desc=f"{model} seed {seed}", disable=not progress, leave=False)
        for epoch in bar:
            order = np.random.default_rng((seed, epoch)).permutation(len(task.train))
            losses, correct, correct_ord, nonfinite = [], 0, 0, 0
            for b in range(steps):
                idx = order[b * bs:(b + 1) * bs]
                ((loss, result), grads), run.budget = network.batch_loss(
                    params, task.train.times_of(idx) * scale, task.train.currents[idx], task.train.labels[idx],
                    neuron, T=T, gamma=hp["gamma"], readout_tau=hp["readout_tau"], budget=run.budget, grad=True)
                if not bool(_finite((loss, grads))):
                    nonfinite += 1  # skipped and counted, never hidden (see training.py)
                    continue
                params, opt_state = update(params, opt_state, grads)
                losses.append(float(loss))
                predicted, predicted_ord = network.predict(result)
                correct += int(np.sum(predicted == task.train.labels[idx]))
                correct_ord += int(np.sum(predicted_ord == task.train.labels[idx]))
            seen = steps * bs
            measure(epoch, {"epoch": epoch, "loss": float(np.mean(losses)) if losses else math.nan,
                            "acc": correct / seen, "acc_ord": correct_ord / seen, "n_nonfinite": nonfinite})
            bar.set_postfix(val_acc=f"{run.history[-1]['val_acc']:.2f}")
        bar.close()
    except network.EventBudgetError as err:
        run.failed = f"{type(err).__name__}: {err}"
        logger.warning("%s run (seed %d) failed: %s", model, seed, err)
    run.silent = np.array(silent) if silent else None
    run.probe_counts = np.array(probes) if probes else None
    if run.best_params is None and not run.failed:
        run.best_params = params
    run.seconds = time.perf_counter() - t0
    return run


def test_scores(task, run):
    """Score a run's selected parameters once on the test split."""
    if run.best_params is None:
        return {"acc": math.nan, "acc_ord": math.nan, "loss": math.nan}
    neuron, scale, T = _engine(task, run.hp, run.model)
    try:
        metrics, run.budget = _evaluate(run.best_params, task.test, neuron, scale, T, run.hp, run.budget)
    except network.EventBudgetError as err:
        run.failed = f"test: {err}"
        return {"acc": math.nan, "acc_ord": math.nan, "loss": math.nan}
    return {k: metrics[k] for k in ("acc", "acc_ord", "loss")}


# ---------------------------------------------------------------------------------
# Landscape measurements
# ---------------------------------------------------------------------------------
class _SliceProbe:
    """Loss (and gradient) of fixed training batches at shifted parameters."""

    def __init__(self, task, run, n_batches):
        self.task, self.run, self.hp = task, run, run.hp
        self.neuron, self.scale, self.T = _engine(task, run.hp, run.model)
        bs = int(run.hp["batch_size"])
        n = min(len(task.train), n_batches * bs)
        self.batches = [idx for idx, _ in _batches(n, bs)]
        self.evaluations = 0

    def __call__(self, params, *, grad=False):
        """Mean loss over the batches (NaN when the event budget overflows), and gradient."""
        total, grads = 0.0, None
        try:
            for idx in self.batches:
                out, self.run.budget = network.batch_loss(
                    params, self.task.train.times_of(idx) * self.scale, self.task.train.currents[idx],
                    self.task.train.labels[idx], self.neuron, T=self.T, gamma=self.hp["gamma"],
                    readout_tau=self.hp["readout_tau"], budget=self.run.budget, grad=grad)
                self.evaluations += 1
                if grad:
                    (value, _), g = out
                    g = landscape.flatten(g)
                    grads = g if grads is None else grads + g
                else:
                    value = out[0]
                total += float(value)
        except network.EventBudgetError:
            return (math.nan, None) if grad else math.nan
        n = len(self.batches)
        return (total / n, grads / n) if grad else total / n

    def spikes(self, params, n_trials):
        """Hidden spike times, sources and counts of the first ``n_trials`` training trials."""
        bs = int(self.hp["batch_size"])
        times, sources, counts = [], [], []
        for idx, n_real in _batches(min(n_trials, len(self.task.train)), bs):
            (_, result), self.run.budget = network.batch_loss(
                params, self.task.train.times_of(idx) * self.scale, self.task.train.currents[idx],
                self.task.train.labels[idx], self.neuron, T=self.T, gamma=self.hp["gamma"],
                readout_tau=self.hp["readout_tau"], budget=self.run.budget)
            times.extend(np.asarray(result.spike_times[0])[:n_real])
            sources.extend(np.asarray(result.spike_sources[0])[:n_real])
            counts.append(np.asarray(result.spike_counts[0])[:n_real])
        return times, sources, np.concatenate(counts)


def measure_landscape(task, run, settings, *, progress=False):
    """Slices, gradient stability and perturbation stability at ``run.best_params``.

    Returns
    -------
    dict
        ``alphas``, ``loss_1d``, ``cosines`` (neighbouring gradients),
        ``fragmentation_1d``, ``grid`` (``points_2d`` squared losses),
        ``fragmentation_2d``, ``minibatch`` (:func:`landscape.minibatch_gradient_stats`)
        and ``perturbation`` (spike changes per trial, inside vs at the trial end).
    """
    params = run.best_params
    probe = _SliceProbe(task, run, settings["slice_batches"])
    radius = float(settings["radius"])
    d1 = landscape.norm_scaled_direction(params, settings["seed"])
    d2 = landscape.norm_scaled_direction(params, settings["seed"] + 1)
    alphas = np.linspace(-radius, radius, settings["points_1d"])
    losses, grads = [], []
    for a in tqdm(alphas, desc=f"{run.model} 1-D slice", disable=not progress, leave=False):
        value, g = probe(landscape.along(params, [d1], [a]), grad=True)
        losses.append(value)
        grads.append(g)
    cosines = np.array([landscape.cosine_similarity(a, b) if a is not None and b is not None else math.nan
                        for a, b in zip(grads[:-1], grads[1:])])
    frag = landscape.slice_fragmentation(alphas, np.array(losses), k=settings["jump_k"],
                                         refine=lambda a: probe(landscape.along(params, [d1], [a])),
                                         n_refine=settings["n_refine"])
    axis = np.linspace(-radius, radius, settings["points_2d"])
    grid = np.full((len(axis), len(axis)), math.nan)
    cells = [(i, j) for i in range(len(axis)) for j in range(len(axis))]
    for i, j in tqdm(cells, desc=f"{run.model} 2-D slice", disable=not progress, leave=False):
        grid[i, j] = probe(landscape.along(params, [d1, d2], [axis[j], axis[i]]))
    frag2 = landscape.grid_fragmentation(grid, k=settings["jump_k"])
    minibatch = _minibatch_gradients(task, run, settings["minibatches"])
    perturbation = _perturbation_changes(probe, params, settings)
    frag.pop("result")
    return {"alphas": alphas, "loss_1d": np.array(losses), "cosines": cosines, "fragmentation_1d": frag,
            "axis_2d": axis, "grid": grid, "fragmentation_2d": frag2, "minibatch": minibatch,
            "perturbation": perturbation, "evaluations": probe.evaluations}


def _minibatch_gradients(task, run, n_minibatches):
    """Gradients of ``n_minibatches`` random training minibatches at the selected parameters."""
    neuron, scale, T = _engine(task, run.hp, run.model)
    bs = min(int(run.hp["batch_size"]), len(task.train))
    rng = np.random.default_rng(12345)
    grads = []
    for _ in range(n_minibatches):
        idx = rng.choice(len(task.train), bs, replace=False)
        try:
            (_, g), run.budget = network.batch_loss(
                run.best_params, task.train.times_of(idx) * scale, task.train.currents[idx], task.train.labels[idx],
                neuron, T=T, gamma=run.hp["gamma"], readout_tau=run.hp["readout_tau"], budget=run.budget, grad=True)
        except network.EventBudgetError:
            continue
        grads.append(landscape.flatten(g))
    return landscape.minibatch_gradient_stats(grads)


def _perturbation_changes(probe, params, settings):
    """Hidden spikes that (dis)appear under small norm-scaled weight perturbations."""
    n_trials = int(settings["probe_trials"])
    try:
        base_times, base_sources, base_counts = probe.spikes(params, n_trials)
    except network.EventBudgetError:
        return {}
    totals = {"n_before": 0, "appeared_inside": 0, "disappeared_inside": 0, "appeared_end": 0,
              "disappeared_end": 0}
    count_shares = []
    for p in range(settings["n_perturbations"]):
        direction = landscape.norm_scaled_direction(params, settings["seed"] + 100 + p)
        moved = landscape.along(params, [direction], [settings["perturbation"]])
        try:
            times, sources, counts = probe.spikes(moved, n_trials)
        except network.EventBudgetError:
            continue
        for ta, sa, tb, sb in zip(base_times, base_sources, times, sources):
            for key, value in landscape.spike_changes(ta, sa, tb, sb, probe.T).items():
                totals[key] += value
        count_shares.append(landscape.count_changes(base_counts, counts)["share"])
    n = max(totals["n_before"], 1)
    return {
        "inside_share": (totals["appeared_inside"] + totals["disappeared_inside"]) / n,
        "end_share": (totals["appeared_end"] + totals["disappeared_end"]) / n,
        "count_share": float(np.mean(count_shares)) if count_shares else math.nan,
        **totals,
    }


# ---------------------------------------------------------------------------------
# Per-run summaries
# ---------------------------------------------------------------------------------
def _chance(task):
    return float(np.max(np.bincount(task.test.labels)) / len(task.test))


def run_metrics(run, task, settings):
    """The per-seed numbers of a final run (test scores, silence, convergence, drift)."""
    out = {"model": run.model, "seed": run.seed, "test_acc": run.test.get("acc", math.nan),
           "test_acc_ord": run.test.get("acc_ord", math.nan), "best_epoch": run.best_epoch,
           "val_acc_ord_best": run.best_score if math.isfinite(run.best_score) else math.nan,
           "n_nonfinite": int(sum(r.get("n_nonfinite", 0) for r in run.history)),
           "seconds": run.seconds, "failed": run.failed or ""}
    trained = [r for r in run.history if r["epoch"] > 0]
    val = [r["val_acc"] for r in trained]
    fraction = settings["convergence_fraction"]
    out["epochs_to_90"] = landscape.epochs_to_fraction(val, fraction)
    out["epochs_to_90_above_chance"] = landscape.epochs_to_fraction(val, fraction, baseline=1.0 / task.n_classes)
    if run.silent is not None and len(run.silent):
        out["silent_init"] = float(np.mean(run.silent[0]))
        out["silent_final"] = float(np.mean(run.silent[-1]))
        out["silent_max"] = float(np.max(np.mean(run.silent, axis=1)))
        # Epoch 0 (the untrained network) is excluded: silent "from some epoch of training".
        out["permanently_silent"] = float(np.mean(landscape.permanently_silent(
            run.silent[1:], min_epochs=min(settings["permanent_min_epochs"], max(len(run.silent) - 1, 1)))))
    if run.probe_counts is not None and len(run.probe_counts) > 2:
        # Drift between consecutive trained epochs (the first step from the random
        # initialisation is excluded: it changes everything for both models).
        changes = [landscape.count_changes(a, b) for a, b in zip(run.probe_counts[1:-1], run.probe_counts[2:])]
        out["epoch_drift_share"] = float(np.mean([c["share"] for c in changes]))
        out["epoch_drift_sets"] = float(np.mean([c["changed_sets"] for c in changes]))
    return out


# ---------------------------------------------------------------------------------
# Report
# ---------------------------------------------------------------------------------
#: Report rows: (key, label, better direction: +1 higher is better, -1 lower, 0 neutral, source).
ROWS = [
    ("test_acc", "test accuracy (acc, pseudospikes allowed)", +1, "seeds"),
    ("test_acc_ord", "test accuracy acc_ord (ordinary spikes only)", +1, "seeds"),
    ("n_jumps_1d", "1-D slice: jumps (confirmed by refinement)", -1, "slice"),
    ("tv_total_1d", "1-D slice: total variation", 0, "slice"),
    ("jump_share_1d", "1-D slice: share of total variation in jumps", -1, "slice"),
    ("jump_edge_share_2d", "2-D slice: share of grid edges that jump", -1, "slice"),
    ("jump_share_2d", "2-D slice: share of total variation in jumps", -1, "slice"),
    ("cosine_median", "gradient cosine, neighbouring slice points (median)", +1, "slice"),
    ("cosine_low_share", "share of neighbouring slice points with cosine < 0.5", -1, "slice"),
    ("minibatch_relative_variance", "minibatch gradient variance / squared mean", -1, "slice"),
    ("minibatch_cosine", "mean cosine between minibatch gradients", +1, "slice"),
    ("minibatch_zero_share", "minibatches with an exactly zero gradient", -1, "slice"),
    ("silent_init", "silent fraction of hidden neurons at initialisation", 0, "seeds"),
    ("silent_final", "silent fraction after training", -1, "seeds"),
    ("permanently_silent", "permanently silent hidden neurons", -1, "seeds"),
    ("epochs_to_90", "epochs to 90 % of final validation accuracy", -1, "seeds"),
    ("epochs_to_90_above_chance", "epochs to 90 % of final validation gain over chance", -1, "seeds"),
    ("epoch_drift_share", "hidden spikes (dis)appearing between epochs / spikes", -1, "seeds"),
    ("epoch_drift_sets", "trial x neuron pairs switching silent <-> firing between epochs", -1, "seeds"),
    ("perturb_inside_share", "spikes (dis)appearing inside the trial under 1e-3 perturbation", -1, "slice"),
    ("perturb_end_share", "spikes (dis)appearing at the trial end under 1e-3 perturbation", 0, "slice"),
    ("n_nonfinite", "skipped steps with non-finite gradients", -1, "seeds"),
]


def slice_metrics(measured):
    """Flatten a :func:`measure_landscape` result into report rows."""
    f1, f2, mb = measured["fragmentation_1d"], measured["fragmentation_2d"], measured["minibatch"]
    cos = measured["cosines"][np.isfinite(measured["cosines"])]
    pert = measured["perturbation"]
    return {
        "n_jumps_1d": f1["n_jumps"], "tv_total_1d": f1["tv_total"], "tv_jump_1d": f1["tv_jump"],
        "tv_smooth_1d": f1["tv_smooth"], "jump_share_1d": f1["jump_share"],
        "jump_edge_share_2d": f2["jump_edge_share"], "tv_total_2d": f2["tv_total"], "jump_share_2d": f2["jump_share"],
        "cosine_median": float(np.median(cos)) if cos.size else math.nan,
        "cosine_mean": float(np.mean(cos)) if cos.size else math.nan,
        "cosine_low_share": float(np.mean(cos < 0.5)) if cos.size else math.nan,
        "minibatch_relative_variance": mb["relative_variance"], "minibatch_cosine": mb["mean_pairwise_cosine"],
        "minibatch_zero_share": mb.get("zero_share", math.nan),
        "perturb_inside_share": pert.get("inside_share", math.nan),
        "perturb_end_share": pert.get("end_share", math.nan),
        "perturb_spikes": pert.get("n_before", 0),
    }


def _fmt(value):
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "n/a"
    if isinstance(value, (int, np.integer)) or float(value).is_integer() and abs(value) >= 1:
        return f"{value:.0f}" if abs(value) < 1e6 else f"{value:.3g}"
    return f"{value:.3g}" if abs(value) < 1e-2 or abs(value) >= 1e3 else f"{value:.3f}"


def _stats(values):
    values = np.asarray([v for v in values if v is not None and np.isfinite(v)], dtype=float)
    if values.size == 0:
        return math.nan, math.nan, 0
    return float(values.mean()), float(values.std(ddof=1)) if values.size > 1 else math.nan, int(values.size)


def _cell(values):
    mean, std, n = _stats(values)
    if n == 0:
        return "n/a"
    return _fmt(mean) if n == 1 or math.isnan(std) else f"{_fmt(mean)} ± {_fmt(std)}"


def verdict(label, direction, qif, lif, source):
    """One honest sentence-level judgement of a metric (QIF vs LIF).

    Per-seed metrics count as a difference only when the means differ by more than
    the larger of the two seed standard deviations; single-slice metrics are stated
    as measured on one slice, without a spread.
    """
    (mq, sq, nq), (ml, sl, nl) = _stats(qif), _stats(lif)
    values = f"QIF {_fmt(mq)}" + (f" ± {_fmt(sq)}" if nq > 1 else "") + f", LIF {_fmt(ml)}" + (
        f" ± {_fmt(sl)}" if nl > 1 else "")
    if nq == 0 or nl == 0:
        return f"**{label}**: not measured for both models ({values})."
    if direction == 0:
        return f"**{label}**: {values}; descriptive, no better direction."
    margin = max(np.nan_to_num(sq), np.nan_to_num(sl)) if source == "seeds" else 0.0
    diff = (mq - ml) * direction
    tolerance = max(margin, 1e-12 * max(abs(mq), abs(ml), 1.0))
    basis = (f"over {min(nq, nl)} seeds" if source == "seeds" else
             "one slice through the selected network of the first seed, no spread estimate")
    if abs(mq - ml) <= tolerance:
        tail = "within the seed spread" if source == "seeds" and margin > 0 else "equal"
        return f"**{label}**: {values} ({basis}): no difference ({tail}); QIF does not win here."
    if diff > 0:
        return f"**{label}**: {values} ({basis}): QIF is better."
    return f"**{label}**: {values} ({basis}): LIF is better; QIF does not win here."


def _table(metrics):
    lines = ["| metric | QIF | LIF |", "|---|---|---|"]
    for key, label, _, _ in ROWS:
        lines.append(f"| {label} | {_cell(metrics['qif'].get(key, []))} | {_cell(metrics['lif'].get(key, []))} |")
    return "\n".join(lines)


def _hp_line(hp):
    keys = ("learning_rate", "tau", "weight_scale", "hidden_size", "weight_decay", "bias")
    return ", ".join(f"{k} {_fmt(hp[k]) if not isinstance(hp[k], int) else hp[k]}" for k in keys)


def write_report(out, config, task, search, selected, runs, slices, measured, elapsed):
    """Write ``report.md``, ``summary.json`` and the CSV files; return their paths."""
    metrics = {m: {} for m in MODELS}
    for row in runs:
        for key, value in row.items():
            if isinstance(value, (int, float, np.integer, np.floating)) and key != "seed":
                metrics[row["model"]].setdefault(key, []).append(float(value))
    for model in MODELS:
        for key, value in slices.get(model, {}).items():
            metrics[model][key] = [float(value)]
    pd.DataFrame(search).to_csv(out / "search.csv", index=False)
    pd.DataFrame(runs).to_csv(out / "runs.csv", index=False)
    lines = [
        f"# LIF vs QIF: {task.name}{' (quick mode)' if config['quick'] else ''}", "",
        f"Controlled comparison after arXiv:2606.03935 (identical architecture, input, readout, search budget, "
        f"seeds and splits; only the neuron model differs). Configuration `{config['source']}`"
        f"{' with its quick overrides' if config['quick'] else ''}; generated "
        f"{datetime.datetime.now().strftime('%Y-%m-%d %H:%M')} on {platform.node() or 'unknown host'} "
        f"({os.cpu_count()} CPUs) in {elapsed / 60:.1f} min.", "",
        f"**Data**: {task.description}. Chance level (majority class of the test split): {_chance(task):.3f}.", "",
        f"**Search**: {config['search']['n_candidates']} random candidates per model (the same list for both), "
        f"{config['search']['epochs']} epochs each, scored on the validation split (acc_ord). "
        f"**Final**: the selected candidate of each model retrained with seeds {config['final']['seeds']} for "
        f"{config['final']['epochs']} epochs; the best validation epoch is scored once on the test split.", "",
        "Selected hyper-parameters (time constant in " + task.time_unit + "):", "",
    ]
    for model in MODELS:
        lines.append(f"* {model.upper()}: {_hp_line(selected[model])}")
    lines += ["", "## Comparison", "",
              "Mean ± std over seeds for per-seed rows; landscape, gradient and perturbation rows are measured "
              "once, at the selected parameters of the first seed (definitions in `bci_qif/landscape.py`).", "",
              _table(metrics), ""]
    failures = [f"{r['model']} seed {r['seed']}: {r['failed']}" for r in runs if r.get("failed")]
    if failures:
        lines += ["**Failed runs** (excluded from the means): " + "; ".join(failures), ""]
    lines += ["## Verdicts", ""]
    for key, label, direction, source in ROWS:
        lines.append("* " + verdict(label, direction, metrics["qif"].get(key, []), metrics["lif"].get(key, []),
                                    source))
    lines += ["", "## Figures", "",
              "![1-D loss slices](loss_slices_1d.png)", "", "![2-D loss slices](loss_slices_2d.png)", "",
              "![Silent fraction over training](silence_curves.png)", "",
              "![Accuracy over training](accuracy_curves.png)", "",
              "## Definitions", "",
              f"* Slices: loss on {config['landscape']['slice_batches']} fixed training minibatch(es) along "
              f"norm-scaled random directions (each neuron's weight row rescaled to its own norm), "
              f"alpha in [-{config['landscape']['radius']}, {config['landscape']['radius']}], "
              f"{config['landscape']['points_1d']} points (1-D) and {config['landscape']['points_2d']}^2 (2-D).",
              f"* Jump: a step above {config['landscape']['jump_k']} x the local median step that keeps >= 75 % "
              f"of its height through {config['landscape']['n_refine']} bisections (a smooth step halves); 2-D "
              "edges use the threshold test only.",
              "* Permanently silent: no ordinary spike on the whole training set at every evaluation from some "
              f"epoch to the end, for at least {config['landscape']['permanent_min_epochs']} epochs.",
              "* Perturbation: each neuron's weights moved by "
              f"{config['landscape']['perturbation']:g} of their norm along {config['landscape']['n_perturbations']} "
              "random directions; hidden spikes matched within 1 % of T; unmatched spikes within 1 % of T from "
              "the trial end count as (dis)appearing at the end.",
              "* Readout: the earliest output spike; QIF outputs silent in the trial read out at their first "
              "pseudospike, silent LIF outputs at T (no gradient), and a tie of silent outputs goes to the first "
              "class, so `acc` of a silent LIF network is the share of that class; `acc_ord` counts ordinary "
              "spikes only.", ""]
    (out / "report.md").write_text("\n".join(lines))
    summary = {"task": task.name, "quick": config["quick"], "config": config, "selected": selected,
               "metrics": {m: {k: _stats(v)[:2] for k, v in metrics[m].items()} for m in MODELS},
               "slices": {m: {k: v for k, v in measured[m].items() if k in ("fragmentation_1d", "fragmentation_2d",
                                                                               "minibatch", "perturbation")}
                          for m in measured},
               "elapsed_s": elapsed}
    (out / "summary.json").write_text(json.dumps(summary, indent=2, default=_json_default))
    return metrics


def _json_default(value):
    if isinstance(value, (np.integer,)):
        return int(value)
    if isinstance(value, (np.floating,)):
        return float(value)
    if isinstance(value, np.ndarray):
        return value.tolist()
    return str(value)


# ---------------------------------------------------------------------------------
# Figures
# ---------------------------------------------------------------------------------
COLORS = {"qif": "tab:blue", "lif": "tab:orange"}


def _figure(*args, **kwargs):
    from matplotlib.figure import Figure

    return Figure(*args, **kwargs)


def plot_slices_1d(measured, path):
    """Loss along the 1-D slice (jumps marked) and neighbouring-gradient cosines."""
    fig = _figure(figsize=(10, 6), layout="constrained")
    axes = fig.subplots(2, len(measured), squeeze=False, sharex=True)
    for col, (model, m) in enumerate(measured.items()):
        ax = axes[0, col]
        ax.plot(m["alphas"], m["loss_1d"], ".-", color=COLORS.get(model))
        for x in m["fragmentation_1d"]["jump_positions"]:
            ax.axvline(x, color="red", alpha=0.4, lw=1)
        ax.set_title(f"{model.upper()}: {m['fragmentation_1d']['n_jumps']} jumps, "
                     f"{100 * m['fragmentation_1d']['jump_share']:.0f} % of TV in jumps")
        ax.set_ylabel("loss")
        mid = 0.5 * (m["alphas"][1:] + m["alphas"][:-1])
        axes[1, col].plot(mid, m["cosines"], ".-", color=COLORS.get(model))
        axes[1, col].set_ylim(-1.05, 1.05)
        axes[1, col].set_ylabel("cos(grad_i, grad_i+1)")
        axes[1, col].set_xlabel("alpha (norm-scaled direction)")
    fig.savefig(path, dpi=110)


def plot_slices_2d(measured, path):
    """Heat maps of the loss on the 2-D slice."""
    fig = _figure(figsize=(5 * len(measured), 4.2), layout="constrained")
    axes = fig.subplots(1, len(measured), squeeze=False)[0]
    for ax, (model, m) in zip(axes, measured.items()):
        a = m["axis_2d"]
        grid = np.asarray(m["grid"], dtype=float)
        finite = grid[np.isfinite(grid)]
        # A pseudospike loss can grow a hundredfold towards one corner; on a linear
        # scale that corner would leave the rest of the map in one colour.
        log_scale = finite.size > 0 and finite.min() > 0 and finite.max() > 10 * finite.min()
        image = ax.imshow(grid, origin="lower", extent=(a[0], a[-1], a[0], a[-1]), aspect="auto",
                          cmap="viridis", interpolation="nearest", norm="log" if log_scale else None)
        fig.colorbar(image, ax=ax, label="loss (log scale)" if log_scale else "loss")
        ax.set_title(f"{model.upper()}: {100 * m['fragmentation_2d']['jump_edge_share']:.0f} % of edges jump")
        ax.set_xlabel("alpha (direction 1)")
        ax.set_ylabel("beta (direction 2)")
    fig.savefig(path, dpi=110)


def _curves(runs, key):
    """(epochs, mean, std) of a history column over seeds (runs of different length are cut)."""
    series = [[r.get(key, math.nan) for r in run.history] for run in runs if run.history]
    if not series:
        return None
    n = min(len(s) for s in series)
    data = np.array([s[:n] for s in series], dtype=float)
    epochs = np.array([r["epoch"] for r in runs[0].history[:n]])
    return epochs, np.nanmean(data, axis=0), np.nanstd(data, axis=0)


def plot_silence(final_runs, path):
    """Silent fraction of hidden neurons on the whole training set over training."""
    fig = _figure(figsize=(6.5, 4), layout="constrained")
    ax = fig.subplots()
    for model, runs in final_runs.items():
        curve = _curves(runs, "silent_fraction")
        if curve is None:
            continue
        epochs, mean, std = curve
        ax.plot(epochs, mean, "o-", color=COLORS.get(model), label=model.upper())
        ax.fill_between(epochs, mean - std, mean + std, color=COLORS.get(model), alpha=0.2)
    ax.set_xlabel("epoch (0 = initialisation)")
    ax.set_ylabel("silent fraction (whole training set)")
    ax.set_ylim(-0.02, 1.02)
    ax.legend()
    fig.savefig(path, dpi=110)


def plot_accuracy(final_runs, path):
    """Training and validation accuracy (acc and acc_ord) over training."""
    fig = _figure(figsize=(11, 4), layout="constrained")
    axes = fig.subplots(1, 2)
    for ax, (key, title) in zip(axes, (("acc", "acc (pseudospikes allowed)"), ("acc_ord", "acc_ord"))):
        for model, runs in final_runs.items():
            for prefix, style in (("", "--"), ("val_", "-")):
                curve = _curves(runs, prefix + key)
                if curve is None:
                    continue
                epochs, mean, std = curve
                ax.plot(epochs, mean, style, color=COLORS.get(model),
                        label=f"{model.upper()} {'validation' if prefix else 'training'}")
                ax.fill_between(epochs, mean - std, mean + std, color=COLORS.get(model), alpha=0.15)
        ax.set_title(title)
        ax.set_xlabel("epoch")
        ax.set_ylabel("accuracy")
        ax.legend(fontsize=8)
    fig.savefig(path, dpi=110)


# ---------------------------------------------------------------------------------
# Orchestration
# ---------------------------------------------------------------------------------
def _search(task, config, candidates, model, budgets, progress):
    rows, best = [], None
    bar = tqdm(list(enumerate(candidates)), desc=f"search {model}", disable=not progress)
    for index, hp in bar:
        run = train_run(task, model, hp, config["search"]["seed"], config["search"]["epochs"],
                        budget=budgets.get((model, hp["hidden_size"])))
        budgets[(model, hp["hidden_size"])] = run.budget
        row = {"model": model, "candidate": index, **{k: hp[k] for k in SEARCHABLE},
               "val_score": run.best_score if math.isfinite(run.best_score) else math.nan,
               "val_acc": max((r["val_acc"] for r in run.history), default=math.nan),
               "val_acc_ord": max((r["val_acc_ord"] for r in run.history), default=math.nan),
               "seconds": run.seconds, "failed": run.failed or ""}
        rows.append(row)
        if not run.failed and (best is None or run.best_score > best[0]):
            best = (run.best_score, index)
    if best is None:
        raise network.EventBudgetError(f"every {model} search candidate failed; see search.csv")
    return rows, candidates[best[1]]


def run_compare(config_path, *, quick=False, data_dir=None, out=None, progress=True):
    """Run the whole study and write the report.

    Parameters
    ----------
    config_path : str or Path
        Study configuration (``configs/compare_<task>.yaml``).
    quick : bool
        Apply the configuration's ``quick`` overrides (CI-sized run).
    data_dir : str or Path, optional
        Data root (EEG: folder holding ``MNE-eegbci-data/``; SHD: relative file paths
        are read from it). Default ``$MNE_DATA``.
    out : str or Path, optional
        Output folder (default ``results/compare_<task>[_quick]``).
    progress : bool
        Show progress bars.

    Returns
    -------
    dict
        ``out`` (folder), ``files`` (written paths), ``metrics`` (per model, per row,
        the list of measured values) and ``selected`` (hyper-parameters).
    """
    t0 = time.perf_counter()
    config = load_compare_config(config_path, quick=quick)
    out = Path(out or Path("results") / f"compare_{config['task']}{'_quick' if quick else ''}")
    out.mkdir(parents=True, exist_ok=True)
    task = load_task(config, data_dir)
    logger.info("task %s: %d/%d/%d trials", task.name, len(task.train), len(task.val), len(task.test))
    candidates = sample_candidates(config)
    settings = config["landscape"]
    search_rows, selected, final_runs, run_rows, measured, slices = [], {}, {}, [], {}, {}
    budgets = {}  # event budget per (model, hidden size), grown across runs to reuse compilations
    for model in MODELS:
        rows, selected[model] = _search(task, config, candidates, model, budgets, progress)
        search_rows += rows
        final_runs[model] = []
        key = (model, selected[model]["hidden_size"])
        for seed in tqdm(config["final"]["seeds"], desc=f"final {model}", disable=not progress):
            run = train_run(task, model, selected[model], seed, config["final"]["epochs"], track=True,
                            probe_trials=settings["probe_trials"], budget=budgets.get(key), progress=progress)
            budgets[key] = run.budget
            run.test = test_scores(task, run)
            final_runs[model].append(run)
            run_rows.append(run_metrics(run, task, settings))
        first = next((r for r in final_runs[model] if r.best_params is not None), None)
        if first is not None:
            measured[model] = measure_landscape(task, first, settings, progress=progress)
            slices[model] = slice_metrics(measured[model])
    history = [dict(r, model=run.model, seed=run.seed) for m in MODELS for run in final_runs[m] for r in run.history]
    pd.DataFrame(history).to_csv(out / "history.csv", index=False)
    plot_slices_1d(measured, out / "loss_slices_1d.png")
    plot_slices_2d(measured, out / "loss_slices_2d.png")
    plot_silence(final_runs, out / "silence_curves.png")
    plot_accuracy(final_runs, out / "accuracy_curves.png")
    metrics = write_report(out, config, task, search_rows, selected, run_rows, slices, measured,
                           time.perf_counter() - t0)
    return {"out": out, "files": [out / name for name in OUTPUT_FILES], "metrics": metrics, "selected": selected}
