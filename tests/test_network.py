"""The event-based network engine of ``bci_qif.network``: exact gradients and their guarantees.

What is checked (issue 2):

1. ``jax.grad`` of :func:`network.loss` equals central finite differences (float64) for every
   parameter of small random networks with 2 and 3 hidden layers (input, hidden, output
   weights and biases): QIF with spiking outputs, QIF with silent outputs (pseudodynamics),
   and LIF at points where no spike (dis)appears within the stencil.
2. Continuity along a 1-D line through parameter space: no jumps for QIF although spikes
   (dis)appear along the line, jumps for LIF; a minimal case of a hidden spike crossing T.
3. A silent QIF hidden layer gets a gradient through pseudodynamics and learns to spike;
   the LIF counterpart gets exactly zero gradient and stays silent.
4. Gradients are finite over 1,024 random float32 trials at realistic, strong current scales.
5. Event-budget overflow raises (under jit) or grows the budget (simulate); never a silent
   wrong answer.
6. Batched == per-trial simulation, shared == per-trial event times, dtypes, input validation.

Compilation dominates the run time (seconds per program), so the tests share a few network
shapes and budgets and evaluate many parameter points in one vmapped call.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from jax.flatten_util import ravel_pytree

from bci_qif import network
from bci_qif.neurons import LIF, QIF

T = 6.0
N_EVENTS = 50
N_INPUTS = 5
QIF_NEURON = QIF()
LIF_NEURON = LIF()
# Fixed budgets (compile-time constants shared by several tests); every use checks the
# overflow flags, so a budget that became too small fails loudly instead of silently.
BUDGETS = {
    ("qif", 0): network.Budget(1, (32,)),
    ("qif", 2): network.Budget(1, (64, 64, 32)),
    ("qif", 3): network.Budget(1, (64, 64, 64, 32)),
    ("lif", 2): network.Budget(4, (96, 96, 64)),  # also holds the LIF continuity line
    ("lif", 3): network.Budget(2, (64, 64, 64, 32)),
}
NEURONS = {"qif": QIF_NEURON, "lif": LIF_NEURON}
CHUNK = 512  # parameter points per vmapped forward call (one compiled shape)
# The test's own programs are tiny and run briefly: unoptimised machine code compiles
# about a third faster (compilation dominates this module's run time).
FAST_COMPILE = {"xla_backend_optimization_level": 0}


@pytest.fixture
def x64():
    """Enable float64 for one test and restore the previous setting afterwards."""
    previous = bool(jax.config.read("jax_enable_x64"))
    jax.config.update("jax_enable_x64", True)
    try:
        yield
    finally:
        jax.config.update("jax_enable_x64", previous)


# ---------------------------------------------------------------------------------------
# Helpers
# ---------------------------------------------------------------------------------------
def _params(seed, sizes, weight_scales, biases, dtype=jnp.float64):
    """Normal weights ``scale / sqrt(n_in)`` and constant biases, one scale/bias per layer."""
    keys = jax.random.split(jax.random.PRNGKey(seed), len(sizes) - 1)
    params = []
    for key, n_in, n_out, scale, bias in zip(keys, sizes[:-1], sizes[1:], weight_scales, biases):
        w = jax.random.normal(key, (n_out, n_in), dtype) * float(scale / np.sqrt(n_in))
        params.append({"w": w, "b": jnp.full((n_out,), bias, dtype)})
    return params


def _trial(seed, n_inputs=N_INPUTS, n_events=N_EVENTS, dtype=np.float64, positive=False):
    """Sorted random event times in [0, T) and standard-normal (or |normal|) currents."""
    rng = np.random.default_rng(seed)
    times = np.sort(rng.uniform(0.0, T, n_events))
    currents = rng.standard_normal((n_events, n_inputs))
    if positive:
        currents = np.abs(currents) + 0.2
    return jnp.asarray(times, dtype), jnp.asarray(currents, dtype)


def _assert_no_overflow(result):
    assert not np.any(np.asarray(result.interval_overflow)), "spikes per interval exceed the budget"
    assert not np.any(np.asarray(result.range_overflow)), "current outside the fast-flow range"
    for layer, flag in enumerate(result.layer_overflow):
        assert not np.any(np.asarray(flag)), f"layer {layer} exceeds its spike budget"


@functools.lru_cache(maxsize=None)
def _value_and_grad(neuron, budget):
    """jit: ``(loss, grad)`` of :func:`network.loss` and the :class:`SimulationResult`."""

    def fn(params, times, currents, label):
        value, grad = jax.value_and_grad(
            lambda p: network.loss(p, times, currents, label, neuron, T=T, budget=budget)
        )(params)
        return value, grad, network.simulate_trial(params, times, currents, neuron, T, budget)

    return jax.jit(fn, compiler_options=FAST_COMPILE)


@functools.lru_cache(maxsize=None)
def _forward(neuron, budget):
    """jit + vmap over parameter points: losses and results for one fixed trial.

    Built from simulate_trial + trial_loss (what network.loss computes) rather than
    ``vmap(network.loss)``: under vmap, the overflow ``jax.debug.callback`` of
    network.loss is unrolled once per batch element, and compile time grows with it.
    """

    def one(params, times, currents, label):
        result = network.simulate_trial(params, times, currents, neuron, T, budget)
        return network.trial_loss(result.first_spike_times, label, T), result

    return jax.jit(jax.vmap(one, in_axes=(0, None, None, None)), compiler_options=FAST_COMPILE)


def _losses_at(neuron, budget, points, unravel, times, currents, label):
    """Loss and results at many flat parameter points, in chunks of one compiled size."""
    fn = _forward(neuron, budget)
    batched_unravel = jax.vmap(unravel)
    losses, results = [], []
    for start in range(0, len(points), CHUNK):
        chunk = points[start:start + CHUNK]
        n = len(chunk)
        padded = np.concatenate([chunk, np.repeat(chunk[-1:], CHUNK - n, axis=0)])
        loss, result = fn(batched_unravel(jnp.asarray(padded)), times, currents, label)
        losses.append(np.asarray(loss)[:n])
        results.append(jax.tree_util.tree_map(lambda x: np.asarray(x)[:n], result))
    return np.concatenate(losses), jax.tree_util.tree_map(lambda *x: np.concatenate(x), *results)


def _count_vectors(result):
    """Per point, all ordinary spike counts of all layers as one integer vector."""
    return np.concatenate([np.asarray(c) for c in result.spike_counts], axis=-1)


# ---------------------------------------------------------------------------------------
# 1. Exact gradients vs finite differences (float64)
# ---------------------------------------------------------------------------------------
# name: (neuron, sizes, param seed, weight scales, biases, label, h, expect)
# expect: "ordinary" (all outputs spike in the trial), "silent" (no output spikes: the
# readout is the pseudospike), "some" (at least one ordinary output spike).
GRADIENT_CASES = {
    # No hidden layer: the outputs read the inputs directly (the tangent-space decoder).
    "qif-0hidden": ("qif", (5, 3), 11, (3.0,), (0.3,), 1, 1e-5, "ordinary"),
    "qif-2hidden": ("qif", (5, 8, 8, 3), 11, (3.0, 4.0, 4.0), (0.3, 0.15, 0.2), 1, 1e-5, "ordinary"),
    "qif-2hidden-silent-outputs": ("qif", (5, 8, 8, 3), 15, (3.0, 4.0, 4.0), (0.3, 0.1, 0.05), 1, 1e-5, "silent"),
    "qif-3hidden": ("qif", (5, 8, 8, 8, 3), 2, (3.0, 4.0, 4.0, 4.0), (0.3, 0.15, 0.2, 0.2), 1, 1e-5, "ordinary"),
    "lif-2hidden": ("lif", (5, 8, 8, 3), 1, (2.0, 4.0, 4.0), (0.2, 0.1, 0.1), 1, 1e-6, "ordinary"),
    "lif-3hidden": ("lif", (5, 8, 8, 8, 3), 3, (2.0, 4.0, 4.0, 4.0), (0.2, 0.1, 0.1, 0.1), 1, 1e-6, "some"),
}
RTOL = 1e-6
# Entries below FLOOR * max|grad| are compared at that floor (absolute error
# <= RTOL * FLOOR * max|grad|); entries above it each need relative error <= RTOL.
FLOOR = 1e-3


def _finite_differences(neuron, budget, params, times, currents, label, h):
    """Fourth-order central differences ``(8 (f(+h) - f(-h)) - (f(+2h) - f(-2h))) / 12h``.

    Returns the estimate and, per coordinate, whether all layers' spike counts are the
    same at the centre and at all four stencil points (no spike (dis)appears).
    """
    flat, unravel = ravel_pytree(params)
    flat = np.asarray(flat)
    n = flat.size
    eye = np.eye(n)
    steps = (h, -h, 2 * h, -2 * h)
    points = np.concatenate([flat[None]] + [flat + s * eye for s in steps])
    losses, result = _losses_at(neuron, budget, points, unravel, times, currents, label)
    _assert_no_overflow(result)
    f = {s: losses[1 + k * n:1 + (k + 1) * n] for k, s in enumerate(steps)}
    fd = (8.0 * (f[h] - f[-h]) - (f[2 * h] - f[-2 * h])) / (12.0 * h)
    counts = _count_vectors(result)
    same = np.ones(n, bool)
    for k in range(len(steps)):
        same &= np.all(counts[1 + k * n:1 + (k + 1) * n] == counts[0], axis=1)
    return fd, same, losses[0]


def _groups(params):
    """Indices into the flat parameter vector: input / hidden / output weights and biases."""
    names = ("input w", "hidden w", "output w", "biases")
    last = len(params) - 1
    tags = [
        {"w": jnp.full(layer["w"].shape, 0 if i == 0 else 2 if i == last else 1, jnp.float32),
         "b": jnp.full(layer["b"].shape, 3, jnp.float32)}
        for i, layer in enumerate(params)
    ]
    flat_tags = np.asarray(ravel_pytree(tags)[0])
    return {name: np.nonzero(flat_tags == k)[0] for k, name in enumerate(names)}


@pytest.mark.parametrize("case", list(GRADIENT_CASES))
def test_gradient_matches_finite_differences(case, x64):
    name, sizes, seed, scales, biases, label, h, expect = GRADIENT_CASES[case]
    neuron, budget = NEURONS[name], BUDGETS[(name, len(sizes) - 2)]
    params = _params(seed, sizes, scales, biases)
    times, currents = _trial(0)

    loss, grad, result = _value_and_grad(neuron, budget)(params, times, currents, label)
    _assert_no_overflow(result)
    assert loss.dtype == jnp.float64 and all(g.dtype == jnp.float64 for g in jax.tree_util.tree_leaves(grad))

    # The point is a meaningful one: every hidden layer spikes, outputs as intended.
    counts = [np.asarray(c) for c in result.spike_counts]
    for layer, c in enumerate(counts[:-1]):
        assert c.sum() > 0, f"hidden layer {layer} is silent"
    ordinary = np.asarray(result.ordinary)
    if expect == "ordinary":
        assert ordinary.all()
    elif expect == "silent":
        assert not ordinary.any() and counts[-1].sum() == 0
    else:
        assert ordinary.any()

    fd, same, loss_fd = _finite_differences(neuron, budget, params, times, currents, label, h)
    assert abs(loss_fd - float(loss)) <= 1e-12 * max(1.0, abs(float(loss)))
    g = np.asarray(ravel_pytree(grad)[0])
    scale = np.abs(g).max()
    assert scale > 0
    significant = np.abs(g) > FLOOR * scale
    groups = _groups(params)
    n_significant = {k: int(significant[idx].sum()) for k, idx in groups.items()}
    err = np.abs(g - fd) / np.maximum(np.abs(g), FLOOR * scale)
    print(case, "loss", float(loss), "significant entries per group", n_significant,
          "nonzero", int((g != 0).sum()), "of", g.size, "stencil-safe", int(same.sum()),
          "max rel err %.2g" % err[same].max())

    if name == "qif":
        # QIF spikes cannot (dis)appear inside the trial; at a random point none is at T.
        assert same.all()
    else:
        assert same.mean() >= 0.9, f"only {same.sum()} of {same.size} coordinates keep their spike counts"
    for group, idx in groups.items():
        if len(idx):  # a network without hidden layers has no hidden or separate output weights
            assert n_significant[group] >= (2 if group == "biases" else 4), (group, n_significant)

    worst = int(np.argmax(np.where(same, err, 0.0)))
    assert err[same].max() <= RTOL, (
        f"max relative error {err[same].max():.3g} at {worst}: grad {g[worst]!r} vs fd {fd[worst]!r}"
    )


# ---------------------------------------------------------------------------------------
# 2. Continuity along a line through parameter space (float64)
# ---------------------------------------------------------------------------------------
N_LINE = 2048  # points on the line (4 chunks)
LINE_SPAN = 0.5  # params + SPAN * alpha * direction, alpha in [-1, 1], |direction_l| = |params_l|
JUMP_FACTOR = 10.0  # a step is a jump candidate if > JUMP_FACTOR x both neighbouring steps
JUMP_TINY = 1e-9


def _direction(params, seed):
    """Random direction with the norm of each parameter array (norm-scaled, per array)."""
    leaves, treedef = jax.tree_util.tree_flatten(params)
    keys = jax.random.split(jax.random.PRNGKey(seed), len(leaves))
    scaled = []
    for key, leaf in zip(keys, leaves):
        r = jax.random.normal(key, leaf.shape, leaf.dtype)
        scaled.append(r * jnp.linalg.norm(leaf) / jnp.linalg.norm(r))
    return jax.tree_util.tree_unflatten(treedef, scaled)


def _jump_candidates(losses):
    """Indices ``k`` where ``|L[k+1] - L[k]|`` exceeds JUMP_FACTOR x both neighbouring steps."""
    d = np.abs(np.diff(losses))
    local = np.maximum(d[:-2], d[2:])
    ratio = d[1:-1] / (local + JUMP_TINY)
    k = np.nonzero(d[1:-1] > JUMP_FACTOR * local + JUMP_TINY)[0] + 1
    return k[np.argsort(-ratio[k - 1])], ratio


def _is_jump(loss_on, lo, hi, step, levels=2):
    """Whether the change ``step`` over ``[lo, hi]`` stays in one sub-step when zooming in.

    A discontinuity keeps (nearly) all of its size in one sub-interval at every
    resolution; a steep but continuous stretch spreads it over many sub-steps.
    """
    for _ in range(levels):
        alpha = np.linspace(lo, hi, CHUNK)
        d = np.abs(np.diff(loss_on(alpha)))
        j = int(np.argmax(d))
        if d[j] < 0.5 * step:
            return False
        lo, hi = alpha[j], alpha[j + 1]
    return True


def _line(case, direction_seed):
    """Losses along a line through the parameters of a gradient case, and a zoom function."""
    name, sizes, seed, scales, biases, label, _, _ = GRADIENT_CASES[case]
    neuron, budget = NEURONS[name], BUDGETS[(name, len(sizes) - 2)]
    params = _params(seed, sizes, scales, biases)
    times, currents = _trial(0)
    flat, unravel = ravel_pytree(params)
    direction = np.asarray(ravel_pytree(_direction(params, direction_seed))[0])

    def evaluate(alpha):
        points = np.asarray(flat)[None] + LINE_SPAN * alpha[:, None] * direction[None]
        losses, result = _losses_at(neuron, budget, points, unravel, times, currents, label)
        _assert_no_overflow(result)  # a truncated simulation could fake or hide jumps
        return losses, result

    alpha = np.linspace(-1.0, 1.0, N_LINE)
    losses, result = evaluate(alpha)
    counts = _count_vectors(result)
    count_changes = int(np.sum(np.any(counts[1:] != counts[:-1], axis=1)))
    return alpha, losses, count_changes, lambda a: evaluate(a)[0]


@pytest.mark.parametrize("direction_seed", [1, 2])
def test_qif_loss_is_continuous_along_a_line(direction_seed, x64):
    alpha, losses, count_changes, loss_on = _line("qif-2hidden", direction_seed)
    assert np.all(np.isfinite(losses))
    # Not a trivial line: spikes (dis)appear (at the trial end) many times along it.
    assert count_changes >= 10, count_changes
    candidates, ratio = _jump_candidates(losses)
    print("QIF line", direction_seed, "spike-count changes", count_changes, "max step ratio %.2f" % ratio.max(),
          "candidates", len(candidates))
    assert len(candidates) <= 20, f"{len(candidates)} jump candidates along the QIF line"
    jumps = [(int(k), float(losses[k + 1] - losses[k])) for k in candidates
             if _is_jump(loss_on, alpha[k], alpha[k + 1], abs(losses[k + 1] - losses[k]))]
    assert not jumps, f"QIF loss jumps (index, size) along the line: {jumps}"


def test_spike_crossing_trial_end_is_continuous(x64):
    """A hidden spike crossing T must not move the (pseudo) readout.

    One path through the 2-hidden-layer network (shapes and budget of the gradient test,
    so no new compilation): a kick ``x`` at t = 0 makes hidden neuron (1, 0) spike at T
    for ``x = x*``; everything downstream is silent and read out by pseudodynamics.
    Regression test: the pseudo drive ``softplus(I(T) + w @ a_prev)`` once counted such a
    spike twice (its kick in ``I(T)`` and its count in ``a_prev``), and the loss jumped.
    """
    lo, hi = np.pi**2 / 4, 50.0  # bisection for x*: time_to_spike(0, x*) = T
    for _ in range(80):
        mid = 0.5 * (lo + hi)
        lo, hi = (mid, hi) if float(QIF_NEURON.time_to_spike(0.0, mid)) > T else (lo, mid)
    x_star = 0.5 * (lo + hi)
    sizes = GRADIENT_CASES["qif-2hidden"][1]
    times = jnp.concatenate([jnp.zeros(1), jnp.full(N_EVENTS - 1, T + 1.0)])  # later events: ignored
    currents = jnp.zeros((N_EVENTS, N_INPUTS)).at[0, 0].set(1.0)

    def params(x):
        layers = [{"w": jnp.zeros((n_out, n_in)), "b": jnp.zeros(n_out)} for n_in, n_out in zip(sizes[:-1], sizes[1:])]
        layers[0]["w"] = layers[0]["w"].at[0, 0].set(x)
        layers[1]["w"] = layers[1]["w"].at[0, 0].set(5.0)
        layers[2]["w"] = layers[2]["w"].at[0, 0].set(5.0)
        return layers

    _, unravel = ravel_pytree(params(x_star))
    points = np.array([np.asarray(ravel_pytree(params(x_star + e))[0]) for e in (-1e-9, 1e-9)])
    losses, result = _losses_at(QIF_NEURON, BUDGETS[("qif", 2)], points, unravel, times, currents, 0)
    _assert_no_overflow(result)
    assert list(np.asarray(result.spike_counts[0])[:, 0]) == [0, 1]  # the spike crosses T
    assert all(np.asarray(c).sum() == 0 for c in result.spike_counts[1:])
    np.testing.assert_allclose(result.first_spike_times[0], result.first_spike_times[1], atol=1e-6)
    assert abs(losses[1] - losses[0]) <= 1e-6


def test_lif_loss_jumps_along_a_line(x64):
    alpha, losses, count_changes, loss_on = _line("lif-2hidden", 1)
    assert np.all(np.isfinite(losses))
    candidates, ratio = _jump_candidates(losses)
    assert len(candidates) > 0, "no step of the LIF loss exceeds the local-slope bound"
    confirmed = []
    for k in candidates[:5]:
        step = abs(losses[k + 1] - losses[k])
        if _is_jump(loss_on, alpha[k], alpha[k + 1], step):
            confirmed.append((int(k), float(step), float(ratio[k - 1])))
            break
    print("LIF line: spike-count changes", count_changes, "candidates", len(candidates),
          "largest step %.3g" % np.abs(np.diff(losses)).max(), "confirmed", confirmed)
    assert confirmed, "the LIF jump candidates are all continuous at finer resolution"


# ---------------------------------------------------------------------------------------
# 3. A silent hidden layer: pseudodynamics (QIF) vs dead neurons (LIF)
# ---------------------------------------------------------------------------------------
def _silenced(name):
    """The 2-hidden-layer case with all input weights negative: no first-layer spikes."""
    _, sizes, seed, scales, biases, _, _, _ = GRADIENT_CASES[f"{name}-2hidden"]
    params = _params(seed, sizes, scales, biases)
    params[0] = {"w": -jnp.abs(params[0]["w"]), "b": jnp.zeros_like(params[0]["b"])}
    for layer in params[1:]:  # small biases: downstream layers do not fire on their bias alone
        layer["b"] = jnp.full_like(layer["b"], 0.05)
    trials = [_trial(10 + k, positive=True) for k in range(4)]  # inputs > 0: drive < 0
    return params, trials, [0, 1, 2, 0]


def _train(name, steps, stop_when_spiking):
    neuron, budget = NEURONS[name], BUDGETS[(name, 2)]
    params, trials, labels = _silenced(name)
    fn = _value_and_grad(neuron, budget)
    optimizer = optax.adam(0.05)
    state = optimizer.init(params)
    history, first_grad = [], None
    for step in range(steps):
        grads, hidden_spikes = [], 0
        for (times, currents), label in zip(trials, labels):
            loss, grad, result = fn(params, times, currents, label)
            _assert_no_overflow(result)
            grads.append(grad)
            hidden_spikes += int(np.asarray(result.spike_counts[0]).sum())
        history.append(hidden_spikes)
        grad = jax.tree_util.tree_map(lambda *g: sum(g) / len(g), *grads)
        if first_grad is None:
            first_grad = grad
        if stop_when_spiking and hidden_spikes > 0:
            break
        updates, state = optimizer.update(grad, state, params)
        params = optax.apply_updates(params, updates)
    return params, first_grad, history


def test_silent_qif_layer_gets_gradient_and_learns_to_spike(x64):
    params0, _, _ = _silenced("qif")
    params, grad, history = _train("qif", steps=60, stop_when_spiking=True)
    assert history[0] == 0, "the construction should silence the first hidden layer"
    g = np.asarray(grad[0]["w"])
    assert np.all(np.isfinite(g))
    # Every input weight of the silent layer gets a gradient (through the pseudodynamics).
    assert np.count_nonzero(g) == g.size, np.count_nonzero(g)
    assert np.abs(g).max() > 1e-6
    print("QIF silent layer: |grad w_in| max %.3g, hidden spikes per step" % np.abs(g).max(), history)
    assert history[-1] > 0, f"hidden layer still silent after {len(history)} steps: {history}"
    assert not np.allclose(np.asarray(params[0]["w"]), np.asarray(params0[0]["w"]))


def test_silent_lif_layer_gets_no_gradient_and_stays_silent(x64):
    params0, _, _ = _silenced("lif")
    params, grad, history = _train("lif", steps=20, stop_when_spiking=False)
    assert history[0] == 0
    assert np.all(np.asarray(grad[0]["w"]) == 0.0) and np.all(np.asarray(grad[0]["b"]) == 0.0)
    assert all(h == 0 for h in history), history
    np.testing.assert_array_equal(np.asarray(params[0]["w"]), np.asarray(params0[0]["w"]))


# ---------------------------------------------------------------------------------------
# 4. Finite gradients at realistic, strong current scales (float32)
# ---------------------------------------------------------------------------------------
FINITE_SIZES = (64, 32, 2)
FINITE_EVENTS, FINITE_BATCH, FINITE_BATCHES, FINITE_T = 100, 64, 16, 6.0
# Per model: input weight scale, output weight scale, hidden bias, output bias ranges.
# LIF fires far more than QIF at the same drive (no quadratic slow-down), so its weights
# are smaller; both see inputs with gain up to 10 and strong positive/negative offsets.
FINITE_SCALES = {
    "qif": ((0.5, 3.0), (1.0, 6.0), (-1.0, 2.0), (-0.5, 1.0)),
    "lif": ((0.1, 0.25), (1.0, 4.0), (-0.5, 0.5), (-0.2, 0.3)),
}
FINITE_BUDGETS = {"qif": network.Budget(2, (512, 64)), "lif": network.Budget(4, (1024, 128))}


def _finite_batch(rng, name, index):
    """One random minibatch: random gain, weights, biases; jittered clock with duplicates."""
    (w_in, w_out, b_hid, b_out) = FINITE_SCALES[name]
    gain = float(np.exp(rng.uniform(np.log(0.3), np.log(10.0))))
    params = network.init(jax.random.PRNGKey(index), FINITE_SIZES, weight_scale=1.0)  # float32 default
    for layer, w_range, b_range in ((params[0], w_in, b_hid), (params[1], w_out, b_out)):
        layer["w"] = layer["w"] * float(rng.uniform(*w_range))
        layer["b"] = jnp.full_like(layer["b"], float(rng.uniform(*b_range)))
    dt = FINITE_T * 1.03 / FINITE_EVENTS  # the last few events fall after T (ignored)
    jitter = rng.uniform(-0.3, 0.3, (FINITE_BATCH, FINITE_EVENTS))
    times = np.sort((np.arange(FINITE_EVENTS) + jitter) * dt + dt / 2, axis=1)
    duplicate = rng.random(times.shape) < 0.05  # coincident events: zero-length intervals
    duplicate[:, 0] = False
    for b, k in zip(*np.nonzero(duplicate)):
        times[b, k] = times[b, k - 1]
    currents = gain * (rng.standard_normal((FINITE_BATCH, FINITE_EVENTS, FINITE_SIZES[0]))
                       + rng.normal(0.0, 0.5, (FINITE_BATCH, 1, FINITE_SIZES[0])))  # sustained +/- drive
    labels = rng.integers(0, FINITE_SIZES[2], FINITE_BATCH)
    return params, times.astype(np.float32), currents.astype(np.float32), labels, gain


@pytest.mark.parametrize("name", ["qif", "lif"])
def test_gradients_are_always_finite(name):
    rng = np.random.default_rng({"qif": 1, "lif": 2}[name])
    budget = FINITE_BUDGETS[name]
    hidden_rates, ordinary, nonzero_batches, gains = [], [], 0, []
    for index in range(FINITE_BATCHES):
        params, times, currents, labels, gain = _finite_batch(rng, name, index)
        ((loss, result), grads), budget = network.batch_loss(
            params, times, currents, labels, name, T=FINITE_T, budget=budget, grad=True
        )
        assert loss.dtype == jnp.float32
        assert np.isfinite(float(loss)), f"batch {index}: loss {float(loss)}"
        assert result.first_spike_times.dtype == jnp.float32
        assert np.all(np.isfinite(np.asarray(result.first_spike_times))), f"batch {index}"
        for path, g in jax.tree_util.tree_flatten_with_path(grads)[0]:
            assert g.dtype == jnp.float32
            bad = int(np.sum(~np.isfinite(np.asarray(g))))
            where = jax.tree_util.keystr(path)
            assert bad == 0, f"batch {index} (gain {gain:.2f}): {bad} non-finite entries in grad{where}"
        nonzero_batches += any(np.any(np.asarray(g) != 0) for g in jax.tree_util.tree_leaves(grads))
        hidden_rates.append(np.asarray(result.spike_counts[0]).sum(axis=1) / FINITE_SIZES[1])
        ordinary.append(np.asarray(result.ordinary))
        gains.append(gain)
    hidden_rates, ordinary = np.concatenate(hidden_rates), np.concatenate(ordinary)
    print(name, "final budget", budget, "gains %.2f..%.2f" % (min(gains), max(gains)),
          "hidden spikes/neuron/trial: max %.1f, silent trials %.2f" % (hidden_rates.max(), np.mean(hidden_rates == 0)),
          "ordinary outputs %.2f" % ordinary.mean(), "batches with non-zero gradient", nonzero_batches)
    # The stress is real: quiet and very active trials, spiking and silent outputs.
    assert max(gains) > 5.0 and min(gains) < 1.0
    assert hidden_rates.max() >= 5.0
    assert 0.05 < ordinary.mean() < 0.95
    assert nonzero_batches >= FINITE_BATCHES // 2


# ---------------------------------------------------------------------------------------
# 5. Event-budget overflow: an error or a grown budget, never a silent wrong answer
# ---------------------------------------------------------------------------------------
def _batch_of_trials(case, n_trials=4):
    """Parameters of a gradient case (float64), shared event times, ``n_trials`` trials."""
    name, sizes, seed, scales, biases, label, _, _ = GRADIENT_CASES[case]
    params = _params(seed, sizes, scales, biases)
    times, _ = _trial(0)
    currents = jnp.stack([_trial(k)[1] for k in range(n_trials)])
    return params, times, currents, label


def _spike_pairs(result, budget):
    """Per layer, the most (neuron, interval) pairs with spikes in any trial of a batch."""
    return tuple(
        int(np.isfinite(np.asarray(t)).reshape(t.shape[0], -1, budget.spikes_per_interval).any(-1).sum(-1).max())
        for t in result.spike_times
    )


def _per_trial_reference(case):
    """A batch of QIF trials, each simulated on its own (unbatched ``simulate_trial``,
    with the generous budget of the gradient tests), and the smallest even budget
    that holds the batch (what one growth round from half of it gives)."""
    params, times, currents, label = _batch_of_trials(case)
    budget = BUDGETS[("qif", len(params) - 1)]
    single = _value_and_grad(QIF_NEURON, budget)  # compiled by the gradient tests
    results = [single(params, times, c, label)[2] for c in currents]
    reference = jax.tree_util.tree_map(lambda *x: np.stack([np.asarray(v) for v in x]), *results)
    _assert_no_overflow(reference)
    need = _spike_pairs(reference, budget)
    assert all(n >= 2 for n in need), need
    tight = network.Budget(1, tuple(2 * ((n + 1) // 2) for n in need))
    assert all(a < b for a, b in zip(tight.spikes_per_layer, budget.spikes_per_layer))
    return params, times, currents, reference, need, tight


def test_budget_overflow_raises_under_jit(x64):
    params, times, currents, label = _batch_of_trials("qif-2hidden", 1)
    tiny = network.Budget(1, (2, 2, 2))
    loss = jax.jit(lambda p: network.loss(p, times, currents[0], label, "qif", T=T, budget=tiny),
                   compiler_options=FAST_COMPILE)
    with pytest.raises(Exception, match="event budget") as info:
        jax.block_until_ready(loss(params))
    assert "EventBudgetError" in f"{info.type.__name__} {info.value}"


def test_budget_overflow_after_all_growth_raises():
    """Growth is bounded: a budget that never suffices ends in EventBudgetError (stubbed run)."""
    params = network.init(jax.random.PRNGKey(0), (5, 8, 8, 3))
    flags = network.SimulationResult(
        first_spike_times=None, ordinary=None, spike_counts=(), spike_times=(), spike_sources=(),
        interval_overflow=np.array(True), layer_overflow=(np.array(False),) * 3, range_overflow=np.array(False),
    )
    budgets = []

    def run(budget):
        budgets.append(budget)
        return flags

    with pytest.raises(network.EventBudgetError):
        network._with_budget(run, params, network.Budget(1, (4, 4, 4)))
    assert [b.spikes_per_interval for b in budgets] == [2**k for k in range(len(budgets))]
    grown = network.Budget(1, (4, 4, 4), 3).grown(False, (False, True, False), True)
    assert grown.spikes_per_interval == 1 and grown.spikes_per_layer == (4, 8, 4) and grown.doublings > 3


def test_budget_grows_to_the_observed_need():
    """With the need known, an overflowing layer grows to it plus a margin, not to double."""
    start = network.Budget(1, (512, 16, 16))
    grown = start.grown(False, (True, False, True), False, (632, 3, 17))
    assert grown.spikes_per_layer == (768, 16, 64)
    assert all(g % network.BUDGET_QUANTUM == 0 for g in grown.spikes_per_layer[::2])
    assert start.grown(False, (True, False, False), False, (1, 1, 1)).spikes_per_layer[0] > 512


def test_simulate_grows_a_small_budget_to_the_right_answer(x64):
    params, times, currents, reference, need, _ = _per_trial_reference("qif-2hidden")
    start = network.Budget(1, tuple((n + 1) // 2 for n in need))  # every layer overflows
    grown, budget = network.simulate(params, times, currents, "qif", T=T, budget=start)
    assert budget != start and all(b >= n for b, n in zip(budget.spikes_per_layer, need)), budget
    _assert_no_overflow(grown)
    # The same spikes as with the (much larger) budget of the per-trial reference.
    _assert_same_result(grown, reference, rtol=1e-12)


# ---------------------------------------------------------------------------------------
# 6. Batching, shared vs per-trial times, layer counts, dtypes, input validation
# ---------------------------------------------------------------------------------------
def _assert_same_result(a, b, rtol):
    """Same spikes: counts, ordinary flags, first spike times, sorted spike times per layer."""
    for x, y in zip(a.spike_counts, b.spike_counts):
        np.testing.assert_array_equal(np.asarray(x), np.asarray(y))
    np.testing.assert_array_equal(np.asarray(a.ordinary), np.asarray(b.ordinary))
    np.testing.assert_allclose(np.asarray(a.first_spike_times), np.asarray(b.first_spike_times), rtol=rtol)
    for x, y in zip(a.spike_times, b.spike_times):  # budgets may differ: compare the spikes
        x, y = np.sort(np.asarray(x), axis=-1), np.sort(np.asarray(y), axis=-1)
        n = min(x.shape[-1], y.shape[-1])
        assert np.all(np.isinf(x[..., n:])) and np.all(np.isinf(y[..., n:]))
        np.testing.assert_allclose(x[..., :n], y[..., :n], rtol=rtol)


@pytest.mark.parametrize("case", ["qif-2hidden", "qif-3hidden"])
def test_batched_simulation_equals_per_trial(case, x64):
    params, times, currents, reference, _, budget = _per_trial_reference(case)
    sizes = network.layer_sizes_of(params)
    batched, used = network.simulate(params, times, currents, "qif", T=T, budget=budget)
    assert used == budget
    _assert_no_overflow(batched)
    assert batched.first_spike_times.shape == (4, sizes[-1]) and batched.first_spike_times.dtype == jnp.float64
    assert [c.shape for c in batched.spike_counts] == [(4, n) for n in sizes[1:]]
    for layer, c in enumerate(batched.spike_counts):
        assert np.asarray(c).sum() > 0, f"layer {layer} silent: a weak comparison"
    _assert_same_result(batched, reference, rtol=1e-12)
    if len(sizes) == 4:  # event times per trial, (batch, n_events), equal to shared times
        per_trial, _ = network.simulate(params, jnp.broadcast_to(times, (4, times.shape[0])), currents, "qif",
                                        T=T, budget=budget)
        _assert_same_result(per_trial, batched, rtol=1e-12)


def test_default_dtype_is_float32_and_float64_is_available(x64):
    # float32 results of the default dtype are checked in test_gradients_are_always_finite,
    # float64 results in the gradient tests; here: init itself, also with x64 enabled.
    key = jax.random.PRNGKey(0)
    assert all(x.dtype == jnp.float32 for x in jax.tree_util.tree_leaves(network.init(key, (4, 6, 2))))
    params64 = network.init(key, (4, 6, 2), dtype=jnp.float64)
    assert all(x.dtype == jnp.float64 for x in jax.tree_util.tree_leaves(params64))
    assert network.layer_sizes_of(network.init(key, (4, 6, 5, 2))) == (4, 6, 5, 2)


def test_input_validation():
    params = _params(0, (5, 8, 8, 3), (3.0, 4.0, 4.0), (0.3, 0.15, 0.2), dtype=jnp.float32)
    t = np.asarray(_trial(0, dtype=np.float32)[0])
    c = np.stack([np.asarray(_trial(k, dtype=np.float32)[1]) for k in range(2)])
    labels = np.array([0, 1])
    bad_calls = {
        "unsorted times": dict(times=t[::-1].copy()),
        "unsorted per-trial times": dict(times=np.stack([t, t[::-1]])),
        "negative times": dict(times=t - 1.0),
        "non-finite times": dict(times=np.where(np.arange(t.size) == 3, np.nan, t)),
        "wrong channel count": dict(currents=c[..., :-1]),
        "event count mismatch": dict(times=t[:-1]),
        "currents of wrong rank": dict(currents=c[0, :, 0]),
        "T = 0": dict(T=0.0),
        "T < 0": dict(T=-1.0),
    }
    for what, change in bad_calls.items():
        kwargs = dict(times=t, currents=c, T=T) | change
        with pytest.raises(ValueError):
            network.simulate(params, kwargs["times"], kwargs["currents"], "qif", T=kwargs["T"])
        with pytest.raises(ValueError):
            network.batch_loss(params, kwargs["times"], kwargs["currents"], labels, "qif", T=kwargs["T"], grad=True)
    with pytest.raises(ValueError):
        network.loss(params, t[::-1].copy(), c[0], 0, "qif", T=T)
    for sizes in [(5,), (), (5, 0, 3)]:
        with pytest.raises(ValueError):
            network.init(jax.random.PRNGKey(0), sizes)
    assert network.layer_sizes_of(network.init(jax.random.PRNGKey(0), (5, 3))) == (5, 3)  # no hidden layer
    with pytest.raises(ValueError):
        network.simulate(params, t, c, "izhikevich", T=T)


# ---------------------------------------------------------------------------------
# The whole-layer scans (hand-written backward passes) against the generic autodiff scan
# ---------------------------------------------------------------------------------
@pytest.mark.parametrize("name, per_interval", [("qif", 1), ("lif", 4)])
def test_whole_layer_scan_matches_the_generic_scan_and_its_gradient(x64, name, per_interval):
    # Strong drive with both signs: LIF neurons fire several times in some intervals,
    # QIF neurons cross the spike at infinity; both the values and the VJP must agree.
    rng = np.random.default_rng(7)
    neuron = NEURONS[name]
    dts = jnp.asarray(rng.uniform(0.02, 0.3, 60))
    kicks = jnp.asarray(rng.normal(1.0, 3.0, (60, 12)))
    budget = network.Budget(per_interval, (512,), 4)
    fast = neuron.advance_layer(dts, kicks, budget.spikes_per_interval, budget.doublings)
    slow = network._generic_layer_scan(neuron, dts, kicks, budget)
    _, counts = neuron.spikes_in_interval(fast[0], fast[1], dts[:, None], per_interval)
    assert int(np.sum(np.asarray(counts) > 0)) > 30  # the layer does spike ...
    if name == "lif":  # ... and LIF neurons reset several times inside some intervals
        assert int(np.sum(np.asarray(counts) >= 2)) > 10
    for a, b in zip(jax.tree_util.tree_leaves(fast), jax.tree_util.tree_leaves(slow)):
        np.testing.assert_allclose(np.asarray(a, float), np.asarray(b, float), rtol=1e-10, atol=1e-12)

    weights = [jnp.asarray(rng.normal(size=np.shape(leaf))) for leaf in jax.tree_util.tree_leaves(fast)
               if jnp.issubdtype(jnp.asarray(leaf).dtype, jnp.floating)]

    def objective(scan):
        def f(d, k):
            leaves = [leaf for leaf in jax.tree_util.tree_leaves(scan(d, k))
                      if jnp.issubdtype(jnp.asarray(leaf).dtype, jnp.floating)]
            return sum(jnp.sum(w * leaf) for w, leaf in zip(weights, leaves))
        return jax.grad(f, argnums=(0, 1))(dts, kicks)

    g_fast = objective(lambda d, k: neuron.advance_layer(d, k, budget.spikes_per_interval, budget.doublings))
    g_slow = objective(lambda d, k: network._generic_layer_scan(neuron, d, k, budget))
    for a, b in zip(g_fast, g_slow):
        np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-8, atol=1e-10 * float(jnp.max(jnp.abs(b))))
