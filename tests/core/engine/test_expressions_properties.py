"""Property tests for the expression evaluator: Python as an oracle, fuzzed text, forbidden ASTs.

Python's own ``eval`` appears here only as a test oracle over generated text that is safe by
construction (int literals, ``row['k']`` fields and operators), with empty builtins.
"""

from __future__ import annotations

import ast
import contextlib
import math
import random
import warnings
from typing import Any

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from elspeth_core.engine.expressions import Expression, ExpressionEvaluationError
from elspeth_core.errors import ExpressionError

FIELDS = ("a", "b", "c")

# The allowlist, stated independently of the module so that a drift there fails here.
ALLOWED_NODES: frozenset[type[ast.AST]] = frozenset(
    {
        ast.Expression,
        ast.Constant,
        ast.Name,
        ast.Load,
        ast.Subscript,
        ast.Call,
        ast.Attribute,
        ast.Compare,
        ast.BoolOp,
        ast.UnaryOp,
        ast.BinOp,
        ast.IfExp,
        ast.Tuple,
        ast.List,
        ast.Set,
        ast.Dict,
        *(ast.Eq, ast.NotEq, ast.Lt, ast.LtE, ast.Gt, ast.GtE),
        *(ast.In, ast.NotIn, ast.Is, ast.IsNot),
        *(ast.And, ast.Or, ast.Not, ast.USub, ast.UAdd),
        *(ast.Add, ast.Sub, ast.Mult, ast.Div, ast.FloorDiv, ast.Mod, ast.Pow),
    }
)

# --- (1) generated safe expressions evaluate exactly like Python ---------------------------------

leaves = st.one_of(
    st.integers(-50, 50).map(lambda n: f"({n})"),
    st.sampled_from([f"row[{k!r}]" for k in FIELDS]),
    st.sampled_from(["True", "False", "None"]),
    st.sampled_from([f"row.get({k!r})" for k in (*FIELDS, "zz")]),
)


def _combine(children: st.SearchStrategy[str]) -> st.SearchStrategy[str]:
    binary = st.sampled_from(["+", "-", "*", "/", "//", "%", "<", "<=", ">", ">=", "==", "!="])
    return st.one_of(
        st.tuples(children, binary, children).map(lambda t: f"({t[0]} {t[1]} {t[2]})"),
        st.tuples(children, st.sampled_from(["and", "or"]), children).map(
            lambda t: f"({t[0]} {t[1]} {t[2]})"
        ),
        children.map(lambda c: f"(not {c})"),
        children.map(lambda c: f"(-{c})"),
        st.tuples(leaves, st.integers(-2, 3)).map(lambda t: f"({t[0]} ** {t[1]})"),
        st.tuples(children, children, children).map(lambda t: f"({t[0]} if {t[1]} else {t[2]})"),
        st.tuples(children, children, children).map(lambda t: f"({t[0]} < {t[1]} <= {t[2]})"),
        st.tuples(children, st.sampled_from(["in", "not in"]), children, children).map(
            lambda t: f"({t[0]} {t[1]} ({t[2]}, {t[3]}))"
        ),
        st.tuples(children, st.sampled_from(["is", "is not"])).map(
            lambda t: f"({t[0]} {t[1]} None)"
        ),
        st.tuples(st.sampled_from(FIELDS), children).map(lambda t: f"row.get({t[0]!r}, {t[1]})"),
    )


safe_expressions = st.recursive(leaves, _combine, max_leaves=12)
rows = st.fixed_dictionaries({k: st.integers(-20, 20) | st.none() for k in FIELDS})


def _python_oracle(source: str, row: dict[str, Any]) -> tuple[str, Any]:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", SyntaxWarning)  # "is" with a literal, e.g. (0) is None
        code = compile(source, "<oracle>", "eval")
    try:
        return "value", eval(code, {"__builtins__": {}}, {"row": row})  # test oracle only
    except Exception as exc:  # noqa: BLE001 - any Python failure must map to our error
        return "error", type(exc).__name__


def _same(a: Any, b: Any) -> bool:
    if isinstance(a, float) and isinstance(b, float) and math.isnan(a) and math.isnan(b):
        return True
    return type(a) is type(b) and a == b


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(source=safe_expressions, row=rows)
def test_evaluation_matches_python(source: str, row: dict[str, Any]) -> None:
    expression = Expression.parse(source)
    kind, expected = _python_oracle(source, row)
    if kind == "error":
        try:
            expression.evaluate({"row": row})
        except ExpressionEvaluationError:
            return
        raise AssertionError(f"Python raised {expected} but the evaluator did not: {source}")
    assert _same(expression.evaluate({"row": row}), expected), source


# --- (2) arbitrary text: only ExpressionError at parse time; accepted text stays in the allowlist


def _assert_within_allowlist(source: str) -> None:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # e.g. invalid escape sequences in accepted literals
        tree = ast.parse(source, mode="eval")
    get_funcs = {
        id(node.func)
        for node in ast.walk(tree)
        if isinstance(node, ast.Call)
        and isinstance(node.func, ast.Attribute)
        and node.func.attr == "get"
        and isinstance(node.func.value, ast.Name | ast.Subscript)
    }
    for node in ast.walk(tree):
        assert type(node) in ALLOWED_NODES, (source, type(node).__name__)
        if isinstance(node, ast.Call):
            assert id(node.func) in get_funcs, source
        if isinstance(node, ast.Attribute):
            assert id(node) in get_funcs, source
        if isinstance(node, ast.Name):
            assert node.id == "row", source


def _parse_or_reject(source: str) -> Expression | None:
    try:
        return Expression.parse(source)
    except ExpressionError:
        return None


expression_alphabet = st.sampled_from(
    list("row[]'\"ab01239 +-*/%()<>=!.,:;_{}\\\n\t")
    + ["get", "in", "not", "and", "if", "else"]
    + ["is", "None", "True", "lambda", "__class__", "open", "**", "//", "é", "\x00", "f'", "{x}"]
)


@settings(max_examples=600, deadline=None)
@given(source=st.text() | st.lists(expression_alphabet, max_size=30).map("".join))
def test_random_text_fails_only_with_expression_error(source: str) -> None:
    expression = _parse_or_reject(source)
    if expression is None:
        return
    _assert_within_allowlist(expression.source)
    with contextlib.suppress(ExpressionEvaluationError):
        expression.evaluate({"row": {"a": 1, "b": "x", 0: [1, 2]}})


# --- (3) a forbidden node spliced into a safe AST is always rejected ------------------------------

FORBIDDEN_SNIPPETS = [
    "open('/etc/passwd')",
    "__import__('os')",
    "len(row)",
    "row.__class__",
    "row['a'].upper()",
    "().__class__.__bases__",
    "row.get('a').get('b')",
    "row.get(key='a')",
    "lambda: 1",
    "[x for x in row]",
    "{x for x in row}",
    "{x: 1 for x in row}",
    "(x for x in row)",
    "(y := 1)",
    "f'{row}'",
    "row[1:2]",
    "[*row]",
    "{**row}",
    "_x",
    "__builtins__",
    "os",
    "1 << 2",
    "1 | 2",
    "~1",
    "1 @ 2",
    "b'x'",
    "1j",
    "...",
    "2 ** row['a']",
    "2 ** 1000",
    "row['a'] is 'x'",
    "await row",
    "(yield)",
]


def _slots(tree: ast.AST) -> list[tuple[ast.AST, str, int | None]]:
    """Every place in ``tree`` that holds an expression: (parent, field, index in a list)."""
    found: list[tuple[ast.AST, str, int | None]] = []
    for parent in ast.walk(tree):
        for field, value in ast.iter_fields(parent):
            if isinstance(value, ast.expr):
                found.append((parent, field, None))
            elif isinstance(value, list):
                found.extend(
                    (parent, field, i) for i, item in enumerate(value) if isinstance(item, ast.expr)
                )
    return found


@settings(max_examples=400, deadline=None)
@given(
    source=safe_expressions,
    snippet=st.sampled_from(FORBIDDEN_SNIPPETS),
    seed=st.integers(0, 2**32 - 1),
)
def test_forbidden_nodes_inserted_anywhere_are_rejected(
    source: str, snippet: str, seed: int
) -> None:
    tree = ast.parse(source, mode="eval")
    parent, field, index = random.Random(seed).choice(_slots(tree))
    forbidden = ast.parse(snippet, mode="eval").body
    if index is None:
        setattr(parent, field, forbidden)
    else:
        getattr(parent, field)[index] = forbidden
    mutated = ast.unparse(ast.fix_missing_locations(tree))
    try:
        Expression.parse(mutated)
    except ExpressionError as exc:
        assert str(exc).startswith("line "), str(exc)
    else:
        raise AssertionError(f"accepted a forbidden construct: {mutated}")
