"""Event-based simulation of feed-forward spiking networks with exact gradients.

A network is a list of layers ``params[l] = {"w": (n_out, n_in), "b": (n_out,)}``.
The input is a list of timed current events: event ``k`` at time ``times[k]``
carries a vector ``currents[k]`` over the input channels (one EEG sample, or one
time bin of spike counts) and adds ``w @ currents[k] + b`` to the synaptic
currents of the first layer.

Simulation goes layer by layer, which is exact for feed-forward networks: all
neurons of a layer see the same event times, so one ``lax.scan`` over the events
advances the whole layer in closed form (:meth:`NeuronModel.advance`). Spike times
are then computed in parallel from the states recorded at the start of every
inter-event interval, and become the input events of the next layer. Because every
spike time is a differentiable closed-form function of the parameters, autodiff of
the loss gives the exact gradient of the spiking network.

Bias currents
-------------
Each neuron has a learned bias ``b``. A constant current would break the closed
form (only the decaying current with ``tau_s = tau / 2`` has one), so the bias is
delivered as a kick of ``b`` at every input event time (the sampling clock) in
every layer. For a clock of period ``dt`` the sustained part of the current is
about ``b * tau / (2 dt)``.

Readout
-------
The first spike time of every output neuron: the first ordinary spike, else (QIF)
the first pseudospike after the trial end ``T``. Pseudodynamics drive every neuron
after ``T`` with a suprathreshold current ``softplus(I(T) + w @ a_prev)`` where
``a_prev`` is the previous layer's pseudo-activity (for the first layer the
trial-mean input), so silent neurons still receive gradients. The activity of a
neuron is its spike count plus the completed fraction of its pseudo cycle at ``T``,
minus the decayed trace its spikes already left in the next layer's ``I(T)``: a
rate-like signal of the whole trial that stays continuous when a spike moves
across ``T``. LIF neurons have no pseudodynamics: a silent LIF output
reads out at ``T`` without gradient.
"""

from __future__ import annotations

import logging
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from .errors import EventBudgetError
from .neurons import NeuronModel, get_neuron

logger = logging.getLogger(__name__)

__all__ = [
    "Budget",
    "EventBudgetError",
    "SimulationResult",
    "init",
    "default_budget",
    "simulate",
    "simulate_batch",
    "trial_loss",
    "loss",
    "batch_loss",
    "predict",
]


class Budget(NamedTuple):
    """Static sizes of a simulation (they fix array shapes, so they are compile-time).

    Attributes
    ----------
    spikes_per_interval : int
        Spikes recorded per neuron between two consecutive input events.
    spikes_per_layer : tuple of int
        Per layer, the number of (neuron, interval) pairs with spikes recorded per
        trial, and also the number of spikes the layer passes on (its spike budget).
    doublings : int
        Range of the QIF fast flow: exact while ``|I| s**2 <= 4**doublings``
        (``s = 1 - exp(-dt / tau)`` for the interval ``dt``).
    """

    spikes_per_interval: int
    spikes_per_layer: tuple
    doublings: int = 3

    def grown(self, interval_overflow, layer_overflow, range_overflow=False, layer_need=None):
        """Return a budget enlarged where an overflow was seen.

        An overflowing layer budget doubles or, when ``layer_need`` (per layer, the
        most (neuron, interval) pairs with spikes seen in a trial) is given, grows to
        the need plus an eighth, rounded up to a multiple of 64. Doubling overshoots:
        a hidden layer that needs 632 got 1024, and the next layer's scan and event
        sort ran over the padding (the scan over all of it, about 7 % of a training
        step on the reference workload). The margin keeps recompiles rare while the
        firing drifts during training.
        """
        need = layer_need if layer_need is not None else (None,) * len(self.spikes_per_layer)
        return Budget(
            self.spikes_per_interval * (2 if interval_overflow else 1),
            tuple(_layer_budget(n, bad, k) for n, bad, k in zip(self.spikes_per_layer, layer_overflow, need)),
            self.doublings + (2 if range_overflow else 0),
        )


#: Layer budgets grown from an observed need are multiples of this.
BUDGET_QUANTUM = 64


def _layer_budget(size, overflowed, need=None):
    """A layer budget after an overflow (see :meth:`Budget.grown`)."""
    if not overflowed:
        return size
    if need is None:
        return 2 * size
    wanted = int(need) + int(need) // 8
    return max(size + 1, -(-wanted // BUDGET_QUANTUM) * BUDGET_QUANTUM)


class SimulationResult(NamedTuple):
    """What one simulated trial returns (a pytree; batched along a leading axis).

    Attributes
    ----------
    first_spike_times : (n_out,) first output spike (ordinary, else pseudo for QIF;
        ``T`` for a silent LIF output).
    ordinary : (n_out,) bool, whether the first spike is an ordinary spike.
    spike_counts : tuple of (n_l,) int arrays, ordinary spikes per neuron per layer.
    spike_times : tuple of (budget_l,) arrays, spike times per layer in time order
        (``inf`` padding).
    spike_sources : tuple of (budget_l,) int arrays, neuron index of each spike.
    interval_overflow : bool, more spikes in one interval than recorded.
    layer_overflow : tuple of bool, more spikes in a layer than its budget.
    range_overflow : bool, a current outside the range of the QIF fast flow.
    layer_need : tuple of int, per layer the number of (neuron, interval) pairs
        with spikes or, if larger, of spikes, i.e. the layer budget this trial needs.
    """

    first_spike_times: jax.Array
    ordinary: jax.Array
    spike_counts: tuple
    spike_times: tuple
    spike_sources: tuple
    interval_overflow: jax.Array
    layer_overflow: tuple
    range_overflow: jax.Array
    layer_need: tuple = ()


# ---------------------------------------------------------------------------------
# Parameters
# ---------------------------------------------------------------------------------
def init(key, layer_sizes, *, weight_scale=1.0, bias=1.0, dtype=jnp.float32):
    """Random parameters of a feed-forward network.

    Parameters
    ----------
    key : jax.random.PRNGKey
    layer_sizes : sequence of int
        ``(n_inputs, n_hidden_1, ..., n_outputs)``; no hidden layer (``(n_inputs,
        n_outputs)``) makes the output neurons read the inputs directly.
    weight_scale : float
        Weights are normal with standard deviation ``weight_scale / sqrt(n_in)``.
    bias : float
        Initial bias kick of every neuron (see module notes).
    dtype : dtype
        ``float32`` (default) or ``float64`` (needs ``jax_enable_x64``).

    Returns
    -------
    params : list of dict
        ``[{"w": (n_out, n_in), "b": (n_out,)}, ...]``, one per layer.
    """
    sizes = [int(n) for n in layer_sizes]
    if len(sizes) < 2:
        raise ValueError(f"layer_sizes needs inputs, optional hidden layers and outputs, got {layer_sizes!r}")
    if min(sizes) < 1:
        raise ValueError(f"layer sizes must be positive, got {layer_sizes!r}")
    keys = jax.random.split(key, len(sizes) - 1)
    params = []
    for k, n_in, n_out in zip(keys, sizes[:-1], sizes[1:]):
        w = jax.random.normal(k, (n_out, n_in), dtype) * float(weight_scale / np.sqrt(n_in))  # np.float64 promotes under x64
        params.append({"w": w, "b": jnp.full((n_out,), bias, dtype)})
    return params


def layer_sizes_of(params):
    """``(n_inputs, n_hidden..., n_outputs)`` of a parameter list."""
    return (int(params[0]["w"].shape[1]),) + tuple(int(p["w"].shape[0]) for p in params)


#: Doublings of a default budget. Each doubling costs every QIF flow step about as much as
#: a third of its Taylor series; without any, the flow covers ``|I| s**2 <= 1`` (at 160 Hz
#: with ``tau`` = 50 ms: ``|I| <= 72``, far above the currents of the EEG workloads).
#: Stronger currents are flagged and the budget grows (a recompile, never a wrong answer).
DEFAULT_DOUBLINGS = 0


def default_budget(params):
    """A starting budget: 1 spike per interval, 4 spikes per neuron per layer, no doublings.

    Budgets grow automatically when exceeded (see :func:`simulate`).
    """
    sizes = layer_sizes_of(params)[1:]
    return Budget(1, tuple(max(16, 4 * n) for n in sizes), DEFAULT_DOUBLINGS)


# ---------------------------------------------------------------------------------
# One layer
# ---------------------------------------------------------------------------------
def _advance_layer(neuron, dts, kicks, budget):
    """Advance a layer interval by interval (any neuron model).

    Interval ``k`` lasts ``dts[k]`` and ends with ``kicks[k]``. Returns the states
    and currents at every interval start, the spike/overflow flags, and the state
    and current after the last interval. Models with their own whole-layer scan
    (:meth:`QIF.advance_layer`, :meth:`LIF.advance_layer`: hand-written backward passes)
    use it; the others go through :func:`_generic_layer_scan`.
    """
    if hasattr(neuron, "advance_layer"):
        return neuron.advance_layer(dts, kicks, budget.spikes_per_interval, budget.doublings)
    return _generic_layer_scan(neuron, dts, kicks, budget)


def _generic_layer_scan(neuron, dts, kicks, budget):
    """:func:`_advance_layer` as a ``lax.scan`` of :meth:`NeuronModel.advance`, differentiated by autodiff.

    The reference the whole-layer scans of the built-in models are tested against.
    """
    n, dtype = kicks.shape[1], kicks.dtype

    # Checkpointed: the backward pass recomputes each step from its carry instead of
    # storing every intermediate of the flow (which made gradients 10x slower).
    def step(carry, inputs):
        state, current = carry
        dt, kick = inputs
        new_state, new_current, maybe_spiked, overflow = neuron.advance(
            state, current, dt, budget.spikes_per_interval, budget.doublings
        )
        return (new_state, new_current + kick), (state, current, maybe_spiked, overflow)

    init_state = neuron.rest_state((n,), dtype)
    (state_T, current_T), (states, currents, maybe_spiked, range_overflow) = jax.lax.scan(
        jax.checkpoint(step), (init_state, jnp.zeros((n,), dtype)), (dts, kicks)
    )
    return states, currents, maybe_spiked, range_overflow, state_T, current_T


def _first_reaching(cumulative, n_targets):
    """Per trial, the first position whose running count reaches 1, 2, ..., ``n_targets``.

    ``cumulative`` is ``(rows, trials, columns)``: per trial an inclusive running count
    in row-major (row, column) order. Returns ``(trials, n_targets)`` positions
    ``row * columns + column`` (``rows * columns`` where a target is never reached): a
    batched binary search (``searchsorted(..., side="left")`` per trial) that reads the
    counts where they lie, so the count array is never transposed.
    """
    k, n_trials, n = cumulative.shape
    flat = cumulative.reshape(-1)
    size = k * n
    targets = jnp.arange(1, n_targets + 1, dtype=jnp.int32)
    trial = jnp.arange(n_trials, dtype=jnp.int32)[:, None]
    lo = jnp.zeros((n_trials, n_targets), jnp.int32)
    hi = jnp.full((n_trials, n_targets), size, jnp.int32)
    for _ in range(int(size).bit_length()):
        mid = jnp.minimum((lo + hi) // 2, size - 1)
        value = flat[((mid // n) * n_trials + trial) * n + mid % n]
        active = lo < hi
        right = value < targets
        lo = jnp.where(active & right, mid + 1, lo)
        hi = jnp.where(active & ~right, mid, hi)
    return lo


def _pick_pairs(mask, n_targets, block=8):
    """Per trial, the first ``n_targets`` (interval, neuron) pairs where ``mask`` holds.

    ``mask`` is ``(intervals, trials, neurons)`` (the scan's layout). Pairs are taken in
    each trial's row-major (interval, neuron) order, i.e. in time order of intervals.
    The search runs in two levels: over a running count of blocks of ``block`` neurons
    (a binary search, :func:`_first_reaching`), then among the ``block`` mask entries of
    the found block. A running count of every single pair (an event-sized array, and
    earlier a small-matrix product per block to build it) is never formed.

    Returns
    -------
    position : (trials, n_targets) int32
        ``interval * neurons + neuron`` of each pair; meaningless where the trial has
        fewer pairs (see ``n_found``).
    n_found : (trials,) int32
        Number of pairs per trial (may exceed ``n_targets``: a layer-budget overflow).
    """
    k, n_trials, n = mask.shape
    n_blocks = -(-n // block)
    blocks = jnp.pad(mask, ((0, 0), (0, 0), (0, n_blocks * block - n))).reshape(k, n_trials, n_blocks, block)
    block_totals = jnp.sum(blocks, axis=-1, dtype=jnp.int32)
    within_row = jnp.cumsum(block_totals, axis=-1)
    row_totals = within_row[..., -1]
    cumulative = within_row + (jnp.cumsum(row_totals, axis=0) - row_totals)[..., None]
    n_found = cumulative[-1, :, -1]
    # The block that holds the j-th pair, and how many pairs come before that block.
    found = jnp.minimum(_first_reaching(cumulative, n_targets), k * n_blocks - 1)
    trial = jnp.arange(n_trials, dtype=jnp.int32)[:, None]
    row = ((found // n_blocks) * n_trials + trial) * n_blocks + found % n_blocks
    before = cumulative.reshape(-1)[row] - block_totals.reshape(-1)[row]
    # Inside the block: the (j - before)-th set entry.
    rank = jnp.arange(1, n_targets + 1, dtype=jnp.int32) - before
    bits = blocks.reshape(-1, block)[row].astype(jnp.int32)
    offset = jnp.sum(jnp.cumsum(bits, axis=-1) < rank[..., None], axis=-1)
    interval = found // n_blocks
    neuron = (found % n_blocks) * block + offset
    return interval * n + neuron, n_found


def _run_layer(neuron, event_times, kicks, T, budget, layer_index):
    """Simulate one layer of a batch of trials driven by sorted input events.

    ``event_times`` is ``(trials, events)``; ``kicks`` is ``(events, trials, neurons)``,
    the layout of the scan over events (vmapped over trials on axis 1, so that no
    event-sized array is transposed on the way in or, in the backward pass, on the
    way out). Returns, per trial, the layer's spikes (up to its budget), per-neuron
    counts, the first spike per neuron, the state and current at ``T`` and the
    overflow flags.
    """
    n_trials, n = event_times.shape[0], kicks.shape[-1]
    dtype = kicks.dtype
    per_interval = budget.spikes_per_interval
    n_candidates = budget.spikes_per_layer[layer_index]
    in_trial = event_times < T
    ends = jnp.concatenate([jnp.where(in_trial, event_times, T), jnp.full((n_trials, 1), T, dtype)], axis=1)
    starts = jnp.concatenate([jnp.zeros((n_trials, 1), dtype), ends[:, :-1]], axis=1)
    dts = ends - starts
    kicks = jnp.concatenate([kicks * in_trial.T[:, :, None], jnp.zeros((1, n_trials, n), dtype)])

    scan = jax.vmap(lambda d, k: _advance_layer(neuron, d, k, budget), in_axes=(0, 1), out_axes=(1, 1, 1, 1, 0, 0))
    states, currents, maybe_spiked, range_overflow, state_T, current_T = scan(dts, kicks)
    # The last kick is zero, so current_T is the current at T.

    # Spikes are sparse: pick the (interval, neuron) pairs that may hold spikes, in
    # time order, and compute exact spike times for those only. The picks read the
    # (interval, trial, neuron) arrays where they lie: gathering from a trial-major
    # copy cost a transpose of every state array, and in the backward pass a
    # transpose of every dense cotangent.
    position, n_found = _pick_pairs(maybe_spiked > 0, n_candidates)
    kept = jnp.arange(n_candidates) < n_found[:, None]
    position = jnp.where(kept, position, 0)
    interval, source = position // n, position % n
    trial = jnp.arange(n_trials)[:, None]
    index = (interval * n_trials + trial) * n + source
    picked_state = tuple(s.reshape(-1)[index] for s in states)
    odd = (maybe_spiked.reshape(-1)[index] & 1) == 1
    offsets, counts = neuron.spikes_in_interval(
        picked_state, currents.reshape(-1)[index], dts[trial, interval], per_interval, odd=odd
    )
    counts = jnp.where(kept, counts, 0)
    times = jnp.where(kept[..., None], starts[trial, interval][..., None] + offsets, jnp.inf)
    spike_counts = jnp.zeros((n_trials, n), jnp.int32).at[trial, source].add(counts)
    trace_at_T = None
    if neuron.has_pseudodynamics:
        # What the spikes still contribute to a downstream current at T (kick decayed by
        # exp(-2 (T - t) / tau)); the pseudodynamics need it to avoid counting twice.
        finite = jnp.isfinite(times)
        decay_at_T = jnp.where(finite, jnp.exp(-2.0 * (T - jnp.where(finite, times, T)) / neuron.tau), 0.0)
        trace_at_T = jnp.zeros((n_trials, n), dtype).at[trial, source].add(jnp.sum(decay_at_T, axis=-1))
    sources = jnp.broadcast_to(source[..., None], times.shape).reshape(n_trials, -1)
    times = times.reshape(n_trials, -1)
    need = n_found
    if per_interval > 1:
        # Most of the per_interval slots of a pair are empty, yet the next layer scans
        # one interval per slot: with 4 spikes per interval (LIF) its event list was 4x
        # the spikes, most of the training step. Keep the spikes only, in their order,
        # in as many slots as the layer has pairs; more spikes than that overflow it.
        times, sources, n_spikes = _compact_spikes(times, sources, n_candidates)
        need = jnp.maximum(n_found, n_spikes)
    first = None
    if layer_index == len(budget.spikes_per_layer) - 1:
        # First spike of every neuron (a masked min keeps the gradient exact).
        mine = sources[:, None, :] == jnp.arange(n)[None, :, None]
        first = jnp.min(jnp.where(mine, times[:, None], jnp.inf), axis=2)
    return {
        "spike_times": times,
        "spike_sources": sources,
        "counts": spike_counts,
        "trace_at_T": trace_at_T,
        "first": first,
        "state_T": state_T,
        "current_T": current_T,
        "interval_overflow": jnp.any(counts > per_interval, axis=1),
        "range_overflow": jnp.any(range_overflow, axis=(0, 2)),
        "layer_overflow": need > n_candidates,
        "layer_need": need,
    }


def _compact_spikes(times, sources, size):
    """Move the finite spike times of every trial to the front, keeping their order.

    ``times`` and ``sources`` are ``(trials, slots)``. Returns both cut to ``size``
    slots (``inf`` padding) and the number of spikes per trial, which may exceed
    ``size`` (the spikes beyond it are dropped: an overflow).
    """
    n_trials = times.shape[0]
    finite = jnp.isfinite(times)
    slot = jnp.where(finite, jnp.cumsum(finite, axis=1) - 1, size)  # ``size``: out of range, dropped
    trial = jnp.arange(n_trials)[:, None]
    compact_times = jnp.full((n_trials, size), jnp.inf, times.dtype).at[trial, slot].set(times, mode="drop")
    compact_sources = jnp.zeros((n_trials, size), sources.dtype).at[trial, slot].set(sources, mode="drop")
    return compact_times, compact_sources, jnp.sum(finite, axis=1, dtype=jnp.int32)


@jax.custom_vjp
def _project_inputs(currents, w):
    """``currents @ w.T`` of a batch, returned in the scans' (event, trial, neuron) order.

    Transposing the currents (``n_inputs`` wide) is cheaper than transposing the kicks
    (``n_neurons`` wide). The weight gradient is written by hand as the product of the
    transposed currents with the kick cotangent: left to autodiff, XLA computed it as
    ``cotangent.T @ currents`` and transposed the event-sized cotangent first.
    """
    return jnp.swapaxes(currents, 0, 1) @ w.T


def _project_inputs_fwd(currents, w):
    by_event = jnp.swapaxes(currents, 0, 1)
    return by_event @ w.T, (by_event, w)


def _project_inputs_bwd(residuals, g):
    by_event, w = residuals
    n_inputs = by_event.shape[-1]
    # (n_inputs, events x trials) @ (events x trials, n_neurons): a plain matmul.
    g_w = (by_event.reshape(-1, n_inputs).T @ g.reshape(-1, g.shape[-1])).T
    return jnp.swapaxes(g @ w, 0, 1), g_w


_project_inputs.defvjp(_project_inputs_fwd, _project_inputs_bwd)


def _pseudo_activity(neuron, layer, pre_activation):
    """Pseudo drive, time to the first pseudospike and pseudo-activity of a layer."""
    drive = neuron.pseudo_drive(layer["current_T"] + pre_activation)
    dt_pseudo, period = neuron.time_to_pseudospike(layer["state_T"], drive)
    # Rate-like activity: ordinary spikes plus the completed fraction of the pseudo
    # cycle, minus the part of the spikes the next layer already holds in I(T). When a
    # spike crosses T the count gains 1 as the phase drops from 1 to 0 and the trace
    # gains 1 as the next layer's I(T) gains w: the pseudo drive stays continuous.
    activity = layer["counts"] + 1.0 - dt_pseudo / period - layer["trace_at_T"]
    return dt_pseudo, activity


# ---------------------------------------------------------------------------------
# One trial
# ---------------------------------------------------------------------------------
def simulate_trial(params, times, currents, neuron, T, budget):
    """Simulate one trial (pure function; jit/vmap it, or use :func:`simulate`).

    Parameters
    ----------
    params : list of dict
        Network parameters (see :func:`init`).
    times : (n_events,) array
        Sorted input event times (model time units). Events at ``t >= T`` are ignored.
    currents : (n_events, n_inputs) array
        Input vector of each event.
    neuron : NeuronModel
    T : float
        Trial length.
    budget : Budget

    Returns
    -------
    SimulationResult
    """
    result = simulate_batch(params, jnp.asarray(times)[None], jnp.asarray(currents)[None], neuron, T, budget)
    return jax.tree_util.tree_map(lambda x: x[0], result)


def simulate_batch(params, times, currents, neuron, T, budget):
    """Simulate a batch of trials (pure function; :func:`simulate` adds jit and budgets).

    Same as ``jax.vmap(simulate_trial)`` but faster: the layer scans run vmapped in
    their own (event, trial, neuron) layout, and everything that reads or feeds them
    (input projection, spike picking, next layer's kicks) works in that layout too,
    so no event-sized array or cotangent is transposed between trial-major and
    event-major order.

    Parameters
    ----------
    params : list of dict
    times : (n_events,) or (batch, n_events) array
        Sorted event times, shared by all trials or per trial.
    currents : (batch, n_events, n_inputs) array
    neuron : NeuronModel
    T : float
    budget : Budget

    Returns
    -------
    SimulationResult
        Batched along the first axis.
    """
    dtype = params[0]["w"].dtype
    currents = jnp.asarray(currents, dtype)
    n_trials, n_events = currents.shape[:2]
    times = jnp.broadcast_to(jnp.asarray(times, dtype), (n_trials, n_events))
    T = jnp.asarray(T, dtype)
    in_trial = times < T
    n_in_trial = jnp.maximum(jnp.sum(in_trial, axis=1), 1)
    pre_activation_input = jnp.einsum("bec,be->bc", currents, in_trial.astype(dtype)) / n_in_trial[:, None]

    kicks = _project_inputs(currents, params[0]["w"]) + params[0]["b"]
    event_times, layers, activity = times, [], pre_activation_input
    for index, layer_params in enumerate(params):
        if index > 0:
            prev = layers[-1]
            # Clock ticks (source -1) kick with the bias, presynaptic spikes with w[:, source].
            event_times = jnp.concatenate([times, prev["spike_times"]], axis=1)
            sources = jnp.concatenate([jnp.full(times.shape, -1, jnp.int32), prev["spike_sources"]], axis=1)
            order = jnp.argsort(event_times, axis=1)
            event_times = jnp.take_along_axis(event_times, order, axis=1)
            sources = jnp.take_along_axis(sources, order, axis=1).T  # (events, trials): the scan's order
            w_rows = layer_params["w"].T[jnp.maximum(sources, 0)]
            kicks = jnp.where((sources >= 0)[..., None], w_rows, layer_params["b"])
        layer = _run_layer(neuron, event_times, kicks, T, budget, index)
        if neuron.has_pseudodynamics:
            layer["dt_pseudo"], activity = _pseudo_activity(neuron, layer, activity @ layer_params["w"].T)
        layers.append(layer)

    out = layers[-1]
    ordinary = out["counts"] > 0
    if neuron.has_pseudodynamics:
        fallback = T + out["dt_pseudo"]
    else:
        fallback = jax.lax.stop_gradient(jnp.full_like(out["first"], T))
    first = jnp.where(ordinary, out["first"], fallback)
    return SimulationResult(
        first_spike_times=first,
        ordinary=ordinary,
        spike_counts=tuple(l["counts"] for l in layers),
        spike_times=tuple(l["spike_times"] for l in layers),
        spike_sources=tuple(l["spike_sources"] for l in layers),
        interval_overflow=jnp.any(jnp.stack([l["interval_overflow"] for l in layers]), axis=0),
        layer_overflow=tuple(l["layer_overflow"] for l in layers),
        range_overflow=jnp.any(jnp.stack([l["range_overflow"] for l in layers]), axis=0),
        layer_need=tuple(l["layer_need"] for l in layers),
    )


LATE_DEADLINE = 0.9
"""Fraction of the trial by which ``late_penalty`` wants some output neuron to have fired."""


def trial_loss(first_spike_times, label, T, *, gamma=0.01, readout_tau=1.0, late_penalty=0.0):
    """Loss of one trial from its output first-spike times.

    ``cross_entropy(softmax(-t / readout_tau), label) + gamma * (exp(t_label / T) - 1)
    + late_penalty * max(0, m / T - LATE_DEADLINE)``, where
    ``m = -T log(mean_k exp(-t_k / T))`` is a soft minimum of the output spike times
    (between their minimum and their mean). The earliest output neuron is the
    prediction; the second term pulls the correct neuron's spike into the trial; the
    third acts only on trials whose outputs fire late (``m`` beyond
    ``LATE_DEADLINE * T``) and pulls all of them earlier nearly alike (weights
    ``softmax(-t / T)``, near-equal for times closer than ``T``): the decision by the
    first ordinary spike needs some output to fire inside the trial, and this term
    favours no class, where ``gamma`` favours the correct one on every trial, and
    leaves the trials whose outputs fire early alone. (A first version
    pulled the earliest output alone, ``min_k t_k``: it cost 5-7 points of accuracy;
    docs/benchmarks.md, thirteenth session.)

    ``label`` is the class index, or a distribution over the classes (soft targets,
    e.g. a teacher's probabilities mixed with the one-hot label): the loss is then the
    expectation of the class-index loss under it (cross-entropy against the
    distribution, ``gamma`` term weighted alike), so a one-hot distribution gives
    exactly the class-index loss.
    """
    logits = -first_spike_times / readout_tau
    earliness = jnp.expm1(first_spike_times / T)
    if jnp.ndim(label) == 0:
        ce, pull = jax.nn.logsumexp(logits) - logits[label], earliness[label]
    else:  # soft targets: the expectation over classes
        ce, pull = jax.nn.logsumexp(logits) - jnp.dot(label, logits), jnp.dot(label, earliness)
    n_outputs = first_spike_times.shape[-1]
    soft_earliest = -T * (jax.nn.logsumexp(-first_spike_times / T) - jnp.log(n_outputs))
    lateness = jax.nn.relu(soft_earliest / T - LATE_DEADLINE)
    return ce + gamma * pull + late_penalty * lateness


# ---------------------------------------------------------------------------------
# Batched, jitted entry points with automatic budgets
# ---------------------------------------------------------------------------------
def _times_axis(times):
    return 0 if jnp.ndim(times) == 2 else None


def _batched_simulation(neuron, T, budget, times_axis):
    def run(params, times, currents):
        return simulate_batch(params, times, currents, neuron, T, budget)

    return run


_jit_cache = {}


def _compiled(kind, neuron, T, budget, times_axis, **options):
    """A cached jitted function (neuron, T and budget are static)."""
    key = (kind, neuron, float(T), budget, times_axis, tuple(sorted(options.items())))
    if key not in _jit_cache:
        sim = _batched_simulation(neuron, T, budget, times_axis)
        if kind == "simulate":
            fn = sim
        elif kind == "loss":
            settings = {name: options[name] for name in ("gamma", "readout_tau", "late_penalty")}

            def fn(params, times, currents, labels):
                result = sim(params, times, currents)
                losses = jax.vmap(lambda t, y: trial_loss(t, y, T, **settings))(result.first_spike_times, labels)
                return jnp.mean(losses), result

            fn = jax.value_and_grad(fn, has_aux=True) if options.get("grad") else fn
        _jit_cache[key] = jax.jit(fn)
    return _jit_cache[key]


def _overflowed(result):
    """Concrete overflow flags ``(interval, layers, range)`` of a (batched) result."""
    interval = bool(np.any(np.asarray(result.interval_overflow)))
    layers = tuple(bool(np.any(np.asarray(f))) for f in result.layer_overflow)
    return interval, layers, bool(np.any(np.asarray(result.range_overflow)))


def _layer_need(result):
    """Per layer, the largest budget any trial of a (batched) result needs, or None."""
    if len(result.layer_need) != len(result.layer_overflow):
        return None
    return tuple(int(np.max(np.asarray(n))) for n in result.layer_need)


#: Growing the per-interval budget beyond this is refused: each step costs a full pass
#: over the layer and lengthens the next layer's event list.
MAX_SPIKES_PER_INTERVAL = 16


def _with_budget(run, params, budget, result_of=lambda out: out, max_growth=8):
    """Call ``run(budget)`` and grow the budget until no spike overflows it.

    ``result_of(out)`` picks the :class:`SimulationResult` out of ``run``'s output.
    """
    budget = budget or default_budget(params)
    for _ in range(max_growth):
        out = run(budget)
        interval, layers, current_range = _overflowed(result_of(out))
        if not (interval or any(layers) or current_range):
            return out, budget
        if interval and budget.spikes_per_interval >= MAX_SPIKES_PER_INTERVAL:
            raise EventBudgetError(
                f"a neuron fires more than {MAX_SPIKES_PER_INTERVAL} spikes between two input events; "
                "the network is firing implausibly fast (runaway weights; LIF has no refractoriness): lower the input gain, "
                "the weight scale or the bias"
            )
        # With more spikes per interval recorded, the (neuron, interval) pairs of the
        # need stay valid: they do not depend on the per-interval budget.
        budget = budget.grown(interval, layers, current_range, _layer_need(result_of(out)))
        logger.info("event budget exceeded; growing it to %s", budget)
    raise EventBudgetError(
        f"spikes still exceed the event budget after {max_growth} doublings ({budget}); "
        "the network is firing implausibly often: check the input gain and weights"
    )


def _check_inputs(params, times, currents, T):
    times = np.asarray(times) if not isinstance(times, jax.core.Tracer) else times
    if jnp.ndim(currents) not in (2, 3):
        raise ValueError(f"currents must be (n_events, n_inputs) or (batch, n_events, n_inputs), got {jnp.shape(currents)}")
    n_inputs = params[0]["w"].shape[1]
    if jnp.shape(currents)[-1] != n_inputs:
        raise ValueError(f"currents have {jnp.shape(currents)[-1]} input channels, the network expects {n_inputs}")
    if jnp.shape(times)[-1] != jnp.shape(currents)[-2]:
        raise ValueError(f"times has {jnp.shape(times)[-1]} events but currents has {jnp.shape(currents)[-2]}")
    if not float(T) > 0:
        raise ValueError(f"T must be positive, got {T!r}")
    if isinstance(times, np.ndarray):
        if not np.all(np.isfinite(times)):
            raise ValueError("times must be finite")
        if np.any(np.diff(times, axis=-1) < 0):
            raise ValueError("event times must be sorted in increasing order")
        if np.any(times < 0):
            raise ValueError("event times must be >= 0")


def simulate(params, times, currents, neuron="qif", *, T, budget=None):
    """Simulate a batch of trials, growing the event budget as needed.

    Parameters
    ----------
    params : list of dict
    times : (n_events,) or (batch, n_events) array
        Sorted event times, shared by all trials or per trial.
    currents : (batch, n_events, n_inputs) array
    neuron : str or NeuronModel
    T : float
        Trial length.
    budget : Budget, optional
        Starting budget (default :func:`default_budget`).

    Returns
    -------
    result : SimulationResult
        Batched along the first axis.
    budget : Budget
        The budget that was sufficient (reuse it to avoid recompiling).
    """
    neuron = get_neuron(neuron)
    _check_inputs(params, times, currents, T)
    axis = _times_axis(times)
    return _with_budget(lambda b: _compiled("simulate", neuron, T, b, axis)(params, times, currents), params, budget)


def batch_loss(params, times, currents, labels, neuron="qif", *, T, gamma=0.01, readout_tau=1.0, late_penalty=0.0,
               budget=None, grad=False):
    """Mean loss over a batch (and its gradient with ``grad=True``), jitted.

    Returns
    -------
    value : float array, or ``((loss, result), grads)`` when ``grad=True``
    result : SimulationResult (only when ``grad=False``; else inside ``value``)
    budget : Budget
    """
    neuron = get_neuron(neuron)
    _check_inputs(params, times, currents, T)
    axis = _times_axis(times)
    labels = jnp.asarray(labels)
    fn = lambda b: _compiled("loss", neuron, T, b, axis, gamma=gamma, readout_tau=readout_tau,
                             late_penalty=late_penalty, grad=grad)(
        params, times, currents, labels
    )
    result_of = (lambda out: out[0][1]) if grad else (lambda out: out[1])
    return _with_budget(fn, params, budget, result_of)


def _raise_overflow(interval, current_range, *layers):
    if bool(interval) or bool(current_range) or any(bool(x) for x in layers):
        raise EventBudgetError(
            f"event budget exceeded (spikes per interval: {bool(interval)}, spikes per layer: "
            f"{[bool(x) for x in layers]}, current range: {bool(current_range)}); "
            "pass a larger `budget` (network.Budget) to loss()"
        )


def loss(params, times, currents, label, neuron="qif", *, T, gamma=0.01, readout_tau=1.0, late_penalty=0.0,
         budget=None):
    """Loss of one trial: the differentiable objective of exact-gradient training.

    Parameters
    ----------
    params : list of dict
    times : (n_events,) array
    currents : (n_events, n_inputs) array
    label : int, or (n_outputs,) array of class probabilities (see :func:`trial_loss`)
    neuron : str or NeuronModel
    T : float
        Trial length (keyword).
    gamma, readout_tau, late_penalty : float
        See :func:`trial_loss`.
    budget : Budget, optional
        Outside ``jit`` the budget grows automatically; under ``jit`` / ``grad`` the
        given (or default) budget is used and exceeding it raises
        :class:`EventBudgetError` at run time instead of returning a wrong value.

    Returns
    -------
    scalar jax.Array
    """
    neuron = get_neuron(neuron)
    traced = any(isinstance(x, jax.core.Tracer) for x in jax.tree_util.tree_leaves((params, times, currents, label)))
    if budget is None and not traced:
        _, budget = simulate(params, jnp.asarray(times)[None], jnp.asarray(currents)[None], neuron, T=T)
    budget = budget or default_budget(params)
    result = simulate_trial(params, times, currents, neuron, T, budget)
    jax.debug.callback(_raise_overflow, result.interval_overflow, result.range_overflow, *result.layer_overflow)
    return trial_loss(result.first_spike_times, label, T, gamma=gamma, readout_tau=readout_tau,
                      late_penalty=late_penalty)


def predict(result):
    """Predictions from simulation results.

    Returns
    -------
    predicted : (batch,) int, earliest output spike (pseudospikes allowed).
    predicted_ordinary : (batch,) int, earliest ordinary output spike, -1 if none.
    """
    t = np.asarray(result.first_spike_times)
    ordinary = np.asarray(result.ordinary)
    predicted = np.argmin(t, axis=-1)
    t_ord = np.where(ordinary, t, np.inf)
    predicted_ord = np.where(ordinary.any(axis=-1), np.argmin(t_ord, axis=-1), -1)
    return predicted, predicted_ord
