"""Shared neural-network layers: embeddings and adaLN-Zero transformer blocks."""

from chemgen.nn.adaln import DiTBlock, FinalLayer, modulate
from chemgen.nn.embeddings import LabelEmbedder, TimestepEmbedder, index_embedding

__all__ = ["DiTBlock", "FinalLayer", "LabelEmbedder", "TimestepEmbedder", "index_embedding", "modulate"]
