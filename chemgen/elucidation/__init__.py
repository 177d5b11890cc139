"""Structure elucidation from spectra, independent of the model that samples the candidates.

A spectrum-conditioned model (DiffSpectra) samples many 3D molecules for one query spectrum; this package
turns them into an answer::

    samples (RDKit molecules, 3D)
      -> rank_candidates   group by canonical key, count, keep a 3D representative, filter by formula
      -> rerank            compute each candidate's IR/Raman (GFN2-xTB), compare with the query, re-order
      -> write_candidates  candidates.csv, candidates.sdf, one PNG per candidate
    over a test set: elucidation_metrics (top-k exact structure, Tanimoto of the top-1, valid fraction)

One job per module: `identity` (canonical key, formulas), `ranking` (candidates), `rerank` (spectral
similarity, re-ranking, the production compute function), `metrics`, `outputs`.
"""

from chemgen.elucidation.identity import (
    CanonicalForm,
    canonical_form,
    canonical_key,
    canonical_smiles,
    hill_formula,
    molecule_formula,
    normalise_formula,
    parse_formula,
)
from chemgen.elucidation.metrics import elucidation_metrics, tanimoto
from chemgen.elucidation.outputs import write_candidates
from chemgen.elucidation.ranking import Candidate, Ranking, rank_candidates
from chemgen.elucidation.rerank import (
    RERANK_RULES,
    computed_spectra,
    modality_similarities,
    rerank,
    spectral_similarity,
)

__all__ = [
    "RERANK_RULES", "CanonicalForm", "Candidate", "Ranking", "canonical_form", "canonical_key",
    "canonical_smiles", "computed_spectra", "elucidation_metrics", "hill_formula", "modality_similarities",
    "molecule_formula", "normalise_formula", "parse_formula", "rank_candidates", "rerank",
    "spectral_similarity", "tanimoto", "write_candidates",
]
