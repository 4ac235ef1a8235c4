"""Loads ``queries.sql`` into a dict: every statement tokenpool sends, reviewable as SQL in one file."""

from __future__ import annotations

import re
from functools import cache
from importlib.resources import files

_HEADER = re.compile(r"^-- ([a-z_]+) --$", re.MULTILINE)


def parse(text: str) -> dict[str, str]:
    parts = _HEADER.split(text)
    # parts = [preamble, name1, body1, name2, body2, ...]
    queries: dict[str, str] = {}
    for name, body in zip(parts[1::2], parts[2::2], strict=True):
        lines = [line for line in body.strip().splitlines() if not line.startswith("--")]
        queries[name] = "\n".join(lines).strip().rstrip(";")
    return queries


@cache
def load() -> dict[str, str]:
    return parse(files("tokenpool.db").joinpath("queries.sql").read_text(encoding="utf-8"))


def sql(name: str) -> str:
    return load()[name]
