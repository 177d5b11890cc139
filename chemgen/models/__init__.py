"""Generative models: ADiT, GFMDiff and DiffSpectra, each in its folder (networks, losses, config); the contract
they implement (`protocol`), the registry of models by name (`specs`) and loading a trained one (`loading`)."""
