"""How well ranked candidates elucidate a set of test molecules (DiffSpectra's protocol, ``compute_metrics.py``).

``top{k}_accuracy``
    fraction of queries whose true key is among the keys of their first k candidates (exact structure:
    key equality after tautomer canonicalisation, `chemgen.elucidation.identity`). With k = 1 this is
    DiffSpectra's top-1; its top-k is inferred to be k candidates per spectrum (ANCHORS B4).
``mean_tanimoto_top1``
    mean over queries of the Tanimoto similarity of Morgan fingerprints (radius 2, 2,048 bits) of the
    top-1 candidate and the truth, both as canonical tautomers without explicit hydrogens; 0 for a query
    without candidates.
``valid_fraction``
    fraction of queries with at least one (valid) candidate.
"""

from __future__ import annotations

from collections.abc import Sequence
from functools import lru_cache

from rdkit import Chem, DataStructs
from rdkit.Chem import rdFingerprintGenerator

from chemgen.elucidation.identity import canonical_form, canonical_key
from chemgen.elucidation.ranking import Candidate
from chemgen.errors import UsageError

MORGAN_RADIUS = 2
MORGAN_BITS = 2048


@lru_cache(maxsize=1)
def _morgan():
    return rdFingerprintGenerator.GetMorganGenerator(radius=MORGAN_RADIUS, fpSize=MORGAN_BITS)


def tanimoto(a: Chem.Mol, b: Chem.Mol) -> float:
    """Tanimoto of Morgan r=2, 2,048-bit fingerprints of the two molecules as given."""
    return float(DataStructs.TanimotoSimilarity(_morgan().GetFingerprint(a), _morgan().GetFingerprint(b)))


def _canonical_mol(mol: Chem.Mol | None, what: str) -> Chem.Mol:
    form = canonical_form(mol)
    if form is None:
        raise UsageError(f"{what} is not a molecule that sanitises")
    return form.mol


def elucidation_metrics(truth_keys: Sequence[str] | None, ranked_lists: Sequence[Sequence[Candidate]],
                        truth_mols: Sequence[Chem.Mol], ks: Sequence[int] = (1, 10)) -> dict[str, float]:
    """Metrics over queries (module docstring). ``truth_keys[i]`` is `canonical_key` of ``truth_mols[i]``
    (None: computed here); ``ranked_lists[i]`` the candidates of query i, best first (ordered by rank)."""
    n = len(truth_mols)
    if truth_keys is None:
        truth_keys = [canonical_key(m) for m in truth_mols]
    if not n or len(truth_keys) != n or len(ranked_lists) != n:
        raise UsageError(f"need one true key, one candidate list and one true molecule per query, and at "
                         f"least one query (got {len(truth_keys)}, {len(ranked_lists)}, {n})")
    if not ks or any(isinstance(k, bool) or not isinstance(k, int) or k < 1 for k in ks):
        raise UsageError(f"ks must be whole numbers >= 1, not {list(ks)!r}")
    hits = dict.fromkeys(ks, 0)
    tanimotos, with_candidates = [], 0
    for i, (key, candidates, truth) in enumerate(zip(truth_keys, ranked_lists, truth_mols)):
        if not key:
            raise UsageError(f"query {i} has no true key")
        ordered = sorted(candidates, key=lambda c: c.rank)
        keys = [c.inchikey for c in ordered]
        for k in ks:
            hits[k] += key in keys[:k]
        if ordered:
            with_candidates += 1
            top = Chem.MolFromSmiles(ordered[0].smiles)
            tanimotos.append(tanimoto(_canonical_mol(truth, f"true molecule {i}"), top))
        else:
            tanimotos.append(0.0)
    metrics: dict[str, float] = {"num_queries": n}
    metrics.update({f"top{k}_accuracy": hits[k] / n for k in ks})
    metrics["mean_tanimoto_top1"] = sum(tanimotos) / n
    metrics["valid_fraction"] = with_candidates / n
    return metrics
