"""One exception hierarchy for the whole project.

Every error a user can cause derives from :class:`BetterError`; its message says what went wrong, where
(file, line, record, column or token) and how to fix it. The CLI prints the message alone, never a
traceback, and exits non-zero.
"""

from __future__ import annotations


class BetterError(Exception):
    """Base class of every error BETTER raises on purpose."""


class InputError(BetterError):
    """A file or value given by the user is malformed or inconsistent."""


class StoreError(BetterError):
    """The station store is missing, unwritable or in an unexpected state."""


class NotFoundError(BetterError):
    """A named dataset, column or station does not exist."""
