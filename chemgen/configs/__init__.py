"""The shipped model configs, ``<model>-<name>.yaml`` (package data; `chemgen.models.specs.load_config` reads them)."""
