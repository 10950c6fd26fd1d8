"""OData `$filter` and `$select` as Batch list operations accept them.

Filters compare properties (paths such as `executionInfo/exitCode`) with literals using
eq ne gt ge lt le, combine with and/or/not and parentheses, and call `startswith(prop,'x')`.
Strings compare case-insensitively (Batch ids and enum values are case-insensitive);
`datetime'...'` literals compare as instants.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from local.batch import clock
from local.batch.errors import BatchApiError, invalid_query

Predicate = Callable[[dict[str, Any]], bool]

_TOKEN = re.compile(
    r"""\s*(?:
        (?P<datetime>datetime'[^']*')
      | (?P<string>'(?:[^']|'')*')
      | (?P<number>-?\d+(?:\.\d+)?)
      | (?P<punct>[(),])
      | (?P<word>[A-Za-z_][A-Za-z0-9_/.]*)
    )""",
    re.VERBOSE,
)
_COMPARISONS = {"eq", "ne", "gt", "ge", "lt", "le"}


@dataclass(frozen=True)
class _Token:
    kind: str
    text: str


def _tokenize(text: str) -> list[_Token]:
    tokens: list[_Token] = []
    position = 0
    while position < len(text):
        if text[position:].strip() == "":
            break
        match = _TOKEN.match(text, position)
        if not match or match.end() == position:
            raise ValueError(f"unexpected character at position {position}: {text[position : position + 20]!r}")
        kind = match.lastgroup or ""
        tokens.append(_Token(kind, match.group(kind)))
        position = match.end()
    return tokens


def lookup(doc: dict[str, Any], path: str) -> Any:
    """The value at a/b/c in a JSON document, or None."""
    value: Any = doc
    for part in path.split("/"):
        if not isinstance(value, dict):
            return None
        value = value.get(part)
    return value


class _Literal:
    def __init__(self, value: Any) -> None:
        self.value = value


class _Parser:
    def __init__(self, text: str) -> None:
        self.tokens = _tokenize(text)
        self.position = 0

    def peek(self) -> _Token | None:
        return self.tokens[self.position] if self.position < len(self.tokens) else None

    def take(self) -> _Token:
        token = self.peek()
        if token is None:
            raise ValueError("unexpected end of filter")
        self.position += 1
        return token

    def expect(self, text: str) -> None:
        token = self.take()
        if token.text != text:
            raise ValueError(f"expected {text!r}, found {token.text!r}")

    def parse(self) -> Predicate:
        predicate = self.or_expr()
        if self.peek() is not None:
            raise ValueError(f"unexpected {self.peek().text!r}")  # type: ignore[union-attr]
        return predicate

    def or_expr(self) -> Predicate:
        terms = [self.and_expr()]
        while (token := self.peek()) is not None and token.kind == "word" and token.text.lower() == "or":
            self.take()
            terms.append(self.and_expr())
        if len(terms) == 1:
            return terms[0]
        return lambda doc: any(term(doc) for term in terms)

    def and_expr(self) -> Predicate:
        terms = [self.unary()]
        while (token := self.peek()) is not None and token.kind == "word" and token.text.lower() == "and":
            self.take()
            terms.append(self.unary())
        if len(terms) == 1:
            return terms[0]
        return lambda doc: all(term(doc) for term in terms)

    def unary(self) -> Predicate:
        token = self.peek()
        if token is not None and token.kind == "word" and token.text.lower() == "not":
            self.take()
            inner = self.unary()
            return lambda doc: not inner(doc)
        if token is not None and token.text == "(":
            self.take()
            inner = self.or_expr()
            self.expect(")")
            return inner
        return self.comparison()

    def operand(self) -> str | _Literal:
        token = self.take()
        if token.kind == "datetime":
            return _Literal(clock.parse(token.text[len("datetime'") : -1]))
        if token.kind == "string":
            return _Literal(token.text[1:-1].replace("''", "'"))
        if token.kind == "number":
            return _Literal(float(token.text) if "." in token.text else int(token.text))
        if token.kind == "word":
            lowered = token.text.lower()
            if lowered in ("true", "false"):
                return _Literal(lowered == "true")
            if lowered == "null":
                return _Literal(None)
            return token.text
        raise ValueError(f"unexpected {token.text!r}")

    def comparison(self) -> Predicate:
        token = self.peek()
        if token is not None and token.kind == "word" and token.text.lower() == "startswith":
            self.take()
            self.expect("(")
            prop = self.operand()
            self.expect(",")
            prefix = self.operand()
            self.expect(")")
            if not isinstance(prop, str) or not isinstance(prefix, _Literal) or not isinstance(prefix.value, str):
                raise ValueError("startswith takes a property and a string literal")
            wanted = prefix.value.lower()
            path = prop

            def starts(doc: dict[str, Any]) -> bool:
                value = lookup(doc, path)
                return isinstance(value, str) and value.lower().startswith(wanted)

            following = self.peek()
            if following is not None and following.kind == "word" and following.text.lower() in _COMPARISONS:
                op = self.take().text.lower()
                expected = self.operand()
                if not isinstance(expected, _Literal) or not isinstance(expected.value, bool):
                    raise ValueError("startswith(...) compares with true or false")
                flag = expected.value if op == "eq" else not expected.value
                return lambda doc: starts(doc) == flag
            return starts
        left = self.operand()
        op_token = self.take()
        op = op_token.text.lower()
        if op_token.kind != "word" or op not in _COMPARISONS:
            raise ValueError(f"expected a comparison operator, found {op_token.text!r}")
        right = self.operand()
        return _compare(left, op, right)


def _value(operand: str | _Literal, doc: dict[str, Any]) -> Any:
    return operand.value if isinstance(operand, _Literal) else lookup(doc, operand)


def _normalise(value: Any, other: Any) -> Any:
    if isinstance(other, datetime) and isinstance(value, str):
        try:
            return clock.parse(value)
        except ValueError:
            return value
    if isinstance(value, str):
        return value.lower()
    return value


def _compare(left: str | _Literal, op: str, right: str | _Literal) -> Predicate:
    def predicate(doc: dict[str, Any]) -> bool:
        a = _value(left, doc)
        b = _value(right, doc)
        a, b = _normalise(a, b), _normalise(b, a)
        if op == "eq":
            return bool(a == b)
        if op == "ne":
            return bool(a != b)
        if a is None or b is None:
            return False
        try:
            if op == "gt":
                return bool(a > b)
            if op == "ge":
                return bool(a >= b)
            if op == "lt":
                return bool(a < b)
            return bool(a <= b)
        except TypeError:
            return False

    return predicate


def parse_filter(text: str | None) -> Predicate:
    """A predicate over REST documents; raises a 400 BatchApiError for a filter it cannot parse."""
    if not text or not text.strip():
        return lambda doc: True
    try:
        return _Parser(text).parse()
    except ValueError as problem:
        raise invalid_query("$filter", text, str(problem)) from None


def parse_select(text: str | None) -> list[str] | None:
    if not text or not text.strip():
        return None
    fields = [part.strip() for part in text.split(",") if part.strip()]
    for name in fields:
        if not re.fullmatch(r"[A-Za-z][A-Za-z0-9]*(?:/[A-Za-z][A-Za-z0-9]*)*", name):
            raise invalid_query("$select", text, f"{name!r} is not a property name")
    return fields


def project(doc: dict[str, Any], fields: list[str] | None) -> dict[str, Any]:
    """Keep only the selected properties (a/b keeps b inside a)."""
    if fields is None:
        return doc
    result: dict[str, Any] = {}
    for name in fields:
        parts = name.split("/")
        value = lookup(doc, name)
        if value is None:
            continue
        target = result
        for part in parts[:-1]:
            target = target.setdefault(part, {})
        target[parts[-1]] = value
    return result


def max_results(text: str | None, default: int = 1000) -> int:
    if text is None or text == "":
        return default
    try:
        count = int(text)
    except ValueError:
        raise invalid_query("maxresults", text, "not an integer") from None
    if count < 1 or count > 1000:
        raise BatchApiError(
            400,
            "OutOfRangeQueryParameterValue",
            "A query parameter specified in the request URI is outside the permissible range.",
            {"QueryParameterName": "maxresults", "QueryParameterValue": text, "Reason": "must be 1 to 1000"},
        )
    return count
