"""Load pipeline settings from a YAML file or an inline mapping, ready to run.

The steps are always the same and in this order: read, parse (keeping lines), expand ``${VAR}``,
apply ``ELSPETH_<SECTION>__<KEY>`` overrides, validate with the models. Every failure is one
:class:`~elspeth_core.errors.ConfigError` naming the file, the dotted key and the line.

Overrides are applied by hand rather than through pydantic-settings' ``env_nested_delimiter``
because they must land on list items and named sinks, keep YAML scalar typing, and be reported as
coming from a variable instead of a line of the file.

This module must not import SQLAlchemy or Prefect and must not look at the pipeline graph.
"""

from __future__ import annotations

import copy
import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pydantic import ValidationError

from elspeth_core.config.environment import apply_env_overrides, expand_variables
from elspeth_core.config.models import ElspethSettings, SettingsProblems, settings_model_at
from elspeth_core.config.paths import KeyPath, format_key_path, line_of
from elspeth_core.config.yaml_source import parse_settings_yaml, read_settings_text
from elspeth_core.errors import ConfigError

_MAX_SHOWN_INPUT = 60


@dataclass(frozen=True)
class LoadedSettings:
    """Validated settings and where they came from.

    Attributes:
        settings: the validated, frozen settings.
        path: the file they were read from (``Path(source_name)`` for inline settings).
        raw: the plain mapping that was validated, after expansion and overrides.
    """

    settings: ElspethSettings
    path: Path
    raw: dict[str, Any]


@dataclass(frozen=True)
class _Problem:
    path: KeyPath
    reason: str


def load_settings(path: str | Path, *, environ: Mapping[str, str] | None = None) -> LoadedSettings:
    """Read, expand, override and validate a settings YAML file.

    Args:
        path: the settings file; messages name it as given.
        environ: the environment for ``${VAR}`` and overrides; ``os.environ`` when omitted.

    Returns:
        The validated settings with the file's path and the mapping that was validated.

    Raises:
        ConfigError: the file is missing or malformed, a variable is unset, an override names an
            unknown key, or the settings are invalid (all problems in one error).
    """
    file = str(path)
    text = read_settings_text(Path(path), file)
    data, lines = parse_settings_yaml(text, file)
    if data is None:
        raise ConfigError("settings file is empty", file=file)
    return _load(data, lines, file, Path(path), environ)


def load_settings_from_dict(
    data: Mapping[str, Any],
    source_name: str = "<inline>",
    *,
    environ: Mapping[str, str] | None = None,
) -> LoadedSettings:
    """Expand, override and validate settings given as a mapping (inline flow parameters).

    Args:
        data: settings in the same shape as the YAML file; not changed.
        source_name: the name messages show in place of a file name.
        environ: the environment for ``${VAR}`` and overrides; ``os.environ`` when omitted.

    Returns:
        The validated settings, ``Path(source_name)`` and the mapping that was validated.

    Raises:
        ConfigError: as :func:`load_settings`, without line numbers.
    """
    return _load(copy.deepcopy(data), {}, source_name, Path(source_name), environ)


def _load(
    data: Any,
    lines: Mapping[KeyPath, int],
    file: str,
    path: Path,
    environ: Mapping[str, str] | None,
) -> LoadedSettings:
    if not isinstance(data, Mapping):
        raise ConfigError(
            f"settings must be a mapping of sections, not {type(data).__name__}", file=file, line=1
        )
    env = os.environ if environ is None else environ
    raw = expand_variables(dict(data), env, file=file, lines=lines)
    overridden = apply_env_overrides(raw, env, file=file)
    try:
        settings = ElspethSettings.model_validate(raw)
    except ValidationError as exc:
        raise _validation_error(exc, file, lines, overridden) from exc
    return LoadedSettings(settings=settings, path=path, raw=raw)


def _validation_error(
    exc: ValidationError,
    file: str,
    lines: Mapping[KeyPath, int],
    overridden: Mapping[KeyPath, str],
) -> ConfigError:
    problems = [problem for error in exc.errors() for problem in _problems(error)]
    # File order reads best; problems without a line (missing sections, overrides) come last.
    problems.sort(key=lambda p: _line(p, lines, overridden) or float("inf"))
    first = problems[0]
    key = format_key_path(first.path) or None
    line = _line(first, lines, overridden)
    reason = first.reason
    if first.path in overridden:
        reason += f" (set by {overridden[first.path]})"
    if len(problems) > 1:
        listed = "\n".join(f"  - {_describe(p, lines, overridden)}" for p in problems)
        reason += f"\n{len(problems)} problems in all:\n{listed}"
    return ConfigError(reason, file=file, key=key, line=line)


def _line(
    problem: _Problem, lines: Mapping[KeyPath, int], overridden: Mapping[KeyPath, str]
) -> int | None:
    """The file line of a problem; none for a value an override set (the file does not hold it)."""
    return None if problem.path in overridden else line_of(lines, problem.path)


def _describe(
    problem: _Problem, lines: Mapping[KeyPath, int], overridden: Mapping[KeyPath, str]
) -> str:
    key = format_key_path(problem.path) or "(settings)"
    if problem.path in overridden:
        return f"{key} (set by {overridden[problem.path]}): {problem.reason}"
    line = _line(problem, lines, overridden)
    return f"{key} (line {line}): {problem.reason}" if line else f"{key}: {problem.reason}"


def _problems(error: Any) -> list[_Problem]:
    loc: KeyPath = tuple(error["loc"])
    cause = error.get("ctx", {}).get("error")
    if isinstance(cause, SettingsProblems):
        return [_Problem((*loc, *sub), reason) for sub, reason in cause.problems]
    return [_Problem(loc, _reason(error, loc))]


def _reason(error: Any, loc: KeyPath) -> str:
    kind = error["type"]
    if kind == "extra_forbidden":
        model = settings_model_at(loc[:-1])
        allowed = f" (allowed: {', '.join(model.model_fields)})" if model else ""
        return f"unknown key{allowed}"
    if kind == "missing":
        return "required key is missing"
    message = str(error["msg"]).removeprefix("Value error, ")
    return f"{message}{_shown_input(error.get('input'))}"


def _shown_input(value: Any) -> str:
    if value is not None and not isinstance(value, str | int | float | bool):
        return ""
    shown = repr(value)
    if len(shown) > _MAX_SHOWN_INPUT:
        shown = shown[: _MAX_SHOWN_INPUT - 3] + "..."
    return f" (got {shown})"
