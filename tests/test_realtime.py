"""Real-time decoding without the GUI: ring buffer, causal preprocessing, labels, and the
decoder thread on real LSL streams (loopback only) replaying a real shared recording.

The model is trained on subject 1 and the replayed recording is subject 2 (run 4). All
decoders use 1 s windows so that the simulation is compiled once per test session.
"""

import copy
import os
import threading
import time

import numpy as np
import pytest

from bci_qif import realtime as rt
from thread_check import leftover_threads
from bci_qif.errors import ChannelError, ConfigError, SamplingRateError
from bci_qif.preprocessing import PreprocessingConfig, preprocess_raw

# Same settings as tests/test_estimator.py: one compiled training step serves both.
WINDOW_S, HOP_S = 1.0, 0.1
# LSL streams are visible machine-wide: names unique to this process keep parallel runs apart.
TAG = f"{os.getpid()}"


@pytest.fixture(scope="module")
def model(model_path):
    return rt.load_model(model_path.parent)


@pytest.fixture(scope="module")
def recording(data_root):
    """Subject 2, run 4 (not a training subject), from 3 s before its first cue."""
    raw = rt.load_recording("S002R04", data_dir=data_root)
    first_cue = min(o for o, d in zip(raw.annotations.onset, raw.annotations.description) if d in ("T1", "T2"))
    return raw.crop(tmin=max(first_cue - 3.0, 0.0), tmax=first_cue + 30.0)


@pytest.fixture(autouse=True, scope="module")
def _loopback_lsl():
    rt.configure_lsl(loopback=True)



def _player(raw, name):
    from mne_lsl.player import PlayerLSL

    return PlayerLSL(raw, chunk_size=10, name=name, source_id=name).start()


# --- building blocks ---------------------------------------------------------------------
def test_ring_buffer_wraps_in_fixed_memory():
    buf = rt.RingBuffer(3, 10)
    memory, nbytes = buf._data, buf.nbytes
    assert buf.latest(5)[0].shape == (3, 0)
    for start in range(0, 1000, 7):
        n = np.arange(start, start + 7)
        buf.write(np.tile(n, (3, 1)), n / 100.0)
    data, stamps = buf.latest(4)
    np.testing.assert_array_equal(data[0], [997, 998, 999, 1000])
    np.testing.assert_allclose(stamps, [9.97, 9.98, 9.99, 10.0])
    assert buf.latest(50)[0].shape == (3, 10) and buf.n_written == 1001
    buf.write(np.ones((3, 25)), np.arange(25.0))  # more than the capacity at once
    np.testing.assert_array_equal(buf.latest(10)[1], np.arange(15.0, 25.0))
    assert buf._data is memory and buf.nbytes == nbytes
    with pytest.raises(ValueError, match=r"\(3, n\)"):
        buf.write(np.ones((2, 4)), np.arange(4.0))
    buf.clear()
    assert buf.n_available == 0


def test_latency_stats_and_label_tracker():
    stats = rt.LatencyStats(maxlen=100)
    assert np.isnan(stats.percentile(50))
    for ms in range(1, 201):
        stats.add(ms / 1000)
    assert stats.summary()["n"] == 100  # only the latest are kept
    assert stats.percentile(50) == pytest.approx(150.5)

    tracker = rt.LabelTracker({"T1": 0, "T2": 1})
    tracker.add(10.0, 4.0, "T1")
    tracker.add(20.0, 4.0, "T2")
    tracker.add(24.0, 4.0, "T0")
    assert tracker.label_for(11.0, 12.0) == 0
    assert tracker.label_for(9.4, 10.4) is None  # 40 % inside the trial
    assert tracker.label_for(22.5, 24.5) == 1  # 75 % inside
    assert tracker.label_for(25.0, 26.0) is None  # rest
    tracker.score(0, 0)
    tracker.score(1, 0)
    tracker.score(1, None)
    assert (tracker.accuracy, tracker.n_labelled) == (0.5, 2)


def test_online_preprocessing_equals_offline_causal_filtering(recording):
    """Chunk by chunk, with channels shuffled, the result is the offline causal filter."""
    config = PreprocessingConfig(bandpass=(8.0, 30.0), filter_phase="minimum", notch=60.0, reference="average",
                                 channels=["C3", "Cz", "C4"])
    offline = preprocess_raw(recording, config)
    rng = np.random.default_rng(0)
    order = rng.permutation(len(recording.ch_names))
    # Stream names as in the EDF file ('C3..'): matched without case and dots.
    stream_names = [recording.ch_names[i].upper() + ".." for i in order]
    pre = rt.OnlinePreprocessor(config, stream_names, 160.0, offline.ch_names, 160.0, stream_ch_types=["eeg"] * 64)
    assert pre.ch_names == ["C3", "Cz", "C4"] and pre.input_ch_names == ["C3..", "CZ..", "C4.."]
    x = recording.get_data()[order]
    chunks, i = [], 0
    while i < x.shape[1]:
        n = int(rng.integers(1, 40))
        chunks.append(pre.process(x[:, i:i + n]))
        i += n
    online = np.concatenate(chunks, axis=1)
    settled = slice(2 * pre.filter_length, None)  # offline starts with padding, online in steady state
    np.testing.assert_allclose(online[:, settled], offline.data[:, settled], atol=1e-3 * np.abs(offline.data).max())


def test_online_preprocessing_filter_bank_and_clear_errors():
    config = PreprocessingConfig(filter_bank=[(8.0, 12.0), (16.0, 24.0)], channels=["C3", "C4"])
    names = ["C3@8-12Hz", "C3@16-24Hz", "C4@8-12Hz", "C4@16-24Hz"]
    pre = rt.OnlinePreprocessor(config, ["Fz", "C4", "C3"], 160.0, names, 160.0)
    assert pre.ch_names == names
    x = np.random.default_rng(0).standard_normal((3, 50)) * 1e-5
    assert pre.process(x).shape == (4, 50)
    in_microvolts = rt.OnlinePreprocessor(config, ["Fz", "C4", "C3"], 160.0, names, 160.0, stream_scales=[1e-6] * 3)
    np.testing.assert_allclose(in_microvolts.process(x * 1e6), rt.OnlinePreprocessor(
        config, ["Fz", "C4", "C3"], 160.0, names, 160.0).process(x), rtol=1e-5)
    with pytest.raises(ChannelError, match=r"lacks 2 channel\(s\) the model needs: \['C3', 'C4'\]"):
        rt.OnlinePreprocessor(config, ["Fz", "Cz"], 160.0, names, 160.0, source="stream 'amp'")
    with pytest.raises(SamplingRateError, match="sampled at 128 Hz but the model was trained at 160 Hz"):
        rt.OnlinePreprocessor(config, ["C3", "C4"], 128.0, names, 160.0)
    with pytest.raises(SamplingRateError, match="irregular"):
        rt.OnlinePreprocessor(config, ["C3", "C4"], 0.0, names, 160.0)


def test_model_loading_and_window_decoding(model, model_path, tmp_path):
    with pytest.raises(FileNotFoundError, match="no model.npz"):
        rt.load_model(tmp_path)
    assert rt.model_preprocessing(model).bandpass == (8.0, 30.0)
    assert rt._event_map(model, rt._class_names(model)) == {"left": 0, "right": 1, "T1": 0, "T2": 1}
    # One window at a time, as the real-time decoder does (the compiled simulation is reused).
    window = np.random.default_rng(1).standard_normal((1, 64, int(WINDOW_S * 160))).astype(np.float32) * 2e-5
    out = model.decode_windows(window)
    np.testing.assert_allclose(out["probabilities"].sum(axis=1), 1.0, rtol=1e-6)
    assert out["prediction"].shape == (1,) and out["window_s"] == WINDOW_S
    assert out["prediction"][0] == model.classes_[out["predicted_index"][0]]
    assert out["votes"].shape == (1, 2) and out["ordinary_vote"].shape == (1,)  # the session model: 2 members
    assert [c.shape for c in out["spike_counts"]] == [(1, 16), (1, 2)]
    for layer, counts in enumerate(out["spike_counts"]):
        times, sources = out["spike_times"][layer][0], out["spike_sources"][layer][0]
        assert len(times) == counts[0].sum() and np.all((times >= 0) & (times <= WINDOW_S))
        np.testing.assert_array_equal(np.bincount(sources, minlength=counts.shape[1]), counts[0])
    np.testing.assert_allclose(out["silent_fraction"], np.stack([np.mean(c == 0, 1) for c in out["spike_counts"]], 1))
    with pytest.raises(ValueError, match="trained on 64"):
        model.decode_windows(window[:, :10])


# --- the decoder on real LSL streams --------------------------------------------------------
def test_replay_decodes_with_labels_pause_and_clean_stop(model, recording):
    before = set(threading.enumerate())
    statuses = []
    source = rt.ReplaySource(recording)
    decoder = rt.RealtimeDecoder(model, source, window_s=WINDOW_S, hop_s=HOP_S,
                                 on_status=lambda s, m: statuses.append(s))
    decoder.start()
    try:
        assert decoder.wait_for(lambda: decoder.labels.n_labelled >= 3 and len(decoder.history) >= 15, 90)
        results = list(decoder.history)
        last = results[-1]
        assert decoder.status == "connected" and decoder.ch_names == model.ch_names_
        assert last.window_s == WINDOW_S and last.window_end - last.window_start == pytest.approx(WINDOW_S, abs=0.02)
        np.testing.assert_allclose(last.probabilities.sum(), 1.0, rtol=1e-6)
        assert last.class_name in ("left", "right") and last.prediction in (0, 1)
        assert last.votes.shape == (2,)
        # Raster, rates and silence statistics are consistent with each other.
        assert sum(len(r.spike_times[0]) for r in results) > 0
        for r in results:
            for layer, counts in enumerate(r.spike_counts):
                assert len(r.spike_times[layer]) == counts.sum()
                np.testing.assert_allclose(r.firing_rates[layer], counts / WINDOW_S)
                assert r.silent_fraction[layer] == pytest.approx(np.mean(counts == 0))
            assert np.all(r.cumulative_silent_fraction <= r.silent_fraction + 1e-12)
        assert np.all(np.diff([r.window_end for r in results]) > 0.05)  # one window per hop
        # True labels from the replayed annotations, and a running accuracy.
        labelled = [r for r in results if r.true_label is not None]
        assert labelled and {r.true_name for r in labelled} <= {"left", "right"}
        assert 0.0 <= last.accuracy <= 1.0 and last.n_labelled == decoder.labels.n_labelled
        assert last.latency_p50_ms > 0 and last.latency_p99_ms >= last.latency_p50_ms
        assert decoder.recent_annotations()

        decoder.pause()
        time.sleep(0.3)  # a window may be in flight
        n = len(decoder.history)
        time.sleep(0.6)
        assert len(decoder.history) == n and decoder.status == "paused"
        decoder.resume()
        assert decoder.wait_for(lambda: len(decoder.history) >= n + 3, 10)
        assert decoder.status == "connected"
        buffer = decoder._buffer
        assert buffer.capacity == int(10 * 160)  # flat memory: display span, fixed
    finally:
        decoder.stop()
    assert decoder.status == "stopped" and not decoder.running and source.player is None
    assert statuses[0] == "connecting" and "connected" in statuses
    assert leftover_threads(before) == []


def test_calibration_aligns_a_new_user_before_decoding(model, recording):
    # Subject 2 is new to the model (trained on subject 1): its first 3 s align the model first.
    model = copy.deepcopy(model)  # calibration is session state: keep the shared model untouched
    statuses = []
    decoder = rt.RealtimeDecoder(model, rt.ReplaySource(recording), window_s=WINDOW_S, hop_s=HOP_S,
                                 calibration_s=3.0,
                                 on_status=lambda s, m: statuses.append((time.perf_counter(), s, m)))
    decoder.start()
    try:
        assert decoder.wait_for(lambda: len(decoder.history) >= 3, 90)
    finally:
        decoder.stop()
    assert decoder.calibrated and model.encoder_.live_mean_.shape == (1, 64, 64)
    assert any(s == "calibrating" and "of 3 s of unlabelled EEG" in m for _, s, m in statuses)
    done = [(t, m) for t, s, m in statuses if s == "connected" and "calibrated on" in m]
    assert len(done) == 1
    # At least 3 s of 1 s windows, one every half window (more if the stream ran ahead while
    # the decoder compiled): 5 or more windows; no decision before calibration.
    assert int(done[0][1].split("calibrated on ")[1].split()[0]) >= 5
    assert decoder.history[0].decoded_at > done[0][0]


def test_adapt_aligns_a_new_user_while_decoding(model, recording):
    # No calibration phase: decisions from the first window, each half window joins the user's mean.
    model = copy.deepcopy(model)
    statuses = []
    decoder = rt.RealtimeDecoder(model, rt.ReplaySource(recording), window_s=WINDOW_S, hop_s=HOP_S, adapt=True,
                                 on_status=lambda s, m: statuses.append(s))
    decoder.start()
    try:
        assert decoder.wait_for(lambda: len(decoder.history) >= 20, 90)
    finally:
        decoder.stop()
    decoded, adapted = decoder.summary()["windows"], decoder.summary()["adapted_windows"]
    assert "calibrating" not in statuses and not decoder.calibrated
    # 1 s windows every 0.1 s: about one in five is folded in (more while the stream ran ahead).
    assert 2 <= adapted <= decoded // 2 and model.encoder_.live_mean_.shape == (1, 64, 64)
    with pytest.raises(ValueError, match="re-centres subjects"):
        fixed = copy.deepcopy(model)
        fixed.encoder_.recenter = False
        rt.RealtimeDecoder(fixed, rt.ReplaySource(recording), window_s=WINDOW_S, adapt=True)


def test_calibration_needs_a_recentring_model_and_two_windows(model, recording):
    with pytest.raises(ValueError, match="at least two windows"):
        rt.RealtimeDecoder(model, rt.ReplaySource(recording), window_s=WINDOW_S, calibration_s=1.5)
    fixed = copy.deepcopy(model)
    fixed.encoder_.recenter = False
    with pytest.raises(ValueError, match="re-centres subjects"):
        rt.RealtimeDecoder(fixed, rt.ReplaySource(recording), window_s=WINDOW_S, calibration_s=3.0)


def test_lost_stream_shows_disconnected_and_recovers(model, recording):
    """A live stream (own PlayerLSL) stops, then comes back under the same name."""
    before = set(threading.enumerate())
    name = f"bci-qif-test-live-{TAG}"
    player = _player(recording, name)
    decoder = rt.RealtimeDecoder(model, rt.LSLSource(name=name), window_s=WINDOW_S, hop_s=HOP_S,
                                 stall_timeout=0.5, reconnect_interval=0.5)
    decoder.start()
    try:
        assert decoder.wait_for(lambda: len(decoder.history) >= 3, 90)
        player.stop()
        assert decoder.wait_for(lambda: decoder.status == "disconnected", 5)
        assert "no samples" in decoder.status_message or "found" in decoder.status_message
        n = len(decoder.history)
        assert decoder.running  # no crash while the stream is gone
        player = _player(recording, name)
        assert decoder.wait_for(lambda: len(decoder.history) >= n + 3, 30)
        assert decoder.status == "connected" and decoder.n_reconnects >= 1
    finally:
        decoder.stop()
        player.stop()
    assert leftover_threads(before) == []


def test_streams_that_do_not_fit_the_model_give_clear_errors(model, recording):
    before = set(threading.enumerate())
    short = recording.copy().crop(tmax=10.0)
    missing = short.copy().drop_channels(["C3", "C4"])
    slow = short.copy().resample(128.0, verbose="error")
    players = [_player(missing, f"bci-qif-test-missing-{TAG}"), _player(slow, f"bci-qif-test-128hz-{TAG}")]
    decoders = [rt.RealtimeDecoder(model, rt.LSLSource(name=p.name, annotations=False), window_s=WINDOW_S)
                for p in players]
    try:
        for decoder in decoders:
            decoder.start()
        for decoder in decoders:
            assert decoder.wait_for(lambda d=decoder: d.status == "error", 30)
        assert "lacks 2 channel(s) the model needs: ['C3', 'C4']" in decoders[0].status_message
        assert "sampled at 128 Hz but the model was trained at 160 Hz" in decoders[1].status_message
        assert all(d.running and not d.history for d in decoders)
    finally:
        for decoder in decoders:
            decoder.stop()
        for player in players:
            player.stop()
    assert decoders[0].last_error and leftover_threads(before) == []


def test_bad_settings_are_refused(model):
    source = rt.LSLSource(name="unused")
    with pytest.raises(ConfigError, match="window_s"):
        rt.RealtimeDecoder(model, source, window_s=0.01)
    with pytest.raises(ConfigError, match="hop_s"):
        rt.RealtimeDecoder(model, source, hop_s=0.0)
    with pytest.raises(ValueError, match="name or a source_id"):
        rt.LSLSource()


def test_load_recording_reads_subjects_and_files(data_root, tmp_path):
    raw = rt.load_recording(2, run=8, data_dir=data_root)
    assert raw.filenames[0].name == "S002R08.edf" and "FC5" in raw.ch_names  # names standardized
    assert rt.load_recording("s002r12", data_dir=data_root).filenames[0].name == "S002R12.edf"
    path = tmp_path / "short_raw.fif"
    raw.crop(tmax=4.0).save(path, verbose="error")
    again = rt.load_recording(path)
    assert again.ch_names == raw.ch_names and len(again.annotations) == len(raw.annotations)
    with pytest.raises(FileNotFoundError, match="S003R04.edf"):
        rt.load_recording("S003", data_dir=data_root)
