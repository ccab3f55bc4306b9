"""Interleaved A/B timing of two versions of the engine on the issue's reference workload.

On a shared, noisy machine two benchmark runs minutes apart are not comparable;
this loads both engines into one process and times them in alternation, so
both see the same load. The other version is a source tree exported from git::

    git archive <rev> bci_qif | tar -x -C /tmp/engine_old
    python benchmarks/engine_ab.py --old /tmp/engine_old --rounds 6 [--neuron lif] [--hidden 128]

It prints the median training-step time (forward + exact gradient, batch 64),
single-trial forward time, their ratios, and checks that both engines give the
same loss and gradients.
"""

from __future__ import annotations

import argparse
import importlib.util
import os
import sys
import time
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
import bench_engine  # noqa: E402  (the reference workload)

from bci_qif import network  # noqa: E402


def load_engine(tree):
    """Import ``<tree>/bci_qif`` under the name ``bci_qif_old`` and return its network module."""
    package = Path(tree) / "bci_qif"
    if not (package / "network.py").is_file():
        raise SystemExit(f"{package} does not hold bci_qif/network.py (export a tree with git archive)")
    spec = importlib.util.spec_from_file_location("bci_qif_old", package / "__init__.py",
                                                  submodule_search_locations=[str(package)])
    module = importlib.util.module_from_spec(spec)
    sys.modules["bci_qif_old"] = module
    spec.loader.exec_module(module)
    return importlib.import_module("bci_qif_old.network")


def timed(fn, repeats):
    """Median wall and CPU milliseconds of ``fn`` (after one warm-up call)."""
    jax.block_until_ready(fn())
    wall, cpu = [], []
    for _ in range(repeats):
        t0, c0 = time.perf_counter(), time.process_time()
        jax.block_until_ready(fn())
        wall.append(time.perf_counter() - t0)
        cpu.append(time.process_time() - c0)
    return np.median(wall) * 1e3, np.median(cpu) * 1e3


def compare_outputs(args, outputs, label):
    """Print the losses, the output spikes and the largest gradient difference of both engines."""
    (loss_old, result), grads_old = outputs["old"]
    (loss_new, _), grads_new = outputs["new"]
    leaves = list(zip(jax.tree_util.tree_leaves(grads_old), jax.tree_util.tree_leaves(grads_new)))
    scale = max(float(jnp.max(jnp.abs(a))) for a, _ in leaves)
    diff = max(float(jnp.max(jnp.abs(a - b))) for a, b in leaves) / max(scale, np.finfo(np.float32).tiny)
    print(f"{args.neuron}, {args.hidden} hidden, {label}: loss old {float(loss_old):.6f} new {float(loss_new):.6f}; "
          f"output spikes/trial {float(np.asarray(result.spike_counts[-1]).sum(-1).mean()):.2f}; "
          f"largest gradient {scale:.3e}, max gradient difference / largest {diff:.2e}")


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--old", required=True, type=Path, help="exported source tree of the other version")
    parser.add_argument("--rounds", type=int, default=6)
    parser.add_argument("--neuron", choices=["qif", "lif"], default="qif")
    parser.add_argument("--hidden", type=int, default=128)
    parser.add_argument("--output-bias", type=float, default=0.0,
                        help="also compare gradients with this output-layer bias (LIF outputs that fire)")
    parser.add_argument("--data-dir", default=os.environ.get("MNE_DATA", "../shared/datasets"))
    args = parser.parse_args(argv)

    eeg = bench_engine.load_eeg(args.data_dir)
    params, times, T, currents, labels = bench_engine.workload(eeg, n_hidden=args.hidden, n_events=320, batch=64)
    engines = {"old": load_engine(args.old), "new": network}
    calls, outputs = {}, {}
    for name, net in engines.items():
        # Let each engine size its own budgets once, then time the compiled functions.
        out, budget = net.batch_loss(params, times, currents, labels, args.neuron, T=T, grad=True)
        _, single = net.simulate(params, times, currents[:1], args.neuron, T=T)
        neuron = net.get_neuron(args.neuron)
        step = net._compiled("loss", neuron, T, budget, None, gamma=0.01, readout_tau=1.0, late_penalty=0.0, grad=True)
        forward = net._compiled("simulate", neuron, T, single, None)
        calls[name] = (lambda f=step: f(params, times, currents, labels),
                       lambda f=forward: f(params, times, currents[:1]))
        outputs[name] = out
        print(f"{name}: training budget {budget}, single-trial budget {single}")
    compare_outputs(args, outputs, "reference workload")
    if args.output_bias:
        # Silent LIF outputs read out at T without gradient, so on the reference workload
        # every LIF gradient is zero; a bias kick on the output layer makes them fire.
        biased = [dict(p) for p in params]
        biased[-1]["b"] = jnp.full_like(params[-1]["b"], args.output_bias)
        outputs = {name: net.batch_loss(biased, times, currents, labels, args.neuron, T=T, grad=True)[0]
                   for name, net in engines.items()}
        compare_outputs(args, outputs, f"output bias {args.output_bias}")

    steps = {name: [] for name in engines}
    forwards = {name: [] for name in engines}
    for _ in range(args.rounds):
        for name in engines:  # alternate, so both see the same machine load
            steps[name].append(timed(calls[name][0], 3))
            forwards[name].append(timed(calls[name][1], 40))
    print("| engine | step ms (wall / CPU) | samples/s | forward p50 ms |")
    print("|---|---|---|---|")
    medians = {}
    for name in engines:
        step_wall, step_cpu = np.median(np.array(steps[name]), axis=0)
        fwd_wall = np.median(np.array(forwards[name])[:, 0])
        medians[name] = (step_wall, fwd_wall)
        print(f"| {name} | {step_wall:.1f} / {step_cpu:.1f} | {len(labels) / step_wall * 1e3:.0f} | {fwd_wall:.2f} |")
    print(f"speed-up new vs old: step x{medians['old'][0] / medians['new'][0]:.2f}, "
          f"forward x{medians['old'][1] / medians['new'][1]:.2f}; load average {os.getloadavg()}")


if __name__ == "__main__":
    main()
