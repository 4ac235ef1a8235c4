"""Card programs: the registered names a card, a reservation or a refill may use, each with its refill
target and its TOME namespaces. No I/O here (``tokenpool.db.program_store`` keeps them in PostgreSQL).

The code calls a program's token pool a "pool"; a program is the registration that makes that pool usable.
"""

from tokenpool.programs.catalog import ProgramCatalog
from tokenpool.programs.errors import (
    InvalidProgram,
    ProgramError,
    ProgramExists,
    ProgramInUse,
    UnknownProgram,
)
from tokenpool.programs.model import (
    NAME_PATTERN,
    Program,
    ProgramChange,
    is_valid_name,
    validate_name,
    validate_namespace,
)

__all__ = [
    "NAME_PATTERN",
    "InvalidProgram",
    "Program",
    "ProgramCatalog",
    "ProgramChange",
    "ProgramError",
    "ProgramExists",
    "ProgramInUse",
    "UnknownProgram",
    "is_valid_name",
    "validate_name",
    "validate_namespace",
]
