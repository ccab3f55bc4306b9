"""Run configurations: the shipped YAML files validate; every kind of mistake is a named ConfigError."""

import copy
from pathlib import Path

import pytest
import yaml

from bci_qif.config import DEFAULTS, PIPELINE_NAMES, load_config, validate_config
from bci_qif.errors import ConfigError

CONFIGS = Path(__file__).resolve().parents[1] / "configs"


# --- shipped configurations ----------------------------------------------------------------
@pytest.mark.parametrize("name, neuron", [("default", "qif"), ("lif", "lif")])
def test_shipped_configs_validate(name, neuron):
    config = load_config(CONFIGS / f"{name}.yaml")
    assert config["model"]["neuron"] == neuron
    assert config["dataset"] == {"task": "left_right_imagery", "subjects": "all"}
    assert config["model"]["hidden_layer_sizes"] == (16,)
    assert config["model"]["encoding"] == "tangent_space" and config["model"]["recenter"] is True
    assert set(config["evaluation"]["pipelines"]) <= set(PIPELINE_NAMES)


def test_lif_config_differs_from_default_only_in_the_neuron_and_a_gentler_drive():
    default, lif = (yaml.safe_load((CONFIGS / f"{n}.yaml").read_text()) for n in ("default", "lif"))
    for key in ("learning_rate", "weight_scale"):  # LIF fires ~ I, QIF ~ sqrt(I): lower for LIF
        assert lif["model"][key] < default["model"][key]
        lif["model"][key] = default["model"][key]
    lif["model"]["neuron"] = "qif"
    # The pooled pipeline's pretraining settings were chosen for QIF only; LIF pretrains with its model.
    assert "pretrained_model" not in lif["fine_tuning"]
    del default["fine_tuning"]["pretrained_model"]
    assert lif == default


def test_finetuned_halves_config_differs_from_default_only_in_the_encoding_noise_and_protocol():
    default, halves = (yaml.safe_load((CONFIGS / f"{n}.yaml").read_text()) for n in ("default", "finetuned_halves"))
    config = load_config(CONFIGS / "finetuned_halves.yaml")
    assert config["evaluation"]["protocol"] == "within-subject-pooled"
    assert "qif_finetuned" in config["evaluation"]["pipelines"]
    assert set(config["evaluation"]["pipelines"]) <= set(PIPELINE_NAMES)
    model = halves["model"]
    assert (model["n_segments"], model["scale"], model["input_noise"]) == (2, "common", 0.5)
    for key in ("n_segments", "scale", "input_noise"):
        halves["model"][key] = default["model"][key]
    for key in ("protocol", "pipelines"):
        halves["evaluation"][key] = default["evaluation"][key]
    del default["fine_tuning"]["pretrained_model"]
    assert halves == default


def test_default_pretrains_the_pooled_decoder_as_finetuned_halves_plus_the_late_penalty_and_readout():
    # qif_finetuned's networks: the two-halves decoder with the late penalty and a sharper readout
    # (docs/benchmarks.md, fifteenth and sixteenth sessions); the own-trials decoder keeps `model`.
    default, halves = (load_config(CONFIGS / f"{n}.yaml") for n in ("default", "finetuned_halves"))
    pretrained = dict(default["model"], **default["fine_tuning"]["pretrained_model"])
    assert pretrained == dict(halves["model"], late_penalty=2.0, readout_tau=0.25)
    assert (default["model"]["n_segments"], default["model"]["late_penalty"]) == (1, 0.0)


def test_model_section_builds_an_estimator():
    from bci_qif import QIFClassifier

    config = load_config(CONFIGS / "default.yaml")
    clf = QIFClassifier(**config["model"], **config["training"])
    assert clf.validation_fraction == 0.0 and clf.patience is None
    # The shipped configuration and the estimator's defaults are the same decoder.
    assert clf.get_params() == QIFClassifier().get_params()


def test_defaults_fill_in_and_are_not_mutated():
    before = copy.deepcopy(DEFAULTS)
    config = validate_config({"evaluation": {"n_splits": 3}})
    assert config["evaluation"]["n_splits"] == 3 and config["evaluation"]["protocol"] == "within-subject"
    config["evaluation"]["pipelines"].append("mdm")
    assert DEFAULTS == before
    assert validate_config(None) == validate_config({}) == load_config(None)


def test_empty_file_means_defaults(tmp_path):
    path = tmp_path / "empty.yaml"
    path.write_text("")
    assert load_config(path) == validate_config({})


# --- unknown keys -------------------------------------------------------------------------------
@pytest.mark.parametrize("section, key", [
    ("dataset", "subject"),
    ("preprocessing", "bandpas"),
    ("model", "hiden_layer_sizes"),
    ("training", "early_stopping"),
    ("fine_tuning", "epoch"),
    ("evaluation", "n_split"),
])
def test_unknown_key_in_every_section_is_named(section, key):
    with pytest.raises(ConfigError, match=key):
        validate_config({section: {key: 1}})


def test_unknown_section_is_named():
    with pytest.raises(ConfigError, match="modle"):
        validate_config({"modle": {}})


# --- bad values ----------------------------------------------------------------------------------
@pytest.mark.parametrize("config, match", [
    ({"evaluation": {"protocol": "leave-one-out"}}, "protocol"),
    ({"evaluation": {"pipelines": ["qif", "svm"]}}, "svm"),
    ({"evaluation": {"pipelines": "qif"}}, "pipelines"),
    ({"evaluation": {"pipelines": []}}, "pipelines"),
    ({"evaluation": {"n_splits": 1}}, "n_splits"),
    ({"evaluation": {"n_splits": "5"}}, "n_splits"),
    ({"evaluation": {"seed": -1}}, "seed"),
    ({"evaluation": {"n_calibration": 2.5}}, "n_calibration"),
    ({"dataset": {"subjects": "some"}}, "subjects"),
    ({"dataset": {"subjects": []}}, "subjects"),
    ({"dataset": {"subjects": [1, "two"]}}, "subjects"),
    ({"dataset": {"subjects": [0]}}, "subjects"),
    ({"dataset": {"subjects": [110]}}, "subjects"),
    ({"dataset": {"subjects": 3}}, "subjects"),
    ({"dataset": {"task": "tongue"}}, "task"),
    ({"preprocessing": {"bandpass": [30.0, 8.0]}}, "bandpass"),
    ({"model": {"neuron": "izhikevich"}}, "neuron"),
    ({"model": {"encoding": "wavelets"}}, "encoding"),
    ({"model": {"dtype": "float16"}}, "dtype"),
    ({"model": {"hidden_layer_sizes": [16, 0]}}, "hidden_layer_sizes"),
    ({"model": {"hidden_layer_sizes": "big"}}, "hidden_layer_sizes"),
    ({"model": {"epochs": 0}}, "epochs"),
    ({"model": {"batch_size": 2.5}}, "batch_size"),
    ({"model": {"n_segments": 0}}, "n_segments"),
    ({"model": {"scale": "robust"}}, "scale"),
    ({"model": {"optimizer": "rmsprop"}}, "optimizer"),
    ({"model": {"late_penalty": -1}}, "late_penalty"),
    ({"model": {"learning_rate": "3e-3"}}, "learning_rate"),  # YAML 1.1 reads 3e-3 as a string
    ({"model": {"tau": -0.05}}, "tau"),
    ({"model": {"grad_clip": 0}}, "grad_clip"),
    ({"model": {"random_state": 1.5}}, "random_state"),
    ({"training": {"validation_fraction": 1.0}}, "validation_fraction"),
    ({"training": {"patience": 0}}, "patience"),
    ({"model": [1, 2]}, "model"),
    ({"fine_tuning": {"epochs": -1}}, "fine_tuning.epochs"),
    ({"fine_tuning": {"epochs": 2.5}}, "fine_tuning.epochs"),
    ({"fine_tuning": {"learning_rate": 0}}, "fine_tuning.learning_rate"),
    ({"fine_tuning": {"pretrained_model": {"late_penalty": -1}}}, "fine_tuning.pretrained_model.late_penalty"),
    ({"fine_tuning": {"pretrained_model": {"hiden_layer_sizes": [8]}}}, "hiden_layer_sizes"),
    ({"fine_tuning": {"pretrained_model": [1, 2]}}, "fine_tuning.pretrained_model"),
])
def test_bad_values_are_named(config, match):
    with pytest.raises(ConfigError, match=match):
        validate_config(config)


def test_valid_optional_values_are_accepted():
    config = validate_config({"model": {"hidden_layer_sizes": [32, 16], "grad_clip": None, "patience": None,
                                        "neuron": "lif", "dtype": "float64"},
                              "training": {"validation_fraction": 0.0, "patience": None},
                              "dataset": {"subjects": [1, 109]},
                              "evaluation": {"protocol": "cross-subject", "pipelines": list(PIPELINE_NAMES)}})
    assert config["model"]["hidden_layer_sizes"] == (32, 16)
    pooled = validate_config({"evaluation": {"protocol": "within-subject-pooled"}})
    assert pooled["evaluation"]["protocol"] == "within-subject-pooled"


# --- files ------------------------------------------------------------------------------------------
def test_not_a_mapping():
    with pytest.raises(ConfigError, match="mapping"):
        validate_config(["model"])


def test_invalid_yaml_names_the_file(tmp_path):
    path = tmp_path / "broken.yaml"
    path.write_text("model: {neuron: qif\n  hidden: [")
    with pytest.raises(ConfigError, match="broken.yaml.*not valid YAML"):
        load_config(path)


def test_missing_file_names_the_file(tmp_path):
    with pytest.raises(ConfigError, match="nowhere.yaml.*does not exist"):
        load_config(tmp_path / "nowhere.yaml")


def test_config_error_is_a_value_error():
    assert issubclass(ConfigError, ValueError)
