"""``chemgen serve``: the web app."""

from __future__ import annotations

from typing import Annotated, Optional

import typer

from chemgen.cli.common import at_least, console


def serve(host: Annotated[str, typer.Option(help="Address to listen on (default: this machine only).")] = "127.0.0.1",
          port: Annotated[int, typer.Option(help="Port.")] = 8765,
          workers: Annotated[int, typer.Option(help="Jobs (Prefect flow runs) at once; each uses the cores torch "
                                                    "is given.")] = 1,
          samples: Annotated[int, typer.Option(help="Molecules sampled per elucidation job.")] = 32,
          rerank: Annotated[bool, typer.Option(help="Re-rank elucidation candidates by their GFN2-xTB spectra.")] = True,
          auth: Annotated[str, typer.Option(help="Who may use it: none (one user, this machine), token (API tokens "
                                                 "of `chemgen users add`) or proxy (a trusted reverse proxy's "
                                                 "header).")] = "none",
          auth_header: Annotated[str, typer.Option(help="With --auth proxy: the header naming the user.")] = "X-Forwarded-User",
          jobs_per_minute: Annotated[int, typer.Option(help="Jobs one user may submit a minute.")] = 10,
          retention_days: Annotated[Optional[float], typer.Option(
              help="Delete finished jobs older than this many days, with their files (checked hourly; default: "
                   "keep).")] = None,
          dispatch: Annotated[str, typer.Option(
              help="How jobs run: runner (a process of this server's each, embedded Prefect) or deployment (runs of "
                   "the deployments on the Prefect server PREFECT_API_URL names, picked up by its pool's "
                   "workers).")] = "runner") -> None:
    """The web app: upload spectra for ranked structures, run and browse crystal screening, see the registry."""
    import uvicorn

    from chemgen.web.app import create_app
    from chemgen.web.settings import WebSettings

    at_least("--port", port, 1)
    at_least("--workers", workers, 1)
    at_least("--samples", samples, 1)
    settings = WebSettings(workers=workers, elucidation={"samples": samples, "steps": 100, "top_k": 10, "rerank": rerank},
                           auth=auth, auth_header=auth_header, jobs_per_minute=jobs_per_minute,
                           retention_days=retention_days, dispatch=dispatch)
    if host not in ("127.0.0.1", "localhost", "::1") and auth == "none":
        console.print(f"[yellow]listening on {host} without authentication: use --auth token or --auth proxy[/]")
    console.print(f"chemgen web on http://{host}:{port}  (jobs in {settings.jobs_dir})", highlight=False)
    uvicorn.run(create_app(settings), host=host, port=port, log_level="warning")
