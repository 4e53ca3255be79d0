"""After the search: leaderboard, BILD against plain, hyperparameter effects, learning curves.

    python -m pipeline.analyze runs/aodnet-search                       # tables on the terminal
    python -m pipeline.analyze runs/a runs/b --format markdown --plots reports/
    python -m pipeline.analyze runs/a --format json > report.json
    python -m pipeline.analyze runs/both --paired     # + best bild vs best plain, image by image (runs both models)
    python -m pipeline.analyze --weights CKPT --hazy IMG --clear IMG --out weights.png

Reads the Parquet results of one or more experiments. Every number comes from the fixed
selection set; the test set is read only by ``pipeline.promote``. The library behind it is
``pipeline.analysis`` (report, plots, patch weights).
"""

from __future__ import annotations

import argparse
import sys

from .analysis.report import FORMATS, analyze, render
from .cli import run_command
from .results import METRICS

__all__ = ["main"]


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m pipeline.analyze", description=__doc__.split("\n\n")[0])
    p.add_argument("run_dirs", nargs="*", metavar="RUN_DIR", help="experiment folder(s) written by pipeline.search")
    p.add_argument("--format", choices=FORMATS, default="table")
    p.add_argument("--plots", metavar="DIR", help="also write PNG plots into DIR")
    p.add_argument("--metric", choices=METRICS, default="select_psnr", help="selection metric that ranks trials")
    p.add_argument("--paired", action="store_true",
                   help="re-score the best bild and the best plain checkpoint on every selection image and report "
                        "their paired difference with a bootstrap CI (runs both models)")
    p.add_argument("--device", default="auto", help="auto | cpu | cuda | cuda:N, for --paired")
    weights = p.add_argument_group("patch weights (instead of a report)")
    weights.add_argument("--weights", metavar="CKPT", help="a bild or bild-train checkpoint.pt")
    weights.add_argument("--hazy", metavar="IMG")
    weights.add_argument("--clear", metavar="IMG")
    weights.add_argument("--out", metavar="PNG")
    weights.add_argument("--crop", type=int, help="crop size in pixels (default: the checkpoint's training crop)")
    return p


def _check_usage(p: argparse.ArgumentParser, args: argparse.Namespace) -> None:
    if args.weights:
        missing = [f"--{name}" for name in ("hazy", "clear", "out") if getattr(args, name) is None]
        if missing:
            p.error(f"--weights needs {', '.join(missing)}")
        if args.run_dirs:
            p.error("give either RUN_DIR(s) or --weights, not both")
    elif not args.run_dirs:
        p.error("give at least one RUN_DIR (or --weights CKPT --hazy IMG --clear IMG --out PNG)")


def main(argv: list[str] | None = None) -> int:
    p = _parser()
    args = p.parse_args(argv)
    _check_usage(p, args)
    return run_command(lambda: _weights(args) if args.weights else _report(args))


def _weights(args: argparse.Namespace) -> int:
    from .analysis.patch_weights import patch_weights  # torch: only for the picture

    grid = patch_weights(args.weights, args.hazy, args.clear, args.out, args.crop)
    rows, cols = grid.shape
    print(f"wrote {args.out}: {rows}x{cols} crops, weights {grid.min():.2f} to {grid.max():.2f}")
    return 0


def _report(args: argparse.Namespace) -> int:
    report = analyze(args.run_dirs, args.metric, paired=args.paired, device=args.device)
    print(render(report, args.format), end="", flush=True)
    if args.plots:
        from .analysis.plots import write_plots  # matplotlib: only when plots are asked for

        for path in write_plots(report, args.plots):
            print(f"wrote {path}", file=sys.stderr)  # stderr: keeps --format json on stdout parseable
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
