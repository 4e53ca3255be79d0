"""BILD dehazing pipeline: backbones, bi-level patch reweighting, data, and the Ray Tune search around them."""

import os

__version__ = "0.1.0"

# torch's OpenMP threads sleep when they run out of work instead of spinning. A spinning thread
# keeps its CPU from the crop loader workers and from any other busy process: on the project's
# 2 cores, beside two decoding loader workers, a training epoch took 32 s spinning and 7.5 s
# sleeping, and an evaluation with another job running 80 s against 20 s (docs/scale.md).
# It must be set before torch is first imported; a value already set wins.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

# Denormal floats (activations of trained weights fall there) take a slow path on x86 CPUs: a
# published AOD-Net ran 20x slower than a fresh one. The flush-to-zero flag is per thread and
# threads inherit it from their creator, so it is set here, before torch starts its thread pool;
# every process that imports the package (commands, Ray trial actors, loader workers) has it.
from .hardware import flush_denormals  # noqa: E402  (after OMP_WAIT_POLICY, which must precede torch)

flush_denormals()
