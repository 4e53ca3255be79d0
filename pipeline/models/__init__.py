"""Promoted models: their files on disk and the one loader (``store``), promotion (``promotion``),
conversion of older pickled files (``convert``) and export to ONNX / TorchScript (``export``).

    from pipeline.models import load_model            # what evaluation and dehazing use
    from pipeline.models.promotion import promote     # best trial of a search -> models/<backbone>/v<N>

Importing the package loads only the store (torch, safetensors and the backbones): promotion,
with its Parquet and dataset reading, and export are imported on their own by the commands
that use them.
"""

from .store import (CARD_FILE, CARD_FORMAT, LATEST_FILE, MODEL_FILE, MODEL_FORMAT, load_model, model_label,
                    resolve_model_file, save_model)

__all__ = ["CARD_FILE", "CARD_FORMAT", "LATEST_FILE", "MODEL_FILE", "MODEL_FORMAT", "load_model", "model_label",
           "resolve_model_file", "save_model"]
