"""``python app.py train | evaluate`` through :func:`bci_qif.cli.main`, on shared subjects 1 and 2.

A small YAML configuration (16 hidden neurons, batches of 15, 2 epochs, no validation
split) keeps the runs short and shares the compiled simulator with the estimator tests.
"""

import os
import subprocess
import sys
from pathlib import Path

import jax
import numpy as np
import pandas as pd
import pytest
import yaml

from bci_qif import QIFClassifier, cli
from bci_qif.checkpoint import load_checkpoint

REPO = Path(__file__).resolve().parents[1]
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
SMALL_CONFIG = {
    "dataset": {"task": "left_right_imagery", "subjects": [1]},
    "preprocessing": {"bandpass": [8.0, 30.0], "tmin": 0.0, "tmax": 3.0},
    "model": {"neuron": "qif", "hidden_layer_sizes": [16], "batch_size": 15, "readout_tau": 5.0,
              "learning_rate": 0.01, "epochs": 2, "n_members": 2, "random_state": 0},
    "training": {"validation_fraction": 0.0, "patience": None},
    "evaluation": {"protocol": "within-subject", "n_splits": 2, "pipelines": ["qif", "csp_lda"], "seed": 42},
}
TRAIN_FILES = ("checkpoint.npz", "model.npz", "history.csv", "training_curves.png")


def _is_png(path):
    return path.is_file() and path.read_bytes()[:8] == PNG_SIGNATURE


@pytest.fixture(scope="module")
def config_file(tmp_path_factory):
    path = tmp_path_factory.mktemp("config") / "small.yaml"
    path.write_text(yaml.safe_dump(SMALL_CONFIG))
    return path


def _train_args(config_file, out, data_root, *extra):
    return ["train", "--config", str(config_file), "--subjects", "1", "--epochs", "2", "--out", str(out),
            "--data-dir", str(data_root), "--quiet", *extra]


@pytest.fixture(scope="module")
def train_run(config_file, data_root, tmp_path_factory):
    out = tmp_path_factory.mktemp("train")
    code = cli.main(_train_args(config_file, out, data_root))
    return code, out


# --- train -----------------------------------------------------------------------------------
def test_train_writes_every_output(train_run, capsys):
    code, out = train_run
    assert code == 0
    for name in TRAIN_FILES:
        assert (out / name).is_file(), name
    assert _is_png(out / "training_curves.png")
    history = pd.read_csv(out / "history.csv")
    assert list(zip(history["member"], history["epoch"])) == [(0, 1), (0, 2), (1, 1), (1, 2)]
    assert {"loss", "acc", "acc_ord", "silent_fraction", "grad_norm", "n_nonfinite"} <= set(history.columns)
    assert (history["n_nonfinite"] == 0).all()
    _, meta = load_checkpoint(out / "checkpoint.npz")
    assert [member["epoch"] for member in meta["training"]["members"]] == [2, 2]


def test_trained_model_carries_what_a_decoder_needs(train_run):
    _, out = train_run
    model = QIFClassifier.load(out / "model.npz")
    assert model.neuron == "qif" and model.hidden_layer_sizes == (16,) and model.epochs == 2
    assert model.context_["class_names"] == ["left", "right"]
    assert model.context_["subjects"] == [1]
    assert "preprocessing" in model.context_
    assert model.sfreq_ == 160.0 and model.n_channels_ == len(model.ch_names_) == 64


def test_pretrain_trains_the_decoder_that_qif_finetuned_pretrains(data_root, tmp_path):
    # The configuration's fine_tuning.pretrained_model changes the model for the decoder that new users
    # fine-tune; without --pretrain, train keeps the model section.
    # (Settings that keep the compiled simulator of the other tests: a seed and the ensemble size.)
    config = dict(SMALL_CONFIG, fine_tuning={"pretrained_model": {"random_state": 7, "n_members": 1}})
    path = tmp_path / "pretrain.yaml"
    path.write_text(yaml.safe_dump(config))
    assert cli.main(_train_args(path, tmp_path / "run", data_root, "--pretrain")) == 0
    model = QIFClassifier.load(tmp_path / "run" / "model.npz")
    assert (model.random_state, model.n_members, len(model.members_)) == (7, 1, 1)
    assert model.readout_tau == SMALL_CONFIG["model"]["readout_tau"]  # the rest from `model`


def test_fine_tune_adapts_a_trained_model_to_a_new_users_first_trials(train_run, data_root, tmp_path, capsys):
    _, out = train_run
    code = cli.main(["fine-tune", "--model", str(out), "--subjects", "2", "--trials", "10", "--epochs", "2",
                     "--data-dir", str(data_root), "--quiet", "--out", str(tmp_path / "tuned")])
    printed = capsys.readouterr().out
    assert code == 0, printed
    assert "fine-tuned 2 network(s) on 10 trials of subject(s) 2" in printed and "accuracy on these trials" in printed
    tuned, trained = QIFClassifier.load(tmp_path / "tuned" / "model.npz"), QIFClassifier.load(out / "model.npz")
    assert tuned.context_["subjects"] == [1, 2]
    assert tuned.context_["fine_tuned_on"] == {"subjects": [2], "n_trials": 10, "epochs": 2, "learning_rate": 3e-3}
    assert not np.allclose(tuned.encoder_.reference_, trained.encoder_.reference_, atol=0)  # aligned to subject 2
    assert not all(np.allclose(a, b) for a, b in zip(jax.tree_util.tree_leaves(tuned.members_),
                                                     jax.tree_util.tree_leaves(trained.members_)))
    # Too few trials to align a user is a clear error (exit 2), nothing written.
    assert cli.main(["fine-tune", "--model", str(out), "--subjects", "2", "--trials", "1", "--data-dir",
                     str(data_root), "--quiet", "--out", str(tmp_path / "one")]) == 2
    assert "at least 2" in capsys.readouterr().err and not (tmp_path / "one" / "model.npz").exists()


def test_interrupted_train_resumes_to_the_same_model(train_run, config_file, data_root, tmp_path, monkeypatch,
                                                     capsys):
    _, reference = train_run
    real_write = QIFClassifier._write

    def write_then_interrupt(self, checkpoint, *progress):
        real_write(self, checkpoint, *progress)
        raise KeyboardInterrupt  # Ctrl-C right after the first checkpoint

    monkeypatch.setattr(QIFClassifier, "_write", write_then_interrupt)
    assert cli.main(_train_args(config_file, tmp_path, data_root)) == 130
    monkeypatch.undo()
    assert "--resume" in capsys.readouterr().err
    assert [m["epoch"] for m in load_checkpoint(tmp_path / "checkpoint.npz")[1]["training"]["members"]] == [1]
    assert not (tmp_path / "model.npz").exists()

    assert cli.main(_train_args(config_file, tmp_path, data_root, "--resume")) == 0
    assert list(pd.read_csv(tmp_path / "history.csv")["epoch"]) == [1, 2, 1, 2]  # two members
    resumed, uninterrupted = (QIFClassifier.load(p / "model.npz") for p in (tmp_path, reference))
    assert len(resumed.members_) == len(uninterrupted.members_) == 2
    for a, b in zip(jax.tree_util.tree_leaves(resumed.members_), jax.tree_util.tree_leaves(uninterrupted.members_)):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))


def test_resume_can_extend_a_finished_run(train_run, config_file, data_root, tmp_path):
    _, reference = train_run
    for name in TRAIN_FILES:
        (tmp_path / name).write_bytes((reference / name).read_bytes())
    args = _train_args(config_file, tmp_path, data_root, "--resume")
    args[args.index("--epochs") + 1] = "3"
    assert cli.main(args) == 0
    assert list(pd.read_csv(tmp_path / "history.csv")["epoch"]) == [1, 2, 3, 1, 2, 3]  # both members extended


# --- evaluate --------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def evaluate_run(config_file, data_root, tmp_path_factory):
    out = tmp_path_factory.mktemp("evaluate")
    code = cli.main(["evaluate", "--config", str(config_file), "--subjects", "1", "2",
                     "--pipelines", "qif,csp_lda,ts_lr", "--n-splits", "2", "--out", str(out),
                     "--data-dir", str(data_root), "--quiet"])
    return code, out


def test_evaluate_writes_results_report_and_figures(evaluate_run):
    code, out = evaluate_run
    assert code == 0
    results = pd.read_csv(out / "results.csv")
    required = ["subject", "pipeline", "fold", "accuracy", "balanced_accuracy", "kappa", "roc_auc", "f1",
                "itr_bits_per_min", "acc_ord", "silent_fraction", "window_acc", "window_acc_ord"]
    assert set(required) <= set(results.columns), sorted(set(required) - set(results.columns))
    # One row per subject x pipeline x fold.
    assert len(results) == 2 * 3 * 2
    assert sorted(results.groupby(["subject", "pipeline", "fold"]).size().index.tolist()) == sorted(
        (s, p, f) for s in (1, 2) for p in ("qif", "csp_lda", "ts_lr") for f in (0, 1))
    for column in ("accuracy", "balanced_accuracy", "roc_auc", "f1"):
        assert results[column].between(0, 1).all(), column
    assert results["kappa"].between(-1, 1).all() and (results["itr_bits_per_min"] >= 0).all()
    qif = results[results["pipeline"] == "qif"]
    assert qif["acc_ord"].between(0, 1).all() and qif["silent_fraction"].between(0, 1).all()
    # 2 s sliding windows (what the GUI decodes) are scored for the spiking pipeline only.
    assert qif["window_acc"].between(0, 1).all() and qif["window_acc_ord"].between(0, 1).all()
    assert results.loc[results["pipeline"] != "qif", "window_acc"].isna().all()

    report = (out / "report.md").read_text()
    for name in ("qif", "csp_lda", "ts_lr"):
        assert name in report
    assert "Wilcoxon" in report or "wilcoxon" in report
    figures = sorted(out.glob("*.png"))
    assert figures and all(_is_png(p) for p in figures)
    assert (out / "per_subject_accuracy.png").is_file()


# --- errors ----------------------------------------------------------------------------------
def test_unknown_config_key_exits_2_and_names_it(tmp_path, data_root, capsys):
    bad = dict(SMALL_CONFIG, model=dict(SMALL_CONFIG["model"], hiden_layer_sizes=[8]))
    path = tmp_path / "typo.yaml"
    path.write_text(yaml.safe_dump(bad))
    assert cli.main(_train_args(path, tmp_path / "out", data_root)) == 2
    assert "hiden_layer_sizes" in capsys.readouterr().err
    assert not (tmp_path / "out").exists()


def test_unknown_pipeline_exits_2(config_file, data_root, tmp_path, capsys):
    code = cli.main(["evaluate", "--config", str(config_file), "--subjects", "1", "--pipelines", "qif,svm",
                     "--data-dir", str(data_root), "--out", str(tmp_path), "--quiet"])
    assert code == 2 and "svm" in capsys.readouterr().err


def test_empty_data_dir_exits_2_with_advice(config_file, tmp_path, capsys):
    empty = tmp_path / "empty"
    empty.mkdir()
    assert cli.main(_train_args(config_file, tmp_path / "out", empty)) == 2
    err = capsys.readouterr().err
    assert "error:" in err and "--data-dir" in err


def test_missing_data_dir_fails_fast_from_the_command_line(config_file, tmp_path):
    """The real entry point (app.py) with a data root that does not exist: exit 2, no hang."""
    missing = tmp_path / "no_such_dir"
    env = dict(os.environ, MNE_DATA=str(missing))
    proc = subprocess.run([sys.executable, "app.py", "train", "--config", str(config_file), "--subjects", "1",
                           "--quiet", "--out", str(tmp_path / "out")],
                          cwd=REPO, env=env, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2, proc.stderr
    assert "no_such_dir" in proc.stderr and "does not exist" in proc.stderr
    assert "Traceback" not in proc.stderr


def test_commands_share_a_persistent_jax_compilation_cache(tmp_path):
    # A fresh process (as a joblib worker is) that runs main()'s set-up writes compiled
    # programs into <cache>/jax, so the next process can load them instead of compiling.
    env = {k: v for k, v in os.environ.items() if not k.startswith("JAX_COMPILATION_CACHE")}
    env["BCI_QIF_CACHE"] = str(tmp_path / "cache")
    script = ("from bci_qif import cli; cli._use_persistent_jax_cache(); import os, jax; "
              "jax.config.update('jax_persistent_cache_min_compile_time_secs', 0); "
              "jax.jit(lambda x: x * 2 + 1)(1.0).block_until_ready(); "
              "print(os.environ['JAX_COMPILATION_CACHE_DIR'])")
    done = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert Path(done.stdout.strip()) == tmp_path / "cache" / "jax"
    assert any((tmp_path / "cache" / "jax").iterdir())
    # A user's own choice wins; an unwritable cache location leaves the cache off.
    env["JAX_COMPILATION_CACHE_DIR"] = str(tmp_path / "mine")
    script = ("from bci_qif import cli; cli._use_persistent_jax_cache(); import os; "
              "print(os.environ['JAX_COMPILATION_CACHE_DIR'])")
    done = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True, text=True, timeout=60)
    assert done.stdout.strip() == str(tmp_path / "mine")
    del env["JAX_COMPILATION_CACHE_DIR"]
    (tmp_path / "a_file").write_text("not a folder")
    env["BCI_QIF_CACHE"] = str(tmp_path / "a_file")
    script = ("from bci_qif import cli; cli._use_persistent_jax_cache(); import os; "
              "print(os.environ.get('JAX_COMPILATION_CACHE_DIR'))")
    done = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True, text=True, timeout=60)
    assert done.returncode == 0 and done.stdout.strip() == "None"
