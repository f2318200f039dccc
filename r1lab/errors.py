"""The errors r1lab raises on purpose: each is a message for the user, naming the file, line or
field at fault. The ``r1lab`` command prints any :class:`R1labError` as one line on stderr and
exits with status 2 (r1lab/cli.py); anything else is a bug and keeps its traceback.

Each module defines the errors of its own concern as subclasses (``ConfigError`` in config.py,
``CheckpointError`` in models/io.py, ...). :class:`DataError` lives here because data/ and
train/ both raise it.
"""


class R1labError(Exception):
    """Base of every error r1lab raises for the user to fix; its message says what and where."""


class DataError(R1labError, ValueError):
    """A bad row or file: the message names the file, the line and the field."""


class BackendError(R1labError, ValueError):
    """A sampling backend that cannot decode this model, or is not installed."""
