"""The errors a user can fix. The `hsa` command and the DVC stages print these as ONE
line that names the file, key or frame (no traceback); anything else is a bug and gets a
full traceback."""

from __future__ import annotations


def first_line(e: BaseException, limit: int = 300) -> str:
    """An exception's message as one line for a user: its first line (its type's name when
    it has none), at most `limit` characters."""
    text = str(e).strip()
    return (text.splitlines()[0] if text else type(e).__name__)[:limit]


class UserError(Exception):
    """Bad input or settings: the message says what was found and what was expected."""


class ConfigError(UserError, ValueError):
    """A params.yaml value is missing, misspelt, mistyped or out of range."""


class EpisodeError(UserError, ValueError):
    """An episode (file, key or frame) is unusable; the message names it."""


class StoreError(UserError):
    """An upstream output (manifest, geometry or feature store, policy) is missing,
    incomplete or was built from other inputs; the message says which stage to rerun."""


class TrainingDiverged(UserError):
    """A loss term became NaN or infinite; the message names the term and the step."""
