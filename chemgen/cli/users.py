"""``chemgen users``: the web app's users and their API tokens (`chemgen serve --auth token`)."""

from __future__ import annotations

from typing import Annotated

import typer
from rich.table import Table

from chemgen.cli.common import console, err_console

users_app = typer.Typer(help="The web app's users: API tokens for `chemgen serve --auth token`.", no_args_is_help=True)


def _store():
    from chemgen.web.auth import UserStore
    from chemgen.web.settings import WebSettings

    return UserStore(WebSettings().home)


@users_app.command("add")
def users_add(name: Annotated[str, typer.Argument(help="The user's name (letters, digits, _ . @ -).")],
              replace: Annotated[bool, typer.Option(help="Give an existing user a new token (the old one stops "
                                                         "working).")] = False) -> None:
    """Make a user and print their token, once: only its hash is kept."""
    token = _store().add(name, replace=replace)
    err_console.print(f"user {name}: their token (shown once; give it to them, it is not kept):", highlight=False)
    typer.echo(token)


@users_app.command("revoke")
def users_revoke(name: Annotated[str, typer.Argument(help="The user whose token stops working.")]) -> None:
    """End a user's token; their jobs stay."""
    _store().revoke(name)
    console.print(f"user {name}: token revoked", highlight=False)


@users_app.command("list")
def users_list() -> None:
    """Every user, when their token was made and whether it was revoked."""
    store = _store()
    table = Table(title=f"users in {store.path}", title_justify="left")
    for column in ("user", "created", "revoked"):
        table.add_column(column)
    for name, user in sorted(store.users().items()):
        table.add_row(name, user["created"], user.get("revoked") or "")
    console.print(table)
