"""bimamba-edge: 1-bit Bi-Mamba language models on CPUs through llama.cpp's GGUF."""

from .runtime import Model, load

__all__ = ["Model", "load"]
