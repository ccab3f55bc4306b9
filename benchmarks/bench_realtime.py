"""Real-time benchmark: display frame rate, decode latency and end-to-end delay.

Workload of issue 5: a 64-channel, 160 Hz EEG stream (real EEG: EEGMMIDB subject 2,
run 4, looped) pushed sample by sample on this benchmark's own LSL outlet (loopback
only), with a 65th channel ``MARKER`` carrying each sample's index. The real-time
window (offscreen Qt) shows all 64 channels while the decoder decodes every hop.

Figures:

* display frame rate: frames painted per second with the default 30 fps target, then
  with no target (as fast as the event loop allows), decoding running all along;
* decode latency per window: inside the running decoder (p50 / p99, JIT compilations
  excluded) and in isolation (``decode_windows`` on real windows, no stream, no GUI);
* end-to-end delay: from pushing a sample on the outlet (``perf_counter`` just before
  ``push_sample``) to the decision of the first window that ends with it being painted
  (the window's marker value identifies the sample; PlayerLSL timestamps are not used).
  Split into push -> decoded and decoded -> painted.

Usage::

    python benchmarks/bench_realtime.py --model runs/NAME [--data-dir DIR] [--seconds 15]
                                        [--window 3] [--hop 0.125] [--adapt]
"""

from __future__ import annotations

import argparse
import os
import platform
import threading
import time

import numpy as np

if not (os.environ.get("DISPLAY") or os.environ.get("WAYLAND_DISPLAY")):
    os.environ.setdefault("QT_QPA_PLATFORM", "offscreen")

from bci_qif import realtime as rt  # noqa: E402

SFREQ = 160.0
MARKER = "MARKER"


class Pusher(threading.Thread):
    """Pushes real EEG sample by sample at ``SFREQ`` on an LSL outlet, marker = sample index."""

    def __init__(self, eeg, ch_names, name):
        super().__init__(name="bench-pusher", daemon=True)
        from mne_lsl.lsl import StreamInfo, StreamOutlet

        info = StreamInfo(name, "EEG", len(ch_names) + 1, SFREQ, "float64", name)
        info.set_channel_names(list(ch_names) + [MARKER])
        info.set_channel_types(["eeg"] * len(ch_names) + ["misc"])
        info.set_channel_units(["volts"] * len(ch_names) + ["none"])
        self.outlet = StreamOutlet(info, chunk_size=1)
        self.eeg = eeg
        self.push_times = np.full(int(SFREQ * 3600), np.nan)  # by sample index
        self.stop_event = threading.Event()

    def run(self):
        from mne_lsl.lsl import local_clock

        n_samples = self.eeg.shape[1]
        start = time.perf_counter()
        index = 0
        sample = np.empty(self.eeg.shape[0] + 1)
        while not self.stop_event.is_set() and index < self.push_times.size:
            due = start + index / SFREQ
            delay = due - time.perf_counter()
            if delay > 0:
                time.sleep(delay)
            sample[:-1] = self.eeg[:, index % n_samples]
            sample[-1] = index
            self.push_times[index] = time.perf_counter()
            self.outlet.push_sample(sample, timestamp=local_clock())
            index += 1

    def stop(self):
        self.stop_event.set()
        self.join()
        self.outlet._del()


def percentiles(values_ms):
    values_ms = np.asarray(values_ms, float)
    values_ms = values_ms[np.isfinite(values_ms)]
    if not values_ms.size:
        return "n/a"
    return (f"p50 {np.percentile(values_ms, 50):.1f} ms, p99 {np.percentile(values_ms, 99):.1f} ms, "
            f"max {values_ms.max():.1f} ms (n={values_ms.size})")


def isolated_decode_latency(model, eeg, window_s, repeats):
    """``decode_windows`` on consecutive real windows (preprocessed offline), in ms."""
    from scipy.signal import lfilter

    from bci_qif.realtime import _fir

    taps = _fir(SFREQ, 8.0, 30.0)
    filtered = lfilter(taps, 1.0, eeg, axis=1).astype(np.float32)
    n = int(round(window_s * SFREQ))
    starts = np.arange(repeats) * int(SFREQ / 8) % (filtered.shape[1] - n)
    budget = model.decode_windows(filtered[None, :, :n])["budget"]
    for s in starts[:3]:
        budget = model.decode_windows(filtered[None, :, s:s + n], budget=budget)["budget"]
    times = []
    for s in starts:
        t0 = time.perf_counter()
        out = model.decode_windows(filtered[None, :, s:s + n], budget=budget)
        times.append((time.perf_counter() - t0) * 1e3)
        if out["budget"] != budget:  # a recompilation is not a decode
            times.pop()
            budget = out["budget"]
    return times


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", required=True, help="model.npz or a run folder holding one")
    parser.add_argument("--data-dir", help="data root holding MNE-eegbci-data/ (default: $MNE_DATA)")
    parser.add_argument("--seconds", type=float, default=15.0, help="length of each measured phase")
    parser.add_argument("--window", type=float, help="window in s (default: the model's trial length)")
    parser.add_argument("--hop", type=float, default=0.125)
    parser.add_argument("--repeats", type=int, default=200, help="isolated decodes")
    parser.add_argument("--adapt", action="store_true", help="the decoder keeps aligning to the user (gui --adapt)")
    args = parser.parse_args(argv)

    rt.configure_lsl(loopback=True)
    from pyqtgraph.Qt import QtCore

    import pyqtgraph as pg

    from bci_qif.gui import DecoderWindow

    model = rt.load_model(args.model)
    raw = rt.load_recording("S002R04", data_dir=args.data_dir)
    names = list(model.ch_names_)
    eeg = raw.get_data(picks=names)
    window_s = args.window or rt._trial_length_s(model)

    print(f"machine: {platform.processor() or platform.machine()}, {os.cpu_count()} CPUs, "
          f"Python {platform.python_version()}, Qt platform {os.environ.get('QT_QPA_PLATFORM', 'default')}")
    print(f"model: {model.neuron}, layers {[int(p['w'].shape[0]) for p in model.params_]}, "
          f"{len(names)} channels at {model.sfreq_:g} Hz; {len(model.members_)} network(s); window {window_s:g} s, "
          f"hop {args.hop * 1e3:.0f} ms; adaptive alignment {'on' if args.adapt else 'off'}")

    isolated = isolated_decode_latency(model, eeg, window_s, args.repeats)

    app = pg.mkQApp("bci_qif-bench")
    stream_name = f"bci_qif-bench-{os.getpid()}"  # LSL names are machine-wide
    pusher = Pusher(eeg, names, stream_name)
    pusher.start()
    decoder = rt.RealtimeDecoder(model, rt.LSLSource(name=stream_name, annotations=False), window_s=window_s,
                                 hop_s=args.hop, marker_channel=MARKER, adapt=args.adapt)
    window = DecoderWindow(decoder, display_s=5.0, fps=30.0)
    window.show()
    window.start()

    def run_for(seconds):
        loop = QtCore.QEventLoop()
        QtCore.QTimer.singleShot(int(seconds * 1000), loop.quit)
        loop.exec()

    deadline = time.perf_counter() + 120
    while window.n_results < 5 and time.perf_counter() < deadline:  # connection and compilation
        run_for(0.2)
    if not window.n_results:
        raise SystemExit(f"no window decoded: {decoder.status} {decoder.status_message}")
    window.select_channels(names)  # all 64 channels on screen
    decoder.latency = rt.LatencyStats()
    first_shown = len(window.shown)

    frames0, t0 = window.n_frames, time.perf_counter()
    paints0 = len(window._paints.times)
    run_for(args.seconds)
    elapsed = time.perf_counter() - t0
    fps_target = (len(window._paints.times) - paints0) / elapsed
    refresh_target = (window.n_frames - frames0) / elapsed

    window.set_fps(0)
    frames0, t0 = window.n_frames, time.perf_counter()
    paints0 = len(window._paints.times)
    run_for(args.seconds)
    elapsed = time.perf_counter() - t0
    fps_max = (len(window._paints.times) - paints0) / elapsed
    refresh_max = (window.n_frames - frames0) / elapsed
    window.set_fps(30.0)
    running = decoder.latency.summary()

    shown = list(window.shown)[first_shown:]
    markers = np.array([m for m, _, _, _ in shown], dtype=int)
    decoded = np.array([d for _, _, d, _ in shown])
    painted = np.array([s for _, _, _, s in shown])
    pushed = pusher.push_times[markers]
    window.close()
    pusher.stop()
    app.processEvents()

    rows = [
        ("display, 64 ch x 5 s, 30 fps target",
         f"{fps_target:.1f} frames painted/s ({refresh_target:.1f} trace updates/s)"),
        ("display, 64 ch x 5 s, no target", f"{fps_max:.1f} frames painted/s ({refresh_max:.1f} trace updates/s)"),
        ("decode latency per window, in the running decoder",
         f"p50 {running['p50_ms']:.1f} ms, p99 {running['p99_ms']:.1f} ms, max {running['max_ms']:.1f} ms "
         f"(n={running['n']})"),
        ("decode latency per window, isolated", percentiles(isolated)),
        ("end-to-end: sample pushed -> decision painted", percentiles((painted - pushed) * 1e3)),
        ("  of which push -> window decoded", percentiles((decoded - pushed) * 1e3)),
        ("  of which decoded -> decision painted", percentiles((painted - decoded) * 1e3)),
    ]
    width = max(len(r[0]) for r in rows)
    print()
    print(f"| {'measure'.ljust(width)} | result |")
    print(f"|{'-' * (width + 2)}|--------|")
    for name, value in rows:
        print(f"| {name.ljust(width)} | {value} |")
    print(f"\n{decoder.n_compilations} JIT compilations excluded; windows decoded: {decoder.summary()['windows']}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
