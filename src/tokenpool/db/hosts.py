"""Multi-host connection strings: a writer asks libpq for the primary unless the URL says otherwise."""

from __future__ import annotations

from typing import Any

import psycopg
from psycopg.conninfo import conninfo_to_dict, make_conninfo

from tokenpool.db.errors import DatabaseUnavailable


def primary_url(url: str) -> str:
    """``url`` with ``target_session_attrs=read-write`` if it lists several hosts and does not say which it wants.

    libpq (and psycopg) try the hosts in order, each within ``connect_timeout``; without the attribute the
    first that accepts a connection wins, a standby or a demoted primary included. Parsed with libpq's own
    parser (``conninfo_to_dict``), which understands ``postgresql://h1:p1,h2:p2/db`` and ``host=a,b port=p,q``;
    any other URL is returned untouched."""
    try:
        params = conninfo_to_dict(url)
    except psycopg.ProgrammingError:
        return url  # let the connect report it
    if "," in str(params.get("host") or params.get("hostaddr") or "") and "target_session_attrs" not in params:
        return make_conninfo(url, target_session_attrs="read-write")
    return url


def host_count(url: str) -> int:
    """How many hosts libpq may try for ``url`` (each within ``connect_timeout``, one after the other)."""
    try:
        params = conninfo_to_dict(url)
    except psycopg.ProgrammingError:
        return 1
    return max(1, len(str(params.get("host") or params.get("hostaddr") or "").split(",")))


def connect_primary(url: str, **kwargs: Any) -> psycopg.Connection[Any]:
    """A connection to the primary of ``url`` (:func:`primary_url`) for a one-off command;
    DatabaseUnavailable, with the first line of libpq's message, when no host can be reached."""
    try:
        return psycopg.connect(primary_url(url), **kwargs)
    except psycopg.OperationalError as exc:
        message = str(exc).strip()
        raise DatabaseUnavailable(message.splitlines()[0] if message else type(exc).__name__) from None
