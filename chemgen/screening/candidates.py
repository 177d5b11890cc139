"""One candidate crystal as every source hands it over, and what a source reports about its run."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from chemgen.atoms import AtomicSystem


@dataclass(frozen=True)
class Candidate:
    """A structure for the pipeline: where it came from and how (``origin``: the prototype and substitution, the
    space group drawn, the uploaded file and line), before any relaxation."""

    structure: AtomicSystem
    source: str                                   # adit, substitution, random, upload
    origin: str = ""                              # human-readable provenance
    score: float | None = None                    # the source's own preference (substitution probability), if any
    extra: dict[str, Any] = field(default_factory=dict)


@dataclass
class SourceRun:
    """What one source produced for a request, with what it cost: ``attempts`` counts the tries it took (model
    samples drawn, PyXtal draws, prototype substitutions considered), ``failures`` the reasons of what it
    dropped (for the report), ``seconds`` its wall time."""

    source: str
    candidates: list[Candidate]
    attempts: int
    seconds: float
    failures: list[str] = field(default_factory=list)
    note: str = ""
