"""Example tables for the gate/trigger expression evaluator: what it accepts, what it refuses."""

from __future__ import annotations

import ast
import pickle
import re
from pathlib import Path
from typing import Any

import pytest

from elspeth_core.engine import expressions
from elspeth_core.engine.expressions import (
    TRIGGER_NAMES,
    Expression,
    ExpressionEvaluationError,
    validate_expression,
)
from elspeth_core.errors import ConfigError, ExpressionError, TerminalError

ROW: dict[str, Any] = {
    "amount": 150,
    "status": "ok",
    "x": 5,
    "name": "Ada",
    "tags": ["a", "b"],
    "nested": {"inner": {"deep": 7}, "n": None},
    "zero": 0,
    "empty": "",
    "none": None,
    "price": 2.5,
}

ALLOWED: list[tuple[str, Any]] = [
    # subscripts, get, literals
    ("row['amount']", 150),
    ("row['tags'][1]", "b"),
    ("row['tags'][-1]", "b"),
    ("row['nested']['inner']['deep']", 7),
    ("row[row['status'] + '_missing' if False else 'name']", "Ada"),
    ("row.get('status')", "ok"),
    ("row.get('missing')", None),
    ("row.get('missing', 42)", 42),
    ("row.get('missing', [1, 2])", [1, 2]),
    ("row['nested'].get('n', 'dflt')", None),
    ("row['nested'].get('absent', 'dflt')", "dflt"),
    ("row['nested']['inner'].get('deep')", 7),
    ("None", None),
    ("True", True),
    ("'text'", "text"),
    ("1.5", 1.5),
    ("(1, 'a', None)", (1, "a", None)),
    ("[1, 2][0]", 1),
    ("{'k': row['x']}", {"k": 5}),
    ("{1, 2, 2}", {1, 2}),
    ("-3", -3),
    # comparisons, chained comparisons, membership, identity
    ("row['amount'] > 100", True),
    ("row['amount'] <= 100", False),
    ("row['status'] == 'ok'", True),
    ("row['status'] != 'ok'", False),
    ("0 < row['x'] <= 10", True),
    ("0 < row['x'] <= 4", False),
    ("10 > row['x'] > 5", False),
    ("1 < 2 < 3 < 4 < 5", True),
    ("row['status'] in ('ok', 'fine')", True),
    ("row['status'] in ['ok', 'fine']", True),
    ("row['status'] in {'ok', 'fine'}", True),
    ("row['status'] not in {'ok', 'fine'}", False),
    ("'a' in row['tags']", True),
    ("'amount' in row", True),
    ("'d' in row['name']", True),
    ("row['x'] in (row['zero'], row['x'])", True),
    ("row['none'] is None", True),
    ("row['x'] is not None", True),
    ("None is row.get('missing')", True),
    ("(row['x'] > 1) is True", True),
    # boolean logic with Python's short-circuit semantics (values, not just bools)
    ("row.get('missing') is not None and row['missing'] > 1", False),
    ("row.get('x') is not None and row['x'] > 1", True),
    ("row['amount'] > 100 and row.get('status') == 'ok'", True),
    ("row['zero'] or 'fallback'", "fallback"),
    ("row['empty'] or 'default'", "default"),
    ("row['name'] and row['x']", 5),
    ("row['zero'] and row['missing']", 0),
    ("True or row['missing']", True),
    ("not row['empty']", True),
    ("not (row['x'] > 1 and row['x'] < 3)", True),
    # arithmetic
    ("row['x'] + 1", 6),
    ("row['x'] - 10", -5),
    ("row['x'] * row['price']", 12.5),
    ("row['x'] / 2", 2.5),
    ("row['x'] // 2", 2),
    ("row['x'] % 3", 2),
    ("-row['x']", -5),
    ("+row['x']", 5),
    ("row['x'] ** 2", 25),
    ("2 ** -1", 0.5),
    ("row['price'] ** 0.5 > 1.5", True),
    ("row['amount'] * 1.1 > 160", True),
    ("row['name'] + '!'", "Ada!"),
    ("row['tags'] + ['c']", ["a", "b", "c"]),
    ("'ab' * 3", "ababab"),
    ("(row['x'] + 1) * 2 - 3 // 2", 11),
    # ternary
    ("'big' if row['amount'] > 100 else 'small'", "big"),
    ("row['missing'] if False else 'safe'", "safe"),
    ("'a' if row['zero'] else 'b' if row['x'] else 'c'", "b"),
    # surrounding whitespace and multi-line text
    ("  row['x'] > 1\n", True),
    ("(row['x'] > 1\n and row['status'] == 'ok')", True),
]


@pytest.mark.parametrize(("source", "expected"), ALLOWED)
def test_allowed_expressions_evaluate_like_python(source: str, expected: Any) -> None:
    result = Expression.parse(source).evaluate({"row": ROW})
    assert result == expected
    assert type(result) is type(expected)


# (source, 1-based column of the offending construct, words the message must contain)
ESCAPES: list[tuple[str, int, str]] = [
    ("__import__('os').system('id')", 1, "method calls other than .get(...) are not allowed"),
    ("__import__('os')", 1, "function calls are not allowed: __import__(...)"),
    ("open('/etc/passwd')", 1, "function calls are not allowed: open(...)"),
    ("row['amount'] > 1 and open('x')", 23, "function calls are not allowed: open(...)"),
    ("row.__class__", 1, "attribute access is not allowed: row.__class__"),
    ("row['a'] == row.__class__", 13, "attribute access is not allowed"),
    ("().__class__.__bases__[0].__subclasses__()", 1, "method calls other than .get"),
    ("().__class__.__bases__[0]", 1, "attribute access is not allowed"),
    ("[x for x in row]", 1, "comprehensions are not allowed"),
    ("row['a'] in (x for x in row)", 13, "generator expressions are not allowed"),
    ("lambda: 1", 1, "lambda functions are not allowed"),
    ("(y := 1)", 2, "assignment expressions (:=) are not allowed"),
    ('f"{row}"', 1, "f-strings are not allowed"),
    (
        "row['a'].upper()",
        1,
        "method calls other than .get(...) are not allowed: row['a'].upper(...)",
    ),
    ("getattr(row, 'x')", 1, "function calls are not allowed: getattr(...)"),
    ("len(row)", 1, "function calls are not allowed: len(...)"),
    ("2 ** 10000000", 6, "the exponent of ** must be at most 100"),
    ("row['x'] ** row['y']", 13, "the exponent of ** must be a number constant"),
    ("__builtins__", 1, "names starting with '_' are not allowed: __builtins__"),
    ("_x", 1, "names starting with '_' are not allowed: _x"),
    ("row['a'] + os", 12, "unknown name (allowed: row): os"),
    ("import os", 1, "syntax error"),
    ("row['a']; row['b']", 9, "syntax error"),
    ("row['a'] = 1", 10, "syntax error"),
    ("row[1:2]", 5, "slices are not allowed"),
    ("[*row]", 2, "starred expressions are not allowed"),
    ("{**row}", 4, "dict unpacking (**) is not allowed"),
    ("row['a'] << 2", 1, "operator '<<' is not allowed"),
    ("~row['a']", 1, "operator '~' is not allowed"),
    ("row['a'] | 1", 1, "operator '|' is not allowed"),
    ("b'x'", 1, "bytes literals are not allowed"),
    ("1j", 1, "complex literals are not allowed"),
    ("...", 1, "'...' is not allowed"),
    ("row['a'] is 'x'", 13, "'is' / 'is not' may only compare with None, True or False"),
    ("row.get(key='a')", 1, ".get takes a key and an optional default"),
    ("row.get('a', 1, 2)", 1, ".get takes a key and an optional default"),
    ("(1).get('a')", 1, ".get(...) is only allowed on a variable or a subscript"),
    ("row.get('a').get('b')", 1, ".get(...) is only allowed on a variable or a subscript"),
    ("await row", 1, "await is not allowed"),
    ("(yield row)", 2, "yield is not allowed"),
    ("row['é'] > 1 and open('x')", 18, "function calls are not allowed"),
    ("(row['a'] +\n  open(1))", 3, "function calls are not allowed"),
    ("(\n row['a'] +\n  row.x)", 3, "attribute access is not allowed: row.x"),
]


@pytest.mark.parametrize(("source", "column", "words"), ESCAPES)
def test_escape_attempts_are_rejected_at_parse_time_with_position(
    source: str, column: int, words: str
) -> None:
    with pytest.raises(ExpressionError) as caught:
        Expression.parse(source)
    message = str(caught.value)
    assert re.match(rf"line \d+, column {column}: ", message), message
    assert words in message
    assert f"(in expression {source.strip()!r})" in message
    assert caught.value.hint


def test_position_reports_the_line_of_a_multiline_expression() -> None:
    with pytest.raises(ExpressionError, match=r"^line 3, column 3: function calls"):
        Expression.parse("(\n row['a'] +\n  open(1))")


def test_expression_error_is_a_config_error() -> None:
    with pytest.raises(ConfigError):
        Expression.parse("open('x')")


@pytest.mark.parametrize("source", ["", "   ", "\n"])
def test_empty_expression_is_rejected(source: str) -> None:
    with pytest.raises(ExpressionError, match="expression is empty"):
        Expression.parse(source)


@pytest.mark.parametrize(
    ("source", "words"),
    [
        ("-" * 500 + "1", "nested more than 100 levels deep"),
        ("-" * 100_000 + "1", "longer than"),
        ("row['a'] \x00", "null bytes"),
    ],
)
def test_pathological_text_is_rejected_cleanly(source: str, words: str) -> None:
    with pytest.raises(ExpressionError, match=words):
        Expression.parse(source)


def test_parser_recursion_limit_becomes_an_expression_error() -> None:
    with pytest.raises(ExpressionError, match="nested"):
        Expression.parse("-" * 9_000 + "1")


def test_names_are_an_allowlist() -> None:
    trigger = Expression.parse(
        "batch_count >= 3 or batch_age_seconds > 1.5 or row['x'] > 9", names=TRIGGER_NAMES
    )
    assert trigger.evaluate({"row": {"x": 1}, "batch_count": 3, "batch_age_seconds": 0.0}) is True
    assert trigger.evaluate({"row": {"x": 1}, "batch_count": 1, "batch_age_seconds": 0.0}) is False
    with pytest.raises(ExpressionError, match="unknown name"):
        Expression.parse("batch_count >= 3")


def test_a_name_missing_from_the_environment_is_an_evaluation_error() -> None:
    expression = Expression.parse("batch_count > 1", names=TRIGGER_NAMES)
    with pytest.raises(ExpressionEvaluationError, match="variable 'batch_count' was not provided"):
        expression.evaluate({"row": {}})


# (source, row, exact message)
RUNTIME_ERRORS: list[tuple[str, dict[str, Any], str]] = [
    ("row['amount'] > 100", {}, "row['amount'] > 100: field 'amount' is missing"),
    ("row['a']['b']", {"a": {}}, "row['a']['b']: key 'b' is missing in row['a']"),
    ("row['a'][3]", {"a": [1]}, "row['a'][3]: index 3 is out of range for row['a'] (length 1)"),
    (
        "row['a']['b']",
        {"a": None},
        "row['a']['b']: cannot subscript NoneType row['a'] with a str key",
    ),
    ("row['a'] < 1", {"a": "x"}, "row['a'] < 1: '<' is not supported between str and int"),
    ("0 < row['a'] < 1", {"a": "x"}, "0 < row['a'] < 1: '<' is not supported between int and str"),
    ("row['a'] in 5", {"a": 1}, "row['a'] in 5: 'in' is not supported between int and int"),
    ("row['a'] / 0", {"a": 1}, "row['a'] / 0: division by zero"),
    ("1 + row['a'] // 0", {"a": 1}, "1 + row['a'] // 0: division by zero (in row['a'] // 0)"),
    ("row['a'] % 0", {"a": 1}, "row['a'] % 0: division by zero"),
    ("row['a'] + 1", {"a": "x"}, "row['a'] + 1: unsupported operand types for '+': str and int"),
    ("-row['a']", {"a": "x"}, "-row['a']: bad operand type for unary -: str"),
    ("row['a'] ** 2", {"a": "x"}, "row['a'] ** 2: unsupported operand type for '**': str"),
    (
        "row['a'].get('b')",
        {"a": 3},
        "row['a'].get('b'): .get(...) needs a mapping, got int (in row['a'])",
    ),
    ("row.get(row['k'])", {"k": [1]}, "row.get(row['k']): unusable key of type list"),
    ("{row['k']}", {"k": [1]}, "{row['k']}: set elements must be hashable"),
    ("{row['k']: 1}", {"k": [1]}, "{row['k']: 1}: dict keys must be hashable"),
]


@pytest.mark.parametrize(("source", "row", "message"), RUNTIME_ERRORS)
def test_runtime_errors_name_the_expression_and_the_failure(
    source: str, row: dict[str, Any], message: str
) -> None:
    with pytest.raises(ExpressionEvaluationError) as caught:
        Expression.parse(source).evaluate({"row": row})
    assert str(caught.value) == message
    assert caught.value.expression == source
    assert isinstance(caught.value, TerminalError)
    assert not isinstance(caught.value, KeyError | TypeError)


@pytest.mark.parametrize(
    ("source", "words"),
    [
        ("'a' * 10**9", "result would have 1000000000 items (at most 1000000)"),
        ("10**9 * [0]", "at most 1000000"),
        ("row['s'] * 600000", "at most 1000000"),
        ("'a' * 999999 + 'bb'", "result would have 1000001 items"),
        ("'%0999999999d' % 1", "string formatting with '%' is not allowed"),
        ("((2 ** 100) ** 100) ** 100", "bits (at most 100000)"),
        ("(-8) ** 0.5", "would give a complex number"),
        ("1e300 ** 2", "numeric overflow in '**'"),
        ("(10 ** 100) ** 100 / 3", "numeric overflow in '/'"),
    ],
)
def test_runtime_guards_refuse_huge_or_odd_results(source: str, words: str) -> None:
    expression = Expression.parse(source)
    with pytest.raises(ExpressionEvaluationError, match=re.escape(words)):
        expression.evaluate({"row": {"s": "ab"}})


def test_parse_error_names_syntax_errors_with_position() -> None:
    with pytest.raises(ExpressionError, match=r"^line 1, column 11: syntax error"):
        Expression.parse("row['a'] >")


def test_expressions_are_immutable_hashable_reusable_and_picklable() -> None:
    expression = Expression.parse("row['x'] > 1")
    with pytest.raises(AttributeError):
        expression.source = "True"  # type: ignore[misc]
    assert expression == Expression.parse(" row['x'] > 1 ")
    assert hash(expression) == hash(Expression.parse("row['x'] > 1"))
    assert expression != Expression.parse("row['x'] > 1", names=TRIGGER_NAMES)
    assert [expression.evaluate({"row": {"x": x}}) for x in (0, 2, 1, 3)] == [
        False,
        True,
        False,
        True,
    ]
    clone = pickle.loads(pickle.dumps(expression))
    assert clone == expression and clone.evaluate({"row": {"x": 2}}) is True
    assert repr(expression) == "Expression(\"row['x'] > 1\")"


def test_evaluation_error_survives_pickling() -> None:
    error = ExpressionEvaluationError("row['a'] > 1", "field 'a' is missing")
    clone = pickle.loads(pickle.dumps(error))
    assert (clone.expression, clone.detail, str(clone)) == (
        error.expression,
        error.detail,
        str(error),
    )


def test_get_default_is_a_fresh_value_each_time() -> None:
    expression = Expression.parse("row.get('tags', [])")
    first = expression.evaluate({"row": {}})
    first.append("mutated")
    assert expression.evaluate({"row": {}}) == []


def test_validate_expression() -> None:
    assert validate_expression("row['a'] > 1") is None
    with pytest.raises(ExpressionError, match="column 1: function calls"):
        validate_expression("open('x')")
    validate_expression("batch_count > 1", names=TRIGGER_NAMES)


def test_module_never_uses_dynamic_code_or_getattr() -> None:
    tree = ast.parse(Path(expressions.__file__).read_text(encoding="utf-8"))
    called = {
        node.func.id
        for node in ast.walk(tree)
        if isinstance(node, ast.Call) and isinstance(node.func, ast.Name)
    }
    assert not called & {"eval", "exec", "compile", "getattr", "__import__", "setattr"}


def test_evaluation_does_not_revisit_the_syntax_tree(monkeypatch: pytest.MonkeyPatch) -> None:
    expression = Expression.parse("row['amount'] > 100 and row.get('status') == 'ok'")

    def forbidden(*args: Any, **kwargs: Any) -> None:
        raise AssertionError("evaluation touched the ast module")

    monkeypatch.setattr(ast, "parse", forbidden)
    monkeypatch.setattr(ast, "walk", forbidden)
    monkeypatch.setattr(ast, "get_source_segment", forbidden)
    assert expression.evaluate({"row": {"amount": 101, "status": "ok"}}) is True
