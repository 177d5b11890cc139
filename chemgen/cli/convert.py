"""``chemgen convert``: structure files between SDF, CIF and (extended) XYZ."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from chemgen.cli.common import console, file_callback


def convert(
    source: Annotated[Path, typer.Argument(help="Input structure file (.sdf, .cif, .xyz, .extxyz).")],
    target: Annotated[Path, typer.Argument(callback=file_callback,
                                           help="Output structure file; the format follows the extension.")],
) -> None:
    """Convert structure files between SDF, CIF and (extended) XYZ."""
    from chemgen import io

    systems = io.read(source)
    io.write(target, systems)
    console.print(f"wrote {len(systems)} structure(s) to {target}")
