"""Write an evaluation's results as CSV, a Markdown report and PNG figures.

The input is the table returned by :func:`bci_qif.evaluation.evaluate` (or that table
read back from its ``results.csv``). Scores are first averaged over the folds of each
subject, so that every subject weighs the same and the paired tests compare
independent units (subjects), not folds.
"""

from __future__ import annotations

import json
import logging
import math
import warnings
from collections.abc import Iterable, Sequence
from pathlib import Path

import matplotlib
import numpy as np
import pandas as pd
from matplotlib.figure import Figure
from scipy.stats import wilcoxon

logger = logging.getLogger(__name__)

__all__ = ["DEFAULT_SNN_PIPELINES", "merge_runs", "paired_tests", "write_report"]

#: Pipelines treated as spiking decoders when ``snn_pipelines`` is not given.
DEFAULT_SNN_PIPELINES = ("qif", "lif", "qif_finetuned")

_SCORE_COLUMNS = [
    "accuracy",
    "balanced_accuracy",
    "kappa",
    "roc_auc",
    "f1",
    "itr_bits_per_min",
    "fit_seconds",
]
# Columns a spiking model may add through its ``spiking_metrics`` hook.
_SPIKING_COLUMNS = ["acc_ord", "silent_fraction", "spikes_per_trial", "window_acc", "window_acc_ord"]
_CURVE_COLUMNS = ["loss", "acc", "acc_ord", "silent_fraction"]
_REQUIRED = ["subject", "pipeline", "fold", "accuracy"]
# Below this many subjects an exact two-sided Wilcoxon test cannot reach p < 0.05
# (its smallest p-value is 2 / 2**n, i.e. 0.0625 for n = 5).
_MIN_SUBJECTS_FOR_POWER = 6


def _markdown_table(frame: pd.DataFrame, float_format: str = "{:.3f}") -> str:
    def fmt(value) -> str:
        if isinstance(value, float | np.floating):
            return "nan" if math.isnan(value) else float_format.format(value)
        return str(value)

    header = "| " + " | ".join(str(c) for c in frame.columns) + " |"
    rule = "|" + "|".join("---" for _ in frame.columns) + "|"
    rows = ["| " + " | ".join(fmt(v) for v in row) + " |" for row in frame.itertuples(index=False)]
    return "\n".join([header, rule, *rows])


def _per_subject(results: pd.DataFrame, columns: Sequence[str]) -> pd.DataFrame:
    return results.groupby(["pipeline", "subject"], sort=False)[list(columns)].mean()


def _summary(results: pd.DataFrame, columns: Sequence[str]) -> pd.DataFrame:
    per_subject = _per_subject(results, columns)
    rows = []
    for name, table in per_subject.groupby(level="pipeline", sort=False):
        row = {"pipeline": name, "subjects": len(table)}
        for column in columns:
            values = table[column].dropna()
            if values.empty:
                row[column] = "n/a"
            else:
                std = values.std() if len(values) > 1 else float("nan")
                row[column] = f"{values.mean():.3f} ± {std:.3f}"
        rows.append(row)
    return pd.DataFrame(rows)


def paired_tests(
    results: pd.DataFrame,
    snn_pipelines: Iterable[str],
    metric: str = "accuracy",
) -> pd.DataFrame:
    """Paired Wilcoxon signed-rank tests of each spiking pipeline against each baseline.

    Parameters
    ----------
    results : pandas.DataFrame
        Rows per subject x pipeline x fold (see :func:`bci_qif.evaluation.evaluate`).
    snn_pipelines : iterable of str
        Pipelines to test; every other pipeline in ``results`` is a baseline.
    metric : str
        Column compared, averaged over folds per subject first.

    Returns
    -------
    tests : pandas.DataFrame
        One row per (snn, baseline) with ``n_subjects`` (paired), ``mean_diff`` and
        ``median_diff`` (snn minus baseline), ``statistic``, ``p_value`` (two-sided,
        NaN when not computable) and ``note``.
    """
    per_subject = _per_subject(results, [metric])[metric].unstack("pipeline")
    snn = [name for name in snn_pipelines if name in per_subject.columns]
    baselines = [name for name in per_subject.columns if name not in snn]
    rows = []
    for candidate in snn:
        for baseline in baselines:
            pair = per_subject[[candidate, baseline]].dropna()
            diff = (pair[candidate] - pair[baseline]).to_numpy()
            row = {
                "snn": candidate,
                "baseline": baseline,
                "n_subjects": len(diff),
                "mean_diff": float(diff.mean()) if len(diff) else float("nan"),
                "median_diff": float(np.median(diff)) if len(diff) else float("nan"),
                "statistic": float("nan"),
                "p_value": float("nan"),
                "note": "",
            }
            if len(diff) == 0:
                row["note"] = "no subject scored by both pipelines"
            elif not np.any(diff):
                row["note"] = "all paired differences are zero"
            else:
                with warnings.catch_warnings():
                    warnings.simplefilter("ignore", RuntimeWarning)
                    test = wilcoxon(diff)
                row["statistic"] = float(test.statistic)
                row["p_value"] = float(test.pvalue)
                # scipy drops zero differences, so they do not add power either
                n_informative = int(np.count_nonzero(diff))
                if n_informative < _MIN_SUBJECTS_FOR_POWER:
                    row["note"] = (
                        f"underpowered: with {n_informative} non-tied subject(s) p cannot "
                        f"go below {min(1.0, 2.0 / 2**n_informative):.3g}"
                    )
            rows.append(row)
    columns = ["snn", "baseline", "n_subjects", "mean_diff", "median_diff",
               "statistic", "p_value", "note"]
    return pd.DataFrame(rows, columns=columns)


def _confusion_matrices(results: pd.DataFrame) -> dict[str, tuple[np.ndarray, list]]:
    matrices = {}
    for name, table in results.groupby("pipeline", sort=False):
        total, classes = None, None
        for cm, names in zip(table["confusion_matrix"], table["classes"]):
            cm = np.asarray(json.loads(cm) if isinstance(cm, str) else cm)
            total = cm if total is None else total + cm
            if classes is None:
                classes = json.loads(names) if isinstance(names, str) else list(names)
        matrices[name] = (total, classes)
    return matrices


def _figure(ncols: int, figsize: tuple[float, float]):
    # A bare Figure renders with Agg and never touches pyplot's global state or
    # backend, so reports can be written from a GUI process or a headless worker.
    fig = Figure(figsize=figsize)
    return fig, fig.subplots(1, ncols, squeeze=False)[0]


def _plot_per_subject(results: pd.DataFrame, metric: str, path: Path, n_classes) -> None:
    grouped = results.groupby(["subject", "pipeline"], sort=False)[metric]
    means = grouped.mean().unstack("pipeline")
    stds = grouped.std().unstack("pipeline")
    pipelines = list(dict.fromkeys(results["pipeline"]))
    subjects = list(means.index)
    width = 0.8 / len(pipelines)
    x = np.arange(len(subjects))
    width_inches = min(20.0, max(6.0, 0.25 * len(subjects) * len(pipelines) + 2))
    fig, (ax,) = _figure(1, figsize=(width_inches, 4))
    for i, name in enumerate(pipelines):
        ax.bar(
            x + (i - (len(pipelines) - 1) / 2) * width,
            means[name].to_numpy(),
            width,
            yerr=stds[name].fillna(0).to_numpy(),
            label=name,
            capsize=2,
        )
    if n_classes and metric in ("accuracy", "balanced_accuracy", "roc_auc"):
        chance = 0.5 if metric == "roc_auc" else 1.0 / n_classes
        ax.axhline(chance, color="k", linestyle="--", linewidth=1, label="chance")
    ax.set_xticks(x, [str(s) for s in subjects])
    ax.set_xlabel("subject")
    ax.set_ylabel(f"{metric} (mean over folds)")
    # Legend outside the axes: with many subjects there is no free corner inside.
    ax.legend(fontsize="small", loc="upper left", bbox_to_anchor=(1.0, 1.0))
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def _plot_confusions(matrices: dict, path: Path) -> None:
    n = len(matrices)
    fig, axes = _figure(n, figsize=(3.2 * n, 3.2))
    for ax, (name, (cm, classes)) in zip(axes, matrices.items()):
        # Colour by row share (recall per class), annotate raw counts.
        share = cm / np.maximum(cm.sum(axis=1, keepdims=True), 1)
        ax.imshow(share, vmin=0, vmax=1, cmap="Blues")
        for (i, j), count in np.ndenumerate(cm):
            ax.text(j, i, str(count), ha="center", va="center",
                    color="white" if share[i, j] > 0.5 else "black")
        ax.set_xticks(range(len(classes)), classes, rotation=30, ha="right")
        ax.set_yticks(range(len(classes)), classes)
        ax.set_xlabel("predicted")
        ax.set_ylabel("true")
        ax.set_title(name)
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def _histories_frame(histories) -> pd.DataFrame:
    """Stack histories given as DataFrames, column dicts, record lists or wrappers."""
    frames = []
    for i, item in enumerate(histories):
        meta = {}
        if isinstance(item, dict) and "history" in item:
            meta = {k: v for k, v in item.items() if k != "history"}
            item = item["history"]
        frame = pd.DataFrame(item).assign(**meta)
        if "pipeline" not in frame.columns:
            raise ValueError(
                f"extra_histories[{i}] has no 'pipeline' (column or key); cannot tell "
                "which pipeline it belongs to."
            )
        if "epoch" not in frame.columns:
            frame = frame.assign(epoch=np.arange(len(frame)))
        frame = frame.assign(_run=i)
        frames.append(frame)
    return pd.concat(frames, ignore_index=True)


def _spans_decades(values, decades=2) -> bool:
    """Whether positive ``values`` span more than ``decades`` powers of ten (a log axis reads them better)."""
    values = np.asarray(values, dtype=float)
    values = values[np.isfinite(values)]
    return values.size > 0 and values.min() > 0 and values.max() / values.min() > 10.0 ** decades


def _plot_histories(histories: pd.DataFrame, path: Path) -> None:
    columns = [c for c in _CURVE_COLUMNS if c in histories.columns]
    if not columns:
        raise ValueError(
            f"extra_histories have none of the curve columns {_CURVE_COLUMNS}."
        )
    fig, axes = _figure(len(columns), figsize=(3.6 * len(columns), 3.2))
    colours = matplotlib.rcParams["axes.prop_cycle"].by_key()["color"]
    for ax, column in zip(axes, columns):
        for k, (name, table) in enumerate(histories.groupby("pipeline", sort=False)):
            colour = colours[k % len(colours)]
            runs = ["_run", "member"] if "member" in table.columns else ["_run"]
            for _, run in table.groupby(runs):  # one thin line per subject/fold (and ensemble member)
                ax.plot(run["epoch"], run[column], color=colour, alpha=0.25, linewidth=0.8)
            mean = table.groupby("epoch")[column].mean()
            ax.plot(mean.index, mean.to_numpy(), color=colour, linewidth=2, label=name)
        ax.set_xlabel("epoch")
        ax.set_title(column)
        # A few huge first-epoch losses (e.g. the late penalty on outputs that start silent) would flatten
        # the rest of the curve to zero on a linear axis.
        if column == "loss" and _spans_decades(histories[column]):
            ax.set_yscale("log")
            ax.set_title("loss (log scale)")
    axes[0].legend(fontsize="small")
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def write_report(
    results_df: pd.DataFrame,
    out_dir,
    title: str = "bci_qif evaluation",
    extra_histories=None,
    snn_pipelines: Iterable[str] | None = None,
    metric: str = "accuracy",
) -> dict[str, Path]:
    """Write ``results.csv``, ``report.md`` and PNG figures for one evaluation.

    Parameters
    ----------
    results_df : pandas.DataFrame
        Output of :func:`bci_qif.evaluation.evaluate` for one protocol.
    out_dir : str | Path
        Folder to write into (created if needed; existing files are overwritten).
    title : str
        Title of ``report.md``.
    extra_histories : list | None
        Training curves, one item per pipeline x fold: a DataFrame, a dict of columns
        or a list of per-epoch records with ``epoch`` and any of ``loss, acc,
        acc_ord, silent_fraction``, and a ``pipeline`` column; or a dict
        ``{"pipeline": ..., "subject": ..., "fold": ..., "history": <table>}``.
        Default: ``results_df.attrs["histories"]`` if ``evaluate`` collected any.
    snn_pipelines : iterable of str | None
        Pipelines tested against every other pipeline with a paired Wilcoxon test;
        default: those of ``DEFAULT_SNN_PIPELINES`` present in ``results_df``.
    metric : str
        Score plotted per subject and compared by the tests.

    Returns
    -------
    paths : dict of str to Path
        Paths of the files written, keyed ``csv``, ``markdown``, ``per_subject``,
        ``confusion`` and (with histories) ``curves`` and ``histories`` (the
        per-epoch rows as CSV, one run per pipeline x subject x fold).
    """
    missing = [c for c in _REQUIRED + [metric] if c not in results_df.columns]
    if missing:
        raise ValueError(f"results_df lacks the column(s) {missing}.")
    if results_df.empty:
        raise ValueError("results_df is empty: nothing to report.")
    if "protocol" in results_df.columns and results_df["protocol"].nunique() > 1:
        raise ValueError(
            "results_df mixes protocols "
            f"{sorted(results_df['protocol'].unique())}; write one report per protocol."
        )
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    paths = {
        "csv": out_dir / "results.csv",
        "markdown": out_dir / "report.md",
        "per_subject": out_dir / f"per_subject_{metric}.png",
    }
    results_df.to_csv(paths["csv"], index=False)

    pipelines = list(dict.fromkeys(results_df["pipeline"]))
    if snn_pipelines is None:
        snn_pipelines = [p for p in pipelines if p in DEFAULT_SNN_PIPELINES]
    snn_pipelines = list(snn_pipelines)
    columns = [c for c in _SCORE_COLUMNS + _SPIKING_COLUMNS
               if c in results_df.columns and results_df[c].notna().any()]

    matrices = {}
    if {"confusion_matrix", "classes"} <= set(results_df.columns):
        matrices = _confusion_matrices(results_df)
        paths["confusion"] = out_dir / "confusion_matrices.png"
        _plot_confusions(matrices, paths["confusion"])
    n_classes = len(next(iter(matrices.values()))[1]) if matrices else None
    _plot_per_subject(results_df, metric, paths["per_subject"], n_classes)

    if extra_histories is None:
        extra_histories = results_df.attrs.get("histories") or None
    if extra_histories:
        paths["curves"] = out_dir / "training_curves.png"
        paths["histories"] = out_dir / "histories.csv"
        stacked = _histories_frame(extra_histories)
        _plot_histories(stacked, paths["curves"])
        stacked.rename(columns={"_run": "run"}).to_csv(paths["histories"], index=False)

    lines = [f"# {title}", ""]
    if "protocol" in results_df.columns:
        lines.append(f"Protocol: **{results_df['protocol'].iloc[0]}**.")
    n_folds = results_df.groupby(["pipeline", "subject"]).size().max()
    lines += [
        f"{results_df['subject'].nunique()} subjects, {len(pipelines)} pipelines, up to "
        f"{n_folds} fold(s) per subject. Scores are averaged over each subject's folds, "
        "then mean ± std is taken over subjects.",
        "",
        "## Summary",
        "",
        _markdown_table(_summary(results_df, columns)),
        "",
        f"## Per-subject {metric}",
        "",
    ]
    per_subject = _per_subject(results_df, [metric])[metric].unstack("pipeline")
    per_subject = per_subject[pipelines].reset_index()
    lines += [
        _markdown_table(per_subject),
        "",
        f"![per-subject {metric}]({paths['per_subject'].name})",
        "",
    ]

    lines += ["## Paired tests", ""]
    tests = paired_tests(results_df, snn_pipelines, metric)
    n_subjects = results_df["subject"].nunique()
    if tests.empty:
        lines.append(
            "No spiking pipeline (" + ", ".join(snn_pipelines or DEFAULT_SNN_PIPELINES)
            + ") together with a baseline in these results: no paired test."
        )
    else:
        lines.append(
            f"Two-sided Wilcoxon signed-rank test on per-subject {metric} (spiking minus "
            "baseline), paired by subject."
        )
        if n_subjects < _MIN_SUBJECTS_FOR_POWER:
            lines.append(
                f"With {n_subjects} subjects the test is underpowered: it cannot reach "
                "p < 0.05 whatever the differences; read the numbers as descriptive."
            )
        lines += ["", _markdown_table(tests)]
    lines.append("")

    if matrices:
        lines += ["## Confusion matrices (summed over folds)", ""]
        lines += [f"![confusion matrices]({paths['confusion'].name})", ""]
    if "curves" in paths:
        lines += ["## Training curves", "", f"![training curves]({paths['curves'].name})", ""]
    paths["markdown"].write_text("\n".join(lines), encoding="utf-8")
    logger.info("Wrote report to %s", out_dir)
    return paths


def merge_runs(run_dirs: Sequence) -> tuple[pd.DataFrame, list[pd.DataFrame]]:
    """Read several evaluation folders of one protocol back as one result table.

    Long evaluations can be split by pipeline (e.g. the slow spiking pipelines on
    another machine); as long as every run used the same protocol, seed and trials,
    their folds are the same and the scores can be compared pairwise. This checks
    exactly that: a (subject, fold) must have the same ``split_id`` (fingerprint of
    its test trials) in every run, and no pipeline x subject x fold may appear twice.

    Parameters
    ----------
    run_dirs : sequence of path-like
        Folders written by :func:`write_report` (``results.csv``, optional
        ``histories.csv``).

    Returns
    -------
    results : pandas.DataFrame
        The rows of every run, in run order.
    histories : list of pandas.DataFrame
        One training history per pipeline x subject x fold found in the runs.

    Raises
    ------
    FileNotFoundError
        A folder has no ``results.csv``.
    ValueError
        Runs mix protocols, use different folds, or repeat a pipeline's fold.
    """
    tables, histories = [], []
    for folder in map(Path, run_dirs):
        csv = folder / "results.csv"
        if not csv.is_file():
            raise FileNotFoundError(f"{csv} not found: pass folders written by 'app.py evaluate'")
        tables.append(pd.read_csv(csv).assign(_source=str(folder)))
        history_csv = folder / "histories.csv"
        if history_csv.is_file():
            frame = pd.read_csv(history_csv)
            keys = [c for c in ("run", "pipeline", "subject", "fold") if c in frame.columns]
            histories += [run.drop(columns="run", errors="ignore") for _, run in frame.groupby(keys, sort=False)]
    results = pd.concat(tables, ignore_index=True)
    missing = [c for c in _REQUIRED if c not in results.columns]
    if missing:
        raise ValueError(f"results lack the column(s) {missing}")
    if "protocol" in results.columns and results["protocol"].nunique() > 1:
        raise ValueError(f"the runs mix protocols {sorted(results['protocol'].unique())}; merge one protocol")
    repeated = results[results.duplicated(["pipeline", "subject", "fold"], keep=False)]
    if not repeated.empty:
        first = repeated.iloc[0]
        raise ValueError(f"pipeline {first['pipeline']!r}, subject {first['subject']}, fold {first['fold']} "
                         f"appears in more than one run ({sorted(repeated['_source'].unique())})")
    if "split_id" in results.columns:
        folds = results.groupby(["subject", "fold"])["split_id"].nunique()
        if (folds > 1).any():
            subject, fold = folds[folds > 1].index[0]
            raise ValueError(f"subject {subject} fold {fold} has different test trials in different runs: "
                             "the runs used different folds (protocol, seed or trials differ)")
    return results.drop(columns="_source"), histories


def plot_training_curves(history, path) -> Path:
    """Plot one training history (loss, acc, acc_ord, silent fraction per epoch) to a PNG.

    Parameters
    ----------
    history : pandas.DataFrame | list of dict
        Per-epoch records with an ``epoch`` column and any of the curve columns; a
        ``pipeline`` column names the line (default ``"model"``).
    path : str | Path
        PNG file to write.
    """
    frame = pd.DataFrame(history)
    if "pipeline" not in frame.columns:
        frame = frame.assign(pipeline="model")
    path = Path(path)
    _plot_histories(_histories_frame([frame]), path)
    return path
