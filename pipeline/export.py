"""Export a promoted model's backbone to ONNX or TorchScript, for any image size.

    python -m pipeline.export models/ffanet --format onnx --out ffanet.onnx
    python -m pipeline.export models/aodnet/v2 --format torchscript --out aodnet.torchscript.pt

The graph takes ``hazy`` (N, 3, H, W) float32 RGB in [0, 1] and returns ``clear``, the same
shape; N, H and W are dynamic. Each export is run at a second size and compared with PyTorch
before it is kept, and recorded in the model's card.json (``pipeline.models.export``).
ONNX needs the export extra: pip install 'bild-dehaze[export]'.
"""

from __future__ import annotations

import argparse

from .cli import run_command
from .models.export import FORMATS, TOLERANCE, export_model

__all__ = ["main"]


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m pipeline.export", description=__doc__.split("\n\n")[0])
    p.add_argument("model", metavar="MODEL",
                   help="models/<backbone>[/v<N>], a model.safetensors, an older model.pt or a checkpoint.pt")
    p.add_argument("--format", required=True, choices=FORMATS, help="onnx | torchscript")
    p.add_argument("--out", required=True, metavar="FILE", help="file to write, e.g. ffanet.onnx")
    return p


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)

    def body() -> int:
        done = export_model(args.model, args.format, args.out)
        checked = ", ".join(f"{'x'.join(map(str, c['shape']))} ({c['max_abs_diff']:.1g})" for c in done["checks"])
        print(f"exported {done['backbone']} {done['preset']} from {args.model} to {done['out']} ({done['format']}, "
              f"dynamic batch, height and width)")
        print(f"  matches PyTorch within {TOLERANCE} at {checked}")
        print(f"  recorded in {done['card']}" if done["card"] else "  not recorded: only a promoted model has a card")
        return 0

    return run_command(body)


if __name__ == "__main__":
    raise SystemExit(main())
