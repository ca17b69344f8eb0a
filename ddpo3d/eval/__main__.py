"""``python -m ddpo3d.eval RUN [RUN ...] --metrics clip,aesthetic``: score finished runs.

Each metric is a reward block (``ddpo3d.rewards``); short names map to default blocks
(``clip`` -> clip-score ViT-L-14/openai, ``aesthetic`` -> LAION predictor v2, ``jpeg``), and
``--reward-config name=path.yaml`` supplies any block (local weights, a user function ...).
"""

from __future__ import annotations

import argparse
import sys

from ddpo3d.eval.score import METRIC_BLOCKS, score_runs, to_markdown, write_csv


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m ddpo3d.eval", description=__doc__.splitlines()[0])
    p.add_argument("runs", nargs="+", help="trial directories (outputs/<name>/<trial>) or folders of PNG views")
    p.add_argument("--metrics", default="clip,aesthetic", help="comma-separated: " + ", ".join(METRIC_BLOCKS))
    p.add_argument(
        "--reward-config",
        action="append",
        default=[],
        metavar="NAME=YAML",
        help="a metric from a reward block file (repeatable); overrides a short name",
    )
    p.add_argument("--prompt", default=None, help="prompt to score against (default: each run's config)")
    p.add_argument("--csv", default=None, help="also write the table as CSV here")
    p.add_argument("--device", default="cpu")
    p.add_argument("--batch-size", type=int, default=8)
    return p


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    from omegaconf import OmegaConf

    from ddpo3d.rewards import build_reward

    blocks = {}
    for name in [m.strip() for m in args.metrics.split(",") if m.strip()]:
        if name not in METRIC_BLOCKS:
            print(
                f"error: unknown metric {name!r}; known: {', '.join(METRIC_BLOCKS)} "
                f"(or give --reward-config {name}=block.yaml)",
                file=sys.stderr,
            )
            return 2
        blocks[name] = dict(METRIC_BLOCKS[name])
    for item in args.reward_config:
        if "=" not in item:
            print(f"error: --reward-config expects NAME=path.yaml, got {item!r}", file=sys.stderr)
            return 2
        name, path = item.split("=", 1)
        blocks[name] = OmegaConf.to_container(OmegaConf.load(path), resolve=True)
    try:
        rewards = {name: build_reward(block).to(args.device) for name, block in blocks.items()}
        rows = score_runs(args.runs, rewards, prompt=args.prompt, batch_size=args.batch_size, device=args.device)
    except (FileNotFoundError, ValueError, KeyError, ImportError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    for row in rows:  # which renders were scored: the latest test step of each run
        where = f"test step {row['step']}" if row.get("step") is not None else "a folder of images"
        print(f"{row['run']}: scored {row['views']} views of {where} ({row['views_from']})", file=sys.stderr)
    print(to_markdown(rows))
    if args.csv:
        write_csv(rows, args.csv)
        print(f"wrote {args.csv}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
