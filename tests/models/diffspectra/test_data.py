"""DiffSpectra's pack: the spectra store's molecules with their graphs and stick spectra as extras."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from chemgen.models.diffspectra.data import MAX_ATOMS, batch_bonds, batch_spectra, spectra_pack
from chemgen.spectra.broadening import broaden

STORE = Path(__file__).resolve().parents[3] / "datasets" / "spectra" / "qm9-xtb"


@pytest.fixture(scope="module")
def pack_and_report():
    return spectra_pack(STORE, split="train", limit=120)


def test_the_pack_holds_qm9s_graphs_and_sticks(pack_and_report):
    from rdkit import Chem

    from chemgen.models.diffspectra.data import skeleton_key
    from chemgen.models.diffspectra.graphs import graph_to_mol, ATOM_ELEMENTS
    from chemgen.spectra.shards import read_table

    pack, report = pack_and_report
    assert report.kept == len(pack) and report.kept + sum(report.left_out.values()) == 120
    assert report.kept >= 100   # a few strained polycycles cannot be perceived
    assert pack.extras["atom/bonds"].shape == (pack.atomic_numbers.numel(), MAX_ATOMS)
    truth = {row["qm9_index"]: row["inchikey"]
             for row in read_table(STORE, ["qm9_index", "inchikey"], only_ok=True).to_pylist()}
    batch = pack.dense(torch.arange(20))
    bonds = batch_bonds(batch.extras, batch.mask)
    assert torch.equal(bonds, bonds.transpose(1, 2)) and (bonds.diagonal(dim1=1, dim2=2) == 0).all()
    types = torch.tensor([ATOM_ELEMENTS.index(int(z)) if z else 0 for z in batch.atomic_numbers.flatten()])
    for i in range(20):   # the tensors decode back to the store's molecule
        n = int(batch.num_atoms[i])
        mol = graph_to_mol(batch.pos[i, :n], types.view(batch.mask.shape)[i, :n],
                           batch.extras["atom/charge"][i, :n].long(), bonds[i, :n, :n])
        assert mol is not None
        assert skeleton_key(Chem.MolToInchiKey(mol)) == skeleton_key(truth[int(batch.extras["system/qm9_index"][i])])
    assert torch.allclose(batch.pos.sum(1), torch.zeros(20, 3), atol=1e-4)   # centred


def test_sticks_broaden_on_the_device_as_the_numpy_broadening(pack_and_report):
    pack, _ = pack_and_report
    batch = pack.dense(torch.arange(5))
    spectra = batch_spectra(batch.extras)
    for i in range(5):
        freq = batch.extras["system/frequencies"][i]
        real = freq > 0
        for name in ("ir", "raman"):
            reference = broaden(freq[real].numpy(), batch.extras[f"system/{name}"][i][real].numpy(), name)
            assert np.allclose(spectra[name][i].numpy(), reference, rtol=1e-4, atol=1e-6 * reference.max())


def test_a_missing_store_or_split_is_a_clear_error(tmp_path):
    from chemgen.errors import UsageError
    from chemgen.spectra.shards import SpectraStoreError

    with pytest.raises(SpectraStoreError, match="no spectra store"):
        spectra_pack(tmp_path / "nothing")
    with pytest.raises(UsageError, match="unknown split"):
        spectra_pack(STORE, split="holdout")
