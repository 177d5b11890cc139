"""chemgen: generation pipeline for molecules and materials."""
__version__ = "0.2.0"
