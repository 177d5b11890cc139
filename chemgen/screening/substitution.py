"""Data-mined ion substitution into MP-20's training structures (Hautier et al., Inorg. Chem. 2011).

For each oxidation-state assignment of the requested elements, and each ionic prototype with as many elements,
pymatgen's substitution model (`SubstitutionProbability`, mined from the ICSD) gives the probability that the
prototype's ions can be replaced by the requested ones, over every pairing of the two. Pairings above a threshold
become candidates, most probable first:

1. the species are replaced (`SubstitutionTransformation`); the result must be charge-balanced with the
   requested oxidation states and pass SMACT's validity screen (charge neutrality, Pauling electronegativity);
2. the volume is rescaled from the prototype's by the ionic radii of the new ions (`RLSVolumePredictor`);
3. the cell must fit the request (its formula, its atoms per cell);
4. it must differ from every candidate made before (StructureMatcher, pymatgen's default tolerances): prototypes of
   one structure type give the same candidate, which would spend the relaxation budget twice.

This is the "ion exchange" baseline that generative models for materials are measured against (MatterGen,
Zeni et al. 2025): cheap, and strong where the chemistry resembles a known compound.
"""

from __future__ import annotations

import itertools
import time
from collections import defaultdict
from typing import Any

from chemgen.errors import UsageError
from chemgen.screening.candidates import Candidate, SourceRun
from chemgen.screening.prototypes import Prototype, load_prototypes
from chemgen.screening.request import ScreeningRequest

DEFAULT_THRESHOLD = 1e-3        # pymatgen's Substitutor default
MAX_PER_PROTOTYPE_FORMULA = 2   # candidates from one prototype formula: variety over many near-copies


def target_species(request: ScreeningRequest) -> list[tuple[str, ...]]:
    """The requested elements' oxidation-state assignments (integer ones) that some composition of the request
    balances, as species labels in the request's element order, e.g. ("Li1+", "Mn3+", "O2-")."""
    seen: dict[tuple[str, ...], None] = {}
    for _, states in request.compositions():
        if any(float(s) != int(s) or s == 0 for s in states.values()):
            continue
        seen.setdefault(tuple(f"{e}{abs(int(states[e]))}{'+' if states[e] > 0 else '-'}" for e in request.elements))
    return list(seen)


def ranked_substitutions(request: ScreeningRequest, prototypes: list[Prototype],
                         threshold: float = DEFAULT_THRESHOLD) -> list[tuple[float, Prototype, dict[str, str]]]:
    """(probability, prototype, {prototype species: requested species}) above ``threshold``, most probable first."""
    from pymatgen.analysis.structure_prediction.substitution_probability import SubstitutionProbability
    from pymatgen.core import Species

    model = SubstitutionProbability()
    known = set(model.species)
    groups: dict[tuple[str, ...], list[Prototype]] = defaultdict(list)
    for prototype in prototypes:
        if len(prototype.species) == len(request.elements):
            groups[prototype.species].append(prototype)
    ranked = []
    for target in target_species(request):
        wanted = [Species.from_str(s) for s in target]
        if not set(wanted) <= known:
            continue
        for species, members in groups.items():
            source = [Species.from_str(s) for s in species]
            if not set(source) <= known:
                continue
            for permutation in itertools.permutations(wanted):
                probability = model.cond_prob_list(list(permutation), source)
                if probability <= threshold:
                    continue
                mapping = {str(a): str(b) for a, b in zip(source, permutation)}
                if all(a == b for a, b in mapping.items()):   # the known compound itself: no substitution
                    continue
                ranked += [(probability, member, mapping) for member in members]
    ranked.sort(key=lambda item: (-item[0], item[1].material_id))
    return ranked


def substitute(prototype: Prototype, mapping: dict[str, str]) -> Any:
    """The prototype with its species replaced and its volume rescaled by ionic radii (a pymatgen Structure)."""
    import warnings

    from pymatgen.analysis.structure_prediction.volume_predictor import RLSVolumePredictor
    from pymatgen.core import Species
    from pymatgen.transformations.standard_transformations import SubstitutionTransformation

    replaced = SubstitutionTransformation({Species.from_str(a): Species.from_str(b) for a, b in mapping.items()
                                           if a != b}).apply_transformation(prototype.structure)
    with warnings.catch_warnings():   # "no default ionic radius for Mn4+, using ls data": the predictor copes
        warnings.simplefilter("ignore")
        return RLSVolumePredictor(check_isostructural=False).get_predicted_structure(replaced, prototype.structure)


def charge_balanced(structure: Any) -> bool:
    """Neutral with the substituted oxidation states, and valid by SMACT's screen (neutrality over ICSD oxidation
    states and the Pauling electronegativity test) of its composition."""
    from smact.screening import smact_validity

    if abs(sum(site.specie.oxi_state for site in structure)) > 1e-6:
        return False
    return bool(smact_validity(structure.composition.element_composition.reduced_formula))


def generate(request: ScreeningRequest, n: int, seed: int = 0, data_dir: str | None = None,
             threshold: float = DEFAULT_THRESHOLD, prototypes: list[Prototype] | None = None,
             log: Any = None) -> SourceRun:
    """Up to ``n`` substituted structures for the request, most probable first (``seed`` is unused: the ranking is
    deterministic). Raises `UsageError` when no prototype of MP-20's training structures can be substituted into
    the system at all."""
    from chemgen.atoms import AtomicSystem
    from chemgen.scoring.crystal_novelty import MATCHER_PRESETS, _fits, reduce_structure

    start = time.perf_counter()
    matcher = MATCHER_PRESETS["pymatgen"].matcher()   # tight: only true copies are skipped before relaxation
    prototypes = prototypes if prototypes is not None else load_prototypes(data_dir, log=log)
    ranked = ranked_substitutions(request, prototypes, threshold)
    if not ranked:
        raise UsageError(f"no MP-20 training structure of {len(request.elements)} ionic elements substitutes into "
                         f"{request.system} with probability above {threshold:g} (pymatgen's data-mined "
                         "substitution model); try the random or model sources")
    candidates, failures, per_formula = [], [], defaultdict(int)
    made: dict[str, list[Any]] = defaultdict(list)   # reduced formula -> reduced cells of its candidates
    attempts = duplicates = 0
    seen: set[tuple[str, str]] = set()
    for probability, prototype, mapping in ranked:
        if len(candidates) >= n:
            break
        key = (prototype.material_id, json_key(mapping))
        formula = prototype.structure.composition.reduced_formula
        if key in seen or per_formula[(formula, json_key(mapping))] >= MAX_PER_PROTOTYPE_FORMULA:
            continue
        seen.add(key)
        attempts += 1
        try:
            structure = substitute(prototype, mapping)
        except Exception as error:  # noqa: BLE001 - one failed substitution is a reason, not a failed source
            failures.append(f"{prototype.material_id}: {type(error).__name__}: {error}")
            continue
        symbols = [site.specie.symbol for site in structure]
        if not request.holds(symbols, len(structure)):
            failures.append(f"{prototype.material_id}: {structure.composition.reduced_formula} is not what was asked")
            continue
        if not charge_balanced(structure):
            failures.append(f"{prototype.material_id}: {structure.composition.reduced_formula} not charge-balanced")
            continue
        per_formula[(formula, json_key(mapping))] += 1
        structure.remove_oxidation_states()
        reduced, made_formula = reduce_structure(structure), structure.composition.reduced_formula
        if any(_fits(matcher, earlier, reduced) for earlier in made[made_formula]):
            duplicates += 1
            continue
        made[made_formula].append(reduced)
        swaps = ", ".join(f"{a}->{b}" for a, b in mapping.items() if a != b)
        candidates.append(Candidate(AtomicSystem.from_pymatgen(structure, material_id=f"sub-{prototype.material_id}"),
                                    "substitution", f"{prototype.material_id} ({formula}): {swaps}",
                                    score=probability, extra={"prototype": prototype.material_id}))
    return SourceRun("substitution", candidates, attempts, time.perf_counter() - start, failures,
                     note=f"{len(ranked):,} substitutions above p={threshold:g} from {len(prototypes):,} prototypes; "
                          f"{duplicates:,} gave a structure made already")


def json_key(mapping: dict[str, str]) -> str:
    return ",".join(f"{a}>{b}" for a, b in sorted(mapping.items()))
