"""scikit-learn estimator: a spiking-network decoder trained by exact gradient descent.

:class:`QIFClassifier` takes trials as :class:`mne.Epochs` or arrays of shape
``(n_trials, n_channels, n_times)`` (with ``sfreq``), encodes them with an
:mod:`encoding <bci_qif.encoding>` fitted on the training trials, turns the features
into timed current events and trains QIF (or LIF) networks: by default three, from
consecutive seeds, which decide together (:func:`soft_vote`, :func:`ordinary_vote`).
It composes with ``Pipeline``, ``cross_val_score`` and ``GridSearchCV`` like any
classifier.
"""

from __future__ import annotations

import dataclasses
import logging
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
from scipy.special import logsumexp
from sklearn.base import BaseEstimator, ClassifierMixin
from sklearn.model_selection import train_test_split
from sklearn.utils.validation import check_is_fitted

from . import network
from .checkpoint import load_checkpoint, save_checkpoint
from .currents import to_input_events
from .encoding import make_encoder
from .neurons import get_neuron
from .training import (TrainConfig, TrainingState, check_targets, evaluate_network, make_optimizer, steps_per_epoch,
                       train)
from .validation import is_integer

logger = logging.getLogger(__name__)

__all__ = ["QIFClassifier", "soft_vote", "ordinary_vote"]


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


def member_votes(first_spike_times, ordinary):
    """Each member's class: its earliest ordinary output spike, ``-1`` where none fired.

    Parameters
    ----------
    first_spike_times, ordinary : array, shape (n_members, n_trials, n_classes)
        Output first-spike times and whether each was an ordinary spike (inside the
        trial) rather than a pseudospike.

    Returns
    -------
    votes : int array, shape (n_members, n_trials)
    """
    t_ordinary = np.where(ordinary, first_spike_times, np.inf)
    return np.where(np.any(ordinary, axis=-1), np.argmin(t_ordinary, axis=-1), -1)


def ordinary_vote(first_spike_times, ordinary):
    """The spiking decision of an ensemble: the majority of its members' spikes.

    A class wins a trial when more than half of the members' earliest ordinary
    output spikes name it; otherwise the ensemble made no spiking decision. With one
    member this is the earliest ordinary output spike (``acc_ord`` of one network).

    Parameters
    ----------
    first_spike_times, ordinary : array, shape (n_members, n_trials, n_classes)

    Returns
    -------
    decided : int array, shape (n_trials,)
        Class index, or ``-1`` where no class has a majority.
    """
    votes = member_votes(first_spike_times, ordinary)
    n_members, n_classes = votes.shape[0], np.shape(first_spike_times)[-1]
    counts = np.stack([np.sum(votes == k, axis=0) for k in range(n_classes)], axis=-1)
    return np.where(2 * counts.max(axis=-1) > n_members, counts.argmax(axis=-1), -1)


def soft_vote(first_spike_times, readout_tau):
    """Log of the members' mean class probabilities ``softmax(-t / readout_tau)``.

    Parameters
    ----------
    first_spike_times : array, shape (n_members, n_trials, n_classes)
        Output first-spike times (ordinary or pseudo), in units of tau.
    readout_tau : float

    Returns
    -------
    log_proba : float64 array, shape (n_trials, n_classes)
        Computed in log space, so that a class far behind keeps a finite score.
    """
    logits = -np.asarray(first_spike_times, dtype=np.float64) / float(readout_tau)
    log_member = logits - logsumexp(logits, axis=-1, keepdims=True)
    return logsumexp(log_member, axis=0) - np.log(log_member.shape[0])


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
    n_segments : int
        ``"tangent_space"`` only: cut each trial (and each real-time window) into
        this many consecutive equal parts, each with its own covariance, alignment
        and tangent map, and feed the network their concatenated vectors (see
        :class:`bci_qif.encoding.TangentSpaceEncoder`).
    scale : {"feature", "common"}
        ``"tangent_space"`` only: standardize each feature by its own training
        deviation, or all of them by one common deviation (keeps the tangent
        space's relative scales; see :class:`bci_qif.encoding.TangentSpaceEncoder`).
    rate_hz : float
        Frame rate of the encoded features (one input event per frame).
    input_gain : float
        Scale of the input currents.
    weight_scale, bias : float
        Initialisation of weights (std ``weight_scale / sqrt(fan_in)``) and biases.
    epochs, batch_size, learning_rate, grad_clip, weight_decay, optimizer : optimisation
        See :class:`bci_qif.training.TrainConfig`. With ``optimizer="sgd"`` the
        learning rates (here and in :meth:`fine_tune`) are SGD's, about a hundred
        times Adam's (1 rather than 1e-2).
    input_noise : float
        Gaussian noise (std, in units of the input currents) added to every training
        trial's currents, one draw per trial and input, fresh every step; a
        regulariser (see :class:`bci_qif.training.TrainConfig`). The default 2 was
        chosen for all 2080 standardized tangent-space features; with a few principal
        components (``n_components``) or other encodings use much less (or 0).
    gamma, readout_tau, late_penalty : float
        Loss settings (``readout_tau`` in units of ``tau``; see
        :class:`bci_qif.training.TrainConfig`).
    validation_fraction : float
        Share of the training trials held out (stratified) to select the best epoch
        by validation ``acc_ord``; 0 keeps the last epoch.
    patience : int or None
        Early-stopping patience (epochs), with a validation split.
    sfreq : float or None
        Sampling rate when ``X`` is an array.
    n_members : int
        Networks trained on the same encoded trials from the seeds ``random_state``,
        ``random_state + 1``, ... (initial weights, batch order, input noise); they
        decide together (see :func:`soft_vote` and :func:`ordinary_vote`). The
        default 3 was chosen by nested validation (docs/benchmarks.md, "Seed
        ensembles"); 1 trains a single network.
    random_state : int
        Seed of initialisation, validation split and shuffling (of the first member).
    dtype : {"float32", "float64"}
    verbose : bool
        Show a progress bar while training.

    Attributes
    ----------
    classes_ : ndarray
    members_ : list of (list of dict)
        Trained parameters of each member network.
    params_ : list of dict
        The first member's parameters (the network whose neurons the real-time
        displays show).
    encoder_ : transformer
    history_ : list of dict
        Per-epoch metrics of every member (``member``, ``epoch``, loss, acc, acc_ord,
        silent fraction per layer, gradient norm, non-finite gradient count,
        validation scores).
    """

    # Defaults: the decoder chosen by nested validation (configs/default.yaml).
    def __init__(self, neuron="qif", hidden_layer_sizes=(16,), tau=0.5, encoding="tangent_space", n_components=None,
                 recenter=True, n_segments=1, scale="feature", rate_hz=10.0, input_gain=1.0, weight_scale=2.0,
                 bias=0.3, epochs=30, batch_size=32, learning_rate=1e-2, grad_clip=1.0, weight_decay=0.0,
                 optimizer="adam", input_noise=2.0, gamma=0.01, readout_tau=1.0, late_penalty=0.0,
                 validation_fraction=0.0, patience=None, sfreq=None, n_members=3, random_state=0, dtype="float32",
                 verbose=False):
        self.neuron = neuron
        self.hidden_layer_sizes = hidden_layer_sizes
        self.tau = tau
        self.encoding = encoding
        self.n_components = n_components
        self.recenter = recenter
        self.n_segments = n_segments
        self.scale = scale
        self.rate_hz = rate_hz
        self.input_gain = input_gain
        self.weight_scale = weight_scale
        self.bias = bias
        self.epochs = epochs
        self.batch_size = batch_size
        self.learning_rate = learning_rate
        self.grad_clip = grad_clip
        self.weight_decay = weight_decay
        self.optimizer = optimizer
        self.input_noise = input_noise
        self.gamma = gamma
        self.readout_tau = readout_tau
        self.late_penalty = late_penalty
        self.validation_fraction = validation_fraction
        self.patience = patience
        self.sfreq = sfreq
        self.n_members = n_members
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
            return {"n_components": self.n_components, "rate_hz": self.rate_hz, "recenter": bool(self.recenter),
                    "n_segments": self.n_segments, "scale": self.scale}
        return {"rate_hz": self.rate_hz}

    def _encode(self, data, groups=None):
        # Only the tangent-space encoder aligns subjects; the others ignore groups.
        if self.encoding == "tangent_space":
            return self.encoder_.transform(data, groups=groups)
        return self.encoder_.transform(data)

    def _n_members(self):
        if not (isinstance(self.n_members, (int, np.integer)) and self.n_members >= 1):
            raise ValueError(f"n_members must be a positive integer, got {self.n_members!r}")
        return int(self.n_members)

    def _train_config(self, seed=None):
        return TrainConfig(epochs=int(self.epochs), batch_size=int(self.batch_size),
                           learning_rate=float(self.learning_rate), grad_clip=self.grad_clip,
                           weight_decay=float(self.weight_decay), optimizer=self.optimizer,
                           input_noise=float(self.input_noise),
                           patience=self.patience, gamma=float(self.gamma),
                           readout_tau=float(self.readout_tau), late_penalty=float(self.late_penalty),
                           seed=int(self.random_state if seed is None else seed))

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
    def fit(self, X, y, groups=None, *, checkpoint=None, resume=False, soft_targets=None):
        """Fit the encoder and train the ``n_members`` networks, one after the other.

        Parameters
        ----------
        X : mne.Epochs or array, shape (n_trials, n_channels, n_times)
        y : array, shape (n_trials,)
        groups : array, shape (n_trials,), optional
            Subject of each trial (used by ``recenter``; ignored otherwise).
        checkpoint : str or Path, optional
            Write a resumable checkpoint here after every epoch of every member
            (atomically; it holds each started member's training state).
        resume : bool
            Continue from ``checkpoint`` if it exists: finished members are kept
            (or trained on, when ``epochs`` grew) and the interrupted one goes on.
        soft_targets : array, shape (n_trials, n_classes), optional
            A distribution over the classes (in the order of ``np.unique(y)``) per
            trial, trained towards instead of the one-hot labels (knowledge
            distillation: e.g. a teacher's probabilities mixed with the labels;
            :func:`bci_qif.network.trial_loss`). ``y`` still defines the classes
            and the training accuracy.

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
        if soft_targets is not None:  # checked before any work
            soft_targets = check_targets(soft_targets, len(y), len(self.classes_))
        hidden = tuple(int(h) for h in np.atleast_1d(self.hidden_layer_sizes))
        n_members = self._n_members()
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
        layer_sizes = (currents.shape[-1], *hidden, len(self.classes_))
        states = []  # one training state per member started so far
        if resume and checkpoint is not None and Path(checkpoint).exists():
            states = self._load_states(checkpoint, layer_sizes, len(train_idx))[:n_members]
        validation = None if val_idx is None else (currents[val_idx], y_index[val_idx])
        for member in range(n_members):
            # Members differ only in their seed; member 0 is the single network of n_members=1.
            seed = int(self.random_state) + member
            params = network.init(jax.random.PRNGKey(seed), layer_sizes, weight_scale=float(self.weight_scale),
                                  bias=float(self.bias), dtype=self._jnp_dtype())
            on_epoch_end = None if checkpoint is None else (
                lambda s, member=member: self._write(checkpoint, [*states[:member], s, *states[member + 1:]]))
            # A resumed member that has finished returns at once; one with epochs to go goes on.
            state = train(params, times, currents[train_idx], y_index[train_idx], neuron, self.T_,
                          self._train_config(seed), validation=validation,
                          state=states[member] if member < len(states) else None, on_epoch_end=on_epoch_end,
                          progress=self.verbose,
                          targets=None if soft_targets is None else soft_targets[train_idx])
            states[member:member + 1] = [state]
            self.budget_ = state.budget
        self.members_ = [state.best_params for state in states]
        self.params_ = self.members_[0]
        self.history_ = _member_history(state.history for state in states)
        return self

    @staticmethod
    def _check_groups(groups, n):
        if groups is None:
            return None
        groups = np.asarray(groups)
        if groups.shape != (n,):
            raise ValueError(f"groups must hold one subject id per trial ({n}), got shape {groups.shape}")
        return groups

    def _fitted_trials(self, X):
        """Trials of ``X`` as an array, checked against the fitted sampling rate and channels."""
        check_is_fitted(self, "members_")
        data, sfreq, _ = _as_trials(X, self.sfreq_)
        if sfreq != self.sfreq_:
            raise ValueError(f"X is sampled at {sfreq} Hz, the model was trained at {self.sfreq_} Hz")
        if data.shape[1] != self.n_channels_:
            raise ValueError(f"X has {data.shape[1]} channels, the model was trained on {self.n_channels_}")
        return data

    def _simulate(self, X, groups=None):
        """Each member's :func:`~bci_qif.training.evaluate_network` metrics on the trials ``X``."""
        data = self._fitted_trials(X)
        times, currents = self._events(data, self._check_groups(groups, len(data)))
        outputs = []
        for params in self.members_:
            metrics, self.budget_ = evaluate_network(params, times, currents, None, self._neuron_model(), self.T_,
                                                     batch_size=int(self.batch_size),
                                                     budget=getattr(self, "budget_", None))
            outputs.append(metrics)
        return outputs

    def _log_proba(self, X, groups=None):
        t = np.stack([m["first_spike_times"] for m in self._simulate(X, groups)])
        return soft_vote(t, self.readout_tau)

    def decision_function(self, X, groups=None):
        """Log of the class probabilities of :meth:`predict_proba`; binary: class 1 minus class 0.

        For one network this is ``(t_0 - t_1) / readout_tau`` (earlier spike = larger).
        """
        log_proba = self._log_proba(X, groups)
        return log_proba[:, 1] - log_proba[:, 0] if len(self.classes_) == 2 else log_proba

    def predict_proba(self, X, groups=None):
        """Class probabilities: the members' mean ``softmax(-t / readout_tau)`` of their output first-spike times."""
        return np.exp(self._log_proba(X, groups))

    def predict(self, X, groups=None):
        """The most probable class (for one network: that of the earliest output spike, ordinary or pseudo)."""
        log_proba = self._log_proba(X, groups)  # first: raises NotFittedError before classes_ is read
        return self.classes_[np.argmax(log_proba, axis=1)]

    def spiking_metrics(self, X, y, groups=None):
        """Spiking statistics on labelled trials: ``acc_ord``, ``silent_fraction``, ``spikes_per_trial``.

        ``acc_ord`` counts a trial correct only if it was decided by spikes inside the
        trial: the earliest ordinary output spike of a majority of the members names
        the right class (:func:`ordinary_vote`). The other two are member means;
        ``silent_fraction`` (of the hidden neurons) is NaN for networks without a
        hidden layer.
        """
        outputs = self._simulate(X, groups)
        hidden_silent = [np.mean(m["silent_fraction"]) for m in outputs if len(m["silent_fraction"])]
        t = np.stack([m["first_spike_times"] for m in outputs])
        ordinary = np.stack([m["ordinary"] for m in outputs])
        y_index = np.searchsorted(self.classes_, np.asarray(y))
        return {
            "acc_ord": float(np.mean(ordinary_vote(t, ordinary) == y_index)),
            "silent_fraction": float(np.mean(hidden_silent)) if hidden_silent else float("nan"),
            "spikes_per_trial": float(np.mean([m["spikes_per_trial"] for m in outputs])),
        }

    def calibrate(self, X):
        """Align a new user from unlabelled EEG (``recenter=True`` only).

        The Riemannian mean of the covariances of ``X`` becomes the reference of
        every trial or window decoded without ``groups`` (:meth:`decode_windows`, the
        real-time decoder): the unsupervised re-centring that ``groups`` gives an
        unseen subject offline. A session state, not saved with the model.

        Parameters
        ----------
        X : array, shape (n_windows, n_channels, n_times), or None
            Windows or trials of the user, preprocessed like the training trials (at
            least 2); ``None`` goes back to the training reference.

        Returns
        -------
        self
        """
        self._aligning_encoder("calibrate").calibrate(None if X is None else _as_trials(X, self.sfreq_)[0])
        return self

    def adapt(self, X):
        """Fold a user's new unlabelled windows into the running mean that aligns them.

        The adaptive counterpart of :meth:`calibrate`, which needs no calibration
        phase: every window passed here (e.g. each window a real-time session has
        decoded) updates a running Riemannian mean of the user's covariances, which
        aligns every later un-grouped window (from the second window on; a
        calibration, if any, counts as its first windows). A session state, not
        saved with the model; ``calibrate(None)`` forgets it.

        Parameters
        ----------
        X : array, shape (n_windows, n_channels, n_times)

        Returns
        -------
        self
        """
        self._aligning_encoder("adapt").adapt(_as_trials(X, self.sfreq_)[0])
        return self

    def _aligning_encoder(self, caller):
        check_is_fitted(self, "members_")
        if self.encoding != "tangent_space":
            raise ValueError(f"{caller} needs encoding='tangent_space' with recenter=True, got {self.encoding!r}")
        return self.encoder_

    def fine_tune(self, X, y, *, epochs=20, learning_rate=3e-3, output_only=False):
        """Adapt a fitted decoder to a new user from a few labelled trials.

        The mean covariance of ``X`` becomes the reference that aligns every
        un-grouped trial or window (saved with the model; ``recenter=True``), then
        every network goes on training from its current weights on these trials
        alone; the encoder's standardization and the other training settings stay
        as fitted. The defaults were chosen by nested validation for a decoder
        pretrained on other subjects (``benchmarks/finetune_search.py``).

        Parameters
        ----------
        X : array, shape (n_trials, n_channels, n_times)
            The user's labelled trials, preprocessed like the training trials.
        y : array, shape (n_trials,)
            Their labels, among ``classes_``.
        epochs : int
            Training epochs; 0 adopts the user's reference alone (the networks stay
            as they are: a pretrained decoder aligned to the user, "zero-shot").
        learning_rate : float
            Peak learning rate of the fine-tuning schedule.
        output_only : bool
            Train the output layer's weights and biases only; the hidden layers
            stay as they are.

        Returns
        -------
        self
        """
        data = self._fitted_trials(X)
        y = np.asarray(y)
        unknown = sorted(set(y.tolist()) - set(self.classes_.tolist()))
        if len(y) != len(data) or unknown:
            raise ValueError(f"y must hold one label per trial ({len(data)}) among {self.classes_.tolist()}, "
                             f"got {len(y)} labels{f', unknown {unknown}' if unknown else ''}")
        if not (is_integer(epochs) and epochs >= 0):
            raise ValueError(f"epochs must be a non-negative integer, got {epochs!r}")
        self._aligning_encoder("fine_tune").adopt_reference(data)
        if epochs == 0:
            return self
        times, currents = self._events(data)
        config = dataclasses.replace(self._train_config(), epochs=int(epochs), learning_rate=float(learning_rate),
                                     patience=None, trainable_layers=(-1,) if output_only else None)
        y_index = np.searchsorted(self.classes_, y)
        self.members_ = [
            train(params, times, currents, y_index, self._neuron_model(), self.T_,
                  dataclasses.replace(config, seed=int(self.random_state) + member), progress=self.verbose).best_params
            for member, params in enumerate(self.members_)]
        self.params_ = self.members_[0]
        return self

    def window_scores(self, X, y, groups=None, *, window_s=2.0, step_s=0.5):
        """Accuracy on sliding windows cut from labelled trials, decoded as the GUI decodes them.

        Every window of ``window_s`` seconds starting at ``0, step_s, 2 step_s, ...``
        inside each trial goes through :meth:`decode_windows`.

        Parameters
        ----------
        X : mne.Epochs or array, shape (n_trials, n_channels, n_times)
        y : array, shape (n_trials,)
        groups : array, shape (n_trials,), optional
            Subject of each trial, for a re-centring encoder: a subject unseen in
            training is aligned by the mean of its windows (as a live session after
            :meth:`calibrate`); without, windows are aligned as :meth:`decode_windows`
            aligns them.
        window_s, step_s : float
            Window length and spacing of the window starts, in seconds.

        Returns
        -------
        scores : dict
            ``window_acc`` (the decided class) and ``window_acc_ord`` (decided by
            ordinary spikes, :func:`ordinary_vote`) over all windows.
        """
        check_is_fitted(self, "members_")
        data, _, _ = _as_trials(X, self.sfreq_)
        n_window, n_step = int(round(window_s * self.sfreq_)), int(round(step_s * self.sfreq_))
        if not 1 <= n_window <= data.shape[-1] or n_step < 1:
            raise ValueError(f"window_s={window_s} s and step_s={step_s} s do not fit trials of "
                             f"{data.shape[-1] / self.sfreq_:g} s")
        y_index = np.searchsorted(self.classes_, np.asarray(y))
        correct, correct_ord, budget = [], [], None
        for start in range(0, data.shape[-1] - n_window + 1, n_step):
            # The decisions of decode_windows, without its per-window spike lists.
            _, t, ordinary, budget = self._simulate_windows(data[:, :, start:start + n_window], groups, budget)
            correct.append(np.argmax(soft_vote(t, self.readout_tau), axis=1) == y_index)
            correct_ord.append(ordinary_vote(t, ordinary) == y_index)
        return {"window_acc": float(np.mean(correct)), "window_acc_ord": float(np.mean(correct_ord))}

    def _simulate_windows(self, data, groups, budget):
        """Every member on windows simulated for their own length: results, stacked first-spike times
        (model units) and ordinary flags (n_members, n_windows, n_classes), and the event budget."""
        times, currents = self._events(data, self._check_groups(groups, len(data)))
        T = data.shape[2] / float(self.sfreq_) * self._time_scale
        results = []
        for params in self.members_:
            result, budget = network.simulate(params, times, currents, self._neuron_model(), T=T, budget=budget)
            results.append(result)
        t = np.stack([np.asarray(r.first_spike_times, dtype=np.float64) for r in results])
        ordinary = np.stack([np.asarray(r.ordinary) for r in results])
        return results, t, ordinary, budget

    def decode_windows(self, X, groups=None, *, budget=None):
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
        groups : array, shape (n_windows,), optional
            Subject ids for a re-centring encoder (see ``recenter``); without them a
            window is aligned by the calibrated user's mean (:meth:`calibrate`) or
            else the training reference.
        budget : bci_qif.network.Budget, optional
            Event budget to start from; pass back ``result["budget"]`` of the
            previous call to avoid recompiling the simulation.

        Returns
        -------
        result : dict
            The ensemble's decision: ``probabilities`` (n_windows, n_classes), the
            members' mean ``softmax(-t / readout_tau)`` of their output first-spike
            times ``t``; ``prediction`` (n_windows,): the most probable class (from
            ``classes_``), ``predicted_index`` its index; ``votes`` (n_windows,
            n_members): each member's earliest ordinary output spike (class index, -1
            if none); ``ordinary_vote`` (n_windows,): the class most members' spikes
            name (:func:`ordinary_vote`, -1 if none has a majority).
            The first member's activity (the network the displays show):
            ``first_spike_times`` (n_windows, n_classes) in seconds from the
            window start (pseudospikes come after the window end); ``ordinary``
            (n_windows, n_classes) bool; per layer (hidden layers, then output):
            ``spike_counts`` (n_windows, n_neurons) ordinary spikes, ``spike_times``
            and ``spike_sources`` (one array per window: ordinary spike times in
            seconds from the window start, and the neuron of each) and
            ``silent_fraction`` (n_windows, n_layers), the share of neurons without an
            ordinary spike; ``window_s``; ``budget``.
        """
        check_is_fitted(self, "members_")
        data = np.asarray(X)
        if data.ndim != 3:
            raise ValueError(f"X must be an array (n_windows, n_channels, n_times), got shape {data.shape}")
        if data.shape[1] != self.n_channels_:
            raise ValueError(f"X has {data.shape[1]} channels, the model was trained on {self.n_channels_}")
        if data.shape[0] < 1 or data.shape[2] < 1:
            raise ValueError(f"X must hold at least one window of at least one sample, got shape {data.shape}")
        scale = self._time_scale
        window_s = data.shape[2] / float(self.sfreq_)
        results, member_t, member_ordinary, budget = self._simulate_windows(data, groups, budget)
        probabilities = np.exp(soft_vote(member_t, self.readout_tau))
        predicted = np.argmax(probabilities, axis=1)
        result, t = results[0], member_t[0]
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
            "votes": member_votes(member_t, member_ordinary).T,
            "ordinary_vote": ordinary_vote(member_t, member_ordinary),
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
    def _model_arrays(self, members):
        arrays = {f"model/{m}/{k}": np.asarray(leaf)
                  for m, params in enumerate(members) for k, leaf in enumerate(jax.tree_util.tree_leaves(params))}
        arrays.update({f"encoder/{k}": v for k, v in self.encoder_.to_arrays().items()})
        arrays["classes"] = np.asarray(self.classes_)
        return arrays

    def _model_meta(self, members):
        return {
            "kind": "bci_qif.QIFClassifier",
            "estimator_params": {k: (list(v) if isinstance(v, tuple) else v) for k, v in self.get_params().items()},
            "layer_sizes": list(network.layer_sizes_of(members[0])),
            "n_fitted_members": len(members),
            "T": self.T_,
            "sfreq": self.sfreq_,
            "ch_names": self.ch_names_,
            "n_channels": self.n_channels_,
        }

    def _write(self, path, states):
        """Checkpoint: every started member's best parameters (a model) and training state (resumable)."""
        members = [state.best_params for state in states]
        arrays, metas = self._model_arrays(members), []
        for member, state in enumerate(states):
            train_arrays, train_meta = state.to_arrays()
            arrays.update({f"train/{member}/{k}": v for k, v in train_arrays.items()})
            metas.append(train_meta)
        save_checkpoint(path, arrays, dict(self._model_meta(members), training={"members": metas}))

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
        check_is_fitted(self, "members_")
        save_checkpoint(path, self._model_arrays(self.members_),
                        dict(self._model_meta(self.members_), training={"history": self.history_},
                             context=context or {}))

    def _load_states(self, path, layer_sizes, n_train):
        """The training state of every member a checkpoint holds, in member order."""
        arrays, meta = load_checkpoint(path)
        self._check_compatible(meta)
        if list(meta["layer_sizes"]) != list(layer_sizes):
            raise ValueError(f"{path} holds a network of layer sizes {meta['layer_sizes']}, these data need "
                             f"{list(layer_sizes)}; cannot resume from it")
        if not any(key.startswith("train/") for key in arrays):
            raise ValueError(f"{path} holds a model without training state; cannot resume from it")
        training = meta["training"]
        # Checkpoints from before ensembles hold one network's state under train/<key>.
        metas, prefixes = ((training["members"], [f"train/{m}/" for m in range(len(training["members"]))])
                           if "members" in training else ([training], ["train/"]))
        config = self._train_config()
        optimizer = make_optimizer(config, steps_per_epoch(n_train, config.batch_size))
        template = network.init(jax.random.PRNGKey(0), layer_sizes, dtype=self._jnp_dtype())
        logger.info("resuming from %s: members at epochs %s", path, [m["epoch"] for m in metas])
        return [TrainingState.from_arrays({k[len(prefix):]: v for k, v in arrays.items() if k.startswith(prefix)},
                                          member_meta, template, optimizer)
                for prefix, member_meta in zip(prefixes, metas)]

    def _check_compatible(self, meta):
        if meta.get("kind") != "bci_qif.QIFClassifier":
            raise ValueError("not a QIFClassifier checkpoint")
        saved = meta["estimator_params"]
        mine = {k: (list(v) if isinstance(v, tuple) else v) for k, v in self.get_params().items()}
        # More epochs or members extend a run; everything else must match.
        differing = {k for k in saved if k not in ("verbose", "epochs", "n_members") and saved[k] != mine.get(k)}
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
        members_saved = "n_fitted_members" in meta
        if not members_saved:
            params["n_members"] = 1  # written before ensembles: one network
        model = cls(**params)
        model.members_ = _members_from_arrays(arrays, meta, model._jnp_dtype())
        model.params_ = model.members_[0]
        model.encoder_ = make_encoder(model.encoding, meta["sfreq"], **model._encoder_options()).set_arrays(
            {k[len("encoder/"):]: v for k, v in arrays.items() if k.startswith("encoder/")})
        model.classes_ = arrays["classes"]
        model.T_, model.sfreq_, model.ch_names_ = meta["T"], meta["sfreq"], meta["ch_names"]
        model.n_channels_ = meta["n_channels"]
        model.history_ = _history_from_meta(meta.get("training", {}))
        model.context_ = meta.get("context", {})
        return model


def _members_from_arrays(arrays, meta, dtype):
    """Member parameters stored by ``_model_arrays`` (or the single network of older files)."""
    sizes = meta["layer_sizes"]
    n_leaves = 2 * (len(sizes) - 1)
    if "n_fitted_members" in meta:
        groups = [[arrays[f"model/{m}/{k}"] for k in range(n_leaves)] for m in range(int(meta["n_fitted_members"]))]
    else:
        groups = [[arrays[f"model/{k}"] for k in range(n_leaves)]]
    treedef = jax.tree_util.tree_structure(network.init(jax.random.PRNGKey(0), sizes, dtype=dtype))
    return [jax.tree_util.tree_unflatten(treedef, [jnp.asarray(a, dtype) for a in leaves]) for leaves in groups]


def _member_history(histories):
    """One list of per-epoch records from each member's history, each tagged with its ``member``."""
    return [dict(row, member=member) for member, history in enumerate(histories) for row in history]


def _history_from_meta(training):
    """Per-epoch records of all members, from a saved model's or a checkpoint's metadata."""
    if "members" in training:
        return _member_history(member["history"] for member in training["members"])
    return list(training.get("history", []))
