"""Real-time decoding of LSL streams: sources, ring buffers, causal preprocessing, a decoder thread.

The pieces, in the order samples flow through them:

* :func:`configure_lsl` points liblsl at a loopback-only configuration (tests, replays).
* A source: :class:`LSLSource` reads a live LSL stream (found by name and/or source id)
  through :class:`mne_lsl.stream.StreamLSL`; :class:`ReplaySource` plays a recording
  (any file MNE reads, or a shared EEGMMIDB subject/run, see :func:`load_recording`) with
  :class:`mne_lsl.player.PlayerLSL` and reads it back through the same :class:`LSLSource`
  code, so replay and live take one path. Annotations travel on the player's
  ``"<name>-annotations"`` stream and give the true labels.
* :class:`OnlinePreprocessor` applies the model's preprocessing (channel selection and
  order by name, reference, notch, band-pass or filter bank) causally and statefully,
  chunk by chunk.
* :class:`RingBuffer` keeps the latest preprocessed samples in memory allocated once.
* :class:`RealtimeDecoder` runs one worker thread that pulls samples, filters them, and
  every hop decodes the latest window with :meth:`QIFClassifier.decode_windows
  <bci_qif.estimator.QIFClassifier.decode_windows>`, producing :class:`DecodeResult`
  objects (probabilities, decision, spike raster, firing rates, silence statistics,
  latency, true label and running accuracy). A stalled or lost stream is reported as
  ``"disconnected"`` and reconnected.

Nothing here imports Qt: the GUI (:mod:`bci_qif.gui`) subscribes with callbacks.
"""

from __future__ import annotations

import collections
import dataclasses
import logging
import math
import re
import threading
import time
import uuid
from collections.abc import Mapping
from pathlib import Path

import numpy as np

from .errors import ChannelError, ConfigError, SamplingRateError
from .preprocessing import PreprocessingConfig, band_channel_names, check_sampling_rate

logger = logging.getLogger(__name__)

__all__ = [
    "LOOPBACK_CONFIG",
    "configure_lsl",
    "RingBuffer",
    "OnlinePreprocessor",
    "LabelTracker",
    "LatencyStats",
    "LSLSource",
    "ReplaySource",
    "load_recording",
    "load_model",
    "model_preprocessing",
    "DecodeResult",
    "RealtimeDecoder",
]

#: liblsl configuration that keeps every stream on this machine (127.0.0.1 only). liblsl
#: logs fatal errors only: a lost stream is reported by the decoder's status instead of
#: liblsl's "transmission broke off" lines (which also appear at every normal shutdown).
LOOPBACK_CONFIG = """\
[ports]
IPv6 = disable
[multicast]
ResolveScope = machine
MachineAddresses = {127.0.0.1}
Interfaces = {127.0.0.1}
ListenAddress = 127.0.0.1
[lab]
KnownPeers = {127.0.0.1}
[log]
level = -3
"""

_lsl_mode = None  # "loopback" or "network" once liblsl was configured in this process


def configure_lsl(loopback=True):
    """Configure liblsl for this process, before the first stream object is made.

    Parameters
    ----------
    loopback : bool
        True: resolve and serve streams on 127.0.0.1 only (:data:`LOOPBACK_CONFIG`),
        for tests and replays. False: keep liblsl's own configuration (``LSLAPICFG`` or
        its defaults), to reach devices on the network.

    Returns
    -------
    mode : str
        The mode in force (``"loopback"`` or ``"network"``). liblsl reads its
        configuration once per process, so a later call asking for another mode only
        logs a warning.
    """
    global _lsl_mode
    mode = "loopback" if loopback else "network"
    if _lsl_mode is None:
        if loopback:
            from mne_lsl.lsl import set_config_content

            set_config_content(LOOPBACK_CONFIG)
        _lsl_mode = mode
    elif _lsl_mode != mode:
        logger.warning("liblsl is already configured for %s streams in this process; keeping it", _lsl_mode)
    return _lsl_mode


# ------------------------------------------------------------------------------ buffers
class RingBuffer:
    """The latest ``capacity`` samples of a multichannel signal, in memory allocated once.

    Thread-safe: one thread writes while others read copies.

    Parameters
    ----------
    n_channels : int
    capacity : int
        Samples kept; older ones are overwritten.
    dtype : numpy dtype
        Of the samples (timestamps are float64).
    """

    def __init__(self, n_channels, capacity, dtype=np.float32):
        if int(n_channels) < 1 or int(capacity) < 1:
            raise ValueError(f"RingBuffer needs n_channels >= 1 and capacity >= 1, got {n_channels}, {capacity}")
        self._data = np.zeros((int(n_channels), int(capacity)), dtype=dtype)
        self._timestamps = np.zeros(int(capacity), dtype=np.float64)
        self._lock = threading.Lock()
        self._head = 0  # next write position
        self.n_written = 0  # samples written since creation or clear()

    @property
    def capacity(self):
        return self._data.shape[1]

    @property
    def n_channels(self):
        return self._data.shape[0]

    @property
    def nbytes(self):
        """Memory held by the buffer (constant for its lifetime)."""
        return self._data.nbytes + self._timestamps.nbytes

    @property
    def n_available(self):
        """Samples that can be read (at most ``capacity``)."""
        return min(self.n_written, self.capacity)

    def write(self, data, timestamps):
        """Append ``data`` (n_channels, n) with its ``timestamps`` (n,)."""
        data = np.asarray(data)
        timestamps = np.asarray(timestamps, dtype=np.float64)
        if data.ndim != 2 or data.shape[0] != self.n_channels or data.shape[1] != timestamps.shape[0]:
            raise ValueError(f"RingBuffer.write expects ({self.n_channels}, n) data and (n,) timestamps, "
                             f"got {data.shape} and {timestamps.shape}")
        n = data.shape[1]
        if n == 0:
            return
        with self._lock:
            self.n_written += n
            if n >= self.capacity:
                data, timestamps, n = data[:, -self.capacity:], timestamps[-self.capacity:], self.capacity
            first = min(n, self.capacity - self._head)
            self._data[:, self._head:self._head + first] = data[:, :first]
            self._timestamps[self._head:self._head + first] = timestamps[:first]
            rest = n - first
            if rest:
                self._data[:, :rest] = data[:, first:]
                self._timestamps[:rest] = timestamps[first:]
            self._head = (self._head + n) % self.capacity

    def latest(self, n):
        """Copies of the latest ``n`` samples (chronological) and their timestamps.

        Returns fewer than ``n`` samples when fewer are available.
        """
        with self._lock:
            n = min(int(n), self.n_available)
            idx = (self._head - n + np.arange(n)) % self.capacity
            return self._data[:, idx], self._timestamps[idx]

    def clear(self):
        """Forget every sample (the memory stays allocated)."""
        with self._lock:
            self._head = 0
            self.n_written = 0


class LatencyStats:
    """Running percentiles of the latest ``maxlen`` latencies (seconds in, milliseconds out)."""

    def __init__(self, maxlen=2000):
        self._values = collections.deque(maxlen=maxlen)

    def add(self, seconds):
        self._values.append(float(seconds))

    def __len__(self):
        return len(self._values)

    def percentile(self, q):
        """The ``q``-th percentile in milliseconds (NaN before the first value)."""
        if not self._values:
            return float("nan")
        return float(np.percentile(np.fromiter(self._values, float), q) * 1e3)

    def summary(self):
        """``{"n", "p50_ms", "p99_ms", "max_ms"}``."""
        if not self._values:
            return {"n": 0, "p50_ms": float("nan"), "p99_ms": float("nan"), "max_ms": float("nan")}
        values = np.fromiter(self._values, float) * 1e3
        return {"n": len(values), "p50_ms": float(np.percentile(values, 50)),
                "p99_ms": float(np.percentile(values, 99)), "max_ms": float(values.max())}


# ------------------------------------------------------------------------- preprocessing
def _channel_key(name):
    # EEGMMIDB EDF files spell 'FC5' as 'Fc5.': compare without case, dots and spaces.
    return re.sub(r"[\s.]", "", str(name)).lower()


def _match_channels(available, wanted, *, source):
    """Indices of ``wanted`` channels in ``available`` (exact name, else case/dot-insensitive)."""
    available = list(available)
    exact = {name: i for i, name in enumerate(available)}
    loose = collections.defaultdict(list)
    for i, name in enumerate(available):
        loose[_channel_key(name)].append(i)
    indices, missing = [], []
    for name in wanted:
        if name in exact:
            indices.append(exact[name])
        elif len(loose.get(_channel_key(name), ())) == 1:
            indices.append(loose[_channel_key(name)][0])
        else:
            missing.append(name)
    if missing:
        raise ChannelError(
            f"{source} lacks {len(missing)} channel(s) the model needs: {missing}. "
            f"It has {len(available)} channel(s)" + (f": {available[:16]}" if available else "")
            + (" ..." if len(available) > 16 else "")
            + ". Stream a recording with these channels, or train a model on the channels the stream has."
        )
    return np.asarray(indices, dtype=np.intp)


def _fir(sfreq, l_freq, h_freq, *, l_trans="auto", h_trans="auto"):
    """Causal (minimum-phase) FIR taps with MNE's design for these band edges."""
    import mne

    return mne.filter.create_filter(None, sfreq, l_freq, h_freq, l_trans_bandwidth=l_trans,
                                    h_trans_bandwidth=h_trans, phase="minimum", fir_design="firwin",
                                    verbose=False)


class _StreamingFIR:
    """An FIR filter applied chunk by chunk with state carried between chunks."""

    def __init__(self, taps):
        from scipy.signal import lfilter_zi

        self.taps = np.asarray(taps, dtype=np.float64)
        self._zi_unit = lfilter_zi(self.taps, 1.0)
        self._zi = None

    def reset(self):
        self._zi = None

    def __call__(self, x):
        from scipy.signal import lfilter

        if self._zi is None:
            # Start in the steady state of the first sample: no step transient from a DC offset.
            self._zi = x[:, :1] * self._zi_unit[None, :]
        y, self._zi = lfilter(self.taps, 1.0, x, axis=1, zi=self._zi)
        return y


class OnlinePreprocessor:
    """The model's preprocessing, applied causally to a stream chunk by chunk.

    Steps follow :mod:`bci_qif.preprocessing` (reference, channel selection, notch,
    band-pass or filter bank), each filter being MNE's FIR design for the same edges in
    its causal minimum-phase form, run with state carried across chunks. A model trained
    with ``filter_phase="minimum"`` sees exactly the filter it was trained with (after
    the first filter length of samples); one trained zero-phase sees the same band edges
    with a causal phase.

    Parameters
    ----------
    config : PreprocessingConfig or dict
        The model's preprocessing (see :func:`model_preprocessing`).
    stream_ch_names : sequence of str
        Channels of the stream, in stream order.
    stream_sfreq : float
        Nominal rate of the stream (Hz).
    model_ch_names : sequence of str or None
        Channels the model expects, in order (``QIFClassifier.ch_names_``); for a filter
        bank, the band channel names.
    model_sfreq : float
        Rate the model was trained at (``QIFClassifier.sfreq_``).
    stream_ch_types : sequence of str, optional
        Channel types of the stream (for ``reference="average"``: the EEG channels).
    stream_scales : sequence of float, optional
        Factor bringing each stream channel to SI units (``1e-6`` for microvolts): models
        are trained on recordings in volts.
    n_model_channels : int, optional
        Number of model inputs, used when ``model_ch_names`` is None.
    source : str
        Name of the stream in error messages.

    Raises
    ------
    ChannelError
        The stream lacks channels the model needs (all of them are named).
    SamplingRateError
        The stream's rate differs from the model's, or is irregular.
    """

    def __init__(self, config, stream_ch_names, stream_sfreq, model_ch_names, model_sfreq, *,
                 stream_ch_types=None, stream_scales=None, n_model_channels=None, source="the stream"):
        config = config if isinstance(config, PreprocessingConfig) else PreprocessingConfig.from_dict(config)
        self.config = config
        stream_ch_names = list(stream_ch_names)
        stream_sfreq = float(stream_sfreq)
        if not stream_sfreq > 0:
            raise SamplingRateError(
                f"{source} has an irregular sampling rate (nominal {stream_sfreq:g} Hz); the model needs "
                f"samples at {float(model_sfreq):g} Hz.")
        if not math.isclose(stream_sfreq, float(model_sfreq), rel_tol=1e-6):
            trained = f"{float(model_sfreq):g} Hz" + (
                f" (its recordings were resampled to {config.resample:g} Hz)" if config.resample else "")
            raise SamplingRateError(
                f"{source} is sampled at {stream_sfreq:g} Hz but the model was trained at {trained}. "
                f"Stream at {float(model_sfreq):g} Hz (resample at the source), or train a model at "
                f"{stream_sfreq:g} Hz.")
        check_sampling_rate(stream_sfreq, config, source=source)
        self.sfreq = stream_sfreq

        bands = config.filter_bank
        if model_ch_names is not None:
            model_ch_names = list(model_ch_names)
            base = list(dict.fromkeys(n.split("@")[0] for n in model_ch_names)) if bands else model_ch_names
        elif config.channels is not None:
            base = list(config.channels)
        else:
            if n_model_channels is not None and len(stream_ch_names) != int(n_model_channels):
                raise ChannelError(
                    f"{source} has {len(stream_ch_names)} channels; the model (trained without channel names) "
                    f"expects {n_model_channels} in a fixed order.")
            base = stream_ch_names
        self._pick = _match_channels(stream_ch_names, base, source=source)
        self.input_ch_names = [stream_ch_names[i] for i in self._pick]
        self.ch_names = band_channel_names(base, bands) if bands else list(base)
        if model_ch_names is not None and [_channel_key(c) for c in self.ch_names] != [
                _channel_key(c) for c in model_ch_names]:
            raise ChannelError(
                f"the preprocessing of the model yields channels {self.ch_names[:8]}... but the model expects "
                f"{model_ch_names[:8]}...; the model's preprocessing context does not match its inputs.")

        self._scales = None
        if stream_scales is not None and np.any(np.asarray(stream_scales, float) != 1.0):
            self._scales = np.asarray(stream_scales, float)[:, None]
        self._reference = None
        if config.reference == "average":
            types = list(stream_ch_types) if stream_ch_types is not None else ["eeg"] * len(stream_ch_names)
            ref = [i for i, t in enumerate(types) if t == "eeg"] or list(range(len(stream_ch_names)))
            self._reference = np.asarray(ref, dtype=np.intp)
        elif isinstance(config.reference, list):
            self._reference = _match_channels(stream_ch_names, config.reference, source=source)

        self._notches = []
        if config.notch is not None:
            for freq in np.atleast_1d(config.notch):
                # mne.filter.notch_filter's FIR: width freq / 200 plus a 1 Hz transition.
                half = freq / 400.0 + 0.5
                self._notches.append(_StreamingFIR(_fir(stream_sfreq, freq + half, freq - half,
                                                        l_trans=0.5, h_trans=0.5)))
        self._bands = [_StreamingFIR(_fir(stream_sfreq, lo, hi)) if (lo is not None or hi is not None) else None
                       for lo, hi in (config.bands or [(None, None)])]

    @property
    def n_outputs(self):
        return len(self.ch_names)

    @property
    def filter_length(self):
        """Longest FIR (samples): outputs are fully settled after this many samples."""
        lengths = [f.taps.size for f in self._notches + [b for b in self._bands if b is not None]]
        return max(lengths, default=1)

    def reset(self):
        """Forget the filter state (after a gap in the stream)."""
        for f in self._notches + [b for b in self._bands if b is not None]:
            f.reset()

    def process(self, chunk):
        """Preprocess a chunk of stream samples.

        Parameters
        ----------
        chunk : array, shape (n_stream_channels, n_samples)

        Returns
        -------
        array of float32, shape (n_outputs, n_samples)
        """
        x = np.asarray(chunk, dtype=np.float64)
        if x.shape[1] == 0:
            return np.zeros((self.n_outputs, 0), np.float32)
        if self._scales is not None:
            x = x * self._scales
        picked = x[self._pick]
        if self._reference is not None:
            picked = picked - x[self._reference].mean(axis=0, keepdims=True)
        for notch in self._notches:
            picked = notch(picked)
        outputs = [picked if band is None else band(picked) for band in self._bands]
        if len(outputs) == 1:
            return outputs[0].astype(np.float32)
        # Filter bank: channel-major like preprocessing._stack_bands.
        return np.stack(outputs, axis=1).reshape(-1, x.shape[1]).astype(np.float32)


# ------------------------------------------------------------------------------- labels
class LabelTracker:
    """True labels of windows from annotations, and the running online accuracy.

    A window gets the class of an annotation that covers at least ``min_overlap`` of
    it (annotations give onset and duration in stream time); other windows (rest,
    between trials) stay unlabelled and do not count towards the accuracy.

    Parameters
    ----------
    event_map : mapping of str to int
        Annotation description -> class index (into ``classes_``).
    min_overlap : float
        Share of the window that must lie inside the annotation.
    maxlen : int
        Annotations kept (older ones are dropped: memory stays flat).
    """

    def __init__(self, event_map, min_overlap=0.5, maxlen=256):
        self.event_map = dict(event_map)
        self.min_overlap = float(min_overlap)
        self.annotations = collections.deque(maxlen=maxlen)  # (onset, duration, description)
        self.n_labelled = 0
        self.n_correct = 0

    def add(self, onset, duration, description):
        self.annotations.append((float(onset), max(float(duration), 0.0), str(description)))

    def label_for(self, start, end):
        """Class index of the window ``[start, end]`` (stream time), or None."""
        length = max(end - start, 1e-9)
        for onset, duration, description in reversed(self.annotations):
            if description not in self.event_map:
                continue
            overlap = min(end, onset + duration) - max(start, onset)
            if overlap >= self.min_overlap * length:
                return self.event_map[description]
        return None

    def score(self, predicted, label):
        """Count a decoded window; returns the running accuracy (None before any label)."""
        if label is not None:
            self.n_labelled += 1
            self.n_correct += int(predicted == label)
        return self.accuracy

    @property
    def accuracy(self):
        return self.n_correct / self.n_labelled if self.n_labelled else None

    def reset_score(self):
        self.n_labelled = self.n_correct = 0


# ------------------------------------------------------------------------------- sources
@dataclasses.dataclass
class StreamMeta:
    """What a connected stream is: name, rate and channels."""

    name: str
    source_id: str
    sfreq: float
    ch_names: list
    ch_types: list
    scales: list = None  # factor to SI units per channel (1e-6 for a channel in microvolts)


class LSLSource:
    """A live LSL stream read through :class:`mne_lsl.stream.StreamLSL`.

    Used by one thread (the decoder worker): :meth:`connect`, then :meth:`pull` and
    :meth:`pull_annotations` in a loop, :meth:`disconnect` or :meth:`close`. Samples are
    acquired by the caller (no acquisition thread of its own), so every sample is
    handed over exactly once.

    Parameters
    ----------
    name : str, optional
        Stream name. At least one of ``name`` and ``source_id``.
    source_id : str, optional
    annotations : str or bool
        Name of a stream of annotations (markers) to follow; True (default) means
        ``"<name>-annotations"`` (what :class:`~mne_lsl.player.PlayerLSL` creates), False none.
    bufsize : float
        Seconds of samples the inlet may hold between two pulls.
    """

    def __init__(self, name=None, source_id=None, *, annotations=True, bufsize=5.0):
        if name is None and source_id is None:
            raise ValueError("LSLSource needs a stream name or a source_id")
        self.name, self.source_id = name, source_id
        if annotations is True:
            annotations = f"{name}-annotations" if name else None
        self.annotations_name = annotations or None
        self.bufsize = float(bufsize)
        self._stream = None
        self._annotations = None
        self._annotation_names = None
        self._chunks = []

    def __repr__(self):
        return f"{type(self).__name__}(name={self.name!r}, source_id={self.source_id!r})"

    @property
    def description(self):
        """How the stream is named in messages."""
        parts = [f"name {self.name!r}"] if self.name else []
        parts += [f"source_id {self.source_id!r}"] if self.source_id else []
        return "LSL stream with " + " and ".join(parts)

    @property
    def connected(self):
        return self._stream is not None

    def open(self):
        """Start what the source needs besides the stream (nothing for a live stream)."""

    def connect(self, timeout=2.0):
        """Resolve and connect to the stream.

        Returns
        -------
        StreamMeta

        Raises
        ------
        ConnectionError
            No stream (or more than one) matches the name / source id.
        """
        from mne_lsl.stream import StreamLSL

        configure_lsl(loopback=_lsl_mode != "network")
        stream = StreamLSL(bufsize=self.bufsize, name=self.name, source_id=self.source_id)
        try:
            stream.connect(acquisition_delay=None, timeout=timeout)
        except RuntimeError as err:
            raise ConnectionError(f"no {self.description} found ({err})") from None
        self._chunks = []
        # Called inside stream.acquire() on this thread: hand every chunk over once.
        stream.add_callback(self._collect)
        self._stream = stream
        try:
            # Channels declared in e.g. microvolts (unit_mul -6) are scaled to volts, as in training.
            scales = [10.0 ** int(mul) for _, mul in stream.get_channel_units()]
        except Exception:  # noqa: BLE001 - a stream without unit metadata is taken as SI
            scales = None
        meta = StreamMeta(stream.name, stream.source_id, float(stream.info["sfreq"]), list(stream.ch_names),
                          list(stream.get_channel_types()), scales)
        self._connect_annotations(timeout)
        return meta

    def _collect(self, data, timestamps, info):
        self._chunks.append((np.array(data, copy=True), np.array(timestamps, copy=True)))
        return data, timestamps

    def _connect_annotations(self, timeout):
        if not self.annotations_name:
            return
        from mne_lsl.lsl import StreamInlet, resolve_streams

        infos = resolve_streams(timeout=min(timeout, 1.0), name=self.annotations_name)
        if len(infos) != 1:
            logger.info("no annotation stream %r (%d found); no true labels", self.annotations_name, len(infos))
            return
        inlet = StreamInlet(infos[0])
        inlet.open_stream(timeout=timeout)
        self._annotation_names = inlet.get_sinfo().get_channel_names()
        self._annotations = inlet

    def pull(self):
        """New samples since the last pull: ``(data (n_channels, n), timestamps (n,))``."""
        self._stream.acquire()
        chunks, self._chunks = self._chunks, []
        if not chunks:
            return None, None
        if len(chunks) == 1:
            data, timestamps = chunks[0]
        else:
            data = np.concatenate([c[0] for c in chunks])
            timestamps = np.concatenate([c[1] for c in chunks])
        return data.T, timestamps

    def pull_annotations(self):
        """New annotations: list of ``(timestamp, description, duration)``."""
        if self._annotations is None:
            return []
        data, timestamps = self._annotations.pull_chunk(timeout=0.0)
        out = []
        for row, ts in zip(np.atleast_2d(data), np.atleast_1d(timestamps)):
            if self._annotation_names is None or len(row) != len(self._annotation_names):
                continue
            for k in np.flatnonzero(row):
                # One-hot encoding of PlayerLSL: the value is the duration (-1 for 0 s).
                out.append((float(ts), self._annotation_names[k], max(float(row[k]), 0.0)))
        return out

    def disconnect(self):
        """Close the inlets (the source can connect again)."""
        if self._annotations is not None:
            try:
                # Destroy (not only close) the inlet, so that its receiver thread ends now.
                destroy = getattr(self._annotations, "_del", None) or self._annotations.close_stream
                destroy()
            except Exception:  # noqa: BLE001 - closing a broken inlet must not raise
                pass
            self._annotations = None
        if self._stream is not None:
            try:
                self._stream.disconnect()
            except Exception:  # noqa: BLE001
                logger.debug("disconnecting %s failed", self, exc_info=True)
            self._stream = None
        self._chunks = []

    def close(self):
        """Disconnect and release everything the source started."""
        self.disconnect()


def _default_run(model):
    from .datasets import EEGBCI_TASKS

    task = (_dataset_context(model) or {}).get("task", "left_right_imagery")
    return EEGBCI_TASKS.get(task, EEGBCI_TASKS["left_right_imagery"]).runs[0]


def load_recording(file_or_subject, *, run=None, data_dir=None, model=None):
    """Read a recording to replay: a file MNE reads, or a shared EEGMMIDB subject.

    Parameters
    ----------
    file_or_subject : str, path or int
        A path to a recording, or an EEGMMIDB subject as ``2``, ``"S002"`` or
        ``"S002R08"`` (the run may be given inside the name).
    run : int, optional
        EEGMMIDB run; default the first run of the model's task (else 4).
    data_dir : path, optional
        Data root holding ``MNE-eegbci-data/`` (default ``$MNE_DATA``).
    model : QIFClassifier, optional
        Used for the default run.

    Returns
    -------
    mne.io.Raw
        Preloaded; EEGMMIDB channel names standardized (``'Fc5.'`` -> ``'FC5'``).
    """
    import mne
    from mne.datasets import eegbci

    from .datasets import eegbci_files, read_raw_checked

    text = str(file_or_subject)
    match = re.fullmatch(r"(?i)s?(\d{1,3})(?:r(\d{1,2}))?", text.strip())
    if not Path(text).exists() and match:
        subject = int(match.group(1))
        run = int(match.group(2)) if match.group(2) else (run or (_default_run(model) if model else 4))
        base = eegbci_files(subject, "left_right_imagery", data_dir)[0].parent
        path = base / f"S{subject:03d}R{int(run):02d}.edf"
    else:
        path = Path(text)
    reader = mne.io.read_raw_edf if path.suffix.lower() == ".edf" else None
    raw = read_raw_checked(path, reader=reader)
    if re.fullmatch(r"S\d{3}R\d{2}", path.stem):
        eegbci.standardize(raw)
    return raw


class ReplaySource(LSLSource):
    """A recording played as an LSL stream by :class:`~mne_lsl.player.PlayerLSL`, read back live.

    The player streams the samples (and the annotations, on ``"<name>-annotations"``);
    reading goes through :class:`LSLSource` exactly like a live stream.

    Parameters
    ----------
    raw : mne.io.Raw or path
        The recording (see :func:`load_recording`).
    name : str, optional
        Stream name (default: a unique ``"bci_qif-replay-<id>"``).
    chunk_size : int
        Samples per push of the player.
    n_repeat : int or inf
        Times the file is played (it loops).
    """

    def __init__(self, raw, *, name=None, chunk_size=10, n_repeat=np.inf, bufsize=5.0):
        import mne

        if not isinstance(raw, mne.io.BaseRaw):
            raw = load_recording(raw)
        name = name or f"bci_qif-replay-{uuid.uuid4().hex[:8]}"
        # Read back by name only: resolving by name and source id splits liblsl's timeout in two.
        super().__init__(name=name, annotations=len(raw.annotations) > 0, bufsize=bufsize)
        self.raw = raw
        self.chunk_size = int(chunk_size)
        self.n_repeat = n_repeat
        self.player = None
        self._opened = False

    @property
    def description(self):
        fnames = [f for f in (getattr(self.raw, "filenames", None) or []) if f is not None]
        what = Path(fnames[0]).name if fnames else "a recording"
        return f"replay of {what} (LSL stream {self.name!r})"

    def open(self):
        """Start the player the first time the source is opened.

        Later reconnections do not restart it: a player that was stopped is a lost
        stream, like a live device switched off (:meth:`start_player` brings it back).
        """
        if not self._opened:
            self._opened = True
            self.start_player()

    def start_player(self):
        """Start playing (again) from the beginning of the recording."""
        from mne_lsl.player import PlayerLSL

        if self.player is not None:
            return
        configure_lsl(loopback=_lsl_mode != "network")
        self.player = PlayerLSL(self.raw, chunk_size=self.chunk_size, n_repeat=self.n_repeat, name=self.name,
                                source_id=self.name, annotations=self.annotations_name is not None).start()

    def stop_player(self):
        """Stop playing: for a reader the stream is lost."""
        if self.player is not None:
            try:
                self.player.stop()
            finally:
                self.player = None

    def close(self):
        self.disconnect()
        self.stop_player()


# --------------------------------------------------------------------------------- model
def load_model(path):
    """Load a trained model from a ``model.npz`` file or a run folder holding one."""
    from .estimator import QIFClassifier

    path = Path(path)
    if path.is_dir():
        candidates = [path / "model.npz", path / "checkpoint.npz"]
        found = next((p for p in candidates if p.is_file()), None)
        if found is None:
            raise FileNotFoundError(f"{path} holds no model.npz (train one with `python app.py train --out {path}`)")
        path = found
    if not path.is_file():
        raise FileNotFoundError(f"model file not found: {path}")
    return QIFClassifier.load(path)


def _context_preprocessing(model):
    context = getattr(model, "context_", None) or {}
    pre = context.get("preprocessing")
    # `app.py train` stores the TrialSet config: {"preprocessing": {...}, "dataset": {...}, ...}.
    if isinstance(pre, Mapping) and isinstance(pre.get("preprocessing"), Mapping):
        return pre["preprocessing"], pre.get("dataset")
    return pre, context.get("dataset")


def _dataset_context(model):
    return _context_preprocessing(model)[1]


def model_preprocessing(model):
    """The :class:`PreprocessingConfig` a model was trained with (from its saved context).

    A model saved without context gets the default preprocessing, with a warning.
    """
    pre, _ = _context_preprocessing(model)
    if pre is None:
        logger.warning("the model carries no preprocessing context; assuming the default preprocessing")
        return PreprocessingConfig()
    return PreprocessingConfig.from_dict(pre)


def _class_names(model):
    names = (getattr(model, "context_", None) or {}).get("class_names")
    out = []
    for cls in model.classes_:
        if names is not None and isinstance(cls, (int, np.integer)) and 0 <= int(cls) < len(names):
            out.append(str(names[int(cls)]))
        else:
            out.append(str(cls))
    return out


def _event_map(model, class_names):
    """Annotation description -> class index, from the model's dataset context."""
    mapping = {name: i for i, name in enumerate(class_names)}
    dataset = _dataset_context(model) or {}
    events = dataset.get("events")
    if events is None and dataset.get("task"):
        from .datasets import EEGBCI_TASKS

        task = EEGBCI_TASKS.get(dataset["task"])
        events = task.events if task else None
    for description, class_name in (events or {}).items():
        if class_name in mapping:
            mapping[str(description)] = mapping[class_name]
    return mapping


def _trial_length_s(model):
    return float(model.T_) / float(model._time_scale)


# ------------------------------------------------------------------------------- decoder
@dataclasses.dataclass
class DecodeResult:
    """What one decoded window gives (plain NumPy values, safe to hand across threads).

    Attributes
    ----------
    index : int
        Window counter since the decoder started.
    window_start, window_end : float
        LSL timestamps of the first and last sample of the window.
    window_s, hop_s : float
    probabilities : ndarray (n_classes,)
    prediction : int
        Index of the decided class (soft vote of the ensemble); ``class_name`` its name.
    votes : ndarray (n_members,)
        Each member network's earliest ordinary output spike (class index, -1: none).
    first_spike_times : ndarray (n_classes,), seconds from the window start.
        The first member's; it is also the network of the spike and silence fields.
    spike_times, spike_sources : tuple of ndarray, per layer (hidden..., output)
        Ordinary spikes of the window: time in seconds from the window start, neuron.
    spike_counts : tuple of ndarray (n_neurons,), per layer.
    firing_rates : tuple of ndarray (n_neurons,), per layer, in Hz over the window.
    silent_fraction : ndarray (n_layers,)
        Share of each layer's neurons with no spike in this window.
    cumulative_silent_fraction : ndarray (n_layers,)
        Share that has not spiked in any window since the start.
    mean_silent_fraction : ndarray (n_layers,)
        Mean of ``silent_fraction`` over all windows so far.
    silent, cumulative_silent : tuple of bool ndarray, per layer: which neurons.
    latency_s : float
        Decode time of this window (taking it from the buffer to the result).
    compiled : bool
        The decode included a JIT compilation (excluded from the latency statistics).
    latency_p50_ms, latency_p99_ms : float
        Over the latest windows (compilations excluded).
    true_label : int or None, ``true_name`` its name.
    accuracy : float or None
        Running online accuracy over labelled windows; ``n_labelled`` windows.
    marker : float or None
        Value of the marker channel at the window's last sample (when configured).
    decoded_at : float
        ``time.perf_counter()`` when the result was ready.
    """

    index: int
    window_start: float
    window_end: float
    window_s: float
    hop_s: float
    probabilities: np.ndarray
    prediction: int
    class_name: str
    votes: np.ndarray
    first_spike_times: np.ndarray
    spike_times: tuple
    spike_sources: tuple
    spike_counts: tuple
    firing_rates: tuple
    silent_fraction: np.ndarray
    cumulative_silent_fraction: np.ndarray
    mean_silent_fraction: np.ndarray
    silent: tuple
    cumulative_silent: tuple
    latency_s: float
    compiled: bool
    latency_p50_ms: float
    latency_p99_ms: float
    true_label: int | None
    true_name: str | None
    accuracy: float | None
    n_labelled: int
    marker: float | None
    decoded_at: float


class RealtimeDecoder:
    """Decode a stream in real time on a worker thread.

    Every ``hop_s`` of new samples, the latest ``window_s`` of preprocessed data is
    decoded; results go to the ``on_result`` callback (called on the worker thread)
    and to :attr:`history`. The stream is polled continuously; if no sample arrives
    for ``stall_timeout`` seconds the status becomes ``"disconnected"`` and the
    decoder reconnects (same name / source id) every ``reconnect_interval`` seconds.

    Parameters
    ----------
    model : QIFClassifier
        A fitted model (see :func:`load_model`).
    source : LSLSource
        Where samples come from (a :class:`ReplaySource` for recordings).
    window_s : float, optional
        Window length (default: the model's trial length).
    hop_s : float
        Step between decoded windows.
    display_s : float
        Seconds of preprocessed samples kept for display (the ring buffer holds
        ``max(display_s, 2 * window_s)``).
    stall_timeout : float
        Seconds without samples before the stream counts as lost.
    reconnect_interval : float
        Seconds between reconnection attempts.
    connect_timeout : float
        Seconds each attempt waits for the stream (the first one waits at least 5 s).
    marker_channel : str, optional
        A stream channel (not a model input) whose value at each window's last sample
        is reported as ``DecodeResult.marker`` (end-to-end latency measurements).
    event_map : mapping, optional
        Annotation description -> class index (default: from the model's context,
        e.g. ``T1`` -> left).
    on_result : callable(DecodeResult), optional
    on_status : callable(str status, str message), optional
        Status is one of ``"idle"``, ``"connecting"``, ``"calibrating"``, ``"connected"``,
        ``"paused"``, ``"disconnected"``, ``"error"``, ``"stopped"``.
    history : int
        Latest results kept in :attr:`history`.
    poll_interval : float
        Sleep between polls of an idle stream (seconds).
    calibration_s : float, optional
        Align a new user first (models with ``recenter=True``): the first
        ``calibration_s`` seconds of the stream are not decoded; their windows
        (unlabelled, one every half window) calibrate the model
        (:meth:`QIFClassifier.calibrate <bci_qif.estimator.QIFClassifier.calibrate>`),
        status ``"calibrating"`` meanwhile. Without it (and without ``adapt``),
        windows are aligned by the model's training reference (right for a user the
        model was trained on).
    adapt : bool
        Keep aligning to the user while decoding (models with ``recenter=True``):
        decoded windows, at most one every half window, join a running mean of the
        user's covariances (:meth:`QIFClassifier.adapt
        <bci_qif.estimator.QIFClassifier.adapt>`) that aligns every later window. Needs
        no calibration phase; after ``calibration_s`` it goes on from the calibration.
    """

    def __init__(self, model, source, *, window_s=None, hop_s=0.125, display_s=10.0, stall_timeout=1.0,
                 reconnect_interval=1.0, connect_timeout=2.0, marker_channel=None, event_map=None, on_result=None,
                 on_status=None, history=600, poll_interval=0.001, calibration_s=None, adapt=False):
        self.model = model
        self.source = source
        self.config = model_preprocessing(model)
        self.class_names = _class_names(model)
        self.event_map = dict(event_map) if event_map is not None else _event_map(model, self.class_names)
        self.window_s, self.hop_s = self._check_window(window_s or _trial_length_s(model), hop_s)
        self.display_s = float(display_s)
        self.stall_timeout = float(stall_timeout)
        self.reconnect_interval = float(reconnect_interval)
        self.connect_timeout = float(connect_timeout)
        self.marker_channel = marker_channel
        self.on_result = on_result
        self.on_status = on_status
        self.poll_interval = float(poll_interval)
        self.calibration_s = self._check_calibration(calibration_s)
        self.adapt = self._check_alignment(bool(adapt), "adapt")
        self._last_adapted_sample = 0
        self.calibrated = False
        self._calibration_windows = []
        self._last_calibration_sample = 0
        self.history = collections.deque(maxlen=int(history))
        self.latency = LatencyStats()
        self.labels = LabelTracker(self.event_map)
        self.status, self.status_message = "idle", ""
        self.last_error = None
        self.meta = None
        self.n_reconnects = 0
        self.n_compilations = 0
        self._preprocessor = None
        self._buffer = None
        self._marker_buffer = None
        self._marker_index = None
        self._thread = None
        self._stop = threading.Event()
        self._paused = threading.Event()
        self._lock = threading.Lock()  # guards settings changed from other threads
        self._pending_window = None
        self._budget = None
        self._compiled_lengths = set()
        self._index = 0
        self._reset_statistics()

    # ---------------------------------------------------------------- public API
    @property
    def ch_names(self):
        """Channels of the preprocessed data (the model's inputs); None before connecting."""
        return None if self._preprocessor is None else list(self._preprocessor.ch_names)

    @property
    def running(self):
        return self._thread is not None and self._thread.is_alive()

    @property
    def paused(self):
        return self._paused.is_set()

    def start(self):
        """Start the worker thread (it opens the source and connects)."""
        if self.running:
            return self
        self._stop.clear()
        self._thread = threading.Thread(target=self._run, name="bci_qif-decoder", daemon=True)
        self._thread.start()
        return self

    def stop(self, timeout=10.0):
        """Stop the worker, disconnect and close the source (stops a replay's player)."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout)
            if self._thread.is_alive():
                logger.warning("decoder thread did not stop within %.0f s", timeout)
            self._thread = None
        try:
            self.source.close()
        finally:
            self._set_status("stopped", "")

    def pause(self):
        """Stop decoding (samples are still received, so resuming is immediate)."""
        self._paused.set()
        if self.status == "connected":
            self._set_status("paused", "decoding paused")

    def resume(self):
        """Decode again from the latest window."""
        self._paused.clear()
        if self.status == "paused":
            self._set_status("connected", self._connected_message())

    def set_window(self, window_s=None, hop_s=None):
        """Change window length and/or hop (applied by the worker before its next decode)."""
        window_s, hop_s = self._check_window(window_s or self.window_s, hop_s or self.hop_s)
        with self._lock:
            self._pending_window = (window_s, hop_s)

    def display_data(self, seconds):
        """Latest preprocessed samples for display: ``(data, timestamps)`` or ``(None, None)``."""
        buffer = self._buffer
        if buffer is None or self.meta is None:
            return None, None
        return buffer.latest(int(round(seconds * self.meta.sfreq)))

    def recent_annotations(self):
        """Annotations received so far (latest ones): list of ``(onset, duration, description)``."""
        return list(self.labels.annotations)

    def summary(self):
        """Figures of the run so far: windows, latency, reconnects, accuracy, calibration."""
        stats = self.latency.summary()
        return {"windows": self._index, "latency_p50_ms": stats["p50_ms"], "latency_p99_ms": stats["p99_ms"],
                "latency_max_ms": stats["max_ms"], "compilations": self.n_compilations,
                "reconnects": self.n_reconnects, "accuracy": self.labels.accuracy,
                "n_labelled": self.labels.n_labelled, "status": self.status, "last_error": self.last_error,
                "calibrated": self.calibrated,
                "adapted_windows": getattr(self.model.encoder_, "live_count_", 0) if self.adapt else 0}

    # ------------------------------------------------------------------ helpers
    def _check_window(self, window_s, hop_s):
        window_s, hop_s = float(window_s), float(hop_s)
        sfreq = float(self.model.sfreq_)
        if not (window_s > 0 and math.isfinite(window_s)) or round(window_s * sfreq) < 8:
            raise ConfigError(f"window_s must span at least 8 samples at {sfreq:g} Hz, got {window_s!r} s")
        if not (hop_s > 0 and math.isfinite(hop_s)) or round(hop_s * sfreq) < 1:
            raise ConfigError(f"hop_s must span at least one sample at {sfreq:g} Hz, got {hop_s!r} s")
        return window_s, hop_s

    def _check_calibration(self, calibration_s):
        if calibration_s is None:
            return None
        if not calibration_s >= 2 * self.window_s:
            raise ValueError(f"calibration_s must cover at least two windows ({2 * self.window_s:g} s), "
                             f"got {calibration_s!r}")
        return float(self._check_alignment(calibration_s, "calibration_s"))

    def _check_alignment(self, value, name):
        encoder = getattr(self.model, "encoder_", None)
        if value and not getattr(encoder, "recenter", False):
            raise ValueError(f"{name} needs a model that re-centres subjects (encoding='tangent_space', "
                             "recenter=True)")
        return value

    def _calibrate_step(self, n_window):
        """Collect a window of the new user; calibrate the model once ``calibration_s`` have streamed."""
        buffer, step = self._buffer, max(1, n_window // 2)
        # Windows ending every half window since the last one cut; samples can arrive in
        # large chunks (e.g. while the decoder compiled), so cut every window still held.
        oldest_end = buffer.n_written - buffer.n_available + n_window
        ends = range(max(self._last_calibration_sample + step, oldest_end), buffer.n_written + 1, step)
        if len(ends):
            start = ends[0] - n_window  # sample index (since the buffer was cleared) of recent[:, 0]
            recent = buffer.latest(buffer.n_written - start)[0]
            self._calibration_windows += [recent[:, end - n_window - start:end - start] for end in ends]
            self._last_calibration_sample = ends[-1]
        streamed = buffer.n_written / self.meta.sfreq
        self._set_status("calibrating", f"aligning to this user: {min(streamed, self.calibration_s):.0f} of "
                                        f"{self.calibration_s:g} s of unlabelled EEG")
        if streamed < self.calibration_s:
            return
        windows = [w for w in self._calibration_windows if w.shape[-1] == n_window]  # the window may have changed
        self.model.calibrate(np.stack(windows))
        n_windows = len(windows)
        self.calibrated, self._calibration_windows = True, []
        self._set_status("paused" if self.paused else "connected",
                         f"{self._connected_message()}; calibrated on {n_windows} windows")

    def _set_status(self, status, message):
        changed = (status, message) != (self.status, self.status_message)
        self.status, self.status_message = status, message
        if status == "error":
            self.last_error = message
        if changed:
            logger.info("decoder %s: %s", status, message)
            if self.on_status is not None:
                try:
                    self.on_status(status, message)
                except Exception:  # noqa: BLE001 - a subscriber must not kill the worker
                    logger.exception("on_status callback failed")

    def _connected_message(self):
        meta = self.meta
        if meta is None:
            return ""
        return (f"{meta.name}: {len(meta.ch_names)} ch at {meta.sfreq:g} Hz, window {self.window_s:g} s, "
                f"hop {self.hop_s * 1e3:.0f} ms")

    def _reset_statistics(self):
        sizes = [int(p["w"].shape[0]) for p in self.model.params_]
        self._ever_fired = [np.zeros(n, bool) for n in sizes]
        self._silent_sum = np.zeros(len(sizes))
        self._n_windows = 0

    def _samples(self, seconds):
        return int(round(seconds * self.meta.sfreq))

    def _setup_stream(self, meta):
        """Build the preprocessor and buffers for a freshly connected stream."""
        model = self.model
        preprocessor = OnlinePreprocessor(
            self.config, meta.ch_names, meta.sfreq, model.ch_names_, model.sfreq_,
            stream_ch_types=meta.ch_types, stream_scales=meta.scales, n_model_channels=model.n_channels_,
            source=self.source.description)
        marker_index = None
        if self.marker_channel is not None:
            marker_index = int(_match_channels(meta.ch_names, [self.marker_channel],
                                               source=self.source.description)[0])
        capacity = int(round(max(self.display_s, 2 * self.window_s) * meta.sfreq))
        same = (self._buffer is not None and self._buffer.capacity == capacity
                and self._buffer.n_channels == preprocessor.n_outputs)
        if same:
            self._buffer.clear()  # reuse the memory across reconnections
        else:
            self._buffer = RingBuffer(preprocessor.n_outputs, capacity)
        self._marker_buffer = RingBuffer(1, capacity, np.float64) if marker_index is not None else None
        self._marker_index = marker_index
        self._preprocessor = preprocessor
        self._last_calibration_sample = self._last_adapted_sample = 0  # the buffer starts empty
        self.meta = meta

    def _connect(self):
        self._set_status("connecting", f"looking for {self.source.description}")
        try:
            self.source.open()
            # The first connection may wait for a stream being started; later ones retry often.
            first = self.n_reconnects == 0 and self._index == 0
            meta = self.source.connect(timeout=max(self.connect_timeout, 5.0) if first else self.connect_timeout)
        except ConnectionError as err:
            self._set_status("disconnected", f"{err}; retrying every {self.reconnect_interval:g} s")
            return False
        try:
            self._setup_stream(meta)
        except (ChannelError, SamplingRateError, ConfigError) as err:
            self.source.disconnect()
            self._set_status("error", str(err))
            return False
        self._warm_up()
        self._set_status("paused" if self.paused else "connected",
                         "decoding paused" if self.paused else self._connected_message())
        return True

    def _warm_up(self):
        """Compile the simulation for the window length before the first real window."""
        n = self._samples(self.window_s)
        if n in self._compiled_lengths:
            return
        self._set_status("connecting", f"compiling the decoder for {self.window_s:g} s windows")
        rng = np.random.default_rng(0)
        window = (rng.standard_normal((1, self._preprocessor.n_outputs, n)) * 1e-5).astype(np.float32)
        try:
            self._budget = self.model.decode_windows(window, budget=self._budget)["budget"]
        except Exception:  # noqa: BLE001 - the real window will report the problem
            logger.debug("warm-up decode failed", exc_info=True)
        self._compiled_lengths.add(n)

    def _apply_pending_window(self):
        with self._lock:
            pending, self._pending_window = self._pending_window, None
        if pending is None:
            return
        self.window_s, self.hop_s = pending
        if self.meta is not None:
            needed = int(round(max(self.display_s, 2 * self.window_s) * self.meta.sfreq))
            if needed > self._buffer.capacity:
                old = self._buffer
                data, timestamps = old.latest(old.capacity)
                self._buffer = RingBuffer(old.n_channels, needed)
                self._buffer.write(data, timestamps)
                if self._marker_buffer is not None:
                    m_data, m_ts = self._marker_buffer.latest(old.capacity)
                    self._marker_buffer = RingBuffer(1, needed, np.float64)
                    self._marker_buffer.write(m_data, m_ts)
            self._warm_up()
            self._set_status("paused" if self.paused else "connected",
                             "decoding paused" if self.paused else self._connected_message())

    def _lose_stream(self, why):
        self.source.disconnect()
        self._preprocessor = None
        self.n_reconnects += 1
        self._set_status("disconnected", f"{why}; reconnecting to {self.source.description}")

    # --------------------------------------------------------------- the worker
    def _run(self):
        last_sample_at = None
        last_decoded = 0
        next_attempt = 0.0
        try:
            while not self._stop.is_set():
                now = time.perf_counter()
                if not self.source.connected:
                    if now < next_attempt:
                        self._stop.wait(min(0.05, next_attempt - now))
                        continue
                    ok = self._connect()
                    retry = 5.0 if self.status == "error" else self.reconnect_interval
                    next_attempt = time.perf_counter() + (0.0 if ok else retry)
                    last_sample_at, last_decoded = time.perf_counter(), 0
                    continue
                self._apply_pending_window()
                try:
                    data, timestamps = self.source.pull()
                    annotations = self.source.pull_annotations()
                except Exception as err:  # noqa: BLE001 - a broken inlet is a lost stream
                    self._lose_stream(f"stream error ({type(err).__name__}: {err})")
                    continue
                for onset, description, duration in annotations:
                    self.labels.add(onset, duration, description)
                if data is not None:
                    last_sample_at = now
                    self._buffer.write(self._preprocessor.process(data), timestamps)
                    if self._marker_buffer is not None:
                        self._marker_buffer.write(data[self._marker_index][None], timestamps)
                elif now - last_sample_at > self.stall_timeout:
                    self._lose_stream(f"no samples for {now - last_sample_at:.1f} s")
                    continue
                n_window, n_hop = self._samples(self.window_s), self._samples(self.hop_s)
                buffer = self._buffer
                ready = buffer.n_written - last_decoded >= n_hop and buffer.n_written >= n_window
                if ready and not self.paused:
                    last_decoded = buffer.n_written
                    if self.calibration_s is not None and not self.calibrated:
                        self._calibrate_step(n_window)
                    else:
                        self._decode(n_window)
                elif data is None:
                    self._stop.wait(self.poll_interval)
        except Exception as err:  # noqa: BLE001 - report instead of dying silently
            logger.exception("decoder worker failed")
            self._set_status("error", f"decoder failed: {type(err).__name__}: {err}")
        finally:
            self.source.disconnect()

    def _decode(self, n_window):
        t0 = time.perf_counter()
        window, timestamps = self._buffer.latest(n_window)
        if self.adapt and self._buffer.n_written - self._last_adapted_sample >= max(1, n_window // 2):
            # Overlapping windows share most samples: fold in one per half window.
            self.model.adapt(window[None])
            self._last_adapted_sample = self._buffer.n_written
        budget = self._budget
        out = self.model.decode_windows(window[None], budget=budget)
        compiled = out["budget"] != budget
        self._budget = out["budget"]
        latency = time.perf_counter() - t0
        if compiled:
            self.n_compilations += 1
        else:
            self.latency.add(latency)

        counts = tuple(np.asarray(c[0]) for c in out["spike_counts"])
        silent = tuple(c == 0 for c in counts)
        for fired, c in zip(self._ever_fired, counts):
            fired |= c > 0
        silent_fraction = np.asarray(out["silent_fraction"][0], dtype=np.float64)
        self._silent_sum += silent_fraction
        self._n_windows += 1
        predicted = int(out["predicted_index"][0])
        start, end = float(timestamps[0]), float(timestamps[-1])
        label = self.labels.label_for(start, end)
        accuracy = self.labels.score(predicted, label)
        marker = None
        if self._marker_buffer is not None:
            marker = float(self._marker_buffer.latest(1)[0][0, -1])
        window_s = n_window / self.meta.sfreq
        self._index += 1
        result = DecodeResult(
            index=self._index, window_start=start, window_end=end, window_s=window_s, hop_s=self.hop_s,
            probabilities=np.asarray(out["probabilities"][0]), prediction=predicted,
            class_name=self.class_names[predicted], votes=np.asarray(out["votes"][0]),
            first_spike_times=np.asarray(out["first_spike_times"][0]),
            spike_times=tuple(np.asarray(t[0]) for t in out["spike_times"]),
            spike_sources=tuple(np.asarray(s[0]) for s in out["spike_sources"]),
            spike_counts=counts, firing_rates=tuple(c / window_s for c in counts),
            silent_fraction=silent_fraction,
            cumulative_silent_fraction=np.array([1.0 - f.mean() for f in self._ever_fired]),
            mean_silent_fraction=self._silent_sum / self._n_windows,
            silent=silent, cumulative_silent=tuple(~f for f in self._ever_fired),
            latency_s=latency, compiled=compiled, latency_p50_ms=self.latency.percentile(50),
            latency_p99_ms=self.latency.percentile(99), true_label=label,
            true_name=None if label is None else self.class_names[label], accuracy=accuracy,
            n_labelled=self.labels.n_labelled, marker=marker, decoded_at=time.perf_counter())
        self.history.append(result)
        if self.on_result is not None:
            try:
                self.on_result(result)
            except Exception:  # noqa: BLE001 - a subscriber must not kill the worker
                logger.exception("on_result callback failed")
        return result

    # ------------------------------------------------------------ for scripts
    def wait_for(self, predicate, timeout):
        """Poll ``predicate()`` until it is true or ``timeout`` seconds pass; returns its last value."""
        deadline = time.perf_counter() + timeout
        while True:
            value = predicate()
            if value or time.perf_counter() > deadline:
                return value
            time.sleep(0.02)

