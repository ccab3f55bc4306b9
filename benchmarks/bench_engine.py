"""Engine benchmark: training throughput and single-trial latency of the exact-gradient simulator.

Workload of issue 2: 64 EEG channels at 160 Hz, 2 s trials (320 input events),
128 hidden + 2 output neurons, batch 64, float32, on the CPU. Inputs are real EEG
(EEGMMIDB subject 1, runs 4/8/12, 8-30 Hz, standardized) cut into consecutive
windows. Reports samples/s of forward + exact gradient + Adam step, single-trial
forward latency (p50 / p99), compiled memory and mean hidden spikes per neuron,
then how both scale with the hidden size and with the number of events per trial.

Usage::

    python benchmarks/bench_engine.py [--data-dir DIR] [--neurons qif lif] [--quick]
"""

from __future__ import annotations

import argparse
import platform
import time

import jax
import jax.numpy as jnp
import numpy as np
import optax

from bci_qif import network
from bci_qif.datasets import resolve_data_root
from bci_qif.neurons import get_neuron

SFREQ = 160.0
TIME_SCALE = 20.0  # model units per second (tau = 50 ms)


def load_eeg(data_dir):
    """Standardized 8-30 Hz EEG of subject 1 as one (64, n_samples) array."""
    import mne
    from mne.datasets import eegbci

    root = resolve_data_root(data_dir)
    files = eegbci.load_data(1, [4, 8, 12], path=str(root), update_path=False, verbose=False)
    raw = mne.concatenate_raws([mne.io.read_raw_edf(f, preload=True, verbose=False) for f in files])
    raw.filter(8.0, 30.0, verbose=False)
    data = raw.get_data()
    return ((data - data.mean(axis=1, keepdims=True)) / data.std(axis=1, keepdims=True)).astype(np.float32)


def windows(eeg, n_events, batch):
    """``batch`` consecutive windows of ``n_events`` samples -> (batch, n_events, 64)."""
    starts = (np.arange(batch) * n_events) % (eeg.shape[1] - n_events)
    return np.stack([eeg[:, s:s + n_events].T for s in starts])


def timed(fn, repeats):
    """Median and 99th percentile wall time (ms) of ``fn()`` after one warm-up call."""
    jax.block_until_ready(fn())
    samples = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        jax.block_until_ready(fn())
        samples.append((time.perf_counter() - t0) * 1e3)
    return float(np.median(samples)), float(np.percentile(samples, 99))


def workload(eeg, n_hidden, n_events, batch):
    """Parameters, event times, trial length, currents and labels of one configuration."""
    # No bias kick and unit weight scale: a moderate firing regime (a bias of 0.1 per
    # sample already drives QIF neurons tonically at 160 Hz).
    params = network.init(jax.random.PRNGKey(0), (64, n_hidden, 2), weight_scale=1.0, bias=0.0)
    times = (np.arange(n_events) / SFREQ * TIME_SCALE).astype(np.float32)
    T = float(n_events / SFREQ * TIME_SCALE)
    return params, times, T, windows(eeg, n_events, batch), np.arange(batch) % 2


def measure(eeg, neuron, n_hidden, n_events, batch, repeats, latency_repeats):
    """One configuration: returns a dict of figures."""
    neuron = get_neuron(neuron)
    params, times, T, currents, labels = workload(eeg, n_hidden, n_events, batch)
    optimizer = optax.adam(1e-3)
    opt_state = optimizer.init(params)
    update = jax.jit(lambda p, s, g: (lambda u, s2: (optax.apply_updates(p, u), s2))(*optimizer.update(g, s, p)))
    (_, budget) = network.batch_loss(params, times, currents, labels, neuron, T=T, grad=True)

    def train_step():
        ((loss, _), grads), _ = network.batch_loss(params, times, currents, labels, neuron, T=T, grad=True,
                                                   budget=budget)
        return update(params, opt_state, grads)

    step_ms, _ = timed(train_step, repeats)
    result, sim_budget = network.simulate(params, times, currents[:1], neuron, T=T)
    p50, p99 = timed(lambda: network.simulate(params, times, currents[:1], neuron, T=T, budget=sim_budget)[0],
                     latency_repeats)
    compiled = network._compiled("loss", neuron, T, budget, None, gamma=0.01, readout_tau=1.0, late_penalty=0.0,
                                 grad=True)
    memory = compiled.lower(params, times, currents, labels).compile().memory_analysis()
    full, _ = network.simulate(params, times, currents, neuron, T=T, budget=budget)
    return {
        "neuron": neuron.name,
        "hidden": n_hidden,
        "events": n_events,
        "samples_per_s": batch / step_ms * 1e3,
        "step_ms": step_ms,
        "latency_p50_ms": p50,
        "latency_p99_ms": p99,
        "memory_mb": (memory.temp_size_in_bytes + memory.argument_size_in_bytes + memory.output_size_in_bytes) / 2**20,
        "hidden_spikes_per_neuron": float(np.asarray(full.spike_counts[0]).mean()),
    }


def print_table(rows):
    header = ["neuron", "hidden", "events", "samples/s", "step ms", "p50 ms", "p99 ms", "memory MiB", "spikes/neuron"]
    print(" | ".join(header))
    print(" | ".join("---" for _ in header))
    for r in rows:
        print(f"{r['neuron']} | {r['hidden']} | {r['events']} | {r['samples_per_s']:.0f} | {r['step_ms']:.1f} | "
              f"{r['latency_p50_ms']:.2f} | {r['latency_p99_ms']:.2f} | {r['memory_mb']:.0f} | "
              f"{r['hidden_spikes_per_neuron']:.2f}")


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data-dir", help="data root (default: $MNE_DATA)")
    parser.add_argument("--neurons", nargs="+", default=["qif", "lif"])
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--quick", action="store_true", help="only the reference workload")
    args = parser.parse_args(argv)
    eeg = load_eeg(args.data_dir)
    print(f"# {platform.node()} | {platform.processor() or platform.machine()} | jax {jax.__version__} "
          f"| devices {jax.devices()} | {time.strftime('%Y-%m-%d %H:%M')}")
    configs = [(128, 320)]
    if not args.quick:
        configs += [(h, 320) for h in (32, 64, 256, 512)] + [(128, e) for e in (80, 160, 640, 1280)]
    rows = []
    for neuron in args.neurons:
        for n_hidden, n_events in configs:
            rows.append(measure(eeg, neuron, n_hidden, n_events, args.batch, repeats=5, latency_repeats=100))
            print(f"done: {rows[-1]}", flush=True)
    print()
    print_table(rows)


if __name__ == "__main__":
    main()
