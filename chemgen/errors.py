"""The one base class of the errors chemgen raises for things a user can fix (a bad file, a bad config, an
unknown name, a store that is not there). The CLI prints these as one line; anything else is a bug and
keeps its traceback.

Each module's error class derives from `ChemgenError` and, where callers already catch it as one, from the
builtin it used to be (``StructureFileError`` is still a ``ValueError``)."""


class ChemgenError(Exception):
    """A problem with chemgen's input or environment, explained in the message (which names the file or value)."""


class UsageError(ChemgenError, ValueError):
    """An unknown name or a bad value in a request (a dataset, a model, a solver, a count): a ValueError too,
    so callers that catch that keep working."""
