"""Safe gate and trigger expressions: an AST allowlist compiled once into a tree of closures.

A gate condition such as ``row['amount'] > 100 and row.get('status') == 'ok'`` is parsed with
``ast.parse(mode="eval")``, checked node by node against a small allowlist, and turned into nested
Python closures that are cheap to call once per row. Anything outside the allowlist is rejected at
parse time with its line, 1-based column and the expression text, so ``elspeth validate`` can point
at it.

Allowed: the variables passed as ``names`` (``row`` for gates; ``row``, ``batch_count`` and
``batch_age_seconds`` for triggers); ``True``/``False``/``None``; str/int/float literals and
tuple/list/set/dict displays; subscripts ``x[key]``; ``x.get(key)`` and ``x.get(key, default)`` on
a variable or subscript holding a mapping; comparisons (chained too), ``in``/``not in``,
``is``/``is not`` against ``None``/``True``/``False`` only; ``and``/``or``/``not`` with Python's
short-circuit semantics; ``+ - * / // %``, unary ``-``/``+``; ``**`` with a number constant exponent
of at most 100 in absolute value; ``a if cond else b``. Slices are rejected (a deliberate choice: no
gate needs them and they widen the surface). Surrounding whitespace is not part of the expression.

Runtime guards: sequence results (``'a' * n``, ``xs + ys``) over 1,000,000 items, integer powers over
100,000 bits, complex results and ``%`` string formatting raise :class:`ExpressionEvaluationError`
instead of eating memory or time.

This module must not call ``eval``, ``exec``, ``compile`` to code objects or ``getattr`` on
evaluated values, and must import nothing of the project except ``errors``.
"""

from __future__ import annotations

import ast
import operator
import re
import warnings
from collections.abc import Callable, Mapping
from typing import Any, NoReturn

from elspeth_core.errors import ExpressionError, TerminalError

GATE_NAMES: frozenset[str] = frozenset({"row"})
TRIGGER_NAMES: frozenset[str] = frozenset({"row", "batch_count", "batch_age_seconds"})

MAX_SOURCE_LENGTH = 10_000
MAX_DEPTH = 100
MAX_EXPONENT = 100
MAX_SEQUENCE_LENGTH = 1_000_000
MAX_INT_BITS = 100_000

_HINT = (
    "Allowed: row['field'], row.get('field', default), literals, comparisons, in / not in, "
    "and / or / not, + - * / // % **, and 'a if condition else b'."
)
_LINE_BREAK = re.compile(r"\r\n|\r|\n")
_SCALARS = (str, int, float, bool, type(None))
_SEQUENCES = (str, bytes, list, tuple)
_NO_VALUE: Any = object()

_Run = Callable[[Mapping[str, Any]], Any]

_FORBIDDEN: dict[type[ast.AST], str] = {
    ast.Attribute: "attribute access is not allowed",
    ast.Lambda: "lambda functions are not allowed",
    ast.ListComp: "comprehensions are not allowed",
    ast.SetComp: "comprehensions are not allowed",
    ast.DictComp: "comprehensions are not allowed",
    ast.GeneratorExp: "generator expressions are not allowed",
    ast.NamedExpr: "assignment expressions (:=) are not allowed",
    ast.JoinedStr: "f-strings are not allowed",
    ast.FormattedValue: "f-strings are not allowed",
    ast.Starred: "starred expressions are not allowed",
    ast.Slice: "slices are not allowed",
    ast.Await: "await is not allowed",
    ast.Yield: "yield is not allowed",
    ast.YieldFrom: "yield is not allowed",
}
_COMPARE_OPS: dict[type[ast.cmpop], tuple[Callable[[Any, Any], Any], str]] = {
    ast.Eq: (operator.eq, "=="),
    ast.NotEq: (operator.ne, "!="),
    ast.Lt: (operator.lt, "<"),
    ast.LtE: (operator.le, "<="),
    ast.Gt: (operator.gt, ">"),
    ast.GtE: (operator.ge, ">="),
    ast.In: (lambda a, b: a in b, "in"),
    ast.NotIn: (lambda a, b: a not in b, "not in"),
    ast.Is: (operator.is_, "is"),
    ast.IsNot: (operator.is_not, "is not"),
}
_REJECTED_OPERATORS: dict[type[ast.AST], str] = {
    ast.LShift: "<<",
    ast.RShift: ">>",
    ast.BitOr: "|",
    ast.BitXor: "^",
    ast.BitAnd: "&",
    ast.MatMult: "@",
    ast.Invert: "~",
}


class ExpressionEvaluationError(TerminalError):
    """A valid expression failed on one row: a missing field, a type mismatch, division by zero.

    Attributes:
        expression: the expression text.
        detail: what failed, e.g. ``field 'amount' is missing``.
    """

    def __init__(self, expression: str, detail: str) -> None:
        super().__init__(f"{expression}: {detail}", expression=expression)
        self.expression = expression
        self.detail = detail

    def __reduce__(self) -> tuple[Any, ...]:
        return (type(self), (self.expression, self.detail))


class _Refused(Exception):
    """A runtime guard refused an operation; ``args[0]`` says why."""


class Expression:
    """A parsed, validated expression; immutable, hashable, picklable and reusable.

    Build one with :meth:`parse`; call :meth:`evaluate` once per row.
    """

    __slots__ = ("source", "names", "_run")

    source: str
    names: frozenset[str]
    _run: _Run

    def __init__(self, source: str, names: frozenset[str], run: _Run) -> None:
        object.__setattr__(self, "source", source)
        object.__setattr__(self, "names", names)
        object.__setattr__(self, "_run", run)

    @classmethod
    def parse(cls, source: str, *, names: frozenset[str] = GATE_NAMES) -> Expression:
        """Parse and validate ``source``, compiling it for fast evaluation.

        Args:
            source: one Python-syntax expression (surrounding whitespace is dropped).
            names: the variables the expression may use.

        Returns:
            The compiled expression.

        Raises:
            ExpressionError: the text does not parse or uses a construct outside the allowlist; the
                message gives line, 1-based column, the construct and the expression text.
        """
        text = source.strip()
        names = frozenset(names)
        return cls(text, names, _Compiler(text, names).compile_source())

    def evaluate(self, env: Mapping[str, Any]) -> Any:
        """Evaluate against the variables in ``env`` (e.g. ``{"row": {...}}``).

        Raises:
            ExpressionEvaluationError: a field is missing, an operation does not apply to the
                values, or a runtime guard refused a huge result.
        """
        return self._run(env)

    def __setattr__(self, name: str, value: Any) -> NoReturn:
        raise AttributeError(f"{type(self).__name__} is immutable")

    def __delattr__(self, name: str) -> NoReturn:
        raise AttributeError(f"{type(self).__name__} is immutable")

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, Expression):
            return NotImplemented
        return (self.source, self.names) == (other.source, other.names)

    def __hash__(self) -> int:
        return hash((self.source, self.names))

    def __repr__(self) -> str:
        return f"Expression({self.source!r})"

    def __reduce__(self) -> tuple[Any, ...]:
        return (_rebuild, (self.source, self.names))


def _rebuild(source: str, names: frozenset[str]) -> Expression:
    return Expression.parse(source, names=names)


def validate_expression(source: str, *, names: frozenset[str] = GATE_NAMES) -> None:
    """Check ``source`` without keeping the result (for ``elspeth validate``).

    Raises:
        ExpressionError: as :meth:`Expression.parse`.
    """
    Expression.parse(source, names=names)


class _Compiler:
    """Validates one expression's AST and turns each node into a closure ``env -> value``."""

    def __init__(self, source: str, names: frozenset[str]) -> None:
        self.source = source
        self.names = names
        self._lines = _LINE_BREAK.split(source)
        self._handlers: dict[type[ast.AST], Callable[[Any, int], _Run]] = {
            ast.Constant: self._constant,
            ast.Name: self._name,
            ast.Subscript: self._subscript,
            ast.Call: self._call,
            ast.Compare: self._compare,
            ast.BoolOp: self._bool_op,
            ast.UnaryOp: self._unary_op,
            ast.BinOp: self._bin_op,
            ast.IfExp: self._if_exp,
            ast.Tuple: self._sequence,
            ast.List: self._sequence,
            ast.Set: self._sequence,
            ast.Dict: self._dict,
        }

    # -- parse-time ------------------------------------------------------------------------------

    def compile_source(self) -> _Run:
        if not self.source:
            self._raise(None, "expression is empty")
        if len(self.source) > MAX_SOURCE_LENGTH:
            self._raise(None, f"expression is longer than {MAX_SOURCE_LENGTH} characters")
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                tree = ast.parse(self.source, mode="eval")
        except SyntaxError as exc:
            self._raise(self._syntax_error_position(exc), f"syntax error: {exc.msg}")
        except (RecursionError, MemoryError):
            self._raise(None, "expression is nested too deeply to parse")
        except ValueError as exc:
            self._raise(None, f"cannot parse: {exc}")
        return self.compile(tree.body, 0)

    def compile(self, node: ast.expr, depth: int) -> _Run:
        if depth > MAX_DEPTH:
            self._reject(node, f"expression is nested more than {MAX_DEPTH} levels deep")
        handler = self._handlers.get(type(node))
        if handler is None:
            self._reject(node, _FORBIDDEN.get(type(node), f"{type(node).__name__} is not allowed"))
        return handler(node, depth + 1)

    def _reject(self, node: ast.expr, reason: str, snippet: str | None = None) -> NoReturn:
        self._raise(self._position(node), f"{reason}: {snippet or self._segment(node)}")

    def _raise(self, where: tuple[int, int] | None, reason: str) -> NoReturn:
        position = f"line {where[0]}, column {where[1]}: " if where else ""
        raise ExpressionError(f"{position}{reason} (in expression {self.source!r})", hint=_HINT)

    def _position(self, node: ast.expr) -> tuple[int, int]:
        text = self._line(node.lineno)
        prefix = text.encode("utf-8")[: node.col_offset].decode("utf-8", errors="ignore")
        return node.lineno, len(prefix) + 1

    def _syntax_error_position(self, exc: SyntaxError) -> tuple[int, int] | None:
        """SyntaxError columns are 1-based characters already; 0 means "at the end of the line"."""
        if not exc.lineno:
            return None
        return exc.lineno, exc.offset or len(self._line(exc.lineno)) + 1

    def _line(self, number: int) -> str:
        return self._lines[number - 1] if 0 < number <= len(self._lines) else ""

    def _segment(self, node: ast.expr) -> str:
        segment = ast.get_source_segment(self.source, node) or type(node).__name__
        return segment if len(segment) <= 60 else segment[:57] + "..."

    # -- runtime errors --------------------------------------------------------------------------

    def _fail(self, detail: str, node: ast.expr | None = None) -> ExpressionEvaluationError:
        if node is not None:
            segment = self._segment(node)
            if segment != self.source:
                detail = f"{detail} (in {segment})"
        return ExpressionEvaluationError(self.source, detail)

    # -- node handlers ---------------------------------------------------------------------------

    def _constant(self, node: ast.Constant, depth: int) -> _Run:
        value = node.value
        if not isinstance(value, _SCALARS):
            kind = "'...' is" if value is Ellipsis else f"{type(value).__name__} literals are"
            self._reject(node, f"{kind} not allowed")
        return _const(value)

    def _name(self, node: ast.Name, depth: int) -> _Run:
        name = node.id
        if name.startswith("_"):
            self._reject(node, "names starting with '_' are not allowed")
        if name not in self.names:
            self._reject(node, f"unknown name (allowed: {', '.join(sorted(self.names))})")
        fail = self._fail

        def run(env: Mapping[str, Any]) -> Any:
            try:
                return env[name]
            except KeyError:
                raise fail(f"variable {name!r} was not provided") from None

        return run

    def _subscript(self, node: ast.Subscript, depth: int) -> _Run:
        container_of = self.compile(node.value, depth)
        key_of = self.compile(node.slice, depth)
        key = _fold(node.slice)
        lookup_error = self._lookup_error

        if key is not _NO_VALUE:

            def run_constant_key(env: Mapping[str, Any]) -> Any:
                container = container_of(env)
                try:
                    return container[key]
                except (KeyError, IndexError, TypeError) as exc:
                    raise lookup_error(node, container, key, exc) from exc

            return run_constant_key

        def run(env: Mapping[str, Any]) -> Any:
            container = container_of(env)
            dynamic_key = key_of(env)
            try:
                return container[dynamic_key]
            except (KeyError, IndexError, TypeError) as exc:
                raise lookup_error(node, container, dynamic_key, exc) from exc

        return run

    def _lookup_error(
        self, node: ast.Subscript, container: Any, key: Any, exc: Exception
    ) -> ExpressionEvaluationError:
        shown, where = _short(repr(key)), self._segment(node.value)
        if isinstance(exc, KeyError) and isinstance(node.value, ast.Name):
            return self._fail(f"field {shown} is missing")
        if isinstance(exc, KeyError):
            return self._fail(f"key {shown} is missing in {where}")
        if isinstance(exc, IndexError):
            return self._fail(
                f"index {shown} is out of range for {where} (length {len(container)})"
            )
        kinds = f"{type(container).__name__} {where} with a {type(key).__name__} key"
        return self._fail(f"cannot subscript {kinds}")

    def _call(self, node: ast.Call, depth: int) -> _Run:
        func = node.func
        called = f"{self._segment(func)}(...)"
        if not isinstance(func, ast.Attribute):
            self._reject(node, "function calls are not allowed", called)
        if func.attr != "get":
            self._reject(node, "method calls other than .get(...) are not allowed", called)
        if not isinstance(func.value, ast.Name | ast.Subscript):
            self._reject(node, ".get(...) is only allowed on a variable or a subscript", called)
        if node.keywords or not 1 <= len(node.args) <= 2:
            self._reject(node, ".get takes a key and an optional default, positionally", called)
        receiver_of = self.compile(func.value, depth)
        key_of = self.compile(node.args[0], depth)
        default_of = self.compile(node.args[1], depth) if len(node.args) == 2 else _const(None)
        fail = self._fail

        def run(env: Mapping[str, Any]) -> Any:
            mapping = receiver_of(env)
            if type(mapping) is not dict and not isinstance(mapping, Mapping):
                kind = type(mapping).__name__
                raise fail(f".get(...) needs a mapping, got {kind}", func.value)
            key = key_of(env)
            try:
                return mapping.get(key, default_of(env))
            except TypeError as exc:
                raise fail(f"unusable key of type {type(key).__name__}", node) from exc

        return run

    def _compare(self, node: ast.Compare, depth: int) -> _Run:
        left_of = self.compile(node.left, depth)
        steps = []
        operands = [node.left, *node.comparators]
        for index, (op, right) in enumerate(zip(node.ops, node.comparators, strict=True)):
            if isinstance(op, ast.Is | ast.IsNot):
                self._check_identity(operands[index], right)
            func, symbol = _COMPARE_OPS[type(op)]
            steps.append((func, symbol, self._comparand(op, right, depth)))
        compare_error = self._compare_error
        if len(steps) == 1:
            (func, symbol, right_of) = steps[0]
            constant = _fold(node.comparators[0])
            if constant is not _NO_VALUE:

                def run_with_constant(env: Mapping[str, Any]) -> Any:
                    a = left_of(env)
                    try:
                        return func(a, constant)
                    except (TypeError, ValueError) as exc:
                        raise compare_error(node, symbol, a, constant) from exc

                return run_with_constant

            def run_single(env: Mapping[str, Any]) -> Any:
                a, b = left_of(env), right_of(env)
                try:
                    return func(a, b)
                except (TypeError, ValueError) as exc:
                    raise compare_error(node, symbol, a, b) from exc

            return run_single

        def run_chain(env: Mapping[str, Any]) -> Any:
            a, result = left_of(env), True
            for func, symbol, right_of in steps:
                b = right_of(env)
                try:
                    result = func(a, b)
                except (TypeError, ValueError) as exc:
                    raise compare_error(node, symbol, a, b) from exc
                if not result:
                    return result
                a = b
            return result

        return run_chain

    def _comparand(self, op: ast.cmpop, node: ast.expr, depth: int) -> _Run:
        """Compile a right operand; a literal list/set after ``in`` becomes a frozen constant."""
        run = self.compile(node, depth)
        if isinstance(op, ast.In | ast.NotIn) and isinstance(node, ast.List | ast.Set):
            items = [_fold(element) for element in node.elts]
            if _NO_VALUE not in items:
                return _const(frozenset(items) if isinstance(node, ast.Set) else tuple(items))
        return run

    def _check_identity(self, left: ast.expr, right: ast.expr) -> None:
        def is_singleton(n: ast.expr) -> bool:
            return isinstance(n, ast.Constant) and (n.value is None or isinstance(n.value, bool))

        if not (is_singleton(left) or is_singleton(right)):
            self._reject(right, "'is' / 'is not' may only compare with None, True or False")

    def _compare_error(
        self, node: ast.Compare, symbol: str, a: Any, b: Any
    ) -> ExpressionEvaluationError:
        kinds = f"{type(a).__name__} and {type(b).__name__}"
        return self._fail(f"'{symbol}' is not supported between {kinds}", node)

    def _bool_op(self, node: ast.BoolOp, depth: int) -> _Run:
        runs = [self.compile(value, depth) for value in node.values]
        combine = _and if isinstance(node.op, ast.And) else _or
        result = runs[-1]
        for run in reversed(runs[:-1]):
            result = combine(run, result)
        return result

    def _unary_op(self, node: ast.UnaryOp, depth: int) -> _Run:
        if type(node.op) in _REJECTED_OPERATORS:
            self._reject(node, f"operator '{_REJECTED_OPERATORS[type(node.op)]}' is not allowed")
        operand_of = self.compile(node.operand, depth)
        folded = _fold(node)
        if folded is not _NO_VALUE:
            return _const(folded)
        if isinstance(node.op, ast.Not):
            return lambda env: not operand_of(env)
        func, symbol = (operator.neg, "-") if isinstance(node.op, ast.USub) else (operator.pos, "+")
        fail = self._fail

        def run(env: Mapping[str, Any]) -> Any:
            value = operand_of(env)
            try:
                return func(value)
            except TypeError as exc:
                raise fail(
                    f"bad operand type for unary {symbol}: {type(value).__name__}", node
                ) from exc

        return run

    def _bin_op(self, node: ast.BinOp, depth: int) -> _Run:
        if type(node.op) in _REJECTED_OPERATORS:
            self._reject(node, f"operator '{_REJECTED_OPERATORS[type(node.op)]}' is not allowed")
        left_of = self.compile(node.left, depth)
        if isinstance(node.op, ast.Pow):
            func, symbol = self._power(node, depth), "**"
            right_of = _const(None)
        else:
            func, symbol = _ARITHMETIC[type(node.op)]
            right_of = self.compile(node.right, depth)
        arithmetic_error = self._arithmetic_error

        def run(env: Mapping[str, Any]) -> Any:
            a, b = left_of(env), right_of(env)
            try:
                return func(a, b)
            except (ArithmeticError, TypeError, ValueError, _Refused) as exc:
                raise arithmetic_error(node, symbol, a, b, exc) from exc

        return run

    def _power(self, node: ast.BinOp, depth: int) -> Callable[[Any, Any], Any]:
        """Check the constant exponent at parse time; return ``(base, _) -> base ** exponent``."""
        self.compile(node.right, depth)
        exponent = _fold(node.right)
        if isinstance(exponent, bool) or not isinstance(exponent, int | float):
            self._reject(node.right, "the exponent of ** must be a number constant")
        if abs(exponent) > MAX_EXPONENT:
            self._reject(node.right, f"the exponent of ** must be at most {MAX_EXPONENT}")
        return lambda base, _: _raise_to(base, exponent)

    def _arithmetic_error(
        self, node: ast.BinOp, symbol: str, a: Any, b: Any, exc: Exception
    ) -> ExpressionEvaluationError:
        if isinstance(exc, _Refused):
            detail = str(exc)
        elif isinstance(exc, ZeroDivisionError):
            detail = "division by zero"
        elif isinstance(exc, OverflowError):
            detail = f"numeric overflow in '{symbol}'"
        elif symbol == "**":
            detail = f"unsupported operand type for '**': {type(a).__name__}"
        else:
            kinds = f"{type(a).__name__} and {type(b).__name__}"
            detail = f"unsupported operand types for '{symbol}': {kinds}"
        return self._fail(detail, node)

    def _if_exp(self, node: ast.IfExp, depth: int) -> _Run:
        test_of = self.compile(node.test, depth)
        body_of = self.compile(node.body, depth)
        else_of = self.compile(node.orelse, depth)
        return lambda env: body_of(env) if test_of(env) else else_of(env)

    def _sequence(self, node: ast.Tuple | ast.List | ast.Set, depth: int) -> _Run:
        runs = [self.compile(element, depth) for element in node.elts]
        if isinstance(node, ast.Tuple):
            folded = _fold(node)
            if folded is not _NO_VALUE:
                return _const(folded)
            return lambda env: tuple([run(env) for run in runs])
        if isinstance(node, ast.List):
            return lambda env: [run(env) for run in runs]
        fail = self._fail

        def run_set(env: Mapping[str, Any]) -> Any:
            items = [run(env) for run in runs]
            try:
                return set(items)
            except TypeError as exc:
                raise fail("set elements must be hashable", node) from exc

        return run_set

    def _dict(self, node: ast.Dict, depth: int) -> _Run:
        for key, value in zip(node.keys, node.values, strict=True):
            if key is None:
                self._reject(value, "dict unpacking (**) is not allowed")
        pairs = [
            (self.compile(key, depth), self.compile(value, depth))
            for key, value in zip(node.keys, node.values, strict=True)
            if key is not None
        ]
        fail = self._fail

        def run(env: Mapping[str, Any]) -> Any:
            items = [(key_of(env), value_of(env)) for key_of, value_of in pairs]
            try:
                return dict(items)
            except TypeError as exc:
                raise fail("dict keys must be hashable", node) from exc

        return run


# -- closures and guarded operations -------------------------------------------------------------


def _const(value: Any) -> _Run:
    return lambda env: value


def _and(first: _Run, second: _Run) -> _Run:
    return lambda env: first(env) and second(env)


def _or(first: _Run, second: _Run) -> _Run:
    return lambda env: first(env) or second(env)


def _fold(node: ast.AST) -> Any:
    """The immutable value of a validated literal node (scalars, signed numbers, tuples)."""
    if isinstance(node, ast.Constant) and isinstance(node.value, _SCALARS):
        return node.value
    if isinstance(node, ast.UnaryOp) and isinstance(node.op, ast.USub | ast.UAdd):
        value = _fold(node.operand)
        if isinstance(value, int | float):
            return -value if isinstance(node.op, ast.USub) else +value
    if isinstance(node, ast.Tuple):
        items = [_fold(element) for element in node.elts]
        if _NO_VALUE not in items:
            return tuple(items)
    return _NO_VALUE


def _check_length(length: int) -> None:
    if length > MAX_SEQUENCE_LENGTH:
        raise _Refused(f"result would have {length} items (at most {MAX_SEQUENCE_LENGTH})")


def _add(a: Any, b: Any) -> Any:
    result = a + b
    if isinstance(result, _SEQUENCES):
        _check_length(len(result))
    return result


def _multiply(a: Any, b: Any) -> Any:
    if isinstance(a, _SEQUENCES) and isinstance(b, int):
        _check_length(len(a) * b)
    elif isinstance(b, _SEQUENCES) and isinstance(a, int):
        _check_length(len(b) * a)
    return a * b


def _modulo(a: Any, b: Any) -> Any:
    if isinstance(a, str | bytes):
        raise _Refused("string formatting with '%' is not allowed")
    return a % b


def _raise_to(base: Any, exponent: int | float) -> Any:
    if isinstance(base, int) and isinstance(exponent, int) and exponent > 0:
        bits = base.bit_length() * exponent
        if abs(base) > 1 and bits > MAX_INT_BITS:
            raise _Refused(f"'**' result would have about {bits} bits (at most {MAX_INT_BITS})")
    result = base**exponent
    if isinstance(result, complex):
        raise _Refused("'**' would give a complex number")
    return result


def _short(text: str) -> str:
    return text if len(text) <= 60 else text[:57] + "..."


_ARITHMETIC: dict[type[ast.operator], tuple[Callable[[Any, Any], Any], str]] = {
    ast.Add: (_add, "+"),
    ast.Sub: (operator.sub, "-"),
    ast.Mult: (_multiply, "*"),
    ast.Div: (operator.truediv, "/"),
    ast.FloorDiv: (operator.floordiv, "//"),
    ast.Mod: (_modulo, "%"),
}
