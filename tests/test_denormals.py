"""Denormal floats are flushed in every compute thread of every process the pipeline runs.

Deterministic checks, not timings: a multi-threaded multiply of denormal values by 1 returns
exact zeros only where every thread of torch's pool treats denormals as zero
(``pipeline.hardware.denormals_flushed``). The Ray trial actor is checked in test_gpu_scheduling.py.
"""

from __future__ import annotations

import subprocess
import sys
import threading

import torch
from torch.utils.data import DataLoader, Dataset

from pipeline.data.loader import CropLoader, _flush_denormals_in_worker
from pipeline.hardware import denormals_flushed


def test_a_command_process_flushes_in_every_thread_of_its_pool() -> None:
    # A fresh interpreter, as a command starts: importing the package sets the flag before the pool exists.
    code = ("import pipeline.train, torch; from pipeline.hardware import denormals_flushed; "
            "torch.set_num_threads(2); print(denormals_flushed(2))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "True"


def test_without_the_flag_the_check_sees_denormals() -> None:
    # The check can fail: a thread whose flag is off, with its own new pool, computes denormals.
    seen = {}

    def unflushed() -> None:
        torch.set_flush_denormal(False)
        seen["flushed"] = denormals_flushed(2)

    thread = threading.Thread(target=unflushed)
    thread.start()
    thread.join()
    assert seen["flushed"] is False


class _Flushed(Dataset):
    def __len__(self) -> int:
        return 2

    def __getitem__(self, i: int) -> bool:
        return denormals_flushed()


def _worker_reports(worker_init_fn) -> list[bool]:
    """What DataLoader workers forked from a thread whose flag is off say about their own flag."""
    seen = {}

    def load() -> None:
        torch.set_flush_denormal(False)  # the forking thread's flag is what a forked worker inherits
        loader = DataLoader(_Flushed(), batch_size=None, num_workers=1, worker_init_fn=worker_init_fn,
                            multiprocessing_context="fork")
        seen["workers"] = [bool(x) for x in loader]

    thread = threading.Thread(target=load)
    thread.start()
    thread.join()
    return seen["workers"]


def test_crop_loader_workers_flush_whatever_thread_started_them() -> None:
    from pipeline.data import load_builtin

    loader = CropLoader(load_builtin(), 16, workers=1)
    assert loader._loader.worker_init_fn is _flush_denormals_in_worker
    assert _worker_reports(None) == [False, False]  # inherited from an unflushed thread
    assert _worker_reports(_flush_denormals_in_worker) == [True, True]
