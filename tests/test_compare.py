"""The LIF vs QIF study: configuration, data splits, verdicts and a quick run end to end."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from bci_qif import compare
from bci_qif.cli import main
from bci_qif.errors import ConfigError, DataNotFoundError

CONFIGS = Path(__file__).resolve().parents[1] / "configs"


def _write_config(tmp_path, text):
    path = tmp_path / "study.yaml"
    path.write_text(text)
    return path


def test_configs_load_and_quick_overrides_apply():
    for task in ("eeg", "yinyang", "shd"):
        full = compare.load_compare_config(CONFIGS / f"compare_{task}.yaml")
        quick = compare.load_compare_config(CONFIGS / f"compare_{task}.yaml", quick=True)
        assert full["task"] == quick["task"] == task
        assert quick["search"]["n_candidates"] < full["search"]["n_candidates"]
        assert len(quick["final"]["seeds"]) == 2 and quick["quick"] and not full["quick"]
        # quick replaces single search dimensions, the others stay searched
        assert set(full["search"]["space"]) == set(quick["search"]["space"])


def test_bad_configs_name_the_problem(tmp_path):
    with pytest.raises(ConfigError, match="task must be one of"):
        compare.load_compare_config(_write_config(tmp_path, "task: mnist\n"))
    with pytest.raises(ConfigError, match="learning_rat"):
        compare.load_compare_config(_write_config(tmp_path, "task: yinyang\nmodel: {learning_rat: 0.1}\n"))
    with pytest.raises(ConfigError, match="not searchable"):
        compare.load_compare_config(_write_config(tmp_path, "task: yinyang\nsearch: {space: {gamma: {choice: [1]}}}\n"))
    with pytest.raises(ConfigError, match="low <= high"):
        compare.load_compare_config(_write_config(
            tmp_path, "task: yinyang\nsearch: {space: {learning_rate: {log_uniform: [0.1, 0.01]}}}\n"))


def test_candidates_are_shared_reproducible_and_inside_the_space():
    config = compare.load_compare_config(CONFIGS / "compare_yinyang.yaml")
    a, b = compare.sample_candidates(config), compare.sample_candidates(config)
    assert a == b and len(a) == config["search"]["n_candidates"]
    lo, hi = config["search"]["space"]["learning_rate"]["log_uniform"]
    assert all(lo <= c["learning_rate"] <= hi for c in a)
    assert all(c["tau"] in config["search"]["space"]["tau"]["choice"] for c in a)
    assert len({c["learning_rate"] for c in a}) == len(a)


def test_shd_without_data_says_where_to_get_it(tmp_path):
    config = compare.load_compare_config(CONFIGS / "compare_shd.yaml", quick=True)
    with pytest.raises(DataNotFoundError, match="zenkelab.org"):
        compare.load_task(config, data_dir=tmp_path)
    # and through the command line: exit code 2 and the message
    rc = main(["compare", "--config", str(CONFIGS / "compare_shd.yaml"), "--quick", "--data-dir", str(tmp_path),
               "--out", str(tmp_path / "out"), "--quiet"])
    assert rc == 2


def _write_shd(path, n, seed):
    """A small file in the official SHD layout (variable-length times and units)."""
    import h5py

    rng = np.random.default_rng(seed)
    with h5py.File(path, "w") as f:
        times = f.create_dataset("spikes/times", (n,), dtype=h5py.vlen_dtype(np.float32))
        units = f.create_dataset("spikes/units", (n,), dtype=h5py.vlen_dtype(np.uint16))
        for i in range(n):
            k = int(rng.integers(5, 40))
            times[i] = np.sort(rng.uniform(0, 1.2, k)).astype(np.float32)
            units[i] = rng.integers(0, 700, k).astype(np.uint16)
        f.create_dataset("labels", data=np.arange(n) % 20)


def test_shd_task_splits_the_official_files(tmp_path):
    (tmp_path / "shd").mkdir()
    _write_shd(tmp_path / "shd" / "shd_train.h5", 40, 0)
    _write_shd(tmp_path / "shd" / "shd_test.h5", 20, 1)
    config = compare.load_compare_config(CONFIGS / "compare_shd.yaml", quick=True)
    task = compare.load_task(config, data_dir=tmp_path)
    assert (len(task.train), len(task.val), len(task.test)) == (30, 10, 20)  # val_fraction 0.25 of 40
    assert task.n_classes == 20 and task.T == pytest.approx(1.0)
    assert task.train.currents.shape[1:] == (20, 70)  # 1 s in 50 ms bins, 70 pooled channels
    assert task.train.times.shape == (20,)
    total = task.train.currents.sum() + task.val.currents.sum()
    assert total > 0


def test_verdicts_say_when_qif_does_not_win():
    better = compare.verdict("acc", +1, [0.9, 0.91, 0.92], [0.6, 0.61, 0.62], "seeds")
    assert "QIF is better" in better
    worse = compare.verdict("acc", +1, [0.6, 0.61, 0.62], [0.9, 0.91, 0.92], "seeds")
    assert "LIF is better" in worse and "QIF does not win" in worse
    tie = compare.verdict("acc", +1, [0.6, 0.7, 0.8], [0.65, 0.7, 0.75], "seeds")
    assert "no difference" in tie and "QIF does not win" in tie
    fewer_jumps = compare.verdict("jumps", -1, [0], [7], "slice")
    assert "QIF is better" in fewer_jumps and "no spread" in fewer_jumps


def test_quick_yinyang_study_writes_every_output(tmp_path):
    out = tmp_path / "study"
    rc = main(["compare", "--config", str(CONFIGS / "compare_yinyang.yaml"), "--quick", "--out", str(out),
               "--quiet"])
    assert rc == 0
    for name in compare.OUTPUT_FILES:
        assert (out / name).is_file() and (out / name).stat().st_size > 0, name
    report = (out / "report.md").read_text()
    assert "| metric | QIF | LIF |" in report and report.count("* **") == len(compare.ROWS)
    summary = json.loads((out / "summary.json").read_text())
    for model in compare.MODELS:
        test_acc = summary["metrics"][model]["test_acc"][0]
        assert 0.0 <= test_acc <= 1.0
        assert summary["slices"][model]["fragmentation_1d"]["tv_total"] >= 0
    runs = pd.read_csv(out / "runs.csv")
    assert sorted(runs["model"].unique()) == ["lif", "qif"] and len(runs) == 4  # 2 models x 2 seeds
    history = pd.read_csv(out / "history.csv")
    assert set(history["epoch"]) == {0, 1, 2, 3}  # initialisation + 3 epochs
    assert history["silent_fraction"].between(0, 1).all()
    search = pd.read_csv(out / "search.csv")
    # the same candidates for both models
    qif, lif = (search[search.model == m].sort_values("candidate") for m in ("qif", "lif"))
    assert np.allclose(qif["learning_rate"], lif["learning_rate"])


def test_quick_eeg_study_on_real_recordings_writes_every_output(tmp_path, data_root):
    out = tmp_path / "eeg"
    rc = main(["compare", "--config", str(CONFIGS / "compare_eeg.yaml"), "--quick", "--data-dir", str(data_root),
               "--out", str(out), "--quiet"])
    assert rc == 0
    for name in compare.OUTPUT_FILES:
        assert (out / name).is_file() and (out / name).stat().st_size > 0, name
    summary = json.loads((out / "summary.json").read_text())
    report = (out / "report.md").read_text()
    assert "tangent-space" in report and "re-centred" in report
    # Subjects 1, 2, 4, 5 (the quick section), split by subject: 2 train, 1 validation, 1 test.
    data_line = next(line for line in report.splitlines() if line.startswith("**Data**"))
    groups = [json.loads(part.split("]")[0] + "]") for part in data_line.split("subjects ")[1:]]
    assert [len(g) for g in groups] == [2, 1, 1] and sorted(sum(groups, [])) == [1, 2, 4, 5]
    for model in compare.MODELS:
        assert 0.0 <= summary["metrics"][model]["test_acc"][0] <= 1.0
    runs = pd.read_csv(out / "runs.csv")
    assert sorted(runs["model"].unique()) == ["lif", "qif"] and len(runs) == 4
