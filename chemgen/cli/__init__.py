"""The ``chemgen`` command line (`chemgen.cli.app.app`): thin modules, one per command group."""
