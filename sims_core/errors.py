"""The one family of errors sims raises on purpose.

    SimsError                   anything sims raises knowingly
    ├── UserError (ValueError)  bad input: a config field, a prompt set, a file, a model, a run id.
    │   │                       The message is one sentence naming the input and what was
    │   │                       expected; the CLI prints it as one line (exit 2); never retried.
    │   ├── ConfigError, PromptSourceError, ModelLoadError, OracleError, SteeringFileError, ...
    │   └── NotFoundError (also FileNotFoundError): a run, a file or an artifact that is not there
    └── TransientError          a retry may succeed: a lost worker, a store that did not answer.

Every class carries two flags that code decides on instead of on the class hierarchy:
``user_error`` (print one sentence, exit 2, keep the traceback out of the terminal) and
``retryable`` (a shard or a store operation is worth trying again). `is_retryable` extends the
second to exceptions sims did not raise itself.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import ClassVar

__all__ = [
    "ConfigError",
    "NotFoundError",
    "SimsError",
    "TransientError",
    "UserError",
    "check_keywords",
    "is_retryable",
    "is_user_error",
]


class SimsError(Exception):
    """Base of every error sims raises on purpose."""

    user_error: ClassVar[bool] = False
    retryable: ClassVar[bool] = False


class UserError(SimsError, ValueError):
    """Bad input (config, prompts, files, models): one sentence naming it; never retried."""

    user_error = True


class ConfigError(UserError):
    """A configuration field has a value sims cannot use."""


class NotFoundError(UserError, FileNotFoundError):
    """A run, file or artifact the user named is not there."""


class TransientError(SimsError):
    """A failure that a retry may cure: a lost worker, a store that did not answer in time."""

    retryable = True


# Exceptions sims did not raise itself that a retry cannot cure: programming errors and bad data
# fail the same way every time. Anything else (a RuntimeError from a dying worker, an OSError from
# a flaky disk or network, MemoryError...) is worth one more try.
_DETERMINISTIC = (
    TypeError,
    ValueError,
    KeyError,
    IndexError,
    AttributeError,
    NameError,
    AssertionError,
    NotImplementedError,
    FileNotFoundError,
    PermissionError,
    IsADirectoryError,
    NotADirectoryError,
)


def check_keywords(given: Iterable[str], declared: type, what: str) -> None:
    """The `TypeError` Python raises for a misspelt keyword, for a function that takes a
    ``TypedDict`` (``declared``) as ``**keywords``; the message names the keywords it declares
    (``what``: e.g. "sampling overrides")."""
    unknown = [key for key in given if key not in declared.__annotations__]
    if unknown:
        names = ", ".join(declared.__annotations__)
        raise TypeError(f"unexpected keyword argument {unknown[0]!r}; the {what} are {names}")


def is_user_error(exc: BaseException) -> bool:
    """Whether ``exc`` is a mistake in what the user gave (printed as one sentence)."""
    return bool(getattr(exc, "user_error", False))


def is_retryable(exc: BaseException | None) -> bool:
    """Whether trying ``exc``'s operation again may succeed: sims' own errors say so with their
    ``retryable`` flag; other exceptions are retried unless they are deterministic failures
    (bad data or a programming error)."""
    if exc is None:
        return False
    if isinstance(exc, SimsError):
        return exc.retryable
    if isinstance(exc, (KeyboardInterrupt, SystemExit)):
        return False
    return not isinstance(exc, _DETERMINISTIC)
