"""Closed-form QIF / LIF dynamics of ``bci_qif.neurons`` against numerical ODE solutions.

Every closed form (flow, time to spike, spikes in an interval, advance, pseudospikes)
is compared with ``scipy.integrate.solve_ivp`` (DOP853, rtol 3e-14) of the defining
equations, and the autodiff gradients with central finite differences, in float64.

The QIF reference integrator is independent of the module's projective (Moebius)
representation: it integrates ``V`` while ``|V| <= 8`` and ``w = 1 / V`` otherwise,
``tau dw/dt = -(1 - w + I w^2)``, in which the spike ``V -> +inf`` followed by the
reset to ``-inf`` is the smooth passage of ``w`` through zero (from above).
"""

from __future__ import annotations

import functools
import inspect
import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from scipy.integrate import solve_ivp

from bci_qif.neurons import LIF, QIF, get_neuron

RTOL_ODE = 3e-14  # DOP853 accepts down to 100 * eps
ATOL_ODE = 1e-16
TAUS = (1.0, 0.37)
PI2_4 = math.pi**2 / 4  # QIF firing boundary from rest


@pytest.fixture(autouse=True, scope="module")
def _float64():
    """float64 for this module only; restores the previous setting afterwards."""
    with jax.enable_x64(True):
        yield


def _np(x):
    return np.asarray(x, dtype=np.float64)


class _Jitted:
    """A neuron model whose methods run jitted (one compilation per method and shape

    instead of one per primitive in eager mode); ``max_spikes`` / ``doublings`` static.
    """

    def __init__(self, model):
        self.model = model

    def __getattr__(self, name):
        attr = getattr(self.model, name)
        return _jit_method(self.model, name) if callable(attr) else attr


@functools.lru_cache(maxsize=None)
def _jit_method(model, name):
    method = getattr(model, name)
    static = [n for n in ("max_spikes", "doublings") if n in inspect.signature(method).parameters]
    return jax.jit(method, static_argnames=static)


def _unwrap(model):
    return model.model if isinstance(model, _Jitted) else model


# ---------------------------------------------------------------------------------
# Numerical references
# ---------------------------------------------------------------------------------
def _event(fun, direction, terminal):
    fun.direction = direction
    fun.terminal = terminal
    return fun


def qif_reference(v0, i0, tau, targets, *, decay=True, radius=8.0):
    """Integrate the QIF with spike-and-reset numerically.

    Returns ``(v, i, spikes)``: voltage and current at each of ``targets`` (sorted,
    >= 0; each one is a true integration end point, not an interpolation) and all
    spike times in ``(0, max(targets)]``. ``v0`` may be ``-inf`` (just reset).
    ``decay=False`` keeps the current constant (pseudodynamics reference).
    """
    rate = 2.0 / tau if decay else 0.0

    def f_v(t, y):
        return [(y[0] * (y[0] - 1.0) + y[1]) / tau, -rate * y[1]]

    def f_w(t, y):
        return [-(1.0 - y[0] + y[1] * y[0] * y[0]) / tau, -rate * y[1]]

    # chart V is left at |V| = radius, chart w at |w| = 2 / radius (hysteresis).
    ev_v = [
        _event(lambda t, y: y[0] - radius, 1, True),
        _event(lambda t, y: y[0] + radius, -1, True),
    ]
    ev_w = [
        _event(lambda t, y: y[0], -1, False),  # the spike (and reset)
        _event(lambda t, y: y[0] - 2.0 / radius, 1, True),
        _event(lambda t, y: y[0] + 2.0 / radius, -1, True),
    ]

    if not np.isfinite(v0):
        chart, y = "w", [-1e-300, i0]  # just below w = 0, i.e. V = -inf after a reset
    elif abs(v0) > radius:
        chart, y = "w", [1.0 / v0, i0]
    else:
        chart, y = "v", [v0, i0]

    t = 0.0
    spikes, v_out, i_out = [], [], []
    for target in targets:
        while t < target:
            fun, events = (f_v, ev_v) if chart == "v" else (f_w, ev_w)
            sol = solve_ivp(fun, (t, target), y, method="DOP853", rtol=RTOL_ODE, atol=ATOL_ODE, events=events)
            assert sol.status >= 0, sol.message
            if chart == "w":
                spikes.extend(sol.t_events[0])
            if sol.status == 1:  # a terminal event: change chart
                k = next(k for k, e in enumerate(events) if e.terminal and len(sol.t_events[k]))
                t, y = float(sol.t_events[k][0]), list(sol.y_events[k][0])
                chart, y = ("w" if chart == "v" else "v"), [1.0 / y[0], y[1]]
            else:
                t, y = target, list(sol.y[:, -1])
        if chart == "v":
            v_out.append(y[0])
        else:
            v_out.append(1.0 / y[0] if y[0] != 0 else np.inf)
        i_out.append(y[1])
    return np.array(v_out), np.array(i_out), np.array(spikes)


def qif_first_spike(v0, i0, tau, horizon):
    _, _, spikes = qif_reference(v0, i0, tau, [horizon])
    return spikes[0] if len(spikes) else np.inf


def lif_reference(v0, i0, tau, v_th, targets, *, reset=True):
    """LIF with threshold crossings and resets to 0; returns ``(v, i, spikes)``."""

    def fun(t, y):
        return [(-y[0] + y[1]) / tau, -2.0 * y[1] / tau]

    cross = _event(lambda t, y: y[0] - v_th, 1, reset)
    peak = _event(lambda t, y: y[1] - y[0], -1, False)  # a maximum of V (dV/dt = 0)
    t, y = 0.0, [v0, i0]
    spikes, v_out, i_out = [], [], []
    for target in targets:
        while t < target:
            sol = solve_ivp(fun, (t, target), y, method="DOP853", rtol=RTOL_ODE, atol=ATOL_ODE, events=[cross, peak])
            assert sol.status >= 0, sol.message
            first = sol.t_events[0][0] if len(sol.t_events[0]) else np.inf
            missed = [tp for tp, yp in zip(sol.t_events[1], sol.y_events[1]) if yp[0] > v_th and tp < first]
            if missed:
                # a grazing crossing fell between two steps; integrating up to the peak
                # (above threshold) puts a sign change of the event inside the last step
                sol = solve_ivp(fun, (t, missed[0]), y, method="DOP853", rtol=RTOL_ODE, atol=ATOL_ODE, events=[cross])
                assert len(sol.t_events[0]), "started above threshold?"
            spikes.extend(sol.t_events[0])
            if sol.status == 1:
                t, y = float(sol.t_events[0][0]), [0.0, float(sol.y_events[0][0][1])]
            else:
                t, y = target, list(sol.y[:, -1])
        v_out.append(y[0])
        i_out.append(y[1])
    return np.array(v_out), np.array(i_out), np.array(spikes)


def lif_first_spike(v0, i0, tau, v_th, horizon):
    _, _, spikes = lif_reference(v0, i0, tau, v_th, [horizon])
    return spikes[0] if len(spikes) else np.inf


def qif_separatrix(i):
    """Initial voltage from which a QIF neuron with decaying current ``i`` tends to V = 1.

    The closed form fires iff ``y(1) < 0``, ``y(s) = C(s) - V S(s)``: the boundary is
    ``V = C(1) / S(1)`` = ``c cot c`` (I = c^2 > 0, c < pi), ``c coth c`` (I = -c^2), 1 (I = 0).
    """
    if i > 0:
        c = math.sqrt(i)
        return c / math.tan(c)
    if i < 0:
        c = math.sqrt(-i)
        return c / math.tanh(c)
    return 1.0


# ---------------------------------------------------------------------------------
# Random test states, by regime
# ---------------------------------------------------------------------------------
def _loguniform(rng, lo, hi, n):
    return np.exp(rng.uniform(np.log(lo), np.log(hi), n))


def qif_cases(seed, n=6):
    """``(regime, v, i)`` triples covering every QIF regime."""
    rng = np.random.default_rng(seed)
    cases = []
    for v, i in zip(rng.uniform(-2.0, 2.0, n), rng.uniform(0.01, 12.0, n)):
        cases.append(("I>0", v, i))
    for v, i in zip(rng.uniform(-2.0, 4.0, n), -rng.uniform(0.01, 12.0, n)):
        cases.append(("I<0", v, i))
    for v in rng.uniform(-3.0, 3.0, n):
        cases.append(("I=0", v, 0.0))
    signs = rng.choice([-1.0, 1.0], 2 * n)
    for v, i, sg in zip(rng.uniform(-2.0, 2.5, 2 * n), _loguniform(rng, 1e-6, 1e-3, 2 * n), signs):
        cases.append(("tiny", v, sg * i))
    cases.append(("tiny", 1.3, 1e-4))  # exactly on the branch boundaries
    cases.append(("tiny", 1.3, -1e-4))
    # near threshold: close to the separatrix, close to the unstable point, drives
    # near the firing boundary from rest
    for i, d, sg in zip(rng.uniform(-6.0, 8.0, n), _loguniform(rng, 1e-5, 1e-2, n), rng.choice([-1.0, 1.0], n)):
        cases.append(("separatrix", qif_separatrix(i) + sg * d, i))
    for d, sg in zip(_loguniform(rng, 1e-6, 1e-2, n), rng.choice([-1.0, 1.0], n)):
        cases.append(("unstable point", 1.0 + sg * d, rng.choice([0.0, 1e-5, -1e-5])))
    for d in (-1e-3, -1e-5, 1e-5, 1e-3):
        cases.append(("boundary from rest", 0.0, PI2_4 * (1 + d)))
    # just after a reset
    for v, i in zip(-_loguniform(rng, 1e3, 1e6, n), rng.uniform(-5.0, 50.0, n)):
        cases.append(("after reset", v, i))
    for i in (-3.0, -1e-5, 0.0, 1e-5, 0.7, 30.0):
        cases.append(("after reset", -np.inf, i))
    return cases


def lif_cases(seed, v_th, n=6):
    rng = np.random.default_rng(seed)
    cases = []
    for v, i in zip(rng.uniform(-2.0, v_th, n), rng.uniform(0.01, 12.0, n)):
        cases.append(("I>0", v, i))
    for v, i in zip(rng.uniform(-2.0, v_th, n), -rng.uniform(0.01, 12.0, n)):
        cases.append(("I<0", v, i))
    for v in rng.uniform(-2.0, v_th, n):
        cases.append(("I=0", v, 0.0))
    for v, i, sg in zip(rng.uniform(-2.0, v_th, n), _loguniform(rng, 1e-6, 1e-3, n), rng.choice([-1.0, 1.0], n)):
        cases.append(("tiny", v, sg * i))
    for d, i in zip(_loguniform(rng, 1e-9, 1e-3, n), rng.uniform(-2.0, 6.0, n)):
        cases.append(("near threshold", v_th - d, i))
    for i in rng.uniform(0.0, 20.0, n):
        cases.append(("after reset", 0.0, i))
    cases.append(("after reset", 0.0, 4.0 * v_th * (1 + 1e-3)))  # just above the tangency
    cases.append(("after reset", 0.0, 4.0 * v_th * (1 + 1e-6)))  # a grazing crossing
    return cases


# ---------------------------------------------------------------------------------
# 1. flow
# ---------------------------------------------------------------------------------
FRACTIONS = np.array([0.0, 0.05, 0.3, 0.7, 0.95, 0.995])


@pytest.mark.parametrize("tau", TAUS)
def test_qif_flow_matches_ode(tau):
    model = _Jitted(QIF(tau=tau))
    horizon = 6.0 * tau
    rows = []  # (regime, v0, i0, dt, v_ref, i_ref)
    for regime, v0, i0 in qif_cases(seed=int(100 * tau)):
        t_end = min(qif_first_spike(v0, i0, tau, horizon), horizon)
        dts = FRACTIONS * t_end
        v_ref, i_ref, spikes = qif_reference(v0, i0, tau, dts)
        assert len(spikes) == 0
        rows += [(regime, v0, i0, dt, v, i) for dt, v, i in zip(dts, v_ref, i_ref)]
    regime, v0, i0, dt, v_ref, i_ref = (np.array(c) for c in zip(*rows))
    v, i = model.flow(v0, i0, dt)
    v, i = _np(v), _np(i)
    start = dt == 0
    assert np.all(np.isfinite(v[~start]))
    err_v = np.abs(v - v_ref) / (np.abs(v_ref) + 1e-2)
    err_v[start] = 0
    worst = np.argmax(err_v)
    assert err_v.max() < 1e-8, (regime[worst], v0[worst], i0[worst], dt[worst], v[worst], v_ref[worst])
    np.testing.assert_allclose(i, i_ref, rtol=1e-9, atol=1e-14)
    assert set(regime) >= {"I>0", "I<0", "I=0", "tiny", "separatrix", "after reset", "boundary from rest"}
    # dt = 0 gives the initial voltage back; from V = -inf (just reset) that is the
    # limit -inf, not the spike +inf
    np.testing.assert_allclose(v[start], v0[start], rtol=1e-15)


@pytest.mark.parametrize("tau,v_th", [(1.0, 1.0), (0.37, 1.0), (1.0, 0.6)])
def test_lif_flow_matches_ode(tau, v_th):
    model = _Jitted(LIF(tau=tau, v_th=v_th))
    horizon = 6.0 * tau
    rows = []
    for regime, v0, i0 in lif_cases(seed=int(100 * tau + 10 * v_th), v_th=v_th):
        t_end = min(lif_first_spike(v0, i0, tau, v_th, horizon), horizon)
        dts = FRACTIONS * t_end
        v_ref, i_ref, _ = lif_reference(v0, i0, tau, v_th, dts, reset=False)
        rows += [(regime, v0, i0, dt, v, i) for dt, v, i in zip(dts, v_ref, i_ref)]
    regime, v0, i0, dt, v_ref, i_ref = (np.array(c) for c in zip(*rows))
    v, i = model.flow(v0, i0, dt)
    v, i = _np(v), _np(i)
    err_v = np.abs(v - v_ref) / (np.abs(v_ref) + 1e-3)
    worst = np.argmax(err_v)
    assert err_v.max() < 1e-8, (regime[worst], v0[worst], i0[worst], dt[worst], v[worst], v_ref[worst])
    np.testing.assert_allclose(i, i_ref, rtol=1e-9, atol=1e-14)
    # before the first crossing the voltage stays below threshold
    assert np.all(v <= v_th + 1e-12)


# ---------------------------------------------------------------------------------
# 2. time_to_spike
# ---------------------------------------------------------------------------------
@pytest.mark.parametrize("tau", TAUS)
def test_qif_time_to_spike_matches_ode(tau):
    model = _Jitted(QIF(tau=tau))
    horizon = 40.0 * tau
    cases = qif_cases(seed=7 + int(100 * tau))
    regime, v0, i0 = (np.array(c) for c in zip(*cases))
    t = _np(model.time_to_spike(v0, i0))
    t_ref = np.array([qif_first_spike(v, i, tau, horizon) for v, i in zip(v0, i0)])
    never = ~np.isfinite(t_ref)
    # no numerical spike within 40 tau <=> the closed form says never (inf, not large)
    np.testing.assert_array_equal(np.isinf(t), never)
    assert 3 < never.sum() < len(cases) - 3  # both outcomes are exercised
    err = np.zeros(len(t))
    err[~never] = np.abs(t[~never] - t_ref[~never]) / (t_ref[~never] + 1e-12 * tau)
    worst = np.argmax(err)
    assert err.max() < 1e-8, (regime[worst], v0[worst], i0[worst], t[worst], t_ref[worst])


@pytest.mark.parametrize("tau,v_th", [(1.0, 1.0), (0.37, 1.0), (1.0, 0.6)])
def test_lif_time_to_spike_matches_ode(tau, v_th):
    model = _Jitted(LIF(tau=tau, v_th=v_th))
    horizon = 12.0 * tau  # V <= (v + I) exp(-t / tau) < v_th afterwards for these cases
    cases = lif_cases(seed=11 + int(100 * tau + 10 * v_th), v_th=v_th)
    regime, v0, i0 = (np.array(c) for c in zip(*cases))
    t = _np(model.time_to_spike(v0, i0))
    t_ref = np.array([lif_first_spike(v, i, tau, v_th, horizon) for v, i in zip(v0, i0)])
    never = ~np.isfinite(t_ref)
    np.testing.assert_array_equal(np.isinf(t), never)
    assert 3 < never.sum() < len(cases) - 3
    # relative 1e-8 with an absolute floor of 1e-14 tau: from V = v_th - 1e-9 the
    # crossing time ~1e-9 tau is computed as -tau log(x) with x = 1 - O(1e-9), whose
    # error is ~ eps * tau absolute (1e-7 relative)
    err = np.zeros(len(t))
    err[~never] = np.abs(t[~never] - t_ref[~never]) - 1e-8 * t_ref[~never] - 1e-14 * tau
    worst = np.argmax(err)
    assert err.max() <= 0, (regime[worst], v0[worst], i0[worst], t[worst], t_ref[worst])


def test_lif_never_fires_cases():
    model = _Jitted(LIF(tau=0.5, v_th=1.0))
    v = np.array([0.0, 0.5, 0.99, -3.0, 0.0, 0.0, 0.9, 1.0])
    i = np.array([-2.0, 0.0, 0.5, 1.0, 4.0, 3.9, 3.0, 5.0])  # (0, 4): exact tangency
    t = _np(model.time_to_spike(v, i))
    assert np.all(np.isinf(t[:6])) and np.isfinite(t[6])
    assert np.isinf(t[7])  # already at threshold: the crossing has happened
    assert np.isfinite(_np(model.time_to_spike(0.0, 4.0 * (1 + 1e-9))))


@pytest.mark.parametrize("tau", TAUS)
def test_qif_firing_boundary_from_rest(tau):
    """From V = 0 a current I0 fires iff I0 > pi^2 / 4."""
    model = _Jitted(QIF(tau=tau))
    for d in (1e-12, 1e-9, 1e-6, 1e-3, 0.1):
        assert np.isfinite(_np(model.time_to_spike(0.0, PI2_4 * (1 + d)))), d
        assert np.isinf(_np(model.time_to_spike(0.0, PI2_4 * (1 - d)))), d
    # the closed-form time grows like -tau log(I0 - pi^2/4) towards the boundary
    for d in (1e-3, 1e-6):
        t = _np(model.time_to_spike(0.0, PI2_4 * (1 + d)))
        t_ref = qif_first_spike(0.0, PI2_4 * (1 + d), tau, 60.0 * tau)
        assert abs(t - t_ref) < 1e-7 * t_ref, (d, t, t_ref)
        below = qif_reference(0.0, PI2_4 * (1 - d), tau, [60.0 * tau])
        assert len(below[2]) == 0 and abs(below[0][0]) < 1e-6  # back to rest


def test_time_to_spike_broadcasts_and_separatrix():
    model = _Jitted(QIF())
    t = model.time_to_spike(jnp.zeros((3, 1)), jnp.array([1.0, 3.0, 5.0]))
    assert t.shape == (3, 3)
    # exactly on the separatrix (within rounding) it never fires or takes a very long time
    for i in (-2.0, -1e-5, 0.0, 1e-5, 2.0):
        vs = qif_separatrix(i)
        t_on = float(model.time_to_spike(vs, i))
        assert t_on > 30.0
        assert np.isfinite(float(model.time_to_spike(vs + 1e-6, i)))
        assert np.isinf(float(model.time_to_spike(vs - 1e-6, i)))


# ---------------------------------------------------------------------------------
# 3. spikes_in_interval and advance
# ---------------------------------------------------------------------------------
def _qif_multi_spike_cases(tau):
    rng = np.random.default_rng(3)
    v0 = np.array([-np.inf, -np.inf, -1e8, -2.0, 0.5, 3.0, 50.0] + list(rng.uniform(-3, 3, 3)))
    i0 = np.array([400.0, 60.0, 900.0, 300.0, 500.0, 30.0, 5.0] + list(rng.uniform(100, 1200, 3)))
    dts = np.array([1.0, 2.0, 0.8, 0.6, 1.5, 1.0, 0.3, 1.0, 0.7, 2.0]) * tau
    return v0, i0, dts


@pytest.mark.parametrize("tau", TAUS)
def test_qif_spikes_in_interval_and_advance(tau):
    model = _Jitted(QIF(tau=tau))
    v0, i0, dts = _qif_multi_spike_cases(tau)
    max_spikes = 16
    state = model.state_from_voltage(v0)
    offsets, count = model.spikes_in_interval(state, i0, dts, max_spikes)
    offsets, count = _np(offsets), np.asarray(count)
    assert offsets.shape == (len(v0), max_spikes)
    # doublings=6 covers |I| s^2 <= 4096, i.e. every case here
    (p, q), i_end, maybe_spiked, out_of_range = model.advance(state, i0, dts, doublings=6)
    assert not np.any(np.asarray(out_of_range))
    v_end = _np(model.voltage_from_state((p, q)))
    n_multi = 0
    np.testing.assert_allclose(_np(p) ** 2 + _np(q) ** 2, 1.0, rtol=1e-12)
    assert np.all(_np(q) >= 0)
    for k in range(len(v0)):
        v_ref, i_ref, spikes = qif_reference(v0[k], i0[k], tau, [dts[k]])
        assert 1 <= len(spikes) <= max_spikes, (k, spikes)
        n_multi += len(spikes) >= 3
        assert count[k] == len(spikes), (k, count[k], spikes)
        np.testing.assert_allclose(offsets[k, : len(spikes)], spikes, rtol=1e-9, atol=1e-12 * tau, err_msg=str(k))
        assert np.all(np.isinf(offsets[k, len(spikes) :]))
        np.testing.assert_allclose(v_end[k], v_ref[0], rtol=1e-8, atol=1e-9, err_msg=str(k))
        np.testing.assert_allclose(_np(i_end)[k], i_ref[0], rtol=1e-9)
    assert n_multi >= 5
    assert np.all(np.asarray(maybe_spiked))
    # a budget smaller than the number of spikes: the first offsets, the full count
    small, count_small = model.spikes_in_interval(state, i0, dts, 2)
    np.testing.assert_array_equal(_np(small), offsets[:, :2])
    np.testing.assert_array_equal(np.asarray(count_small), count)
    # fewer doublings: exact where |I| s^2 <= 4**doublings, flagged elsewhere
    _, s_end = model.decay(dts)
    for doublings in (3, 4):
        (p_d, q_d), _, _, out_d = model.advance(state, i0, dts, doublings=doublings)
        in_range = np.abs(i0) * _np(s_end) ** 2 <= 4.0**doublings
        assert 0 < in_range.sum() < len(v0)
        np.testing.assert_array_equal(np.asarray(out_d), ~in_range)
        v_d = _np(model.voltage_from_state((p_d, q_d)))
        np.testing.assert_allclose(v_d[in_range], v_end[in_range], rtol=1e-9, atol=1e-9)


@pytest.mark.parametrize("tau", TAUS)
def test_qif_advance_matches_flow_and_ode(tau):
    """advance == flow before the first spike; after spikes == the ODE with resets."""
    model = _Jitted(QIF(tau=tau))
    rows = []
    for regime, v0, i0 in qif_cases(seed=21 + int(100 * tau), n=2):
        t1 = qif_first_spike(v0, i0, tau, 4.0 * tau)
        dt = 0.6 * min(t1, 3.0 * tau)
        rows.append((v0, i0, dt))
        if np.isfinite(t1):  # also an interval that holds the spike
            rows.append((v0, i0, t1 + 0.3 * tau))
    v0, i0, dt = (np.array(c) for c in zip(*rows))
    state, i_end, maybe_spiked, out_of_range = model.advance(model.state_from_voltage(v0), i0, dt, doublings=6)
    assert not np.any(np.asarray(out_of_range))
    v_adv = _np(model.voltage_from_state(state))
    offsets, count = model.spikes_in_interval(model.state_from_voltage(v0), i0, dt, 4)
    count = np.asarray(count)
    for k in range(len(v0)):
        v_ref, i_ref, spikes = qif_reference(v0[k], i0[k], tau, [dt[k]])
        assert count[k] == len(spikes), (v0[k], i0[k], dt[k], count[k], spikes)
        if len(spikes):
            assert maybe_spiked[k]
            np.testing.assert_allclose(_np(offsets)[k, : len(spikes)], spikes, rtol=1e-8, atol=1e-12)
        np.testing.assert_allclose(v_adv[k], v_ref[0], rtol=1e-8, atol=1e-10, err_msg=f"{v0[k]} {i0[k]} {dt[k]}")
        np.testing.assert_allclose(_np(i_end)[k], i_ref[0], rtol=1e-9, atol=1e-15)
    quiet = count == 0
    np.testing.assert_allclose(v_adv[quiet], _np(model.flow(v0, i0, dt)[0])[quiet], rtol=1e-9, atol=1e-12)


def test_qif_advance_semigroup_and_reset_state():
    """Advancing in pieces equals one advance, across several spikes."""
    model = _Jitted(QIF(tau=0.8))
    v0 = jnp.array([-jnp.inf, -1.0, 0.9, 2.0])
    i0 = jnp.array([200.0, 50.0, -1e-5, 7.0])
    state = model.state_from_voltage(v0)
    whole, i_whole, _, out = model.advance(state, i0, 1.3, doublings=5)
    assert not np.any(np.asarray(out))
    s, i = state, i0
    for dt in (0.1, 0.45, 0.05, 0.7):
        s, i, _, _ = model.advance(s, i, dt, doublings=5)
    np.testing.assert_allclose(_np(model.voltage_from_state(s)), _np(model.voltage_from_state(whole)), rtol=1e-9)
    np.testing.assert_allclose(_np(i), _np(i_whole), rtol=1e-12)
    # the reset state round trip; nothing happens in an empty interval
    assert float(model.voltage_from_state(model.state_from_voltage(-jnp.inf))) == -np.inf
    reset = model.state_from_voltage(jnp.array(-jnp.inf))
    offsets, count = model.spikes_in_interval(reset, 1.0, 0.0, 3)
    assert int(count) == 0 and np.all(np.isinf(_np(offsets)))
    same, _, spiked, _ = model.advance(reset, 1.0, 0.0)
    assert float(model.voltage_from_state(same)) == -np.inf and not bool(spiked)


@pytest.mark.parametrize("tau,v_th", [(1.0, 1.0), (0.37, 0.8)])
def test_lif_spikes_in_interval_and_advance(tau, v_th):
    model = LIF(tau=tau, v_th=v_th)  # eager: the jitted max_spikes loop compiles slowly
    v0 = np.array([0.0, 0.0, 0.5, 0.0, 0.9, -1.0, 0.0, 0.5, 0.0, -0.5]) * v_th  # below threshold
    i0 = np.array([20.0, 30.0, 35.0, 50.0, 12.0, 40.0, 2.0, 0.5, 3.0, -1.0])
    dts = np.array([2.0, 3.0, 1.0, 2.0, 1.0, 3.0, 1.0, 1.0, 0.5, 1.0]) * tau
    refs = [lif_reference(v0[k], i0[k], tau, v_th, [dts[k]]) for k in range(len(v0))]
    n_true = np.array([len(r[2]) for r in refs])
    assert (n_true >= 2).sum() >= 4 and (n_true == 0).sum() >= 2
    for max_spikes in (1, 3, 20):
        offsets, count = model.spikes_in_interval(model.state_from_voltage(v0), i0, dts, max_spikes)
        offsets, count = _np(offsets), np.asarray(count)
        assert offsets.shape == (len(v0), max_spikes)
        (v_end,), i_end, spiked, range_overflow = model.advance(model.state_from_voltage(v0), i0, dts, max_spikes)
        v_end = _np(v_end)
        assert not np.any(np.asarray(range_overflow))
        np.testing.assert_array_equal(np.asarray(spiked), n_true > 0)
        # count: exact within the budget, one more than the budget on overflow
        np.testing.assert_array_equal(count, np.minimum(n_true, max_spikes + 1))
        for k, (v_ref, i_ref, spikes) in enumerate(refs):
            kept = min(len(spikes), max_spikes)
            np.testing.assert_allclose(offsets[k, :kept], spikes[:kept], rtol=1e-9, atol=1e-12 * tau, err_msg=str(k))
            assert np.all(np.isinf(offsets[k, kept:]))
            if len(spikes) <= max_spikes:
                np.testing.assert_allclose(v_end[k], v_ref[0], rtol=1e-8, atol=1e-11, err_msg=str(k))
            np.testing.assert_allclose(_np(i_end)[k], i_ref[0], rtol=1e-9)


# ---------------------------------------------------------------------------------
# 4. gradients
# ---------------------------------------------------------------------------------
def _flow_v(model, v, i, dt):
    return model.flow(v, i, dt)[0]


def _flow_i(model, v, i, dt):
    return model.flow(v, i, dt)[1]


def _time_to_spike(model, v, i, dt):
    return model.time_to_spike(v, i)


def _simulator_outputs(model, v, i, dt):
    """A scalar mixing everything the event simulator uses."""
    state = model.state_from_voltage(v)
    end, i_end, _, _ = model.advance(state, i, dt, doublings=6)
    offsets, _ = model.spikes_in_interval(state, i, dt, 3)
    return sum(end) + i_end + jnp.sum(jnp.where(jnp.isfinite(offsets), offsets, 0.0), -1)


@functools.partial(jax.jit, static_argnums=(0, 1))
def _grads(fun, model, v, i, dt):
    """Elementwise ``(d fun / dv, d fun / di)`` of ``fun(model, v, i, dt)``."""
    return jax.vmap(jax.grad(functools.partial(fun, model), argnums=(0, 1)))(v, i, dt)


@functools.partial(jax.jit, static_argnums=(0, 1))
def _values(fun, model, v, i, dt):
    return fun(model, v, i, dt)


def _central_differences(fun, model, v, i, dt, rel_step=1e-6):
    model = _unwrap(model)
    hv = rel_step * np.maximum(1.0, np.abs(v))
    hi = rel_step * np.maximum(1.0, np.abs(i))
    dv = (_np(_values(fun, model, v + hv, i, dt)) - _np(_values(fun, model, v - hv, i, dt))) / (2 * hv)
    di = (_np(_values(fun, model, v, i + hi, dt)) - _np(_values(fun, model, v, i - hi, dt))) / (2 * hi)
    return dv, di


@functools.partial(jax.jit, static_argnums=(0, 1))
def _many_grads(funs, model, v, i, dt):
    return [jax.vmap(jax.grad(functools.partial(f, model), argnums=(0, 1)))(v, i, dt) for f in funs]


def _assert_finite_grads(funs, model, v, i, dt):
    """Gradients of every function in ``funs`` finite (one compilation for all)."""
    for fun, (gv, gi) in zip(funs, _many_grads(funs, _unwrap(model), v, i, dt)):
        bad = ~(np.isfinite(_np(gv)) & np.isfinite(_np(gi)))
        assert not bad.any(), (fun.__name__, list(zip(v[bad], i[bad], dt[bad]))[:10])


def _assert_grads_match(fun, model, v, i, dt):
    model = _unwrap(model)
    gv, gi = (_np(g) for g in _grads(fun, model, v, i, dt))
    dv, di = _central_differences(fun, model, v, i, dt)
    for name, g, fd in (("d/dv", gv, dv), ("d/di", gi, di)):
        err = np.abs(g - fd) / np.maximum(np.abs(fd), 1e-6)
        k = np.argmax(err)
        assert err[k] <= 1e-6, (fun.__name__, name, v[k], i[k], dt[k], g[k], fd[k])


def _product(*axes):
    return tuple(np.ascontiguousarray(a.ravel()) for a in np.meshgrid(*axes, indexing="ij"))


@pytest.mark.parametrize("tau", [0.37])  # tau only rescales dt; one value keeps compilations few
def test_qif_gradients_finite_on_grid(tau):
    model = _Jitted(QIF(tau=tau))
    currents = [-50.0, -5.0, -1e-4 * (1 + 1e-9), -1e-4, -1e-4 * (1 - 1e-9), -1e-6, 0.0, 1e-6,
                1e-4 * (1 - 1e-9), 1e-4, 1e-4 * (1 + 1e-9), 0.25, PI2_4, 3.0, 50.0]  # fmt: skip
    volts = [-np.inf, -1e200, -1e8, -1e3, -2.0, 0.0, 0.3, 0.5, 1.0, 1.7, 1e3, 1e8, 1e100, 1e200, np.inf]
    dts = np.array([0.0, 1e-3, 0.3, 1.0, 3.0]) * tau
    rows = [(vv, cur, dt) for cur in currents for vv in volts + [qif_separatrix(cur)] for dt in dts]
    # known limitation: d flow / dv at dt = 0 for |V| > 1e154 (V = p / q with q**2
    # underflowing to 0) is not finite; V is returned unchanged there anyway
    rows = [r for r in rows if not (r[2] == 0 and np.isfinite(r[0]) and abs(r[0]) > 1e154)]
    v, i, dt = (np.array(c) for c in zip(*rows))
    _assert_finite_grads((_flow_v, _flow_i, _time_to_spike, _simulator_outputs), model, v, i, dt)


def test_qif_huge_voltage_float32():
    """|V| beyond sqrt(float max) must not turn the state into (0, 0) (nan gradients)."""
    model = QIF()

    @jax.jit
    def run(v, i):
        grads = jax.vmap(jax.grad(model.time_to_spike, argnums=(0, 1)))(v, i)
        return model.state_from_voltage(v), model.time_to_spike(v, i), grads

    v = jnp.array([1e19, 1e20, 1e30, -1e30], jnp.float32)
    (p, q), t, (gv, gi) = run(v, jnp.ones(4, jnp.float32))
    np.testing.assert_allclose(np.asarray(p) ** 2 + np.asarray(q) ** 2, 1.0, rtol=1e-6)
    assert t.dtype == jnp.float32 and np.all(np.asarray(t)[:3] < 1e-18) and np.isinf(np.asarray(t)[3])
    assert np.all(np.isfinite(np.asarray(gv)) & np.isfinite(np.asarray(gi)))


def test_lif_gradients_finite_on_grid():
    model = _Jitted(LIF(tau=0.6, v_th=1.0))
    volts = np.array([-1e100, -1e3, -2.0, 0.0, 0.5, 1.0 - 1e-12, 1.0, 1.0 + 1e-12, 3.0, 1e100])
    currents = np.array([-5.0, -1e-4, -1e-6, 0.0, 1e-6, 1e-4, 0.5, 1.0, 4.0, 4.0 * (1 + 1e-12), 50.0])
    v, i, dt = _product(volts, currents, np.array([0.0, 0.1, 2.0]))
    _assert_finite_grads((_flow_v, _flow_i, _time_to_spike, _simulator_outputs), model, v, i, dt)


@pytest.mark.parametrize("tau", [0.37])
def test_qif_gradients_match_finite_differences(tau):
    model = _Jitted(QIF(tau=tau))
    rng = np.random.default_rng(5)
    # smooth points: random states, I = 0 and the series-branch boundaries included
    # (the closed forms are analytic in I there, so the derivative must not jump)
    i = np.concatenate([rng.uniform(-6, 8, 40), [0.0, 1e-4, -1e-4, 1e-6, -3e-5, 2e-4, -2e-4, 30.0, 4.0, 100.0]])
    v = np.concatenate([rng.uniform(-3, 3, 40), [0.4, 1.2, 1.5, -0.5, 1.3, 1.1, 2.0, -1e3, -1e5, -50.0]])
    t_spike = _np(model.time_to_spike(v, i))
    dt = np.minimum(0.6 * t_spike, 2.0 * tau)  # well before the next spike
    _assert_grads_match(_flow_v, model, v, i, dt)
    _assert_grads_match(_flow_i, model, v, i, dt)
    # time to spike where it fires, away from the separatrix (the firing boundary)
    fires = np.isfinite(t_spike) & (t_spike < 4.0 * tau)
    assert fires.sum() > 15
    _assert_grads_match(_time_to_spike, model, v[fires], i[fires], dt[fires])


def test_lif_gradients_match_finite_differences():
    model = _Jitted(LIF(tau=0.7, v_th=1.0))
    rng = np.random.default_rng(9)
    v = rng.uniform(-2, 0.95, 60)
    i = rng.uniform(-3, 15, 60)
    i[:3] = [0.0, 1e-4, -1e-6]
    dt = rng.uniform(0, 2, 60)
    _assert_grads_match(_flow_v, model, v, i, dt)
    _assert_grads_match(_flow_i, model, v, i, dt)
    t = _np(model.time_to_spike(v, i))
    disc = (v + i) ** 2 - 4 * i * model.v_th
    fires = np.isfinite(t) & (disc > 0.05)  # away from the grazing (tangency) boundary
    assert fires.sum() > 15
    _assert_grads_match(_time_to_spike, model, v[fires], i[fires], dt[fires])


# ---------------------------------------------------------------------------------
# 5. QIF pseudodynamics
# ---------------------------------------------------------------------------------
@pytest.mark.parametrize("tau", TAUS)
def test_qif_pseudospike_time_and_period(tau):
    model = _Jitted(QIF(tau=tau))
    v0 = np.array([-np.inf, -1e4, -2.0, 0.0, 0.5, 1.0, 3.0, 1e3])
    drive = np.array([0.05, 1.0, 0.3, 2.0, 0.01, 5.0, 0.7, 0.2])
    dt, period = model.time_to_pseudospike(model.state_from_voltage(v0), drive)
    dt, period = _np(dt), _np(period)
    np.testing.assert_allclose(period, np.pi * tau / np.sqrt(drive), rtol=1e-14)
    for k in range(len(v0)):
        # tau dV/dt = (V - 1/2)^2 + drive = V (V - 1) + (1/4 + drive), constant
        horizon = dt[k] + 1.5 * period[k]
        _, _, spikes = qif_reference(v0[k], 0.25 + drive[k], tau, [horizon], decay=False)
        assert len(spikes) >= 2, k
        np.testing.assert_allclose(dt[k], spikes[0], rtol=1e-9, err_msg=str(k))
        np.testing.assert_allclose(spikes[1] - spikes[0], period[k], rtol=1e-9, err_msg=str(k))
    # from a mid-trial state reached by advance (q > 0, arbitrary phase)
    state, _, _, _ = model.advance(model.state_from_voltage(jnp.array([0.2, -1.0])), jnp.array([3.0, 40.0]), 0.9 * tau)
    v_mid = _np(model.voltage_from_state(state))
    dt, _ = model.time_to_pseudospike(state, jnp.array([0.4, 0.4]))
    for k in range(2):
        _, _, spikes = qif_reference(v_mid[k], 0.65, tau, [20 * tau], decay=False)
        np.testing.assert_allclose(_np(dt)[k], spikes[0], rtol=1e-8)


def test_pseudo_drive_is_positive_and_smooth():
    model = QIF()

    @jax.jit
    def drive_and_grads(x, v, d):
        g_drive = jax.vmap(jax.grad(model.pseudo_drive))(x)

        def first_pseudospike(v, d):
            return model.time_to_pseudospike(model.state_from_voltage(v), d)[0]

        g_v, g_d = jax.vmap(jax.grad(first_pseudospike, argnums=(0, 1)))(v, d)
        return model.pseudo_drive(x), g_drive, g_v, g_d

    x = jnp.linspace(-50.0, 50.0, 101)
    v = jnp.array([-jnp.inf, -1e8, 0.0, 0.5, 1.0, 1e8, 1e200])
    drive, g_drive, g_v, g_d = (_np(a) for a in drive_and_grads(x, v, jnp.full(7, 0.3)))
    assert np.all(drive > 0) and np.all(np.diff(drive) > 0)
    assert np.all(np.isfinite(g_drive)) and np.all(g_drive >= 0)
    assert np.all(np.isfinite(g_v)) and np.all(np.isfinite(g_d)) and np.all(g_d < 0)


def test_lif_has_no_pseudodynamics():
    model = LIF()
    assert not model.has_pseudodynamics and QIF().has_pseudodynamics
    with pytest.raises(TypeError):
        model.pseudo_drive(jnp.zeros(2))
    with pytest.raises(TypeError):
        model.time_to_pseudospike(model.state_from_voltage(jnp.zeros(2)), jnp.ones(2))


# ---------------------------------------------------------------------------------
# 6. validation and lookup
# ---------------------------------------------------------------------------------
@pytest.mark.parametrize(
    "make",
    [
        lambda: QIF(tau=0.0),
        lambda: QIF(tau=-1.0),
        lambda: QIF(tau=float("nan")),
        lambda: LIF(tau=0.0),
        lambda: LIF(v_th=-1.0),
        lambda: LIF(v_th=0.0),
    ],
)
def test_invalid_parameters_raise(make):
    with pytest.raises(ValueError):
        make()


def test_get_neuron():
    with pytest.raises(ValueError) as err:
        get_neuron("bogus")
    assert "qif" in str(err.value) and "lif" in str(err.value) and "bogus" in str(err.value)
    assert isinstance(get_neuron("QIF", tau=0.5), QIF) and get_neuron("qif", tau=0.5).tau == 0.5
    lif = get_neuron("lif", v_th=0.7)
    assert isinstance(lif, LIF) and lif.v_th == 0.7
    assert get_neuron(lif) is lif
    assert get_neuron(lif, tau=2.0) == LIF(tau=2.0, v_th=0.7)
    with pytest.raises(ValueError):
        get_neuron(lif, v_th=-1.0)
