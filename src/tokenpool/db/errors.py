"""The database's failures as tokenpool's own errors: the one place driver exceptions are translated.

Nothing outside ``tokenpool.db`` catches a psycopg exception; it catches these.
"""

from __future__ import annotations


class DatabaseError(Exception):
    """Base of the database adapter's errors; as such (no subclass) an unexpected failure: a bug to fix."""

    code = "INTERNAL_ERROR"
    detail = "An unexpected error occurred; quote the correlation id."


class DatabaseUnavailable(DatabaseError):
    """The database cannot be reached, or did not answer within the request's bound."""

    code = "DATABASE_UNAVAILABLE"
    detail = "The database is unavailable; retry later."


class DatabaseBusy(DatabaseUnavailable):
    """A timeout while the database still answers other requests: overload (or a slow statement), not outage.

    A subclass, so every fallback written for an outage (keep the last runtime config, leave a spare pair
    to the refill) still applies; only the answer's code and the log differ.
    """

    code = "SERVICE_BUSY"
    detail = "Every database connection is busy; retry shortly."


class UniqueViolation(DatabaseError):
    """A unique constraint refused a row (e.g. a name already taken)."""

    code = "CONFLICT"

    def __init__(self, constraint: str | None) -> None:
        super().__init__(f"unique constraint {constraint or '?'} refused the row")
        self.constraint = constraint


class InsufficientPrivilege(DatabaseError):
    """The database role lacks a grant for this statement (least privilege at work)."""

    code = "INSUFFICIENT_PRIVILEGE"


class InvalidValue(DatabaseError):
    """PostgreSQL cannot store a value as given (e.g. a NUL character in text): the caller's input."""

    code = "INVALID_VALUE"
    detail = "A value in the request cannot be stored as given (e.g. a NUL or other control character)."
