"""One screening over every source's candidates: validity, relaxation, de-duplication, E_hull, novelty, ranking,
and the comparison of the sources.

The flow (`chemgen.flows.screen`) runs the sources and the relaxation as Prefect tasks and calls these functions
for the rest; the rediscovery benchmark (``bench/bench_rediscovery.py``) calls the same ones, so the numbers the
docs quote come from the pipeline a team runs.

* Validity: CDVAE's rules (interatomic distances >= 0.5 A, volume, SMACT composition).
* Relaxation order (`relaxation_batches`): the sources take turns, so that a budget that stops the relaxation
  early cuts every source alike; each batch holds one source's candidates, so its time is that source's.
* De-duplication (`deduplicate`): after relaxation, StructureMatcher (ADiT's tolerances) within each reduced
  formula, across sources; the lowest-E_hull member of a group stays, with every source that found it.
* Novelty: against MP-20's training structures (`chemgen.scoring.report.training_references`), on reduced cells
  (the "screening" matcher: ADiT's tolerances). A candidate whose formula only training rows without coordinates
  have is "undetermined", never novel, unless none of those rows has its primitive site count (then no match is
  possible).
* Rates per source are fractions of the candidates it produced; metastable is E_hull <= 0.1 eV/atom on the MP-20
  hull (with the team's reference entries), stable <= 0; S.U.N. = stable, unique, novel; M.S.U.N. = metastable, ...
"""

from __future__ import annotations

import math
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from chemgen.errors import UsageError
from chemgen.screening.candidates import Candidate, SourceRun

SOURCES = ("adit", "substitution", "random", "upload")
GENERATING = ("adit", "substitution", "random")   # the sources --n is shared among
RUN_ORDER = ("substitution", "adit", "random")    # cheap failures first; the last fills what the others left
METASTABLE = 0.1    # eV/atom above the hull
MATCHER = "screening"   # `chemgen.scoring.crystal_novelty.MATCHER_PRESETS`: uniqueness, novelty, de-duplication
SYMPREC = 0.1       # spglib tolerance for space groups of generated and relaxed cells


def parse_sources(text: str | Sequence[str] | None, default: Sequence[str] = GENERATING) -> tuple[str, ...]:
    """"adit,substitution" -> ("adit", "substitution"); a UsageError names an unknown source."""
    if text is None:
        return tuple(default)
    names = [s.strip() for s in (text.split(",") if isinstance(text, str) else text) if s.strip()]
    unknown = [s for s in names if s not in SOURCES]
    if unknown or not names:
        raise UsageError(f"unknown source {', '.join(unknown) or '(none given)'}: choose from {', '.join(SOURCES)}")
    return tuple(dict.fromkeys(names))


def shares(n: int, sources: Sequence[str]) -> dict[str, int]:
    """``n`` candidates shared among the generating sources as evenly as they divide (uploads come on top)."""
    generating = [s for s in sources if s in GENERATING]
    return {s: n // len(generating) + (1 if i < n % len(generating) else 0) for i, s in enumerate(generating)}


# ----------------------------------------------------------------------------- the hull and the team's entries
def read_reference_entries(path: str | os.PathLike) -> list[Any]:
    """A team's own reference energies: a CSV with columns ``formula`` and ``e_form_per_atom`` (eV/atom, on the
    Materials Project's DFT scale, as the MP-20 hull), optionally ``id``. Bad rows fail the file, named."""
    import pandas as pd
    from pymatgen.core import Composition

    from chemgen.scoring.hull import HullEntry

    path = Path(path)
    try:
        table = pd.read_csv(path)
    except (OSError, ValueError) as error:
        raise UsageError(f"{path}: not a readable CSV ({error})") from None
    missing = {"formula", "e_form_per_atom"} - set(table.columns)
    if missing:
        raise UsageError(f"{path}: reference entries need columns formula and e_form_per_atom (missing "
                         f"{', '.join(sorted(missing))})")
    entries = []
    for row, (formula, energy, ident) in enumerate(zip(table["formula"], table["e_form_per_atom"],
                                                       table.get("id", [None] * len(table))), start=2):
        try:
            composition = Composition(str(formula))
        except (ValueError, KeyError):
            raise UsageError(f"{path} line {row}: {formula!r} is not a formula") from None
        if not isinstance(energy, (int, float)) or not math.isfinite(float(energy)) or abs(float(energy)) > 10:
            raise UsageError(f"{path} line {row}: e_form_per_atom {energy!r} is not a formation energy in eV/atom "
                             "(a finite number within +-10)")
        entries.append(HullEntry(str(ident) if ident is not None and str(ident) != "nan" else f"team-{row}",
                                 composition.reduced_formula, float(energy)))
    return entries


def hull_with(hull: Any, extra: Sequence[Any] = (), exclude: Sequence[str] = ()) -> Any:
    """The MP-20 hull with the team's entries added and the ``exclude`` material ids left out (the rediscovery
    benchmark holds its targets out this way)."""
    from chemgen.scoring.hull import MP20Hull

    if not extra and not exclude:
        return hull
    dropped = set(exclude)
    return MP20Hull([e for e in hull.entries if e.material_id not in dropped] + list(extra))


# ----------------------------------------------------------------------------- validity and relaxation order
def validity(candidates: Sequence[Candidate]) -> list[tuple[bool, str | None]]:
    """CDVAE validity of each candidate as generated: (valid, reason when not)."""
    from chemgen.scoring.crystal_validity import assess_validity

    out = []
    for index, candidate in enumerate(candidates):
        record, _ = assess_validity(index, candidate.structure, "cdvae")
        out.append((bool(record.valid), record.reason))
    return out


def relaxation_batches(candidates: Sequence[Candidate], valid: Sequence[bool], chunk: int,
                       limit: int | None = None) -> list[list[int]]:
    """Indices of the valid candidates in batches of at most ``chunk``, each of one source, the sources taking
    turns; at most ``limit`` candidates in all (the candidate budget), the same share for each source."""
    by_source: dict[str, list[int]] = {}
    for index, candidate in enumerate(candidates):
        if valid[index]:
            by_source.setdefault(candidate.source, []).append(index)
    if limit is not None:   # round-robin selection: each source keeps its turn's worth
        kept: dict[str, list[int]] = {s: [] for s in by_source}
        queues = {s: list(v) for s, v in by_source.items()}
        total = 0
        while total < limit and any(queues.values()):
            for source, queue in queues.items():
                if queue and total < limit:
                    kept[source].append(queue.pop(0))
                    total += 1
        by_source = kept
    batches = {s: [v[i:i + chunk] for i in range(0, len(v), chunk)] for s, v in by_source.items()}
    ordered = []
    for turn in range(max((len(b) for b in batches.values()), default=0)):
        ordered += [b[turn] for b in batches.values() if turn < len(b)]
    return ordered


# ----------------------------------------------------------------------------- after relaxation
def space_group(structure: Any) -> tuple[str | None, int | None]:
    """(symbol, number) at `SYMPREC`; (None, None) where spglib fails."""
    from pymatgen.symmetry.analyzer import SpacegroupAnalyzer

    try:
        analyzer = SpacegroupAnalyzer(structure, symprec=SYMPREC)
        return analyzer.get_space_group_symbol(), int(analyzer.get_space_group_number())
    except Exception:  # noqa: BLE001 - a symmetry the table cannot show is no reason to fail the screen
        return None, None


def deduplicate(structures: Sequence[Any], formulas: Sequence[str], order: Sequence[int]) -> dict[int, int]:
    """For each structure (by index; None skipped) the index of the first structure of its group in ``order``
    (StructureMatcher with ADiT's tolerances on reduced cells, within a reduced formula): itself when it is a
    group's first."""
    from chemgen.scoring.crystal_novelty import MATCHER_PRESETS, ReducedStructure, _fits

    matcher = MATCHER_PRESETS[MATCHER].matcher()
    reduced = {i: ReducedStructure(structures[i]).get() for i in order if structures[i] is not None}
    representatives: dict[str, list[int]] = {}
    first: dict[int, int] = {}
    for i in order:
        if reduced.get(i) is None:
            continue
        group = next((j for j in representatives.setdefault(formulas[i], [])
                      if _fits(matcher, reduced[j], reduced[i])), None)
        if group is None:
            representatives[formulas[i]].append(i)
            group = i
        first[i] = group
    return first


COLUMNS = ("index", "source", "origin", "formula", "num_atoms", "valid", "space_group_before",
           "space_group_number_before", "space_group_after", "space_group_number_after", "e_form_per_atom",
           "e_above_hull", "relax_status", "relax_steps", "stable", "metastable", "source_score", "error")


def assemble(candidates: Sequence[Candidate], valid: Sequence[tuple[bool, str | None]],
             relaxed: dict[int, dict[str, Any]], references: Any) -> Any:
    """The candidates table: one row per candidate, with its source, validity, space group before and after
    relaxation, energies, novelty, its duplicate group, and the S.U.N. flags; ranked (M.S.U.N. first, then by
    E_hull)."""
    import pandas as pd

    from chemgen.scoring.crystal_novelty import NOVEL, novelty_verdicts, unique_mask

    rows, finals = [], []
    for index, candidate in enumerate(candidates):
        generated = candidate.structure.to_pymatgen()
        r = relaxed.get(index, {})
        final = r.get("relaxed")
        final_structure = final.to_pymatgen() if final is not None else generated
        finals.append(final_structure if valid[index][0] else None)
        before = space_group(generated) if valid[index][0] else (None, None)
        after = space_group(final_structure) if final is not None else (None, None)
        e_hull = r.get("e_above_hull", math.nan)
        e_hull = math.nan if e_hull is None else float(e_hull)
        rows.append({"index": index, "source": candidate.source, "origin": candidate.origin,
                     "formula": generated.composition.reduced_formula, "num_atoms": len(generated),
                     "valid": valid[index][0], "space_group_before": before[0],
                     "space_group_number_before": before[1], "space_group_after": after[0],
                     "space_group_number_after": after[1], "e_form_per_atom": r.get("e_form_per_atom"),
                     "e_above_hull": e_hull, "relax_status": r.get("relax_status") or "not relaxed",
                     "relax_steps": r.get("relax_steps"),
                     "stable": bool(math.isfinite(e_hull) and e_hull <= 0.0),
                     "metastable": bool(math.isfinite(e_hull) and e_hull <= METASTABLE),
                     "source_score": candidate.score,
                     "error": r.get("error") or (None if valid[index][0] else valid[index][1])})
    table = pd.DataFrame(rows, columns=COLUMNS)
    formulas = [f.composition.reduced_formula if f is not None else "" for f in finals]
    valid_idx = [i for i in range(len(candidates)) if finals[i] is not None]
    table["novelty"] = None
    table["unique_in_source"] = False
    if valid_idx:
        verdicts = (novelty_verdicts([finals[i] for i in valid_idx], [formulas[i] for i in valid_idx], references,
                                     MATCHER)
                    if references is not None else ["not checked"] * len(valid_idx))
        table.loc[valid_idx, "novelty"] = verdicts
        for source in table.source.unique():
            members = [i for i in valid_idx if candidates[i].source == source]
            mask = unique_mask([finals[i] for i in members], [formulas[i] for i in members], MATCHER)
            table.loc[members, "unique_in_source"] = list(mask)
    table["novel"] = table.novelty == NOVEL
    # across sources: the lowest E_hull of each group stays, with every source that found it
    order = sorted(valid_idx, key=lambda i: (not math.isfinite(table.e_above_hull[i]), table.e_above_hull[i], i))
    first = deduplicate(finals, formulas, order)
    table["duplicate_of"] = [first.get(i, i) if first.get(i, i) != i else None for i in range(len(candidates))]
    table["duplicate_of"] = table["duplicate_of"].astype("Int64")
    found_by: dict[int, set[str]] = {}
    for i, group in first.items():
        found_by.setdefault(group, set()).add(candidates[i].source)
    table["found_by"] = [",".join(sorted(found_by.get(i, {candidates[i].source}))) for i in range(len(candidates))]
    table["unique"] = (table.valid & table.duplicate_of.isna()).astype(bool)
    table["sun"] = table.valid & table.unique_in_source & table.novel & table.stable
    table["msun"] = table.valid & table.unique_in_source & table.novel & table.metastable
    for column in ("space_group_number_before", "space_group_number_after"):
        table[column] = table[column].astype("Int64")
    return table.sort_values(["msun", "e_above_hull"], ascending=[False, True], na_position="last")


def source_metrics(table: Any, runs: Sequence[SourceRun], relax_seconds: dict[str, float]) -> dict[str, dict[str, float]]:
    """Per source: its candidates, the rates (fractions of its candidates), E_hull quantiles, and wall time per
    candidate (its generation plus its share of the relaxation). "pooled": the de-duplicated set of all sources."""
    import numpy as np

    out: dict[str, dict[str, float]] = {}
    for run in runs:
        rows = table[table.source == run.source]
        n = len(rows)
        values = rows.e_above_hull.astype(float)
        finite = values[np.isfinite(values)]
        seconds = run.seconds + relax_seconds.get(run.source, 0.0)
        out[run.source] = {
            "candidates": float(n), "attempts": float(run.attempts),
            "valid": _rate(rows.valid, n), "unique": _rate(rows.valid & rows.unique_in_source, n),
            "novel": _rate(rows.valid & rows.novel, n), "metastable": _rate(rows.metastable, n),
            "stable": _rate(rows.stable, n), "sun": _rate(rows.sun, n), "msun": _rate(rows.msun, n),
            "n_metastable": float(rows.metastable.sum()), "n_sun": float(rows.sun.sum()),
            "n_msun": float(rows.msun.sum()), "relaxed": float((rows.relax_status != "not relaxed").sum()),
            "e_hull_median": float(np.median(finite)) if len(finite) else math.nan,
            "seconds_generation": run.seconds, "seconds_relaxation": relax_seconds.get(run.source, 0.0),
            "seconds_per_candidate": seconds / n if n else math.nan}
    pooled = table[table.unique]
    n = len(table)
    out["pooled"] = {"candidates": float(n), "unique": float(len(pooled)),
                     "metastable": _rate(table.metastable & table.unique, n),
                     "n_metastable": float((table.metastable & table.unique).sum()),
                     "n_sun": float((table.sun & table.unique).sum()),
                     "n_msun": float((table.msun & table.unique).sum()),
                     "sun": _rate(table.sun & table.unique, n), "msun": _rate(table.msun & table.unique, n)}
    return out


def _rate(mask: Any, n: int) -> float:
    return float(mask.sum()) / n if n else math.nan
