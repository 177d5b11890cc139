"""Real MP-20 structures for the screening sources: validation rows as substitution prototypes, a test row as an
upload."""

from __future__ import annotations

import pandas as pd
import pytest

from tests.conftest import MP20_DIR

# LiCrO2, LiNiO2, NaMnO2 and LiMnO2 of MP-20's validation split (mp-37620: LiMnO2 itself, no substitution)
PROTOTYPE_IDS = ("mp-756362", "mp-25411", "mp-759533", "mp-37620", "mp-25424")


@pytest.fixture(scope="session")
def prototype_rows() -> pd.DataFrame:
    frame = pd.read_csv(MP20_DIR / "val.csv.gz")
    return frame[frame.material_id.isin(PROTOTYPE_IDS)].set_index("material_id").loc[list(PROTOTYPE_IDS)]


@pytest.fixture(scope="session")
def prototypes(prototype_rows):
    from pymatgen.core import Structure

    from chemgen.screening.prototypes import Prototype, decorate

    out = []
    for material_id, row in prototype_rows.iterrows():
        structure = Structure.from_str(row.cif, fmt="cif")
        species = decorate(structure)
        assert species is not None, material_id
        out.append(Prototype(material_id, species, structure))
    return out


@pytest.fixture(scope="session")
def limno2_cif() -> str:
    """LiMnO2 of MP-20's test split (mp-1002572), as a team would upload it."""
    frame = pd.read_csv(MP20_DIR / "test.csv.gz")
    return frame[frame.material_id == "mp-1002572"].cif.iloc[0]
