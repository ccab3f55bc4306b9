"""Run configurations: YAML files with a dataset, preprocessing, model, training and evaluation.

A configuration has six sections, all optional (defaults below)::

    dataset:        {task: left_right_imagery, subjects: all}
    preprocessing:  keys of bci_qif.preprocessing.PreprocessingConfig
    model:          constructor arguments of bci_qif.QIFClassifier
    training:       {validation_fraction: 0.2}
    fine_tuning:    {epochs: 20, learning_rate: 0.003, pretrained_model: {}}
                    (the qif_finetuned pipeline; epochs 0: the pretrained networks as they
                     are, aligned to the user; pretrained_model: keys of ``model`` that the
                     networks pretrained on the other subjects use instead)
    evaluation:     {protocol: within-subject, n_splits: 5, pipelines: [...], seed: 42,
                     n_calibration: 0}

Unknown sections or keys and wrong values raise :class:`bci_qif.errors.ConfigError`
naming the key, so a typo never silently falls back to a default.
"""

from __future__ import annotations

import copy
import inspect
from pathlib import Path

import yaml

from .errors import ConfigError
from .preprocessing import PreprocessingConfig
from .protocols import PROTOCOLS

__all__ = ["load_config", "validate_config", "DEFAULTS", "PIPELINE_NAMES"]

PIPELINE_NAMES = ("qif", "lif", "qif_finetuned", "csp_lda", "ts_lr", "ts_lr_recentered", "ts_lr_halves_recentered",
                  "mdm")

DEFAULTS = {
    "dataset": {"task": "left_right_imagery", "subjects": "all"},
    "preprocessing": {},
    "model": {},
    "training": {},
    "fine_tuning": {"epochs": 20, "learning_rate": 3e-3, "pretrained_model": {}},
    "evaluation": {
        "protocol": "within-subject",
        "n_splits": 5,
        "n_calibration": 0,
        "pipelines": ["qif", "lif", "csp_lda", "ts_lr", "mdm"],
        "seed": 42,
    },
}


def _model_keys():
    from .estimator import QIFClassifier

    return set(inspect.signature(QIFClassifier.__init__).parameters) - {"self"}


def _check_keys(section, given, allowed):
    unknown = sorted(set(given) - set(allowed))
    if unknown:
        raise ConfigError(f"unknown key(s) {unknown} in section '{section}'; allowed: {sorted(allowed)}")


def _is_int(value):
    # Plain Python ints only (not bci_qif.validation.is_integer, which takes NumPy's too): a configuration
    # holds what YAML and JSON can write back (cache keys, saved settings).
    return isinstance(value, int) and not isinstance(value, bool)


def _is_number(value):
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _check_values(section, values):
    """Type and range checks of the model / training values that are present."""
    from .encoding import ENCODERS

    choices = {"neuron": ("qif", "lif"), "encoding": tuple(ENCODERS), "dtype": ("float32", "float64"),
               "scale": ("feature", "common"), "optimizer": ("adam", "sgd")}
    positive_ints = ("epochs", "batch_size", "n_members", "n_segments")
    positive_numbers = ("tau", "rate_hz", "input_gain", "learning_rate", "readout_tau")
    non_negative_numbers = ("weight_scale", "weight_decay", "gamma", "late_penalty", "input_noise")

    def fail(key, what):
        raise ConfigError(f"{section}.{key} must be {what}, got {values[key]!r}")

    for key, value in values.items():
        if key in choices and value not in choices[key]:
            fail(key, f"one of {list(choices[key])}")
        if key in positive_ints and not (_is_int(value) and value >= 1):
            fail(key, "a positive integer")
        if key in positive_numbers and not (_is_number(value) and value > 0):
            fail(key, "a positive number")
        if key in non_negative_numbers and not (_is_number(value) and value >= 0):
            fail(key, "a non-negative number")
        if key == "bias" and not _is_number(value):
            fail(key, "a number")
        if key == "hidden_layer_sizes":
            sizes = value if isinstance(value, (list, tuple)) else [value]
            if not sizes or not all(_is_int(n) and n >= 1 for n in sizes):
                fail(key, "a positive integer or a non-empty list of them")
        if key == "grad_clip" and value is not None and not (_is_number(value) and value > 0):
            fail(key, "a positive number or null")
        if key == "patience" and value is not None and not (_is_int(value) and value >= 1):
            fail(key, "a positive integer or null")
        if key == "sfreq" and value is not None and not (_is_number(value) and value > 0):
            fail(key, "a positive number or null")
        if key == "validation_fraction" and not (_is_number(value) and 0 <= value < 1):
            fail(key, "a number in [0, 1)")
        if key == "random_state" and not _is_int(value):
            fail(key, "an integer")
        if key in ("verbose", "recenter") and not isinstance(value, bool):
            fail(key, "true or false")
        if key == "n_components" and value is not None and not (_is_int(value) and value >= 1):
            fail(key, "a positive integer or null (all tangent-space features)")


def _check_model_settings(section, values):
    """Check QIFClassifier settings (keys and values) in place; YAML's lists of layer sizes become tuples."""
    _check_keys(section, values, _model_keys())
    _check_values(section, values)
    if isinstance(values.get("hidden_layer_sizes"), list):
        values["hidden_layer_sizes"] = tuple(values["hidden_layer_sizes"])


def validate_config(config):
    """Check a configuration dict and fill in defaults.

    Parameters
    ----------
    config : dict

    Returns
    -------
    dict
        A new, complete configuration.
    """
    if config is None:
        config = {}
    if not isinstance(config, dict):
        raise ConfigError(f"a configuration must be a mapping, got {type(config).__name__}")
    _check_keys("<top level>", config, DEFAULTS)
    full = copy.deepcopy(DEFAULTS)
    for section, values in config.items():
        if values is None:
            continue
        if not isinstance(values, dict):
            raise ConfigError(f"section '{section}' must be a mapping, got {values!r}")
        full[section].update(values)

    _check_keys("dataset", full["dataset"], {"task", "subjects"})
    from .datasets import EEGBCI_TASKS

    if full["dataset"]["task"] not in EEGBCI_TASKS:
        raise ConfigError(f"dataset.task must be one of {sorted(EEGBCI_TASKS)}, got {full['dataset']['task']!r}")
    subjects = full["dataset"]["subjects"]
    if subjects != "all" and not (isinstance(subjects, list) and subjects
                                  and all(_is_int(s) and 1 <= s <= 109 for s in subjects)):
        raise ConfigError(f"dataset.subjects must be 'all' or a list of EEGMMIDB subject numbers (1-109), "
                          f"got {subjects!r}")

    PreprocessingConfig.from_dict(full["preprocessing"])  # raises ConfigError on bad keys/values
    _check_model_settings("model", full["model"])
    _check_keys("training", full["training"], {"validation_fraction", "patience"})
    _check_values("training", full["training"])
    _check_keys("fine_tuning", full["fine_tuning"], DEFAULTS["fine_tuning"])
    fine_tuning = full["fine_tuning"]
    if not (_is_int(fine_tuning["epochs"]) and fine_tuning["epochs"] >= 0):
        raise ConfigError(f"fine_tuning.epochs must be a non-negative integer (0: no training, the user's trials "
                          f"only align), got {fine_tuning['epochs']!r}")
    _check_values("fine_tuning", {"learning_rate": fine_tuning["learning_rate"]})  # epochs may be 0 here
    # The pretrained networks learn from ~20 times the trials of an own-trials decoder, so they may want other
    # settings; given as overrides of `model`, checked like it.
    overrides = fine_tuning["pretrained_model"]
    if overrides is None:
        overrides = fine_tuning["pretrained_model"] = {}
    if not isinstance(overrides, dict):
        raise ConfigError(f"fine_tuning.pretrained_model must be a mapping of model keys, got {overrides!r}")
    _check_model_settings("fine_tuning.pretrained_model", overrides)
    _check_keys("evaluation", full["evaluation"], DEFAULTS["evaluation"])
    evaluation = full["evaluation"]
    if evaluation["protocol"] not in PROTOCOLS:
        raise ConfigError(f"evaluation.protocol must be one of {list(PROTOCOLS)}, got {evaluation['protocol']!r}")
    if not (isinstance(evaluation["pipelines"], list) and evaluation["pipelines"]):
        raise ConfigError(f"evaluation.pipelines must be a non-empty list, got {evaluation['pipelines']!r}")
    bad = sorted(set(map(str, evaluation["pipelines"])) - set(PIPELINE_NAMES))
    if bad:
        raise ConfigError(f"unknown pipeline(s) {bad}; choose from {list(PIPELINE_NAMES)}")
    for key in ("n_splits", "n_calibration", "seed"):
        if not _is_int(evaluation[key]) or evaluation[key] < 0:
            raise ConfigError(f"evaluation.{key} must be a non-negative integer, got {evaluation[key]!r}")
    if evaluation["n_splits"] < 2:
        raise ConfigError(f"evaluation.n_splits must be at least 2, got {evaluation['n_splits']!r}")
    return full


def load_config(path):
    """Read and validate a YAML configuration file (``None``: the defaults)."""
    if path is None:
        return validate_config({})
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"configuration file {path} does not exist")
    try:
        with open(path) as handle:
            config = yaml.safe_load(handle)
    except yaml.YAMLError as err:
        raise ConfigError(f"{path} is not valid YAML: {err}") from err
    return validate_config(config)
