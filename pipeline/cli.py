"""What every command line shares: flags mapped onto config keys, common flags, and exit codes.

Command modules (``python -m pipeline.train``, ``search``, ...) hold only their parser and
``main``; they call library functions and use :func:`run_command` so that every command
reports a bad input as one ``error:`` line with the same exit codes:

    0  done        2  bad input (a flag, file, key or value)        3  training diverged
    4  a search ran but every trial failed (the most common failure is printed)
    130  interrupted (Ctrl-C or SIGTERM); what finished is kept
"""

from __future__ import annotations

import argparse
import os
import signal
import sys
from collections.abc import Callable
from typing import Any

from .config import group_options

__all__ = [
    "ALL_FAILED",
    "INTERRUPTED",
    "add_inference_flags",
    "add_init_flag",
    "add_policy_flag",
    "add_quiet_flag",
    "add_threads_flag",
    "flag_overrides",
    "positive_int",
    "run_command",
]

INTERRUPTED = 130
ALL_FAILED = 4


def flag_overrides(flags: dict[str, Any], mapping: dict[str, str]) -> list[str]:
    """Turn argparse values into Hydra overrides: ``{flag: value}`` through ``{flag: key}``.

    Flags left as None keep the config's default. A mapping value ending in ``=`` names a
    group (``datasets=``), the rest are dotted keys.
    """
    overrides = []
    for flag, key in mapping.items():
        value = flags.get(flag)
        if value is None:
            continue
        if key.endswith("="):
            overrides.append(f"{key}{value}")
        else:
            overrides.append(f"{key}={_hydra_value(value)}")
    return overrides


def _hydra_value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, str) and any(c in value for c in " ,=[]{}'\""):
        return "'" + value.replace("'", "\\'") + "'"
    return str(value)


def positive_int(text: str) -> int:
    """argparse type: an integer >= 1 (``--tile 0`` is refused by argparse itself, naming the flag)."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not an integer") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"got {value}; expected an integer >= 1")
    return value


def add_policy_flag(parser: argparse.ArgumentParser) -> None:
    """``--policy NAME``, one of the ``policy`` group's files; map it with ``"policy": "policy="``."""
    parser.add_argument("--policy", choices=group_options("policy"),
                        help="reweighting policy: default (KL barrier) | paper (entropy, tanh-bounded scores)")


def add_threads_flag(parser: argparse.ArgumentParser) -> None:
    """``--threads N``: torch's intra-op threads (default: the CPUs this process may use)."""
    parser.add_argument("--threads", type=positive_int, metavar="N",
                        help="torch CPU threads (default: the CPUs this process may use, never more)")


def add_quiet_flag(parser: argparse.ArgumentParser) -> None:
    """``--quiet``: no progress bars (into a file or pipe they are redrawn every few seconds at most)."""
    parser.add_argument("--quiet", action="store_true", help="no progress bars")


def add_inference_flags(parser: argparse.ArgumentParser) -> None:
    """``--model``, ``--strategy``, ``--tile``, ``--device``, ``--precision``, ``--threads`` and ``--quiet``: every
    CLI that runs a model on images."""
    from .evaluation.inference import STRATEGIES  # torch: only for the commands that run a model
    from .hardware import PRECISIONS

    parser.add_argument("--model", required=True, metavar="PATH",
                        help="models/<backbone>[/v<N>], a model folder or file, or a training checkpoint.pt")
    parser.add_argument("--strategy", choices=STRATEGIES, default="tile", help="how images of more pixels than a --tile square are run")
    parser.add_argument("--tile", type=positive_int, default=512,
                        help="tile size, or the long side for resize (default 512; at least 2x the tile overlap)")
    parser.add_argument("--device", default="auto", help="auto | cpu | cuda | cuda:N")
    parser.add_argument("--precision", choices=PRECISIONS, default="auto",
                        help="autocast of the model: auto (bf16 on a CUDA device that supports it, else fp32) | "
                             "fp32 | bf16 | fp16")
    add_threads_flag(parser)
    add_quiet_flag(parser)


def add_init_flag(parser: argparse.ArgumentParser) -> None:
    """``--init MODEL``: training starts from a model's weights; map it with ``"init": "train.init"``."""
    parser.add_argument("--init", metavar="MODEL",
                        help="start from this model's weights: a model folder (imported or promoted), model file or "
                             "checkpoint.pt of the same backbone and preset")


def _raise_interrupt(signum: int, frame: Any) -> None:
    raise KeyboardInterrupt(signal.Signals(signum).name)


def run_command(body: Callable[[], int], *, errors: tuple[type[BaseException], ...] = (ValueError, OSError)) -> int:
    """Run a command's body: ``errors`` become one ``error:`` line (exit 2), SIGTERM acts as Ctrl-C (130).

    Output piped into ``head`` that closes early ends the command quietly, without a traceback.
    """
    previous = signal.signal(signal.SIGTERM, _raise_interrupt)
    try:
        code = body()
        sys.stdout.flush()  # output still buffered meets a closed pipe here, inside the handler below
        return code
    except BrokenPipeError:  # before ``errors``: it is an OSError too
        # The reader (head, less) went away: point stdout at /dev/null so the exit flush is silent.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 0
    except errors as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    except KeyboardInterrupt as err:
        detail = str(err) if err.args and str(err) not in ("SIGINT", "SIGTERM") else "what finished is kept"
        print(f"interrupted: {detail}; the same command continues it", file=sys.stderr)
        return INTERRUPTED
    finally:
        signal.signal(signal.SIGTERM, previous)
