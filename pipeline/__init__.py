"""BILD dehazing pipeline: backbones, bi-level patch reweighting, data, and the Ray Tune search around them."""

__version__ = "0.1.0"
