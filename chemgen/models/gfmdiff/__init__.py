"""GFMDiff: Geometric-Facilitated Denoising Diffusion for 3D molecules (Xu et al., AAAI 2024, arXiv 2401.02683)."""

from chemgen.models.gfmdiff.config import (
    PRESETS,
    DiffusionConfig,
    DTNConfig,
    GFMDiffConfig,
    preset,
)
from chemgen.models.gfmdiff.model import GFMDiff

__all__ = ["PRESETS", "DTNConfig", "DiffusionConfig", "GFMDiff", "GFMDiffConfig", "preset"]
