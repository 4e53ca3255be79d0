"""One writer per experiment on object storage: a lease object, refreshed while the search runs.

An object store has no ``flock``. The search therefore writes ``<experiment>/.search.lease``,
naming its host, pid and start time, and rewrites it every ``LEASE_REFRESH_S`` seconds. A
second search on the same experiment reads it and stops, naming the holder. A lease not
refreshed for ``LEASE_TIMEOUT_S`` seconds (its holder was killed, or its machine is gone) is
stale: the next search takes it over and says so. So is a lease whose holder ran on this
same machine and whose pid is gone (a ``kill -9``): the same command resumes at once. The age is measured against the refresh
time written in the lease, so the machines' clocks must roughly agree (NTP) for the timeout
to mean what it says.

Two searches started within the same second could both find no lease; each therefore reads
the lease back after writing it, and the one whose token is not there stops. Object stores
give no compare-and-swap through pyarrow, so this narrows the window rather than closing it;
it is there against a second search started by mistake, not against a race on purpose.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import json
import os
import socket
import sys
import threading
import time
import uuid
from collections.abc import Iterator
from typing import Any

from ..config import ConfigError
from ..storage import Location

__all__ = ["LEASE_FILE", "LEASE_REFRESH_S", "LEASE_TIMEOUT_S", "ExperimentBusyError", "experiment_lease"]

LEASE_FILE = ".search.lease"
LEASE_REFRESH_S = 30.0
LEASE_TIMEOUT_S = 300.0  # ten missed refreshes: a busy driver is never taken for a dead one
_SETTLE_S = 1.0  # how long a new holder waits before reading its lease back


class ExperimentBusyError(ConfigError):
    """Another live search holds this experiment; the message names it."""


def _now() -> float:
    return time.time()


def _holder_text(lease: dict[str, Any]) -> str:
    started = dt.datetime.fromtimestamp(lease.get("started", 0)).strftime("%Y-%m-%d %H:%M:%S")
    return f"pid {lease.get('pid')} on {lease.get('host')} since {started}"


def _read(path: Location) -> dict[str, Any] | None:
    try:
        lease = json.loads(path.read_text())
    except FileNotFoundError:
        return None
    except ValueError:
        return {}  # unreadable: treated as stale (it cannot be refreshed by anyone who wrote it whole)
    return lease if isinstance(lease, dict) else {}


def _write(path: Location, lease: dict[str, Any]) -> None:
    path.write_text(json.dumps({**lease, "refreshed": _now()}))


def _holder_gone(lease: dict[str, Any]) -> bool:
    """Whether the lease's holder ran on this machine and its process no longer exists."""
    if lease.get("host") != socket.gethostname() or not isinstance(lease.get("pid"), int):
        return False
    try:
        os.kill(lease["pid"], 0)
    except ProcessLookupError:
        return True
    except PermissionError:  # alive, under another user
        return False
    return False


def _acquire(path: Location, mine: dict[str, Any], timeout: float) -> None:
    held = _read(path)
    if held is not None and _holder_gone(held):
        print(f"taking over experiment {path.parent} from {_holder_text(held)}: that process is gone",
              file=sys.stderr, flush=True)
    elif held is not None:
        age = _now() - float(held.get("refreshed", 0))
        if age < timeout:
            raise ExperimentBusyError(
                f"experiment {path.parent} is being run by {_holder_text(held)} (its lease {path.name} was refreshed "
                f"{age:.0f}s ago; one older than {timeout:.0f}s is taken over); wait for it, stop it, or choose "
                "another --name")
        print(f"taking over experiment {path.parent} from {_holder_text(held)}: its lease was not refreshed for "
              f"{age:.0f}s (more than {timeout:.0f}s)", file=sys.stderr, flush=True)
    _write(path, mine)
    time.sleep(_SETTLE_S)
    now = _read(path) or {}
    if now.get("token") != mine["token"]:
        raise ExperimentBusyError(f"experiment {path.parent} was taken at the same moment by {_holder_text(now)}; "
                                  "wait for it, stop it, or choose another --name")


def _keep_fresh(path: Location, mine: dict[str, Any], stop: threading.Event, every: float) -> None:
    while not stop.wait(every):
        try:
            _write(path, mine)
        except OSError as err:  # the store is unreachable for a while: try again at the next refresh
            print(f"could not refresh the lease {path}: {err}", file=sys.stderr, flush=True)


@contextlib.contextmanager
def experiment_lease(folder: Location, timeout: float = LEASE_TIMEOUT_S,
                     refresh: float = LEASE_REFRESH_S) -> Iterator[None]:
    """Hold ``folder/.search.lease`` for the search; released (deleted) when the search ends."""
    path = folder / LEASE_FILE
    mine = {"host": socket.gethostname(), "pid": os.getpid(), "started": _now(), "token": uuid.uuid4().hex}
    _acquire(path, mine, timeout)
    stop = threading.Event()
    refresher = threading.Thread(target=_keep_fresh, args=(path, mine, stop, refresh), daemon=True,
                                 name="lease-refresh")
    refresher.start()
    try:
        yield
    finally:
        stop.set()
        refresher.join()
        if (_read(path) or {}).get("token") == mine["token"]:
            path.delete()
