"""Exact-gradient training of spiking networks on timed current events.

This module knows nothing about EEG: it trains :mod:`bci_qif.network` parameters on
``times`` (shared ``(n_events,)``), ``currents`` ``(n_trials, n_events, n_inputs)``
and integer ``labels``, with an optax optimizer (Adam or SGD with momentum, cosine
schedule, global-norm clipping), minibatches, an optional validation set with early
stopping, a progress bar and a per-epoch history. :class:`TrainingState` holds everything needed to
resume an interrupted run and converts to plain arrays for checkpoints.

Non-finite gradients are counted per epoch (``n_nonfinite``) and the offending step
is skipped, so one bad minibatch cannot poison every weight; the engine is built so
that this count stays zero, and the history shows it if it does not.
"""

from __future__ import annotations

import dataclasses
import logging
import math

import jax
import jax.numpy as jnp
import numpy as np
import optax
from tqdm.auto import tqdm

from . import network
from .neurons import get_neuron
from .validation import is_integer

logger = logging.getLogger(__name__)

__all__ = ["TrainConfig", "TrainingState", "make_optimizer", "steps_per_epoch", "train", "evaluate_network",
           "check_targets"]


OPTIMIZERS = ("adam", "sgd")
SGD_MOMENTUM = 0.9


@dataclasses.dataclass(frozen=True)
class TrainConfig:
    """Optimisation settings.

    Attributes
    ----------
    epochs : int
    batch_size : int
    learning_rate : float
        Peak learning rate of the cosine schedule.
    grad_clip : float or None
        Global-norm clipping threshold.
    weight_decay : float
        Decoupled weight decay (AdamW; with SGD, added to the gradient); 0 for none.
    optimizer : {"adam", "sgd"}
        Adam, or stochastic gradient descent with heavy-ball momentum 0.9. Their
        learning rates differ in scale: Adam moves every weight by about the
        learning rate per step whatever its gradient, SGD in proportion to it (its
        steps stay in the span of the training trials' gradients). On the EEG
        decoder's inputs the two scored within a few points of each other
        (docs/benchmarks.md, "Decoder quality", twelfth session).
    patience : int or None
        Early stopping: stop after this many epochs without a better validation
        score (``None``: never stop early). The best parameters are kept.
    gamma, readout_tau, late_penalty : float
        Loss settings, see :func:`bci_qif.network.trial_loss`. ``late_penalty`` (0:
        off) pulls the output spikes of every trial whose outputs fire late (a soft
        minimum of their times beyond 90 % of the trial) earlier, all nearly alike, so
        that the decision by the first ordinary spike has a spike to go on.
    trainable_layers : tuple of int or None
        Indices of the layers whose weights and biases are trained (negative ones
        count from the output layer: ``(-1,)`` trains the output layer only); the
        others stay exactly as they are. ``None`` trains every layer.
    input_noise : float
        Standard deviation of Gaussian noise added to the input currents of every
        training minibatch: one fresh draw per trial and input channel, held over
        all events of the trial. For static encodings (a feature vector presented
        as a constant current) this is noise injection on the features, which acts
        like an L2 (Tikhonov) penalty on the input weights; 0 turns it off.
    seed : int
        Seed of the minibatch shuffling (and of the input noise).
    """

    epochs: int = 30
    batch_size: int = 32
    learning_rate: float = 3e-3
    grad_clip: float | None = 1.0
    weight_decay: float = 0.0
    optimizer: str = "adam"
    patience: int | None = None
    gamma: float = 0.01
    readout_tau: float = 1.0
    late_penalty: float = 0.0
    input_noise: float = 0.0
    trainable_layers: tuple | None = None
    seed: int = 0

    def __post_init__(self):
        for name in ("epochs", "batch_size"):
            value = getattr(self, name)
            if not (is_integer(value) and value >= 1):
                raise ValueError(f"{name} must be a positive integer, got {value!r}")
        if not self.learning_rate > 0:
            raise ValueError(f"learning_rate must be positive, got {self.learning_rate!r}")
        if self.grad_clip is not None and not self.grad_clip > 0:
            raise ValueError(f"grad_clip must be positive or None, got {self.grad_clip!r}")
        if self.optimizer not in OPTIMIZERS:
            raise ValueError(f"optimizer must be one of {list(OPTIMIZERS)}, got {self.optimizer!r}")
        if not self.late_penalty >= 0:
            raise ValueError(f"late_penalty must be >= 0, got {self.late_penalty!r}")
        if not self.input_noise >= 0:
            raise ValueError(f"input_noise must be >= 0, got {self.input_noise!r}")
        if self.patience is not None and self.patience < 1:
            raise ValueError(f"patience must be >= 1 or None, got {self.patience!r}")


def steps_per_epoch(n_trials, batch_size):
    """Minibatches per epoch: every trial at least once, batches of exactly ``batch_size``."""
    return max(1, math.ceil(n_trials / batch_size))


def _epoch_batches(order, batch_size):
    """Cut a permutation into full batches, wrapping around to fill the last one.

    Every batch has exactly ``batch_size`` trials whatever the training-set size, so
    the compiled gradient function is reused across folds and subjects instead of
    being recompiled (10-15 s each) for every new size.
    """
    n_steps = steps_per_epoch(len(order), batch_size)
    return np.resize(order, n_steps * batch_size).reshape(n_steps, batch_size)


def _noisy(batch_currents, noise_std, seed):
    """``batch_currents`` plus Gaussian noise, constant over each trial's events."""
    if not noise_std:
        return batch_currents
    n_trials, _, n_inputs = batch_currents.shape
    noise = np.random.default_rng(seed).standard_normal((n_trials, 1, n_inputs))
    return batch_currents + (noise_std * noise).astype(batch_currents.dtype)


def _event_times(times, idx):
    """Event times of the trials ``idx``: shared (1-D) or per trial (2-D)."""
    return times[idx] if np.ndim(times) == 2 else times


def make_optimizer(config, steps_per_epoch):
    """Adam(W) or SGD with momentum, a cosine learning-rate schedule and global-norm clipping.

    With ``config.trainable_layers`` the other layers get no update at all (no
    weight decay either), and clipping sees the trained layers' gradients only.
    """
    schedule = optax.cosine_decay_schedule(config.learning_rate, max(1, config.epochs * steps_per_epoch), alpha=0.1)
    parts = [optax.clip_by_global_norm(config.grad_clip)] if config.grad_clip else []
    if config.optimizer == "sgd":
        if config.weight_decay:
            parts.append(optax.add_decayed_weights(config.weight_decay))
        parts.append(optax.sgd(schedule, momentum=SGD_MOMENTUM))
    else:
        parts.append(optax.adamw(schedule, weight_decay=config.weight_decay))
    optimizer = optax.chain(*parts)
    if config.trainable_layers is None:
        return optimizer

    def layer_labels(params):
        trained = {int(k) % len(params) for k in config.trainable_layers}
        return [jax.tree_util.tree_map(lambda _, k=k: "trained" if k in trained else "frozen", layer)
                for k, layer in enumerate(params)]

    return optax.multi_transform({"trained": optimizer, "frozen": optax.set_to_zero()}, layer_labels)


@dataclasses.dataclass
class TrainingState:
    """Resumable training state.

    Attributes
    ----------
    params : list of dict
        Current network parameters.
    opt_state : optax state
    epoch : int
        Number of completed epochs.
    best_params : list of dict
        Parameters of the best validation score so far (or the latest without
        validation data).
    best_score : float
    epochs_since_best : int
    history : list of dict
        One row of metrics per completed epoch.
    budget : network.Budget
    """

    params: list
    opt_state: object
    epoch: int = 0
    best_params: list | None = None
    best_score: float = -math.inf
    epochs_since_best: int = 0
    history: list = dataclasses.field(default_factory=list)
    budget: network.Budget | None = None

    def to_arrays(self):
        """Flatten to ``(arrays, meta)``: numpy arrays and JSON-able metadata."""
        arrays = {}
        for prefix, tree in (("params", self.params), ("best", self.best_params or self.params),
                             ("opt", self.opt_state)):
            for k, leaf in enumerate(jax.tree_util.tree_leaves(tree)):
                arrays[f"{prefix}/{k}"] = np.asarray(leaf)
        meta = {
            "epoch": self.epoch,
            "best_score": self.best_score if math.isfinite(self.best_score) else None,
            "epochs_since_best": self.epochs_since_best,
            "history": self.history,
            "budget": None if self.budget is None else [
                self.budget.spikes_per_interval, list(self.budget.spikes_per_layer), self.budget.doublings
            ],
        }
        return arrays, meta

    @classmethod
    def from_arrays(cls, arrays, meta, params_template, optimizer):
        """Rebuild a state from :meth:`to_arrays` output.

        ``params_template`` and ``optimizer`` give the tree structures (no pickle).
        """

        def rebuild(prefix, template):
            leaves, treedef = jax.tree_util.tree_flatten(template)
            loaded = [jnp.asarray(arrays[f"{prefix}/{k}"], dtype=jnp.asarray(leaf).dtype)
                      for k, leaf in enumerate(leaves)]
            return jax.tree_util.tree_unflatten(treedef, loaded)

        params = rebuild("params", params_template)
        budget = meta.get("budget")
        return cls(
            params=params,
            opt_state=rebuild("opt", optimizer.init(params)),
            epoch=int(meta["epoch"]),
            best_params=rebuild("best", params_template),
            best_score=-math.inf if meta.get("best_score") is None else float(meta["best_score"]),
            epochs_since_best=int(meta.get("epochs_since_best", 0)),
            history=list(meta.get("history", [])),
            budget=None if budget is None else network.Budget(budget[0], tuple(budget[1]), budget[2]),
        )


def _padded_batches(n, batch_size):
    """Index batches of exactly ``batch_size`` (the last one padded by repetition).

    A fixed batch shape means one compilation; padded entries are trimmed later.
    """
    for start in range(0, n, batch_size):
        idx = np.arange(start, min(start + batch_size, n))
        pad = batch_size - len(idx)
        yield np.concatenate([idx, np.full(pad, idx[-1])]) if pad else idx, len(idx)


def evaluate_network(params, times, currents, labels, neuron, T, *, batch_size=64, gamma=0.01, readout_tau=1.0,
                     late_penalty=0.0, budget=None):
    """Simulate trials and compute loss, accuracies and spiking statistics.

    Returns
    -------
    metrics : dict
        ``loss``, ``acc`` (pseudospikes allowed), ``acc_ord`` (ordinary spikes only),
        ``silent_fraction`` (per hidden layer: neurons with no spike on any trial),
        ``spikes_per_trial`` (hidden + output), ``first_spike_times``
        (n_trials, n_outputs), ``ordinary`` and ``spike_counts`` (per layer,
        n_trials x n_neurons).
    budget : network.Budget
    """
    neuron = get_neuron(neuron)
    n = currents.shape[0]
    times = np.asarray(times)
    labels = np.asarray(labels) if labels is not None else np.zeros(n, int)
    firsts, ordinaries, counts, losses = [], [], None, []
    for idx, n_real in _padded_batches(n, batch_size):
        (value, result), budget = network.batch_loss(
            params, _event_times(times, idx), currents[idx], labels[idx], neuron, T=T, gamma=gamma,
            readout_tau=readout_tau, late_penalty=late_penalty, budget=budget
        )
        t = np.asarray(result.first_spike_times)[:n_real]
        firsts.append(t)
        ordinaries.append(np.asarray(result.ordinary)[:n_real])
        layer_counts = [np.asarray(c)[:n_real] for c in result.spike_counts]
        counts = layer_counts if counts is None else [np.concatenate([a, b]) for a, b in zip(counts, layer_counts)]
        losses.append(np.asarray(jax.vmap(lambda tt, yy: network.trial_loss(
            tt, yy, T, gamma=gamma, readout_tau=readout_tau, late_penalty=late_penalty))(
                jnp.asarray(t), jnp.asarray(labels[idx][:n_real]))))
    first = np.concatenate(firsts)
    ordinary = np.concatenate(ordinaries)
    result = network.SimulationResult(first, ordinary, tuple(counts), (), (), False, (), False)
    predicted, predicted_ord = network.predict(result)
    metrics = {
        "loss": float(np.mean(np.concatenate(losses))),
        "acc": float(np.mean(predicted == labels)),
        "acc_ord": float(np.mean(predicted_ord == labels)),
        "silent_fraction": [float(np.mean(c.sum(axis=0) == 0)) for c in counts[:-1]],
        "spikes_per_trial": float(sum(c.sum() for c in counts) / n),
        "first_spike_times": first,
        "ordinary": ordinary,
        "spike_counts": counts,
    }
    return metrics, budget


def check_targets(targets, n_trials, n_classes):
    """``targets`` as a float array of ``n_trials`` class distributions, or a ValueError saying what is wrong."""
    targets = np.asarray(targets, dtype=float)
    if targets.shape != (n_trials, n_classes):
        raise ValueError(f"soft targets must have shape ({n_trials}, {n_classes}), got {targets.shape}")
    if not np.all(np.isfinite(targets)) or np.any(targets < 0):
        raise ValueError("soft targets must be finite and non-negative")
    sums = targets.sum(axis=1)
    if not np.allclose(sums, 1.0, atol=1e-6):
        worst = int(np.argmax(np.abs(sums - 1.0)))
        raise ValueError(f"soft targets must sum to 1 per trial; trial {worst} sums to {sums[worst]:.6g}")
    return targets.astype(np.float32)


@jax.jit
def _all_finite(tree):
    return jnp.all(jnp.stack([jnp.all(jnp.isfinite(x)) for x in jax.tree_util.tree_leaves(tree)]))


def train(params, times, currents, labels, neuron, T, config=None, *, validation=None, state=None,
          on_epoch_end=None, progress=True, targets=None):
    """Train network parameters by exact gradient descent.

    Parameters
    ----------
    params : list of dict
        Initial parameters (ignored when ``state`` is given).
    times : (n_events,) or (n_trials, n_events) array
        Input event times, shared by all trials or per trial.
    currents : (n_trials, n_events, n_inputs) array
    labels : (n_trials,) int array
    neuron : str or NeuronModel
    T : float
        Trial length (model time units).
    config : TrainConfig
    validation : tuple ``(currents, labels)`` or ``(times, currents, labels)``, optional
        Held-out trials for model selection and early stopping (the 2-tuple shares
        ``times``; per-trial times need the 3-tuple).
    state : TrainingState, optional
        Resume from this state (e.g. loaded from a checkpoint).
    on_epoch_end : callable, optional
        Called with the :class:`TrainingState` after every epoch (checkpointing).
    progress : bool
        Show a tqdm progress bar.
    targets : (n_trials, n_outputs) array, optional
        Soft targets: a distribution over the classes per trial, which the loss
        uses instead of ``labels`` (:func:`bci_qif.network.trial_loss`; e.g. a
        teacher's probabilities mixed with the one-hot labels). ``labels`` still
        score the training accuracy.

    Returns
    -------
    TrainingState
        ``best_params`` holds the selected parameters.
    """
    config = config or TrainConfig()
    neuron = get_neuron(neuron)
    currents = np.asarray(currents)
    labels = np.asarray(labels)
    times = np.asarray(times)
    n = currents.shape[0]
    if labels.shape != (n,):
        raise ValueError(f"labels must have shape ({n},), got {labels.shape}")
    batch_size = config.batch_size
    optimizer = make_optimizer(config, steps_per_epoch(n, batch_size))
    if state is None:
        state = TrainingState(params=params, opt_state=optimizer.init(params), best_params=params)
    n_classes = network.layer_sizes_of(state.params)[-1]
    loss_targets = labels if targets is None else check_targets(targets, n, n_classes)

    @jax.jit
    def apply_update(params, opt_state, grads):
        updates, opt_state = optimizer.update(grads, opt_state, params)
        return optax.apply_updates(params, updates), opt_state, optax.tree.norm(grads)

    last_good = (state.params, state.opt_state)  # parameters known to simulate within budget
    initial_params = state.params
    stopped_early = (config.patience is not None and validation is not None
                     and state.epochs_since_best >= config.patience)
    last_epoch = state.epoch if stopped_early else config.epochs  # a resumed run that had stopped stays stopped
    bar = tqdm(range(state.epoch, last_epoch), initial=state.epoch, total=config.epochs,
               desc=f"train {neuron.name}", disable=not progress, leave=False)
    for epoch in bar:
        rng = np.random.default_rng((config.seed, epoch))  # resumable shuffling
        batches = _epoch_batches(rng.permutation(n), batch_size)
        losses, norms, n_nonfinite, n_overflow = [], [], 0, 0
        correct = correct_ord = 0
        hidden_counts = None
        for b, idx in enumerate(batches):
            try:
                batch_currents = _noisy(currents[idx], config.input_noise, (config.seed, epoch, b))
                ((loss, result), grads), state.budget = network.batch_loss(
                    state.params, _event_times(times, idx), batch_currents, loss_targets[idx], neuron, T=T,
                    gamma=config.gamma, readout_tau=config.readout_tau, late_penalty=config.late_penalty,
                    budget=state.budget, grad=True,
                )
            except network.EventBudgetError as err:
                # The previous update drove firing beyond the event budget: undo it and
                # go on with the next minibatch instead of losing the whole run.
                n_overflow += 1
                logger.warning("epoch %d step %d: %s; previous update undone", epoch, b, err)
                state.params, state.opt_state = last_good
                continue
            last_good = (state.params, state.opt_state)
            if not bool(_all_finite((loss, grads))):
                n_nonfinite += 1
                logger.warning("epoch %d step %d: non-finite loss or gradient, step skipped", epoch, b)
                continue
            state.params, state.opt_state, norm = apply_update(state.params, state.opt_state, grads)
            losses.append(float(loss))
            norms.append(float(norm))
            predicted, predicted_ord = network.predict(result)
            correct += int(np.sum(predicted == labels[idx]))
            correct_ord += int(np.sum(predicted_ord == labels[idx]))
            batch_hidden = [np.asarray(c).sum(axis=0) for c in result.spike_counts[:-1]]
            hidden_counts = batch_hidden if hidden_counts is None else [a + c for a, c in zip(hidden_counts, batch_hidden)]
        seen = batches.size
        row = {
            "epoch": epoch + 1,
            "loss": float(np.mean(losses)) if losses else math.nan,
            "acc": correct / seen,
            "acc_ord": correct_ord / seen,
            "grad_norm": float(np.mean(norms)) if norms else math.nan,
            "n_nonfinite": n_nonfinite,
            "n_overflow": n_overflow,
        }
        for layer, c in enumerate(hidden_counts or []):
            row[f"silent_fraction_{layer + 1}"] = float(np.mean(c == 0))
        if hidden_counts:
            row["silent_fraction"] = float(np.mean(np.concatenate(hidden_counts) == 0))
        if validation is not None:
            val_times, val_currents, val_labels = (times, *validation) if len(validation) == 2 else validation
            try:
                val_metrics, state.budget = evaluate_network(
                    state.params, val_times, val_currents, val_labels, neuron, T, batch_size=batch_size,
                    gamma=config.gamma, readout_tau=config.readout_tau, late_penalty=config.late_penalty,
                    budget=state.budget,
                )
            except network.EventBudgetError as err:
                logger.warning("epoch %d: validation: %s; last update undone", epoch, err)
                state.params, state.opt_state = last_good
                val_metrics = {"loss": math.nan, "acc": math.nan, "acc_ord": math.nan}
            row.update(val_loss=val_metrics["loss"], val_acc=val_metrics["acc"], val_acc_ord=val_metrics["acc_ord"])
            score = val_metrics["acc_ord"] + 1e-3 * val_metrics["acc"] - 1e-6 * val_metrics["loss"]
            score = -math.inf if math.isnan(score) else score
        else:
            score = -row["loss"] if losses else -math.inf
        if score > state.best_score or state.best_params is None:
            state.best_score, state.best_params, state.epochs_since_best = score, state.params, 0
        else:
            state.epochs_since_best += 1
        if validation is None:
            state.best_params = state.params  # no held-out data: keep the latest
        state.epoch = epoch + 1
        state.history.append(row)
        bar.set_postfix(loss=f"{row['loss']:.3f}", acc=f"{row['acc']:.2f}", acc_ord=f"{row['acc_ord']:.2f}",
                        silent=f"{row.get('silent_fraction_1', 0):.2f}")
        logger.info("epoch %s", row)
        if on_epoch_end is not None:
            on_epoch_end(state)
        if config.patience is not None and validation is not None and state.epochs_since_best >= config.patience:
            logger.info("early stopping after %d epochs", state.epoch)
            break
    bar.close()
    if validation is None and state.epoch == config.epochs:
        candidates = (state.best_params, last_good[0], initial_params)
        state.best_params = _first_simulable(candidates, times, currents, neuron, T, batch_size, state.budget)
    return state


def _first_simulable(candidates, times, currents, neuron, T, batch_size, budget):
    """The first parameters that simulate all training trials within the event budget.

    Without a validation set the last update is returned untested; if it made the
    firing run away, fall back to the last parameters that simulated a minibatch,
    then to this run's starting point. If none works the last error propagates.
    """
    for k, params in enumerate(candidates):
        try:
            evaluate_network(params, times, currents, None, neuron, T, batch_size=batch_size, budget=budget)
            return params
        except network.EventBudgetError as err:
            if k == len(candidates) - 1:
                raise
            logger.warning("trained parameters exceed the event budget (%s); trying earlier ones", err)
