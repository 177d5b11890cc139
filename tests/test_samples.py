"""Samples files: padded tensors kept with ``weights_only``, read back as records or refused with a clear error."""

from __future__ import annotations

import pytest
import torch

from chemgen.samples import SamplesFileError, load_samples


def test_load_samples_refuses_foreign_files(tmp_path):
    torch.save({"weights": torch.zeros(2)}, tmp_path / "x.pt")
    with pytest.raises(SamplesFileError, match="not a chemgen samples file"):
        load_samples(tmp_path / "x.pt")
