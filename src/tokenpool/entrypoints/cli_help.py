"""How ``tokenpool ... --help`` shows options: a flag shows no value type.

Typer's rich help (0.28 and later) prints the type of every option, flags too (``--json <bool>``, ``--help
<bool>``), which reads as if the flag wanted a value. Click's plain help never did, nor did earlier Typers
(which the dev tools, e.g. openapi-python-client, may pin). :func:`hide_flag_types` makes flags (and
counters) show no type, for every command, whichever module defines it, and for Typer's own ``--help``; on a
Typer without typed help it does nothing.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from typer.core import TyperOption

_typed: Callable[[TyperOption, Any], str | None] | None = getattr(TyperOption, "display_type_rich", None)


def _display_type_rich(self: TyperOption, ctx: Any) -> str | None:
    if getattr(self, "is_flag", False) or getattr(self, "count", False):
        return None
    assert _typed is not None
    return _typed(self, ctx)


def hide_flag_types() -> None:
    """From now on, help shows ``--json``, not ``--json <bool>`` (idempotent)."""
    if _typed is not None:
        setattr(TyperOption, "display_type_rich", _display_type_rich)  # noqa: B010 (absent from older stubs)
