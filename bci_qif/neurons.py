r"""Neuron models with closed-form dynamics between input events.

Both models share the current-based synapse of the papers (time constant
:math:`\tau_s = \tau / 2`): between events the synaptic current decays as
:math:`I(t) = I_0 e^{-2t/\tau}` and an input event of weight ``w`` adds ``w`` to it.

QIF
    :math:`\tau \dot V = V (V - 1) + I`. A spike is :math:`V \to +\infty`, followed by a
    reset to :math:`-\infty`.
LIF
    :math:`\tau \dot V = -V + I`, spike at :math:`V = v_{th}`, reset to 0.

Every function is elementwise on jnp arrays and differentiable; the branches are
written so that their *derivatives* stay finite too (the unused side of every
``jnp.where`` sees harmless inputs), because one non-finite gradient poisons every
weight of a network.

How the QIF closed form works
-----------------------------
With :math:`x = e^{-t/\tau}`, :math:`s = 1 - x` and :math:`V = x w`, the QIF equation
with a decaying current becomes the constant-coefficient Riccati equation
:math:`dw/ds = w^2 + I_0` on :math:`s \in [0, 1)`. It is linearised by :math:`w = -y'/y`
with :math:`y'' + I_0 y = 0`, whose solutions :math:`C(s)` (cos/cosh) and :math:`S(s)`
(sin/sinh) are entire functions of :math:`I_0`. The flow is therefore a Moebius map of
the projective point :math:`V = p / q`:

.. math:: (p, q) \mapsto (x (p C + q I_0 S),\; q C - p S).

On the projective line :math:`+\infty` and :math:`-\infty` are the same point, so the
QIF spike-and-reset is *continuous* in this representation: it is the theta neuron.
The simulator keeps QIF states as unit vectors ``(p, q)`` with ``q >= 0``; a spike is
the passage of ``q`` through zero.
"""

from __future__ import annotations

import dataclasses
import functools
import math

import jax
import jax.numpy as jnp

__all__ = ["NeuronModel", "QIF", "LIF", "get_neuron"]

# |I| below this uses the Taylor series of C and S (no division by sqrt(|I|)).
_SMALL_CURRENT = 1e-4

# Taylor coefficients of C = sum u^n/(2n)! and S/s = sum u^n/(2n+1)! with u = -I s^2;
# nine terms keep the truncation error below 1e-14 for |u| <= 1.
_COS_SERIES = tuple(1.0 / math.factorial(2 * n) for n in range(9))
_SIN_SERIES = tuple(1.0 / math.factorial(2 * n + 1) for n in range(9))
# float32 needs only six: the first omitted term, 1/12!, is 2e-9, below float32 rounding (6e-8).
_FLOAT32_TERMS = 6


def _series_terms(dtype):
    """Taylor terms needed for rounding-level accuracy at ``|u| <= 1`` in ``dtype``."""
    return _FLOAT32_TERMS if jnp.finfo(dtype).bits <= 32 else len(_COS_SERIES)


def _horner(coefficients, u):
    """Evaluate ``sum_n coefficients[n] * u**n``."""
    total = coefficients[-1]
    for c in reversed(coefficients[:-1]):
        total = c + u * total
    return total


def _safe(cond, x, fill):
    """Return ``x`` where ``cond`` holds and a harmless ``fill`` elsewhere.

    Used on *inputs* of a branch so that the branch never evaluates (nor
    differentiates) a function outside its domain on elements it does not own.
    """
    return jnp.where(cond, x, fill)


def _softplus(x, softness):
    """Softplus with adjustable softness: ``softness * log(1 + exp(x / softness))``."""
    return softness * jax.nn.softplus(x / softness)


def _basis_polynomial(i, s, doublings):
    """``C(s), S(s)`` of ``y'' + I y = 0`` without transcendental functions.

    A Taylor series at ``s / 2**doublings`` followed by ``doublings`` steps of
    ``C(2s) = C^2 - I S^2, S(2s) = 2 S C``. Accurate to rounding while
    ``|I| s**2 <= 4**doublings`` (``in_range``); entire in ``I``, so there are no
    branches and the derivatives are finite everywhere. From the fifth doubling on
    both are divided by ``max(1, |C|)`` (a positive factor, irrelevant for the
    projective state) so that strong negative currents cannot overflow.
    """
    scale = 0.5**doublings
    s_r = s * scale
    u = -i * s_r * s_r
    in_range = jnp.abs(u) <= 1.0
    terms = _series_terms(jnp.result_type(u))
    C = _horner(_COS_SERIES[:terms], u)
    S = s_r * _horner(_SIN_SERIES[:terms], u)
    for step in range(doublings):
        C, S = C * C - i * S * S, 2.0 * S * C
        if step >= 4:  # |C| <= cosh(2**step) fits float32 up to here
            norm = jnp.maximum(1.0, jnp.abs(C))
            C, S = C / norm, S / norm
    return C, S, in_range


def _moebius_step(state, i, x, s, doublings):
    """QIF state after one event-free interval (``x = exp(-dt/tau)``, ``s = 1 - x``).

    Returns the new unit state ``(p, q)`` with ``q >= 0``, the ``crossing`` flags of
    :meth:`QIF.advance` and ``in_range``.
    """
    p, q = state
    C, S, in_range = _basis_polynomial(i, s, doublings)
    p1 = x * (p * C + q * i * S)
    q1 = q * C - p * S
    # Keep q >= 0; q == 0 with p > 0 is the spike itself, stored as its reset (-1, 0).
    flip = (q1 < 0) | ((q1 == 0) & (p1 > 0))
    sign = jnp.where(flip, -1.0, 1.0)
    norm2 = p1 * p1 + q1 * q1
    inv_norm = sign * jax.lax.rsqrt(_safe(norm2 > 0, norm2, 1.0))
    # Two or more spikes need the phase c*s to advance by at least pi.
    strong = i * s * s >= jnp.pi**2
    crossing = flip.astype(jnp.int8) + 2 * strong.astype(jnp.int8)
    return (p1 * inv_norm, q1 * inv_norm), crossing, in_range


@functools.partial(jax.custom_vjp, nondiff_argnums=(0,))
def _layer_scan(doublings, start, x, s, kicks):
    """Scan of :func:`_moebius_step` over intervals, with a hand-written VJP.

    ``start`` is ``(p, q, I)`` before the first interval, ``x`` and ``s`` are
    ``(n_intervals,)`` and ``kicks`` ``(n_intervals, n)``. Returns ``(p, q, I)`` at every
    interval start (each ``(n_intervals, n)``), the int8 flags (bits 0-1: crossing, bit 2:
    out of range) and ``(p, q, I)`` after the last interval.
    """
    return _layer_scan_forward(doublings, start, x, s, kicks)


def _layer_scan_forward(doublings, start, x, s, kicks):
    def step(z, inputs):
        p, q, i = z
        x_k, s_k, kick = inputs
        (p1, q1), crossing, in_range = _moebius_step((p, q), i, x_k, s_k, doublings)
        flags = crossing + 4 * (~in_range).astype(jnp.int8)
        return (p1, q1, i * x_k * x_k + kick), (p, q, i, flags)

    end, (p, q, i, flags) = jax.lax.scan(step, start, (x, s, kicks))
    return (p, q, i), flags, end


def _layer_scan_fwd(doublings, start, x, s, kicks):
    states, flags, end = _layer_scan_forward(doublings, start, x, s, kicks)
    return (states, flags, end), (states, end, x, s)


def _layer_scan_bwd(doublings, residuals, cotangents):
    r"""Reverse scan of the step's transposed Jacobian.

    One step maps ``(p, q, I)`` to ``n = v / |v|`` (sign chosen so that ``q >= 0``),
    ``v = M (p, q)`` with ``M = [[x C, x I S], [-S, C]]``, and ``I' = I x^2 + kick``.
    The derivatives of ``C, S`` in ``I`` are the forward-mode derivatives of the same
    polynomial (exact for the computed flow); in ``s`` they follow from the ODE
    ``C' = -I S, S' = C``. A positive rescaling of ``C, S`` (the doublings' overflow
    guard) changes ``v`` only along ``v``, which the normalisation projects out.
    """
    (p, q, i), end, x, s = residuals
    (g_p_out, g_q_out, g_i_out), _, g_end = cotangents

    # The state after an interval (n_p, n_q) is the next interval's start, which the
    # reverse scan has just visited: it is carried along (starting from ``end``) rather
    # than built as shifted copies of p and q, whose concatenation XLA transposed to the
    # vmapped trial axis and back.
    def step(carry, inputs):
        g, (n_p, n_q) = carry
        p, q, i, x_k, s_k, g_p_out, g_q_out, g_i_out = inputs
        g_np, g_nq, g_i1 = g
        (C, S), (dC, dS) = jax.jvp(lambda c: _basis_polynomial(c, s_k, doublings)[:2], (i,), (jnp.ones_like(i),))
        pc_qis = p * C + q * i * S
        v_p, v_q = x_k * pc_qis, q * C - p * S
        # n = r v with r = +-1/|v|; taking the sign from the stored n (not from
        # recomputing the flip) keeps the two passes consistent at q = 0.
        norm2 = v_p * v_p + v_q * v_q
        r = (n_p * v_p + n_q * v_q) / _safe(norm2 > 0, norm2, 1.0)
        along = g_np * n_p + g_nq * n_q
        g_vp, g_vq = r * (g_np - along * n_p), r * (g_nq - along * n_q)
        g_C = g_vp * x_k * p + g_vq * q
        g_S = g_vp * x_k * q * i - g_vq * p
        g_p = g_vp * x_k * C - g_vq * S + g_p_out
        g_q = g_vp * x_k * i * S + g_vq * C + g_q_out
        g_i = g_vp * x_k * q * S + g_C * dC + g_S * dS + g_i1 * x_k * x_k + g_i_out
        g_x = g_vp * pc_qis + 2.0 * g_i1 * i * x_k
        g_s = g_S * C - g_C * i * S
        return ((g_p, g_q, g_i), (p, q)), (g_x, g_s, g_i1)

    (g_start, _), (g_x, g_s, g_kicks) = jax.lax.scan(
        step, (g_end, end[:2]), (p, q, i, x, s, g_p_out, g_q_out, g_i_out), reverse=True
    )
    return g_start, g_x.sum(-1), g_s.sum(-1), g_kicks


_layer_scan.defvjp(_layer_scan_fwd, _layer_scan_bwd)


@dataclasses.dataclass(frozen=True)
class NeuronModel:
    """Interface shared by the neuron models.

    Public, user-facing functions take and return membrane voltages:
    :meth:`flow` and :meth:`time_to_spike`. The event simulator works on an
    internal *state* (a tuple of arrays) through :meth:`state_from_voltage`,
    :meth:`advance` and :meth:`spikes_in_interval`, so that each model can pick
    the representation in which its dynamics are smooth.
    """

    tau: float = 1.0

    name = "neuron"
    has_pseudodynamics = False

    def __post_init__(self):
        if not self.tau > 0:
            raise ValueError(f"tau must be positive, got {self.tau!r}")

    # --- shared pieces -------------------------------------------------------------
    def decay(self, dt):
        """Return ``(x, s)`` with ``x = exp(-dt / tau)`` and ``s = 1 - x`` (accurately)."""
        a = -jnp.asarray(dt) / self.tau
        return jnp.exp(a), -jnp.expm1(a)

    def flow_current(self, i, dt):
        """Synaptic current after ``dt`` without events (``tau_s = tau / 2``)."""
        return i * jnp.exp(-2.0 * jnp.asarray(dt) / self.tau)

    def rest_state(self, shape, dtype):
        """Internal state of neurons at rest (V = 0)."""
        return self.state_from_voltage(jnp.zeros(shape, dtype))


@dataclasses.dataclass(frozen=True)
class QIF(NeuronModel):
    r"""Quadratic integrate-and-fire neuron, :math:`\tau \dot V = V(V-1) + I`.

    Parameters
    ----------
    tau : float
        Membrane time constant in model time units; the synaptic time constant is
        ``tau / 2``.
    pseudo_softness : float
        Softness of the softplus that turns the rate-network pre-activation into the
        suprathreshold pseudodynamics drive (larger = gentler).
    """

    pseudo_softness: float = 2.0

    name = "qif"
    has_pseudodynamics = True

    # --- representation ------------------------------------------------------------
    def state_from_voltage(self, v):
        """Unit vector ``(p, q)`` with ``q >= 0`` and ``V = p / q`` (``q = 0``: V = -inf)."""
        v = jnp.asarray(v)
        finite = jnp.isfinite(v)
        v_safe = _safe(finite, v, 0.0)
        norm = jnp.hypot(1.0, v_safe)  # not sqrt(1 + v*v): v*v overflows for |v| > 1e154 (1e19 in float32)
        # +inf is the spike, which is the same point as the reset -inf: store (-1, 0).
        p = jnp.where(finite, v_safe / norm, -1.0)
        q = jnp.where(finite, 1.0 / norm, 0.0)
        return (p, q)

    def voltage_from_state(self, state):
        """Membrane voltage ``p / q`` (``-inf`` just after a reset)."""
        p, q = state
        q_safe = _safe(q > 0, q, 1.0)
        return jnp.where(q > 0, p / q_safe, -jnp.inf)

    # --- closed forms --------------------------------------------------------------
    def _riccati_basis(self, i, s):
        """Solutions ``C(s), S(s)`` of ``y'' + I y = 0`` (up to a common positive factor).

        ``C(0) = 1, C'(0) = 0, S(0) = 0, S'(0) = 1``. Three branches: trigonometric
        (I > 0), hyperbolic divided by cosh to avoid overflow (I < 0) and a Taylor
        series around I = 0, which keeps the derivative in I exact and finite there.
        """
        pos = i > _SMALL_CURRENT
        neg = i < -_SMALL_CURRENT
        small = ~(pos | neg)

        c_pos = jnp.sqrt(_safe(pos, i, 1.0))
        cs = c_pos * s
        C_pos, S_pos = jnp.cos(cs), jnp.sin(cs) / c_pos

        c_neg = jnp.sqrt(_safe(neg, -i, 1.0))
        S_neg = jnp.tanh(c_neg * s) / c_neg  # C_neg = 1 after dividing both by cosh

        u = -_safe(small, i, 0.0) * s * s
        C_small, S_small = _horner(_COS_SERIES, u), s * _horner(_SIN_SERIES, u)

        C = jnp.where(pos, C_pos, jnp.where(neg, 1.0, C_small))
        S = jnp.where(pos, S_pos, jnp.where(neg, S_neg, S_small))
        return C, S

    def _riccati_basis_polynomial(self, i, s, doublings):
        """``C(s), S(s)`` without transcendental functions (see :func:`_basis_polynomial`)."""
        return _basis_polynomial(i, s, doublings)

    def advance(self, state, i, dt, max_spikes=1, doublings=3):
        """Advance the internal state over an event-free interval of length ``dt``.

        Spikes inside the interval need no special treatment: the Moebius flow passes
        through ``V = +inf = -inf`` continuously, so the end state is exact for any
        number of spikes (``max_spikes`` is not needed).

        Returns
        -------
        state, i
            State and current at the end of the interval.
        crossing : int8 array
            Non-zero where the interval may hold spikes: bit 0 set when ``q`` changed
            sign (an odd number of spikes), bit 1 when the drive is strong enough for
            two or more. :meth:`spikes_in_interval` gives the exact count and times.
        overflow : bool array
            True where ``|I| s**2`` exceeded the range of ``doublings``.
        """
        x, s = self.decay(dt)
        new_state, crossing, in_range = _moebius_step(state, i, x, s, doublings)
        return new_state, i * x * x, crossing, ~in_range

    def advance_layer(self, dts, kicks, max_spikes=1, doublings=3):
        """Advance a whole layer from rest through ``len(dts)`` intervals (one ``lax.scan``).

        Interval ``k`` lasts ``dts[k]`` and ends with the current kicks ``kicks[k]``
        (shape ``(n_intervals, n_neurons)``). Same result as calling :meth:`advance`
        interval by interval, but differentiated by a hand-written backward pass
        (:func:`_layer_scan`): autodiff of the scan replays the Taylor series and
        doublings through every intermediate, which was the slowest part of training.

        Returns
        -------
        states : tuple of (n_intervals, n) arrays
            State at the start of every interval.
        currents : (n_intervals, n) array
            Current at the start of every interval.
        crossing : (n_intervals, n) int8 array
            As returned by :meth:`advance` for each interval.
        range_overflow : (n_intervals, n) bool array
        state_T, current_T
            State and current after the last interval (its kick included).
        """
        dtype = kicks.dtype
        x, s = self.decay(jnp.asarray(dts, dtype))
        start = self.rest_state(kicks.shape[1:], dtype) + (jnp.zeros(kicks.shape[1:], dtype),)
        (p, q, i), flags, (p_T, q_T, i_T) = _layer_scan(doublings, start, x, s, kicks)
        return (p, q), i, flags & 3, (flags & 4) != 0, (p_T, q_T), i_T

    def _first_spike_s(self, state, i):
        """First spike in rescaled time ``s`` (``inf`` if none for any ``s``), and ``c``.

        Returns ``(s0, c_pos, pos)`` where ``c_pos = sqrt(I)`` on the I > 0 branch
        (later spikes follow every ``pi / c_pos`` in ``s``).
        """
        p, q = state
        pos = i > _SMALL_CURRENT
        neg = i < -_SMALL_CURRENT
        small = ~(pos | neg)

        # I > 0: y(s) = q cos(cs) - p sin(cs)/c first vanishes at atan2(cq, p) / c.
        c_pos = jnp.sqrt(_safe(pos, i, 1.0))
        s_pos = jnp.arctan2(c_pos * q, p) / c_pos

        # I < 0: one zero at atanh(cq/p)/c if p > c q; checked without dividing.
        c_neg = jnp.sqrt(_safe(neg, -i, 1.0))
        neg_fires = neg & (p > c_neg * q)
        ratio = _safe(neg_fires, c_neg * q / _safe(neg_fires, p, 1.0), 0.0)
        s_neg = jnp.arctanh(ratio) / c_neg

        # |I| small: s0 = r G(z), r = q/p, z = I r^2, G = atan(sqrt z)/sqrt z (series).
        # Only p > q/2 can fire before s = 1 (r < 2 keeps the series convergent).
        small_fires = small & (2.0 * p > q)
        r = _safe(small_fires, q / _safe(small_fires, p, 1.0), 0.0)
        z = _safe(small, i, 0.0) * r * r
        s_small = r * (1.0 + z * (-1.0 / 3 + z * (1.0 / 5 + z * (-1.0 / 7 + z / 9))))

        s0 = jnp.where(pos, s_pos, jnp.where(neg_fires, s_neg, jnp.where(small_fires, s_small, jnp.inf)))
        return s0, c_pos, pos

    def time_to_spike(self, v, i):
        """Time until the next spike from voltage ``v`` and current ``i`` (``inf`` if none).

        Parameters
        ----------
        v, i : array_like
            Membrane voltage and synaptic current (broadcast elementwise).

        Returns
        -------
        dt : jax.Array
            Time to the next spike, in the units of ``tau``.
        """
        v, i = jnp.asarray(v), jnp.asarray(i)
        v, i = jnp.broadcast_arrays(v, i)
        s0, _, _ = self._first_spike_s(self.state_from_voltage(v), i)
        return self._s_to_dt(s0)

    def _s_to_dt(self, s):
        fires = s < 1.0
        return jnp.where(fires, -self.tau * jnp.log1p(-_safe(fires, s, 0.0)), jnp.inf)

    def flow(self, v, i, dt):
        """Voltage and current after ``dt`` without input events.

        Valid for ``dt`` up to :meth:`time_to_spike` (at that time ``V = +inf``).
        Beyond it the returned voltage already includes the reset (theta-neuron
        continuation).

        Parameters
        ----------
        v, i : array_like
            Initial voltage and synaptic current.
        dt : array_like
            Elapsed time (>= 0).

        Returns
        -------
        v, i : jax.Array
        """
        v, i, dt = jnp.broadcast_arrays(jnp.asarray(v), jnp.asarray(i), jnp.asarray(dt))
        p, q = self.state_from_voltage(v)
        x, s = self.decay(dt)
        C, S = self._riccati_basis(i, s)
        p1 = x * (p * C + q * i * S)
        q1 = q * C - p * S
        q_safe = _safe(q1 != 0, q1, 1.0)
        v1 = jnp.where(q1 != 0, p1 / q_safe, jnp.where(p1 > 0, jnp.inf, -jnp.inf))  # dt = 0 from -inf: -inf
        return v1, i * x * x

    def spikes_in_interval(self, state, i, dt, max_spikes, odd=None):
        """Spike-time offsets inside an event-free interval of length ``dt``.

        ``odd`` (optional, bool) is the parity of the spike count seen by
        :meth:`advance` (bit 0 of its ``crossing``). A spike within rounding of the
        interval end may be counted by one computation and not the other; with
        ``odd`` given, the count is made to agree with the flow (a missing spike is
        placed at the interval end, a surplus last spike is left to the next
        interval), so that no spike is lost or counted twice.

        Returns
        -------
        offsets : jax.Array, shape ``state.shape + (max_spikes,)``
            Time of each spike after the interval start (``inf`` where none).
        count : jax.Array of int
            Number of spikes in the interval (may exceed ``max_spikes``).
        """
        s0, c_pos, pos = self._first_spike_s(state, i)
        _, s_end = self.decay(dt)
        k = jnp.arange(max_spikes, dtype=s0.dtype)
        period = jnp.where(pos, jnp.pi / c_pos, 2.0)  # not inf: 0 * inf = nan at k = 0; 2 > s_end
        s_k = s0[..., None] + k * period[..., None]
        valid = s_k <= s_end[..., None]
        # Count all spikes, also beyond max_spikes, to report budget overflows.
        n_pos = jnp.floor((_safe(pos, s_end, 0.0) - _safe(s0 <= s_end, s0, 0.0)) / _safe(pos, period, 1.0)) + 1
        count = jnp.where(s0 <= s_end, jnp.where(pos, n_pos, 1.0), 0.0).astype(jnp.int32)
        offsets = jnp.where(valid, self._s_to_dt(_safe(valid, s_k, 0.0)), jnp.inf)
        if odd is not None:
            mismatch = (count % 2 == 1) != odd
            add_at_end = mismatch & odd
            count_fixed = count + jnp.where(mismatch, jnp.where(odd, 1, -1), 0)
            end = jnp.broadcast_to(jnp.asarray(dt, offsets.dtype), count.shape)[..., None]
            offsets = jnp.where(add_at_end[..., None] & (k == count[..., None]), end, offsets)
            offsets = jnp.where(k >= count_fixed[..., None], jnp.inf, offsets)
            count = count_fixed
        return offsets, count

    # --- pseudodynamics ------------------------------------------------------------
    def pseudo_drive(self, preactivation):
        """Suprathreshold pseudodynamics drive ``a**2 > 0`` from a rate pre-activation."""
        return _softplus(preactivation, self.pseudo_softness) + 1e-3

    def time_to_pseudospike(self, state, drive):
        r"""Time from ``state`` to the next pseudospike under constant drive.

        After the trial the neuron follows :math:`\tau \dot V = (V - 1/2)^2 + a^2`
        (a constant suprathreshold current ``1/4 + a**2``), period
        :math:`\Theta = \pi \tau / a`.

        Returns
        -------
        dt, period : jax.Array
        """
        p, q = state
        a = jnp.sqrt(drive)
        # (pi/2 - atan(u/a)) / a with u = V - 1/2 = (p - q/2)/q, smooth through q = 0.
        dt = self.tau * jnp.arctan2(a * q, p - 0.5 * q) / a
        return dt, jnp.pi * self.tau / a


@dataclasses.dataclass(frozen=True)
class LIF(NeuronModel):
    r"""Leaky integrate-and-fire neuron, :math:`\tau \dot V = -V + I`.

    Threshold ``v_th``, reset to 0. Between events
    :math:`V = (V_0 + I_0) x - I_0 x^2` with :math:`x = e^{-t/\tau}`, so threshold
    crossings are roots of a quadratic in ``x``. LIF has no pseudodynamics: a
    silent LIF neuron receives no gradient (the dead-neuron problem the QIF
    pseudodynamics avoid).

    Parameters
    ----------
    tau : float
        Membrane time constant (model time units).
    v_th : float
        Firing threshold (> 0).
    """

    v_th: float = 1.0

    name = "lif"
    has_pseudodynamics = False

    def __post_init__(self):
        super().__post_init__()
        if not self.v_th > 0:
            raise ValueError(f"v_th must be positive, got {self.v_th!r}")

    def state_from_voltage(self, v):
        return (jnp.asarray(v),)

    def voltage_from_state(self, state):
        return state[0]

    def _crossing(self, v, i):
        """First threshold crossing: ``(x, log x, fires)`` with ``x = exp(-t / tau)``.

        ``x`` is the largest root in (0, 1) of ``V(x) = v_th``. ``log x`` is computed
        from ``1 - x = 2 (v_th - v) / ((I - v) + sqrt(disc))``, which has no
        cancellation just below threshold. Where no crossing exists ``x = 0`` and
        ``log x = -inf``.
        """
        vi = v + i
        disc = vi * vi - 4.0 * i * self.v_th
        # Concave in x with V(0) = 0 < v_th and V(1) = v: a crossing needs I > 0, the
        # vertex (v + I) / 2I inside (0, 1) and a positive discriminant.
        fires = (i > 0) & (vi > 0) & (v < i) & (disc > 0) & (v < self.v_th)
        v_s, i_s = _safe(fires, v, 0.0), _safe(fires, i, 1.0)
        y = 2.0 * (self.v_th - v_s) / ((i_s - v_s) + jnp.sqrt(_safe(fires, disc, 1.0)))
        y = _safe(fires, y, 0.5)
        return jnp.where(fires, 1.0 - y, 0.0), jnp.where(fires, jnp.log1p(-y), -jnp.inf), fires

    def time_to_spike(self, v, i):
        """Time until ``V`` reaches ``v_th`` (``inf`` if it never does)."""
        v, i = jnp.broadcast_arrays(jnp.asarray(v), jnp.asarray(i))
        _, log_x, fires = self._crossing(v, i)
        return jnp.where(fires, -self.tau * _safe(fires, log_x, 0.0), jnp.inf)

    def flow(self, v, i, dt):
        """Voltage and current after ``dt`` without events or spikes (see :class:`QIF`)."""
        v, i, dt = jnp.broadcast_arrays(jnp.asarray(v), jnp.asarray(i), jnp.asarray(dt))
        x, _ = self.decay(dt)
        return (v + i) * x - i * x * x, i * x * x

    def _next_spike(self, v, i, log_x_start, log_x_end):
        """The next crossing before ``log_x_end``, and the reset it causes.

        ``v, i`` are the voltage and current at the last reset (or the interval start),
        ``log_x_start`` its ``log x``. Returns the updated ``(v, i, log_x_start)`` (unchanged
        where no spike) and ``spiked``. Once a neuron does not spike, calling this again
        changes nothing: a loop over it may stop early.
        """
        x_c, log_x_c, fires = self._crossing(v, i)
        log_x_abs = log_x_start + _safe(fires, log_x_c, 0.0)
        spiked = fires & (log_x_abs > log_x_end)
        x_c_safe = _safe(spiked, x_c, 1.0)
        # Restart from the reset V = 0 with the current at the spike time.
        i = jnp.where(spiked, i * x_c_safe * x_c_safe, i)
        v = jnp.where(spiked, jnp.zeros_like(v), v)
        log_x_start = jnp.where(spiked, log_x_abs, log_x_start)
        return (v, i, log_x_start), spiked

    def _interval(self, v, i, dt, max_spikes):
        """Crossings, resets and end voltage over an event-free interval.

        Handles up to ``max_spikes`` threshold crossings. Returns ``log x`` of each
        crossing (``x = exp(-offset / tau)``; ``-inf`` where none), the end voltage,
        and ``overflow`` where the neuron would cross once more inside the interval.
        """
        log_x_end = -jnp.asarray(dt) / self.tau
        crossings = []
        log_x_start = jnp.zeros_like(v)  # log x at the last reset (or the interval start)
        for _ in range(max_spikes):
            (v, i, log_x_start), spiked = self._next_spike(v, i, log_x_start, log_x_end)
            crossings.append(jnp.where(spiked, log_x_start, -jnp.inf))
        _, log_x_c, fires = self._crossing(v, i)
        overflow = fires & (log_x_start + _safe(fires, log_x_c, 0.0) > log_x_end)
        x_rest = jnp.exp(log_x_end - log_x_start)
        v_end = (v + i) * x_rest - i * x_rest * x_rest
        return jnp.stack(crossings, axis=-1), v_end, overflow

    def advance(self, state, i, dt, max_spikes=1, doublings=None):
        """Advance over an event-free interval with up to ``max_spikes`` spikes and resets.

        Returns ``(state, i, spiked, range_overflow)``. LIF needs no range
        (``range_overflow`` is always False); more crossings than ``max_spikes`` show
        up in the count of :meth:`spikes_in_interval` for the same interval.
        """
        (v,) = state
        crossings, v_end, _ = self._interval(v, i, dt, max_spikes)
        x_end, _ = self.decay(dt)
        spiked = crossings[..., 0] > -jnp.inf
        return (v_end,), i * x_end * x_end, spiked.astype(jnp.int8), jnp.zeros(jnp.shape(v), bool)

    def advance_layer(self, dts, kicks, max_spikes=1, doublings=None):
        """Advance a whole layer from rest through ``len(dts)`` intervals (one ``lax.scan``).

        Same contract and results as :meth:`QIF.advance_layer` (``range_overflow`` is
        always False), computed as :meth:`advance` interval by interval, but faster: the
        resets of an interval are followed only while a neuron still spikes (most
        intervals hold no second spike), and the backward pass is written by hand
        (:func:`_lif_layer_scan`) instead of replaying every step under autodiff.
        """
        v, i, spiked, v_T, i_T = _lif_layer_scan(self, max_spikes, jnp.asarray(dts, kicks.dtype), kicks)
        return (v,), i, spiked, jnp.zeros(spiked.shape, bool), (v_T,), i_T

    def spikes_in_interval(self, state, i, dt, max_spikes, odd=None):
        """Spike-time offsets inside an interval (see :meth:`QIF.spikes_in_interval`).

        ``odd`` is accepted for interface compatibility; LIF's :meth:`advance` and this
        method share one computation, so they always agree.

        ``count`` includes one extra spike where ``max_spikes`` overflowed.
        """
        (v,) = state
        crossings, _, overflow = self._interval(v, i, dt, max_spikes)
        fired = crossings > -jnp.inf
        offsets = jnp.where(fired, -self.tau * _safe(fired, crossings, 0.0), jnp.inf)
        return offsets, jnp.sum(fired, axis=-1).astype(jnp.int32) + overflow

    def time_to_pseudospike(self, state, drive):
        raise TypeError("LIF neurons have no pseudodynamics")

    def pseudo_drive(self, preactivation):
        raise TypeError("LIF neurons have no pseudodynamics")


def _lif_step(neuron, v, i, dt, max_spikes, tangents=None):
    r"""One LIF interval: end voltage, first-iteration spike flag and ``(A, dA/dv, dA/di)``.

    The resets run in a ``while_loop`` that stops as soon as no neuron of the layer
    spikes again (:meth:`LIF._next_spike` is then a no-op), so the values are those of
    :meth:`LIF.advance` with ``max_spikes`` iterations. With ``tangents=True`` the loop
    also carries the forward-mode derivatives of ``log x`` at the last reset in ``v``
    and ``i``, for the backward pass: the end voltage is
    :math:`V_T = A x_T - I x_T^2` with :math:`A = V + I` (no spike) or
    :math:`A = I x_L` (:math:`x_L`: ``x`` at the last reset; ``I`` the current at the
    interval start), so ``A`` and its two derivatives are all the step's VJP needs.
    """
    log_x_end = -dt / neuron.tau

    def reset(carry):
        return neuron._next_spike(*carry, log_x_end)

    def body(loop):
        k, carry, d_carry, _ = loop
        if tangents:
            # Two tangent directions (d/dv, d/di) along a leading axis.
            carry_1, d_carry, spiked = jax.vmap(
                lambda t: jax.jvp(reset, (carry,), (t,), has_aux=True), out_axes=(None, 0, None)
            )(d_carry)
        else:
            carry_1, spiked = reset(carry)
        return k + 1, carry_1, d_carry, spiked

    zero = jnp.zeros_like(v)
    carry = (v, i, zero)
    d_carry = (jnp.stack([jnp.ones_like(v), zero]), jnp.stack([zero, jnp.ones_like(i)]), jnp.stack([zero, zero]))
    d_carry = d_carry if tangents else None
    first = body((0, carry, d_carry, None))
    _, (v_r, i_r, log_x_start), d_carry, _ = jax.lax.while_loop(
        lambda loop: (loop[0] < max_spikes) & jnp.any(loop[3]), body, first
    )
    spiked = first[3]
    # As in LIF._interval: flow from the last reset to the interval end.
    x_rest = jnp.exp(log_x_end - log_x_start)
    v_end = (v_r + i_r) * x_rest - i_r * x_rest * x_rest
    if not tangents:
        return v_end, spiked, None
    x_last = jnp.exp(log_x_start)
    d_log_x = d_carry[2]
    a = jnp.where(spiked, i * x_last, v + i)
    a_v = jnp.where(spiked, i * x_last * d_log_x[0], 1.0)
    a_i = jnp.where(spiked, x_last + i * x_last * d_log_x[1], 1.0)
    return v_end, spiked, (a, a_v, a_i)


@functools.partial(jax.custom_vjp, nondiff_argnums=(0, 1))
def _lif_layer_scan(neuron, max_spikes, dts, kicks):
    """Scan of :func:`_lif_step` over the intervals of a layer from rest, with a hand-written VJP.

    ``dts`` is ``(n_intervals,)``, ``kicks`` ``(n_intervals, n)`` (added after each
    interval). Returns ``v`` and ``I`` at every interval start, the int8 spike flags of
    every interval, and ``v``, ``I`` after the last interval.
    """
    return _lif_layer_scan_forward(neuron, max_spikes, dts, kicks, False)[0]


def _lif_layer_scan_forward(neuron, max_spikes, dts, kicks, tangents):
    def step(carry, inputs):
        v, i = carry
        dt, kick = inputs
        v_end, spiked, slopes = _lif_step(neuron, v, i, dt, max_spikes, tangents)
        x_end, _ = neuron.decay(dt)
        return (v_end, i * x_end * x_end + kick), (v, i, spiked.astype(jnp.int8), slopes)

    zero = jnp.zeros(kicks.shape[1:], kicks.dtype)
    (v_T, i_T), (v, i, spiked, slopes) = jax.lax.scan(step, (zero, zero), (dts, kicks))
    return (v, i, spiked, v_T, i_T), slopes


def _lif_layer_scan_fwd(neuron, max_spikes, dts, kicks):
    outputs, slopes = _lif_layer_scan_forward(neuron, max_spikes, dts, kicks, True)
    return outputs, (outputs[1], dts, slopes)


def _lif_layer_scan_bwd(neuron, max_spikes, residuals, cotangents):
    r"""Reverse scan of the step's transposed Jacobian.

    One step maps ``(V, I)`` to ``(A x - I x^2, I x^2 + kick)`` with ``x = exp(-dt / tau)``
    and ``A(V, I)`` from :func:`_lif_step` (its derivatives are exact: forward mode
    through the same resets; the spike decisions are piecewise constant).
    """
    i, dts, (a, a_v, a_i) = residuals
    g_v_out, g_i_out, _, g_v_T, g_i_T = cotangents

    def step(g, inputs):
        g_v1, g_i1 = g
        i, dt, a, a_v, a_i, g_v_out, g_i_out = inputs
        x, _ = neuron.decay(dt)
        g_a = g_v1 * x
        g_v = g_a * a_v + g_v_out
        g_i = g_a * a_i + (g_i1 - g_v1) * x * x + g_i_out
        g_x = g_v1 * (a - 2.0 * i * x) + 2.0 * g_i1 * i * x
        return (g_v, g_i), (-g_x * x / neuron.tau, g_i1)

    _, (g_dts, g_kicks) = jax.lax.scan(step, (g_v_T, g_i_T), (i, dts, a, a_v, a_i, g_v_out, g_i_out), reverse=True)
    return g_dts.sum(-1), g_kicks


_lif_layer_scan.defvjp(_lif_layer_scan_fwd, _lif_layer_scan_bwd)


_MODELS = {"qif": QIF, "lif": LIF}


def get_neuron(neuron, **kwargs):
    """Return a neuron model from a name (``"qif"`` / ``"lif"``) or pass one through.

    Parameters
    ----------
    neuron : str or NeuronModel
    **kwargs
        Constructor arguments (e.g. ``tau``) when ``neuron`` is a name.
    """
    if isinstance(neuron, NeuronModel):
        if kwargs:
            return dataclasses.replace(neuron, **kwargs)
        return neuron
    try:
        cls = _MODELS[str(neuron).lower()]
    except KeyError:
        raise ValueError(f"neuron must be one of {sorted(_MODELS)}, got {neuron!r}") from None
    return cls(**kwargs)
