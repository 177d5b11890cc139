"""Data curation: readers for each source and the versioned, hashed store.

`BUILDERS` is the one place where a dataset name from the command line becomes
the function that builds its curation recipe. It is built on first use: the readers
import pandas and the chemistry stack, which `chemgen.data.tensors` (the GPU path) must not.
"""

from __future__ import annotations

from functools import partial
from typing import Any

__all__ = ["BUILDERS"]


def __getattr__(name: str) -> Any:
    if name == "BUILDERS":
        from chemgen.data import crystals, qm9

        return {"qm9": qm9.builder, **{n: partial(crystals.builder, n) for n in crystals.DATASETS}}
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
