"""Model files: import an original repository's checkpoint, or convert an older pickled model, into
model.safetensors + card.json.

    python -m pipeline.models import --backbone aodnet dehazer.pth --out models/aodnet/published
    python -m pipeline.models convert models/ffanet/v2/model.pt
    python -m pipeline.models convert downloaded/model.pt --out models/ffanet/v9 --trust

--trust unpickles the file without torch's weights-only guard, which RUNS any code it holds: give it
only for files from a source you trust (``pipeline.models.convert``).
"""

from __future__ import annotations

import argparse

from ..backbones import list_backbones
from ..cli import run_command
from . import convert as conversion
from . import importing

__all__ = ["main"]


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m pipeline.models", description=__doc__.split("\n\n")[0])
    commands = p.add_subparsers(dest="command", required=True, metavar="COMMAND")
    c = commands.add_parser("convert", help="an older model.pt or a checkpoint.pt -> model.safetensors + card.json",
                            description=conversion.__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    c.add_argument("file", metavar="FILE", help="older model.pt (bild-model/1) or training checkpoint.pt")
    c.add_argument("--out", metavar="DIR", help="folder for model.safetensors and card.json (default: beside FILE)")
    c.add_argument("--trust", action="store_true",
                   help="unpickle without the weights-only guard: RUNS code from the file; only for files you trust")
    i = commands.add_parser("import", help="an original repository's checkpoint -> model.safetensors + card.json",
                            description=importing.__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    i.add_argument("--backbone", required=True, choices=list_backbones(), help="the network the checkpoint is of")
    i.add_argument("file", metavar="FILE", help="the original repository's checkpoint (.pth, .pk, .pt)")
    i.add_argument("--out", metavar="DIR", help="folder for model.safetensors and card.json "
                                                 "(default: models/<backbone>/<FILE's name without suffix>)")
    i.add_argument("--preset", default="paper", help="the network's size (default paper, the published one)")
    return p


def _import(args: argparse.Namespace) -> int:
    card = importing.import_original(args.backbone, args.file, args.out, preset=args.preset)
    imported = card["imported"]
    print(f"imported {args.file} -> {card['path']}/model.safetensors + card.json ({card['backbone']} "
          f"{card['preset']}, names of {imported['repository']})")
    print(f"label: {card['label']}")
    return 0


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)

    def body() -> int:
        if args.command == "import":
            return _import(args)
        card = conversion.convert(args.file, args.out, trust=args.trust)
        print(f"converted {args.file} -> {card['path']}/model.safetensors + card.json "
              f"({card['backbone']} {card['preset']}); the old file is left in place")
        return 0

    return run_command(body)


if __name__ == "__main__":
    raise SystemExit(main())
