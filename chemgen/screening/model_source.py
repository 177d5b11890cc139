"""ADiT's crystals for a requested system: samples drawn in batches and kept when they are of the system.

The shipped ADiT samples MP-20's 89 elements unconditionally; chemgen does not condition it on elements (the
model was not trained for it, and inpainting atom types would not be the model's own distribution). So the
source draws up to ``max_samples`` samples and keeps those that decode to a structure of exactly the requested
elements, and its report says how many samples each kept candidate cost: the honest price of an unconditional
model for targeted screening.

The model is the registry's champion (``models:/chemgen-adit@champion``) where one is registered, else the
lineage shipped with chemgen.
"""

from __future__ import annotations

import time
from typing import Any

from chemgen.screening.candidates import Candidate, SourceRun
from chemgen.screening.request import ScreeningRequest

CHAMPION = "models:/chemgen-adit@champion"
BATCH = 32   # samples decoded together: memory stays small on a CPU


def default_model() -> str:
    """The registry's ADiT champion where there is one, else the shipped lineage's folder."""
    from chemgen import tracking
    from chemgen.lineage import shipped_lineage
    from chemgen.models.specs import model_spec

    spec = model_spec("adit")
    try:
        if tracking.version_by_alias(spec.registered_name, tracking.CHAMPION) is not None:
            return CHAMPION
    except Exception:  # noqa: BLE001 - a registry that does not answer: the shipped model still works
        pass
    return str(shipped_lineage(spec.shipped_config))


def generate(request: ScreeningRequest | None, n: int, seed: int = 0, model: str | None = None,
             max_samples: int = 256, num_steps: int | None = None, log: Any = None) -> SourceRun:
    """Up to ``n`` of the model's crystals in the system, from at most ``max_samples`` samples. Without a request,
    every decoded sample of the first ``n`` is a candidate (and a decoding failure is dropped, with its reason)."""
    from chemgen.models.loading import load_model
    from chemgen.samples import Failure, to_systems

    start = time.perf_counter()
    reference = model or default_model()
    generator = load_model(reference)
    candidates, failures, drawn, decoded = [], [], 0, 0
    outside: dict[str, int] = {}
    wanted = request.system if request is not None else "any system"
    if request is None:
        max_samples = n
    while len(candidates) < n and drawn < max_samples:
        count = min(BATCH, max_samples - drawn)
        systems = to_systems(generator.generate(count, "crystal", seed=seed + drawn, num_steps=num_steps), "mp20")
        for offset, system in enumerate(systems):
            if isinstance(system, Failure):
                failures.append(f"sample {drawn + offset}: {system.reason}")
                continue
            decoded += 1
            if request is None or request.holds(system.symbols, len(system.symbols)):
                if len(candidates) < n:
                    candidates.append(Candidate(system.replace(material_id=f"adit-{drawn + offset}"), "adit",
                                                f"sample {drawn + offset} of {reference}"))
            else:
                key = "-".join(sorted(set(system.symbols)))
                outside[key] = outside.get(key, 0) + 1
        drawn += count
        if log is not None:
            log(f"adit: {drawn} samples drawn, {len(candidates)} in {wanted}")
    per = f"{drawn / len(candidates):.0f} samples per candidate" if candidates else "none in the system"
    return SourceRun("adit", candidates, drawn, time.perf_counter() - start, failures,
                     note=f"{len(candidates)} of {drawn} samples in {wanted} ({per}; {decoded} decoded, "
                          f"{len(outside)} other systems) from {reference}")
