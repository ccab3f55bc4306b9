"""Metrics of the LIF vs QIF study: loss-landscape fragmentation, gradient stability,
silence, convergence and representation stability.

Every function here is plain NumPy on measured values (loss values along a slice,
gradient vectors, spike counts, spike times), so each metric can be checked on
constructed cases; :mod:`bci_qif.compare` produces the measurements with the engine.

Definitions
-----------
Norm-scaled direction
    A random Gaussian direction in parameter space whose every weight row (the input
    weights of one neuron) and every bias vector is rescaled to the norm of the same
    row / vector of the parameters ("filter normalisation", Li et al. 2018). A step
    ``alpha`` along it changes every neuron's weights by ``alpha`` times their norm,
    so slices of networks with different weight scales are comparable.
Jump (1-D slice)
    A step ``|f(a_{i+1}) - f(a_i)|`` of the sampled loss is a *candidate* when it
    exceeds ``k`` times the median absolute step of its neighbourhood (the ``window``
    steps on each side, itself excluded) and an absolute floor. A candidate is a
    *jump* when it does not shrink under refinement: the interval is bisected
    ``n_refine`` times, each time keeping the half with the larger step, and the step
    of the kept half must stay at least ``keep`` (0.75) times the step before. A
    smooth function's step halves with the interval (ratio about 0.5); a
    discontinuity keeps its full height (ratio about 1). So a confirmed jump is a
    discontinuity at the resolution ``h / 2**n_refine`` of the refined grid. Without
    a ``refine`` callable only the threshold test is applied (candidates).
Total variation
    ``sum_i |f(a_{i+1}) - f(a_i)|``, split into the *jump part* (the height of every
    confirmed jump, measured on its finest bracket) and the *smooth part* (the rest).
Gradient stability
    Cosine similarity of the full gradients at neighbouring points of a slice (1 for
    a smooth landscape sampled finely enough), and the spread of minibatch
    gradients around their mean: ``E||g_b - g||^2 / ||g||^2`` (relative variance)
    and the mean pairwise cosine between minibatch gradients.
Silence
    A hidden neuron is silent on a set of trials when it fires no ordinary spike on
    any of them. It is *permanently silent* when it is silent on the whole training
    set at every evaluation from some epoch to the end of training, for at least
    ``min_epochs`` evaluations.
Convergence
    The first epoch at which validation accuracy reaches ``baseline + fraction *
    (final - baseline)``; ``baseline = 0`` is "90 % of the final accuracy",
    ``baseline = chance`` is "90 % of the final gain over chance".
Representation stability
    Between two epochs (or two nearby parameter sets), per trial and hidden neuron,
    spikes that appear ``max(c_b - c_a, 0)`` and disappear ``max(c_a - c_b, 0)``
    relative to the spikes of the first; under a small perturbation, spike times
    are matched one-to-one within a tolerance and unmatched spikes are classified
    as inside the trial or at its end (within ``end_window`` of ``T``), which is
    where QIF spikes may (dis)appear continuously.
"""

from __future__ import annotations

import dataclasses
import math

import numpy as np

__all__ = [
    "JumpResult",
    "flatten",
    "norm_scaled_direction",
    "along",
    "detect_jumps",
    "slice_fragmentation",
    "grid_fragmentation",
    "cosine_similarity",
    "neighbour_cosines",
    "minibatch_gradient_stats",
    "silent_onsets",
    "permanently_silent",
    "epochs_to_fraction",
    "count_changes",
    "spike_changes",
]


# ---------------------------------------------------------------------------------
# Parameter-space directions
# ---------------------------------------------------------------------------------
def flatten(tree) -> np.ndarray:
    """All leaves of a parameter pytree (list of dicts of arrays) as one float64 vector."""
    import jax

    leaves = jax.tree_util.tree_leaves(tree)
    if not leaves:
        return np.zeros(0)
    return np.concatenate([np.asarray(leaf, dtype=np.float64).reshape(-1) for leaf in leaves])


def _row_scaled(noise, reference):
    """``noise`` with every row (last axis) rescaled to the norm of ``reference``'s row."""
    noise = np.asarray(noise, dtype=np.float64)
    reference = np.asarray(reference, dtype=np.float64)
    if reference.ndim == 1:  # a bias vector is scaled as a whole
        scale = np.linalg.norm(reference) / max(np.linalg.norm(noise), 1e-300)
        return noise * scale
    norms_ref = np.linalg.norm(reference, axis=-1, keepdims=True)
    norms_noise = np.maximum(np.linalg.norm(noise, axis=-1, keepdims=True), 1e-300)
    return noise * norms_ref / norms_noise


def norm_scaled_direction(params, seed: int):
    """A random direction with the row norms of ``params`` (see the module notes).

    Parameters
    ----------
    params : list of dict
        Network parameters ``[{"w": (n_out, n_in), "b": (n_out,)}, ...]``.
    seed : int
        Seed of the Gaussian draw; the same seed and shapes give the same direction.

    Returns
    -------
    list of dict
        Same structure as ``params``, NumPy float64 arrays.
    """
    rng = np.random.default_rng(seed)
    direction = []
    for layer in params:
        direction.append({name: _row_scaled(rng.standard_normal(np.shape(value)), value)
                          for name, value in layer.items()})
    return direction


def along(params, directions, coefficients):
    """``params + sum_j coefficients[j] * directions[j]``, in the dtype of ``params``."""
    import jax.numpy as jnp

    out = []
    for index, layer in enumerate(params):
        new = {}
        for name, value in layer.items():
            shift = sum(float(c) * d[index][name] for c, d in zip(coefficients, directions))
            new[name] = jnp.asarray(np.asarray(value, np.float64) + shift, dtype=jnp.asarray(value).dtype)
        out.append(new)
    return out


# ---------------------------------------------------------------------------------
# Fragmentation of loss slices
# ---------------------------------------------------------------------------------
@dataclasses.dataclass
class JumpResult:
    """Jumps found in a sampled 1-D function.

    Attributes
    ----------
    candidates : ndarray of int
        Indices ``i`` of the steps ``i -> i + 1`` that passed the threshold test.
    jumps : ndarray of int
        The candidates confirmed by refinement (all candidates without refinement).
    positions : ndarray of float
        Abscissa of every jump (midpoint of its finest bracket).
    sizes : ndarray of float
        Height ``|Δf|`` of every jump on its finest bracket.
    n_evaluations : int
        Extra function evaluations spent on refinement.
    """

    candidates: np.ndarray
    jumps: np.ndarray
    positions: np.ndarray
    sizes: np.ndarray
    n_evaluations: int = 0

    @property
    def count(self) -> int:
        """Number of jumps."""
        return int(len(self.jumps))


def _local_median(steps: np.ndarray, window: int) -> np.ndarray:
    """Median of the finite ``steps`` within ``window`` on each side, the step itself excluded."""
    n = len(steps)
    out = np.empty(n)
    for i in range(n):
        neighbours = np.concatenate([steps[max(0, i - window):i], steps[i + 1:i + 1 + window]])
        neighbours = neighbours[np.isfinite(neighbours)]
        out[i] = np.median(neighbours) if neighbours.size else 0.0
    return out


def _default_floor(values: np.ndarray) -> float:
    # Float32 losses carry rounding noise of about 1e-7 relative: a step below
    # 1e-5 of the loss scale is noise, never a jump.
    finite = values[np.isfinite(values)]
    scale = float(np.max(np.abs(finite))) if finite.size else 1.0
    return 1e-5 * (1.0 + scale)


def _confirm(x0, x1, f0, f1, refine, n_refine, keep):
    """Bisect a candidate step; return ``(confirmed, position, size, evaluations)``."""
    step = abs(f1 - f0)
    for level in range(n_refine):
        xm = 0.5 * (x0 + x1)
        fm = float(refine(xm))
        if not math.isfinite(fm):
            return False, xm, step, level + 1
        left, right = abs(fm - f0), abs(f1 - fm)
        if left >= right:
            x1, f1, new_step = xm, fm, left
        else:
            x0, f0, new_step = xm, fm, right
        if new_step < keep * step:  # shrinks with the interval: smooth, not a jump
            return False, 0.5 * (x0 + x1), new_step, level + 1
        step = new_step
    return True, 0.5 * (x0 + x1), step, n_refine


def detect_jumps(x, values, *, k: float = 4.0, window: int = 5, floor: float | None = None, refine=None,
                 n_refine: int = 3, keep: float = 0.75) -> JumpResult:
    """Find the discontinuities of a function sampled on a grid.

    Parameters
    ----------
    x : array-like, shape (n,)
        Increasing grid.
    values : array-like, shape (n,)
        Function values (non-finite values are ignored: steps touching them never
        count).
    k : float
        A step is a candidate when it exceeds ``k`` times the local median step.
    window : int
        Steps on each side that form the local median.
    floor : float, optional
        Steps at or below this never count (default ``1e-5 * (1 + max|f|)``, above
        float32 rounding noise).
    refine : callable, optional
        ``refine(x) -> f(x)`` for bisecting candidates (see the module notes).
    n_refine : int
        Bisections per candidate.
    keep : float
        Share of its step a candidate must keep at each bisection (0.5 < keep < 1).

    Returns
    -------
    JumpResult
    """
    x = np.asarray(x, dtype=np.float64)
    values = np.asarray(values, dtype=np.float64)
    if x.ndim != 1 or x.shape != values.shape:
        raise ValueError(f"x and values must be 1-D of the same length, got {x.shape} and {values.shape}")
    if len(x) < 2:
        empty = np.zeros(0)
        return JumpResult(np.zeros(0, int), np.zeros(0, int), empty, empty)
    if np.any(np.diff(x) <= 0):
        raise ValueError("x must be strictly increasing")
    if not 0.5 < keep < 1:
        raise ValueError(f"keep must lie in (0.5, 1), got {keep}")
    steps = np.abs(np.diff(values))
    floor = _default_floor(values) if floor is None else float(floor)
    scale = _local_median(steps, window)
    candidates = np.flatnonzero(np.isfinite(steps) & (steps > floor) & (steps > k * scale))
    if refine is None:
        return JumpResult(candidates, candidates, 0.5 * (x[candidates] + x[candidates + 1]), steps[candidates])
    jumps, positions, sizes, evaluations = [], [], [], 0
    for i in candidates:
        confirmed, position, size, used = _confirm(x[i], x[i + 1], values[i], values[i + 1], refine, n_refine, keep)
        evaluations += used
        if confirmed:
            jumps.append(i)
            positions.append(position)
            sizes.append(size)
    return JumpResult(candidates, np.asarray(jumps, int), np.asarray(positions, float), np.asarray(sizes, float),
                      evaluations)


def slice_fragmentation(x, values, **jump_options) -> dict:
    """Jumps and total variation of a 1-D loss slice.

    Parameters
    ----------
    x, values : array-like, shape (n,)
    **jump_options
        Passed to :func:`detect_jumps` (``refine``, ``k``, ...).

    Returns
    -------
    dict
        ``n_jumps``, ``n_candidates``, ``tv_total`` (sum of absolute steps over
        finite values), ``tv_jump`` (sum of jump heights), ``tv_smooth``
        (``tv_total - tv_jump``, floored at 0), ``jump_share`` (``tv_jump /
        tv_total``, 0 for a constant function), ``jump_positions``,
        ``n_nonfinite`` (grid points with a non-finite value) and the
        :class:`JumpResult` as ``result``.
    """
    values = np.asarray(values, dtype=np.float64)
    result = detect_jumps(x, values, **jump_options)
    steps = np.abs(np.diff(values))
    tv_total = float(np.sum(steps[np.isfinite(steps)]))
    tv_jump = float(np.sum(result.sizes))
    return {
        "n_jumps": result.count,
        "n_candidates": int(len(result.candidates)),
        "tv_total": tv_total,
        "tv_jump": tv_jump,
        "tv_smooth": max(tv_total - tv_jump, 0.0),
        "jump_share": tv_jump / tv_total if tv_total > 0 else 0.0,
        "jump_positions": result.positions.tolist(),
        "n_nonfinite": int(np.sum(~np.isfinite(values))),
        "result": result,
    }


def grid_fragmentation(values, *, k: float = 4.0, window: int = 3, floor: float | None = None) -> dict:
    """Threshold-test jumps and total variation of a 2-D loss slice.

    Every row and every column of the grid is tested like a 1-D slice without
    refinement (a 2-D grid is too costly to bisect), so the counts are candidate
    jumps: edges of the grid whose step stands out of its neighbourhood.

    Parameters
    ----------
    values : array-like, shape (n, m)
        Loss on the grid (non-finite entries ignored).

    Returns
    -------
    dict
        ``n_jump_edges``, ``n_edges``, ``jump_edge_share``, ``tv_total`` (sum of
        absolute steps along rows and columns), ``tv_jump`` and ``jump_share``.
    """
    values = np.asarray(values, dtype=np.float64)
    if values.ndim != 2:
        raise ValueError(f"values must be 2-D, got shape {values.shape}")
    floor = _default_floor(values) if floor is None else float(floor)
    n_jump = n_edges = 0
    tv_total = tv_jump = 0.0
    for line in list(values) + list(values.T):
        axis = np.arange(len(line), dtype=float)
        result = detect_jumps(axis, line, k=k, window=window, floor=floor)
        steps = np.abs(np.diff(line))
        finite = np.isfinite(steps)
        n_edges += int(np.sum(finite))
        n_jump += result.count
        tv_total += float(np.sum(steps[finite]))
        tv_jump += float(np.sum(result.sizes))
    return {
        "n_jump_edges": n_jump,
        "n_edges": n_edges,
        "jump_edge_share": n_jump / n_edges if n_edges else 0.0,
        "tv_total": tv_total,
        "tv_jump": tv_jump,
        "jump_share": tv_jump / tv_total if tv_total > 0 else 0.0,
    }


# ---------------------------------------------------------------------------------
# Gradient stability
# ---------------------------------------------------------------------------------
def _vector(g) -> np.ndarray:
    return g if isinstance(g, np.ndarray) and g.ndim == 1 else flatten(g)


def cosine_similarity(a, b) -> float:
    """Cosine of the angle between two gradients (vectors or pytrees).

    NaN when either is zero or not finite: no direction to compare.
    """
    a, b = _vector(a).astype(np.float64), _vector(b).astype(np.float64)
    if a.shape != b.shape:
        raise ValueError(f"gradients differ in size: {a.shape} vs {b.shape}")
    na, nb = np.linalg.norm(a), np.linalg.norm(b)
    if not (np.isfinite(na) and np.isfinite(nb)) or na == 0 or nb == 0:
        return math.nan
    return float(np.clip(np.dot(a, b) / (na * nb), -1.0, 1.0))


def neighbour_cosines(gradients) -> np.ndarray:
    """Cosine similarity of consecutive gradients along a slice, shape ``(n - 1,)``."""
    vectors = [_vector(g) for g in gradients]
    return np.array([cosine_similarity(a, b) for a, b in zip(vectors[:-1], vectors[1:])])


def minibatch_gradient_stats(gradients) -> dict:
    """Spread of minibatch gradients taken at the same parameters.

    Returns
    -------
    dict
        ``relative_variance``: ``mean_b ||g_b - g||^2 / ||g||^2`` with ``g`` the mean
        gradient (0 when all agree; large when minibatches point anywhere);
        ``mean_pairwise_cosine``: mean cosine over pairs of minibatches;
        ``n_minibatches``. Non-finite gradients are dropped and counted in
        ``n_nonfinite``.
    """
    vectors = [_vector(g).astype(np.float64) for g in gradients]
    finite = [v for v in vectors if np.all(np.isfinite(v))]
    out = {"n_minibatches": len(finite), "n_nonfinite": len(vectors) - len(finite),
           "relative_variance": math.nan, "mean_pairwise_cosine": math.nan,
           "zero_share": float(np.mean([not np.any(v) for v in finite])) if finite else math.nan}
    if len(finite) < 2:
        return out
    stack = np.stack(finite)
    mean = stack.mean(axis=0)
    norm2 = float(np.dot(mean, mean))
    spread = float(np.mean(np.sum((stack - mean) ** 2, axis=1)))
    # A zero mean gradient (e.g. a network whose outputs never fire) has no direction to vary around.
    out["relative_variance"] = spread / norm2 if norm2 > 0 else math.nan
    cosines = [cosine_similarity(stack[i], stack[j]) for i in range(len(stack)) for j in range(i + 1, len(stack))]
    out["mean_pairwise_cosine"] = float(np.nanmean(cosines)) if np.any(np.isfinite(cosines)) else math.nan
    return out


# ---------------------------------------------------------------------------------
# Silence and convergence
# ---------------------------------------------------------------------------------
def silent_onsets(silent) -> np.ndarray:
    """Per neuron, the first evaluation from which it stays silent to the end (-1 if none).

    Parameters
    ----------
    silent : array-like of bool, shape (n_evaluations, n_neurons)
        ``silent[e, j]``: neuron ``j`` fired no ordinary spike on the whole training
        set at evaluation ``e`` (e.g. after each epoch).
    """
    silent = np.asarray(silent, dtype=bool)
    if silent.ndim != 2:
        raise ValueError(f"silent must be (n_evaluations, n_neurons), got shape {silent.shape}")
    n = silent.shape[0]
    onsets = np.full(silent.shape[1], -1)
    # Walk backwards: the silent tail of a neuron ends at the last evaluation.
    tail = np.ones(silent.shape[1], dtype=bool)
    for e in range(n - 1, -1, -1):
        tail &= silent[e]
        onsets[tail] = e
    return onsets


def permanently_silent(silent, min_epochs: int = 1) -> np.ndarray:
    """Neurons silent at every evaluation of their last ``>= min_epochs`` evaluations.

    Returns
    -------
    ndarray of bool, shape (n_neurons,)
    """
    if min_epochs < 1:
        raise ValueError(f"min_epochs must be >= 1, got {min_epochs}")
    silent = np.asarray(silent, dtype=bool)
    onsets = silent_onsets(silent)
    return (onsets >= 0) & (silent.shape[0] - onsets >= min_epochs)


def epochs_to_fraction(curve, fraction: float = 0.9, baseline: float = 0.0) -> float:
    """Epochs until ``curve`` first reaches ``baseline + fraction * (final - baseline)``.

    Parameters
    ----------
    curve : array-like
        Validation accuracy after epoch 1, 2, ... (``curve[-1]`` is the final value).
    fraction : float
    baseline : float
        0 for "share of the final accuracy", chance level for "share of the gain".

    Returns
    -------
    float
        The epoch (1-based); NaN for an empty or non-finite curve, and when the
        final value does not exceed ``baseline`` (nothing was gained to converge to).
    """
    curve = np.asarray(curve, dtype=np.float64)
    if curve.size == 0 or not np.isfinite(curve[-1]) or curve[-1] <= baseline:
        return math.nan
    target = baseline + fraction * (curve[-1] - baseline)
    reached = np.flatnonzero(np.nan_to_num(curve, nan=-np.inf) >= target - 1e-12)
    return float(reached[0] + 1)


# ---------------------------------------------------------------------------------
# Representation stability
# ---------------------------------------------------------------------------------
def count_changes(counts_a, counts_b) -> dict:
    """Spikes that appear and disappear between two per-trial spike-count tables.

    Parameters
    ----------
    counts_a, counts_b : array-like, shape (n_trials, n_neurons)
        Ordinary spike counts per trial and neuron, before and after.

    Returns
    -------
    dict
        ``appeared``, ``disappeared`` (totals), ``n_before`` (spikes in
        ``counts_a``), ``share`` (``(appeared + disappeared) / max(n_before, 1)``),
        ``changed_pairs`` (share of trial x neuron pairs whose count changed) and
        ``changed_sets`` (share of pairs that switched between silent and firing:
        the set of neurons active in a trial changed).
    """
    a = np.asarray(counts_a, dtype=np.int64)
    b = np.asarray(counts_b, dtype=np.int64)
    if a.shape != b.shape:
        raise ValueError(f"count tables differ in shape: {a.shape} vs {b.shape}")
    diff = b - a
    appeared, disappeared = int(np.sum(np.maximum(diff, 0))), int(np.sum(np.maximum(-diff, 0)))
    n_before = int(a.sum())
    return {
        "appeared": appeared,
        "disappeared": disappeared,
        "n_before": n_before,
        "share": (appeared + disappeared) / max(n_before, 1),
        "changed_pairs": float(np.mean(diff != 0)) if diff.size else 0.0,
        "changed_sets": float(np.mean((a > 0) != (b > 0))) if diff.size else 0.0,
    }


def _match(times_a, times_b, tol):
    """Greedy one-to-one matching of two sorted spike-time lists within ``tol``.

    Returns the unmatched times of ``a`` (disappeared) and of ``b`` (appeared).
    """
    i = j = 0
    lost, new = [], []
    while i < len(times_a) and j < len(times_b):
        if abs(times_a[i] - times_b[j]) <= tol:
            i, j = i + 1, j + 1
        elif times_a[i] < times_b[j]:
            lost.append(times_a[i])
            i += 1
        else:
            new.append(times_b[j])
            j += 1
    lost.extend(times_a[i:])
    new.extend(times_b[j:])
    return lost, new


def spike_changes(times_a, sources_a, times_b, sources_b, T: float, *, tol: float | None = None,
                  end_window: float | None = None) -> dict:
    """Spikes of one trial that (dis)appear between two nearby parameter sets.

    Parameters
    ----------
    times_a, sources_a : array-like, shape (n_a,)
        Spike times and neuron indices before the change (non-finite times and
        times ``>= T`` are padding and ignored).
    times_b, sources_b : array-like, shape (n_b,)
        The same after the change.
    T : float
        Trial length.
    tol : float, optional
        Matching tolerance; a spike that moved by less is the same spike (default
        ``1e-2 * T``, far above the shift a 1e-3 perturbation causes).
    end_window : float, optional
        An unmatched spike within ``end_window`` of ``T`` (dis)appeared at the trial
        end (default: ``tol``).

    Returns
    -------
    dict
        ``n_before``, ``appeared_inside``, ``disappeared_inside``,
        ``appeared_end``, ``disappeared_end``.
    """
    tol = 1e-2 * T if tol is None else float(tol)
    end_window = tol if end_window is None else float(end_window)
    times_a, sources_a = np.asarray(times_a, float), np.asarray(sources_a)
    times_b, sources_b = np.asarray(times_b, float), np.asarray(sources_b)
    keep_a = np.isfinite(times_a) & (times_a < T)
    keep_b = np.isfinite(times_b) & (times_b < T)
    times_a, sources_a = times_a[keep_a], sources_a[keep_a]
    times_b, sources_b = times_b[keep_b], sources_b[keep_b]
    out = {"n_before": int(len(times_a)), "appeared_inside": 0, "disappeared_inside": 0,
           "appeared_end": 0, "disappeared_end": 0}
    for neuron in np.union1d(sources_a, sources_b):
        lost, new = _match(np.sort(times_a[sources_a == neuron]), np.sort(times_b[sources_b == neuron]), tol)
        for kind, times in (("disappeared", lost), ("appeared", new)):
            for t in times:
                out[f"{kind}_{'end' if t >= T - end_window else 'inside'}"] += 1
    return out
