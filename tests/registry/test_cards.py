"""Model cards of the shipped lineages: every number the card prints is the manifest's or the run log's."""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path

import pytest

from chemgen import lineage
from chemgen.gates import GATES
from chemgen.models.specs import MODELS
from chemgen.registry.cards import NOTES, format_score, model_card

WEIGHTS = Path(__file__).resolve().parents[2] / "models" / "weights"
SHIPPED = sorted(p.name for p in WEIGHTS.iterdir() if (p / "manifest.json").is_file())


def _section(card: str, title: str) -> str:
    """The text of a ``## title`` section, up to the next one."""
    match = re.search(rf"^## {re.escape(title)}\n(.*?)(?=^## |\Z)", card, flags=re.M | re.S)
    assert match, f"no section {title!r} in the card"
    return match.group(1)


def _rows(text: str) -> list[list[str]]:
    return [[cell.strip() for cell in line.strip().strip("|").split("|")]
            for line in text.splitlines() if line.startswith("|") and not line.startswith("|---")]


def _number(text: str) -> float:
    return float(text.split()[0].replace(",", ""))


def test_the_three_models_ship_a_lineage_each():
    assert SHIPPED == ["adit-gpu-quick", "diffspectra-cpu", "gfmdiff-cpu"]
    assert {lineage.read_manifest(WEIGHTS / name)["model"] for name in SHIPPED} == set(MODELS) == set(NOTES)


@pytest.mark.parametrize("name", SHIPPED)
def test_a_card_prints_the_manifests_steps_scores_and_data(name):
    folder = WEIGHTS / name
    manifest = json.loads((folder / "manifest.json").read_text())
    card = model_card(folder)
    assert card.startswith(f"# Model card: {name}\n")
    header = dict(row for row in _rows(card.split("\n## ", 1)[0]) if len(row) == 2)
    assert header["parameters"] == f"{manifest['parameters']:,}"
    assert header["registered as"] == f"`{MODELS[manifest['model']].registered_name}`"

    compute = _section(card, "Compute")
    steps_table = compute.split("Training runs")[0]
    assert {row[0]: int(row[1].replace(",", "")) for row in _rows(steps_table)[1:]} == manifest["steps"]

    quality = _section(card, "Measured quality")
    scores = {row[0].split("`")[1]: row for row in _rows(quality) if row[0].startswith("`") and len(row) == 3}
    assert set(scores) == set(manifest["scores"])
    for key, value in manifest["scores"].items():
        assert scores[key][1] == format_score(key, value)
        assert _number(scores[key][1]) == pytest.approx(value, abs=5e-5), key
    gate = GATES[MODELS[manifest["model"]].registered_name]
    assert scores[gate[0]][0].endswith("(gate, primary)")
    for key, value in manifest["evaluation"]["context"].items():
        assert f"| {key} | {value} |" in quality

    data = _section(card, "Training data")
    for entry in manifest["data"]:
        dataset, version = entry.split("@")
        assert f"| {dataset} | `{version}` |" in data

    for title in ("Intended use", "Limitations"):
        assert len(_section(card, title).strip()) > 100


@pytest.mark.parametrize("name", SHIPPED)
def test_a_card_lists_every_logged_run_with_its_machine_steps_and_wall_minutes(name):
    folder = WEIGHTS / name
    runs = [json.loads(line) for line in (folder / "lineage.jsonl").read_text().splitlines() if line.strip()]
    manifest = json.loads((folder / "manifest.json").read_text())
    compute = _section(model_card(folder), "Compute")
    table = [row for row in _rows(compute.split("Training runs", 1)[1]) if row[0].isdigit()]
    assert len(table) == len(runs) >= 1
    before = {stage: 0 for stage in manifest["steps"]}
    for row, run in zip(table, runs):
        assert row[1] == run["utc"] and row[2] == run["machine"]
        after = {stage: int(run["steps"].get(stage, before[stage])) for stage in before}
        added = {stage: after[stage] - before[stage] for stage in before if after[stage] > before[stage]}
        assert row[3] == ", ".join(f"{stage} {n:,}" for stage, n in added.items())
        assert row[4] == ", ".join(f"{stage} {n:,}" for stage, n in after.items())
        assert float(row[7]) == pytest.approx(run["wall_minutes"], abs=0.005)
        before = after
    assert before == manifest["steps"]     # the log accounts for every step of the lineage
    total = sum(run["wall_minutes"] for run in runs)
    assert f"{len(runs)} run(s), {total:.2f} wall minutes" in compute


def test_the_numbers_in_the_shipped_cards_are_the_real_ones():
    """Spot checks against values read by hand from the committed manifests."""
    adit = model_card(WEIGHTS / "adit-gpu-quick")
    assert "| vae | 4,857 |" in adit and "| dit | 6,848 |" in adit
    assert "| `molecule/edm/validity` (gate, primary) | 0.4310 (43.1 %) |" in adit
    assert "| `crystal/cdvae/valid` (gate) | 0.6790 (67.9 %) |" in adit
    diffspectra = model_card(WEIGHTS / "diffspectra-cpu")
    assert "| `elucidation/valid_samples` (gate, primary) | 0.1720 (17.2 %) |" in diffspectra
    assert "| benchmark_queries | 50@53a80d296a55 |" in diffspectra
    assert "The last training run saw 31,538 training systems." in diffspectra
    gfmdiff = model_card(WEIGHTS / "gfmdiff-cpu")
    assert "| denoiser | 1,319 |" in gfmdiff
    assert "| `molecule/edm/atom_stability` (gate, primary) | 0.1051 (10.5 %) |" in gfmdiff


def test_a_lineage_without_scores_or_runs_still_gets_a_card_and_a_folder_that_is_none_is_refused(tmp_path):
    folder = tmp_path / "gfmdiff-cpu"
    shutil.copytree(WEIGHTS / "gfmdiff-cpu", folder)
    manifest = json.loads((folder / "manifest.json").read_text())
    manifest["scores"] = {}
    (folder / "manifest.json").write_text(json.dumps(manifest))
    (folder / "lineage.jsonl").unlink()
    card = model_card(folder)
    assert "No scores are recorded" in card and "No training runs are logged" in card
    with pytest.raises(lineage.LineageError, match="not a lineage"):
        model_card(tmp_path / "nothing-here")
