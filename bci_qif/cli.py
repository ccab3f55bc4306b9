"""Command-line interface: ``python app.py <command> ...``.

Commands
--------
train      train a spiking decoder on EEGMMIDB subjects and save a checkpoint
fine-tune  adapt a trained decoder to a new user's labelled trials
evaluate   compare spiking decoders and classical baselines under a protocol
report     merge evaluate folders (same protocol and folds, e.g. pipelines run apart) into one report
gui        decode a live LSL stream or a replayed recording in real time (PyQtGraph window)
compare    LIF vs QIF study: equal searches, seeds and splits; report.md and figures

Every command that reads data takes ``--data-dir`` (else env ``MNE_DATA``, else
MNE's default data folder).
"""

from __future__ import annotations

import argparse
import functools
import logging
import os
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd

from .config import DEFAULTS, PIPELINE_NAMES, load_config
from .errors import BCIQIFError, ConfigError
from .protocols import PROTOCOLS

logger = logging.getLogger("bci_qif")

DEFAULT_CONFIG = Path("configs") / "default.yaml"


def _subjects(config, override, data_dir):
    from .datasets import available_subjects

    if override:
        return [int(s) for s in override]
    subjects = config["dataset"]["subjects"]
    if subjects == "all":
        found = available_subjects(config["dataset"]["task"], data_dir)
        if not found:
            raise BCIQIFError(
                f"no EEGMMIDB subjects found for task {config['dataset']['task']!r} under the data root; "
                "pass --data-dir, set MNE_DATA, or use --download"
            )
        return list(found)
    return subjects


def _load(config, args):
    from .datasets import load_eegbci

    subjects = _subjects(config, args.subjects, args.data_dir)
    t0 = time.perf_counter()
    trials = load_eegbci(subjects, task=config["dataset"]["task"], data_dir=args.data_dir,
                         preprocessing=config["preprocessing"], download=args.download)
    logger.info("loaded %s in %.1f s", trials, time.perf_counter() - t0)
    return trials


def _config_path(args):
    if args.config is not None:
        return args.config
    return DEFAULT_CONFIG if DEFAULT_CONFIG.is_file() else None


def _model(config, **overrides):
    from .estimator import QIFClassifier

    params = dict(config["model"], **config["training"])
    params.update(overrides)
    return QIFClassifier(**params)


def _pretrained_decoder(config, **overrides):
    """The networks that qif_finetuned pretrains: ``model`` with ``fine_tuning.pretrained_model``'s changes."""
    return _model(config, **{**config["fine_tuning"]["pretrained_model"], **overrides})


def cmd_train(args):
    """Train a decoder, writing checkpoint, model, history and curves to ``--out``."""
    from .report import plot_training_curves

    config_path = _config_path(args)
    config = load_config(config_path)
    stem = Path(config_path).stem if config_path else "default"
    out = Path(args.out or Path("runs") / (f"{stem}_pretrained" if args.pretrain else stem))
    out.mkdir(parents=True, exist_ok=True)
    trials = _load(config, args)
    epochs = trials.to_epochs()
    # --pretrain: the decoder for new users, which `fine-tune` adapts (as the qif_finetuned pipeline does).
    model = (_pretrained_decoder if args.pretrain else _model)(config, verbose=not args.quiet)
    if args.epochs is not None:
        model.set_params(epochs=args.epochs)
    t0 = time.perf_counter()
    # Subject ids let a re-centring encoder align each subject by its own mean.
    model.fit(epochs, trials.labels, groups=trials.subjects, checkpoint=out / "checkpoint.npz", resume=args.resume)
    elapsed = time.perf_counter() - t0
    model.save(out / "model.npz", context={"preprocessing": trials.config, "class_names": trials.class_names,
                                           "subjects": sorted(set(trials.subjects.tolist()))})
    history = pd.DataFrame(model.history_)
    history.to_csv(out / "history.csv", index=False)
    plot_training_curves(history.assign(pipeline=model.neuron), out / "training_curves.png")
    print(f"trained {len(model.members_)} {model.neuron} network(s) on {len(trials)} trials in {elapsed:.0f} s")
    for member, rows in history.groupby("member"):
        last = rows.iloc[-1]
        print(f"  network {member + 1}, epoch {int(last['epoch'])}: loss {last['loss']:.3f}, acc {last['acc']:.3f}, "
              f"acc_ord {last['acc_ord']:.3f}"
              + (f", val_acc_ord {last['val_acc_ord']:.3f}" if "val_acc_ord" in last else ""))
    print(f"model written to {out / 'model.npz'}")
    return 0


def cmd_fine_tune(args):
    """Adapt a trained decoder to a user's labelled trials; write the tuned model to ``--out``."""
    from .datasets import load_eegbci
    from .realtime import _dataset_context, load_model, model_preprocessing

    model = load_model(args.model)
    task = (_dataset_context(model) or {}).get("task", "left_right_imagery")
    trials = load_eegbci(args.subjects, task=task, data_dir=args.data_dir, preprocessing=model_preprocessing(model),
                         download=args.download)
    keep = np.concatenate([np.flatnonzero(trials.subjects == s)[:args.trials] for s in args.subjects])
    X, y = trials.data[keep], np.asarray(trials.labels)[keep]  # recording order: a session's first trials
    before = model.score(X, y)
    model.set_params(verbose=not args.quiet)
    t0 = time.perf_counter()
    model.fine_tune(X, y, epochs=args.epochs, learning_rate=args.learning_rate)
    elapsed = time.perf_counter() - t0
    context = dict(model.context_)
    context["subjects"] = sorted(set(context.get("subjects", [])) | set(args.subjects))
    context["fine_tuned_on"] = {"subjects": list(args.subjects), "n_trials": len(keep), "epochs": args.epochs,
                                "learning_rate": args.learning_rate}
    out = Path(args.out or Path("runs") / f"fine_tuned_S{'_'.join(f'{s:03d}' for s in args.subjects)}")
    out.mkdir(parents=True, exist_ok=True)
    model.save(out / "model.npz", context=context)
    print(f"fine-tuned {len(model.members_)} network(s) on {len(keep)} trials of subject(s) "
          f"{', '.join(map(str, args.subjects))} in {elapsed:.0f} s: accuracy on these trials "
          f"{before:.3f} -> {model.score(X, y):.3f}")
    print(f"model written to {out / 'model.npz'}")
    return 0


def _fine_tuned_model(config, sfreq):
    from .finetuning import FineTunedQIF

    tuning = {key: value for key, value in config["fine_tuning"].items() if key != "pretrained_model"}
    return FineTunedQIF(_pretrained_decoder(config, sfreq=sfreq), **tuning)


def _pipelines(names, config, sfreq):
    from .baselines import make_baseline

    factories = {}
    for name in names:
        if name in ("qif", "lif"):
            factories[name] = functools.partial(_model, config, neuron=name, sfreq=sfreq)
        elif name == "qif_finetuned":
            factories[name] = functools.partial(_fine_tuned_model, config, sfreq)
        else:
            factories[name] = functools.partial(make_baseline, name, sfreq=sfreq)
    return factories


def cmd_evaluate(args):
    """Evaluate pipelines on the same folds and write results.csv, report.md and figures."""
    from .evaluation import evaluate
    from .report import write_report

    config_path = _config_path(args)
    config = load_config(config_path)
    evaluation = config["evaluation"]
    protocol = args.protocol or evaluation["protocol"]
    names = args.pipelines.split(",") if args.pipelines else evaluation["pipelines"]
    bad = sorted(set(names) - set(PIPELINE_NAMES))
    if bad:
        raise ConfigError(f"unknown pipeline(s) {bad}; choose from {list(PIPELINE_NAMES)}")
    if "qif_finetuned" in names and protocol == "within-subject":
        raise ConfigError("pipeline qif_finetuned pretrains on the other subjects: use --protocol "
                          "within-subject-pooled (or cross-subject), not within-subject")
    stem = Path(config_path).stem if config_path else "default"
    out = Path(args.out or Path("results") / f"{stem}_{protocol}")
    trials = _load(config, args)
    t0 = time.perf_counter()
    results = evaluate(trials, _pipelines(names, config, trials.sfreq), protocol=protocol,
                       n_splits=args.n_splits or evaluation["n_splits"], n_calibration=evaluation["n_calibration"],
                       n_jobs=args.n_jobs, seed=evaluation["seed"], progress=not args.quiet)
    elapsed = time.perf_counter() - t0
    paths = write_report(results, out, title=f"bci_qif evaluation: {stem}, {protocol}",
                         extra_histories=results.attrs.get("histories"))
    columns = [c for c in ("accuracy", "roc_auc", "kappa", "acc_ord") if c in results.columns]
    summary = results.groupby(["pipeline", "subject"])[columns].mean().groupby("pipeline").agg(["mean", "std"])
    print(summary.round(3).to_string())
    print(f"{len(results)} fold results in {elapsed:.0f} s; report: {paths['markdown']}")
    return 0


def cmd_report(args):
    """Merge evaluation folders of one protocol and write one report over all of them."""
    from .report import merge_runs, write_report

    results, histories = merge_runs(args.runs)
    paths = write_report(results, args.out, title=args.title, extra_histories=histories or None)
    print(f"{len(results)} fold results from {len(args.runs)} run(s); report: {paths['markdown']}")
    return 0


def _replay_default(model, data_dir):
    """The first shared EEGMMIDB subject the model was not trained on."""
    from .datasets import available_subjects
    from .realtime import _dataset_context

    dataset = _dataset_context(model) or {}
    trained = set(dataset.get("subjects") or (getattr(model, "context_", None) or {}).get("subjects") or [])
    candidates = [s for s in available_subjects(dataset.get("task", "left_right_imagery"), data_dir)
                  if s not in trained]
    if not candidates:
        raise BCIQIFError("no recording to replay: pass --replay FILE_OR_SUBJECT or --stream NAME")
    return str(candidates[0])


def cmd_gui(args):
    """Open the real-time decoding window on a live LSL stream or a replayed recording."""
    if args.duration is not None and not (os.environ.get("DISPLAY") or os.environ.get("WAYLAND_DISPLAY")):
        os.environ.setdefault("QT_QPA_PLATFORM", "offscreen")  # scripted runs work headless
    from .realtime import LSLSource, ReplaySource, configure_lsl, load_model, load_recording

    configure_lsl(loopback=not args.lsl_network)
    model = load_model(args.model)
    if args.stream or args.source_id:
        source = LSLSource(name=args.stream, source_id=args.source_id,
                           annotations=args.markers if args.markers else bool(args.stream))
    else:
        replay = args.replay or _replay_default(model, args.data_dir)
        source = ReplaySource(load_recording(replay, run=args.run, data_dir=args.data_dir, model=model))
    from .gui import run_gui

    summary = run_gui(model, source, window_s=args.window, hop_s=args.hop, duration=args.duration,
                      screenshot=args.screenshot, fps=args.fps, channels=args.channels,
                      decoder_options={"stall_timeout": args.stall_timeout, "calibration_s": args.calibrate,
                                       "adapt": args.adapt})
    print(f"source: {source.description}")
    if summary["calibrated"]:
        print(f"aligned to this user on the first {args.calibrate:g} s of the stream")
    if summary["adapted_windows"]:
        print(f"kept aligning to this user: running mean of {summary['adapted_windows']} windows")
    print(f"decoded {summary['windows']} windows; decode latency p50 {summary['latency_p50_ms']:.1f} ms, "
          f"p99 {summary['latency_p99_ms']:.1f} ms, max {summary['latency_max_ms']:.1f} ms "
          f"({summary['compilations']} JIT compilations excluded)")
    print(f"display {summary['display_fps']:.1f} fps; decision painted {summary['display_delay_p50_ms']:.1f} ms "
          f"(p50) after its window was decoded; reconnections {summary['reconnects']}")
    if summary["accuracy"] is not None:
        print(f"online accuracy {summary['accuracy']:.3f} over {summary['n_labelled']} labelled windows")
    if summary.get("screenshot"):
        print(f"screenshot written to {summary['screenshot']}")
    if summary.get("last_error"):
        print(f"error: {summary['last_error']}", file=sys.stderr)
    return 0 if summary["windows"] else 1


def _mean(values):
    return sum(values) / len(values) if values else float("nan")


def cmd_compare(args):
    """Run the LIF vs QIF study of a configuration and write report.md and figures to ``--out``."""
    from .compare import run_compare

    t0 = time.perf_counter()
    result = run_compare(args.config, quick=args.quick, data_dir=args.data_dir, out=args.out,
                         progress=not args.quiet)
    metrics = result["metrics"]
    for model in ("qif", "lif"):
        accs = metrics[model].get("test_acc", [])
        ords = metrics[model].get("test_acc_ord", [])
        print(f"{model}: test acc {_mean(accs):.3f}, acc_ord {_mean(ords):.3f} over {len(accs)} seed(s)")
    print(f"study finished in {time.perf_counter() - t0:.0f} s; report: {result['out'] / 'report.md'}")
    return 0


def build_parser():
    """The argument parser of ``app.py``."""
    parser = argparse.ArgumentParser(prog="app.py", description="bci_qif: exact-gradient spiking BCI decoders")
    parser.add_argument("-v", "--verbose", action="store_true", help="log progress details")
    sub = parser.add_subparsers(dest="command")

    def data_args(p):
        p.add_argument("--config", type=Path, help="YAML configuration (default: configs/default.yaml)")
        p.add_argument("--subjects", nargs="+", type=int, help="EEGMMIDB subject numbers (default: config)")
        p.add_argument("--data-dir", help="data root holding MNE-eegbci-data/ (default: $MNE_DATA, else MNE's)")
        p.add_argument("--download", action="store_true", help="download missing EEGMMIDB files (needs internet)")
        p.add_argument("--quiet", action="store_true", help="no progress bars")

    train = sub.add_parser("train", help="train a spiking decoder")
    data_args(train)
    train.add_argument("--out", type=Path,
                       help="output folder (default: runs/<config name>, or runs/<config name>_pretrained "
                            "with --pretrain)")
    train.add_argument("--resume", action="store_true", help="continue an interrupted run from its checkpoint")
    train.add_argument("--epochs", type=int, help="override the number of epochs")
    train.add_argument("--pretrain", action="store_true",
                       help="train the decoder for new users that fine-tune adapts (the configuration's model "
                            "with its fine_tuning.pretrained_model settings, as the qif_finetuned pipeline)")
    train.set_defaults(func=cmd_train)

    tune = sub.add_parser("fine-tune", help="adapt a trained decoder to a new user's labelled trials")
    tune.add_argument("--model", required=True, help="model.npz or a run folder holding one (e.g. runs/default)")
    tune.add_argument("--subjects", nargs="+", type=int, required=True, help="the user's EEGMMIDB subject number(s)")
    tune.add_argument("--trials", type=int, help="only each subject's first N trials (recording order)")
    # The configuration's fine_tuning defaults, so that `fine-tune` and the qif_finetuned pipeline agree.
    tuning = DEFAULTS["fine_tuning"]
    tune.add_argument("--epochs", type=int, default=tuning["epochs"],
                      help=f"fine-tuning epochs (default {tuning['epochs']}; 0: only align the model to the user)")
    tune.add_argument("--learning-rate", type=float, default=tuning["learning_rate"],
                      help=f"peak learning rate (default {tuning['learning_rate']:g})")
    tune.add_argument("--data-dir", help="data root holding MNE-eegbci-data/ (default: $MNE_DATA, else MNE's)")
    tune.add_argument("--download", action="store_true", help="download missing EEGMMIDB files (needs internet)")
    tune.add_argument("--quiet", action="store_true", help="no progress bars")
    tune.add_argument("--out", type=Path, help="output folder (default: runs/fine_tuned_S<subjects>)")
    tune.set_defaults(func=cmd_fine_tune)

    ev = sub.add_parser("evaluate", help="evaluate decoders against classical baselines")
    data_args(ev)
    ev.add_argument("--protocol", choices=list(PROTOCOLS),
                    help="within-subject-pooled: within-subject test folds, other subjects' trials added to training")
    ev.add_argument("--pipelines", help=f"comma-separated, from {','.join(PIPELINE_NAMES)}")
    ev.add_argument("--n-splits", type=int, help="folds per subject (the within-subject protocols)")
    ev.add_argument("--n-jobs", type=int, default=1, help="folds fitted in parallel")
    ev.add_argument("--out", type=Path, help="output folder (default: results/<config>_<protocol>)")
    ev.set_defaults(func=cmd_evaluate)

    rep = sub.add_parser("report", help="one report over several evaluate folders of the same protocol and folds")
    rep.add_argument("runs", nargs="+", type=Path, help="folders written by 'app.py evaluate'")
    rep.add_argument("--out", type=Path, required=True, help="output folder of the merged report")
    rep.add_argument("--title", default="bci_qif evaluation (merged runs)", help="title of report.md")
    rep.set_defaults(func=cmd_report)

    gui = sub.add_parser("gui", help="real-time decoding window (live LSL stream or replayed recording)")
    gui.add_argument("--model", required=True, type=Path, help="model.npz, or a run folder holding one")
    where = gui.add_mutually_exclusive_group()
    where.add_argument("--stream", help="name of a live LSL stream")
    where.add_argument("--replay", help="recording to replay: a file MNE reads, or an EEGMMIDB subject "
                                        "(2, S002, S002R08); default: a shared subject the model was not trained on")
    gui.add_argument("--source-id", help="source id of the live LSL stream")
    gui.add_argument("--markers", help="LSL stream of annotations giving true labels (default: <stream>-annotations)")
    gui.add_argument("--run", type=int,
                     help="EEGMMIDB run of --replay SUBJECT (default: first run of the model's task)")
    gui.add_argument("--data-dir", help="data root holding MNE-eegbci-data/ (default: $MNE_DATA, else MNE's)")
    gui.add_argument("--window", type=float, help="window length in s (default: the model's trial length)")
    gui.add_argument("--hop", type=float, default=0.125, help="hop between decoded windows in s (default 0.125)")
    gui.add_argument("--channels", nargs="+", help="channels shown at first (default: C3, Cz, C4 ...)")
    gui.add_argument("--fps", type=float, default=30.0, help="display refresh rate (default 30)")
    gui.add_argument("--stall-timeout", type=float, default=1.0, help="s without samples before 'disconnected'")
    gui.add_argument("--calibrate", type=float, metavar="S",
                     help="align a new user on the first S s of the stream (unlabelled) before decoding; "
                          "for models trained on other subjects (recenter: true)")
    gui.add_argument("--adapt", action="store_true",
                     help="keep aligning to the user while decoding (a running mean of the decoded windows; "
                          "no calibration phase needed; recenter: true)")
    gui.add_argument("--duration", type=float, help="decode for S seconds after the first window, then exit "
                                                    "(headless: offscreen)")
    gui.add_argument("--screenshot", type=Path, help="write a PNG of the window at the end")
    gui.add_argument("--lsl-network", action="store_true",
                     help="use liblsl's network configuration instead of loopback-only (to reach devices)")
    gui.set_defaults(func=cmd_gui)

    compare = sub.add_parser("compare", help="LIF vs QIF study (arXiv:2606.03935 protocol) with a report")
    compare.add_argument("--config", type=Path, required=True,
                         help="study configuration, e.g. configs/compare_yinyang.yaml (or _eeg, _shd)")
    compare.add_argument("--quick", action="store_true", help="CI-sized run (the configuration's quick section)")
    compare.add_argument("--data-dir", help="data root (EEG: holds MNE-eegbci-data/; SHD: relative file paths) "
                                            "(default: $MNE_DATA)")
    compare.add_argument("--out", type=Path, help="output folder (default: results/compare_<task>[_quick])")
    compare.add_argument("--quiet", action="store_true", help="no progress bars")
    compare.set_defaults(func=cmd_compare)
    return parser


def _use_persistent_jax_cache():
    """Point JAX's persistent compilation cache at the bci_qif cache folder.

    Compiling the training step takes tens of seconds; parallel folds run in
    separate worker processes (and joblib replaces workers from time to time), so
    without an on-disk cache every worker compiles the same programs again. Set
    through the environment before JAX is imported so that worker processes
    inherit it. A user's own ``JAX_COMPILATION_CACHE_DIR`` wins; an unwritable
    cache folder just leaves the cache off. A full evaluation adds about 30 MB;
    delete the folder to reclaim the space. (JAX's size cap,
    ``JAX_COMPILATION_CACHE_MAX_SIZE``, is not set: its LRU bookkeeping files race
    between parallel workers and it needs the ``filelock`` package.)
    """
    if os.environ.get("JAX_COMPILATION_CACHE_DIR"):
        return
    from .cache import default_cache_dir

    folder = default_cache_dir() / "jax"
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError:
        return
    if os.access(folder, os.W_OK):
        os.environ["JAX_COMPILATION_CACHE_DIR"] = str(folder)


def main(argv=None):
    """Entry point; returns the process exit code."""
    _use_persistent_jax_cache()
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO if args.verbose else logging.WARNING,
                        format="%(asctime)s %(name)s %(levelname)s: %(message)s")
    if args.command is None:
        args = parser.parse_args(["train", *(argv or [])])
    try:
        return args.func(args)
    except (BCIQIFError, ValueError, FileNotFoundError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted; rerun with --resume to continue from the last checkpoint", file=sys.stderr)
        return 130
