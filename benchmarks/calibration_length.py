"""How much unlabelled EEG a new user's calibration needs (leave-one-subject-out, 2 s windows).

For every held-out subject a decoder is trained on the other subjects; the held-out subject's
last trials (from ``--first-scored`` on, in recording order) are cut into 2 s windows (at 0, 0.5
and 1 s) and decoded as the GUI decodes them, with the windows aligned by

* ``training``: the training subjects' mean (no calibration),
* ``k trials``: the mean covariance of the 2 s windows of the subject's first k trials
  (``QIFClassifier.calibrate``, as ``app.py gui --calibrate`` does with the first seconds of a stream),
* ``scored``: the mean of the scored windows themselves (what ``app.py evaluate`` reports),
* ``adaptive``: no calibration phase; every window of the subject's trials, in recording order,
  first joins a running mean of the user's windows (``QIFClassifier.adapt``, as ``app.py gui
  --adapt`` does) and is then decoded aligned by it.

The ``first trials`` columns score the trials before ``--first-scored`` (what a new user meets
first): by the training mean and adaptively.

Run::

    python benchmarks/calibration_length.py --n-jobs 2 [--n-members 1]

and read the printed table (window accuracy, mean +- std over subjects).
"""

from __future__ import annotations

import argparse
import time

import numpy as np
import pandas as pd
from joblib import Parallel, delayed

from bci_qif import QIFClassifier
from bci_qif.datasets import available_subjects, load_eegbci

WINDOW_STARTS_S = (0.0, 0.5, 1.0)


def _windows(data, sfreq, length_s=2.0):
    """2 s windows at ``WINDOW_STARTS_S`` of each trial, as (n_starts, n_trials, channels, samples)."""
    n = int(round(length_s * sfreq))
    return np.stack([data[:, :, int(round(s * sfreq)):int(round(s * sfreq)) + n] for s in WINDOW_STARTS_S])


def run_subject(X, y, subjects, sfreq, test, counts, first_scored, n_members):
    train = subjects != test
    model = QIFClassifier(n_members=n_members, sfreq=sfreq).fit(X[train], y[train], groups=subjects[train])
    own = np.flatnonzero(~train)  # recording order
    labels = np.searchsorted(model.classes_, y[own])
    all_windows = _windows(X[own], sfreq)  # (start, trial, ...)
    windows = all_windows[:, first_scored:]

    def accuracy(trials=slice(first_scored, None)):
        return float(np.mean([model.decode_windows(w)["predicted_index"] == labels[trials]
                              for w in all_windows[:, trials]]))

    row = {"subject": int(test), "training": accuracy(), "training, first trials": accuracy(slice(first_scored))}
    for k in counts:
        calibration = _windows(X[own[:k]], sfreq)
        model.calibrate(calibration.reshape(-1, *calibration.shape[2:]))
        row[f"{k} trials"] = accuracy()
    model.calibrate(windows.reshape(-1, *windows.shape[2:]))
    row["scored"] = accuracy()
    # A live session without a calibration phase: each window joins the running mean, then is decoded.
    model.calibrate(None)
    hits = np.zeros((len(own), len(WINDOW_STARTS_S)), dtype=bool)
    for trial in range(len(own)):
        for start in range(len(WINDOW_STARTS_S)):
            window = all_windows[start, trial][None]
            model.adapt(window)
            hits[trial, start] = model.decode_windows(window)["predicted_index"][0] == labels[trial]
    row["adaptive"] = float(hits[first_scored:].mean())
    row["adaptive, first trials"] = float(hits[:first_scored].mean())
    return row


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--counts", default="2,5,10,20", help="calibration trials (comma-separated)")
    parser.add_argument("--first-scored", type=int, default=20, help="index of the first scored trial")
    parser.add_argument("--n-members", type=int, default=3)
    parser.add_argument("--n-jobs", type=int, default=1)
    args = parser.parse_args(argv)
    counts = [int(c) for c in args.counts.split(",")]
    if max(counts) > args.first_scored:
        parser.error("calibration trials must come before the first scored trial")
    trials = load_eegbci(list(available_subjects("left_right_imagery", None)))
    X, y, subjects = trials.data, np.asarray(trials.labels), np.asarray(trials.subjects)
    t0 = time.perf_counter()
    rows = Parallel(n_jobs=args.n_jobs)(
        delayed(run_subject)(X, y, subjects, trials.sfreq, s, counts, args.first_scored, args.n_members)
        for s in np.unique(subjects))
    table = pd.DataFrame(rows).set_index("subject")
    print(table.round(3).to_string())
    print(pd.DataFrame({"mean": table.mean(), "std": table.std()}).round(3).T.to_string())
    print(f"{len(table)} subjects, {args.n_members} network(s) each, {time.perf_counter() - t0:.0f} s")


if __name__ == "__main__":
    main()
