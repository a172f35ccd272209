"""Errors that reach a person: each names the file, the value and the fix.

The CLI turns any :class:`OffroadsegError` into one line on stderr and exit status 2,
with no traceback. Everything else is a bug and keeps its traceback.
"""

from __future__ import annotations


class OffroadsegError(Exception):
    """A problem with the user's input (file, value, config), not a bug."""


def user_message(exc: OffroadsegError) -> str:
    """The message a person reads, without the worker traceback torch wraps around it.

    An error raised in a DataLoader worker comes back re-raised with its type kept but its message
    replaced by "Caught X in DataLoader worker process N. Original Traceback ...", ending in the
    original ``module.X: message``: this returns that original message.
    """
    text = str(exc)
    if not text.startswith("Caught ") or "Original Traceback" not in text:
        return text
    prefix = f"{type(exc).__module__}.{type(exc).__qualname__}: "
    lines = text.splitlines()
    for i in range(len(lines) - 1, -1, -1):
        if lines[i].startswith(prefix):
            return "\n".join([lines[i][len(prefix) :], *lines[i + 1 :]]).strip()
    return text


class DataError(OffroadsegError):
    """A bad image, mask or dataset layout."""


class ConfigError(OffroadsegError):
    """A bad config file, key or value."""


class TrainingError(OffroadsegError):
    """A run that cannot go on (a non-finite loss): names the step, the files and the fix."""


class ModelError(OffroadsegError):
    """An unknown model name, unreachable weights source or bad checkpoint."""


def close_matches(word: str, choices: list[str] | tuple[str, ...], n: int = 3) -> str:
    """A short 'did you mean' phrase for an error message ('' when nothing is close)."""
    import difflib

    found = difflib.get_close_matches(word, list(choices), n=n, cutoff=0.5)
    return f" (did you mean: {', '.join(found)}?)" if found else ""
