"""The README's result tables, generated: the domain gap (the source model, and what AdaBN recovers, on every
domain of the embedded benchmark), every adaptation method on every target domain under both protocols over
seeds, and the paper's ablations of DARTH.

    python experiments/darth_table.py [--domains night crowd] [--compare-on crowd] [--methods adabn darth]
                                      [--protocols offline] [--seeds 0 1] [--ablations night] [--epochs 2]

Methods run with the benchmark's settings (darth_ray/embedded.py DARTH_SETTINGS: target BN statistics, geometric
views only; each method reads the settings it uses); the online protocol resets per sequence (episodic). A method
that learns nothing (source, adabn) runs once, not per seed; the source model is the same under both protocols.
Every run is cached in runs/table/<source model hash>/<domain>/<name>-<config hash>/ (rerunning skips finished
runs and resumes interrupted ones; another source model or configuration starts a new run). Writes
runs/table/tables.md and replaces the tables in README.md between their markers.
"""
from __future__ import annotations

import argparse
import dataclasses
import hashlib
import json
import logging
import re
import shlex
import statistics
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import torch  # noqa: E402

from darth_ray.adapt.config import PROTOCOLS, DarthConfig  # noqa: E402
from darth_ray.adapt.loop import adapt  # noqa: E402
from darth_ray.adapt.methods import METHODS  # noqa: E402
from darth_ray.cli import add_device_option, parsed_device  # noqa: E402
from darth_ray.data.synth import DEFAULT_TARGET_DOMAINS, SOURCE_DOMAIN  # noqa: E402
from darth_ray.embedded import BENCHMARK, DARTH_SETTINGS, ensure_benchmark, ensure_source_model  # noqa: E402
from darth_ray.eval.metrics import COMBINED  # noqa: E402
from darth_ray.io import atomic_write_text, file_sha256  # noqa: E402

log = logging.getLogger("darth_table")
COLUMNS = ("HOTA", "DetA", "AssA", "MOTA", "IDF1")
EPOCHS = 2
PUBLISHED_VIEWS = {"photometric_prob": DarthConfig.photometric_prob, "channel_swap_prob": DarthConfig.channel_swap_prob}
# DARTH with parts switched off (the paper's Table 4) or with the published settings the benchmark changes.
VARIANTS = {
    "DARTH, source BN statistics": {"target_bn_stats": False},
    "DARTH, published photometric views": PUBLISHED_VIEWS,
    "detection consistency only": {"contrastive_weight": 0.0},
    "patch contrastive only": {"rpn_weight": 0.0, "roi_weight": 0.0},
    "frozen teacher (no EMA)": {"ema_momentum": 0.0},
}


class Runs:
    """Adaptation runs of one source model on the benchmark, cached by configuration."""

    def __init__(self, source: Path, bench: Path, cache: Path, epochs: int, device: str = "cpu"):
        self.source, self.bench, self.cache, self.epochs, self.device = source, bench, cache, epochs, device

    def config(self, method: str = "darth", protocol: str = "offline", seed: int = 0, **overrides) -> DarthConfig:
        return DarthConfig(method=method, protocol=protocol, reset="episodic" if protocol == "online" else None,
                           epochs=self.epochs, lr_steps=(max(1, self.epochs - 1),), seed=seed,
                           **{**DARTH_SETTINGS, **overrides})

    def metrics(self, domain: str, name: str, config: DarthConfig) -> dict:
        """COMBINED metrics of `config` on the domain's val split, adapted unless cached."""
        config_hash = hashlib.sha256(json.dumps(config.to_dict(), sort_keys=True).encode()).hexdigest()[:8]
        # Runs on another device than the CPU are cached apart: their numbers differ by float rounding.
        device = "" if self.device == "cpu" else "-" + re.sub(r"[^A-Za-z0-9]+", "", self.device)
        out = self.cache / domain / f"{re.sub(r'[^A-Za-z0-9]+', '_', name).strip('_')}-{config_hash}{device}"
        if not (out / "metrics.json").is_file():
            log.info("%s on %s (%s)", name, domain, out)
            adapt(self.source, self.bench / domain, out, config, split="val", show_progress=False, device=self.device)
        return json.loads((out / "metrics.json").read_text())[COMBINED]

    def method_metrics(self, domain: str, method: str, protocol: str, seeds: list[int]) -> list[dict]:
        """One run per seed for a method that learns, one in all for the others (the source model also ignores the
        protocol)."""
        if METHODS[method].learns:
            return [self.metrics(domain, f"{method} {protocol}", self.config(method, protocol, seed))
                    for seed in seeds]
        protocol = "offline" if method == "source" else protocol
        # Nor do epochs matter to them: one cached run (recorded with the default --epochs) whatever --epochs is.
        config = dataclasses.replace(self.config(method, protocol, seeds[0]), epochs=EPOCHS,
                                     lr_steps=(max(1, EPOCHS - 1),))
        return [self.metrics(domain, f"{method} {protocol}", config)]


def cells(runs: list[dict], base: dict | None = None) -> list[str]:
    """Mean (± sample standard deviation over seeds) per column, and the difference of the mean to `base`."""
    out = []
    for c in COLUMNS:
        values = [m[c] for m in runs]
        mean = statistics.fmean(values)
        text = f"{mean:.1f}" + (f" ± {statistics.stdev(values):.1f}" if len(values) > 1 else "")
        out.append(text + (f" ({mean - base[c]:+.1f})" if base is not None else ""))
    return out


def row(name: str, runs: list[dict], base: dict | None = None, extra: tuple[str, ...] = ()) -> str:
    return f"| {name} | " + " | ".join(cells(runs, base) + list(extra)) + " |"


def header(first: str, extra: tuple[str, ...] = ()) -> str:
    names = COLUMNS + extra
    return f"| {first} | " + " | ".join(names) + " |\n|---|" + "---:|" * len(names)


def replace_section(text: str, marker: str, body: str) -> str:
    start, end = f"<!-- {marker}:start -->", f"<!-- {marker}:end -->"
    if start not in text:
        raise SystemExit(f"README.md has no '{start}' marker")
    return re.sub(re.escape(start) + ".*?" + re.escape(end), lambda _: f"{start}\n{body}\n{end}", text, flags=re.S)


def domain_gap(runs: Runs, domains: list[str], clean: dict) -> str:
    """The source model on every domain, and the share of its HOTA loss that AdaBN (target BN statistics, no
    training) recovers."""
    lines = [header("domain", ("AdaBN HOTA", "AdaBN recovers")),
             row(f"{SOURCE_DOMAIN} (training domain)", [clean], extra=("", ""))]
    for domain in domains:
        source = runs.method_metrics(domain, "source", "offline", [0])[0]
        adabn = runs.method_metrics(domain, "adabn", "offline", [0])[0]
        loss = clean["HOTA"] - source["HOTA"]
        recovered = f"{100 * (adabn['HOTA'] - source['HOTA']) / loss:.0f}%" if loss > 0 else "n/a"
        lines.append(row(domain, [source], clean, (f"{adabn['HOTA']:.1f}", recovered)))
    return "\n".join(lines)


def methods_table(runs: Runs, domains: list[str], methods: list[str], protocols: list[str], seeds: list[int],
                  clean: dict) -> str:
    lines = [header("target / method, protocol"), row("clean domain, source model (the ceiling)", [clean])]
    for domain in domains:
        source = runs.method_metrics(domain, "source", "offline", seeds)
        for method in methods:
            for protocol in (("offline",) if method == "source" else protocols):
                results = runs.method_metrics(domain, method, protocol, seeds)
                name = "source only" if method == "source" else f"{METHODS[method].title}, {protocol}"
                if method == "source":
                    lines.append(row(f"**{domain}**: {name}", results))
                else:
                    lines.append(row(f"{domain}: {name}", results, source[0]))
    return "\n".join(lines)


def ablation_table(runs: Runs, domains: list[str], variants: list[str], seed: int) -> str:
    lines = [header("target / DARTH variant")]
    for domain in domains:
        darth = runs.metrics(domain, "darth offline", runs.config(seed=seed))
        lines.append(row(f"**{domain}**: DARTH", [darth]))
        for variant in variants:
            lines.append(row(f"{domain}: {variant}",
                             [runs.metrics(domain, variant, runs.config(seed=seed, **VARIANTS[variant]))], darth))
    return "\n".join(lines)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter,
                                epilog=__doc__.split("\n\n", 1)[1])
    p.add_argument("--runs", type=Path, default=ROOT / "runs", help="caches and outputs (./runs)")
    p.add_argument("--domains", nargs="+", default=list(DEFAULT_TARGET_DOMAINS), choices=DEFAULT_TARGET_DOMAINS,
                   metavar="DOMAIN", help="target domains of the domain gap table (default: all)")
    p.add_argument("--compare-on", nargs="+", default=None, choices=DEFAULT_TARGET_DOMAINS, metavar="DOMAIN",
                   help="target domains of the method table (default: --domains)")
    p.add_argument("--methods", nargs="+", default=list(METHODS), choices=list(METHODS), metavar="METHOD",
                   help="rows of the method table (default: " + " ".join(METHODS) + ")")
    p.add_argument("--protocols", nargs="+", default=list(PROTOCOLS), choices=PROTOCOLS,
                   help="protocols of the method table (offline online)")
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1],
                   help="seeds of every method that learns: mean ± sd over them (0 1)")
    p.add_argument("--ablations", nargs="*", default=["night"], choices=DEFAULT_TARGET_DOMAINS, metavar="DOMAIN",
                   help="domains of the DARTH ablation table, seed --seeds[0] (night; none: no table)")
    p.add_argument("--variants", nargs="+", choices=list(VARIANTS), default=list(VARIANTS), metavar="VARIANT",
                   help="rows of the ablation table (default: all of " + ", ".join(map(repr, VARIANTS)) + ")")
    p.add_argument("--epochs", type=int, default=EPOCHS, help=f"epochs of the offline protocol ({EPOCHS})")
    p.add_argument("--threads", type=int, default=2, help="torch threads (2)")
    p.add_argument("--no-readme", action="store_true", help="only write runs/table/tables.md")
    add_device_option(p)
    args = p.parse_args(argv)
    device = parsed_device(p, args.device)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s",
                        datefmt="%H:%M:%S")
    torch.set_num_threads(args.threads)
    bench = ensure_benchmark(args.runs)
    source = ensure_source_model(args.runs, bench)
    runs = Runs(source, bench, args.runs / "table" / file_sha256(source)[:12], args.epochs, device)

    clean = runs.method_metrics(SOURCE_DOMAIN, "source", "offline", args.seeds)[0]
    gap_md = domain_gap(runs, args.domains, clean)
    methods_md = methods_table(runs, args.compare_on or args.domains, args.methods, args.protocols, args.seeds, clean)
    ablation_md = ablation_table(runs, args.ablations, args.variants, args.seeds[0]) if args.ablations else ""
    val = f"{len(BENCHMARK.sequence_names('val'))} sequences x {BENCHMARK.frames} frames"
    note = (f"Source model: `small` trained on `{SOURCE_DOMAIN}` train ({BENCHMARK.train_sequences} scenes); "
            f"every number on a domain's val split ({val}), the frames the methods adapt on (no labels). Offline: "
            f"{args.epochs} epoch(s), then tracking; online: one pass, each batch tracked then adapted on, reset per "
            "sequence. Settings: published defaults except " + ", ".join(f"`{k}={v}`" for k, v in DARTH_SETTINGS.items())
            + f" (darth_ray/embedded.py). Seeds {' '.join(map(str, args.seeds))}: mean ± sd for methods that learn; "
            "differences to source only in parentheses. Generated by `python experiments/darth_table.py "
            + shlex.join(argv if argv is not None else sys.argv[1:]) + "`.")
    atomic_write_text(args.runs / "table" / "tables.md", f"## Domain gap\n\n{gap_md}\n\n## Methods\n\n{methods_md}"
                      f"\n\n{note}\n\n## DARTH ablations\n\n{ablation_md}\n")
    print(gap_md + "\n\n" + methods_md + "\n\n" + note + "\n\n" + ablation_md)
    if not args.no_readme:
        readme = ROOT / "README.md"
        text = replace_section(readme.read_text(), "domain-gap", gap_md)
        text = replace_section(text, "methods-table", methods_md + "\n\n" + note)
        if ablation_md:
            text = replace_section(text, "darth-table", ablation_md)
        atomic_write_text(readme, text)
        print(f"updated {readme}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
