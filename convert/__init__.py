"""bimamba-convert: a Bi-Mamba / Mamba-2 checkpoint -> one GGUF file (installed as `bimamba_edge.convert`).

checkpoint (bimamba_edge.checkpoint) -> tensor plan (tensors) + vocabulary (vocab) -> writer -> GGUF.
"""

from .writer import ConvertOptions, ConvertSummary, convert

__all__ = ["ConvertOptions", "ConvertSummary", "convert"]
