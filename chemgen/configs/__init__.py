"""The shipped model configs, ``<model>-<name>.yaml`` (package data; `chemgen.config.load_config` reads them)."""
