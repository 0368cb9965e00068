"""The README's result tables, generated: the source model on every domain of the embedded benchmark (the domain
gap), then source-only vs DARTH and the paper's ablations on each target domain.

    python experiments/darth_table.py [--domains night fog] [--epochs 2] [--ablations night] [--seeds 0 1]

DARTH runs with the benchmark's settings (darth_ray/embedded.py DARTH_SETTINGS: target BN statistics, geometric
views only); source BN statistics and the published photometric views are rows of their own, and so is the
source model with target BN statistics and no training (how much of the gain is the statistics alone). Every
adaptation run is cached in runs/table/<source model hash>/<domain>/<variant>-<config hash>/ (rerunning skips
finished runs and resumes interrupted ones; another source model or configuration starts a new run). `--variants`
picks rows. Writes runs/table/tables.md and replaces the tables in README.md between their markers.
"""
from __future__ import annotations

import argparse
import hashlib
import json
import logging
import re
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import torch  # noqa: E402

from darth_ray.adapt.bn_stats import estimate_bn_statistics  # noqa: E402
from darth_ray.adapt.config import DarthConfig  # noqa: E402
from darth_ray.adapt.loop import adapt  # noqa: E402
from darth_ray.eval.track import track_and_score  # noqa: E402
from darth_ray.data.mot import load_sequences  # noqa: E402
from darth_ray.data.synth import DEFAULT_TARGET_DOMAINS, SOURCE_DOMAIN  # noqa: E402
from darth_ray.embedded import BENCHMARK, DARTH_SETTINGS, ensure_benchmark, ensure_source_model  # noqa: E402
from darth_ray.eval.metrics import COMBINED  # noqa: E402
from darth_ray.io import atomic_write_json, atomic_write_text, file_sha256  # noqa: E402
from darth_ray.models.qdtrack import load_checkpoint  # noqa: E402

log = logging.getLogger("darth_table")
COLUMNS = ("HOTA", "DetA", "AssA", "MOTA", "IDF1")
PUBLISHED_VIEWS = {"photometric_prob": DarthConfig.photometric_prob, "channel_swap_prob": DarthConfig.channel_swap_prob}
# Overrides of each row on top of the benchmark's DARTH_SETTINGS; the paper's ablations (Table 4) switch parts of
# DARTH off.
VARIANTS = {
    "DARTH": {},
    "DARTH, source BN statistics": {"target_bn_stats": False},
    "DARTH, published photometric views": PUBLISHED_VIEWS,
    "detection consistency only": {"contrastive_weight": 0.0},
    "patch contrastive only": {"rpn_weight": 0.0, "roi_weight": 0.0},
    "frozen teacher (no EMA)": {"ema_momentum": 0.0},
}
MAIN_VARIANTS = ("DARTH", "DARTH, source BN statistics", "DARTH, published photometric views")  # on every domain


def source_metrics(source: Path, bench: Path, domain: str, cache: Path, target_bn: bool = False) -> dict:
    """The source model as it is, or with BatchNorm statistics estimated on the target frames (no training)."""
    path = cache / domain / ("target_bn_only.json" if target_bn else "source_only.json")
    if not path.is_file():
        model, _ = load_checkpoint(source)
        sequences = load_sequences(bench / domain, split="val")
        if target_bn:
            batches = (torch.stack([s.load_image(f) for f in range(i, min(i + 4, s.num_frames + 1))])
                       for s in sequences for i in range(1, s.num_frames + 1, 4))  # 4 frames of one sequence
            estimate_bn_statistics(model, batches)
        _, metrics = track_and_score(model, sequences, show_progress=True)
        atomic_write_json(path, metrics)
    return json.loads(path.read_text())[COMBINED]


def adapted_metrics(source: Path, bench: Path, domain: str, variant: str, config: DarthConfig, cache: Path) -> dict:
    config_hash = hashlib.sha256(json.dumps(config.to_dict(), sort_keys=True).encode()).hexdigest()[:8]
    slug = re.sub(r"\W+", "_", variant).strip("_")
    out = cache / domain / f"{slug}-{config_hash}"
    if (out / "metrics.json").is_file():
        return json.loads((out / "metrics.json").read_text())[COMBINED]
    summary = adapt(source, bench / domain, out, config, split="val")
    return summary["metrics"][COMBINED]


def row(name: str, m: dict, base: dict | None = None) -> str:
    cells = [f"{m[c]:.1f}" + (f" ({m[c] - base[c]:+.1f})" if base is not None else "") for c in COLUMNS]
    return f"| {name} | " + " | ".join(cells) + " |"


def replace_section(text: str, marker: str, body: str) -> str:
    start, end = f"<!-- {marker}:start -->", f"<!-- {marker}:end -->"
    if start not in text:
        raise SystemExit(f"README.md has no '{start}' marker")
    return re.sub(re.escape(start) + ".*?" + re.escape(end), lambda _: f"{start}\n{body}\n{end}", text, flags=re.S)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter,
                                epilog=__doc__.split("\n\n", 1)[1])
    p.add_argument("--runs", type=Path, default=ROOT / "runs", help="caches and outputs (./runs)")
    p.add_argument("--domains", nargs="+", default=list(DEFAULT_TARGET_DOMAINS), help="target domains")
    p.add_argument("--ablations", nargs="*", default=None, help="domains to run the ablations on (default: all)")
    p.add_argument("--epochs", type=int, default=2, help="DARTH epochs over the target frames (2)")
    p.add_argument("--seeds", type=int, nargs="+", default=[0],
                   help="seeds of the DARTH row, one row each (0); the other rows use the first")
    p.add_argument("--variants", nargs="+", choices=list(VARIANTS), default=list(VARIANTS), metavar="VARIANT",
                   help="rows to run besides source only and target BN statistics only (default: all of "
                        + ", ".join(map(repr, VARIANTS)) + ")")
    p.add_argument("--threads", type=int, default=2, help="torch threads (2)")
    p.add_argument("--no-readme", action="store_true", help="only write runs/table/tables.md")
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s",
                        datefmt="%H:%M:%S")
    torch.set_num_threads(args.threads)
    bench = ensure_benchmark(args.runs)
    source = ensure_source_model(args.runs, bench)
    cache = args.runs / "table" / file_sha256(source)[:12]
    ablation_domains = args.domains if args.ablations is None else args.ablations

    header = "| | " + " | ".join(COLUMNS) + " |\n|---|" + "---:|" * len(COLUMNS)
    clean = source_metrics(source, bench, SOURCE_DOMAIN, cache)
    gap = [header, row(f"{SOURCE_DOMAIN} (training domain)", clean)]
    darth = [header.replace("| |", "| target / method |", 1)]
    for domain in args.domains:
        before = source_metrics(source, bench, domain, cache)
        gap.append(row(domain, before, clean))
        darth.append(row(f"**{domain}**: source only", before))
        darth.append(row(f"{domain}: target BN statistics only (no DARTH)",
                         source_metrics(source, bench, domain, cache, target_bn=True), before))
        for variant, overrides in VARIANTS.items():
            if variant not in args.variants or (variant not in MAIN_VARIANTS and domain not in ablation_domains):
                continue
            seeds = args.seeds if variant == "DARTH" else args.seeds[:1]
            for seed in seeds:
                config = DarthConfig(epochs=args.epochs, lr_steps=(max(1, args.epochs - 1),), seed=seed,
                                     **{**DARTH_SETTINGS, **overrides})
                label = f"{domain}: {variant}" + (f" (seed {seed})" if len(seeds) > 1 else "")
                darth.append(row(label, adapted_metrics(source, bench, domain, variant, config, cache), before))
    gap_md, darth_md = "\n".join(gap), "\n".join(darth)
    val = f"{len(BENCHMARK.sequence_names('val'))} sequences x {BENCHMARK.frames} frames"
    note = (f"Source model: `small` trained on `{SOURCE_DOMAIN}` train ({BENCHMARK.train_sequences} scenes); "
            f"evaluation on each domain's val split ({val}); DARTH: {args.epochs} epoch(s) over the target val "
            "frames (no labels), published defaults except " + ", ".join(f"`{k}={v}`" for k, v in DARTH_SETTINGS.items())
            + " (darth_ray/embedded.py) unless the row says otherwise. Differences in parentheses.")
    atomic_write_text(args.runs / "table" / "tables.md",
                      f"## Domain gap\n\n{gap_md}\n\n## DARTH\n\n{darth_md}\n\n{note}\n")
    print(gap_md + "\n\n" + darth_md + "\n\n" + note)
    if not args.no_readme:
        readme = ROOT / "README.md"
        text = replace_section(readme.read_text(), "domain-gap", gap_md)
        text = replace_section(text, "darth-table", darth_md + "\n\n" + note)
        atomic_write_text(readme, text)
        print(f"updated {readme}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
