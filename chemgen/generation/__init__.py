"""What every generative model shares: checkpoint lineages (more to come: trainer, generation, registry)."""
