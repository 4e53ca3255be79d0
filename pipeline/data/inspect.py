"""`inspect_dataset`: check a dataset folder and report every problem, not just the first."""

from __future__ import annotations

from collections import Counter
from pathlib import Path
from typing import Any

from .errors import DataError
from .layouts import list_pairs, load_pairs

__all__ = ["inspect_dataset", "format_report"]


def inspect_dataset(root: str | Path, layout: str = "auto") -> dict[str, Any]:
    """Decode every file of `root` and summarise it.

    Returns `root`, `layout`, `pairs` and `scenes` (usable ones), `clear_images`,
    `sizes` (count of hazy images per "WxH"), `problems` (one message per bad
    file: unreadable, no ground truth, size mismatch, name fitting no pattern) and
    `skipped` (files left out as not images, each with the reason).
    Raises `DataError` only when there is nothing to inspect: missing or empty
    folders, an unknown layout, or names that fit no layout.
    """
    listing = list_pairs(root, layout)
    problems = [str(err) for err in listing.problems]
    sizes: Counter[str] = Counter()
    scenes: set[str] = set()
    clear: set[Path] = set()
    for item in load_pairs(listing.pairs):
        if isinstance(item, DataError):
            problems.append(str(item))
            continue
        h, w = item.hazy.shape[:2]
        sizes[f"{w}x{h}"] += 1
        scenes.add(item.ref.scene)
        clear.add(item.ref.clear)
    return {
        "root": str(root),
        "layout": listing.layout,
        "pairs": sum(sizes.values()),
        "scenes": len(scenes),
        "clear_images": len(clear),
        "sizes": dict(sorted(sizes.items(), key=lambda kv: -kv[1])),
        # An unreadable clear image fails every pair sharing it with the same message: say it once.
        "problems": list(dict.fromkeys(problems)),
        # Visible files that are not images Pillow decodes: left out, and said so.
        "skipped": listing.skipped,
    }


def format_report(report: dict[str, Any]) -> str:
    """The report of `inspect_dataset` as a few aligned lines of text."""
    sizes = ", ".join(f"{size} ({n})" for size, n in report["sizes"].items()) or "-"
    lines = [
        f"root      {report['root']}",
        f"layout    {report['layout']}",
        f"pairs     {report['pairs']} ({report['scenes']} scenes, {report['clear_images']} clear images)",
        f"sizes     {sizes}",
        f"problems  {len(report['problems']) or 'none'}",
    ]
    lines += [f"  - {p}" for p in report["problems"]]
    lines.append(f"skipped   {len(report['skipped']) or 'none'}")
    lines += [f"  - {s}" for s in report["skipped"]]
    return "\n".join(lines)
