"""Pickle-free atomic checkpoints, model save/load, and resuming an interrupted fit.

The model tests use real EEG (shared subject 1) and the same small settings as
tests/test_estimator.py, so the compiled simulator is shared within a session.
"""

import json
import zipfile

import jax
import numpy as np
import pytest

from bci_qif import QIFClassifier
from bci_qif.checkpoint import FORMAT_VERSION, CheckpointError, load_checkpoint, save_checkpoint
from bci_qif.datasets import load_eegbci

# Two-network ensembles: a checkpoint holds the training state of every started member.
SMALL = dict(hidden_layer_sizes=(16,), batch_size=15, readout_tau=5.0, learning_rate=3e-2, n_members=2)
N_EPOCHS = 4


def _leaves(params):
    return [np.asarray(leaf) for leaf in jax.tree_util.tree_leaves(params)]


def _assert_same_params(a, b):
    la, lb = _leaves(a), _leaves(b)
    assert len(la) == len(lb)
    for x, y in zip(la, lb):
        np.testing.assert_array_equal(x, y)


# --- checkpoint files ------------------------------------------------------------------------
@pytest.fixture
def arrays():
    return {"w": np.arange(12, dtype=np.float32).reshape(3, 4), "count": np.array(7, np.int32),
            "classes": np.array(["left", "right"])}


def test_round_trip_keeps_arrays_dtypes_and_meta(tmp_path, arrays):
    path = tmp_path / "sub" / "ckpt.npz"  # missing parents are created
    meta = {"kind": "test", "history": [{"loss": 0.5, "acc": float("nan")}], "none": None}
    save_checkpoint(path, arrays, meta)
    loaded, loaded_meta = load_checkpoint(path)
    assert set(loaded) == set(arrays)
    for key, value in arrays.items():
        assert loaded[key].dtype == value.dtype
        np.testing.assert_array_equal(loaded[key], value)
    assert loaded_meta["format_version"] == FORMAT_VERSION
    assert loaded_meta["kind"] == "test" and loaded_meta["none"] is None
    assert np.isnan(loaded_meta["history"][0]["acc"])
    assert [p.name for p in tmp_path.rglob("*")] == ["sub", "ckpt.npz"]  # no temporary files left


def test_no_pickle(tmp_path, arrays):
    path = tmp_path / "ckpt.npz"
    save_checkpoint(path, arrays, {"kind": "test"})
    with np.load(path, allow_pickle=False) as data:
        assert all(data[key].dtype != object for key in data.files)
    with pytest.raises(TypeError, match="object"):
        save_checkpoint(tmp_path / "bad.npz", {"x": np.array([{"a": 1}], dtype=object)}, {})


def test_missing_truncated_and_foreign_files_raise_checkpoint_error(tmp_path, arrays):
    assert issubclass(CheckpointError, ValueError)
    with pytest.raises(CheckpointError, match="no checkpoint"):
        load_checkpoint(tmp_path / "absent.npz")

    good = tmp_path / "good.npz"
    save_checkpoint(good, arrays, {"kind": "test"})
    truncated = tmp_path / "truncated.npz"
    truncated.write_bytes(good.read_bytes()[: good.stat().st_size // 2])
    with pytest.raises(CheckpointError, match="truncated"):
        load_checkpoint(truncated)

    foreign = tmp_path / "foreign.npz"
    np.savez(foreign, weights=np.ones(3))
    with pytest.raises(CheckpointError, match="not a bci_qif checkpoint"):
        load_checkpoint(foreign)

    text = tmp_path / "text.npz"
    text.write_text("not a zip file")
    with pytest.raises(CheckpointError):
        load_checkpoint(text)


def test_unknown_format_version_and_corrupt_meta(tmp_path, arrays):
    newer = tmp_path / "newer.npz"
    np.savez(newer, __meta_json__=np.frombuffer(json.dumps({"format_version": 99}).encode(), np.uint8))
    with pytest.raises(CheckpointError, match="format 99"):
        load_checkpoint(newer)
    corrupt = tmp_path / "corrupt.npz"
    np.savez(corrupt, __meta_json__=np.frombuffer(b"{not json", np.uint8))
    with pytest.raises(CheckpointError, match="corrupt metadata"):
        load_checkpoint(corrupt)


def test_interrupted_save_leaves_previous_checkpoint_intact(tmp_path, arrays, monkeypatch):
    path = tmp_path / "ckpt.npz"
    save_checkpoint(path, arrays, {"kind": "test", "epoch": 1})
    before = path.read_bytes()

    real_savez = np.savez

    def savez_then_crash(file, **payload):
        real_savez(file, **{k: v for k, v in list(payload.items())[:1]})  # part of the data is written
        raise KeyboardInterrupt

    monkeypatch.setattr(np, "savez", savez_then_crash)
    with pytest.raises(KeyboardInterrupt):
        save_checkpoint(path, {"w": np.zeros(5)}, {"kind": "test", "epoch": 2})
    monkeypatch.undo()

    assert path.read_bytes() == before
    loaded, meta = load_checkpoint(path)
    assert meta["epoch"] == 1
    np.testing.assert_array_equal(loaded["w"], arrays["w"])
    assert [p.name for p in tmp_path.iterdir()] == ["ckpt.npz"]  # the partial temporary file is gone


# --- model save / load -------------------------------------------------------------------------
@pytest.fixture(scope="module")
def trials(data_root):
    return load_eegbci([1], data_dir=data_root)


@pytest.fixture(scope="module")
def uninterrupted(trials, tmp_path_factory):
    """A 4-epoch fit of two members writing a checkpoint after every epoch."""
    path = tmp_path_factory.mktemp("uninterrupted") / "checkpoint.npz"
    clf = QIFClassifier(**SMALL, epochs=N_EPOCHS).fit(trials.to_epochs(), trials.labels, checkpoint=path)
    return clf, path


def test_save_load_predictions_identical(uninterrupted, trials, tmp_path):
    clf, _ = uninterrupted
    path = tmp_path / "model.npz"
    context = {"class_names": trials.class_names, "preprocessing": {"bandpass": [8.0, 30.0]}}
    clf.save(path, context=context)
    with np.load(path, allow_pickle=False) as data:  # no pickle inside
        assert all(data[key].dtype != object for key in data.files)

    loaded = QIFClassifier.load(path)
    assert loaded.get_params() == clf.get_params()
    assert loaded.context_ == context and loaded.history_ == clf.history_
    assert (loaded.sfreq_, loaded.ch_names_, loaded.n_channels_, loaded.T_) == (
        clf.sfreq_, clf.ch_names_, clf.n_channels_, clf.T_)
    np.testing.assert_array_equal(loaded.classes_, clf.classes_)
    assert len(loaded.members_) == 2 and loaded.n_members == 2
    for mine, theirs in zip(loaded.members_, clf.members_):
        _assert_same_params(mine, theirs)
    np.testing.assert_array_equal(loaded.predict(trials.data), clf.predict(trials.data))
    np.testing.assert_array_equal(loaded.predict_proba(trials.data), clf.predict_proba(trials.data))
    np.testing.assert_array_equal(loaded.decision_function(trials.data), clf.decision_function(trials.data))


def test_training_checkpoint_loads_as_model(uninterrupted, trials):
    clf, path = uninterrupted
    arrays, meta = load_checkpoint(path)
    assert [member["epoch"] for member in meta["training"]["members"]] == [N_EPOCHS, N_EPOCHS]
    assert all(len(member["history"]) == N_EPOCHS for member in meta["training"]["members"])
    assert any(key.startswith("train/0/opt/") for key in arrays) and any(key.startswith("train/1/opt/")
                                                                          for key in arrays)
    loaded = QIFClassifier.load(path)
    assert loaded.history_ == clf.history_
    np.testing.assert_array_equal(loaded.predict_proba(trials.data), clf.predict_proba(trials.data))


def test_a_single_network_file_from_before_ensembles_loads(uninterrupted, trials, tmp_path):
    # Files written before ensembles held one network under model/<leaf> and no member count.
    clf, _ = uninterrupted
    clf.save(tmp_path / "model.npz")
    arrays, meta = load_checkpoint(tmp_path / "model.npz")
    old_arrays = {key: value for key, value in arrays.items() if not key.startswith("model/")}
    old_arrays.update({f"model/{k}": leaf for k, leaf in enumerate(_leaves(clf.members_[0]))})
    del meta["n_fitted_members"], meta["estimator_params"]["n_members"], meta["format_version"]
    save_checkpoint(tmp_path / "old.npz", old_arrays, meta)
    old = QIFClassifier.load(tmp_path / "old.npz")
    assert old.n_members == 1 and len(old.members_) == 1
    _assert_same_params(old.params_, clf.members_[0])
    first_member = QIFClassifier.load(tmp_path / "model.npz")
    first_member.members_ = first_member.members_[:1]
    np.testing.assert_array_equal(old.predict_proba(trials.data), first_member.predict_proba(trials.data))


def test_load_refuses_other_checkpoints(tmp_path):
    path = tmp_path / "other.npz"
    save_checkpoint(path, {"x": np.zeros(2)}, {"kind": "something else"})
    with pytest.raises(ValueError, match="not a QIFClassifier checkpoint"):
        QIFClassifier.load(path)


def test_load_keeps_an_integer_hidden_layer_size(trials, tmp_path):
    clf = QIFClassifier(**dict(SMALL, hidden_layer_sizes=16), epochs=1, sfreq=trials.sfreq).fit(
        trials.data, trials.labels)
    clf.save(tmp_path / "model.npz")
    loaded = QIFClassifier.load(tmp_path / "model.npz")
    assert loaded.hidden_layer_sizes == 16
    np.testing.assert_array_equal(loaded.predict(trials.data), clf.predict(trials.data))


# --- resume --------------------------------------------------------------------------------------
@pytest.mark.parametrize("member, epoch", [(0, 2), (0, N_EPOCHS), (1, 2)])
def test_resume_after_interruption_matches_uninterrupted_run(uninterrupted, trials, tmp_path, monkeypatch,
                                                             member, epoch):
    # Interrupted inside the first member, right after it finished, and inside the second.
    reference, _ = uninterrupted
    path = tmp_path / "checkpoint.npz"
    epochs = trials.to_epochs()
    real_write = QIFClassifier._write

    def write_then_interrupt(self, checkpoint, states):
        real_write(self, checkpoint, states)
        if (len(states) - 1, states[-1].epoch) == (member, epoch):
            raise KeyboardInterrupt  # as if Ctrl-C arrived right after the checkpoint

    monkeypatch.setattr(QIFClassifier, "_write", write_then_interrupt)
    with pytest.raises(KeyboardInterrupt):
        QIFClassifier(**SMALL, epochs=N_EPOCHS).fit(epochs, trials.labels, checkpoint=path)
    monkeypatch.undo()
    started = load_checkpoint(path)[1]["training"]["members"]
    assert len(started) == member + 1 and started[-1]["epoch"] == epoch

    resumed = QIFClassifier(**SMALL, epochs=N_EPOCHS).fit(epochs, trials.labels, checkpoint=path, resume=True)
    # Same parameters as never stopping: finished members kept, optimizer moments, step
    # count (learning-rate schedule) and the per-epoch shuffling restored.
    for mine, theirs in zip(resumed.members_, reference.members_, strict=True):
        _assert_same_params(mine, theirs)
    assert [(row["member"], row["epoch"]) for row in resumed.history_] == [
        (m, e) for m in (0, 1) for e in range(1, N_EPOCHS + 1)]
    assert resumed.history_ == reference.history_
    assert [m["epoch"] for m in load_checkpoint(path)[1]["training"]["members"]] == [N_EPOCHS, N_EPOCHS]


def test_without_resume_an_existing_checkpoint_is_overwritten(uninterrupted, trials, tmp_path):
    reference, source = uninterrupted
    path = tmp_path / "checkpoint.npz"
    path.write_bytes(source.read_bytes())
    clf = QIFClassifier(**SMALL, epochs=1).fit(trials.to_epochs(), trials.labels, checkpoint=path)
    assert len(clf.history_) == 2
    assert [m["epoch"] for m in load_checkpoint(path)[1]["training"]["members"]] == [1, 1]


def test_resume_with_different_hyperparameters_is_an_error(uninterrupted, trials):
    _, path = uninterrupted
    clf = QIFClassifier(**dict(SMALL, learning_rate=1e-3), epochs=N_EPOCHS)
    with pytest.raises(ValueError, match="learning_rate"):
        clf.fit(trials.to_epochs(), trials.labels, checkpoint=path, resume=True)


def test_resume_can_add_members_and_epochs(uninterrupted, trials, tmp_path):
    # Members are trained in order, so a 2-member run resumed as 3 members of one more epoch
    # continues both finished members by an epoch and trains the third from its start.
    reference, source = uninterrupted
    path = tmp_path / "checkpoint.npz"
    path.write_bytes(source.read_bytes())
    epochs = trials.to_epochs()
    grown = QIFClassifier(**dict(SMALL, n_members=3), epochs=N_EPOCHS + 1).fit(epochs, trials.labels,
                                                                               checkpoint=path, resume=True)
    assert [(row["member"], row["epoch"]) for row in grown.history_] == [
        (m, e) for m in range(3) for e in range(1, N_EPOCHS + 2)]
    for member in (0, 1):  # the first epochs are the checkpoint's
        kept = [row for row in grown.history_ if row["member"] == member][:N_EPOCHS]
        assert kept == [row for row in reference.history_ if row["member"] == member]
    third = QIFClassifier(**dict(SMALL, n_members=1, random_state=2), epochs=N_EPOCHS + 1).fit(epochs, trials.labels)
    _assert_same_params(grown.members_[2], third.params_)


def test_resume_on_data_of_another_shape_is_an_error(uninterrupted, trials):
    _, path = uninterrupted
    with pytest.raises(ValueError, match="layer sizes"):  # 32 channels: 528 tangent features, not 2080
        fewer_channels = trials.to_epochs().pick(trials.ch_names[:32])
        QIFClassifier(**SMALL, epochs=N_EPOCHS).fit(fewer_channels, trials.labels, checkpoint=path, resume=True)


def test_resume_from_a_model_file_is_an_error(uninterrupted, trials, tmp_path):
    clf, _ = uninterrupted
    clf.save(tmp_path / "model.npz")
    with pytest.raises(ValueError, match="without training state"):
        QIFClassifier(**SMALL, epochs=N_EPOCHS).fit(trials.to_epochs(), trials.labels,
                                                    checkpoint=tmp_path / "model.npz", resume=True)


def test_resume_without_a_checkpoint_starts_fresh(uninterrupted, trials, tmp_path):
    reference, _ = uninterrupted
    path = tmp_path / "new" / "checkpoint.npz"
    clf = QIFClassifier(**SMALL, epochs=N_EPOCHS).fit(trials.to_epochs(), trials.labels, checkpoint=path,
                                                      resume=True)
    _assert_same_params(clf.params_, reference.params_)
    assert zipfile.is_zipfile(path)
