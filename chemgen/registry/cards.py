"""Model cards: a lineage's ``manifest.json`` and ``lineage.jsonl`` as Markdown.

`model_card` writes what a user of a trained model needs to know, from what the lineage itself records: the
model and its config, the data it was trained on (dataset versions), the compute it got (steps per stage, and
per training run: machine, wall minutes, throughput), its measured quality with the protocol that measured it
(the manifest's scores and evaluation context; for DiffSpectra the elucidation benchmark), intended use and
limitations. The numbers come from the lineage, so a card is true of the weights beside it; the only hand-written
part is `NOTES`, a few sentences per model (what it is, what it is good for today, what it is not), to be revised
when a lineage's quality changes.

The documentation site builds one card per shipped lineage (``models/weights/*``); the same text can serve as a
registered model version's description. Plain Markdown (tables, no extensions), so it renders anywhere.
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from chemgen import lineage
from chemgen.datasets import DATASETS
from chemgen.gates import GATES
from chemgen.models.specs import MODELS


@dataclass(frozen=True)
class Published:
    """A published number to set beside one of the lineage's scores."""

    metric: str          # the manifest's score key
    value: float         # as a rate in [0, 1]
    source: str          # who reported it, under which protocol


@dataclass(frozen=True)
class ModelNotes:
    """The hand-written part of a model's card."""

    summary: str
    intended_use: str
    limitations: str
    protocol: str                        # how the manifest's scores were measured
    published: tuple[Published, ...] = ()
    usage: str = ""                      # shell lines; ``{folder}`` and ``{registered}`` are filled in


NOTES: dict[str, ModelNotes] = {
    "adit": ModelNotes(
        summary=(
            "ADiT generates molecules (QM9) and crystals (MP-20) with one model. A Transformer VAE maps every "
            "atomic system to per-atom latents; a DiT with adaLN-Zero learns flow matching in that latent space, "
            "conditioned on the dataset label (classifier-free guidance) and, in this config, on the space group."),
        intended_use=(
            "A working generator for both kinds, for trying the pipeline end to end and as the starting point the "
            "nightly retraining fine-tunes. Crystals: about two thirds of MP-20 samples are valid and almost all "
            "valid ones are unique and new against the training split, so it can feed crystal screening, where "
            "CHGNet relaxation and the MP-20 hull judge each candidate. Molecules: samples are a demonstration "
            "only."),
        limitations=(
            "Far from the paper: a few thousand optimiser steps per stage, where ADiT trains for thousands of "
            "epochs. Molecule stability stays near zero: the VAE reconstructs positions to about 0.02 A, while "
            "EDM's bond tables need 0.01-0.02 A, so the generated geometries break bond orders; score molecules "
            "with `--protocol edm_mmff` (MMFF-relaxed) before using any. MP-20 was trained with chemgen's in-house "
            "split (9,142 training crystals, not the canonical 27,136), and novelty is judged against that split "
            "only (a crystal whose formula appears among training rows without coordinates is counted as "
            "undetermined, never as novel). Only datasets the model was trained on can be requested (qm9, mp20). "
            "CHGNet stability of its samples is not part of these scores."),
        protocol=(
            "Samples drawn with the context below (1,000 per dataset, seed 1000, Euler ODE with the listed steps "
            "and CFG scale), scored with chemgen's reference protocols: `molecule/edm/*` is EDM's released code "
            "(bond orders from distance tables on the generated geometries), `molecule/rdkit/*` RDKit's bond "
            "perception and valence rules, `crystal/cdvae/*` CDVAE's validity (smact 2.2.1) and Wasserstein "
            "distances against the test split, `crystal/adit/*` ADiT's uniqueness and novelty "
            "(StructureMatcher 0.3 / 0.5 / 10). `reconstruction/*` are the VAE's reconstructions of 1,000 "
            "held-out molecules and 905 held-out crystals (`recon@s`: from latents perturbed by s times their "
            "spread)."),
        published=(
            Published("molecule/edm/validity", 0.9445, "ADiT, QM9 validity with its own PDB/OpenBabel protocol "
                                                       "(not EDM's: a guide, not a like-for-like figure)"),
            Published("crystal/cdvae/valid", 0.9192, "ADiT, MP-20 validity (CDVAE protocol)"),
            Published("molecule/edm/molecule_stability", 0.894, "GeoLDM, QM9 (EDM protocol, 10,000 samples)"),
        ),
        usage=(
            "chemgen sample adit --model {folder} --kind crystal --n 100 --out samples/\n"
            "chemgen sample adit --model models:/{registered}@champion --kind qm9 --n 100 --out samples/"),
    ),
    "gfmdiff": ModelNotes(
        summary=(
            "GFMDiff generates 3D molecules (QM9) by E(3)-equivariant diffusion, as EDM does (polynomial_2 "
            "schedule, T = 500, epsilon prediction, ancestral sampling), with a Dual-Track Transformer denoiser "
            "(an atom track and a pair track with triplet-angle attention) and GFLoss, a bond and valence "
            "consistency loss. This config is a small one (3 blocks) that trains on a CPU."),
        intended_use=(
            "A small, early checkpoint for exercising GFMDiff's training, sampling, registration and gate on a "
            "CPU, and the lineage the nightly retraining continues. Not a source of usable molecules yet."),
        limitations=(
            "Trained for about a third of an epoch of QM9 (the paper's baseline EDM trains 3,000 epochs): fewer "
            "than one atom in eight is stable and no sampled molecule is. EDM validity looks high because it "
            "keeps a molecule's largest fragment, so scattered one-atom fragments count as valid (uniqueness is "
            "about 10 %); read atom stability and valid-and-unique instead, as the gate does. Scores are measured "
            "at 50 ancestral steps over the 500-step schedule (1,000 samples cost about 16,000 s on one core at "
            "all 500 steps). At this stage GFLoss makes no difference that 1,000 samples resolve (the ablation "
            "is on the measurements page of the documentation)."),
        protocol=(
            "1,000 molecules drawn by ancestral sampling with the listed steps (seed 1000), scored with EDM's "
            "released code (`molecule/edm/*`: bond orders from EDM's distance tables, RDKit sanitisation of the "
            "largest fragment, novelty against QM9's training SMILES) and with RDKit's bond perception "
            "(`molecule/rdkit/*`)."),
        published=(
            Published("molecule/edm/atom_stability", 0.987, "EDM, QM9 (the baseline GFMDiff reports against; "
                                                            "EDM protocol)"),
            Published("molecule/edm/molecule_stability", 0.820, "EDM, QM9"),
            Published("molecule/edm/valid_and_unique", 0.907, "EDM, QM9"),
        ),
        usage=(
            "chemgen sample gfmdiff --model {folder} --kind molecule --n 100 --steps 50 --out samples/\n"
            "chemgen sample gfmdiff --model models:/{registered}@champion --kind qm9 --n 100 --out samples/"),
    ),
    "diffspectra": ModelNotes(
        summary=(
            "DiffSpectra generates the 3D molecule an IR and/or Raman spectrum belongs to. SpecFormer, a patch "
            "Transformer over the spectra, embeds them (pretrained by masked-patch reconstruction, contrast with a "
            "3D molecule encoder and coordinate denoising); the embedding conditions a Diffusion Molecule "
            "Transformer that diffuses atom types, formal charges, bond types and positions jointly."),
        intended_use=(
            "One candidate source for structure elucidation (`chemgen elucidate`, the web app, the registry "
            "pyfunc): its samples are grouped, counted and, by default, re-ranked by the similarity of each "
            "candidate's computed GFN2-xTB spectra to the query. Today its candidates are valid molecules for "
            "most queries but not the query's molecule: use it to try the elucidation path, not to identify an "
            "unknown."),
        limitations=(
            "No query of the benchmark finds its molecule among the top 10 candidates. The model has seen a few "
            "thousand denoiser steps (about 25 epochs of the spectra store); started from a test molecule noised "
            "halfway it returns valid molecules, from pure noise mostly not: it has learnt the local map from "
            "spectra to structure, not yet the global one. It learnt computed gas-phase harmonic spectra (GFN2-xTB, "
            "IR in km/mol and Raman in A^4/amu per cm^-1, 15 cm^-1 Lorentzians): measured spectra are on other "
            "scales and shapes. No UV-Vis. Molecules of QM9's elements and sizes only (H, C, N, O, F; up to 29 "
            "atoms). The paper's numbers are on QM9S (B3LYP spectra of all of QM9, with UV-Vis) and are not "
            "comparable."),
        protocol=(
            "The elucidation benchmark (`chemgen.elucidation.benchmark`, DiffSpectra's protocol): held-out "
            "molecules of the spectra store's test split are the queries (their computed spectra and true atom "
            "count); the model samples the listed number of candidates per query with the listed ancestral steps, "
            "with IR + Raman, IR only and Raman only; candidates are grouped by tautomer-canonical InChIKey and "
            "ranked by count. `top1/top10_accuracy`: the query's molecule is among the 1 / 10 most frequent "
            "candidates; `mean_tanimoto_top1`: Morgan (r = 2, 2,048 bits) similarity of the top candidate to the "
            "query; `valid_samples`: sampled molecules that are valid; `valid_fraction`: queries with at least one "
            "valid candidate. Keys without a setting are the IR + Raman ones."),
        published=(
            Published("elucidation/ir+raman/top1_accuracy", 0.4076,
                      "DiffSpectra on QM9S with IR + Raman + UV-Vis B3LYP spectra (other data)"),
            Published("elucidation/ir+raman/top10_accuracy", 0.9949, "DiffSpectra on QM9S (other data)"),
        ),
        usage=(
            "chemgen elucidate query.ir.jdx query.raman.jdx --model {folder} --top-k 10 --out elucidation/\n"
            "chemgen elucidate raman:measured.csv --model models:/{registered}@champion --no-rerank"),
    ),
}

# What each dataset version in a manifest stands for (facts of the data the shipped lineages were trained on).
DATA_NOTES: dict[str, str] = {
    "qm9": "QM9 with EDM's split (np.random.seed(0) permutation): 100,000 training molecules",
    "mp20": ("MP-20 with chemgen's in-house split when the canonical train.csv is absent: train_first1000 + val "
             "minus a 10 % held-out slice, 9,142 training crystals"),
    "qm9-xtb": ("chemgen's GFN2-xTB IR and Raman spectra of QM9 molecules (the spectra store; the version is its "
                "content hash); training molecules: the store's train split except GDB indices divisible by 20"),
}

# Short definitions of score keys, by their last part (protocol-specific ones by protocol and last part).
METRICS: dict[str, str] = {
    "num_molecules": "molecules scored",
    "edm/atom_stability": "atoms whose valence from EDM's bond tables is allowed, over all atoms",
    "edm/molecule_stability": "molecules whose every atom is stable",
    "edm/validity": "RDKit sanitises the distance-table molecule (largest fragment kept)",
    "rdkit/atom_stability": "atoms RDKit's valence rules accept (bonds from rdDetermineBonds)",
    "rdkit/molecule_stability": "molecules whose every atom is stable under RDKit's rules",
    "rdkit/validity": "rdDetermineBonds finds bond orders and RDKit sanitises the molecule",
    "uniqueness": "distinct canonical SMILES over valid molecules",
    "valid_and_unique": "valid and unique, over all samples",
    "novelty": "unique molecules absent from the training SMILES, over unique ones",
    "novelty_over_valid": "the same count over valid molecules (ADiT's denominator)",
    "n_samples": "crystals scored",
    "struct_valid": "smallest periodic distance >= 0.5 A and volume >= 0.1 A^3",
    "comp_valid": "SMACT charge balance and electronegativity test as CDVAE ran it (smact 2.2.1)",
    "valid": "structurally and compositionally valid",
    "n_valid": "valid crystals",
    "unique_rate": "StructureMatcher groups over valid crystals",
    "novel_rate": "groups that match no training crystal, over groups",
    "undetermined_rate": "groups whose formula is among training rows without coordinates",
    "unique_novel_rate": "unique and novel, over valid crystals",
    "wdist_density": "Wasserstein distance of density (g/cm^3) to the test split",
    "wdist_num_elems": "Wasserstein distance of the number of elements to the test split",
    "wdist_n_samples": "valid crystals in the Wasserstein distances",
    "recon_crystal_match_rate": "reconstructed crystals StructureMatcher matches to their input",
    "recon_crystal_match_rms": "RMS displacement of the matched reconstructions (normalised by StructureMatcher)",
    "top1_accuracy": "the query's molecule is the most frequent candidate",
    "top10_accuracy": "the query's molecule is among the 10 most frequent candidates",
    "mean_tanimoto_top1": "Morgan fingerprint similarity of the top candidate to the query",
    "valid_samples": "sampled molecules that are valid",
    "valid_fraction": "queries with at least one valid candidate",
}
_NOT_RATES = ("num_", "n_", "wdist_")


def _is_count(key: str) -> bool:
    last = key.rsplit("/", 1)[-1]
    return last.startswith(("num_", "n_")) or last.endswith("_n_samples")


def _is_rate(key: str, value: float) -> bool:
    last = key.rsplit("/", 1)[-1]
    return (not last.startswith(_NOT_RATES) and not last.endswith(("_rms", "_n_samples")) and "tanimoto" not in last
            and 0.0 <= value <= 1.0)


def format_score(key: str, value: Any) -> str:
    """A score as the card prints it: counts as whole numbers, others to 4 decimals (rates also as a percentage)."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return str(value)
    value = float(value)
    if math.isnan(value):
        return "not measured"
    if _is_count(key) and value.is_integer():
        return f"{int(value):,}"
    text = f"{value:.4f}"
    return f"{text} ({100 * value:.1f} %)" if _is_rate(key, value) else text


def metric_definition(key: str) -> str:
    """A short definition of a score key (``molecule/edm/validity``), or "" when there is none."""
    parts = key.split("/")
    last = parts[-1]
    if parts[0] == "reconstruction":
        for prefix, whose in (("true_edm_", "the held-out molecules themselves"),
                              ("recon_edm_", "the VAE's reconstructions")):
            if last.startswith(prefix):
                return f"EDM {last.removeprefix(prefix).replace('_', ' ')} of {whose}"
        if last.startswith("recon@"):
            noise, _, metric = last.removeprefix("recon@").partition("_edm_")
            return f"EDM {metric.replace('_', ' ')} of reconstructions from latents perturbed by {noise} x their spread"
    if len(parts) >= 2 and f"{parts[-2]}/{last}" in METRICS:
        return METRICS[f"{parts[-2]}/{last}"]
    return METRICS.get(last, "")


def _cell(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:g}"
    if isinstance(value, (list, tuple)):
        return "[" + ", ".join(_cell(v) for v in value) + "]"
    if value is None:
        return "none"
    return str(value).replace("|", "/")


def _minutes(value: float) -> str:
    return f"{value:.2f}"


def _steps_by_run(runs: list[dict[str, Any]], stages: list[str]) -> list[dict[str, int]]:
    """Optimiser steps each logged run added, per stage (cumulative lineage steps, differenced)."""
    before = {stage: 0 for stage in stages}
    added = []
    for run in runs:
        after = {stage: int(run.get("steps", {}).get(stage, before[stage])) for stage in stages}
        added.append({stage: after[stage] - before[stage] for stage in stages})
        before = after
    return added


def _header(folder: Path, manifest: dict[str, Any], notes: ModelNotes | None) -> list[str]:
    model = manifest.get("model", "?")
    spec = MODELS.get(model)
    config = manifest.get("config", {})
    paper = spec.metadata.get("paper") if spec else None
    shards = manifest.get("shards", [])
    size = sum(int(s.get("bytes", 0)) for s in shards)
    rows = [
        ("model", f"{spec.metadata.get('architecture', model) if spec else model} (`{model}`)"),
        ("paper", paper or "-"),
        ("config", f"`{config.get('name', '?')}`"),
        ("lineage", f"`{folder.name}`"),
        ("registered as", f"`{spec.registered_name}`" if spec else "-"),
        ("parameters", f"{int(manifest.get('parameters', 0)):,}"),
        ("weights", f"{manifest.get('dtype', '?')}, {len(shards)} safetensors shard(s), {size / 1e6:.1f} MB"),
        ("content hash", f"`{manifest.get('content_hash', '?')}`"),
        ("saved (UTC)", str(manifest.get("saved_utc", "?"))),
    ]
    lines = [f"# Model card: {folder.name}", ""]
    if notes:
        lines += [notes.summary, ""]
    lines += ["| | |", "|---|---|", *[f"| {k} | {v} |" for k, v in rows], ""]
    return lines


def _quality(manifest: dict[str, Any], notes: ModelNotes | None) -> list[str]:
    scores: dict[str, Any] = manifest.get("scores") or {}
    spec = MODELS.get(manifest.get("model", ""))
    gate = GATES.get(spec.registered_name, ()) if spec else ()
    lines = ["## Measured quality", ""]
    if not scores:
        return lines + ["No scores are recorded in this lineage's manifest.", ""]
    if notes:
        lines += [notes.protocol, ""]
    evaluation = manifest.get("evaluation") or {}
    context = evaluation.get("context") or {}
    if context:
        lines += ["Evaluation context (scores are compared only within one context):", "",
                  "| setting | value |", "|---|---|",
                  *[f"| {k} | {_cell(v)} |" for k, v in context.items()], ""]
    lines += ["| metric | value | definition |", "|---|---|---|"]
    for key, value in scores.items():
        mark = ""
        if key in gate:
            mark = " (gate, primary)" if key == gate[0] else " (gate)"
        lines.append(f"| `{key}`{mark} | {format_score(key, value)} | {metric_definition(key)} |")
    lines.append("")
    if manifest.get("gate"):
        lines += [f"Promoted into this lineage because it {manifest['gate']}.", ""]
    published = [p for p in (notes.published if notes else ()) if p.metric in scores]
    if published:
        lines += ["Published numbers, for scale:", "", "| metric | this lineage | published | source |",
                  "|---|---|---|---|",
                  *[f"| `{p.metric}` | {100 * float(scores[p.metric]):.1f} % | {100 * p.value:.2f} % | {p.source} |"
                    for p in published], ""]
    return lines


def _data(manifest: dict[str, Any]) -> list[str]:
    versions = manifest.get("data") or []
    lines = ["## Training data", ""]
    if not versions:
        return lines + ["The manifest records no dataset versions.", ""]
    lines += ["| dataset | version | what | source | licence |", "|---|---|---|---|---|"]
    for entry in versions:
        name, _, version = str(entry).partition("@")
        known = DATASETS.get(name)
        lines.append(f"| {name} | `{version or '?'}` | {DATA_NOTES.get(name, '')} | "
                     f"{known.citation if known else 'computed by chemgen'} | "
                     f"{known.licence if known else 'MIT (chemgen)'} |")
    lines.append("")
    systems = (manifest.get("run_report") or {}).get("train_systems")
    if systems:
        lines += [f"The last training run saw {int(systems):,} training systems.", ""]
    return lines


def _compute(manifest: dict[str, Any], runs: list[dict[str, Any]]) -> list[str]:
    steps = {stage: int(n) for stage, n in (manifest.get("steps") or {}).items()}
    stages = list(steps)
    lines = ["## Compute", "", "Optimiser steps over the whole lineage:", "", "| stage | steps |", "|---|---|",
             *[f"| {stage} | {n:,} |" for stage, n in steps.items()], ""]
    if not runs:
        return lines + ["No training runs are logged (`lineage.jsonl` is missing or empty).", ""]
    lines += ["Training runs whose weights this lineage carries (`lineage.jsonl`, oldest first). Wall minutes are "
              "the run's own, as logged; a stage's training time is its own clock, which a resumed run carries "
              "over.", "",
              "| run | finished (UTC) | machine | steps added | lineage steps after | training time per stage (min) "
              "| throughput (systems/s) | wall minutes |",
              "|---|---|---|---|---|---|---|---|"]
    for number, (run, added) in enumerate(zip(runs, _steps_by_run(runs, stages)), start=1):
        trained = [s for s in stages if added[s] > 0]
        stage_info = {s: run[s] for s in trained if isinstance(run.get(s), dict)}
        lines.append(
            f"| {number} | {run.get('utc', '?')} | {run.get('machine', '?')} | "
            + (", ".join(f"{s} {added[s]:,}" for s in trained) or "none") + " | "
            + ", ".join(f"{s} {int(run.get('steps', {}).get(s, 0)):,}" for s in stages) + " | "
            + (", ".join(f"{s} {_minutes(float(i['seconds']) / 60)}" for s, i in stage_info.items()
                         if i.get("seconds") is not None) or "-") + " | "
            + (", ".join(f"{s} {float(i['systems_per_second']):,.1f}" for s, i in stage_info.items()
                         if i.get("systems_per_second") is not None) or "-") + " | "
            + (_minutes(float(run["wall_minutes"])) if run.get("wall_minutes") is not None else "-") + " |")
    total = sum(float(run.get("wall_minutes") or 0.0) for run in runs)
    machines = sorted({str(run.get("machine", "?")) for run in runs})
    lines += ["", f"Total: {len(runs)} run(s), {_minutes(total)} wall minutes, on {', '.join(machines)}.", ""]
    return lines


def _config(manifest: dict[str, Any]) -> list[str]:
    config = manifest.get("config") or {}
    lines = ["## Model and config", "",
             "The config the weights were trained with, as the manifest records it:", "",
             "| section | settings |", "|---|---|"]
    for key, value in config.items():
        if isinstance(value, dict):
            lines.append(f"| {key} | " + ", ".join(f"{k} = {_cell(v)}" for k, v in value.items()) + " |")
        else:
            lines.append(f"| {key} | {_cell(value)} |")
    return lines + [""]


def model_card(lineage_folder: str | os.PathLike) -> str:
    """The Markdown model card of a lineage folder (``models/weights/<model>-<config>``), from its
    ``manifest.json`` and ``lineage.jsonl``; a folder that is not a lineage raises `chemgen.lineage.LineageError`."""
    folder = Path(lineage_folder)
    manifest = lineage.read_manifest(folder)
    runs = lineage.runs(folder)
    model = manifest.get("model", "")
    notes = NOTES.get(model)
    spec = MODELS.get(model)
    lines = _header(folder, manifest, notes)
    if notes:
        lines += ["## Intended use", "", notes.intended_use, "", "## Limitations", "", notes.limitations, ""]
    lines += _quality(manifest, notes)
    lines += _data(manifest)
    lines += _compute(manifest, runs)
    lines += _config(manifest)
    if notes and notes.usage:
        usage = notes.usage.format(folder=f"models/weights/{folder.name}",
                                   registered=spec.registered_name if spec else model)
        lines += ["## Use", "", "```bash", usage, "```", ""]
    return "\n".join(lines).rstrip() + "\n"


# MLflow's registry keeps a description in a VARCHAR(5000) column: PostgreSQL and MySQL refuse a longer one (SQLite
# does not check), and the registration would fail on a team's server.
DESCRIPTION_LIMIT = 5000


def registry_description(card: str, full_card: str, limit: int = DESCRIPTION_LIMIT) -> str:
    """The model card as a registry description: whole where it fits, else its first sections up to ``limit``
    characters and where the whole card is (``full_card``: e.g. the run artifact it was logged as)."""
    if len(card) <= limit:
        return card
    note = f"\n\n*The card continues in {full_card}.*\n"
    sections = card.split("\n## ")
    kept = sections[0]
    for section in sections[1:]:
        if len(kept) + len(section) + 4 + len(note) > limit:
            break
        kept += "\n## " + section
    return kept[: limit - len(note)].rstrip() + note
