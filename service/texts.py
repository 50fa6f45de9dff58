"""What a stored string or number may be: Postgres text holds no NUL or lone surrogate, JSON no
infinity. Checked on every submitted spec and on query texts."""

from __future__ import annotations

import math
from typing import Any

from service.errors import SpecValidationError


def check_strings(data: Any, max_length: int, max_depth: int = 64) -> None:
    """Every key is a string; every string (and key) of the body is at most max_length
    characters, encodable as UTF-8 and free of NUL (which Postgres text cannot hold); numbers
    are finite (1e999 parses as infinity); nesting at most max_depth."""
    errors: list[tuple[str, str]] = []
    stack: list[tuple[Any, list[str]]] = [(data, [])]
    while stack and len(errors) < 20:
        value, path = stack.pop()
        if len(path) > max_depth:
            errors.append((".".join(path), f"nested deeper than {max_depth} levels"))
            continue
        if isinstance(value, dict):
            for k, v in value.items():
                if not isinstance(k, str):
                    # YAML (the dashboard's form) may have numbers, booleans or dates as keys
                    errors.append((".".join([*path, str(k)[:32]]), "this key is not text; quote it"))
                    continue
                if (msg := _bad_string(k, max_length)) is not None:
                    errors.append((".".join(path), f"key {k[:32]!r}…: {msg}"))
                    continue
                stack.append((v, [*path, k]))
        elif isinstance(value, list):
            for i, v in enumerate(value):
                stack.append((v, [*path, str(i)]))
        elif isinstance(value, str) and (msg := _bad_string(value, max_length)) is not None:
            errors.append((".".join(path), msg))
        elif isinstance(value, float) and not math.isfinite(value):
            errors.append((".".join(path), "number out of range"))
    if errors:
        raise SpecValidationError(errors, "string_invalid")


def _bad_string(value: str, max_length: int) -> str | None:
    if len(value) > max_length:
        return f"string longer than {max_length} characters"
    if "\x00" in value:
        return "string contains a NUL character"
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        return "string is not valid Unicode (lone surrogate)"
    return None


def safe_text(value: str, max_length: int = 256) -> bool:
    return len(value) <= max_length and _bad_string(value, max_length) is None
