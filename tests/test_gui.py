"""The real-time decoding window (pytest-qt, offscreen) on a real replayed recording.

A model trained on subject 1 decodes subject 2 (run 4) replayed through PlayerLSL on
loopback LSL. 1 s windows, like tests/test_realtime.py, so the simulation compiles once.
"""

import os
import threading

os.environ.setdefault("QT_QPA_PLATFORM", "offscreen")

import numpy as np  # noqa: E402
import pytest  # noqa: E402

from bci_qif import cli  # noqa: E402
from bci_qif import realtime as rt  # noqa: E402
from thread_check import leftover_threads  # noqa: E402
from bci_qif import gui  # noqa: E402
from pyqtgraph.Qt import QtCore, QtGui  # noqa: E402

WINDOW_S, HOP_S = 1.0, 0.1


@pytest.fixture(scope="module")
def model(model_path):
    return rt.load_model(model_path)


@pytest.fixture(scope="module")
def recording(data_root):
    raw = rt.load_recording("S002R04", data_dir=data_root)
    first_cue = min(o for o, d in zip(raw.annotations.onset, raw.annotations.description) if d in ("T1", "T2"))
    return raw.crop(tmin=max(first_cue - 2.0, 0.0), tmax=first_cue + 40.0)


@pytest.fixture(autouse=True, scope="module")
def _loopback_lsl():
    rt.configure_lsl(loopback=True)



def _text(label):
    return QtGui.QTextDocumentFragment.fromHtml(label.text()).toPlainText()


def test_window_decodes_a_replay_pauses_recovers_and_closes_cleanly(qtbot, model, recording, tmp_path):
    before = set(threading.enumerate())
    source = rt.ReplaySource(recording)
    decoder = rt.RealtimeDecoder(model, source, window_s=WINDOW_S, hop_s=HOP_S, stall_timeout=0.5,
                                 reconnect_interval=0.5)
    window = gui.DecoderWindow(decoder, display_s=4.0, screenshot_dir=tmp_path)
    qtbot.addWidget(window)
    window.show()
    window.start()
    qtbot.waitUntil(lambda: window.n_results >= 8 and decoder.labels.n_labelled >= 2, timeout=90_000)

    # Predictions, probabilities over time, raster, firing rates and silence statistics are drawn.
    assert _text(window.decision_label).split()[0] in ("left", "right")
    votes = decoder.history[-1].votes  # two member networks; the label says how many spiked for the decision
    assert votes.shape == (2,) and set(votes) <= {-1, 0, 1}
    assert "/2 nets spiked" in _text(window.decision_label)
    assert "network 1 of 2" in window.raster_plot.titleLabel.text
    assert "connected" in _text(window.status_label)
    assert all(len(curve.getData()[0]) >= 5 for curve in window.prob_curves)
    assert len(window.truth_scatter.getData()[0]) >= 1  # true labels from the annotations
    assert "online accuracy: 0." in window.truth_label.text() or "online accuracy: 1." in window.truth_label.text()
    last = decoder.history[-1]
    n_spikes = sum(len(t) for t in last.spike_times)
    assert len(window.raster_curve.getData()[0]) == 2 * n_spikes
    assert len(window.rate_bars.opts["width"]) == 16 + 2
    np.testing.assert_allclose(window.silence_bars["latest"].opts["height"], last.silent_fraction)
    np.testing.assert_allclose(window.silence_bars["never fired"].opts["height"], last.cumulative_silent_fraction)
    stats = _text(window.stats_label)
    assert "decode latency p50" in stats and "p99" in stats and "hop 100 ms" in stats
    qtbot.waitUntil(lambda: window.n_frames >= 5, timeout=5_000)
    assert window.frame_rate() > 5

    # Channel selection drives the traces.
    assert window.channel_list.count() == 64
    window.select_channels(["C3", "C4"])
    assert window.selected_channels == ["C3", "C4"]
    window.refresh()
    x, y = window.trace_curve.getData()
    assert len(x) == len(y) and len(y) % 2 == 0 and len(y) >= 2 * 160  # two channels, >= 1 s each

    # Hop control.
    window.hop_spin.setValue(0.2)
    window.apply_button.click()
    qtbot.waitUntil(lambda: decoder.history[-1].hop_s == pytest.approx(0.2), timeout=5_000)

    # Pause and resume with the button.
    window.start_button.click()
    assert decoder.paused and window.start_button.text() == "Start"
    qtbot.wait(300)
    n = window.n_results
    qtbot.wait(700)
    assert window.n_results == n and "paused" in _text(window.status_label)
    window.start_button.click()
    qtbot.waitUntil(lambda: window.n_results >= n + 2, timeout=10_000)
    assert window.start_button.text() == "Pause"

    # Lose the stream: "disconnected", no crash; it comes back and decoding resumes.
    source.stop_player()
    qtbot.waitUntil(lambda: "disconnected" in _text(window.status_label), timeout=5_000)
    n = window.n_results
    source.start_player()
    qtbot.waitUntil(lambda: window.n_results >= n + 2, timeout=30_000)
    assert "connected" in _text(window.status_label)

    # Screenshot: real pixels.
    path = window.save_screenshot()
    image = QtGui.QImage(str(path))
    assert path.parent == tmp_path and image.width() >= 800 and image.height() >= 500
    pixels = [image.pixelColor(x, y).value() for x in range(0, image.width(), 37) for y in range(0, image.height(), 41)]
    assert np.std(pixels) > 10

    window.close()
    assert not decoder.running and decoder.status == "stopped" and source.player is None
    assert leftover_threads(before) == []


def test_window_names_missing_channels(qtbot, model, recording):
    before = set(threading.enumerate())
    missing = recording.copy().crop(tmax=8.0).drop_channels(["CP3", "Cz"])
    decoder = rt.RealtimeDecoder(model, rt.ReplaySource(missing), window_s=WINDOW_S)
    window = gui.DecoderWindow(decoder)
    qtbot.addWidget(window)
    window.show()
    window.start()
    qtbot.waitUntil(lambda: "error" in _text(window.status_label), timeout=30_000)
    assert "lacks 2 channel(s) the model needs: ['Cz', 'CP3']" in _text(window.status_label)
    assert window.n_results == 0
    window.close()
    assert leftover_threads(before) == []


def test_app_gui_scripted_run_writes_a_screenshot(qtbot, model_path, data_root, tmp_path, capsys):
    before = set(threading.enumerate())
    png = tmp_path / "gui.png"
    code = cli.main(["gui", "--model", str(model_path.parent), "--replay", "S002R04", "--data-dir", str(data_root),
                     "--window", str(WINDOW_S), "--hop", str(HOP_S), "--duration", "1.5", "--screenshot", str(png),
                     "--calibrate", "2", "--adapt"])  # subject 2 is new to the model (trained on subject 1)
    out = capsys.readouterr().out
    assert code == 0, out
    assert "decode latency p50" in out and "fps" in out and "replay of S002R04.edf" in out
    assert "aligned to this user on the first 2 s of the stream" in out
    assert "kept aligning to this user: running mean of" in out  # from the calibration's windows on
    assert png.is_file() and QtGui.QImage(str(png)).width() >= 800
    assert leftover_threads(before) == []
    QtCore.QCoreApplication.processEvents()
