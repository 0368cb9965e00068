"""`darth-ray`: one entry point, one subcommand per step of a DARTH experiment.

    darth-ray synth        generate the embedded DanceTrack-like benchmark (source + shifted target domains)
    darth-ray evaluate     score MOTChallenge result files: HOTA/DetA/AssA/LocA (TrackEval), MOTA/IDF1 (motmetrics)

Heavy modules (torch, ray) are imported inside the handlers so `--help` answers at once. Bad input ends with
one line naming the file and line, and exit code 2.
"""
from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

from darth_ray.io import InputError, atomic_write_json

log = logging.getLogger("darth_ray")


def _synth(args: argparse.Namespace) -> None:
    from darth_ray.data.synth import SynthConfig, generate_benchmark

    fields = {k: tuple(v) if isinstance(v, list) else v for k, v in vars(args).items()
              if k in SynthConfig.__dataclass_fields__ and v is not None}
    summary = generate_benchmark(args.out, SynthConfig(**fields), progress=not args.quiet)
    print(f"wrote the benchmark to {args.out}: domains {', '.join(summary['domains'])}")


def _evaluate(args: argparse.Namespace) -> None:
    from darth_ray.eval.metrics import evaluate, format_table

    metrics = evaluate(args.gt, args.results, benchmark=args.benchmark)
    print(format_table(metrics))
    if args.json:
        atomic_write_json(args.json, metrics)
        print(f"wrote {args.json}")


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
    p.add_argument("--gt", type=Path, required=True, help="directory of <seq>/{gt/gt.txt,seqinfo.ini}")
    p.add_argument("--results", type=Path, required=True, help="directory of <seq>.txt result files")
    p.add_argument("--json", type=Path, default=None, help="also write the metrics as JSON here")
    p.add_argument("--benchmark", choices=("auto", "MOT15", "MOT17"), default="auto",
                   help="MOT15: no class column; MOT17: classes with distractors and ignore flags "
                        "(also MOT16/20 and DanceTrack); auto: decide from the ground truth (default)")
    p.set_defaults(handler=_evaluate)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.INFO,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s", datefmt="%H:%M:%S")
    try:
        args.handler(args)
    except InputError as e:
        print(f"darth-ray {args.command}: error: {e}", file=sys.stderr)
        return 2
    except ValueError as e:  # configuration values checked by the config objects
        print(f"darth-ray {args.command}: error: {e}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
