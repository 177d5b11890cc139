"""What every command module of ``chemgen`` shares: the one error handler, the console, and option checks.

Errors have one handler (`Commands.invoke`): a `ChemgenError` (or the OS refusing a path the user gave) prints
as one red ``error: ...`` line with exit code 1; any other exception is a bug and keeps its traceback, and
``chemgen --debug`` (or ``CHEMGEN_DEBUG=1``) shows the traceback of user errors too. Options are checked before
any work starts: folders named by ``--out`` and friends must be folders, names and values must be known."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Annotated, Any, Optional, TypeVar

import typer
from rich.console import Console
from rich.markup import escape
from typer.core import TyperGroup

from chemgen.errors import ChemgenError

T = TypeVar("T")


class CommandLineError(ChemgenError, ValueError):
    """An option value or a name given on the command line that chemgen cannot use."""


# Errors a user can fix: chemgen's own, and the OS's answer about a path the user gave. They print as one red
# line and exit 1; anything else is a bug and keeps its traceback (so does every error under --debug).
USER_ERRORS = (ChemgenError, FileNotFoundError, PermissionError, IsADirectoryError, NotADirectoryError)


class Commands(TyperGroup):
    """The top-level command group: every command (and every option callback) runs inside its one handler."""

    def invoke(self, ctx: typer.Context):
        try:
            return super().invoke(ctx)
        except USER_ERRORS as err:
            if ctx.params.get("debug"):
                raise
            fail(err)


console = Console()
err_console = Console(stderr=True)


Debug = Annotated[bool, typer.Option(
    "--debug", envvar="CHEMGEN_DEBUG",
    help="Show the traceback of user errors too (bad files, unknown names); CHEMGEN_DEBUG=1 does the same.")]


def message(err: BaseException) -> str:
    if isinstance(err, KeyError) and err.args:
        return str(err.args[0])  # str(KeyError) quotes its message
    if isinstance(err, OSError) and err.filename is not None and err.strerror:
        return f"{err.filename}: {err.strerror}"  # without "[Errno 2]"
    return str(err)


def fail(err: BaseException) -> None:
    err_console.print(f"[bold red]error:[/] {escape(message(err))}", soft_wrap=True, highlight=False)
    raise typer.Exit(code=1)


def checked(validate: Callable[..., T], *args: Any) -> T:
    """Call one of the library's pure validators of an option value (a name lookup, a value parser): its ValueError
    or KeyError can only be about the user's input. Never wrap real work this way: there it would hide a bug."""
    try:
        return validate(*args)
    except (ValueError, KeyError) as err:
        if isinstance(err, ChemgenError):
            raise
        raise CommandLineError(message(err)) from err


def at_least(option: str, value: int | None, minimum: int) -> None:
    if value is not None and value < minimum:
        raise CommandLineError(f"{option} must be at least {minimum}, got {value}")


def _label(param: typer.CallbackParam) -> str:
    return (param.name or "").upper() if param.param_type_name == "argument" else param.opts[0]


def folder_callback(param: typer.CallbackParam, value: Optional[Path]) -> Optional[Path]:
    """Option callback for folders chemgen writes into (or reads): when the path exists it must be a folder, and so
    must its nearest existing parent. Said up front, naming the path, not as a FileExistsError from deep in a writer."""
    if value is not None:
        option = _label(param)
        if value.exists() and not value.is_dir():
            raise CommandLineError(f"{option} {value}: exists and is not a folder")
        parent = next((p for p in value.absolute().parents if p.exists()), None)
        if parent is not None and not parent.is_dir():
            raise CommandLineError(f"{option} {value}: {parent} is a file, not a folder")
    return value


def file_callback(param: typer.CallbackParam, value: Optional[Path]) -> Optional[Path]:
    """Option callback for a file chemgen writes: a folder of that name is an error said up front."""
    if value is not None and value.is_dir():
        raise CommandLineError(f"{_label(param)} {value}: is a folder, not a file name")
    return value


DataDir = Annotated[Optional[Path], typer.Option(
    "--data-dir", help="Folder with the dataset's CSVs, or its parent (default: $CHEMGEN_DATA_DIR, or ../shared/data beside a source checkout).")]
StoreDir = Annotated[Optional[Path], typer.Option(
    "--store", callback=folder_callback, help="Curated store folder (default: $CHEMGEN_HOME/datasets, CHEMGEN_HOME defaults to ./.chemgen).")]


Config = Annotated[Optional[str], typer.Option(
    help="A shipped config (chemgen/configs: adit tiny, cpu, gpu-quick, dit-s, dit-b; gfmdiff and diffspectra tiny, "
         "cpu, gpu) or a YAML path (default: the config of the model's shipped checkpoint).")]


DataVersions = Annotated[Optional[list[str]], typer.Option(
    "--data", help="NAME@VERSION of a curated dataset to train on instead of its LATEST (repeatable); "
                   "`chemgen data prepare NAME --limit N` prints the version of its slice.")]


def dataset_versions(data: Optional[list[str]]) -> dict[str, str]:
    from chemgen.data.store import parse_dataset_ref

    return {name: version for name, version in (checked(parse_dataset_ref, ref) for ref in data or []) if version}
