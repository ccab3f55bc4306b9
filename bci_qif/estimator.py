"""scikit-learn estimator: a spiking-network decoder trained by exact gradient descent.

:class:`QIFClassifier` takes trials as :class:`mne.Epochs` or arrays of shape
``(n_trials, n_channels, n_times)`` (with ``sfreq``), encodes them with an
:mod:`encoding <bci_qif.encoding>` fitted on the training trials, turns the features
into timed current events and trains a QIF (or LIF) network. It composes with
``Pipeline``, ``cross_val_score`` and ``GridSearchCV`` like any classifier.
"""

from __future__ import annotations

import logging
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
from sklearn.base import BaseEstimator, ClassifierMixin
from sklearn.model_selection import train_test_split
from sklearn.utils.validation import check_is_fitted

from . import network
from .checkpoint import load_checkpoint, save_checkpoint
from .currents import to_input_events
from .encoding import make_encoder
from .neurons import get_neuron
from .training import TrainConfig, TrainingState, evaluate_network, make_optimizer, steps_per_epoch, train

logger = logging.getLogger(__name__)

__all__ = ["QIFClassifier"]


def _as_trials(X, sfreq):
    """``(data, sfreq, ch_names)`` from mne.Epochs or a 3-D array."""
    if hasattr(X, "get_data") and hasattr(X, "info"):
        return X.get_data(copy=False), float(X.info["sfreq"]), list(X.ch_names)
    X = np.asarray(X)
    if X.ndim != 3:
        raise ValueError(f"X must be mne.Epochs or an array (n_trials, n_channels, n_times), got shape {X.shape}")
    if sfreq is None:
        raise ValueError("sfreq must be given when X is an array (QIFClassifier(sfreq=...))")
    return X, float(sfreq), None


class QIFClassifier(ClassifierMixin, BaseEstimator):
    """Spiking-network classifier of EEG trials with exact spike-time gradients.

    Parameters
    ----------
    neuron : {"qif", "lif"}
        Neuron model of every layer.
    hidden_layer_sizes : tuple of int
        Sizes of the hidden layers; ``()`` connects inputs to the outputs directly.
    tau : float
        Membrane time constant in seconds (synaptic: ``tau / 2``).
    encoding : {"csp_power", "signal", "tangent_space"}
        Input encoding fitted on the training trials (see :mod:`bci_qif.encoding`).
    n_components : int or None
        CSP components for ``"csp_power"`` (``None``: 8); principal components kept
        for ``"tangent_space"`` (``None``: all tangent-space features).
    recenter : bool
        ``"tangent_space"`` only: re-centre each subject's covariances by its own
        Riemannian mean (unsupervised cross-subject alignment). Subject ids come in
        as ``groups`` (``fit(X, y, groups=...)``, ``predict(X, groups=...)``); the
        evaluation passes them through scikit-learn metadata routing. A subject seen
        in training keeps its training mean; without ``groups`` every trial counts
        as the training subject, so single-subject use is unaffected.
    rate_hz : float
        Frame rate of the encoded features (one input event per frame).
    input_gain : float
        Scale of the input currents.
    weight_scale, bias : float
        Initialisation of weights (std ``weight_scale / sqrt(fan_in)``) and biases.
    epochs, batch_size, learning_rate, grad_clip, weight_decay : optimisation
        See :class:`bci_qif.training.TrainConfig`.
    input_noise : float
        Gaussian noise (std, in units of the input currents) added to every training
        trial's currents, one draw per trial and input, fresh every step; a
        regulariser (see :class:`bci_qif.training.TrainConfig`). The default 2 was
        chosen for all 2080 standardized tangent-space features; with a few principal
        components (``n_components``) or other encodings use much less (or 0).
    gamma, readout_tau : float
        Loss settings (``readout_tau`` in units of ``tau``).
    validation_fraction : float
        Share of the training trials held out (stratified) to select the best epoch
        by validation ``acc_ord``; 0 keeps the last epoch.
    patience : int or None
        Early-stopping patience (epochs), with a validation split.
    sfreq : float or None
        Sampling rate when ``X`` is an array.
    random_state : int
        Seed of initialisation, validation split and shuffling.
    dtype : {"float32", "float64"}
    verbose : bool
        Show a progress bar while training.

    Attributes
    ----------
    classes_ : ndarray
    params_ : list of dict
        Trained network parameters.
    encoder_ : transformer
    history_ : list of dict
        Per-epoch metrics (loss, acc, acc_ord, silent fraction per layer, gradient
        norm, non-finite gradient count, validation scores).
    """

    # Defaults: the decoder chosen by nested validation (configs/default.yaml).
    def __init__(self, neuron="qif", hidden_layer_sizes=(16,), tau=0.5, encoding="tangent_space", n_components=None,
                 recenter=True, rate_hz=10.0, input_gain=1.0, weight_scale=2.0, bias=0.3, epochs=30, batch_size=32,
                 learning_rate=1e-2, grad_clip=1.0, weight_decay=0.0, input_noise=2.0, gamma=0.01,
                 readout_tau=1.0, validation_fraction=0.0, patience=None, sfreq=None, random_state=0, dtype="float32",
                 verbose=False):
        self.neuron = neuron
        self.hidden_layer_sizes = hidden_layer_sizes
        self.tau = tau
        self.encoding = encoding
        self.n_components = n_components
        self.recenter = recenter
        self.rate_hz = rate_hz
        self.input_gain = input_gain
        self.weight_scale = weight_scale
        self.bias = bias
        self.epochs = epochs
        self.batch_size = batch_size
        self.learning_rate = learning_rate
        self.grad_clip = grad_clip
        self.weight_decay = weight_decay
        self.input_noise = input_noise
        self.gamma = gamma
        self.readout_tau = readout_tau
        self.validation_fraction = validation_fraction
        self.patience = patience
        self.sfreq = sfreq
        self.random_state = random_state
        self.dtype = dtype
        self.verbose = verbose

    # Subject ids reach fit/predict through scikit-learn metadata routing (only the
    # ``recenter`` option uses them), as for bci_qif.baselines.SubjectRecentering.
    __metadata_request__fit = {"groups": True}
    __metadata_request__predict = {"groups": True}
    __metadata_request__predict_proba = {"groups": True}
    __metadata_request__decision_function = {"groups": True}

    def __sklearn_tags__(self):
        # Trials are 3-D (n_trials, n_channels, n_times), not a 2-D feature matrix.
        tags = super().__sklearn_tags__()
        tags.input_tags.two_d_array = False
        tags.input_tags.three_d_array = True
        return tags

    # --- helpers -------------------------------------------------------------------
    def _neuron_model(self):
        # Model time is measured in units of tau (tau = 1), seconds * time_scale.
        return get_neuron(self.neuron, tau=1.0)

    @property
    def _time_scale(self):
        if not self.tau > 0:
            raise ValueError(f"tau must be positive (seconds), got {self.tau!r}")
        return 1.0 / self.tau

    def _encoder_options(self):
        if self.encoding == "csp_power":
            return {"n_components": 8 if self.n_components is None else self.n_components, "rate_hz": self.rate_hz}
        if self.encoding == "tangent_space":
            return {"n_components": self.n_components, "rate_hz": self.rate_hz, "recenter": bool(self.recenter)}
        return {"rate_hz": self.rate_hz}

    def _encode(self, data, groups=None):
        # Only the tangent-space encoder aligns subjects; the others ignore groups.
        if self.encoding == "tangent_space":
            return self.encoder_.transform(data, groups=groups)
        return self.encoder_.transform(data)

    def _train_config(self):
        return TrainConfig(epochs=int(self.epochs), batch_size=int(self.batch_size),
                           learning_rate=float(self.learning_rate), grad_clip=self.grad_clip,
                           weight_decay=float(self.weight_decay), input_noise=float(self.input_noise),
                           patience=self.patience, gamma=float(self.gamma),
                           readout_tau=float(self.readout_tau), seed=int(self.random_state))

    def _jnp_dtype(self):
        if self.dtype not in ("float32", "float64"):
            raise ValueError(f"dtype must be 'float32' or 'float64', got {self.dtype!r}")
        if self.dtype == "float64" and not jax.config.jax_enable_x64:
            raise ValueError("dtype='float64' needs jax.config.update('jax_enable_x64', True)")
        return jnp.float64 if self.dtype == "float64" else jnp.float32

    def _events(self, data, groups=None):
        """Encoded trials -> (times, currents)."""
        features = self._encode(data, groups)
        times, currents = to_input_events(features, self.encoder_.frame_rate, time_scale=self._time_scale,
                                          gain=float(self.input_gain))
        dtype = self._jnp_dtype()
        return np.asarray(times, dtype), np.asarray(currents, dtype)

    # --- scikit-learn API ------------------------------------------------------------
    def fit(self, X, y, groups=None, *, checkpoint=None, resume=False):
        """Fit the encoder and train the network.

        Parameters
        ----------
        X : mne.Epochs or array, shape (n_trials, n_channels, n_times)
        y : array, shape (n_trials,)
        groups : array, shape (n_trials,), optional
            Subject of each trial (used by ``recenter``; ignored otherwise).
        checkpoint : str or Path, optional
            Write a resumable checkpoint here after every epoch (atomically).
        resume : bool
            Continue from ``checkpoint`` if it exists.

        Returns
        -------
        self
        """
        data, sfreq, ch_names = _as_trials(X, self.sfreq)
        y = np.asarray(y)
        if len(y) != len(data):
            raise ValueError(f"X has {len(data)} trials but y has {len(y)} labels")
        self.classes_, y_index = np.unique(y, return_inverse=True)
        if len(self.classes_) < 2:
            raise ValueError(f"need trials of at least two classes, got only {self.classes_.tolist()}")
        hidden = tuple(int(h) for h in np.atleast_1d(self.hidden_layer_sizes))
        neuron = self._neuron_model()
        self.sfreq_, self.ch_names_ = sfreq, ch_names
        self.n_channels_ = data.shape[1]

        rng = np.random.default_rng(self.random_state)
        train_idx, val_idx = np.arange(len(y)), None
        if self.validation_fraction:
            train_idx, val_idx = train_test_split(np.arange(len(y)), test_size=self.validation_fraction,
                                                  stratify=y_index, random_state=int(rng.integers(2**31)))
        groups = self._check_groups(groups, len(y))
        self.encoder_ = make_encoder(self.encoding, sfreq, **self._encoder_options())
        if self.encoding == "tangent_space":
            self.encoder_.fit(data[train_idx], y_index[train_idx],
                              groups=None if groups is None else groups[train_idx])
        else:
            self.encoder_.fit(data[train_idx], y_index[train_idx])
        times, currents = self._events(data, groups)
        self.T_ = float(data.shape[-1] / sfreq * self._time_scale)
        self.times_ = times
        config = self._train_config()
        params = network.init(jax.random.PRNGKey(int(self.random_state)),
                              (currents.shape[-1], *hidden, len(self.classes_)),
                              weight_scale=float(self.weight_scale), bias=float(self.bias), dtype=self._jnp_dtype())
        state = None
        if resume and checkpoint is not None and Path(checkpoint).exists():
            state = self._load_training_state(checkpoint, params, config, len(train_idx))
        validation = None if val_idx is None else (currents[val_idx], y_index[val_idx])
        on_epoch_end = None if checkpoint is None else (lambda s: self._write(checkpoint, s))
        state = train(params, times, currents[train_idx], y_index[train_idx], neuron, self.T_, config,
                      validation=validation, state=state, on_epoch_end=on_epoch_end, progress=self.verbose)
        self.params_ = state.best_params
        self.history_ = state.history
        self.budget_ = state.budget
        return self

    @staticmethod
    def _check_groups(groups, n):
        if groups is None:
            return None
        groups = np.asarray(groups)
        if groups.shape != (n,):
            raise ValueError(f"groups must hold one subject id per trial ({n}), got shape {groups.shape}")
        return groups

    def _simulate(self, X, groups=None):
        check_is_fitted(self, "params_")
        data, sfreq, _ = _as_trials(X, self.sfreq_)
        if sfreq != self.sfreq_:
            raise ValueError(f"X is sampled at {sfreq} Hz, the model was trained at {self.sfreq_} Hz")
        if data.shape[1] != self.n_channels_:
            raise ValueError(f"X has {data.shape[1]} channels, the model was trained on {self.n_channels_}")
        times, currents = self._events(data, self._check_groups(groups, len(data)))
        metrics, self.budget_ = evaluate_network(self.params_, times, currents, None, self._neuron_model(), self.T_,
                                                 batch_size=int(self.batch_size), budget=getattr(self, "budget_", None))
        return metrics

    def decision_function(self, X, groups=None):
        """Scores from first-spike times (earlier = larger); binary: class-1 minus class-0."""
        t = self._simulate(X, groups)["first_spike_times"]
        scores = -t / float(self.readout_tau)
        return scores[:, 1] - scores[:, 0] if len(self.classes_) == 2 else scores

    def predict_proba(self, X, groups=None):
        """Class probabilities ``softmax(-t / readout_tau)`` of the output first-spike times."""
        t = self._simulate(X, groups)["first_spike_times"]
        return np.asarray(jax.nn.softmax(-jnp.asarray(t) / float(self.readout_tau), axis=-1), dtype=np.float64)

    def predict(self, X, groups=None):
        """The class of the earliest output spike (ordinary or pseudo)."""
        t = self._simulate(X, groups)["first_spike_times"]
        return self.classes_[np.argmin(t, axis=1)]

    def spiking_metrics(self, X, y, groups=None):
        """Spiking statistics on labelled trials: ``acc_ord``, ``silent_fraction``, ``spikes_per_trial``.

        ``acc_ord`` counts a trial correct only if an output neuron spiked inside the
        trial and the earliest one is the right class.
        """
        metrics = self._simulate(X, groups)
        t, ordinary = metrics["first_spike_times"], metrics["ordinary"]
        y_index = np.searchsorted(self.classes_, np.asarray(y))
        _, predicted_ord = network.predict(network.SimulationResult(t, ordinary, (), (), (), False, (), False))
        return {
            "acc_ord": float(np.mean(predicted_ord == y_index)),
            "silent_fraction": float(np.mean(metrics["silent_fraction"])),
            "spikes_per_trial": metrics["spikes_per_trial"],
        }

    def decode_windows(self, X, *, budget=None):
        """Decode windows of a continuous recording and report what the network did.

        The real-time decoder (:mod:`bci_qif.realtime`) calls this on the latest
        sliding window. Each window is simulated for its own length (it may be
        shorter or longer than a training trial), and every field is a plain NumPy
        array, so results can cross threads and be plotted.

        Parameters
        ----------
        X : array, shape (n_windows, n_channels, n_times)
            Windows preprocessed like the training trials: channels in the order of
            ``ch_names_``, sampled at ``sfreq_``.
        budget : bci_qif.network.Budget, optional
            Event budget to start from; pass back ``result["budget"]`` of the
            previous call to avoid recompiling the simulation.

        Returns
        -------
        result : dict
            ``probabilities`` (n_windows, n_classes): ``softmax(-t / readout_tau)`` of the
            output first-spike times ``t``; ``prediction`` (n_windows,): the class
            (from ``classes_``) of the earliest output spike, ``predicted_index`` its
            index; ``first_spike_times`` (n_windows, n_classes) in seconds from the
            window start (pseudospikes come after the window end); ``ordinary``
            (n_windows, n_classes) bool; per layer (hidden layers, then output):
            ``spike_counts`` (n_windows, n_neurons) ordinary spikes, ``spike_times``
            and ``spike_sources`` (one array per window: ordinary spike times in
            seconds from the window start, and the neuron of each) and
            ``silent_fraction`` (n_windows, n_layers), the share of neurons without an
            ordinary spike; ``window_s``; ``budget``.
        """
        check_is_fitted(self, "params_")
        data = np.asarray(X)
        if data.ndim != 3:
            raise ValueError(f"X must be an array (n_windows, n_channels, n_times), got shape {data.shape}")
        if data.shape[1] != self.n_channels_:
            raise ValueError(f"X has {data.shape[1]} channels, the model was trained on {self.n_channels_}")
        if data.shape[0] < 1 or data.shape[2] < 1:
            raise ValueError(f"X must hold at least one window of at least one sample, got shape {data.shape}")
        scale = self._time_scale
        window_s = data.shape[2] / float(self.sfreq_)
        times, currents = self._events(data)
        result, budget = network.simulate(self.params_, times, currents, self._neuron_model(),
                                          T=window_s * scale, budget=budget)
        t = np.asarray(result.first_spike_times, dtype=np.float64)
        logits = -t / float(self.readout_tau)
        logits -= logits.max(axis=1, keepdims=True)
        probabilities = np.exp(logits)
        probabilities /= probabilities.sum(axis=1, keepdims=True)
        predicted = np.argmin(t, axis=1)
        counts = [np.asarray(c) for c in result.spike_counts]
        spike_times, spike_sources = [], []
        for layer_times, layer_sources in zip(result.spike_times, result.spike_sources):
            layer_times, layer_sources = np.asarray(layer_times), np.asarray(layer_sources)
            keep = np.isfinite(layer_times)  # unused budget slots are inf
            spike_times.append([row[k] / scale for row, k in zip(layer_times, keep)])
            spike_sources.append([row[k] for row, k in zip(layer_sources, keep)])
        return {
            "probabilities": probabilities,
            "prediction": self.classes_[predicted],
            "predicted_index": predicted,
            "first_spike_times": t / scale,
            "ordinary": np.asarray(result.ordinary),
            "spike_counts": counts,
            "spike_times": spike_times,
            "spike_sources": spike_sources,
            "silent_fraction": np.stack([np.mean(c == 0, axis=1) for c in counts], axis=1),
            "window_s": window_s,
            "budget": budget,
        }

    # --- persistence -----------------------------------------------------------------
    def _model_arrays(self, params):
        arrays = {f"model/{k}": np.asarray(leaf) for k, leaf in enumerate(jax.tree_util.tree_leaves(params))}
        arrays.update({f"encoder/{k}": v for k, v in self.encoder_.to_arrays().items()})
        arrays["classes"] = np.asarray(self.classes_)
        return arrays

    def _model_meta(self, params):
        return {
            "kind": "bci_qif.QIFClassifier",
            "estimator_params": {k: (list(v) if isinstance(v, tuple) else v) for k, v in self.get_params().items()},
            "layer_sizes": list(network.layer_sizes_of(params)),
            "T": self.T_,
            "sfreq": self.sfreq_,
            "ch_names": self.ch_names_,
            "n_channels": self.n_channels_,
        }

    def _write(self, path, state):
        """Checkpoint: model (best parameters) + resumable training state."""
        arrays = self._model_arrays(state.best_params)
        train_arrays, train_meta = state.to_arrays()
        arrays.update({f"train/{k}": v for k, v in train_arrays.items()})
        save_checkpoint(path, arrays, dict(self._model_meta(state.best_params), training=train_meta))

    def save(self, path, context=None):
        """Save the fitted model to ``path`` (one ``.npz`` file, no pickle).

        Parameters
        ----------
        path : str or Path
        context : dict, optional
            JSON-able facts stored with the model and returned by :meth:`load` as
            ``context_`` (e.g. the preprocessing configuration and class names, which
            the real-time decoder needs).
        """
        check_is_fitted(self, "params_")
        save_checkpoint(path, self._model_arrays(self.params_),
                        dict(self._model_meta(self.params_), training={"history": self.history_},
                             context=context or {}))

    def _load_training_state(self, path, params, config, n_train):
        arrays, meta = load_checkpoint(path)
        self._check_compatible(meta)
        optimizer = make_optimizer(config, steps_per_epoch(n_train, config.batch_size))
        train_arrays = {k[len("train/"):]: v for k, v in arrays.items() if k.startswith("train/")}
        if not train_arrays:
            raise ValueError(f"{path} holds a model without training state; cannot resume from it")
        logger.info("resuming from %s at epoch %d", path, meta["training"]["epoch"])
        return TrainingState.from_arrays(train_arrays, meta["training"], params, optimizer)

    def _check_compatible(self, meta):
        if meta.get("kind") != "bci_qif.QIFClassifier":
            raise ValueError("not a QIFClassifier checkpoint")
        saved = meta["estimator_params"]
        mine = {k: (list(v) if isinstance(v, tuple) else v) for k, v in self.get_params().items()}
        differing = {k for k in saved if k not in ("verbose", "epochs") and saved[k] != mine.get(k)}
        if differing:
            raise ValueError(f"checkpoint was written with different settings: {sorted(differing)}")

    @classmethod
    def load(cls, path):
        """Load a model written by :meth:`save` (or a training checkpoint)."""
        arrays, meta = load_checkpoint(path)
        if meta.get("kind") != "bci_qif.QIFClassifier":
            raise ValueError(f"{path} is not a QIFClassifier checkpoint")
        params = {k: (tuple(v) if k == "hidden_layer_sizes" and isinstance(v, list) else v)
                  for k, v in meta["estimator_params"].items()}
        model = cls(**params)
        sizes = meta["layer_sizes"]
        leaves = [arrays[f"model/{k}"] for k in range(2 * (len(sizes) - 1))]
        dtype = model._jnp_dtype()
        template = network.init(jax.random.PRNGKey(0), sizes, dtype=dtype)
        treedef = jax.tree_util.tree_structure(template)
        model.params_ = jax.tree_util.tree_unflatten(treedef, [jnp.asarray(a, dtype) for a in leaves])
        model.encoder_ = make_encoder(model.encoding, meta["sfreq"], **model._encoder_options()).set_arrays(
            {k[len("encoder/"):]: v for k, v in arrays.items() if k.startswith("encoder/")})
        model.classes_ = arrays["classes"]
        model.T_, model.sfreq_, model.ch_names_ = meta["T"], meta["sfreq"], meta["ch_names"]
        model.n_channels_ = meta["n_channels"]
        model.history_ = meta.get("training", {}).get("history", [])
        model.context_ = meta.get("context", {})
        return model
