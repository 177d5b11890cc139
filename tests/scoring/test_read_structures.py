"""What `chemgen score` reads: every record of every file, a bad record counted as one invalid item."""

from __future__ import annotations

from chemgen import io
from chemgen.scoring.report import read_structures


def test_a_folder_is_scored_record_by_record(tmp_path, qm9_systems):
    folder = tmp_path / "samples"
    folder.mkdir()
    io.write(folder / "a.xyz", qm9_systems[:7])
    frames = (folder / "a.xyz").read_text().splitlines(keepends=True)
    second = qm9_systems[0].num_atoms + 2            # the first line of frame 2
    frames[second] = "1000000000000\n"               # frame 2 announces 1e12 atoms: frames 2-7 cannot be found
    (folder / "a.xyz").write_text("".join(frames))
    io.write(folder / "b.sdf", qm9_systems[7:10])
    (folder / "c.sdf").write_text("")                # unreadable as a whole: one invalid item
    systems, reasons = read_structures(folder, "molecule")
    assert len(systems) == 1 + 1 + 3 + 1
    assert [s is not None for s in systems] == [True, False, True, True, True, False]
    assert "a.xyz frame 2" in reasons[1] and "outside 1..1000" in reasons[1]
    assert "c.sdf" in reasons[5] and "empty" in reasons[5]


def test_one_file_with_a_bad_record_keeps_the_others(tmp_path, qm9_systems):
    path = io.write(tmp_path / "m.xyz", qm9_systems[:4])
    text = path.read_text().replace(path.read_text().splitlines()[2].split()[1], "1e300", 1)
    path.write_text(text)
    systems, reasons = read_structures(path, "molecule")
    assert [s is None for s in systems] == [True, False, False, False]
    assert "frame 1" in reasons[0] and "beyond the limit" in reasons[0]
