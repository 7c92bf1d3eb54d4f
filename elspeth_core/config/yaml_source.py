"""Read a settings YAML document into plain data plus the line of every key and list item.

The document is parsed once with ``yaml.SafeLoader``: the composed node tree gives the lines, the
constructed document gives the data. Lines let every later error say ``settings.yaml:7``. This
module must not expand variables, apply overrides or validate: it only parses.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml
from yaml.nodes import MappingNode, Node, ScalarNode, SequenceNode

from elspeth_core.config.paths import KeyPath, format_key_path, key_text
from elspeth_core.errors import ConfigError

LineMap = dict[KeyPath, int]

_BOOL_TAG = "tag:yaml.org,2002:bool"
_MERGE_TAG = "tag:yaml.org,2002:merge"


def read_settings_text(path: Path, file: str) -> str:
    """Read a settings file as UTF-8 text.

    Args:
        path: the file to read.
        file: the name to show in messages (the path as the operator wrote it).

    Returns:
        The file's text.

    Raises:
        ConfigError: the file is missing, unreadable or not UTF-8.
    """
    try:
        return path.read_text(encoding="utf-8")
    except FileNotFoundError as exc:
        raise ConfigError(
            "settings file not found", file=file, hint="Check the path given with -s/--settings."
        ) from exc
    except UnicodeDecodeError as exc:
        raise ConfigError(f"settings file is not UTF-8 text ({exc.reason})", file=file) from exc
    except OSError as exc:
        raise ConfigError(f"cannot read settings file: {exc.strerror or exc}", file=file) from exc


def parse_settings_yaml(text: str, file: str) -> tuple[Any, LineMap]:
    """Parse YAML text into data and a map from key path to 1-based line.

    Args:
        text: the YAML document.
        file: the name to show in messages.

    Returns:
        ``(data, lines)``; ``data`` is ``None`` for an empty document.

    Raises:
        ConfigError: malformed YAML (with the line from the parser's mark), several documents, or
            a key written twice in one mapping.
    """
    loader = yaml.SafeLoader(text)
    lines: LineMap = {}
    try:
        node = loader.get_single_node()
        if node is None:
            return None, lines
        # Lines first: constructing flattens merge keys (<<) in the node tree in place.
        _record_lines(node, (), lines, file, set())
        return loader.construct_document(node), lines
    except yaml.MarkedYAMLError as exc:
        raise _yaml_error(exc, file) from exc
    except yaml.YAMLError as exc:
        raise ConfigError(f"invalid YAML: {_one_line(str(exc))}", file=file) from exc
    finally:
        loader.dispose()


def _yaml_error(exc: yaml.MarkedYAMLError, file: str) -> ConfigError:
    mark = exc.problem_mark or exc.context_mark
    reason = exc.problem or "cannot parse"
    if exc.context:
        reason = f"{reason} ({exc.context})"
    line = mark.line + 1 if mark is not None else None
    return ConfigError(f"invalid YAML: {_one_line(reason)}", file=file, line=line)


def _one_line(text: str) -> str:
    return " ".join(text.split())


def _record_lines(node: Node, path: KeyPath, lines: LineMap, file: str, active: set[int]) -> None:
    if id(node) in active:  # a recursive alias; validation reports the data, not us
        return
    active.add(id(node))
    if isinstance(node, MappingNode):
        _record_mapping(node, path, lines, file, active)
    elif isinstance(node, SequenceNode):
        for index, item in enumerate(node.value):
            lines[(*path, index)] = item.start_mark.line + 1
            _record_lines(item, (*path, index), lines, file, active)
    active.discard(id(node))


def _record_mapping(
    node: MappingNode, path: KeyPath, lines: LineMap, file: str, active: set[int]
) -> None:
    seen: set[str] = set()
    for key_node, value_node in node.value:
        if not isinstance(key_node, ScalarNode) or key_node.tag == _MERGE_TAG:
            continue
        key = _scalar_key(key_node)
        line = key_node.start_mark.line + 1
        if key in seen:
            raise ConfigError(
                "key is written twice in the same mapping",
                file=file,
                key=format_key_path((*path, key)),
                line=line,
            )
        seen.add(key)
        lines[(*path, key)] = line
        _record_lines(value_node, (*path, key), lines, file, active)


def _scalar_key(node: ScalarNode) -> str:
    if node.tag == _BOOL_TAG:
        return key_text(yaml.SafeLoader.bool_values[node.value.lower()])
    return node.value
