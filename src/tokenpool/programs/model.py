"""A registered card program and the rules its fields follow. Pure.

A program's refill target and TOME namespaces are optional: unset (NULL in ``programs``) means "the setting
of the process that uses it" (``TOKENPOOL_REFILL_TARGET``, ``TOKENPOOL_TOME_NS1`` / ``_NS2``), so that the
programs a migration registers, and any added without them, follow the deployment's configuration.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import datetime

from tokenpool.programs.errors import InvalidProgram
from tokenpool.settings import Settings

# The same pattern as the API's program field, the TOME namespaces' and the programs table's CHECKs.
NAME_PATTERN = r"^[A-Za-z0-9_.-]{1,64}$"
_NAME = re.compile(NAME_PATTERN)


def is_valid_name(name: str) -> bool:
    return _NAME.fullmatch(name) is not None


def validate_name(name: str) -> str:
    if not is_valid_name(name):
        raise InvalidProgram(f"invalid program name {name!r}: 1-64 of A-Z a-z 0-9 _ . -")
    return name


def validate_namespace(namespace: str) -> str:
    if not is_valid_name(namespace):
        raise InvalidProgram(f"invalid TOME namespace {namespace!r}: 1-64 of A-Z a-z 0-9 _ . -")
    return namespace


@dataclass(frozen=True, slots=True)
class Program:
    name: str
    refill_target: int | None  # None: settings.refill_target
    ns1: str | None  # None: settings.tome_ns1
    ns2: str | None  # None: settings.tome_ns2
    created_at: datetime
    updated_at: datetime
    removed_at: datetime | None = None

    @property
    def registered(self) -> bool:
        """False once removed (the row stays: cards keep naming it, and ``program add`` brings it back)."""
        return self.removed_at is None

    def target_in(self, settings: Settings) -> int:
        return settings.refill_target if self.refill_target is None else self.refill_target

    def ns1_in(self, settings: Settings) -> str:
        return self.ns1 or settings.tome_ns1

    def ns2_in(self, settings: Settings) -> str:
        return self.ns2 or settings.tome_ns2


@dataclass(frozen=True, slots=True)
class ProgramChange:
    """What ``program set`` changes; a field left None is kept. ``reset_*`` returns it to the setting."""

    refill_target: int | None = None
    ns1: str | None = None
    ns2: str | None = None
    reset_target: bool = False
    reset_namespaces: bool = False

    def __post_init__(self) -> None:
        if self.refill_target is not None and self.refill_target < 0:
            raise InvalidProgram("a refill target is 0 or more")
        if self.reset_target and self.refill_target is not None:
            raise InvalidProgram("give a target or reset it to the setting, not both")
        if self.reset_namespaces and (self.ns1 is not None or self.ns2 is not None):
            raise InvalidProgram("give namespaces or reset them to the settings, not both")
        for namespace in (self.ns1, self.ns2):
            if namespace is not None:
                validate_namespace(namespace)

    @property
    def empty(self) -> bool:
        return (self.refill_target is None and self.ns1 is None and self.ns2 is None
                and not self.reset_target and not self.reset_namespaces)
