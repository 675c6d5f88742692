"""The errors injflow raises on purpose: each says what is wrong and what to do, in one line.

The command line prints any :class:`InjflowError` as one line (``injflow: <message>``) and exits with its
:attr:`~InjflowError.exit_code`; ``--debug`` shows the traceback as well. Every class also derives from the
built-in exception a caller would expect (``ValueError`` for bad values, ``OSError`` for files, ...), so
``except ValueError`` keeps working.
"""

from __future__ import annotations

__all__ = [
    "InjflowError",
    "ConfigError",
    "OptionError",
    "DataError",
    "CheckpointError",
    "UnsafeFileError",
    "RunFolderError",
    "RunLockedError",
    "UnfinishedRunError",
    "WriteError",
    "NonFiniteLossError",
    "NonFiniteStateError",
    "RunInterrupted",
]


class InjflowError(Exception):
    """Base class: a problem injflow detected and can explain; the CLI prints it without a traceback."""

    #: Exit status of the command line for this error (2: fix the input; 3: training stopped; 128+N: signal N).
    exit_code: int = 2


class ConfigError(InjflowError, ValueError):
    """A config key is unknown, has the wrong type, or an impossible value; the message names the dotted key.

    Arguments:
        message: What is wrong and what to do.
        key: The dotted config key at fault (``train.max_epochs``), kept as :attr:`key` so that callers never parse
            it back out of the message; the message then reads ``"<key>: <message>"``.

    Example:
        >>> e = ConfigError("must be >= 1, got 0", key="max_epochs").under("train")
        >>> e.key, str(e)
        ('train.max_epochs', 'train.max_epochs: must be >= 1, got 0')
    """

    def __init__(self, message: str, *, key: str | None = None) -> None:
        super().__init__(f"{key}: {message}" if key else message)
        self.key = key
        self.reason = message

    def under(self, prefix: str) -> ConfigError:
        """The same error seen from one section further out (key ``<prefix>.<key>``)."""
        error = type(self)(self.reason, key=f"{prefix}.{self.key}" if self.key else prefix)
        error.__cause__ = self.__cause__
        return error


class OptionError(ConfigError):
    """An option of something a config names (a method's field, a data set's or a network's option) is wrong.

    Raised with the option's own name as :attr:`key`; the config layer puts the section in front
    (``method.beta``, ``data.options.n_train``) with :meth:`under`.
    """


class DataError(InjflowError, ValueError):
    """The data cannot be trained on (empty, wrong shape or dtype, NaN/inf, absurd scale, unreadable file)."""


class CheckpointError(InjflowError, ValueError):
    """A checkpoint or model file is missing, empty, truncated, corrupt, or does not match the model."""


class UnsafeFileError(CheckpointError):
    """A file would run code when loaded (a pickle that is not plain data); it is refused, never executed."""


class RunFolderError(InjflowError, OSError):
    """A run folder is missing, not a run folder, or in a state that does not allow the request."""


class RunLockedError(RunFolderError):
    """Another process holds the run folder's lock (two writers would mix their files)."""


class UnfinishedRunError(RunFolderError):
    """The run did not finish (interrupted, failed or still running); the message names its last step."""


class WriteError(InjflowError, OSError):
    """A file could not be written (full disk, read-only folder, permissions); the previous file is intact."""


class NonFiniteLossError(InjflowError, RuntimeError):
    """The loss became NaN or infinite; the message names the optimiser step and the offending term(s)."""

    exit_code = 3


class NonFiniteStateError(NonFiniteLossError):
    """The weights or the optimiser state became NaN/inf; no checkpoint is written from such a state."""


class RunInterrupted(InjflowError):
    """Training was stopped by a signal (SIGTERM, SIGINT) after saving a resumable checkpoint."""

    def __init__(self, message: str, *, signal_number: int) -> None:
        super().__init__(message)
        self.signal_number = int(signal_number)
        self.exit_code = 128 + self.signal_number
