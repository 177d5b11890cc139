"""The screening flow over pooled sources for a chemical system (Prefect, MLflow, CHGNet), and the bad requests
that stop it before anything runs."""

from __future__ import annotations

import pandas as pd
import pytest

from chemgen.errors import UsageError

pytestmark = pytest.mark.slow


@pytest.fixture()
def small_prototypes(monkeypatch, prototypes):
    """Substitution draws on five real MP-20 validation structures instead of all 4,600 (minutes to decorate)."""
    from chemgen.screening import substitution

    monkeypatch.setattr(substitution, "load_prototypes", lambda data_dir=None, log=None: prototypes)


def test_substitution_random_and_an_upload_are_screened_and_compared_together(small_prototypes, small_references,
                                                                              limno2_cif, tmp_path):
    from chemgen.flows.screen import crystal_screening

    upload = tmp_path / "ours.cif"
    upload.write_text(limno2_cif)
    out = tmp_path / "screen"
    result = crystal_screening(n=6, chemical_system="Li-Mn-O", sources="substitution,random", uploads=[str(upload)],
                               relax_steps=5, references_path=str(small_references), sigma=0.06, chunk=2, workers=2,
                               out_dir=str(out))
    table = pd.read_csv(out / "candidates.csv")
    counts = table.source.value_counts().to_dict()
    # n shared, the upload on top; the five prototypes give two distinct substitutions, random structures fill in
    assert counts == {"substitution": 2, "random": 4, "upload": 1}
    assert set(table.formula.map(lambda f: "".join(sorted(set(c for c in f if c.isupper()))))) == {"LMO"}
    assert table.relax_status.isin(["converged", "step_cap", "failed"]).all()   # every one relaxed (no budget)
    assert table.space_group_before.notna().all() and table.cif.notna().all()
    assert (table.found_by.str.split(",").map(set) >= table.source.map(lambda s: {s})).all()
    for source in ("substitution", "random", "upload"):
        assert f"| {source} | {counts[source]} |" in (out / "report.md").read_text()
        assert 0 <= result["sources"][source]["seconds_per_candidate"] < 120
    assert result["metrics"]["source/pooled/candidates"] == 7
    assert (out / "e_above_hull.png").read_bytes()[:4] == b"\x89PNG"
    # the relaxation budget in candidates: the sources take turns, the rest stays unrelaxed
    budget = crystal_screening(n=6, chemical_system="Li-Mn-O", sources="substitution,random", relax_steps=5,
                               references_path=str(small_references), sigma=0.06, chunk=2, workers=1,
                               out_dir=str(tmp_path / "budget"), max_relaxed=2)
    table = pd.read_csv(tmp_path / "budget" / "candidates.csv")
    relaxed = table[table.relax_status != "not relaxed"]
    assert sorted(relaxed.source) == ["random", "substitution"] and budget["n_candidates"] == 6


@pytest.mark.parametrize(("options", "message"), [
    ({"chemical_system": "Li-Xx-O"}, "'Xx' is not an element symbol"),
    ({"chemical_system": "Li-Mn-O", "sources": "adit,dft"}, "unknown source dft"),
    ({"formula": "LiMn2O4"}, "give the system too"),
    ({"sources": "random"}, "need a chemical system"),
    ({"chemical_system": "Li-Mn-O", "formula": "LiFeO2"}, "not of the system Li-Mn-O"),
    ({"chemical_system": "He-Ne", "sources": "adit,random"}, "no charge-balanced composition"),
])
def test_a_bad_request_fails_before_anything_runs(options, message, tmp_path):
    from chemgen.flows.screen import crystal_screening

    with pytest.raises(UsageError, match=message):
        crystal_screening.fn(n=4, out_dir=str(tmp_path / "never"), **options)
    assert not (tmp_path / "never").exists()


def test_a_bad_upload_fails_before_any_generation(limno2_cif, tmp_path, small_references, monkeypatch):
    from chemgen.flows.screen import crystal_screening
    from chemgen.screening import random_search

    monkeypatch.setattr(random_search, "generate", lambda *a, **k: pytest.fail("generation ran"))
    partial = tmp_path / "partial.cif"
    partial.write_text(limno2_cif.replace("0.25010000  1\n", "0.25010000  0.5\n"))
    with pytest.raises(UsageError, match="partial.cif"):
        crystal_screening(n=4, chemical_system="Li-Mn-O", sources="random", uploads=[str(partial)],
                          references_path=str(small_references), sigma=0.06, out_dir=str(tmp_path / "never"))
    assert not (tmp_path / "never" / "candidates.csv").exists()


def test_the_command_takes_a_system_and_sources(small_references, tmp_path, monkeypatch):
    from typer.testing import CliRunner

    from chemgen.cli.app import app

    runner = CliRunner()
    bad = runner.invoke(app, ["flows", "screen", "--system", "Li-Xx-O", "--n", "2"])
    assert bad.exit_code != 0 and "'Xx' is not an element symbol" in bad.output
    bad = runner.invoke(app, ["flows", "screen", "--system", "Li-Mn-O", "--sources", "adit,dft"])
    assert bad.exit_code != 0 and "unknown source dft" in bad.output
    # the flow's CHGNet references: the small fixture's, as a team's own fit would be passed
    from chemgen.flows import screen

    original = screen.load_energy_references.fn

    def small(references_path, data_dir, sigma, extra_entries=None):
        return original(str(small_references), data_dir, 0.06, extra_entries)

    monkeypatch.setattr(screen.load_energy_references, "fn", small)
    done = runner.invoke(app, ["flows", "screen", "--system", "Li-Mn-O", "--sources", "random", "--n", "2",
                               "--relax-steps", "2", "--out", str(tmp_path / "cli")])
    assert done.exit_code == 0, done.output
    assert "sources compared (Li-Mn-O)" in done.output and "random" in done.output
    assert len(pd.read_csv(tmp_path / "cli" / "candidates.csv")) == 2
