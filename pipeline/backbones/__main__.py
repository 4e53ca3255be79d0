"""List the registered backbones: `python -m pipeline.backbones [--json] [PATTERN]`.

Prints one row per (backbone, preset) with its parameter count, default crop and origin
repository. Networks are built on the meta device, so even the 31M-parameter MSBDN costs
no memory or initialisation time.
"""

from __future__ import annotations

import argparse
import json
import sys
from typing import Any

import torch

from ..cli import run_command
from . import backbone_info, count_params, create_backbone, list_backbones, list_presets


def registry_rows(pattern: str | None = None) -> list[dict[str, Any]]:
    """One dict per (name, preset): name, preset, params, default_crop, source, paper."""
    rows = []
    for name in list_backbones(pattern):
        info = backbone_info(name)
        for preset in list_presets(name):
            with torch.device("meta"):  # shapes only: no allocation, no init cost
                params = count_params(create_backbone(name, preset))
            rows.append(
                {
                    "name": name,
                    "preset": preset,
                    "params": params,
                    "default_crop": info["default_crop"],
                    "source": info["source"],
                    "paper": info["paper"],
                }
            )
    return rows


def format_table(rows: list[dict[str, Any]]) -> str:
    """Plain-text table of `registry_rows` output."""
    header = ("name", "preset", "params", "crop", "source")
    body = [
        (r["name"], r["preset"], f"{r['params']:,}", str(r["default_crop"]), r["source"])
        for r in rows
    ]
    widths = [max(len(line[i]) for line in (header, *body)) for i in range(len(header))]
    right = {2, 3}  # numbers align right

    def fmt(line: tuple[str, ...]) -> str:
        cells = [
            cell.rjust(w) if i in right else cell.ljust(w)
            for i, (cell, w) in enumerate(zip(line, widths))
        ]
        return "  ".join(cells).rstrip()

    return "\n".join([fmt(header), fmt(tuple("-" * w for w in widths)), *map(fmt, body)])


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m pipeline.backbones", description="List the registered backbones."
    )
    parser.add_argument("pattern", nargs="?", help="shell-style filter on names, e.g. 'ms*'")
    parser.add_argument("--json", action="store_true", help="print a JSON list instead of a table")
    args = parser.parse_args(argv)

    def body() -> int:
        rows = registry_rows(args.pattern)
        print(json.dumps(rows, indent=2) if args.json else format_table(rows))
        return 0

    return run_command(body)


if __name__ == "__main__":
    sys.exit(main())
