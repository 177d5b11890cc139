"""One ranking over every source of candidates for a query's spectra, each candidate scored the same way.

The sources (`SOURCES`):

``library``
    the computed-spectra library: every molecule of the spectra store (QM9 chemistry: up to 9 heavy atoms of
    C, N, O and F), searched with the query (`chemgen.elucidation.library`); its best `LIBRARY_CANDIDATES` join.
``user``
    the chemist's own libraries: folders of spectra computed for their candidates (``chemgen spectra library
    add``, under ``$CHEMGEN_HOME/libraries/``), searched the same way.
``model``
    DiffSpectra's samples for the query, grouped and counted (`chemgen.elucidation.ranking`); each of its best
    candidates gets GFN2-xTB spectra (seconds a molecule) to be scored like the others.

Candidates are merged by canonical key (`chemgen.elucidation.identity.canonical_key`: the same molecule from two
sources is one candidate listing both), scored by one comparison (`chemgen.elucidation.comparison`: the
similarity of the query and the candidate's computed spectra, per modality and their mean), and ranked by that
score, the sample count breaking ties. A library candidate is scored from the library's own spectra of it; a
sampled one from the spectra computed for it here. With a formula, every source is restricted to it.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np
from rdkit import Chem, rdBase

from chemgen.elucidation.comparison import Comparison, QueryFeatures, query_features, similarities, stick_features
from chemgen.elucidation.identity import canonical_form, hill_formula, parse_formula
from chemgen.elucidation.ranking import Candidate, Ranking
from chemgen.errors import UsageError

SOURCES = ("library", "user", "model")
LIBRARY_CANDIDATES = 50          # per library, the best by similarity join the pool
MODEL_CANDIDATES = 10            # of the generator's ranking, the most sampled get spectra and join
LIBRARY_COVERAGE = "QM9 chemistry: molecules of up to 9 heavy atoms of C, N, O and F"

Sticks = Mapping[str, np.ndarray]           # frequencies_cm1, ir_km_mol, raman_a4_amu (None where absent)
SticksFn = Callable[[Chem.Mol], Sticks]


@dataclass(frozen=True)
class SourceReport:
    """What one source contributed to a query: searched or not (and why), how many candidates, how long."""

    source: str                  # "library:qm9-xtb", "user:<name>", "model"
    searched: bool
    detail: str
    candidates: int = 0
    seconds: float = 0.0


@dataclass
class Pool:
    """A query's pooled candidates, best first, and what each source did."""

    candidates: list[Candidate]
    reports: list[SourceReport]
    formula: str | None = None
    isomers: dict[str, int] = field(default_factory=dict)     # library -> its molecules of ``formula``
    model_ranking: Ranking | None = None                       # the generator's own counts, when it ran
    folders: dict[str, Path] = field(default_factory=dict)     # library name -> its folder

    def sources_searched(self) -> list[str]:
        return [r.source for r in self.reports if r.searched]


def parse_sources(text: str | Sequence[str] | None) -> tuple[str, ...] | None:
    """``"library,model"`` -> ("library", "model"); None (every source that exists) for None or empty."""
    if text is None:
        return None
    items = [s.strip().lower() for s in (text.split(",") if isinstance(text, str) else text) if s.strip()]
    unknown = sorted(set(items) - set(SOURCES))
    if unknown:
        raise UsageError(f"unknown source(s) {', '.join(unknown)} (known: {', '.join(SOURCES)})")
    return tuple(dict.fromkeys(items)) or None


def user_library_root() -> Path:
    from chemgen.paths import chemgen_home

    return chemgen_home() / "libraries"


def user_libraries(root: str | os.PathLike | None = None) -> list[Path]:
    """The chemist's libraries: folders of spectra shards under ``root`` (default `user_library_root`)."""
    base = Path(root) if root is not None else user_library_root()
    if not base.is_dir():
        return []
    return sorted(p for p in base.iterdir() if p.is_dir() and any(p.glob("shard-*.parquet")))


def features_of(spectra: Mapping[str, Any], comparison: Comparison) -> dict[str, QueryFeatures]:
    """The query's modalities ({kind: values or (values, covered)} on the grid) as features."""
    from chemgen.elucidation.rerank import query_arrays

    return {kind: query_features(values, covered, comparison)
            for kind, (values, covered) in query_arrays(spectra).items()}


def _key_and_smiles(smiles: str, fallback: str) -> tuple[str, str]:
    with rdBase.BlockLogs():
        form = canonical_form(Chem.MolFromSmiles(smiles)) if smiles else None
    return (form.inchikey, form.smiles) if form is not None else (fallback, smiles)


def score_sticks(query: Mapping[str, QueryFeatures], sticks: Sticks, comparison: Comparison) -> dict[str, float]:
    """Per modality of the query, the similarity of computed sticks (the library's comparison)."""
    columns = {"ir": "ir_km_mol", "raman": "raman_a4_amu"}
    out = {}
    for kind, features in query.items():
        if sticks.get(columns[kind]) is None:
            raise UsageError(f"no computed {kind} spectrum to compare with the query's")
        vector = stick_features(np.asarray(sticks["frequencies_cm1"]), np.asarray(sticks[columns[kind]]), comparison)
        out[kind] = float(similarities(features, vector[None, :])[0])
    return out


def xtb_sticks(mol: Chem.Mol) -> dict[str, np.ndarray]:
    """GFN2-xTB stick spectra of a candidate from its 3D coordinates (relaxed first; seconds a small molecule)."""
    from chemgen.spectra.compute import SpectraSettings, compute_spectrum

    if mol.GetNumConformers() == 0 or not mol.GetConformer().Is3D():
        raise UsageError("the candidate has no 3D coordinates to start xTB from")
    work = Chem.AddHs(mol, addCoords=True)
    numbers = np.array([atom.GetAtomicNum() for atom in work.GetAtoms()])
    result = compute_spectrum(numbers, work.GetConformer().GetPositions(), SpectraSettings(),
                              charge=Chem.GetFormalCharge(work))
    return {"frequencies_cm1": result.frequencies_cm1, "ir_km_mol": result.ir_intensities_km_mol,
            "raman_a4_amu": result.raman_activities_a4_amu}


def _library_candidates(library: Any, source: str, query: Mapping[str, QueryFeatures], formula: str | None,
                        limit: int, exclude: Sequence[str] = ()) -> list[Candidate]:
    hits = library.search(query, top_k=limit, formula=formula, exclude=exclude)
    candidates = []
    for hit in hits:
        key, smiles = _key_and_smiles(hit.smiles, hit.inchikey)
        candidates.append(Candidate(0, smiles, key, 0, 0.0, hit.formula, None, hit.smiles, hit.similarity,
                                    dict(hit.similarities), hit.similarity, sources=(source,), origin=hit))
    return candidates


def pool(spectra: Mapping[str, Any], sources: Iterable[str] | None = None, *, formula: str | None = None,
         top_k: int = 10, comparison: Comparison | None = None, library_folder: str | os.PathLike | None = None,
         user_roots: Sequence[str | os.PathLike] | None = None, model: Any = None,
         model_options: Mapping[str, Any] | None = None, sticks_fn: SticksFn = xtb_sticks,
         library_candidates: int = LIBRARY_CANDIDATES, model_candidates: int = MODEL_CANDIDATES,
         exclude: Sequence[str] = (), log: Callable[[str], None] = lambda line: None) -> Pool:
    """The pooled, scored, ranked candidates of one query (module docstring).

    ``spectra``: {kind: values or (values, covered)} on `chemgen.spectra.broadening.GRID_CM1`. ``sources``: a
    subset of `SOURCES` (None: every source that exists here). ``library_folder``: the spectra store (default:
    `chemgen.spectra.curation.default_folder`). ``user_roots``: library folders, or folders of them (default: the
    chemist's, `user_libraries`). ``model``: a DiffSpectra (loaded, a lineage folder or a registry URI; None: the
    shipped one), sampled with ``model_options`` (`chemgen.elucidation.run.elucidate_spectra`'s). ``sticks_fn``
    computes a sampled candidate's sticks (default GFN2-xTB). ``exclude``: InChIKeys the libraries leave out (the
    evaluation's held-out molecule). ``log`` hears what each source is doing.
    """
    from chemgen.elucidation.library import LibraryError, SpectralLibrary

    comparison = comparison or Comparison()
    wanted = parse_sources(list(sources)) if sources is not None else None
    formula = hill_formula(parse_formula(formula)) if formula else None
    query = features_of(spectra, comparison)
    reports: list[SourceReport] = []
    found: list[Candidate] = []
    isomers: dict[str, int] = {}
    folders: dict[str, Path] = {}

    def searched(kind: str) -> bool:
        return wanted is None or kind in wanted

    libraries: list[tuple[str, Path]] = []
    if searched("library"):
        from chemgen.errors import ChemgenError
        from chemgen.spectra.curation import default_folder

        try:
            libraries.append(("library", Path(library_folder) if library_folder else default_folder()))
        except ChemgenError as err:   # an installed chemgen without the spectra store beside it
            if wanted is not None:
                raise
            reports.append(SourceReport("library", False, str(err)))
    if searched("user"):
        user_folders: list[Path] = []
        for root in (user_roots if user_roots is not None else [user_library_root()]):
            root = Path(root)
            user_folders += [root] if any(root.glob("shard-*.parquet")) else user_libraries(root)
        if not user_folders and wanted is not None:   # asked for by name: say why there is nothing to search
            raise UsageError(f"no libraries of your own under {user_library_root()}: make one with `chemgen spectra "
                             "library add NAME FILE`")
        libraries += [("user", folder) for folder in user_folders]
    for kind, folder in libraries:
        start = time.perf_counter()
        try:
            library = SpectralLibrary.open(folder, comparison, progress=lambda done, total, name=folder.name: log(
                f"indexing {name}: shard {done} of {total}"))
        except (LibraryError, FileNotFoundError) as err:
            if wanted is not None:     # asked for by name
                raise
            reports.append(SourceReport(f"{kind}:{folder.name}", False, str(err)))
            continue
        name = f"{kind}:{library.name}"
        folders[library.name] = folder
        log(f"searching {name} ({len(library):,} molecules)")
        candidates = _library_candidates(library, name, query, formula, library_candidates, exclude)
        if formula:
            isomers[name] = library.count_formula(formula)
        coverage = LIBRARY_COVERAGE if kind == "library" else "your own candidates"
        reports.append(SourceReport(name, True, f"{len(library):,} molecules; {coverage}", len(candidates),
                                    time.perf_counter() - start))
        found += candidates
    model_ranking = None
    if searched("model"):
        start = time.perf_counter()
        try:
            from chemgen.elucidation.generator import elucidate_spectra, load_elucidator

            elucidator = load_elucidator(model)
        except (FileNotFoundError, UsageError) as err:
            if wanted is not None or model is not None:     # asked for by name, or a model named: its error
                raise
            reports.append(SourceReport("model", False, str(err)))
        else:
            log("sampling candidates with DiffSpectra")
            options = dict(model_options or {})
            model_ranking = elucidate_spectra(elucidator, spectra, formula, top_k=None, **options)
            scored = []
            for candidate in list(model_ranking)[:model_candidates]:
                log(f"computing the spectra of sampled candidate {candidate.rank} ({candidate.smiles})")
                try:
                    per_modality = score_sticks(query, sticks_fn(Chem.Mol(candidate.mol)), comparison)
                except Exception as err:  # noqa: BLE001 - one candidate's failure must not stop the others
                    scored.append(replace(candidate, sources=("model",), failure=_failure(err)))
                    continue
                mean = float(np.mean(list(per_modality.values())))
                scored.append(replace(candidate, similarity=mean, similarities=per_modality, score=mean,
                                      sources=("model",)))
            valid = model_ranking.num_valid
            reports.append(SourceReport(
                "model", True, f"DiffSpectra: {model_ranking.num_samples} samples, {valid} valid"
                + (f", {model_ranking.num_formula_match} of {formula}" if formula else ""), len(scored),
                time.perf_counter() - start))
            found += scored
    merged = merge(found)
    ranked = sorted(merged, key=lambda c: (c.score is None, -(c.score or 0.0), -c.count, c.inchikey))
    chosen = [replace(c, rank=i, formula_match=(c.formula == formula) if formula else None)
              for i, c in enumerate(ranked[:top_k], start=1)]
    return Pool(chosen, reports, formula, isomers, model_ranking, folders)


def merge(candidates: Iterable[Candidate]) -> list[Candidate]:
    """One candidate per canonical key: sources joined, the sampler's count kept, a library's similarity
    preferred (computed from the molecule's reference geometry) over one computed from a sample."""
    merged: dict[str, Candidate] = {}
    for candidate in candidates:
        seen = merged.get(candidate.inchikey)
        if seen is None:
            merged[candidate.inchikey] = candidate
            continue
        library_first = seen if seen.origin is not None else candidate
        other = candidate if library_first is seen else seen
        merged[candidate.inchikey] = replace(
            library_first, sources=tuple(dict.fromkeys(seen.sources + candidate.sources)),
            count=max(seen.count, candidate.count), fraction=max(seen.fraction, candidate.fraction),
            mol=library_first.mol if library_first.mol is not None else other.mol,
            similarity=library_first.similarity if library_first.similarity is not None else other.similarity,
            similarities=library_first.similarities or other.similarities,
            score=library_first.score if library_first.score is not None else other.score)
    return list(merged.values())


def _failure(err: Exception) -> str:
    from chemgen.errors import ChemgenError

    return str(err) if isinstance(err, ChemgenError) else f"{type(err).__name__}: {err}"


def materialise(candidate: Candidate, libraries: Mapping[str, Any] | None = None) -> Candidate:
    """A library candidate with what the files need: its 3D molecule (the library's relaxed geometry, bonds from
    its SMILES) and its spectra broadened on the grid, read from its shard. Sampled candidates have them."""
    from chemgen.spectra.broadening import broaden

    hit = candidate.origin
    if hit is None:
        return candidate
    import pyarrow.parquet as pq

    folder = (libraries or {}).get(hit.library)
    if folder is None:
        return candidate
    row = pq.read_table(Path(folder) / hit.shard).slice(hit.row, 1).to_pylist()[0]
    spectra = {"ir": broaden(row["frequencies_cm1"], row["ir_km_mol"], "ir")}
    if row.get("raman_a4_amu") is not None:
        spectra["raman"] = broaden(row["frequencies_cm1"], row["raman_a4_amu"], "raman")
    return replace(candidate, mol=molecule_3d(row), spectra=spectra)


def molecule_3d(row: Mapping[str, Any]) -> Chem.Mol | None:
    """The library's relaxed geometry as an RDKit molecule with bonds (from the coordinates; None if they do
    not make a molecule)."""
    from chemgen.atoms import AtomicSystem
    from chemgen.bonds import BondPerceptionError, rdkit_determine_bonds

    numbers = np.asarray(row["atomic_numbers"], dtype=np.int64)
    positions = np.asarray(row["positions"], dtype=np.float64).reshape(-1, 3)
    try:
        with rdBase.BlockLogs():
            mol = rdkit_determine_bonds(AtomicSystem.molecule(numbers, positions), charge=0)
            Chem.SanitizeMol(mol)
    except (BondPerceptionError, ValueError, RuntimeError):
        return None
    return mol
