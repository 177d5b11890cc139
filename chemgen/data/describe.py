"""Human-readable summaries of curated datasets: rich tables and matplotlib plots."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from rich.console import Console
from rich.table import Table

from chemgen.data.store import CurationResult


def print_curation(result: CurationResult, console: Console) -> None:
    m = result.manifest
    state = "unchanged input: reused the existing version, whose shards verify" if result.reused else f"curated in {m['curation_seconds']} s"
    console.print(f"[bold]{result.name}[/] version [cyan]{result.version}[/] ({state})")
    if result.sliced:
        console.print(f"a slice (--limit): LATEST is unchanged; use it as [cyan]{result.name}@{result.version}[/]")
    print_manifest(m, console)
    if m["counts"]["bad"]:
        console.print(f"every bad row, with its reason: {result.path / 'bad_rows.csv'}", highlight=False)


def print_manifest(m: dict[str, Any], console: Console) -> None:
    table = Table(title=f"{m['name']} @ {m['version']}", show_header=False, title_justify="left")
    table.add_column(style="bold")
    table.add_column()
    counts = m["counts"]
    table.add_row("rows read", f"{counts['rows_read']:,}")
    table.add_row("curated", f"{counts['curated']:,}")
    by_kind = m["bad_rows"].get("by_kind") or {}
    kinds = f" ({', '.join(f'{kind} {n:,}' for kind, n in by_kind.items())})" if by_kind else ""
    table.add_row("bad rows", f"{counts['bad']:,}{kinds}")
    table.add_row("splits", " / ".join(f"{k} {v:,}" for k, v in m["splits"].items()))
    table.add_row("protocol", m.get("protocol", ""))
    table.add_row("content hash", m["content_hash"])
    for f in m["source"]["files"]:
        table.add_row("source", f"{f['name']}  {f.get('rows', 0):,} rows  sha256 {f['sha256'][:16]}")
    elements = sorted(m["element_histogram"].items(), key=lambda kv: -kv[1])
    shown = ", ".join(f"{s} {c:,}" for s, c in elements[:12])
    more = f" (+{len(elements) - 12} more elements)" if len(elements) > 12 else ""
    table.add_row("elements (atoms)", shown + more)
    console.print(table)
    examples = m["bad_rows"]["examples"]
    if examples:
        console.print(f"[yellow]{m['bad_rows']['count']} bad row(s); first examples:[/]")
        for ex in examples:  # row: 0-based data row of the file (line row + 2, after the header)
            console.print(f"  {ex['source']} row {ex['row']} ({ex['id'] or 'no id'}): {ex['reason']}",
                          highlight=False, markup=False)


def plot_dataset(m: dict[str, Any], out_dir: str | Path) -> list[Path]:
    """Element and system-size histograms of one dataset version, as PNG files."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from chemgen.io import atomic_write

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    elements = sorted(m["element_histogram"].items(), key=lambda kv: -kv[1])
    sizes = sorted((int(n), c) for n, c in m["num_atoms_histogram"].items())
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(12, 4))
    ax1.bar([s for s, _ in elements], [c for _, c in elements], color="tab:blue")
    ax1.set_yscale("log")
    ax1.set_ylabel("atoms")
    ax1.set_title(f"{m['name']}: element histogram")
    ax1.tick_params(axis="x", labelrotation=90, labelsize=6 if len(elements) > 40 else 9)
    ax2.bar([n for n, _ in sizes], [c for _, c in sizes], color="tab:orange")
    ax2.set_xlabel("atoms per system")
    ax2.set_ylabel("systems")
    ax2.set_title(f"{m['name']}: system size")
    fig.tight_layout()
    path = out_dir / f"{m['name']}-{m['version']}-histograms.png"
    with atomic_write(path, "wb") as handle:
        fig.savefig(handle, format="png", dpi=120)
    plt.close(fig)
    return [path]
