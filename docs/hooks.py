"""MkDocs hooks: the pages that are generated from the project itself, so that they cannot drift from it.

- ``reference/cli.md``: every command of the typer app `chemgen.cli.app.app` (usage, help, arguments, options);
- ``reference/api/<room>.md``: one mkdocstrings page per room of the package, grouped by layer in the navigation;
- ``models/<lineage>.md``: the model card of each shipped lineage (``models/weights/*``), written by
  `chemgen.registry.cards.model_card` from its manifest and run log;
- ``datasets/<card>.md``: the dataset cards of ``datasets/*.md``;
- in ``architecture.md``, the marker ``<!-- chemgen:layers -->`` becomes the layer table of
  ``tests/test_architecture.py`` (``LAYERS``) with each room's docstring.

Navigation entries whose value is ``generated:<what>`` in mkdocs.yml are replaced by the generated pages.
"""

from __future__ import annotations

import ast
import posixpath
import re
from pathlib import Path
from typing import Any

from mkdocs.structure.files import File, Files

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "chemgen"
WEIGHTS = ROOT / "models" / "weights"
DATASET_CARDS = ROOT / "datasets"
LAYERS_FILE = ROOT / "tests" / "test_architecture.py"
LAYER_TITLES = ("Foundations: the record, files and shared small modules",
                "Data, spectra, layers, diffusion maths and scoring",
                "Models",
                "Training, sampling, elucidation and the registry",
                "Prefect flows",
                "Command line and web app")
NOT_IN_API = {"cli"}   # documented by the CLI reference


# -- the package's rooms and layers -----------------------------------------------------------------------

def layers() -> tuple[tuple[str, ...], ...]:
    """``LAYERS`` of tests/test_architecture.py, read without importing the test module."""
    for node in ast.parse(LAYERS_FILE.read_text()).body:
        target = node.target if isinstance(node, ast.AnnAssign) else (
            node.targets[0] if isinstance(node, ast.Assign) else None)
        if isinstance(target, ast.Name) and target.id == "LAYERS":
            return ast.literal_eval(node.value)
    raise RuntimeError(f"{LAYERS_FILE}: no LAYERS table")


def room_path(room: str) -> Path:
    package = PACKAGE / room / "__init__.py"
    return package if package.is_file() else PACKAGE / f"{room}.py"


def room_summary(room: str) -> str:
    """The first sentence of a room's docstring."""
    doc = ast.get_docstring(ast.parse(room_path(room).read_text())) or ""
    first = " ".join(doc.split("\n\n")[0].split()).replace("``", "`")
    match = re.match(r"(.+?\.)(\s|$)", first)
    return match.group(1) if match else first


def api_pages() -> list[tuple[int, str, str]]:
    """(layer, module, page path) for every room (and every model package) of the API reference."""
    pages = []
    for level, rooms in enumerate(layers()):
        for room in rooms:
            if room in NOT_IN_API:
                continue
            pages.append((level, f"chemgen.{room}", f"reference/api/{room}.md"))
            if room == "models":
                for model in sorted(p.parent.name for p in (PACKAGE / "models").glob("*/__init__.py")):
                    pages.append((level, f"chemgen.models.{model}", f"reference/api/models-{model}.md"))
    return pages


def api_page(module: str) -> str:
    path = PACKAGE.joinpath(*module.split(".")[1:])
    submodules = path.is_dir()
    if module == "chemgen.models":   # the model packages have pages of their own
        members = sorted(p.stem for p in path.glob("*.py") if not p.stem.startswith("_"))
        return f"# `{module}`\n\n::: {module}\n    options:\n      show_submodules: false\n\n" + "".join(
            f"::: {module}.{name}\n    options:\n      show_root_heading: true\n\n" for name in members)
    return (f"# `{module}`\n\n::: {module}\n    options:\n      show_submodules: {str(submodules).lower()}\n")


def layers_markdown(link: Any = lambda target: target) -> str:
    """The layer diagram and table; ``link`` makes a docs path relative to the page that shows them."""
    rows = ["| layer | room | what it holds |", "|---|---|---|"]
    for level, rooms in enumerate(layers()):
        for room in rooms:
            target = f"reference/api/{room}.md" if room not in NOT_IN_API else "reference/cli.md"
            rows.append(f"| {level} | [`chemgen.{room}`]({link(target)}) | {room_summary(room)} |")
    diagram = ["```text"]
    for level in reversed(range(len(layers()))):
        rooms = layers()[level]
        diagram.append(f"layer {level}  {LAYER_TITLES[level] if level < len(LAYER_TITLES) else ''}")
        line = "         "
        for room in rooms:
            if len(line) + len(room) + 3 > 100:
                diagram.append(line.rstrip())
                line = "         "
            line += f"[{room}] "
        diagram.append(line.rstrip())
        if level:
            diagram.append("            |  imports only from the layers below")
            diagram.append("            v")
    diagram.append("```")
    return "\n".join(diagram) + "\n\n" + "\n".join(rows) + "\n"


# -- the command line --------------------------------------------------------------------------------------

def _escape(text: str) -> str:
    """Help text as Markdown: code spans kept, everything else without HTML or emphasis."""
    parts = re.split(r"(`[^`]*`)", text)
    return "".join(part if part.startswith("`") else
                   part.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;").replace("*", r"\*")
                   .replace("_", r"\_") for part in parts)


def _param_line(param: Any, ctx: Any) -> str | None:
    if getattr(param, "hidden", False):
        return None
    record = param.get_help_record(ctx)
    if record is None:
        return None
    names, text = record
    help_text = " ".join((param.help or "").split())
    extra = ""
    flat = " ".join(text.split())
    if flat.startswith(help_text):
        extra = flat[len(help_text):].strip()
    if extra.startswith("[") and extra.endswith("]"):
        extra = extra[1:-1]
    details = [f"`{names}`"]
    if help_text:
        details.append(_escape(help_text))
    bits = []
    for piece in [p.strip() for p in extra.split(";") if p.strip()] if extra else []:
        key, _, value = piece.partition(":")
        bits.append(f"{key.strip()}: `{value.strip()}`" if value else piece)
    if bits:
        details.append("(" + "; ".join(bits) + ")")
    return "- " + " ".join(details[:1]) + (": " + " ".join(details[1:]) if len(details) > 1 else "")


def _usage(command: Any, path: str) -> str:
    pieces = [path]
    if any(p.param_type_name == "option" for p in command.params):
        pieces.append("[OPTIONS]")
    for param in command.params:
        if param.param_type_name != "argument":
            continue
        name = param.name.upper() + ("..." if param.nargs == -1 else "")
        pieces.append(name if param.required else f"[{name}]")
    if hasattr(command, "commands"):
        pieces.append("COMMAND [ARGS]...")
    return " ".join(pieces)


def cli_markdown() -> str:
    import typer.main

    from chemgen.cli.app import app

    root = typer.main.get_command(app)
    out = ["# Command line reference", "",
           "Generated from the `chemgen` command itself (`chemgen.cli.app.app`); `chemgen COMMAND --help` prints "
           "the same. Errors a user can fix print one line, `error: ...`, and exit with status 1; "
           "`chemgen --debug COMMAND` shows their traceback (see [Bad input and errors](../guides/errors.md)).",
           ""]

    def walk(command: Any, ctx: Any, depth: int) -> None:
        path = ctx.command_path
        if depth:
            out.extend([f"{'#' * min(depth + 1, 4)} `{path}`", ""])
        out.extend(["```text", _usage(command, path), "```", ""])
        if command.help:
            out.extend([_escape(" ".join(part.split())) for part in command.help.split("\n\n")])
            out.append("")
        arguments = [p for p in command.params if p.param_type_name == "argument"]
        options = [p for p in command.params if p.param_type_name == "option"
                   and p.name not in ("install_completion", "show_completion")]
        for title, params in (("Arguments", arguments), ("Options", options)):
            lines = [line for line in (_param_line(p, ctx) for p in params) if line]
            if lines:
                out.extend([f"**{title}**", "", *lines, ""])
        if hasattr(command, "commands"):
            names = command.list_commands(ctx)
            if names:
                out.extend(["| command | what it does |", "|---|---|"])
                for name in names:
                    sub = command.get_command(ctx, name)
                    anchor = f"{path} {name}".replace(" ", "-")
                    summary = _escape(" ".join((sub.help or "").split("\n\n")[0].split()))
                    out.append(f"| [`{path} {name}`](#{anchor}) | {summary} |")
                out.append("")
            for name in names:
                sub = command.get_command(ctx, name)
                walk(sub, type(ctx)(sub, info_name=name, parent=ctx), depth + 1)

    walk(root, root.context_class(root, info_name="chemgen"), 0)
    return "\n".join(out)


# -- model and dataset cards -------------------------------------------------------------------------------

def shipped_lineages() -> list[Path]:
    return sorted(p for p in WEIGHTS.iterdir() if (p / "manifest.json").is_file())


def dataset_cards() -> list[Path]:
    return sorted(DATASET_CARDS.glob("*.md"))


def _title(markdown: str, fallback: str) -> str:
    match = re.search(r"^# (.+)$", markdown, flags=re.M)
    return match.group(1).strip() if match else fallback


# -- hooks ---------------------------------------------------------------------------------------------------

def _generated_nav(what: str) -> list[Any]:
    if what == "models":
        return [{"Overview": "models/index.md"}] + [
            {p.name: f"models/{p.name}.md"} for p in shipped_lineages()] + [
            {"Sweeps and ablations": "models/measurements.md"}]
    if what == "datasets":
        return [{_title(p.read_text(), p.stem).removeprefix("Dataset card: ").split(" (")[0]: f"datasets/{p.name}"}
                for p in dataset_cards()]
    if what == "api":
        nav: list[Any] = [{"Overview": "reference/api/index.md"}]
        for level, rooms in enumerate(layers()):
            pages = [{module: page} for lvl, module, page in api_pages() if lvl == level]
            if pages:
                title = LAYER_TITLES[level] if level < len(LAYER_TITLES) else f"Layer {level}"
                nav.append({f"{level}. {title}": pages})
        return nav
    raise ValueError(f"mkdocs.yml: unknown generated navigation {what!r}")


def _expand(nav: Any) -> Any:
    if isinstance(nav, list):
        return [_expand(item) for item in nav]
    if isinstance(nav, dict):
        return {title: (_generated_nav(value.removeprefix("generated:"))
                        if isinstance(value, str) and value.startswith("generated:") else _expand(value))
                for title, value in nav.items()}
    return nav


def on_config(config: Any) -> Any:
    config["nav"] = _expand(config["nav"])
    return config


def on_files(files: Files, config: Any) -> Files:
    from chemgen.registry.cards import model_card

    pages = {"reference/cli.md": cli_markdown()}
    for _, module, page in api_pages():
        pages[page] = api_page(module)
    for folder in shipped_lineages():
        pages[f"models/{folder.name}.md"] = model_card(folder)
    for card in dataset_cards():
        pages[f"datasets/{card.name}"] = card.read_text()
    for path, content in pages.items():
        files.append(File.generated(config, path, content=content))
    return files


def on_page_markdown(markdown: str, page: Any, config: Any, files: Files) -> str:
    here = posixpath.dirname(page.file.src_uri)

    def link(target: str) -> str:
        return posixpath.relpath(target, here or ".")

    if "<!-- chemgen:layers -->" in markdown:
        markdown = markdown.replace("<!-- chemgen:layers -->", layers_markdown(link))
    if "<!-- chemgen:model-cards -->" in markdown:
        markdown = markdown.replace("<!-- chemgen:model-cards -->", "\n".join(
            f"- [{p.name}]({link(f'models/{p.name}.md')})" for p in shipped_lineages()))
    if "<!-- chemgen:dataset-cards -->" in markdown:
        markdown = markdown.replace("<!-- chemgen:dataset-cards -->", "\n".join(
            f"- [{_title(p.read_text(), p.stem)}]({link(f'datasets/{p.name}')})" for p in dataset_cards()))
    return markdown
