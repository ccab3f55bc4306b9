"""Real-time decoding window (PyQtGraph): what the decoder sees, decides and how the network fires.

:class:`DecoderWindow` shows a :class:`bci_qif.realtime.RealtimeDecoder` at work:

* scrolling EEG traces of the selected channels (preprocessed, downsampled for display)
  with annotation markers and the span of the latest decoded window;
* class probabilities over time, the current decision, the true label and the running
  online accuracy when the stream carries annotations;
* the spike raster of the hidden and output layers for the latest window, next to each
  neuron's firing rate (silent neurons marked);
* silence statistics per layer: latest window, mean over windows, never fired;
* decode latency (p50 / p99), window and hop, stream status and display frame rate;
* controls: start / pause, window and hop, channel selection, screenshot.

Decoding runs on the decoder's worker thread; its results reach the window through a
queued Qt signal, so the interface stays responsive. :func:`run_gui` opens the window
for a model and a source and can run for a fixed time and save a screenshot (offscreen
too: set ``QT_QPA_PLATFORM=offscreen``).
"""

from __future__ import annotations

import collections
import logging
import os
import time
from pathlib import Path

import numpy as np

os.environ.setdefault("PYQTGRAPH_QT_LIB", "PySide6")

import pyqtgraph as pg  # noqa: E402 - the binding must be chosen first
from pyqtgraph.Qt import QtCore, QtWidgets  # noqa: E402

from .realtime import RealtimeDecoder  # noqa: E402

logger = logging.getLogger(__name__)

__all__ = ["DecoderWindow", "run_gui"]

_STATUS_COLOURS = {"connected": "#1b7f3b", "paused": "#b26b00", "connecting": "#b26b00", "calibrating": "#b26b00",
                   "disconnected": "#c0392b", "error": "#c0392b", "stopped": "#555555", "idle": "#555555"}
_PREFERRED_CHANNELS = ("C3", "Cz", "C4", "FC3", "FC4", "CP3", "CP4", "Fz")


class _Bridge(QtCore.QObject):
    """Carries decoder callbacks (worker thread) into the Qt main thread."""

    result = QtCore.Signal(object)
    status = QtCore.Signal(str, str)


class _PaintCounter(QtCore.QObject):
    """Counts paint events of a widget: the frames really drawn."""

    def __init__(self, parent=None):
        super().__init__(parent)
        self.times = collections.deque(maxlen=4096)

    def eventFilter(self, obj, event):  # noqa: N802 - Qt API
        if event.type() == QtCore.QEvent.Type.Paint:
            self.times.append(time.perf_counter())
        return False

    def rate(self, span=2.0):
        now = time.perf_counter()
        recent = [t for t in self.times if now - t <= span]
        if len(recent) < 2:
            return 0.0
        return (len(recent) - 1) / max(recent[-1] - recent[0], 1e-9)


class DecoderWindow(QtWidgets.QMainWindow):
    """The real-time decoding window.

    Parameters
    ----------
    decoder : RealtimeDecoder
        Not started yet, or running; the window subscribes to its results and status
        and stops it when closed.
    display_s : float
        Seconds of EEG shown.
    history_s : float
        Seconds of probabilities shown.
    fps : float
        Target display refresh rate (0: as fast as possible).
    channels : list of str, optional
        Channels shown at first (default: motor channels C3, Cz, C4... when present,
        else the first eight).
    screenshot_dir : path
        Where the screenshot button writes PNG files.
    """

    #: Emitted once the window has closed (and the decoder has stopped).
    closed = QtCore.Signal()

    def __init__(self, decoder, *, display_s=5.0, history_s=30.0, fps=30.0, channels=None, screenshot_dir="."):
        super().__init__()
        self.decoder = decoder
        self.display_s = float(display_s)
        self.history_s = float(history_s)
        self.screenshot_dir = Path(screenshot_dir)
        self._wanted_channels = list(channels) if channels else None
        self._channel_names = None
        self._selected = []
        self._trace_scale = None
        self._last_result = None
        self._history = collections.deque(maxlen=4096)  # (window_end, probabilities, true_label, prediction)
        self.shown = collections.deque(maxlen=20000)  # (marker, window_end, decoded_at, shown_at)
        self.n_results = 0
        self.n_frames = 0
        self._closing = False

        self.setWindowTitle("bci_qif real-time decoder")
        self.resize(1400, 900)
        pg.setConfigOptions(antialias=False, background="w", foreground="k")
        self._build_controls()
        self._build_plots()
        central = QtWidgets.QWidget()
        layout = QtWidgets.QHBoxLayout(central)
        layout.setContentsMargins(4, 4, 4, 4)
        layout.addWidget(self._panel)
        layout.addWidget(self.graphics, stretch=1)
        self.setCentralWidget(central)

        self._bridge = _Bridge()
        self._bridge.result.connect(self._on_result)
        self._bridge.status.connect(self._on_status)
        decoder.on_result = self._bridge.result.emit
        decoder.on_status = self._bridge.status.emit
        self._on_status(decoder.status, decoder.status_message)

        self._timer = QtCore.QTimer(self)
        self._timer.setTimerType(QtCore.Qt.TimerType.PreciseTimer)
        self._timer.timeout.connect(self.refresh)
        self.set_fps(fps)

    # ------------------------------------------------------------------ layout
    def _build_controls(self):
        panel = QtWidgets.QWidget()
        panel.setFixedWidth(260)
        box = QtWidgets.QVBoxLayout(panel)
        box.setContentsMargins(2, 2, 2, 2)

        self.status_label = QtWidgets.QLabel("idle")
        self.status_label.setWordWrap(True)
        self.status_label.setTextFormat(QtCore.Qt.TextFormat.RichText)
        box.addWidget(self.status_label)

        self.decision_label = QtWidgets.QLabel("—")
        self.decision_label.setTextFormat(QtCore.Qt.TextFormat.RichText)
        font = self.decision_label.font()
        font.setPointSize(20)
        font.setBold(True)
        self.decision_label.setFont(font)
        self.decision_label.setAlignment(QtCore.Qt.AlignmentFlag.AlignCenter)
        self.decision_label.setMinimumHeight(44)
        box.addWidget(self.decision_label)
        self.truth_label = QtWidgets.QLabel("true label: —\nonline accuracy: —")
        box.addWidget(self.truth_label)

        self.start_button = QtWidgets.QPushButton("Start")
        self.start_button.clicked.connect(self.toggle_running)
        box.addWidget(self.start_button)

        form = QtWidgets.QFormLayout()
        self.window_spin = QtWidgets.QDoubleSpinBox()
        self.window_spin.setRange(0.25, 10.0)
        self.window_spin.setSingleStep(0.25)
        self.window_spin.setSuffix(" s")
        self.window_spin.setValue(self.decoder.window_s)
        self.hop_spin = QtWidgets.QDoubleSpinBox()
        self.hop_spin.setDecimals(3)
        self.hop_spin.setRange(0.025, 2.0)
        self.hop_spin.setSingleStep(0.025)
        self.hop_spin.setSuffix(" s")
        self.hop_spin.setValue(self.decoder.hop_s)
        form.addRow("window", self.window_spin)
        form.addRow("hop", self.hop_spin)
        box.addLayout(form)
        self.apply_button = QtWidgets.QPushButton("Apply window / hop")
        self.apply_button.clicked.connect(self.apply_window)
        box.addWidget(self.apply_button)

        box.addWidget(QtWidgets.QLabel("channels shown"))
        self.channel_list = QtWidgets.QListWidget()
        self.channel_list.setMinimumHeight(150)
        self.channel_list.itemChanged.connect(self._channels_changed)
        box.addWidget(self.channel_list, stretch=1)

        self.stats_label = QtWidgets.QLabel("")
        self.stats_label.setWordWrap(True)
        self.stats_label.setTextFormat(QtCore.Qt.TextFormat.RichText)
        box.addWidget(self.stats_label)

        self.screenshot_button = QtWidgets.QPushButton("Screenshot")
        self.screenshot_button.clicked.connect(lambda: self.save_screenshot())
        box.addWidget(self.screenshot_button)
        self._panel = panel

    def _build_plots(self):
        self.graphics = pg.GraphicsLayoutWidget()
        g = self.graphics
        self.trace_plot = g.addPlot(row=0, col=0, colspan=3, title="EEG (preprocessed as for the model)")
        self.trace_plot.setLabel("bottom", "time", units="s")
        self.trace_plot.setMouseEnabled(x=False, y=False)
        self.trace_plot.hideButtons()
        self.trace_curve = pg.PlotCurveItem(pen=pg.mkPen("#1f3b73", width=1))
        self.trace_plot.addItem(self.trace_curve)
        self.window_region = pg.LinearRegionItem(movable=False, brush=pg.mkBrush(255, 200, 0, 50),
                                                 pen=pg.mkPen(None))
        self.trace_plot.addItem(self.window_region)
        self._marker_lines = []
        for _ in range(12):
            line = pg.InfiniteLine(angle=90, pen=pg.mkPen("#8e44ad", width=1.5, style=QtCore.Qt.PenStyle.DashLine),
                                   label="", labelOpts={"position": 0.95, "color": "#8e44ad"})
            line.setVisible(False)
            self.trace_plot.addItem(line)
            self._marker_lines.append(line)

        n_classes = len(self.decoder.class_names)
        self.class_colours = [pg.intColor(i, hues=max(n_classes, 2), values=1, maxValue=200) for i in range(n_classes)]
        self.prob_plot = g.addPlot(row=1, col=0, colspan=2, title="class probabilities (top strip: true label)")
        self.prob_plot.setYRange(-0.02, 1.12, padding=0)
        self.prob_plot.setLabel("bottom", "time", units="s")
        self.prob_plot.setMouseEnabled(x=False, y=False)
        self.prob_plot.hideButtons()
        self.prob_plot.addLegend(offset=(5, 5))
        self.prob_curves = [self.prob_plot.plot(pen=pg.mkPen(c, width=2), name=name)
                            for c, name in zip(self.class_colours, self.decoder.class_names)]
        self.truth_scatter = pg.ScatterPlotItem(size=6, pen=None, symbol="s")
        self.prob_plot.addItem(self.truth_scatter)

        self.silence_plot = g.addPlot(row=1, col=2, title="silent fraction per layer")
        self.silence_plot.setYRange(0, 1.05, padding=0)
        self.silence_plot.setMouseEnabled(x=False, y=False)
        self.silence_plot.hideButtons()
        self.silence_bars = {
            "latest": pg.BarGraphItem(x=[], height=[], width=0.25, brush="#2e86c1"),
            "mean": pg.BarGraphItem(x=[], height=[], width=0.25, brush="#f39c12"),
            "never fired": pg.BarGraphItem(x=[], height=[], width=0.25, brush="#7f8c8d"),
        }
        legend = self.silence_plot.addLegend(offset=(5, 5))
        for label, item in self.silence_bars.items():
            self.silence_plot.addItem(item)
            legend.addItem(item, label)

        n_members = len(self.decoder.model.members_)
        raster_title = "spike raster, latest window" + (f" (network 1 of {n_members})" if n_members > 1 else "")
        self.raster_plot = g.addPlot(row=2, col=0, colspan=2, title=raster_title)
        self.raster_plot.setLabel("bottom", "time in window", units="s")
        self.raster_plot.setMouseEnabled(x=False, y=False)
        self.raster_plot.hideButtons()
        self.raster_curve = pg.PlotCurveItem(pen=pg.mkPen("#111111", width=1), connect="pairs")
        self.raster_plot.addItem(self.raster_curve)
        self.first_spike_scatter = pg.ScatterPlotItem(size=9, symbol="o", pen=pg.mkPen("k"))
        self.raster_plot.addItem(self.first_spike_scatter)

        self.rate_plot = g.addPlot(row=2, col=2, title="firing rate (x: silent now, grey: never fired)")
        self.rate_plot.setLabel("bottom", "rate", units="Hz")
        self.rate_plot.setMouseEnabled(x=False, y=False)
        self.rate_plot.hideButtons()
        self.rate_plot.setYLink(self.raster_plot)
        self.rate_bars = pg.BarGraphItem(x0=[], y=[], height=0.8, width=[], brush="#2e86c1", pen=None)
        self.rate_plot.addItem(self.rate_bars)
        self.silent_scatter = pg.ScatterPlotItem(size=7, symbol="x", pen=pg.mkPen("#c0392b", width=1.5))
        self.never_scatter = pg.ScatterPlotItem(size=6, symbol="s", brush="#7f8c8d", pen=None)
        self.rate_plot.addItem(self.silent_scatter)
        self.rate_plot.addItem(self.never_scatter)

        # Raster / rate rows: hidden layers then the output layer, with gaps between layers;
        # the few output neurons get taller rows so that they stay readable.
        sizes = [int(p["w"].shape[0]) for p in self.decoder.model.params_]
        spacing = max(1, int(round(sum(sizes[:-1]) / 12)))
        self._rows, ticks, y = [], [], 0
        for layer, size in enumerate(sizes[:-1]):
            self._rows.append(y + np.arange(size, dtype=float))
            ticks.append((y + (size - 1) / 2, f"hidden {layer + 1}"))
            y += size + spacing
        self._rows.append(y + spacing * np.arange(sizes[-1], dtype=float))
        ticks += [(row, f"out {name}") for row, name in zip(self._rows[-1], self.decoder.class_names)]
        y = self._rows[-1][-1] + spacing
        self._layer_sizes = sizes
        names = [f"hidden {i + 1}" for i in range(len(sizes) - 1)] + ["output"]
        for plot in (self.raster_plot, self.rate_plot):
            plot.getAxis("left").setTicks([ticks])
        self.raster_plot.setYRange(-1, y, padding=0)
        self.silence_plot.getAxis("bottom").setTicks([[(i, n) for i, n in enumerate(names)]])
        self.silence_plot.setXRange(-0.6, len(sizes) - 0.4, padding=0)

        g.ci.layout.setRowStretchFactor(0, 3)
        g.ci.layout.setRowStretchFactor(1, 2)
        g.ci.layout.setRowStretchFactor(2, 3)
        g.ci.layout.setColumnStretchFactor(2, 1)
        g.ci.layout.setColumnStretchFactor(0, 2)
        self._paints = _PaintCounter(self)
        g.viewport().installEventFilter(self._paints)

    # -------------------------------------------------------------- controls
    def set_fps(self, fps):
        """Target display rate (0: refresh as fast as the event loop allows)."""
        self._timer.setInterval(0 if not fps else max(1, int(round(1000.0 / fps))))

    def start(self):
        """Start (or resume) decoding and the display."""
        if not self.decoder.running:
            self.decoder.start()
        self.decoder.resume()
        if not self._timer.isActive():
            self._timer.start()
        self.start_button.setText("Pause")

    def pause(self):
        """Pause decoding; the display freezes on the last frame."""
        self.decoder.pause()
        self.start_button.setText("Start")

    def toggle_running(self):
        if self.decoder.running and not self.decoder.paused:
            self.pause()
        else:
            self.start()

    def apply_window(self):
        """Apply the window and hop of the spin boxes."""
        try:
            self.decoder.set_window(self.window_spin.value(), self.hop_spin.value())
        except ValueError as err:
            self.statusBar().showMessage(str(err), 8000)

    def select_channels(self, names):
        """Show these channels (names of the model inputs)."""
        wanted = set(names)
        self.channel_list.blockSignals(True)
        for i in range(self.channel_list.count()):
            item = self.channel_list.item(i)
            item.setCheckState(QtCore.Qt.CheckState.Checked if item.text() in wanted
                               else QtCore.Qt.CheckState.Unchecked)
        self.channel_list.blockSignals(False)
        self._channels_changed()

    def _fill_channels(self, names):
        self._channel_names = list(names)
        wanted = self._wanted_channels or [c for c in _PREFERRED_CHANNELS if c in names] or names[:8]
        self.channel_list.blockSignals(True)
        self.channel_list.clear()
        for name in names:
            item = QtWidgets.QListWidgetItem(name)
            item.setFlags(item.flags() | QtCore.Qt.ItemFlag.ItemIsUserCheckable)
            item.setCheckState(QtCore.Qt.CheckState.Checked if name in wanted else QtCore.Qt.CheckState.Unchecked)
            self.channel_list.addItem(item)
        self.channel_list.blockSignals(False)
        self._channels_changed()

    def _channels_changed(self, *_):
        self._selected = [i for i in range(self.channel_list.count())
                          if self.channel_list.item(i).checkState() == QtCore.Qt.CheckState.Checked]
        names = [self._channel_names[i] for i in self._selected] if self._channel_names else []
        n = len(names)
        self.trace_plot.getAxis("left").setTicks([[(n - 1 - k, name) for k, name in enumerate(names)]])
        self.trace_plot.setYRange(-1, max(n, 1), padding=0)
        self._trace_scale = None

    @property
    def selected_channels(self):
        """Names of the channels shown."""
        return [self._channel_names[i] for i in self._selected] if self._channel_names else []

    def save_screenshot(self, path=None):
        """Write a PNG of the window; returns its path."""
        if path is None:
            self.screenshot_dir.mkdir(parents=True, exist_ok=True)
            path = self.screenshot_dir / f"bci_qif_gui_{time.strftime('%Y%m%d-%H%M%S')}.png"
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        if not self.grab().save(str(path)):
            raise OSError(f"could not write the screenshot {path}")
        self.statusBar().showMessage(f"screenshot written to {path}", 5000)
        return path

    def frame_rate(self, span=2.0):
        """Frames painted per second over the last ``span`` seconds."""
        return self._paints.rate(span)

    # ----------------------------------------------------------- decoder events
    def _on_status(self, status, message):
        colour = _STATUS_COLOURS.get(status, "#555555")
        text = f"<b style='color:{colour}'>{status}</b>"
        if message:
            text += f"<br><small>{_escape(message)}</small>"
        self.status_label.setText(text)
        names = self.decoder.ch_names
        if names is not None and names != self._channel_names:
            self._fill_channels(names)
        self.start_button.setText("Pause" if self.decoder.running and not self.decoder.paused else "Start")

    def _on_result(self, result):
        if self._closing:
            return
        self.n_results += 1
        self._last_result = result
        self._history.append((result.window_end, result.probabilities, result.true_label, result.prediction))
        colour = self.class_colours[result.prediction].name()
        votes = ""
        if len(result.votes) > 1:  # an ensemble: how many member networks' spikes named the decided class
            agree = int(np.sum(result.votes == result.prediction))
            votes = f"<br>{agree}/{len(result.votes)} nets spiked"
        self.decision_label.setText(f"<span style='color:{colour}'>{_escape(result.class_name)}</span> "
                                    f"<small>{result.probabilities[result.prediction]:.2f}{votes}</small>")
        # Paint the decision now: this is the moment a user sees the prediction.
        self.decision_label.repaint()
        self.shown.append((result.marker, result.window_end, result.decoded_at, time.perf_counter()))
        truth = "—" if result.true_name is None else result.true_name
        accuracy = "—" if result.accuracy is None else f"{result.accuracy:.2f} ({result.n_labelled} windows)"
        self.truth_label.setText(f"true label: {truth}\nonline accuracy: {accuracy}")
        self._update_raster(result)
        self._update_silence(result)
        self._update_stats(result)
        self._update_probabilities(result.window_end)

    def _update_raster(self, result):
        xs, ys = [], []
        for rows, times, sources in zip(self._rows, result.spike_times, result.spike_sources):
            if len(times):
                y = rows[np.asarray(sources, int)]
                xs.append(np.repeat(times, 2))
                ys.append(np.column_stack([y - 0.4, y + 0.4]).ravel())
        if xs:
            self.raster_curve.setData(np.concatenate(xs), np.concatenate(ys))
        else:
            self.raster_curve.setData([], [])
        firsts = np.asarray(result.first_spike_times, float)
        visible = firsts <= result.window_s  # pseudospikes after the window are not drawn
        self.first_spike_scatter.setData(
            x=firsts[visible], y=self._rows[-1][visible],
            brush=[self.class_colours[k] for k in np.flatnonzero(visible)])
        self.raster_plot.setXRange(0, result.window_s, padding=0.01)

    def _update_silence(self, result):
        positions, widths, silent_y, never_y = [], [], [], []
        for layer, (rows, rates) in enumerate(zip(self._rows, result.firing_rates)):
            positions.append(rows)
            widths.append(np.asarray(rates, float))
            silent_y.append(rows[np.asarray(result.silent[layer], bool)])
            never_y.append(rows[np.asarray(result.cumulative_silent[layer], bool)])
        y = np.concatenate(positions)
        width = np.concatenate(widths)
        self.rate_bars.setOpts(x0=np.zeros_like(y), y=y, width=width, height=0.8)
        top = max(float(width.max()) if width.size else 1.0, 1.0)
        self.rate_plot.setXRange(-0.06 * top, top, padding=0.02)
        silent = np.concatenate(silent_y)
        never = np.concatenate(never_y)
        self.silent_scatter.setData(x=np.full(silent.size, -0.03 * top), y=silent)
        self.never_scatter.setData(x=np.full(never.size, -0.03 * top), y=never)
        x = np.arange(len(result.silent_fraction))
        self.silence_bars["latest"].setOpts(x=x - 0.27, height=result.silent_fraction, width=0.25)
        self.silence_bars["mean"].setOpts(x=x, height=result.mean_silent_fraction, width=0.25)
        self.silence_bars["never fired"].setOpts(x=x + 0.27, height=result.cumulative_silent_fraction, width=0.25)

    def _update_stats(self, result):
        names = [f"hidden {i + 1}" for i in range(len(self._layer_sizes) - 1)] + ["output"]
        silence = " · ".join(f"{n} {100 * s:.0f}% (never {100 * c:.0f}%)" for n, s, c in
                             zip(names, result.silent_fraction, result.cumulative_silent_fraction))
        fps = self.frame_rate()
        self.stats_label.setText(
            f"decode latency p50 <b>{result.latency_p50_ms:.1f} ms</b> · p99 <b>{result.latency_p99_ms:.1f} ms</b><br>"
            f"this window {1e3 * result.latency_s:.1f} ms{' (compiling)' if result.compiled else ''}<br>"
            f"window {result.window_s:g} s · hop {1e3 * result.hop_s:.0f} ms · {result.index} windows<br>"
            f"display {fps:.0f} fps<br>silent now: {silence}")

    def _update_probabilities(self, now):
        if not self._history:
            return
        ends = np.fromiter((h[0] for h in self._history), float)
        keep = ends >= now - self.history_s
        ends = ends[keep] - now
        rows = [h for h, k in zip(self._history, keep) if k]
        probabilities = np.array([h[1] for h in rows])
        for k, curve in enumerate(self.prob_curves):
            curve.setData(ends, probabilities[:, k])
        labels = np.array([-1 if h[2] is None else h[2] for h in rows])
        labelled = labels >= 0
        self.truth_scatter.setData(x=ends[labelled], y=np.full(int(labelled.sum()), 1.07),
                                   brush=[self.class_colours[k] for k in labels[labelled]])
        self.prob_plot.setXRange(-self.history_s, 0, padding=0)

    # ------------------------------------------------------------------ frames
    def refresh(self):
        """Redraw the EEG traces (called by the display timer)."""
        if self._closing or self.decoder.paused:
            return
        data, timestamps = self.decoder.display_data(self.display_s)
        if data is None or not data.shape[1] or not self._selected:
            return
        now = timestamps[-1]
        picked = data[self._selected]
        step = max(1, picked.shape[1] // 1500)  # at most ~1500 points per channel on screen
        picked, t = picked[:, ::step], timestamps[::step] - now
        centred = picked - picked.mean(axis=1, keepdims=True)
        spread = float(np.median(np.std(centred, axis=1))) or 1.0
        # A smoothed common scale: channels keep their relative amplitudes without jumping.
        self._trace_scale = spread if self._trace_scale is None else 0.9 * self._trace_scale + 0.1 * spread
        n = picked.shape[0]
        y = centred / (6.0 * self._trace_scale) + (n - 1 - np.arange(n))[:, None]
        connect = np.ones(y.shape, bool)
        connect[:, -1] = False  # no line from one channel's end to the next one's start
        self.trace_curve.setData(np.tile(t, n), y.ravel(), connect=connect.ravel())
        self.trace_plot.setXRange(-self.display_s, 0, padding=0)
        if self._last_result is not None:
            self.window_region.setRegion((self._last_result.window_start - now, self._last_result.window_end - now))
        self._update_markers(now)
        self.n_frames += 1

    def _update_markers(self, now):
        annotations = [a for a in self.decoder.recent_annotations() if a[0] >= now - self.display_s]
        names = self.decoder.class_names
        for line, annotation in zip(self._marker_lines, annotations[-len(self._marker_lines):]):
            onset, _, description = annotation
            label = self.decoder.event_map.get(description)
            line.setPos(onset - now)
            line.label.setFormat(description + ("" if label is None else f" {names[label]}"))
            line.setVisible(True)
        for line in self._marker_lines[len(annotations):]:
            line.setVisible(False)

    def closeEvent(self, event):  # noqa: N802 - Qt API
        if not self._closing:
            self._closing = True
            self._timer.stop()
            self.decoder.on_result = None
            self.decoder.on_status = None
            self.decoder.stop()
            self.closed.emit()
        super().closeEvent(event)

    def display_delays(self):
        """Delays (seconds) from a result being decoded to its decision being painted."""
        return np.array([shown - decoded for _, _, decoded, shown in self.shown])


def _escape(text):
    return str(text).replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")


def run_gui(model, source, *, window_s=None, hop_s=0.125, duration=None, screenshot=None, display_s=5.0,
            fps=30.0, channels=None, first_result_timeout=120.0, decoder_options=None):
    """Open the decoding window for a model and a source; return the figures of the run.

    Parameters
    ----------
    model : QIFClassifier
    source : bci_qif.realtime.LSLSource
        A live stream or a :class:`~bci_qif.realtime.ReplaySource`.
    window_s, hop_s : float
        Sliding window and hop (window default: the model's trial length).
    duration : float, optional
        Decode for this many seconds after the first decoded window (connection and
        compilation come first, at most ``first_result_timeout`` s), then close. Without
        it, the window stays until the user closes it.
    screenshot : path, optional
        Write a PNG of the window as it is at the end.
    display_s, fps, channels
        See :class:`DecoderWindow`.
    decoder_options : dict, optional
        More :class:`~bci_qif.realtime.RealtimeDecoder` arguments.

    Returns
    -------
    dict
        ``windows``, ``latency_p50_ms``, ``latency_p99_ms``, ``display_fps``,
        ``display_delay_p50_ms`` (result decoded -> decision painted), ``accuracy``,
        ``status``, ``screenshot``.
    """
    app = pg.mkQApp("bci_qif")
    decoder = RealtimeDecoder(model, source, window_s=window_s, hop_s=hop_s, **(decoder_options or {}))
    window = DecoderWindow(decoder, display_s=display_s, fps=fps, channels=channels)
    window.show()
    window.start()
    loop = QtCore.QEventLoop()
    started = time.perf_counter()
    figures = {}

    def finish():
        figures["display_fps"] = window.frame_rate(span=min(duration or 2.0, 5.0))
        if screenshot is not None:
            figures["screenshot"] = str(window.save_screenshot(screenshot))
        window.close()

    def watch():
        # Count the duration from the first decoded window.
        if window.n_results or time.perf_counter() - started > first_result_timeout:
            watcher.stop()
            QtCore.QTimer.singleShot(int(duration * 1000), finish)

    window.closed.connect(loop.quit)
    watcher = QtCore.QTimer()
    if duration is not None:
        watcher.timeout.connect(watch)
        watcher.start(50)
    loop.exec()
    watcher.stop()
    delays = window.display_delays()
    summary = decoder.summary()
    summary.update(figures)
    summary.setdefault("display_fps", float("nan"))
    summary["display_delay_p50_ms"] = float(np.median(delays) * 1e3) if len(delays) else float("nan")
    window.deleteLater()
    app.processEvents()
    return summary
