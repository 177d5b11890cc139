"""Scores for generated atomic systems, each named by the reference protocol it follows.

`chemgen.scoring.molecules` scores molecules (EDM stability, RDKit validity, uniqueness,
novelty); `chemgen.scoring.crystals` scores crystals. Scoring sees only `AtomicSystem`
records, never a model.
"""
