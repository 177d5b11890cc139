"""Thermodynamic stability of crystals against an MP-20 convex hull.

Two pieces (the third, turning relaxed energies into stability records and rates, is
`chemgen.scoring.stability`):

* `MP20Hull` — a convex hull in formation-energy space built from the formation energies of all
  45,229 MP-20 entries (train metadata + val + test), with every element at 0 eV/atom. One
  pymatgen `PhaseDiagram` is built per chemical system on first use and kept in memory, so a query
  costs milliseconds; building the entry table takes about a second, so it is rebuilt rather than
  cached on disk (`to_json`/`from_json` exist for moving it elsewhere; nothing is pickled).
* CHGNet's energy scale — the elemental references that turn a CHGNet energy into a formation energy
  on the same scale as the dataset column (`ElementalReferences`), and CHGNet's formation-energy error
  on held-out MP-20 test rows after relaxation (`StabilitySigma`, cached beside the references), which
  `chemgen.scoring.stability` uses for the expected stable count sum_i Phi(-E_hull_i / sigma).

Both CHGNet fits take minutes, so they are cached under `default_cache_dir`, in files named by a hash of
their inputs (the content of the MP-20 files they read, the splits and rows, the CHGNet version, the
protocol): other data or another CHGNet gets its own file instead of a stale one. Files are written
atomically, and a lock beside each makes a second caller (thread or process) wait for the first one's
fit and read its file rather than start the same fit (`load_chgnet_references`, `load_chgnet_sigma`).

The hull is MP-20's, not the full Materials Project's: fewer competing phases, so it can only
under-estimate E_hull. A known MP-20 row lies on a hull that contains itself, so it is validated
leave-one-out (``MP20Hull.e_above_hull(..., exclude=material_id)``; bench/validate_stability.py).

Energy scheme (why it is consistent)
------------------------------------
The MP-20 column ``formation_energy_per_atom`` is ``(E_MP2020 - sum_i n_i mu_i^MP) / N``: Materials
Project total energies *with MP2020 corrections* minus MP's elemental ground-state energies. CHGNet
is trained on MPtrj's corrected energies, so its predictions already sit on the MP2020-corrected
scale; applying `MaterialsProject2020Compatibility` again would count the anion and +U corrections
twice, so it is deliberately not applied. What CHGNet lacks is MP's elemental references
``mu_i^MP`` on its own energy scale. We estimate them once by least squares over reference
structures whose MP formation energy is known (MP-20 ``train_first1000`` + ``val``; never ``test``)::

    E_CHGNet(r) / N_r - E_form^MP(r) = sum_i x_{r,i} mu_i        (x = atomic fractions)

and then, for any structure, ``E_form = E_CHGNet / N - sum_i x_i mu_i``. CHGNet's elemental
polymorph energies are not used directly because only 42 of the 89 MP-20 elements have their
ground-state structure (an MP-20 row with formation energy 0) with coordinates on hand, and the fit
also absorbs CHGNet's mean per-element bias. The fit uses CHGNet single points at the DFT
geometries; generated structures are relaxed first (CHGNet `StructOptimizer`, FIRE).
"""

from __future__ import annotations

import hashlib
import itertools
import json
import logging
import os
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

import numpy as np

from chemgen.paths import default_data_dir
from chemgen.scoring.relax import chgnet_model

if TYPE_CHECKING:  # pragma: no cover - typing only
    import pandas as pd
    from pymatgen.analysis.phase_diagram import PDEntry, PhaseDiagram
    from pymatgen.core import Composition, Structure

log = logging.getLogger(__name__)

MP20_SPLITS_WITH_COORDS = ("train_first1000", "val", "test")
# The splits whose structures are used to fit CHGNet's elemental references (test is held out).
REFERENCE_FIT_SPLITS = ("train_first1000", "val")
STABLE_THRESHOLD = 0.0  # eV/atom: FlowMM / ADiT / LeMat "stable"
METASTABLE_THRESHOLD = 0.1  # eV/atom: MatterGen's "stable", others' "metastable"


def default_cache_dir() -> Path:
    """``$CHEMGEN_CACHE_DIR`` or ``$CHEMGEN_HOME/cache`` (derived files, never committed)."""
    from chemgen.paths import chemgen_home

    env = os.environ.get("CHEMGEN_CACHE_DIR")
    return Path(env) if env else chemgen_home() / "cache"


# ----------------------------------------------------------------------------- the data hull
@dataclass(frozen=True)
class HullEntry:
    """One MP-20 entry: identifier, reduced formula and formation energy (eV/atom)."""

    material_id: str
    formula: str
    e_form_per_atom: float


class MP20Hull:
    """Convex hull of MP-20 formation energies, with elements at 0 eV/atom.

    Parameters
    ----------
    entries : the competing phases; formulas may be reduced (energies are per atom).

    Notes
    -----
    The dataset's ``e_above_hull`` column was computed against the whole Materials Project, which
    has phases this 20-atom subset lacks, so this hull can only underestimate the column: over all
    14,686 canonical val/test rows the column minus ours is >= -5e-5 eV/atom (rounding), its mean
    absolute value 2.1 meV/atom, 87.6 % within 1 meV/atom, max 0.079 eV/atom.
    """

    def __init__(self, entries: Iterable[HullEntry]) -> None:
        from pymatgen.core import Composition

        self.entries: list[HullEntry] = list(entries)
        # Entries keyed by their element set, so a chemical system gathers its subsystems quickly.
        self._by_chemsys: dict[frozenset[str], list[tuple[Composition, float, str]]] = {}
        for entry in self.entries:
            comp = Composition(entry.formula)
            key = frozenset(el.symbol for el in comp.elements)
            self._by_chemsys.setdefault(key, []).append((comp, entry.e_form_per_atom, entry.material_id))
        self._pd_entries: dict[frozenset[str], list[PDEntry]] = {}
        self._diagrams: dict[frozenset[str], PhaseDiagram] = {}

    # ---------------------------------------------------------------- construction
    @classmethod
    def from_mp20(cls, data_dir: str | Path | None = None) -> MP20Hull:
        """All 45,229 MP-20 entries: train metadata plus the val and test CSVs."""
        import pandas as pd

        root = Path(data_dir or default_data_dir()) / "mp_20"
        columns = ["material_id", "pretty_formula", "formation_energy_per_atom"]
        frames = [pd.read_csv(root / f"{name}.csv.gz", usecols=columns)[columns]
                  for name in ("train_metadata_no_coords", "val", "test")]
        table = pd.concat(frames, ignore_index=True).drop_duplicates("material_id")
        return cls(HullEntry(str(m), str(f), float(e)) for m, f, e in table.itertuples(index=False))

    def to_json(self, path: str | Path) -> None:
        """Write the entry table as JSON (the hull itself is rebuilt on load)."""
        rows = [[e.material_id, e.formula, e.e_form_per_atom] for e in self.entries]
        Path(path).write_text(json.dumps({"columns": ["material_id", "formula", "e_form_per_atom"],
                                          "rows": rows}))

    @classmethod
    def from_json(cls, path: str | Path) -> MP20Hull:
        data = json.loads(Path(path).read_text())
        return cls(HullEntry(str(m), str(f), float(e)) for m, f, e in data["rows"])

    # ---------------------------------------------------------------- queries
    @property
    def elements(self) -> set[str]:
        return set().union(*self._by_chemsys)

    def _system_entries(self, key: frozenset[str]) -> list[PDEntry]:
        """Elements at 0 eV/atom plus every entry of every subsystem of ``key`` (``attribute`` = id)."""
        from pymatgen.analysis.phase_diagram import PDEntry
        from pymatgen.core import Composition

        if key not in self._pd_entries:
            unknown = key - self.elements
            if unknown:
                raise KeyError(f"no MP-20 entries contain {sorted(unknown)}")
            # Elemental references at exactly 0 eV/atom make the hull's zero the dataset's zero.
            pd_entries = [PDEntry(Composition(el), 0.0) for el in sorted(key)]
            for size in range(1, len(key) + 1):
                for subsystem in itertools.combinations(sorted(key), size):
                    for comp, e_form, material_id in self._by_chemsys.get(frozenset(subsystem), ()):
                        pd_entries.append(PDEntry(comp, e_form * comp.num_atoms, attribute=material_id))
            self._pd_entries[key] = pd_entries
        return self._pd_entries[key]

    def phase_diagram(self, elements: Iterable[str], exclude: str | Iterable[str] | None = None) -> PhaseDiagram:
        """The phase diagram of one chemical system, optionally without the entries ``exclude`` names.

        The full diagram is built once and reused. An exclusion costs nothing when none of the
        excluded entries is a vertex of the hull (the hull is then unchanged); otherwise the
        system's diagram is rebuilt without them, uncached (milliseconds to a second).
        """
        from pymatgen.analysis.phase_diagram import PhaseDiagram

        key = frozenset(elements)
        if key not in self._diagrams:
            self._diagrams[key] = PhaseDiagram(self._system_entries(key))
        full = self._diagrams[key]
        excluded = _as_id_set(exclude)
        if not excluded or not any(e.attribute in excluded for e in full.stable_entries):
            return full
        return PhaseDiagram([e for e in self._system_entries(key) if e.attribute not in excluded])

    def hull_energy_per_atom(self, composition: Composition | str, exclude: str | Iterable[str] | None = None) -> float:
        """Formation energy (eV/atom) of the hull at ``composition``, optionally without some entries."""
        from pymatgen.core import Composition

        comp = Composition(composition)
        diagram = self.phase_diagram((el.symbol for el in comp.elements), exclude)
        return float(diagram.get_hull_energy_per_atom(comp))

    def e_above_hull(self, composition: Composition | str, e_form_per_atom: float,
                     exclude: str | Iterable[str] | None = None) -> float:
        """Energy above the hull (eV/atom); negative when the phase lies below the MP-20 hull.

        ``exclude`` (material ids) drops entries from the hull first: leave-one-out validation
        scores a known MP-20 row against the hull of all *other* rows, as a generated crystal would be.
        """
        return float(e_form_per_atom) - self.hull_energy_per_atom(composition, exclude)


def _as_id_set(ids: str | Iterable[str] | None) -> frozenset[str]:
    if ids is None:
        return frozenset()
    return frozenset([ids]) if isinstance(ids, str) else frozenset(ids)


_HULL_CACHE: dict[str, MP20Hull] = {}


def load_mp20_hull(data_dir: str | Path | None = None) -> MP20Hull:
    """The MP-20 hull, built once per process and data directory (about 1 s)."""
    key = str(Path(data_dir or default_data_dir()).resolve())
    if key not in _HULL_CACHE:
        start = time.perf_counter()
        _HULL_CACHE[key] = MP20Hull.from_mp20(key)
        log.info("built MP-20 hull entry table in %.2f s", time.perf_counter() - start)
    return _HULL_CACHE[key]


# ----------------------------------------------------------------------------- CHGNet route
def chgnet_energies_per_atom(structures: Sequence[Structure], model: Any = None,
                             batch_size: int = 16) -> np.ndarray:
    """CHGNet single-point energies (eV/atom, MP2020-compatible scale) of ``structures``."""
    model = chgnet_model(model)
    energies = np.empty(len(structures))
    for start in range(0, len(structures), batch_size):
        chunk = list(structures[start:start + batch_size])
        preds = model.predict_structure(chunk, task="e", batch_size=batch_size)
        preds = [preds] if isinstance(preds, dict) else preds
        energies[start:start + len(chunk)] = [float(p["e"]) for p in preds]
    return energies


@dataclass
class ElementalReferences:
    """MP's elemental reference energies on CHGNet's scale (eV/atom), fitted by least squares.

    Attributes
    ----------
    mu : per-element reference energy
    counts : number of fit rows containing each element
    rmse : root-mean-square residual of the fit (eV/atom), i.e. CHGNet's formation-energy error
        on the fit rows
    source : what the fit was built from
    """

    mu: dict[str, float]
    counts: dict[str, int] = field(default_factory=dict)
    rmse: float = float("nan")
    source: str = ""

    def formation_energy_per_atom(self, composition: Composition | str, energy_per_atom: float) -> float:
        """``E / N - sum_i x_i mu_i``; raises KeyError for an element without a reference."""
        from pymatgen.core import Composition

        fractions = Composition(composition).fractional_composition
        missing = [el.symbol for el in fractions.elements if el.symbol not in self.mu]
        if missing:
            raise KeyError(f"no CHGNet elemental reference for {missing}")
        return float(energy_per_atom - sum(x * self.mu[el.symbol] for el, x in fractions.items()))

    def to_json(self, path: str | Path) -> None:
        _write_json(path, {"mu": self.mu, "counts": self.counts, "rmse": self.rmse, "source": self.source})

    @classmethod
    def from_json(cls, path: str | Path) -> ElementalReferences:
        data = json.loads(Path(path).read_text())
        return cls({k: float(v) for k, v in data["mu"].items()},
                   {k: int(v) for k, v in data["counts"].items()}, float(data["rmse"]), data["source"])


def fit_elemental_references(compositions: Sequence[Composition | str], energies_per_atom: Sequence[float],
                             formation_energies: Sequence[float], source: str = "") -> ElementalReferences:
    """Least-squares ``mu`` such that ``E/N - E_form = sum_i x_i mu_i`` over the given rows."""
    from pymatgen.core import Composition

    comps = [Composition(c).fractional_composition for c in compositions]
    elements = sorted({el.symbol for c in comps for el in c.elements})
    column = {el: j for j, el in enumerate(elements)}
    design = np.zeros((len(comps), len(elements)))
    for i, comp in enumerate(comps):
        for el, x in comp.items():
            design[i, column[el.symbol]] = x
    target = np.asarray(energies_per_atom, float) - np.asarray(formation_energies, float)
    keep = np.isfinite(target)
    mu, *_ = np.linalg.lstsq(design[keep], target[keep], rcond=None)
    residual = design[keep] @ mu - target[keep]
    counts = (design[keep] > 0).sum(axis=0)
    return ElementalReferences({el: float(mu[column[el]]) for el in elements},
                               {el: int(counts[column[el]]) for el in elements},
                               float(np.sqrt(np.mean(residual**2))), source)


def build_chgnet_references(data_dir: str | Path | None = None, splits: Sequence[str] = REFERENCE_FIT_SPLITS,
                            model: Any = None, limit: int | None = None,
                            progress_every: int = 500) -> ElementalReferences:
    """Fit `ElementalReferences` from CHGNet single points on MP-20 reference structures.

    About 65 ms per structure on one thread: ~11 min for ``train_first1000`` + ``val``.
    """
    import pandas as pd
    from pymatgen.core import Structure

    root = Path(data_dir or default_data_dir()) / "mp_20"
    table = pd.concat([pd.read_csv(root / f"{s}.csv.gz", usecols=["pretty_formula", "formation_energy_per_atom",
                                                                  "cif"]) for s in splits], ignore_index=True)
    if limit is not None:
        table = table.iloc[:limit]
    model = chgnet_model(model)
    energies = np.empty(len(table))
    start = time.perf_counter()
    for begin in range(0, len(table), progress_every):
        cifs = table["cif"].iloc[begin:begin + progress_every]
        structures = [Structure.from_str(c, fmt="cif", primitive=False) for c in cifs]
        energies[begin:begin + len(structures)] = chgnet_energies_per_atom(structures, model)
        log.info("CHGNet single points %d/%d (%.0f s)", begin + len(structures), len(table),
                 time.perf_counter() - start)
    return fit_elemental_references(table["pretty_formula"], energies, table["formation_energy_per_atom"],
                                    source=f"CHGNet single points on MP-20 {'+'.join(splits)} ({len(table)} rows)")


def load_chgnet_references(path: str | Path | None = None, data_dir: str | Path | None = None) -> ElementalReferences:
    """Cached `ElementalReferences`: the JSON at ``path`` (default: `references_cache_path`, keyed by the
    inputs of the fit), fitted (~11 min) and written on first use; concurrent callers wait for one fit."""
    path = Path(path) if path else references_cache_path(data_dir)
    return _load_or_build(path, lambda: build_chgnet_references(data_dir), ElementalReferences.from_json,
                          "CHGNet's elemental references (about 11 min)")


# ----------------------------------------------------------------------------- CHGNet's error, held out
SIGMA_SPLIT = "test"  # never used to fit the elemental references
SIGMA_ROWS = 600
SIGMA_METHOD = "rms"  # see StabilitySigma: better calibrated on the leave-one-out rows than "robust"
ROBUST_SIGMA_FACTOR = 1.4826  # median absolute deviation -> standard deviation of a normal


def sample_mp20_rows(split: str = SIGMA_SPLIT, n_rows: int | None = SIGMA_ROWS, seed: int = 0,
                     data_dir: str | Path | None = None,
                     references: ElementalReferences | None = None) -> pd.DataFrame:
    """A seeded random sample of one MP-20 split (all rows when ``n_rows`` is None).

    Rows with an element that has no CHGNet reference are dropped first (they cannot be scored).
    The sample is a prefix of one seeded permutation, so a larger ``n_rows`` extends a smaller one.
    """
    import pandas as pd
    from pymatgen.core import Composition

    root = Path(data_dir or default_data_dir()) / "mp_20"
    table = pd.read_csv(root / f"{split}.csv.gz")
    if references is not None:
        known = set(references.mu)
        table = table[[Composition(f).chemical_system_set <= known for f in table["pretty_formula"]]]
    order = np.random.default_rng(seed).permutation(len(table))
    table = table.iloc[order].reset_index(drop=True)
    return table if n_rows is None else table.iloc[:n_rows].reset_index(drop=True)


def relax_mp20_rows(rows: pd.DataFrame, references: ElementalReferences, *, model: Any = None, fmax: float = 0.1,
                    steps: int = 200, batch_size: int = 32, workers: int = 1, progress: bool = True) -> pd.DataFrame:
    """Relax MP-20 rows from their DFT geometry (batched) and add CHGNet formation energies.

    Added columns: ``e_form_chgnet`` (after relaxation), ``e_form_chgnet_sp`` (single point at
    the DFT geometry, the first step of the same relaxation), ``relax_status``, ``relax_steps``.
    """
    import warnings

    from pymatgen.core import Structure

    from chemgen.scoring.relax import relax_structures  # the batched FIRE of the generated crystals

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # CIF rounding notices
        structures = [Structure.from_str(c, fmt="cif", primitive=False) for c in rows["cif"]]
    outcomes = relax_structures(structures, model, fmax=fmax, steps=steps, batch_size=batch_size,
                                workers=workers, progress=progress)

    def e_form(formula: str, energy: float) -> float:
        return references.formation_energy_per_atom(formula, energy) if np.isfinite(energy) else float("nan")

    out = rows.drop(columns=["cif"]).copy()
    out["e_form_chgnet"] = [e_form(f, o.energy_per_atom) for f, o in zip(rows["pretty_formula"], outcomes, strict=True)]
    out["e_form_chgnet_sp"] = [e_form(f, o.initial_energy_per_atom)
                               for f, o in zip(rows["pretty_formula"], outcomes, strict=True)]
    out["relax_status"] = [o.status for o in outcomes]
    out["relax_steps"] = [o.steps for o in outcomes]
    return out


def residual_stats(residuals: Sequence[float]) -> dict[str, float]:
    """Bias and spread of CHGNet-minus-DFT residuals (eV/atom); NaNs are ignored."""
    r = np.asarray(residuals, float)
    r = r[np.isfinite(r)]
    if not r.size:
        return {"n": 0.0}
    median = float(np.median(r))
    return {"n": float(r.size), "mean": float(r.mean()), "median": median, "rms": float(np.sqrt(np.mean(r**2))),
            "robust": float(ROBUST_SIGMA_FACTOR * np.median(np.abs(r - median))), "mae": float(np.mean(np.abs(r))),
            "abs_p95": float(np.quantile(np.abs(r), 0.95))}


@dataclass(frozen=True)
class StabilitySigma:
    """Spread of CHGNet's formation-energy error on held-out MP-20 rows, the ``sigma`` of
    P(stable) = Phi(-E_hull / sigma).

    Attributes
    ----------
    sigma : the spread used (eV/atom), ``relaxed[method]``
    method : ``rms`` (root mean square, the default) or ``robust`` (1.4826 x median absolute deviation)
    relaxed : `residual_stats` of E_form(CHGNet, relaxed from the DFT geometry) - E_form(DFT)
    single_point : the same at the DFT geometry, for comparison
    source : rows and settings it was computed from

    Notes
    -----
    Residuals after relaxation are the honest ones: generated crystals are relaxed before they
    are scored, so their error includes CHGNet's geometry error as well as its energy error. (From
    the DFT geometry the relaxation is short, median 2 FIRE steps, so on MP-20 rows the two
    spreads differ by a few percent; the relaxed one costs ~0.3 CPU-s per row, affordable.)

    RMS, not the robust spread: the residuals are heavy-tailed (95th percentile of |r| 0.061
    eV/atom against 1.96 x 0.022 = 0.043 for a normal with the robust spread), and a normal with
    the robust spread is over-confident exactly where it matters, for crystals a few tens of
    meV/atom from the hull. Leave-one-out on 600 test rows (bench/validate_stability.py): log loss
    of P_i 0.454 (RMS, 0.032 eV/atom) vs 0.474 (robust, 0.022); for CHGNet E_hull > 0.04 eV/atom,
    9.3 % of rows are DFT-stable, RMS predicts 4.0 %, robust 0.8 %; Brier scores tie (0.1345 /
    0.1344). The rows are very likely in CHGNet's training set (MPtrj holds MP's relaxations), so
    any sigma from them is optimistic for generated crystals; the larger one is the less wrong.
    """

    sigma: float
    method: str
    relaxed: dict[str, float]
    single_point: dict[str, float]
    source: str = ""

    @classmethod
    def from_rows(cls, rows: pd.DataFrame, method: str = SIGMA_METHOD, source: str = "") -> StabilitySigma:
        """From a `relax_mp20_rows` table."""
        if method not in ("robust", "rms"):
            raise ValueError(f"unknown sigma method {method!r} (robust | rms)")
        relaxed = residual_stats(rows["e_form_chgnet"] - rows["formation_energy_per_atom"])
        single = residual_stats(rows["e_form_chgnet_sp"] - rows["formation_energy_per_atom"])
        return cls(relaxed[method], method, relaxed, single, source)

    def to_json(self, path: str | Path) -> None:
        _write_json(path, {"sigma": self.sigma, "method": self.method, "relaxed": self.relaxed,
                           "single_point": self.single_point, "source": self.source})

    @classmethod
    def from_json(cls, path: str | Path) -> StabilitySigma:
        data = json.loads(Path(path).read_text())
        return cls(float(data["sigma"]), data["method"], data["relaxed"], data["single_point"], data["source"])


def build_chgnet_sigma(data_dir: str | Path | None = None, references: ElementalReferences | None = None,
                       n_rows: int = SIGMA_ROWS, seed: int = 0, method: str = SIGMA_METHOD, model: Any = None,
                       workers: int = 1, progress: bool = True) -> StabilitySigma:
    """Relax ``n_rows`` random MP-20 test rows with CHGNet and measure the formation-energy residuals.

    About 0.3 CPU-seconds per row (batched relaxation, median 2 FIRE steps from the DFT geometry):
    600 rows took 163 CPU-s, 4.3 min of wall time on 2 cores loaded by other jobs (load 3).
    """
    references = references or load_chgnet_references(data_dir=data_dir)
    rows = sample_mp20_rows(SIGMA_SPLIT, n_rows, seed, data_dir, references)
    table = relax_mp20_rows(rows, references, model=model, workers=workers, progress=progress)
    return StabilitySigma.from_rows(table, method, sigma_source(len(table), seed))


def sigma_source(n_rows: int, seed: int) -> str:
    """How a sigma was made: the words `build_chgnet_sigma` and bench/validate_stability.py both write."""
    return (f"CHGNet (FIRE + FrechetCellFilter, fmax 0.1 eV/A, <= 200 steps) relaxed from the DFT geometry, "
            f"E_form residuals vs DFT on {n_rows} random MP-20 {SIGMA_SPLIT} rows (seed {seed})")


def load_chgnet_sigma(path: str | Path | None = None, data_dir: str | Path | None = None,
                      references: ElementalReferences | None = None) -> StabilitySigma:
    """Cached `StabilitySigma`: the JSON at ``path`` (default: `sigma_cache_path`, beside the elemental
    references and keyed by its inputs, the references included), built (~4 min) and written on first use."""
    if path:
        return _load_or_build(Path(path), lambda: build_chgnet_sigma(data_dir, references), StabilitySigma.from_json,
                              "CHGNet's held-out error")
    references = references or load_chgnet_references(data_dir=data_dir)
    return _load_or_build(sigma_cache_path(data_dir, references), lambda: build_chgnet_sigma(data_dir, references),
                          StabilitySigma.from_json, "CHGNet's held-out error (about 4 min)")


# ----------------------------------------------------------------------------- the caches of both fits
# Bump when a change to the fit or the sigma protocol changes what a cache file holds: old files are then
# simply not found (their names carry the old key).
CACHE_SCHEME = 1

_T = TypeVar("_T")
_DIGESTS: dict[tuple[str, int, int], str] = {}


def chgnet_version() -> str:
    """The installed CHGNet's version (its pretrained weights ship with it), without importing it."""
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("chgnet")
    except PackageNotFoundError:
        return "not installed"


def file_digest(path: str | Path) -> str:
    """SHA-256 of a file's content, memoised per path, size and mtime (each MP-20 file is read once)."""
    path = Path(path)
    try:
        stat = path.stat()
    except FileNotFoundError:
        raise FileNotFoundError(f"{path}: no such file (the CHGNet fits are keyed by the data they read)") from None
    memo = (str(path.resolve()), stat.st_size, stat.st_mtime_ns)
    if memo not in _DIGESTS:
        digest = hashlib.sha256()
        with open(path, "rb") as handle:
            for block in iter(lambda: handle.read(1 << 20), b""):
                digest.update(block)
        _DIGESTS[memo] = digest.hexdigest()
    return _DIGESTS[memo]


def cache_key(inputs: dict[str, Any]) -> str:
    """A short hash of a JSON-able description of what a cached file was computed from."""
    return hashlib.sha256(json.dumps(inputs, sort_keys=True).encode()).hexdigest()[:16]


def references_inputs(data_dir: str | Path | None = None, splits: Sequence[str] = REFERENCE_FIT_SPLITS,
                      limit: int | None = None) -> dict[str, Any]:
    """What `build_chgnet_references` depends on: the files' content (not their folder), splits, CHGNet."""
    root = Path(data_dir or default_data_dir()) / "mp_20"
    return {"what": "chgnet-mp20-elemental-references", "scheme": CACHE_SCHEME, "chgnet": chgnet_version(),
            "splits": list(splits), "limit": limit,
            "files": {f"{s}.csv.gz": file_digest(root / f"{s}.csv.gz") for s in splits}}


def references_cache_path(data_dir: str | Path | None = None) -> Path:
    """Where `load_chgnet_references` keeps the fit for this data and this CHGNet."""
    return default_cache_dir() / f"chgnet_mp20_elemental_references-{cache_key(references_inputs(data_dir))}.json"


def sigma_inputs(data_dir: str | Path | None, references: ElementalReferences, n_rows: int = SIGMA_ROWS,
                 seed: int = 0, method: str = SIGMA_METHOD) -> dict[str, Any]:
    """What `build_chgnet_sigma` depends on: the held-out file's content, the sample, the references, CHGNet."""
    root = Path(data_dir or default_data_dir()) / "mp_20"
    return {"what": "chgnet-mp20-sigma", "scheme": CACHE_SCHEME, "chgnet": chgnet_version(), "split": SIGMA_SPLIT,
            "file": file_digest(root / f"{SIGMA_SPLIT}.csv.gz"), "n_rows": n_rows, "seed": seed, "method": method,
            "references": cache_key({"mu": references.mu})}


def sigma_cache_path(data_dir: str | Path | None, references: ElementalReferences, n_rows: int = SIGMA_ROWS,
                     seed: int = 0, method: str = SIGMA_METHOD) -> Path:
    """Where `load_chgnet_sigma` keeps the sigma of these references on this data (also for
    bench/validate_stability.py --write-sigma, which makes the same one)."""
    key = cache_key(sigma_inputs(data_dir, references, n_rows, seed, method))
    return default_cache_dir() / f"chgnet_mp20_sigma-{key}.json"


def _load_or_build(path: Path, build: Callable[[], _T], read: Callable[[Path], _T], what: str) -> _T:
    """``read(path)``, or ``build()`` written to ``path`` (its ``to_json`` writes atomically).

    An exclusive lock on ``<path>.lock`` makes concurrent callers, threads or processes, wait for the one
    that builds and then read its file instead of each starting a fit of minutes. flock is released when
    its holder exits, however it exits, so a crashed builder leaves no stale lock: the next caller builds.
    """
    import fcntl

    if path.exists():
        return read(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path.with_name(path.name + ".lock"), "a") as lock:
        try:
            fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            log.warning("%s: another caller is building %s; waiting for it", path, what)
            fcntl.flock(lock, fcntl.LOCK_EX)
        if path.exists():  # the caller we waited for built it
            return read(path)
        log.warning("building %s, cached as %s", what, path)
        value = build()
        value.to_json(path)  # type: ignore[attr-defined]
        return value


def _write_json(path: str | Path, data: dict[str, Any]) -> None:
    """Write JSON atomically: a reader never sees half a cache file."""
    from chemgen.io import atomic_write

    with atomic_write(path) as handle:
        json.dump(data, handle, indent=1)


