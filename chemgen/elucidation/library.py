"""A searchable library of computed spectra: the spectra store's molecules (QM9's, or a chemist's own), indexed.

`SpectralLibrary.open(folder)` reads a folder of stick-spectra shards (`chemgen.spectra.shards`: the committed
``datasets/spectra/qm9-xtb`` or a user library) into an index of feature vectors, one per molecule and modality
(`chemgen.elucidation.comparison.stick_features`), with each molecule's identity (InChIKey, SMILES, formula,
heavy atoms, mass, elements). Only molecules whose spectra were computed are indexed.

The index is prepared once and kept: each shard's block is cached under ``$CHEMGEN_HOME/cache/spectral-index/``,
named by the shard's content hash and the comparison's settings, so a store that grows by a shard costs one
shard's work, and the blocks of the whole store are kept together, memory-mapped, under a name made of all their
hashes (the store's content hash): a query reads no more than it compares.

`SpectralLibrary.search` scores every molecule (or those a formula, a set of elements or a mass range leaves)
against a query's features and returns the best ``top_k`` as `LibraryHit` records; a QM9-sized library
(130,831 molecules, IR and Raman) answers in well under a second on one core.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from chemgen.elucidation.comparison import FEATURE_GRID, Comparison, QueryFeatures, similarities, stick_features
from chemgen.elucidation.identity import hill_formula, parse_formula
from chemgen.errors import ChemgenError, UsageError

MODALITIES = ("ir", "raman")
META_FIELDS = ("inchikey", "smiles", "formula", "qm9_index", "split", "heavy_atoms", "mass", "elements", "shard",
               "row")
INDEX_FORMAT = 2


class LibraryError(ChemgenError, RuntimeError):
    """A spectra folder that cannot be indexed (no shards, an unreadable shard)."""


@dataclass(frozen=True)
class LibraryHit:
    """One library molecule and how well its computed spectra match the query."""

    rank: int
    inchikey: str
    smiles: str
    formula: str
    similarity: float                       # mean over the query's modalities
    similarities: dict[str, float]          # per modality
    library: str                            # the library's name (its folder's)
    qm9_index: int = -1                     # -1 outside QM9
    split: str = ""
    shard: str = ""                         # where its sticks and geometry are: the shard file and row
    row: int = -1


@dataclass
class SpectralLibrary:
    """The index of one folder of spectra shards (module docstring)."""

    name: str
    folder: Path
    comparison: Comparison
    meta: dict[str, np.ndarray]
    features: dict[str, np.ndarray]          # modality -> (M, D) float16, unit rows (zero rows: no such band)
    norms2: dict[str, np.ndarray] = field(default_factory=dict)   # (M,) float32 squared norms
    content_hash: str = ""

    def __len__(self) -> int:
        return len(self.meta["inchikey"])

    # ------------------------------------------------------------------ building
    @classmethod
    def open(cls, folder: str | os.PathLike, comparison: Comparison | None = None, name: str | None = None,
             cache_dir: str | os.PathLike | None = None,
             progress: Callable[[int, int], None] | None = None) -> SpectralLibrary:
        """The library of ``folder``'s shards, indexing only the shards not indexed before (``progress(done,
        total)`` is called as new shards are indexed)."""
        from chemgen.spectra import shards as store

        folder = Path(folder)
        comparison = comparison or Comparison()
        infos = store.scan(folder) if folder.is_dir() else []
        if not infos:
            raise LibraryError(f"{folder}: no spectra shards to search (compute some with `chemgen data prepare "
                               "qm9-spectra` or `chemgen spectra library add`)")
        name = name or folder.name
        base = Path(cache_dir) if cache_dir else _default_cache()
        home = base / f"{name}-{comparison.key}-v{INDEX_FORMAT}"
        blocks = home / "blocks"
        digest = hashlib.sha256("".join(i.sha256 for i in infos).encode()).hexdigest()
        combined = home / f"combined-{digest[:16]}"
        if not (combined / "done").is_file():
            new = [i for i in infos if not (blocks / f"{i.sha256}.npz").is_file()]
            for done, info in enumerate(new, start=1):
                _write_block(blocks / f"{info.sha256}.npz", folder / info.file, comparison)
                if progress:
                    progress(done, len(new))
            _combine(combined, [blocks / f"{i.sha256}.npz" for i in infos])
            for stale in combined.parent.glob("combined-*"):   # an older store's combination: superseded
                if stale != combined:
                    shutil.rmtree(stale, ignore_errors=True)
        return cls._load(name, folder, comparison, combined, digest)

    @classmethod
    def _load(cls, name: str, folder: Path, comparison: Comparison, combined: Path, digest: str) -> SpectralLibrary:
        features = {m: np.load(combined / f"{m}.npy", mmap_mode="r") for m in MODALITIES}
        norms2 = {m: np.load(combined / f"{m}-norms2.npy") for m in MODALITIES}
        with np.load(combined / "meta.npz", allow_pickle=False) as meta:
            values = {k: meta[k] for k in META_FIELDS}
        return cls(name, folder, comparison, values, features, norms2, digest)

    # ------------------------------------------------------------------ searching
    def select(self, formula: str | None = None, elements: Iterable[str] | None = None,
               mass_range: tuple[float, float] | None = None, exclude: Iterable[str] = ()) -> np.ndarray:
        """Indices of the molecules a search may return: of ``formula`` (any order of its elements), made only of
        ``elements``, of a mass (g/mol) in ``mass_range``, not one of the ``exclude`` InChIKeys."""
        keep = np.ones(len(self), dtype=bool)
        if formula is not None:
            keep &= self.meta["formula"] == hill_formula(parse_formula(formula))
        if elements is not None:
            allowed = {e.strip().capitalize() for e in elements if e.strip()}
            made_of = np.array([set(e.split(",")) <= allowed for e in self.meta["elements"]], dtype=bool)
            keep &= made_of
        if mass_range is not None:
            low, high = mass_range
            if not low <= high:
                raise UsageError(f"mass range {low}-{high}: the lower bound is above the upper")
            keep &= (self.meta["mass"] >= low) & (self.meta["mass"] <= high)
        excluded = set(exclude)
        if excluded:
            keep &= ~np.isin(self.meta["inchikey"], list(excluded))
        return np.flatnonzero(keep)

    def scores(self, query: Mapping[str, QueryFeatures], rows: np.ndarray | None = None) -> dict[str, np.ndarray]:
        """Per modality of the query, each selected molecule's similarity (`comparison.similarities`)."""
        unknown = sorted(set(query) - set(MODALITIES))
        if unknown:
            raise UsageError(f"a library holds {', '.join(MODALITIES)} spectra, not {', '.join(unknown)}")
        out = {}
        for modality, features in query.items():
            if rows is None:
                out[modality] = similarities(features, self.features[modality], self.norms2[modality])
            else:
                out[modality] = similarities(features, self.features[modality][rows], self.norms2[modality][rows])
        return out

    def search(self, query: Mapping[str, QueryFeatures], top_k: int = 10, formula: str | None = None,
               elements: Iterable[str] | None = None, mass_range: tuple[float, float] | None = None,
               exclude: Iterable[str] = ()) -> list[LibraryHit]:
        """The ``top_k`` molecules whose computed spectra match the query best (mean over its modalities)."""
        if top_k < 1:
            raise UsageError(f"top_k must be at least 1, got {top_k}")
        if not query:
            raise UsageError("the query has no spectrum to search with")
        rows = self.select(formula, elements, mass_range, exclude)
        if rows.size == 0:
            return []
        per_modality = self.scores(query, None if rows.size == len(self) else rows)
        mean = np.mean(np.stack(list(per_modality.values())), axis=0)
        best = np.argsort(-mean, kind="stable")[:top_k] if mean.size <= top_k else \
            np.argpartition(-mean, top_k - 1)[:top_k]
        best = best[np.lexsort((self.meta["inchikey"][rows[best]], -mean[best]))]   # ties: by InChIKey
        return [self.hit(int(rows[i]), rank, float(mean[i]), {m: float(s[i]) for m, s in per_modality.items()})
                for rank, i in enumerate(best, start=1)]

    def hit(self, row: int, rank: int, similarity: float, per_modality: dict[str, float]) -> LibraryHit:
        meta = self.meta
        return LibraryHit(rank, str(meta["inchikey"][row]), str(meta["smiles"][row]), str(meta["formula"][row]),
                          similarity, per_modality, self.name, int(meta["qm9_index"][row]), str(meta["split"][row]),
                          str(meta["shard"][row]), int(meta["row"][row]))

    def record(self, hit: LibraryHit) -> dict[str, Any]:
        """The hit's row of its shard: sticks (``frequencies_cm1``, ``ir_km_mol``, ``raman_a4_amu``), relaxed
        geometry (``atomic_numbers``, ``positions``), identity."""
        import pyarrow.parquet as pq

        table = pq.read_table(self.folder / hit.shard)
        return table.slice(hit.row, 1).to_pylist()[0]

    def count_formula(self, formula: str) -> int:
        """How many molecules of the library have this molecular formula (its isomers here)."""
        return int((self.meta["formula"] == hill_formula(parse_formula(formula))).sum())

    def describe(self) -> dict[str, Any]:
        elements = sorted({e for text in set(self.meta["elements"].tolist()) for e in text.split(",") if e})
        return {"name": self.name, "molecules": len(self), "elements": elements,
                "max_heavy_atoms": int(self.meta["heavy_atoms"].max()) if len(self) else 0,
                "content_hash": self.content_hash[:12]}


# ---------------------------------------------------------------------------- blocks
def _default_cache() -> Path:
    from chemgen.paths import chemgen_home

    return chemgen_home() / "cache" / "spectral-index"


def _write_block(path: Path, shard: Path, comparison: Comparison) -> None:
    """One shard's molecules (those with spectra) as features and identities, written atomically."""
    import pyarrow.parquet as pq
    from ase.data import atomic_masses, chemical_symbols

    try:
        table = pq.read_table(shard, columns=["qm9_index", "split", "inchikey", "smiles", "atomic_numbers",
                                              "frequencies_cm1", "ir_km_mol", "raman_a4_amu", "failure"])
    except Exception as err:  # noqa: BLE001 - pyarrow raises many types for a damaged file
        raise LibraryError(f"{shard}: not a readable spectra shard ({type(err).__name__}: {err})") from err
    rows = [(position, r) for position, r in enumerate(table.to_pylist()) if r["failure"] is None]
    features = {m: np.zeros((len(rows), len(FEATURE_GRID)), dtype=np.float16) for m in MODALITIES}
    meta: dict[str, list[Any]] = {k: [] for k in META_FIELDS}
    for i, (position, row) in enumerate(rows):
        frequencies = np.asarray(row["frequencies_cm1"], dtype=np.float64)
        for modality, column in (("ir", "ir_km_mol"), ("raman", "raman_a4_amu")):
            if row[column] is not None:
                features[modality][i] = stick_features(frequencies, np.asarray(row[column]), comparison)
        numbers = [int(z) for z in row["atomic_numbers"]]
        counts: dict[str, int] = {}
        for z in numbers:
            counts[chemical_symbols[z]] = counts.get(chemical_symbols[z], 0) + 1
        meta["inchikey"].append(row["inchikey"] or "")
        meta["smiles"].append(row["smiles"] or "")
        meta["formula"].append(hill_formula(counts))
        meta["qm9_index"].append(int(row["qm9_index"]) if row["qm9_index"] is not None else -1)
        meta["split"].append(row["split"] or "")
        meta["heavy_atoms"].append(sum(1 for z in numbers if z > 1))
        meta["mass"].append(float(sum(atomic_masses[z] for z in numbers)))
        meta["elements"].append(",".join(sorted(counts)))
        meta["shard"].append(shard.name)
        meta["row"].append(position)
    arrays = {"inchikey": np.array(meta["inchikey"], dtype=str), "smiles": np.array(meta["smiles"], dtype=str),
              "formula": np.array(meta["formula"], dtype=str), "qm9_index": np.array(meta["qm9_index"], np.int32),
              "split": np.array(meta["split"], dtype=str), "heavy_atoms": np.array(meta["heavy_atoms"], np.int16),
              "mass": np.array(meta["mass"], np.float32), "elements": np.array(meta["elements"], dtype=str),
              "shard": np.array(meta["shard"], dtype=str), "row": np.array(meta["row"], dtype=np.int32)}
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp.npz")
    np.savez(tmp, format=np.array(INDEX_FORMAT), **{f"features_{m}": v for m, v in features.items()}, **arrays)
    tmp.replace(path)


def _combine(target: Path, blocks: Sequence[Path]) -> None:
    """The blocks, in the store's order, as memory-mappable arrays (written beside, then renamed into place)."""
    tmp = target.with_name(f".{target.name}.{os.getpid()}.tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    parts: dict[str, list[np.ndarray]] = {k: [] for k in (*META_FIELDS, *MODALITIES)}
    for block in blocks:
        with np.load(block, allow_pickle=False) as data:
            for key in META_FIELDS:
                parts[key].append(data[key])
            for modality in MODALITIES:
                parts[modality].append(data[f"features_{modality}"])
    for modality in MODALITIES:
        features = np.concatenate(parts[modality]) if parts[modality] else np.zeros((0, len(FEATURE_GRID)), np.float16)
        np.save(tmp / f"{modality}.npy", features)
        as32 = features.astype(np.float32)
        np.save(tmp / f"{modality}-norms2.npy", (as32 * as32).sum(axis=1))
    np.savez(tmp / "meta.npz", **{k: np.concatenate(v) for k, v in parts.items() if k in META_FIELDS})
    (tmp / "done").write_text(json.dumps({"blocks": len(blocks), "format": INDEX_FORMAT}) + "\n")
    shutil.rmtree(target, ignore_errors=True)
    tmp.rename(target)
