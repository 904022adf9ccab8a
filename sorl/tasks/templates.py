"""Prompt templates with ``{name}`` placeholders, filled in one pass and checked when a task is built."""

from __future__ import annotations

import re

_PLACEHOLDER_RE = re.compile(r"\{([A-Za-z_]+)\}")


def fill(template: str, **values: str) -> str:
    """``template`` with ``{name}`` placeholders replaced in one pass (a value's own braces stay)."""
    return _PLACEHOLDER_RE.sub(lambda m: values[m.group(1)] if m.group(1) in values else m.group(0), template)


def check_template(name: str, template: str, required: set[str], allowed: set[str]) -> None:
    found = set(_PLACEHOLDER_RE.findall(template)) & (allowed | {"gold", "answer", "solution"})
    if not required <= found:
        raise ValueError(f"{name} must contain {sorted('{' + r + '}' for r in required)}: {template!r}")
    if found - allowed:
        raise ValueError(f"{name} may only use {sorted('{' + a + '}' for a in allowed)}, found {sorted(found - allowed)}")

