"""`chemgen.io.atomic_write` gives a new file the mode an ordinary open() would: 0o666 less the umask, not
mkstemp's private 0o600 (store shards and spectra are shared and committed)."""

from __future__ import annotations

import os
import stat

import pytest

from chemgen.io import atomic_write


@pytest.fixture()
def umask():
    """Set the process umask for one test, and restore it afterwards."""
    saved = os.umask(0o022)  # reading the umask means setting it
    os.umask(saved)
    yield os.umask
    os.umask(saved)


@pytest.mark.parametrize("mask", [0o022, 0o002, 0o077, 0o000])
@pytest.mark.parametrize("mode", ["w", "wb"])
def test_a_new_file_gets_0o666_less_the_umask(tmp_path, umask, mask, mode):
    umask(mask)
    path = tmp_path / "shard.parquet"
    with atomic_write(path, mode) as handle:
        handle.write(b"data" if "b" in mode else "data")
    assert stat.S_IMODE(path.stat().st_mode) == 0o666 & ~mask
    # ... and the same as a file opened the ordinary way under that umask
    plain = tmp_path / "plain"
    plain.write_text("x")
    assert stat.S_IMODE(plain.stat().st_mode) == stat.S_IMODE(path.stat().st_mode)
    assert not [p for p in tmp_path.iterdir() if p.name.endswith(".tmp")]


def test_a_failed_write_leaves_neither_file_nor_temporary(tmp_path):
    path = tmp_path / "out.csv"
    with pytest.raises(RuntimeError):
        with atomic_write(path) as handle:
            handle.write("half")
            raise RuntimeError("interrupted")
    assert list(tmp_path.iterdir()) == []
