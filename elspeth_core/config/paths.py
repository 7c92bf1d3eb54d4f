"""Key paths into a settings document and how they are written in messages.

A key path is a tuple of mapping keys (``str``) and sequence indices (``int``), for example
``("gates", 0, "condition")``; messages render it as ``gates[0].condition``. This module is pure
data handling: it must not read files or the environment.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

KeyPath = tuple[str | int, ...]


def format_key_path(path: KeyPath) -> str:
    """Render a key path the way every settings message writes it.

    Args:
        path: mapping keys and sequence indices from the document root.

    Returns:
        ``gates[0].routes.true`` style text; ``""`` for the root.
    """
    text = ""
    for element in path:
        if isinstance(element, int) and not isinstance(element, bool):
            text += f"[{element}]"
        else:
            text += f".{element}" if text else str(element)
    return text


def key_text(key: Any) -> str:
    """Turn a mapping key as YAML constructs it into the string settings use.

    YAML 1.1 reads unquoted ``true``/``yes``/``on`` as booleans, so ``routes: {true: out}`` has a
    boolean key; settings keys are strings, so booleans become ``"true"``/``"false"``.

    Args:
        key: a constructed mapping key.

    Returns:
        The key as a string.
    """
    if isinstance(key, bool):
        return "true" if key else "false"
    return key if isinstance(key, str) else str(key)


def line_of(lines: Mapping[KeyPath, int], path: KeyPath) -> int | None:
    """The line of ``path``, or of its nearest ancestor that has one (a missing key's parent).

    Args:
        lines: key path to 1-based line, as the YAML reader records it.
        path: the key path to place.

    Returns:
        A 1-based line, or ``None`` when nothing on the path has a line (inline settings).
    """
    for end in range(len(path), 0, -1):
        line = lines.get(path[:end])
        if line is not None:
            return line
    return None
