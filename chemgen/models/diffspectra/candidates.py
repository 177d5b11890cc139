"""Candidates for a benchmark's query spectra, sampled with torch alone (on a GPU machine after training).

`sample_candidates` samples each query's candidates for each modality setting (IR + Raman, IR only, Raman
only: SpecFormer's ``present`` mask) with the query's true atom count, as DiffSpectra's protocol does, and
keeps them as plain graph tensors; `chemgen.elucidation.benchmark` decodes, ranks and scores them on a machine
with RDKit. On a GPU machine, for a lineage trained earlier (the file is rewritten after each setting, so a
run cut short keeps the settings it finished)::

    python -m chemgen.models.diffspectra.candidates --model LINEAGE --queries test.pt --out $OUT/candidates.pt \
        --samples 10 --steps 1000
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import torch

from chemgen.data.tensors import TensorPack
from chemgen.errors import UsageError

SETTINGS: dict[str, tuple[str, ...]] = {"ir+raman": ("ir", "raman"), "ir": ("ir",), "raman": ("raman",)}
FORMAT = "chemgen-elucidation-candidates/1"


def query_spectra(model: Any, queries: TensorPack, setting: str) -> tuple[dict[str, torch.Tensor], torch.Tensor]:
    """The queries' broadened spectra {modality: (Q, 3501)} and the (Q, M) ``present`` mask of ``setting``."""
    from chemgen.models.diffspectra.data import broaden_sticks

    if setting not in SETTINGS:
        raise UsageError(f"unknown setting {setting!r} (known: {', '.join(SETTINGS)})")
    modalities = tuple(model.config.specformer.modalities)
    frequencies = queries.extras["system/frequencies"].float()
    spectra = {m: broaden_sticks(frequencies, queries.extras[f"system/{m}"].float()) for m in modalities}
    present = torch.tensor([[m in SETTINGS[setting] for m in modalities]]).expand(len(queries), -1)
    return spectra, present


def sample_candidates(model: Any, queries: TensorPack, settings: Sequence[str] = tuple(SETTINGS),
                      num_samples: int = 10, num_steps: int | None = None, seed: int = 0, chunk_size: int = 512,
                      log: Callable[[str], None] | None = None,
                      on_setting: Callable[[dict[str, Any]], None] | None = None) -> dict[str, Any]:
    """{"settings": {setting: graphs as int8/float tensors}, ...}: ``num_samples`` candidates per query, each
    setting sampled with the same seed (so the settings differ only in what the model reads). The noise is drawn
    on the model's device (`DiffSpectra.sample_graphs`' ``noise_on_device``): the same seed gives the same
    candidates on the same kind of device."""
    device = model.num_atoms_histogram.device
    out: dict[str, Any] = {"format": FORMAT, "qm9_index": queries.extras["system/qm9_index"].clone(),
                           "num_samples": num_samples, "num_steps": num_steps or model.config.diffusion.num_steps,
                           "seed": seed, "settings": {}}
    for setting in settings:
        start = time.perf_counter()
        spectra, present = query_spectra(model, queries, setting)
        graphs = model.sample_graphs({k: v.to(device) for k, v in spectra.items()}, present.to(device), num_samples,
                                     queries.num_atoms, num_steps, seed, chunk_size, noise_on_device=True)
        out["settings"][setting] = {"pos": graphs.pos.float(), "atom_types": graphs.atom_types.to(torch.int8),
                                    "charges": graphs.charges.to(torch.int8), "bonds": graphs.bonds.to(torch.int8),
                                    "mask": graphs.mask}
        if on_setting:
            on_setting(out)
        if log:
            log(json.dumps({"benchmark_setting": setting, "queries": len(queries), "samples": num_samples,
                            "seconds": round(time.perf_counter() - start, 1)}))
    return out


def save_candidates(path: str | os.PathLike, candidates: Mapping[str, Any]) -> Path:
    """Atomic torch.save of `sample_candidates`' tensors (read back with ``weights_only=True``)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    torch.save(dict(candidates), tmp)
    os.replace(tmp, path)
    return path


def load_candidates(path: str | os.PathLike) -> dict[str, Any]:
    path = Path(path)
    try:
        payload = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # noqa: BLE001 - any unreadable file is the same error to the user
        raise UsageError(f"{path}: not a candidates file ({type(err).__name__}: {err})") from err
    if not isinstance(payload, dict) or payload.get("format") != FORMAT:
        raise UsageError(f"{path}: not a candidates file of format {FORMAT}")
    return payload


def main(argv: list[str] | None = None) -> Path:
    import argparse

    from chemgen.models.loading import load_lineage_model

    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", type=Path, required=True, help="a DiffSpectra lineage folder")
    parser.add_argument("--queries", type=Path, required=True, help="python -m chemgen.elucidation.benchmark queries")
    parser.add_argument("--out", type=Path, required=True, help="the candidates file")
    parser.add_argument("--samples", type=int, default=10)
    parser.add_argument("--steps", type=int, default=None)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--settings", default=",".join(SETTINGS))
    parser.add_argument("--limit", type=int, default=None, help="the first N queries only")
    parser.add_argument("--chunk", type=int, default=None, help="samples denoised together (GPU 1,536, CPU 128)")
    args = parser.parse_args(argv)
    cuda = torch.cuda.is_available()
    model = load_lineage_model(args.model, "cuda" if cuda else "cpu")
    queries = TensorPack.load(args.queries)
    if args.limit:
        queries = queries.subset(torch.arange(min(args.limit, len(queries))))
    sample_candidates(model, queries, args.settings.split(","), args.samples, args.steps, args.seed,
                      args.chunk or (1536 if cuda else 128), log=lambda line: print(line, flush=True),
                      on_setting=lambda done: save_candidates(args.out, done))
    return args.out


__all__ = ["FORMAT", "SETTINGS", "load_candidates", "query_spectra", "sample_candidates", "save_candidates"]


if __name__ == "__main__":
    main()
