"""Generative models: ADiT (now), GFMDiff and DiffSpectra (to come)."""
