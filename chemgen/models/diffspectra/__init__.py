"""DiffSpectra: spectrum-conditioned 3D molecule diffusion (SpecFormer encoder + Diffusion Molecule Transformer)."""
