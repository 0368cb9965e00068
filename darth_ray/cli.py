"""`darth-ray`: one entry point, one subcommand per step of a DARTH experiment.

    darth-ray synth        generate the embedded DanceTrack-like benchmark (source + shifted target domains)
    darth-ray evaluate     score MOTChallenge result files: HOTA/DetA/AssA/LocA (TrackEval), MOTA/IDF1 (motmetrics)
    darth-ray visualize    draw tracker results as one video per sequence (side by side with --compare)
    darth-ray train-source supervised QDTrack training on a labelled (source) domain
    darth-ray track        run a checkpoint + QuasiDenseTracker over sequences, write MOTChallenge results
    darth-ray adapt        test-time adaptation (DARTH or --method) of a source checkpoint on unlabeled targets
    darth-ray convert-mmtrack  import an mmtrack 0.14 QDTrack checkpoint into the r50_fpn model
    darth-ray config show  the darth_ray configuration an mmtrack/DARTH config file resolves to

Heavy modules (torch, ray) are imported inside the handlers so `--help` answers at once. Bad input ends with
one line naming the file and line (or the flag), and exit code 2. Outputs follow darth_ray/io.py's rules: they never
overwrite an input or another command's outputs, and a resume checks every input and setting it depends on.
"""
from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

from darth_ray.io import (InputError, atomic_write_json, check_output_file, claim_output_dir, file_sha256,
                          require_directory)

log = logging.getLogger("darth_ray")


def _synth(args: argparse.Namespace) -> None:
    from darth_ray.data.synth import SynthConfig, generate_benchmark

    fields = {k: tuple(v) if isinstance(v, list) else v for k, v in vars(args).items()
              if k in SynthConfig.__dataclass_fields__ and v is not None}
    summary = generate_benchmark(args.out, SynthConfig(**fields), progress=not args.quiet)
    print(f"wrote the benchmark to {args.out}: domains {', '.join(summary['domains'])}")


def _evaluate(args: argparse.Namespace) -> None:
    from darth_ray.eval.metrics import evaluate_dataset, format_report

    if args.json:
        gt, results = Path(args.gt), Path(args.results)
        texts = list(results.glob("*.txt"))  # a folder of Scalabel JSON results is read when it has no *.txt
        read = [*(texts or results.glob("*.json")), *gt.glob("*/gt/gt.txt"), *gt.glob("*/seqinfo.ini")]
        check_output_file(args.json, inputs=read + ([gt] if gt.is_file() else []), flag="--json")
    report = evaluate_dataset(args.gt, args.results, split=args.split, images=args.images, classes=args.classes,
                              class_map=args.class_map, benchmark=args.benchmark)
    print(format_report(report))
    if args.json:
        atomic_write_json(args.json, report.to_dict())
        print(f"wrote {args.json}")


def _visualize(args: argparse.Namespace) -> None:
    import dataclasses

    from darth_ray.data.dataset import dataset_options, load_dataset
    from darth_ray.eval.metrics import read_results
    from darth_ray.eval.visualize import VideoConfig, panel_titles, write_videos

    config = VideoConfig(**_given_fields(args, VideoConfig))
    inputs = {"--results": args.results, "--data": args.data, **({"--compare": args.compare} if args.compare else {})}
    for flag, path in inputs.items():  # results beside the videos would be read back with their darth_run.json
        if args.out.exists() and path.exists() and args.out.samefile(path):
            raise InputError(args.out, f"is the {flag} directory; write the videos to another --out")
    sequences, _ = load_dataset(args.data, split=args.split, images=args.images, classes=args.classes,
                                class_map=args.class_map, require_images=True, require_gt=args.gt)
    dirs = [args.results] + ([args.compare] if args.compare else [])
    result_sets = {title: read_results(d, sequences) for title, d in zip(panel_titles(dirs), dirs)}
    provenance = {"data": str(args.data.resolve()), "split": args.split, **dataset_options(args.images, args.classes, args.class_map),
                  "results": [str(d.resolve()) for d in dirs], **dataclasses.asdict(config)}
    claim_output_dir(args.out, "visualize", provenance, [f"{s.name}.{config.format}" for s in sequences])
    paths = write_videos(sequences, result_sets, args.out, config, show_progress=not args.quiet)
    print(f"wrote {len(paths)} videos to {args.out}")


def _class_map(text: str) -> dict[str, str]:
    """MODEL=DATASET,... as a dict (argparse type)."""
    pairs = [p.split("=", 1) for p in text.split(",") if p.strip()]
    if not pairs or any(len(p) != 2 or not p[0].strip() or not p[1].strip() for p in pairs):
        raise argparse.ArgumentTypeError(f"expected MODEL_CLASS=DATASET_CATEGORY[,...], got {text!r}")
    return {k.strip(): v.strip() for k, v in pairs}


def _add_dataset_options(p: argparse.ArgumentParser, data_flag: str) -> None:
    g = p.add_argument_group(
        "dataset", f"{data_flag} is a MOTChallenge/DanceTrack folder (root or split), an mmtrack COCO-video JSON "
                   "(*_cocofmt.json; the authors' ann_file), or BDD100K/SHIFT Scalabel labels (a file or folder)")
    g.add_argument("--split", default=None, help=f"split under {data_flag} (e.g. val)")
    g.add_argument("--images", type=Path, default=None,
                   help="image root for the JSON formats (the config's img_prefix)")
    g.add_argument("--classes", nargs="+", default=None, metavar="NAME",
                   help="classes to keep, in the model's order (e.g. pedestrian: the 'Ped.' settings); other "
                        "categories are dropped, their crowd boxes stay ignore regions")
    g.add_argument("--class-map", type=_class_map, default=None, metavar="MODEL=DATA,...",
                   help="model class -> dataset category where the names differ (e.g. person=pedestrian)")


def _tracker_params(args: argparse.Namespace) -> dict:
    return {k: getattr(args, k) for k in TRACKER_OPTIONS if getattr(args, k, None) is not None}


TRACKER_OPTIONS = ("init_score_thr", "obj_score_thr", "match_score_thr", "memo_tracklet_frames", "memo_momentum")


def _add_tracker_options(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("tracker (QuasiDenseTracker; defaults are QDTrack's MOT17/DanceTrack values)")
    g.add_argument("--init-score-thr", type=float, help="score to start a new track (0.9)")
    g.add_argument("--obj-score-thr", type=float, help="score to keep a matched detection (0.5)")
    g.add_argument("--match-score-thr", type=float, help="bi-softmax similarity to match a track (0.5)")
    g.add_argument("--memo-tracklet-frames", type=int, help="frames a lost track is remembered (30)")
    g.add_argument("--memo-momentum", type=float, help="momentum of track embeddings (0.8)")


def _track(args: argparse.Namespace) -> None:
    import torch

    from darth_ray.data.dataset import dataset_options, load_dataset
    from darth_ray.data.mot import MotSequence
    from darth_ray.data.results import write_scalabel_results
    from darth_ray.eval.metrics import format_report, score_report
    from darth_ray.eval.track import track_sequences
    from darth_ray.models.qdtrack import load_checkpoint

    if args.threads:
        torch.set_num_threads(args.threads)
    device = resolve_device(args.device)
    model, _ = load_checkpoint(args.checkpoint, map_location=device)
    model.to(device)
    sequences, _ = load_dataset(args.data, split=args.split, images=args.images, classes=args.classes,
                                class_map=args.class_map, require_images=True)
    scalabel = not all(isinstance(seq, MotSequence) for seq in sequences)  # BDD100K/SHIFT: also their format
    provenance = {"checkpoint": str(args.checkpoint.resolve()), "checkpoint_sha256": file_sha256(args.checkpoint),
                  "data": str(args.data.resolve()), "split": args.split, "max_size": args.max_size,
                  **dataset_options(args.images, args.classes, args.class_map), **_tracker_params(args)}
    outputs = [f"{seq.name}.txt" for seq in sequences] + ["metrics.json"]
    outputs += [f"scalabel/{seq.name}.json" for seq in sequences] if scalabel else []
    claim_output_dir(args.out, "track", provenance, outputs, inputs=[args.checkpoint])
    results = track_sequences(model, sequences, args.out, _tracker_params(args), batch_size=args.batch_size,
                              max_size=args.max_size, show_progress=not args.quiet)
    print(f"wrote {len(results)} result files to {args.out}")
    if scalabel:
        for seq in sequences:
            write_scalabel_results(Path(args.out) / "scalabel" / f"{seq.name}.json", seq, **results[seq.name])
        print(f"wrote Scalabel results to {Path(args.out) / 'scalabel'}")
    if all(seq.has_gt for seq in sequences):
        report = score_report(sequences, results)
        print(format_report(report))
        atomic_write_json(Path(args.out) / "metrics.json", report.to_dict())
        print(f"wrote {Path(args.out) / 'metrics.json'}")


def resolve_device(requested: str) -> str:
    """--device as a torch device, checked before anything is loaded onto it."""
    import torch

    if requested == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    try:
        device = torch.device(requested)
    except (RuntimeError, ValueError):
        raise InputError("--device", f"{requested!r} is not a torch device (auto, cpu, cuda, cuda:N)") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise InputError("--device", f"{requested}: CUDA is not available on this machine (use cpu or auto)")
    if device.type == "cuda" and (device.index or 0) >= torch.cuda.device_count():
        raise InputError("--device", f"{requested}: this machine has {torch.cuda.device_count()} CUDA device(s)")
    return requested


def add_device_option(p: argparse.ArgumentParser) -> None:
    p.add_argument("--device", default="auto", help="torch device (auto: cuda when available, else cpu)")


def parsed_device(p: argparse.ArgumentParser, requested: str) -> str:
    """resolve_device for a script with its own parser: a device that is not there is its usage error."""
    try:
        return resolve_device(requested)
    except InputError as e:
        p.error(str(e))


def _train_source(args: argparse.Namespace) -> None:
    import torch

    from darth_ray.source_training import SourceTrainConfig, train_source

    if args.threads:
        torch.set_num_threads(args.threads)
    device = resolve_device(args.device)
    fields = {k: tuple(v) if isinstance(v, list) else v for k, v in _given_fields(args, SourceTrainConfig).items()}
    architecture, classes = None, args.classes
    if args.config:  # the file's settings, then the options given on the command line
        from darth_ray.mmconfig import training_settings

        settings = training_settings(args.config)
        if args.model is None:
            architecture = settings["model"]
            fields.setdefault("model", architecture.name)
        fields = {**settings["training"], **fields}
        classes = classes or settings["classes"]
    final = train_source(args.data, args.out, SourceTrainConfig(**fields), split=args.split,
                         resume=not args.no_resume, show_progress=not args.quiet, device=device,
                         images=args.images, classes=classes, class_map=args.class_map, architecture=architecture)
    print(f"final checkpoint: {final}")


def _add_config_options(p: argparse.ArgumentParser, config_cls, title: str, helps: dict | None = None) -> None:
    """One --option per field of a config dataclass, typed after its default, explained by `helps` (field: text);
    defaults stay the dataclass's."""
    import dataclasses
    import typing

    g = p.add_argument_group(title)
    hints = typing.get_type_hints(config_cls)
    for f in dataclasses.fields(config_cls):
        default = f.default
        kind = hints[f.name]
        flag = "--" + f.name.replace("_", "-")
        text = f"{(helps or {}).get(f.name, '')} (default: {default})".lstrip()
        if isinstance(default, bool):
            g.add_argument(flag, type=_boolean, metavar="BOOL", help=text)
        elif isinstance(default, str) or kind == str | None:  # the config object validates the name, lists choices
            g.add_argument(flag, type=str, metavar="NAME", help=text)
        elif isinstance(default, tuple) or "tuple" in str(kind):
            elem = int if "int" in str(kind) and "float" not in str(kind) else float
            g.add_argument(flag, type=elem, nargs="+", metavar="X", help=text)
        elif isinstance(default, int) and not ("float" in str(kind)):
            g.add_argument(flag, type=int, metavar="N", help=text)
        else:
            g.add_argument(flag, type=float, metavar="X", help=text)


def _positive_int(text: str) -> int:
    """An int >= 1; anything else is an argparse error naming the flag and the value."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a whole number >= 1, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be >= 1, got {value}")
    return value


def _boolean(text: str) -> bool:
    """true/false (also yes/no, 1/0); anything else is an argparse error naming the value."""
    value = {"true": True, "yes": True, "1": True, "false": False, "no": False, "0": False}.get(text.lower())
    if value is None:
        raise argparse.ArgumentTypeError(f"expected true or false, got {text!r}")
    return value


def _given_fields(args: argparse.Namespace, config_cls) -> dict:
    """The fields of `config_cls` given as options on the command line (the rest keep their defaults)."""
    import dataclasses

    return {f.name: getattr(args, f.name) for f in dataclasses.fields(config_cls)
            if getattr(args, f.name, None) is not None}


def _adapt(args: argparse.Namespace) -> None:
    import torch

    from darth_ray.adapt.config import DarthConfig
    from darth_ray.adapt.loop import adapt
    from darth_ray.adapt.methods import METHODS
    from darth_ray.eval.label_free import LABEL_FREE_METRICS
    from darth_ray.eval.metrics import COMBINED, format_table

    if args.threads:
        torch.set_num_threads(args.threads)
    device = resolve_device(args.device)
    given = _given_fields(args, DarthConfig)
    tracker, classes = _tracker_params(args), args.classes
    if args.config:  # the file's settings, then the options given on the command line
        from darth_ray.mmconfig import darth_settings

        settings = darth_settings(args.config, args.source)
        given = {**settings["darth"], **given}
        tracker = {**settings["tracker"], **tracker}
        classes = classes or settings["classes"]
    config = DarthConfig.from_dict(given)
    summary = adapt(args.source, args.target, args.out, config, split=args.split,
                    checkpoint_every=args.checkpoint_every, tracker_params=tracker,
                    resume=not args.no_resume, evaluate_source=args.compare_source, show_progress=not args.quiet,
                    device=device, images=args.images, classes=classes, class_map=args.class_map)
    if "final_checkpoint" in summary:  # not from an online run with episodic reset: one student per sequence
        print(f"adapted student: {summary['final_checkpoint']}")
    if "metrics" in summary:
        if "source_metrics" in summary:
            print("source model:\n" + format_table(summary["source_metrics"]))
        print(f"{METHODS[config.method].title}:\n" + format_table(summary["metrics"]))
        combined = summary["metrics"][COMBINED]
        if all(k in combined for k in LABEL_FREE_METRICS):  # the offline protocol's evaluation computes them
            print("label-free: " + "  ".join(f"{k} {combined[k]:.3f}" for k in LABEL_FREE_METRICS))
        print(f"wrote {Path(args.out) / 'metrics.json'}")


def _convert_mmtrack(args: argparse.Namespace) -> None:
    from darth_ray.models.convert_mmtrack import convert_mmtrack_checkpoint

    check_output_file(args.output, inputs=[args.input] + ([args.config] if args.config else []), flag="OUTPUT")
    print(f"wrote {convert_mmtrack_checkpoint(args.input, args.output, take=args.take, config=args.config)}")


def _config_show(args: argparse.Namespace) -> None:
    import json

    from darth_ray.mmconfig import read_config

    resolved = read_config(args.config).to_dict()
    if args.json:
        print(json.dumps(resolved, indent=2))
        return
    print(f"{resolved.pop('config')} ({resolved.pop('kind')} config)")
    for section, values in resolved.items():
        print(f"\n[{section}]")
        for key, value in values.items():
            print(f"  {key} = {json.dumps(value) if not isinstance(value, str) else value}")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="darth-ray", description=__doc__.split("\n\n")[0],
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog="Run `darth-ray COMMAND --help` for the options of one command.")
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)

    p = sub.add_parser("synth", help="generate the embedded DanceTrack-like benchmark with domain shifts",
                       description="Write OUT/<domain>/{train,val}/<seq>/{img1,gt/gt.txt,seqinfo.ini} for the "
                                   "clean source domain and each shifted target domain, deterministic from --seed.")
    p.add_argument("--out", type=Path, required=True, help="output directory")
    p.add_argument("--seed", type=int, default=None, help="random seed (default 0)")
    p.add_argument("--frames", type=int, default=None, help="frames per sequence")
    p.add_argument("--width", type=int, default=None, help="frame width in pixels (multiple of 32)")
    p.add_argument("--height", type=int, default=None, help="frame height in pixels (multiple of 32)")
    p.add_argument("--people", type=int, default=None, help="people per sequence")
    p.add_argument("--train-sequences", type=int, default=None, help="sequences in each train split")
    p.add_argument("--val-sequences", type=int, default=None, help="sequences in each val split")
    p.add_argument("--shift-strength", type=float, default=None,
                   help="strength of the target-domain shifts, 0..1")
    p.add_argument("--domains", nargs="+", default=None, help="domains to write (default: source and all targets)")
    p.add_argument("-q", "--quiet", action="store_true", help="no progress bar")
    p.set_defaults(handler=_synth)

    p = sub.add_parser("evaluate", help="score tracker results against ground truth",
                       description="HOTA, DetA, AssA, LocA (TrackEval) and MOTA, IDF1, IDSW, FP, FN (py-motmetrics, "
                                   "IoU 0.5), per sequence and COMBINED. Percentages are 0..100.")
    p.add_argument("--gt", type=Path, required=True,
                   help="ground truth: a MOTChallenge folder of <seq>/{gt/gt.txt,seqinfo.ini}, a COCO-video JSON or "
                        "Scalabel labels (per-class, class-averaged mHOTA/mMOTA/mIDF1 and per video attribute)")
    p.add_argument("--results", type=Path, required=True,
                   help="directory of <seq>.txt result files, or Scalabel JSON results (a file or folder)")
    p.add_argument("--json", type=Path, default=None, help="also write the metrics as JSON here")
    p.add_argument("--benchmark", choices=("auto", "MOT15", "MOT17"), default="auto",
                   help="MOT15: no class column; MOT17: classes with distractors and ignore flags "
                        "(also MOT16/20 and DanceTrack); auto: decide from the ground truth (default)")
    _add_dataset_options(p, "--gt")
    p.set_defaults(handler=_evaluate)

    p = sub.add_parser("visualize", help="draw tracker results as one video per sequence",
                       description="Writes OUT/<seq>.mp4 (or .gif): boxes coloured by track id (the same colour "
                                   "for an id everywhere), short trails and the frame number; --compare puts a "
                                   "second result set beside the first on the same frames, --gt draws the ground "
                                   "truth (white; ignore regions grey).")
    p.add_argument("--data", type=Path, required=True, help="the tracked sequences (see the dataset options)")
    p.add_argument("--results", type=Path, required=True,
                   help="directory of <seq>.txt result files, or Scalabel JSON results (a file or folder)")
    p.add_argument("--compare", type=Path, default=None,
                   help="a second result set (e.g. source-only beside adapted), drawn to the right")
    p.add_argument("--gt", action="store_true", help="also draw the ground truth")
    p.add_argument("--out", type=Path, required=True, help="output directory for the videos")
    p.add_argument("--format", choices=("mp4", "gif"), default=None, help="video format (mp4)")
    p.add_argument("--fps", type=float, default=None, help="frames per second (default: the sequence's frame rate)")
    p.add_argument("--max-size", type=_positive_int, default=None,
                   help="longer side of each panel at most this many pixels (960)")
    p.add_argument("--trail", type=int, default=None, help="frames of trail behind each box; 0 = none (15)")
    p.add_argument("-q", "--quiet", action="store_true", help="no progress bar")
    _add_dataset_options(p, "--data")
    p.set_defaults(handler=_visualize)

    p = sub.add_parser("train-source", help="supervised QDTrack training on a labelled domain",
                       description="Detection + quasi-dense track losses on key/reference frame pairs. Writes "
                                   "OUT/last.pt periodically and OUT/final.pt at the end (atomic); rerunning with "
                                   "the same --out resumes from OUT/last.pt (other data, split or training "
                                   "settings are refused, naming each change).")
    p.add_argument("--data", type=Path, required=True, help="the labelled sequences (see the dataset options)")
    p.add_argument("--out", type=Path, required=True, help="output directory for checkpoints and train_log.jsonl")
    p.add_argument("--config", type=Path, default=None,
                   help="a QDTrack source-training config of the authors (e.g. qdtrack_faster-rcnn_r50_fpn_4e_"
                        "dancetrack.py): its model, classes, optimiser, schedule, loss weights and views; the "
                        "options below override it (see `darth-ray config show`)")
    p.add_argument("--model", choices=("small", "r50_fpn"), default=None,
                   help="model configuration (small; with --config the file's)")
    p.add_argument("--epochs", type=_positive_int, default=None, help="passes over the frames (12)")
    p.add_argument("--batch-size", type=_positive_int, default=None, help="frame pairs per step (2)")
    p.add_argument("--lr", type=float, default=None, help="SGD learning rate (0.02)")
    p.add_argument("--photometric-prob", type=float, default=None,
                   help="probability of each photometric distortion (brightness, contrast, saturation, hue, channel "
                        "swap; mmtrack's SeqPhotoMetricDistortion, shared by key and reference frame); 0 = off (0)")
    p.add_argument("--img-scale", type=_positive_int, nargs=2, default=None, metavar=("W", "H"),
                   help="resize both frames of a pair to fit W x H (times --scale-range) and crop each to at most "
                        "W x H (default: native frames)")
    p.add_argument("--scale-range", type=float, nargs=2, default=None, metavar=("LOW", "HIGH"),
                   help="random factor on --img-scale, shared by a pair (1 1)")
    p.add_argument("--max-steps", type=_positive_int, default=None, help="stop after this many steps")
    p.add_argument("--checkpoint-every", type=_positive_int, default=None, help="steps between checkpoints (100)")
    p.add_argument("--seed", type=int, default=None, help="random seed (0)")
    add_device_option(p)
    p.add_argument("--threads", type=_positive_int, default=None, help="torch CPU threads")
    p.add_argument("--no-resume", action="store_true",
                   help="start over even if OUT/last.pt exists (never in another command's --out)")
    p.add_argument("-q", "--quiet", action="store_true", help="no progress bar")
    _add_dataset_options(p, "--data")
    p.set_defaults(handler=_train_source)

    p = sub.add_parser("track", help="track sequences with a checkpoint and write MOTChallenge results",
                       description="Writes OUT/<seq>.txt for every sequence; when the sequences have ground "
                                   "truth, also prints the metrics and writes OUT/metrics.json.")
    p.add_argument("--checkpoint", type=Path, required=True, help="a darth_ray checkpoint (final.pt)")
    p.add_argument("--data", type=Path, required=True, help="the sequences to track (see the dataset options)")
    p.add_argument("--out", type=Path, required=True,
                   help="output directory for <seq>.txt (and scalabel/<seq>.json for BDD100K/SHIFT data)")
    p.add_argument("--max-size", type=_positive_int, default=None,
                   help="resize frames to fit MAX x MAX keeping the ratio (e.g. 1088 for DanceTrack; default: "
                        "native size)")
    p.add_argument("--batch-size", type=_positive_int, default=4, help="frames per detector forward (4)")
    add_device_option(p)
    p.add_argument("--threads", type=_positive_int, default=None, help="torch CPU threads")
    p.add_argument("-q", "--quiet", action="store_true", help="no progress bar")
    _add_dataset_options(p, "--data")
    _add_tracker_options(p)
    p.set_defaults(handler=_track)

    from darth_ray.adapt.methods import METHODS
    p = sub.add_parser("adapt", help="test-time adaptation (DARTH by default) on unlabeled target sequences",
                       description="Adapts a source checkpoint to the target sequences (no labels used) for "
                                   f"--epochs epochs with --method ({', '.join(METHODS)}; default darth), then "
                                   "tracks them with the adapted student (--protocol offline, the default); with "
                                   "--protocol online --reset episodic|continual, streams each sequence once, "
                                   "tracking every batch before adapting on it (README: Protocols). Writes "
                                   "OUT/final.pt (loadable by `track`), OUT/last.pt (full state; a rerun with the "
                                   "same source checkpoint content, target, split and settings resumes from it), "
                                   "OUT/adapt_log.jsonl (per-step losses), and, "
                                   "when the targets have ground truth, OUT/results/<seq>.txt and OUT/metrics.json.")
    p.add_argument("--source", type=Path, required=True, help="source checkpoint (train-source's final.pt)")
    p.add_argument("--target", type=Path, required=True, help="the target sequences (see the dataset options)")
    p.add_argument("--out", type=Path, required=True, help="output directory")
    p.add_argument("--config", type=Path, default=None,
                   help="a DARTH adapter config of the authors (e.g. darth_qdtrack_faster-rcnn_r50_fpn_4e_dancetrack"
                        ".py): its views, losses, EMA, conf_thr, optimiser, schedule and tracker; the options below "
                        "override it; its model must be --source's (see `darth-ray config show`)")
    add_device_option(p)
    p.add_argument("--checkpoint-every", type=_positive_int, default=50,
                   help="steps between checkpoints of OUT/last.pt (50; also at every epoch's end)")
    p.add_argument("--compare-source", action="store_true",
                   help="also track with the source model and write OUT/source_metrics.json")
    p.add_argument("--threads", type=_positive_int, default=None, help="torch CPU threads")
    p.add_argument("--no-resume", action="store_true",
                   help="start over even if OUT/last.pt exists (never in another command's --out)")
    p.add_argument("-q", "--quiet", action="store_true", help="no progress bar")
    _add_dataset_options(p, "--target")
    from darth_ray.adapt.config import FIELD_HELP, DarthConfig
    _add_config_options(p, DarthConfig, "DARTH configuration (the knobs Ray Tune searches; the defaults are the "
                        "published values)", FIELD_HELP)
    _add_tracker_options(p)
    p.set_defaults(handler=_adapt)

    p = sub.add_parser("config", help="read the DARTH authors' mmtrack config files",
                       description="`config show --config FILE`: the darth_ray configuration an mmtrack/mmcv config "
                                   "file (QDTrack source training or DARTH adapter, with its _base_ chain) resolves "
                                   "to: sections model, darth or training, tracker, data, and the keys ignored with "
                                   "why. A key darth_ray cannot honour is an error naming the file and the key.")
    config_sub = p.add_subparsers(dest="config_command", metavar="ACTION", required=True)
    show = config_sub.add_parser("show", help="print the resolved configuration without running anything")
    show.add_argument("--config", type=Path, required=True, help="an mmtrack config file (.py)")
    show.add_argument("--json", action="store_true", help="print JSON")
    show.set_defaults(handler=_config_show)

    p = sub.add_parser("convert-mmtrack", help="import an mmtrack 0.14 QDTrack or DARTH checkpoint (r50_fpn)",
                       description="Every source key is consumed and every model key filled; shapes are checked. "
                                   "DARTH's adapted checkpoints hold a student and an EMA teacher (--take).")
    p.add_argument("input", type=Path, help="mmtrack QDTrack or DARTH checkpoint (.pth)")
    p.add_argument("output", type=Path, help="darth_ray checkpoint to write (.pt)")
    p.add_argument("--take", choices=("student", "teacher"), default="student",
                   help="which network of a DARTH checkpoint (student: what the authors evaluate)")
    p.add_argument("--config", type=Path, default=None,
                   help="the mmtrack config the checkpoint was trained with: its ResNet style, input normalisation "
                        "and classes (needed for the pytorch-style, ImageNet-normalised SHIFT/BDD100K models; "
                        "default: r50_fpn, MOT17/DanceTrack's caffe-style BGR model)")
    p.set_defaults(handler=_convert_mmtrack)
    return parser



def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.INFO,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s", datefmt="%H:%M:%S")
    try:
        if getattr(args, "out", None) is not None:
            require_directory(args.out)  # up front, before any work, for every command writing a directory
        args.handler(args)
    except InputError as e:
        print(f"darth-ray {args.command}: error: {e}", file=sys.stderr)
        return 2
    except ValueError as e:  # configuration values checked by the config objects
        print(f"darth-ray {args.command}: error: {e}", file=sys.stderr)
        return 2
    except FloatingPointError as e:  # a loss became NaN or infinite (adapt, train-source): the message names the step
        print(f"darth-ray {args.command}: error: {e}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
