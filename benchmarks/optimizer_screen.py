"""Screen training settings of a pretrained decoder on unseen subjects (leave-one-subject-out).

A quick look before the nested ``finetune_search.py``: for each test subject one
network is trained on every trial of the other subjects (each re-centred by its own
mean), then aligned to the test subject by the mean covariance of all its trials
(:meth:`QIFClassifier.calibrate`, unsupervised) and scored on them: accuracy (the
earliest output spike, with pseudodynamics for silent outputs) and acc_ord (the
earliest spike inside the trial). No setting is chosen here; the screen only says
which ideas deserve the nested search.

Settings (``--settings``, comma-separated; ``SETTINGS`` below): two QIF output
neurons reading the tangent vectors of the trial's two halves on one common scale
(no hidden layer, the spiking counterpart of the linear readout), trained with

* ``adam_ws2``: Adam, learning rate 1e-2, initial weight scale 2 (the shipped recipe's);
* ``adam_ws0.1``: the same from small initial weights (scale 0.1);
* ``sgd_lr1``: SGD with momentum 0.9, learning rate 1, initial weight scale 0.1.

Run::

    python benchmarks/optimizer_screen.py --settings adam_ws2,adam_ws0.1,sgd_lr1 --subjects 1 4 7 10 13 16 19 22
"""

from __future__ import annotations

import argparse
import time

import numpy as np
import pandas as pd

from bci_qif.datasets import available_subjects
from bci_qif.estimator import QIFClassifier

from decoder_search import load_motor_imagery

NO_HIDDEN_HALVES = dict(hidden_layer_sizes=(), n_segments=2, scale="common", n_members=1)
SETTINGS = {
    "adam_ws2": dict(NO_HIDDEN_HALVES),
    "adam_ws0.1": dict(NO_HIDDEN_HALVES, weight_scale=0.1),
    "sgd_lr1": dict(NO_HIDDEN_HALVES, weight_scale=0.1, optimizer="sgd", learning_rate=1.0),
}


def score_unseen(settings, X, y, groups, subject, sfreq):
    """Accuracy and acc_ord on ``subject`` of a network trained on the other subjects."""
    others = groups != subject
    model = QIFClassifier(sfreq=sfreq, **settings).fit(X[others], y[others], groups=groups[others])
    model.calibrate(X[~others])
    accuracy = float(np.mean(model.predict(X[~others]) == y[~others]))
    return accuracy, model.spiking_metrics(X[~others], y[~others])["acc_ord"]


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--settings", default=",".join(SETTINGS), help=f"comma-separated, from {','.join(SETTINGS)}")
    parser.add_argument("--subjects", nargs="+", type=int, help="test subjects (default: all)")
    args = parser.parse_args(argv)
    names = args.settings.split(",")
    unknown = sorted(set(names) - set(SETTINGS))
    if unknown:
        parser.error(f"unknown settings {unknown}")

    everyone = list(available_subjects("left_right_imagery", None))
    trials = load_motor_imagery(everyone)
    X, y, groups = trials.data, np.asarray(trials.labels), np.asarray(trials.subjects)
    rows = []
    for name in names:
        t0 = time.perf_counter()
        for subject in args.subjects or everyone:
            accuracy, acc_ord = score_unseen(SETTINGS[name], X, y, groups, subject, trials.sfreq)
            rows.append(dict(setting=name, subject=subject, accuracy=accuracy, acc_ord=acc_ord))
            print(f"{name} subject {subject}: accuracy {accuracy:.3f}, acc_ord {acc_ord:.3f}", flush=True)
        print(f"{name}: {time.perf_counter() - t0:.0f} s", flush=True)
    table = pd.DataFrame(rows).groupby("setting", sort=False)[["accuracy", "acc_ord"]].agg(["mean", "std"])
    print(table.round(3).to_string())


if __name__ == "__main__":
    main()
