"""A chemist's own library: their candidates computed once with GFN2-xTB (real, on small molecules), kept in shards
that survive a kill, every bad line reported with its reason, and searched like QM9's library."""

from __future__ import annotations

import pytest

from chemgen.spectra import user_library
from chemgen.spectra.user_library import CandidateFileError, add_candidates, read_lines

GOOD = ["C=O", "CO", "C#N"]                  # formaldehyde, methanol, hydrogen cyanide: seconds of xTB each


def test_good_lines_are_computed_and_each_bad_line_says_why(tmp_path):
    candidates = tmp_path / "candidates.smi"
    candidates.write_text("\n".join([
        "# my isomers", "SMILES name",
        "C=O formaldehyde", "CO methanol",
        "C1CC broken",                 # unparseable ring
        "[Na+].[Cl-] salt",            # several fragments
        "C[NH3+] methylammonium",      # charged
        "[Fe] iron",                   # a metal
        "C=O again",                   # the same molecule twice: computed once
    ]) + "\n")
    report = add_candidates("mine", candidates, root=tmp_path / "libraries")
    assert (report.computed, report.skipped) == (2, 1) and report.read == 7
    lines = {row["name"]: row["status"] for row in read_lines(report.library)}
    assert lines["formaldehyde"] == lines["methanol"] == "ok" and lines["again"] == "ok"
    assert "RDKit cannot parse" in lines["broken"]
    assert lines["salt"].startswith("several fragments")
    assert lines["methylammonium"].startswith("charged (+1)")
    assert lines["iron"].startswith("contains Fe")

    from chemgen.elucidation.comparison import Comparison, query_features
    from chemgen.elucidation.library import SpectralLibrary
    from chemgen.spectra.compute import compute_spectrum
    from chemgen.spectra.broadening import broaden
    from chemgen.spectra.molecules import embed_smiles

    library = SpectralLibrary.open(report.library, cache_dir=tmp_path / "cache")
    assert len(library) == 2 and library.name == "mine"
    methanol = embed_smiles("CO")
    sticks = compute_spectrum(methanol.atomic_numbers, methanol.pos)
    query = {"ir": query_features(broaden(sticks.frequencies_cm1, sticks.ir_intensities_km_mol, "ir"), None,
                                  Comparison())}
    assert library.search(query, top_k=1)[0].smiles == "CO"


def test_a_kill_loses_at_most_the_shard_being_computed_and_the_next_run_goes_on(tmp_path, monkeypatch):
    from chemgen.spectra.compute import compute_spectrum

    monkeypatch.setattr(user_library, "SHARD_SIZE", 1)
    calls = []

    def killed_after_two(numbers, positions, settings):
        if len(calls) == 2:
            raise KeyboardInterrupt
        calls.append(len(numbers))
        return compute_spectrum(numbers, positions, settings)

    with pytest.raises(KeyboardInterrupt):
        add_candidates("resumed", smiles=GOOD, root=tmp_path, compute=killed_after_two)
    folder = tmp_path / "resumed"
    assert len(list(folder.glob("shard-*.parquet"))) == 2 and not list(folder.glob(".tmp-*"))
    calls.clear()
    report = add_candidates("resumed", smiles=GOOD, root=tmp_path,
                            compute=lambda n, p, s: calls.append(len(n)) or compute_spectrum(n, p, s))
    assert calls == [3] and (report.computed, report.skipped) == (1, 2)      # only hydrogen cyanide was left
    assert [row["status"] for row in read_lines(folder)] == ["ok", "ok", "ok"]


def test_a_molecule_xtb_cannot_keep_is_a_line_with_its_reason(tmp_path):
    from chemgen.spectra.compute import SpectraFailure

    def fails(numbers, positions, settings):
        raise SpectraFailure("connectivity changed during the xTB optimisation")

    report = add_candidates("failing", smiles=["CC"], root=tmp_path, compute=fails)
    assert (report.computed, report.failed) == (0, 1)
    assert read_lines(report.library)[0]["status"] == "failed: connectivity changed during the xTB optimisation"


def test_files_too_large_or_empty_are_refused_before_anything_is_computed(tmp_path):
    huge = tmp_path / "huge.smi"   # a database dump of 100,000 lines: refused at once, nothing computed
    huge.write_text("CCO\n" * 100_000)
    with pytest.raises(CandidateFileError, match="huge.smi: 100,000 molecules; at most 20,000 per call"):
        add_candidates("huge", huge, root=tmp_path)
    big = tmp_path / "big.smi"
    big.write_text("\n".join(["C"] * 6) + "\n")
    with pytest.raises(CandidateFileError, match="big.smi: 6 molecules; at most 5 per call"):
        add_candidates("big", big, root=tmp_path, limit=5)
    assert not (tmp_path / "big").exists() and not (tmp_path / "huge").exists()
    empty = tmp_path / "empty.smi"
    empty.write_text("# nothing\n")
    with pytest.raises(CandidateFileError, match="no molecules given"):
        add_candidates("empty", empty, root=tmp_path)
    with pytest.raises(Exception, match="library name"):
        add_candidates("../escape", smiles=["C"], root=tmp_path)
