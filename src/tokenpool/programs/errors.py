"""What can go wrong with a card program, as domain errors with a stable ``code``.

The HTTP app maps them to statuses (tokenpool.service.app), the CLI to one line and an exit code.
"""

from __future__ import annotations


class ProgramError(Exception):
    code = "PROGRAM_ERROR"

    def __init__(self, detail: str) -> None:
        super().__init__(detail)
        self.detail = detail


class UnknownProgram(ProgramError):
    """No registered program has this name (never added, or removed): nothing is created for it, and TOME is
    not asked."""

    code = "UNKNOWN_PROGRAM"

    def __init__(self, name: str) -> None:
        super().__init__(f"Program {name!r} is not registered (tokenpool program add).")
        self.name = name


class ProgramExists(ProgramError):
    code = "PROGRAM_EXISTS"

    def __init__(self, name: str) -> None:
        super().__init__(f"program {name!r} is registered already (change it with `tokenpool program set`)")
        self.name = name


class ProgramInUse(ProgramError):
    """A removal refused: the program's pool still holds pairs that are (or may become) handed out, or refill
    batches TOME issued that are not loaded yet."""

    code = "PROGRAM_IN_USE"

    def __init__(self, name: str, available: int, reserved: int, unfinished_batches: int) -> None:
        parts = [f"{available:,} available", f"{reserved:,} reserved pairs"]
        if unfinished_batches:
            parts.append(f"{unfinished_batches:,} unfinished refill batches")
        super().__init__(f"program {name!r} still holds {', '.join(parts)}; use --force to remove it anyway")
        self.name = name
        self.available = available
        self.reserved = reserved
        self.unfinished_batches = unfinished_batches


class InvalidProgram(ProgramError):
    """A name, namespace or target that a program cannot have."""

    code = "INVALID_PROGRAM"
