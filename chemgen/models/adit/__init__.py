"""ADiT: All-atom Diffusion Transformers (Joshi et al., ICML 2025)."""

from chemgen.models.adit.model import ADiT

__all__ = ["ADiT"]
