"""Ray nodes a test starts with ``ray start`` and stops again, leaving every other Ray on the machine alone.

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
import time
from collections.abc import Callable, Iterator

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
