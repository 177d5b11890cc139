"""The pooled screening: sources and shares, the relaxation order under a budget, de-duplication across sources,
the team's reference entries on the hull, and the comparison of the sources."""

from __future__ import annotations

import math

import pytest

from chemgen.errors import UsageError
from chemgen.screening import pipeline, substitution, uploads
from chemgen.screening.candidates import Candidate, SourceRun
from chemgen.screening.request import ScreeningRequest

LI_MN_O = ScreeningRequest.parse("Li-Mn-O")


def test_sources_are_named_and_share_n():
    assert pipeline.parse_sources("adit, substitution") == ("adit", "substitution")
    assert pipeline.parse_sources(None) == ("adit", "substitution", "random")
    with pytest.raises(UsageError, match="unknown source dft"):
        pipeline.parse_sources("adit,dft")
    assert pipeline.shares(200, ("adit", "substitution", "random", "upload")) == {
        "adit": 67, "substitution": 67, "random": 66}


def _fake(source: str, count: int, structure) -> list[Candidate]:
    return [Candidate(structure, source, f"{source} {i}") for i in range(count)]


def test_the_sources_take_turns_in_relaxation_and_share_a_candidate_budget(limno2_cif):
    from chemgen.io import systems_from_cif_text

    [crystal] = systems_from_cif_text(limno2_cif)
    candidates = _fake("substitution", 5, crystal) + _fake("random", 3, crystal) + _fake("upload", 1, crystal)
    valid = [True] * 9
    valid[1] = False
    batches = pipeline.relaxation_batches(candidates, valid, chunk=2, limit=6)
    sources = [{candidates[i].source for i in batch} for batch in batches]
    assert all(len(s) == 1 for s in sources)                          # one source per batch: its time is its own
    assert [s.pop() for s in sources] == ["substitution", "random", "upload", "substitution"]   # turns
    picked = [i for batch in batches for i in batch]
    assert sorted(picked) == [0, 2, 3, 5, 6, 8] and 1 not in picked   # 2 + 2 + 1 by turns, then the 6th


def test_the_same_structure_from_two_sources_is_one_candidate_found_by_both(prototypes, limno2_cif, tmp_path):
    """LiNiO2 with Ni -> Mn is uploaded by the team too: one unique structure, found by both sources."""
    run = substitution.generate(LI_MN_O, 3, prototypes=prototypes)
    twin = next(c for c in run.candidates if c.extra["prototype"] == "mp-25411")
    path = tmp_path / "team.cif"
    from chemgen import io as structure_io

    structure_io.write(path, [twin.structure])
    mine = uploads.generate(LI_MN_O, [path])
    candidates = run.candidates + mine.candidates
    valid = pipeline.validity(candidates)
    # energies as relaxation would give them: the upload a little lower, so it represents the group
    relaxed = {i: {"e_above_hull": 0.05 + 0.01 * i, "relax_status": "converged", "relaxed": None}
               for i in range(len(candidates))}
    relaxed[len(candidates) - 1]["e_above_hull"] = 0.01
    table = pipeline.assemble(candidates, valid, relaxed, references=None).set_index("index", drop=False)
    upload_index = len(candidates) - 1
    twin_index = run.candidates.index(twin)
    assert table.duplicate_of[twin_index] == upload_index and pd_isna(table.duplicate_of[upload_index])
    assert table.found_by[upload_index] == "substitution,upload" and not table.unique[twin_index]
    assert table.unique.sum() == len(candidates) - 1   # substitution made distinct structures only
    metrics = pipeline.source_metrics(table, [run, mine], {"substitution": 3.0})
    assert metrics["upload"]["metastable"] == 1.0 and metrics["substitution"]["candidates"] == len(run.candidates)
    assert metrics["pooled"]["unique"] == table.unique.sum()
    assert metrics["substitution"]["seconds_per_candidate"] == pytest.approx(
        (run.seconds + 3.0) / len(run.candidates))


def pd_isna(value) -> bool:
    import pandas as pd

    return bool(pd.isna(value))


def test_the_teams_reference_entries_join_the_hull_and_bad_ones_are_refused(tmp_path):
    from chemgen.scoring.hull import load_mp20_hull

    hull = load_mp20_hull()
    before = hull.e_above_hull("LiMnO2", -1.9)
    entries = tmp_path / "ours.csv"
    entries.write_text("formula,e_form_per_atom,id\nLiMnO2,-2.5,lab-7\n")
    ours = pipeline.hull_with(hull, pipeline.read_reference_entries(entries))
    assert ours.e_above_hull("LiMnO2", -1.9) == pytest.approx(0.6, abs=1e-6) and before < 0.6
    # held out: the hull without an entry that is on it rises there
    vertex = next(e for e in hull.phase_diagram(["Li", "Mn", "O"]).stable_entries
                  if e.attribute and len(e.composition.elements) == 3)
    formula = vertex.composition.reduced_formula
    without = pipeline.hull_with(hull, exclude=[vertex.attribute])
    assert without.hull_energy_per_atom(formula) > hull.hull_energy_per_atom(formula)
    bad = tmp_path / "bad.csv"
    bad.write_text("formula,e_form_per_atom\nLiMnO2,nan\n")
    with pytest.raises(UsageError, match="bad.csv line 2: e_form_per_atom"):
        pipeline.read_reference_entries(bad)
    bad.write_text("formula,energy\nLiMnO2,-2\n")
    with pytest.raises(UsageError, match="need columns formula and e_form_per_atom"):
        pipeline.read_reference_entries(bad)
    assert math.isfinite(before)


def test_an_empty_screening_still_has_its_table_and_metrics():
    table = pipeline.assemble([], [], {}, None)
    assert len(table) == 0 and {"source", "msun", "found_by"} <= set(table.columns)
    assert pipeline.source_metrics(table, [SourceRun("adit", [], 64, 1.0)], {})["adit"]["candidates"] == 0
