"""How sure an elucidation is: the chance that its top candidate is the molecule, from its score, calibrated.

The top candidate's similarity alone says little (a hundred QM9 isomers score within a few hundredths of each
other); its margin over the second says more. `assess` turns (top-1 similarity, margin) into a probability with
a logistic model fitted on held-out queries (`calibration.json` beside this module, written by ``python -m
chemgen.elucidation.evaluation calibrate``): test-split molecules of the spectra store whose IR spectra were made
to look measured (`chemgen.elucidation.distortion`), half of them with the molecule in the library and half
without, one model without and one with the formula. The same file records how often a top-1 in each band of
probability was right on other held-out queries, the check that the probabilities mean what they say.

Below `CONFIDENT` the answer says plainly that nothing matches well enough to name the molecule: the candidates
are suggestions to inspect, not an identification.
"""

from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass
from functools import lru_cache
from importlib import resources
from typing import Any

CONFIDENT = 0.5          # below this, no candidate is presented as the answer
CALIBRATION_FILE = "calibration.json"


@dataclass(frozen=True)
class Confidence:
    probability: float | None      # that the top candidate is the molecule; None: nothing was scored
    top1_similarity: float | None
    margin: float | None           # top-1 similarity minus the second's
    statement: str
    calibrated_on: str             # which held-out queries the probability was measured on

    @property
    def confident(self) -> bool:
        return self.probability is not None and self.probability >= CONFIDENT

    def as_dict(self) -> dict[str, Any]:
        return {**asdict(self), "confident": self.confident}


@lru_cache(maxsize=1)
def calibration() -> dict[str, Any]:
    """The fitted models and their provenance (package data)."""
    return json.loads(resources.files("chemgen.elucidation").joinpath(CALIBRATION_FILE).read_text())


def probability(similarity: float, margin: float, formula: bool) -> float:
    model = calibration()["formula" if formula else "no_formula"]
    weights, bias = model["weights"], model["bias"]
    z = bias + weights[0] * similarity + weights[1] * margin
    return 1.0 / (1.0 + math.exp(-z))


def assess(candidates: Any, formula: bool = False) -> Confidence:
    """The confidence of a ranking (candidates best first, with ``similarity``); ``formula`` says whether the
    candidates were restricted to a formula (another calibration)."""
    scored = [c.similarity for c in candidates if getattr(c, "similarity", None) is not None]
    source = calibration()["provenance"]["queries"]
    if not scored:
        return Confidence(None, None, None, "No candidate could be compared with the spectrum: no answer.", source)
    top1 = float(scored[0])
    margin = float(top1 - scored[1]) if len(scored) > 1 else 0.0
    p = probability(top1, margin, formula)
    if p >= CONFIDENT:
        statement = (f"The top candidate is the molecule in about {100 * p:.0f} % of held-out queries that score like "
                     f"this (similarity {top1:.3f}, {margin:.3f} ahead of the next).")
    else:
        statement = (f"No confident answer: a top candidate scoring like this (similarity {top1:.3f}, {margin:.3f} "
                     f"ahead of the next) is the molecule in only about {100 * p:.0f} % of held-out queries. The "
                     "candidates are suggestions to check, not an identification.")
    return Confidence(p, top1, margin, statement, source)
