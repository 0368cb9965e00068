"""Which half of the tracker did adaptation change? Track with every pairing of detector and track embeddings
from the source model and the adapted one, on the same sequences and tracker settings.

    python experiments/swap_heads.py --adapted runs/table/<hash>/fog/DARTH/final.pt --target runs/benchmark/fog

Rows: source detector + source embeddings (= source only), adapted + adapted (= DARTH), and the two swaps. If
"adapted detector + source embeddings" beats DARTH, the adapted embeddings cost association; if "source detector +
adapted embeddings" beats source only, they help it.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import torch  # noqa: E402

from darth_ray.cli import add_device_option, parsed_device  # noqa: E402
from darth_ray.data.mot import load_sequences  # noqa: E402
from darth_ray.eval.metrics import COMBINED  # noqa: E402
from darth_ray.eval.track import track_and_score  # noqa: E402
from darth_ray.io import atomic_write_json  # noqa: E402
from darth_ray.models.qdtrack import load_checkpoint  # noqa: E402

COLUMNS = ("HOTA", "DetA", "AssA", "MOTA", "IDF1", "IDSW")


def swap_table(source, adapted, sequences, tracker_params: dict | None = None) -> dict[str, dict]:
    """{"detector / embeddings": COMBINED metrics} for the four pairings."""
    models = {"source": source, "adapted": adapted}
    table = {}
    for det_name, embed_name in (("source", "source"), ("adapted", "adapted"), ("adapted", "source"),
                                 ("source", "adapted")):
        _, metrics = track_and_score(models[det_name], sequences, tracker_params, embedder=models[embed_name])
        table[f"{det_name} detector / {embed_name} embeddings"] = metrics[COMBINED]
    return table


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter, epilog=__doc__.split("\n\n", 1)[1])
    p.add_argument("--source", type=Path, default=ROOT / "runs" / "source" / "final.pt", help="source checkpoint")
    p.add_argument("--adapted", type=Path, required=True, help="adapted checkpoint (e.g. OUT/final.pt of adapt)")
    p.add_argument("--target", type=Path, required=True, help="target dataset root (MOTChallenge layout)")
    p.add_argument("--split", default="val", help="split to track (val)")
    p.add_argument("--json", type=Path, help="also write the table here as JSON")
    p.add_argument("--threads", type=int, default=2, help="torch threads (2)")
    add_device_option(p)
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    for path in (args.source, args.adapted):
        if not path.is_file():
            p.error(f"checkpoint not found: {path}")
    device = parsed_device(p, args.device)
    source, _ = load_checkpoint(args.source, map_location=device)
    adapted, _ = load_checkpoint(args.adapted, map_location=device)
    table = swap_table(source, adapted, load_sequences(args.target, split=args.split))
    print("| detector / embeddings | " + " | ".join(COLUMNS) + " |\n|---|" + "---:|" * len(COLUMNS))
    for name, m in table.items():
        print(f"| {name} | " + " | ".join(f"{m[c]:.1f}" if c != "IDSW" else f"{m[c]:.0f}" for c in COLUMNS) + " |")
    if args.json:
        atomic_write_json(args.json, table)
    return 0


if __name__ == "__main__":
    sys.exit(main())
