"""Scores for generated atomic systems, each named by the reference protocol it follows.

`chemgen.scoring.molecules` scores molecules (EDM stability, RDKit validity, uniqueness,
novelty); `chemgen.scoring.crystals` scores crystals. Scoring sees only `AtomicSystem`
records, never a model.
"""

# Part of every gate's evaluation context: bump it when a change alters what a gate metric means
# (2: smact as CDVAE/ADiT pinned it, ADiT's construction rules, novelty against the training split),
# so scores from before and after are never compared.
SCORING_VERSION = "2"
