"""How ``tokenpool ... --help`` shows options: a flag shows no value type.

Typer's rich help prints the type of every option, flags too (``--json <bool>``, ``--help <bool>``), which
reads as if the flag wanted a value. Click's plain help never did. :func:`hide_flag_types` makes flags
(and counters) show no type, for every command, whichever module defines it, and for Typer's own ``--help``.
"""

from __future__ import annotations

from typing import Any

from typer.core import TyperOption

_typed = TyperOption.display_type_rich


def _display_type_rich(self: TyperOption, ctx: Any) -> str | None:
    if getattr(self, "is_flag", False) or getattr(self, "count", False):
        return None
    return _typed(self, ctx)


def hide_flag_types() -> None:
    """From now on, help shows ``--json``, not ``--json <bool>`` (idempotent)."""
    TyperOption.display_type_rich = _display_type_rich  # type: ignore[method-assign]
