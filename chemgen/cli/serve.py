"""``chemgen serve``: the web app."""

from __future__ import annotations

from typing import Annotated

import typer

from chemgen.cli.common import at_least, console


def serve(host: Annotated[str, typer.Option(help="Address to listen on (default: this machine only).")] = "127.0.0.1",
          port: Annotated[int, typer.Option(help="Port.")] = 8765,
          workers: Annotated[int, typer.Option(help="Jobs (Prefect flow runs) at once; each uses the cores torch "
                                                    "is given.")] = 1,
          samples: Annotated[int, typer.Option(help="Molecules sampled per elucidation job.")] = 32,
          rerank: Annotated[bool, typer.Option(help="Re-rank elucidation candidates by their GFN2-xTB spectra.")] = True) -> None:
    """The web app: upload spectra for ranked structures, run and browse crystal screening, see the registry."""
    import uvicorn

    from chemgen.web.app import create_app
    from chemgen.web.settings import WebSettings

    at_least("--port", port, 1)
    at_least("--workers", workers, 1)
    at_least("--samples", samples, 1)
    settings = WebSettings(workers=workers, elucidation={"samples": samples, "steps": 100, "top_k": 10, "rerank": rerank})
    if host not in ("127.0.0.1", "localhost", "::1"):
        console.print(f"[yellow]listening on {host}: the app has no authentication; put it behind one[/]")
    console.print(f"chemgen web on http://{host}:{port}  (jobs in {settings.jobs_dir})", highlight=False)
    uvicorn.run(create_app(settings), host=host, port=port, log_level="warning")
