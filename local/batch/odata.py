"""OData `$filter` and `$select` as Batch list operations accept them.

Each list accepts the properties and operators Batch documents for it ("OData filters in Azure Batch"):
a comparison `property op literal` (eq ne gt ge lt le), `startswith(property,'prefix')`, combined with
`and` / `or` and parentheses. Property names are case-sensitive; string values compare
case-insensitively; `DateTime'...'` literals (W3C or RFC 1123) compare as instants. Anything else
(an unknown property, an operator the property does not allow, a literal of the wrong type) is 400.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime
from email.utils import parsedate_to_datetime
from typing import Any

from local.batch import clock
from local.batch.errors import BatchApiError, invalid_query

Predicate = Callable[[dict[str, Any]], bool]

_ORDERED = frozenset({"eq", "ne", "ge", "gt", "le", "lt"})
_EQUALITY = frozenset({"eq", "ne"})
_STRING_ORDERED = _ORDERED | {"startswith"}

# property -> (type, allowed operations), per list, from Batch's "OData filters" reference.
FilterSpec = dict[str, tuple[str, frozenset[str]]]
TASK_FILTERS: FilterSpec = {
    "id": ("String", _STRING_ORDERED),
    "state": ("String", _EQUALITY),
    "stateTransitionTime": ("DateTime", _ORDERED),
    "creationTime": ("DateTime", _ORDERED),
    "lastModifiedTime": ("DateTime", _ORDERED),
    "executionInfo/startTime": ("DateTime", _ORDERED),
    "executionInfo/endTime": ("DateTime", _ORDERED),
    "executionInfo/exitCode": ("Int", _ORDERED),
    "executionInfo/result": ("String", _EQUALITY),
}
JOB_FILTERS: FilterSpec = {
    "id": ("String", _STRING_ORDERED),
    "state": ("String", _EQUALITY),
    "stateTransitionTime": ("DateTime", _ORDERED),
    "creationTime": ("DateTime", _ORDERED),
    "lastModified": ("DateTime", _ORDERED),
    "executionInfo/startTime": ("DateTime", _ORDERED),
    "executionInfo/endTime": ("DateTime", _ORDERED),
    "executionInfo/poolId": ("String", _STRING_ORDERED),
}
POOL_FILTERS: FilterSpec = {
    "id": ("String", _STRING_ORDERED),
    "state": ("String", _EQUALITY),
    "stateTransitionTime": ("DateTime", _ORDERED),
    "allocationState": ("String", frozenset({"eq"})),
    "allocationStateTransitionTime": ("DateTime", _ORDERED),
    "creationTime": ("DateTime", _ORDERED),
    "enableAutoScale": ("Boolean", _EQUALITY),
    "lastModified": ("DateTime", _ORDERED),
    "vmSize": ("String", _EQUALITY),
    "enableInterNodeCommunication": ("Boolean", _EQUALITY),
}
NODE_FILTERS: FilterSpec = {
    "state": ("String", _EQUALITY),
    "stateTransitionTime": ("DateTime", _ORDERED),
    "lastBootTime": ("DateTime", _ORDERED),
    "allocationTime": ("DateTime", _ORDERED),
    "startTaskInfo/state": ("String", frozenset({"eq"})),
    "startTaskInfo/result": ("String", _EQUALITY),
    "startTaskInfo/exitCode": ("Int", _ORDERED),
    "startTaskInfo/startTime": ("DateTime", _ORDERED),
    "startTaskInfo/endTime": ("DateTime", _ORDERED),
}
FILE_FILTERS: FilterSpec = {"name": ("String", frozenset({"startswith"}))}
PREP_RELEASE_FILTERS: FilterSpec = {
    "poolId": ("String", _EQUALITY),
    "nodeId": ("String", _EQUALITY),
    "jobPreparationTaskExecutionInfo/state": ("String", _EQUALITY),
    "jobPreparationTaskExecutionInfo/startTime": ("DateTime", _ORDERED),
    "jobPreparationTaskExecutionInfo/endTime": ("DateTime", _ORDERED),
    "jobPreparationTaskExecutionInfo/exitCode": ("Int", _ORDERED),
    "jobPreparationTaskExecutionInfo/result": ("String", _EQUALITY),
    "jobReleaseTaskExecutionInfo/state": ("String", _EQUALITY),
    "jobReleaseTaskExecutionInfo/startTime": ("DateTime", _ORDERED),
    "jobReleaseTaskExecutionInfo/endTime": ("DateTime", _ORDERED),
    "jobReleaseTaskExecutionInfo/exitCode": ("Int", _ORDERED),
    "jobReleaseTaskExecutionInfo/result": ("String", _EQUALITY),
}
IMAGE_FILTERS: FilterSpec = {
    "osType": ("String", _EQUALITY),
    "verificationType": ("String", _EQUALITY),
    "nodeAgentSKUId": ("String", _EQUALITY),
}
# The documented name differs from the property Batch returns.
_ALIASES = {"lastModifiedTime": "lastModified"}

_TOKEN = re.compile(
    r"""\s*(?:
        (?P<datetime>datetime'[^']*')
      | (?P<string>'(?:[^']|'')*')
      | (?P<number>-?\d+)
      | (?P<punct>[(),])
      | (?P<word>[A-Za-z_][A-Za-z0-9_/.]*)
    )""",
    re.VERBOSE | re.IGNORECASE,
)


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


def _datetime_literal(text: str) -> datetime:
    try:
        return clock.parse(text)
    except ValueError:
        pass
    try:
        moment = parsedate_to_datetime(text)
    except (TypeError, ValueError):
        raise ValueError(f"{text!r} is neither a W3C nor an RFC 1123 date-time") from None
    return moment


class _Literal:
    def __init__(self, value: Any, kind: str) -> None:
        self.value = value
        self.kind = kind


class _Parser:
    def __init__(self, text: str, spec: FilterSpec) -> None:
        self.tokens = _tokenize(text)
        self.position = 0
        self.spec = spec

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
        token = self.peek()
        if token is not None:
            raise ValueError(f"unexpected {token.text!r}")
        return predicate

    def _keyword(self, word: str) -> bool:
        token = self.peek()
        return token is not None and token.kind == "word" and token.text.lower() == word

    def or_expr(self) -> Predicate:
        terms = [self.and_expr()]
        while self._keyword("or"):
            self.take()
            terms.append(self.and_expr())
        if len(terms) == 1:
            return terms[0]
        return lambda doc: any(term(doc) for term in terms)

    def and_expr(self) -> Predicate:
        terms = [self.primary()]
        while self._keyword("and"):
            self.take()
            terms.append(self.primary())
        if len(terms) == 1:
            return terms[0]
        return lambda doc: all(term(doc) for term in terms)

    def primary(self) -> Predicate:
        token = self.peek()
        if token is not None and token.text == "(":
            self.take()
            inner = self.or_expr()
            self.expect(")")
            return inner
        return self.comparison()

    def literal(self) -> _Literal:
        token = self.take()
        if token.kind == "datetime":
            return _Literal(_datetime_literal(token.text[len("datetime'") : -1]), "DateTime")
        if token.kind == "string":
            return _Literal(token.text[1:-1].replace("''", "'"), "String")
        if token.kind == "number":
            return _Literal(int(token.text), "Int")
        if token.kind == "word" and token.text.lower() in ("true", "false"):
            return _Literal(token.text.lower() == "true", "Boolean")
        raise ValueError(f"expected a literal, found {token.text!r}")

    def prop(self, operation: str) -> tuple[str, str]:
        token = self.take()
        if token.kind != "word":
            raise ValueError(f"expected a property name, found {token.text!r}")
        allowed = self.spec.get(token.text)
        if allowed is None:
            raise ValueError(f"{token.text!r} is not a property this list can be filtered on")
        kind, operations = allowed
        if operation not in operations:
            raise ValueError(f"{operation!r} is not allowed on {token.text!r}")
        return _ALIASES.get(token.text, token.text), kind

    def comparison(self) -> Predicate:
        if self._keyword("startswith"):
            self.take()
            self.expect("(")
            path, _kind = self.prop("startswith")
            self.expect(",")
            prefix = self.literal()
            self.expect(")")
            if prefix.kind != "String":
                raise ValueError("startswith takes a string literal")
            wanted = str(prefix.value).lower()

            def starts(doc: dict[str, Any]) -> bool:
                value = lookup(doc, path)
                return isinstance(value, str) and value.lower().startswith(wanted)

            return starts
        start = self.position
        self.take()
        operation = self.take().text.lower()
        if operation not in _ORDERED:
            raise ValueError(f"expected a comparison operator, found {operation!r}")
        self.position = start
        path, kind = self.prop(operation)
        self.take()
        value = self.literal()
        if value.kind != kind:
            raise ValueError(f"{path!r} is a {kind}; the literal is a {value.kind}")
        return _compare(path, operation, value.value)


def _normalise(value: Any, literal: Any) -> Any:
    if isinstance(literal, datetime):
        if not isinstance(value, str):
            return None
        try:
            return clock.parse(value)
        except ValueError:
            return None
    if isinstance(value, str):
        return value.lower()
    return value


def _compare(path: str, operation: str, literal: Any) -> Predicate:
    expected = literal.lower() if isinstance(literal, str) else literal

    def predicate(doc: dict[str, Any]) -> bool:
        value = _normalise(lookup(doc, path), literal)
        if operation == "eq":
            return bool(value == expected)
        if operation == "ne":
            return bool(value != expected)
        if value is None:
            return False
        try:
            if operation == "gt":
                return bool(value > expected)
            if operation == "ge":
                return bool(value >= expected)
            if operation == "lt":
                return bool(value < expected)
            return bool(value <= expected)
        except TypeError:
            return False

    return predicate


def parse_filter(text: str | None, spec: FilterSpec) -> Predicate:
    """A predicate over REST documents; raises a 400 BatchApiError for a filter Batch would refuse."""
    if not text or not text.strip():
        return lambda doc: True
    try:
        return _Parser(text, spec).parse()
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
