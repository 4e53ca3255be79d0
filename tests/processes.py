"""Processes a test starts as a user would: Ray nodes (``ray start``) and search drivers (``python -m pipeline.search``).

``ray stop`` stops every Ray on the machine: a developer's own, another test run's. Instead each
``ray start`` here runs in a process group of its own. The GCS, the raylet and the workers it
starts stay in that group after ``ray start`` returns, so signalling the group stops exactly the
node this test started.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import polars as pl

from pipeline.results import read_table

REPO = Path(__file__).resolve().parents[1]

STOP_WAIT_S = 15.0


def _alive(group: int) -> bool:
    try:
        os.killpg(group, 0)
    except ProcessLookupError:
        return False
    return True


def _stop(groups: list[int]) -> None:
    # SIGKILL, as `ray stop --force` sends: the GCS and the raylet take many seconds over a SIGTERM,
    # and a test's throwaway node has nothing to save.
    for group in groups:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(group, signal.SIGKILL)
    deadline = time.monotonic() + STOP_WAIT_S
    while any(_alive(g) for g in groups) and time.monotonic() < deadline:
        time.sleep(0.1)


@contextlib.contextmanager
def ray_nodes() -> Iterator[Callable[..., None]]:
    """Yield ``start(*command, env=None)``, which runs a command that starts a Ray node; all stop on exit."""
    groups: list[int] = []

    def start(*command: str, env: dict[str, str] | None = None) -> None:
        proc = subprocess.Popen(list(command), start_new_session=True, stdout=subprocess.PIPE,
                                stderr=subprocess.PIPE, text=True, env=env)
        groups.append(proc.pid)  # the group keeps this id after ray start itself has returned
        out, err = proc.communicate(timeout=120)
        if proc.returncode:
            raise AssertionError(f"{' '.join(command)} exited with {proc.returncode}:\n{out}{err}")

    try:
        yield start
    finally:
        _stop(groups)


def search_driver(argv: list[str], env: dict[str, str] | None = None) -> subprocess.Popen:
    """``python -m pipeline.search ARGV`` in its own process group, like a shell job, its output merged and unbuffered."""
    env = {**(os.environ if env is None else env), "PYTHONUNBUFFERED": "1"}
    return subprocess.Popen([sys.executable, "-m", "pipeline.search", *argv], cwd=REPO, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, start_new_session=True)


def trials_so_far(experiment: Path | str) -> pl.DataFrame:
    """The experiment's trials table as it stands, empty (with its key columns) before the first row lands."""
    try:
        return read_table([experiment], "trials")
    except (FileNotFoundError, ValueError):
        return pl.DataFrame(schema={"trial_id": pl.String, "status": pl.String, "epochs": pl.Int32})
