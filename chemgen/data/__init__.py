"""Data curation: readers for each source (`qm9`, `crystals`) and the versioned, hashed store (`store`); tensor
packs for training (`tensors`). Which datasets exist and which reader curates each is `chemgen.datasets`.
"""
