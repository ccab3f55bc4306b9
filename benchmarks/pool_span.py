"""How much of a new subject's input lies where the pretraining trials give no training signal.

The pooled decoder (``fine_tuning.pretrained_model`` of configs/default.yaml) is pretrained on
the other subjects' trials: ~720 tangent vectors of 4160 features, which span at most ~720
directions. For each test subject this prints the share of the variance of its (re-centred,
encoded) trials that falls inside the span of the pretraining vectors, and inside their strongest
16, 64 and 256 principal axes (the encoder fitted as ``qif_finetuned`` fits it; unsupervised).

Run::

    python benchmarks/pool_span.py --subjects 1 2 4 5
"""

from __future__ import annotations

import argparse

import numpy as np

from bci_qif.config import load_config
from bci_qif.datasets import available_subjects
from bci_qif.encoding import TangentSpaceEncoder

from decoder_search import load_motor_imagery
from encoding_screen_lr import span_axes

TOP_AXES = (16, 64, 256)
ENCODER_KEYS = ("rate_hz", "n_components", "recenter", "n_segments", "scale")  # configuration -> encoder


def span_shares(encoder, X_pool, groups_pool, X_subject):
    """Shares of the variance of ``X_subject``'s encoded trials (re-centred by their own mean) about the
    pool's mean that lie inside the span of the pool's encoded trials, then inside their ``TOP_AXES``
    strongest principal axes; and the span's dimension."""
    pool = encoder.transform(X_pool, groups=groups_pool)[:, :, 0].astype(np.float64)
    subject = encoder.transform(X_subject, groups=np.full(len(X_subject), -1))[:, :, 0].astype(np.float64)
    axes = span_axes(pool)
    centred = subject - pool.mean(axis=0)
    total = np.sum(centred**2)
    return len(axes), [np.sum((centred @ axes[:k].T) ** 2) / total for k in (len(axes), *TOP_AXES)]


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--subjects", nargs="+", type=int, help="test subjects (default: all)")
    args = parser.parse_args(argv)
    settings = load_config("configs/default.yaml")
    pretrained = {**settings["model"], **settings["fine_tuning"]["pretrained_model"]}
    everyone = list(available_subjects("left_right_imagery", None))
    trials = load_motor_imagery(everyone)
    X, groups = trials.data, np.asarray(trials.subjects)
    print(f"{'subject':>7s} {'rank':>5s} {'in span':>8s} " + " ".join(f"{'top ' + str(k):>8s}" for k in TOP_AXES))
    for subject in args.subjects or everyone:
        others = groups != subject
        encoder = TangentSpaceEncoder(sfreq=trials.sfreq, **{key: pretrained[key] for key in ENCODER_KEYS})
        encoder.fit(X[others], groups=groups[others])
        rank, shares = span_shares(encoder, X[others], groups[others], X[~others])
        print(f"{subject:7d} {rank:5d} " + " ".join(f"{share:8.3f}" for share in shares), flush=True)


if __name__ == "__main__":
    main()
