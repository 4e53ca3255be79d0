"""`python -m pipeline.data inspect ROOT [--layout NAME] [--json]`.

Exit status: 0 when the folder has no problems, 1 when problems were found,
2 on a usage error, an unknown layout or a missing or empty folder.
"""

from __future__ import annotations

import argparse
import json
import sys

from ..cli import run_command
from .errors import DataError
from .inspect import format_report, inspect_dataset
from .layouts import LAYOUTS


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m pipeline.data", description="Dataset tools.")
    commands = parser.add_subparsers(dest="command", required=True)
    inspect = commands.add_parser("inspect", help="check a dataset folder and report every problem")
    inspect.add_argument("root", help="dataset folder (with hazy/ and clear/ or GT/ inside)")
    inspect.add_argument("--layout", default="auto", choices=("auto", *LAYOUTS), help="native layout (default: detect)")
    inspect.add_argument("--json", action="store_true", help="print the report as one JSON object")
    args = parser.parse_args(argv)

    def body() -> int:
        report = inspect_dataset(args.root, args.layout)
        print(json.dumps(report, indent=2) if args.json else format_report(report))
        return 1 if report["problems"] else 0

    return run_command(body, errors=(DataError,))


if __name__ == "__main__":
    sys.exit(main())
