"""Promoted models: their files on disk and the one loader (``store``), and promotion (``promotion``).

    from pipeline.models import load_model            # what evaluation and dehazing use
    from pipeline.models.promotion import promote     # best trial of a search -> models/<backbone>/v<N>

Importing the package loads only the store (torch and the backbones): promotion, with its
Parquet and dataset reading, is imported on its own by the commands that promote.
"""

from .store import CARD_FILE, LATEST_FILE, MODEL_FILE, MODEL_FORMAT, load_model, model_label, resolve_model_file, save_model

__all__ = ["CARD_FILE", "LATEST_FILE", "MODEL_FILE", "MODEL_FORMAT", "load_model", "model_label",
           "resolve_model_file", "save_model"]
