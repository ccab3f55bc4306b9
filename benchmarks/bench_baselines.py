"""Benchmark the classical baselines on the shared PhysioNet left/right imagery subjects.

Loads runs 4, 8, 12 (imagined left vs right fist) of each subject with MNE, band-passes
8-30 Hz, cuts 0-3 s after the cue, and evaluates every baseline within-subject
(stratified 5-fold, seed 42) and leave-one-subject-out. Prints mean +- std over
subjects of accuracy and ROC AUC with wall times, and writes results.csv, report.md
and figures per protocol under --out.

Example::

    python benchmarks/bench_baselines.py --out results/baselines --n-jobs 2
"""

from __future__ import annotations

import argparse
import functools
import logging
import os
import sys
import time
from pathlib import Path

import mne
import numpy as np

from bci_qif.baselines import BASELINES, make_baseline
from bci_qif.evaluation import EvalData, evaluate
from bci_qif.report import write_report

logger = logging.getLogger("bench_baselines")

SHARED_SUBJECTS = [1, 2, 4, 5, 7, 8, 10, 11, 13, 14, 16, 17, 19, 20, 22, 23, 42]
RUNS = [4, 8, 12]  # imagined left fist (T1) vs right fist (T2)
EVENT_ID = {"T1": 0, "T2": 1}
CLASS_NAMES = ["left_fist", "right_fist"]


def default_data_dir() -> Path:
    """MNE_DATA if set, else ../shared/datasets next to the repository."""
    if os.environ.get("MNE_DATA"):
        return Path(os.environ["MNE_DATA"])
    return Path(__file__).resolve().parents[2] / "shared" / "datasets"


def load_subject(subject: int, data_dir: Path, l_freq=8.0, h_freq=30.0, tmax=3.0):
    """Band-passed left/right imagery epochs of one subject as (X, y, sfreq)."""
    files = mne.datasets.eegbci.load_data(subject, RUNS, path=str(data_dir), update_path=False)
    raw = mne.concatenate_raws([mne.io.read_raw_edf(f, preload=True) for f in files])
    mne.datasets.eegbci.standardize(raw)
    raw.filter(l_freq, h_freq)
    events, event_id = mne.events_from_annotations(raw, event_id={"T1": 1, "T2": 2})
    sfreq = raw.info["sfreq"]
    epochs = mne.Epochs(
        raw, events, event_id, tmin=0.0, tmax=tmax - 1.0 / sfreq, baseline=None,
        picks="eeg", preload=True,
    )
    X = epochs.get_data(copy=False)
    y = epochs.events[:, 2] - 1  # T1 -> 0 (left), T2 -> 1 (right)
    return X, y, sfreq


def load_data(subjects, data_dir: Path) -> EvalData:
    """Stack the subjects' trials into one EvalData."""
    parts = [load_subject(s, data_dir) for s in subjects]
    sfreqs = {sfreq for _, _, sfreq in parts}
    if len(sfreqs) != 1:
        raise ValueError(f"subjects have different sampling rates: {sfreqs}.")
    return EvalData(
        X=np.concatenate([X for X, _, _ in parts]),
        y=np.concatenate([y for _, y, _ in parts]),
        subjects=np.concatenate([np.full(len(y), s) for s, (_, y, _) in zip(subjects, parts)]),
        sfreq=sfreqs.pop(),
        class_names=CLASS_NAMES,
    )


def summary_table(results, wall_seconds: float) -> str:
    """Mean +- std over subjects (of per-subject means) per pipeline."""
    per_subject = results.groupby(["pipeline", "subject"], sort=False)[
        ["accuracy", "roc_auc", "fit_seconds"]
    ].mean()
    lines = [
        f"{'pipeline':<18} {'accuracy':>15} {'roc_auc':>15} {'fit s/fold':>10}",
    ]
    for name, table in per_subject.groupby(level="pipeline", sort=False):
        lines.append(
            f"{name:<18} {table.accuracy.mean():>7.3f} ± {table.accuracy.std():.3f}"
            f" {table.roc_auc.mean():>7.3f} ± {table.roc_auc.std():.3f}"
            f" {table.fit_seconds.mean():>10.2f}"
        )
    lines.append(f"wall time: {wall_seconds:.1f} s")
    return "\n".join(lines)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--subjects", type=int, nargs="+", default=SHARED_SUBJECTS)
    parser.add_argument("--data-dir", type=Path, default=None,
                        help="folder containing MNE-eegbci-data (default: MNE_DATA, "
                             "else ../shared/datasets)")
    parser.add_argument("--protocol", choices=["within-subject", "cross-subject", "both"],
                        default="both")
    parser.add_argument("--pipelines", default=",".join(BASELINES),
                        help="comma-separated baseline names")
    parser.add_argument("--n-splits", type=int, default=5)
    parser.add_argument("--seed", type=int, default=42)
    parser.add_argument("--n-jobs", type=int, default=1)
    parser.add_argument("--out", type=Path, default=Path("results/baselines"))
    args = parser.parse_args(argv)

    logging.basicConfig(level=logging.INFO, format="%(message)s")
    mne.set_log_level("ERROR")
    data_dir = args.data_dir or default_data_dir()
    names = [n.strip() for n in args.pipelines.split(",") if n.strip()]
    unknown = sorted(set(names) - set(BASELINES))
    if unknown:
        parser.error(f"unknown --pipelines {unknown}; choose from {sorted(BASELINES)}")

    start = time.perf_counter()
    data = load_data(args.subjects, data_dir)
    load_seconds = time.perf_counter() - start
    print(f"loaded {len(data.y)} trials of {len(args.subjects)} subjects "
          f"({data.X.shape[1]} channels, {data.X.shape[2]} samples at {data.sfreq:g} Hz) "
          f"in {load_seconds:.1f} s")

    pipelines = {n: functools.partial(make_baseline, n, sfreq=data.sfreq) for n in names}
    protocols = (["within-subject", "cross-subject"] if args.protocol == "both"
                 else [args.protocol])
    for protocol in protocols:
        start = time.perf_counter()
        results = evaluate(data, pipelines, protocol=protocol, n_splits=args.n_splits,
                           n_jobs=args.n_jobs, seed=args.seed)
        wall = time.perf_counter() - start
        out = args.out / protocol
        write_report(results, out, title=f"Baselines, {protocol}, "
                                         f"{len(args.subjects)} PhysioNet subjects")
        print(f"\n== {protocol} ({out}) ==")
        print(summary_table(results, wall))
    return 0


if __name__ == "__main__":
    sys.exit(main())
