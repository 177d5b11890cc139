"""``python -m chemgen.cli``: the same as the ``chemgen`` command."""

from chemgen.cli.app import main

main()
