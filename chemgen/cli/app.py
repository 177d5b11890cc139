"""The ``chemgen`` command: one typer app, one module per command group (`chemgen.cli.data`, ``train``, ...).

Each command parses its options, checks them before any work starts and calls one library function; errors a user
can fix print as one line (`chemgen.cli.common.Commands`).
"""

from __future__ import annotations

import sys

import typer

from chemgen.cli import convert, elucidate, run, score, serve
from chemgen.cli.common import Commands, Debug
from chemgen.cli.data import data_app
from chemgen.cli.flows import flows_app
from chemgen.cli.registry import registry_app
from chemgen.cli.sample import sample_app
from chemgen.cli.services import services_app
from chemgen.cli.spectra import spectra_app
from chemgen.cli.train import train_app
from chemgen.cli.users import users_app

app = typer.Typer(cls=Commands, no_args_is_help=True, pretty_exceptions_enable=False,
                  help="chemgen: curated data, generative models and reference-exact scoring for molecules and crystals.")
app.add_typer(data_app, name="data")
app.add_typer(train_app, name="train")
app.add_typer(sample_app, name="sample")
app.add_typer(flows_app, name="flows")
app.add_typer(spectra_app, name="spectra")
app.add_typer(registry_app, name="registry")
app.add_typer(services_app, name="services")
app.add_typer(users_app, name="users")
app.command("run")(run.run_main_job)
app.command("convert")(convert.convert)
app.command("score")(score.score)
app.command("elucidate")(elucidate.elucidate)
app.command("serve")(serve.serve)


@app.callback()
def _global_options(debug: Debug = False) -> None:
    """Nothing to do here: `Commands.invoke` reads --debug from the parsed context."""


def main() -> None:  # pragma: no cover - console entry point
    app()


if __name__ == "__main__":  # pragma: no cover
    sys.exit(app())
