"""Data curation: readers for each source and the versioned, hashed store.

`BUILDERS` is the one place where a dataset name from the command line becomes
the function that builds its curation recipe.
"""

from __future__ import annotations

from functools import partial

from chemgen.data import crystals, qm9

BUILDERS = {
    "qm9": qm9.builder,
    **{name: partial(crystals.builder, name) for name in crystals.DATASETS},
}

__all__ = ["BUILDERS"]
