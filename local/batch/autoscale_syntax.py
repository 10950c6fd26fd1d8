"""The autoscale formula language's syntax: tokens, the tree, and the parser (no evaluation here).

Batch documents the language in "Create a formula to automatically scale compute nodes in a Batch pool"
(learn.microsoft.com/azure/batch/batch-automatic-scaling): statements `name = expression;`, C-like
operators, the ternary operator, `//` comments and line breaks. Only what autoscale.py evaluates is
accepted; anything else Batch has (other functions, variables, methods, strings, member access) is
refused here with a FormulaError that names it, so a formula is never silently mis-evaluated.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import NoReturn

# Batch: "The formula string cannot exceed 8 KB, can include up to 100 statements". The Batch SDKs'
# error code list names the limit: AutoScaleFormulaTooLong, "the maximum length is 8192 characters".
MAX_FORMULA_CHARS = 8192
MAX_STATEMENTS = 100

SYNTAX_ERROR = "AutoScalingFormulaSyntaxError"  # Batch's code (BatchErrorCodeStrings)
UNSUPPORTED = "FormulaNotSupportedByEmulator"  # the emulator's own: valid Batch, not evaluated here
EVALUATION_ERROR = "AutoScalingFormulaEvaluationError"  # the emulator's name for a failed evaluation
INSUFFICIENT_SAMPLES = "InsufficientSampleData"

FUNCTIONS = ("avg", "ceil", "floor", "max", "min", "sum")
SAMPLED = ("$PendingTasks", "$ActiveTasks", "$RunningTasks")
METHODS = ("GetSample", "GetSamplePercent")
TIME_UNITS = {
    "TimeInterval_Second": 1.0,
    "TimeInterval_Minute": 60.0,
    "TimeInterval_Hour": 3600.0,
    "TimeInterval_Day": 86400.0,
}
DEALLOCATION_OPTIONS = ("requeue", "terminate", "taskcompletion", "retaineddata")
TARGETS = {
    "$TargetDedicatedNodes": "$TargetDedicatedNodes",
    "$TargetDedicated": "$TargetDedicatedNodes",  # documented alias
    "$TargetLowPriorityNodes": "$TargetLowPriorityNodes",
    "$TargetLowPriority": "$TargetLowPriorityNodes",  # documented alias
}
READABLE = (*TARGETS, "$NodeDeallocationOption", "$CurrentDedicatedNodes", "$CurrentLowPriorityNodes")

# What Batch has beyond the subset, so that the error can say "not supported" rather than "unknown".
_BATCH_VARIABLES = [
    "$CPUPercent",
    "$WallClockSeconds",
    "$MemoryBytes",
    "$DiskBytes",
    "$DiskReadBytes",
    "$DiskWriteBytes",
    "$DiskReadOps",
    "$DiskWriteOps",
    "$NetworkInBytes",
    "$NetworkOutBytes",
    "$SampleNodeCount",
    "$SucceededTasks",
    "$FailedTasks",
    "$PreemptedNodeCount",
    "$TaskSlotsPerNode",
    "$UsableNodeCount",
    "$PendingTaskSlots",
    "$ActiveTaskSlots",
    "$RunningTaskSlots",
]


class FormulaError(Exception):
    """Why a formula cannot be parsed or evaluated: a code, a message, and where (1-based line and column)."""

    def __init__(self, code: str, message: str, line: int = 0, column: int = 0) -> None:
        super().__init__(message)
        self.code = code
        self.message = message
        self.line = line
        self.column = column

    @property
    def detail(self) -> str:
        """Batch's detail text is "Line L, Col C: what"; without a position, just what."""
        return f"Line {self.line}, Col {self.column}: {self.message}" if self.line else self.message


@dataclass(frozen=True)
class Token:
    kind: str  # "number", "name", "op", "end"
    text: str
    line: int
    column: int


@dataclass(frozen=True)
class Node:
    line: int
    column: int


@dataclass(frozen=True)
class Number(Node):
    value: float


@dataclass(frozen=True)
class Name(Node):
    name: str


@dataclass(frozen=True)
class Call(Node):
    function: str
    args: tuple[Node, ...]


@dataclass(frozen=True)
class Method(Node):
    target: str
    method: str
    args: tuple[Node, ...]


@dataclass(frozen=True)
class Unary(Node):
    op: str
    operand: Node


@dataclass(frozen=True)
class Binary(Node):
    op: str
    left: Node
    right: Node


@dataclass(frozen=True)
class Ternary(Node):
    condition: Node
    then: Node
    otherwise: Node


@dataclass(frozen=True)
class Statement(Node):
    target: str
    expression: Node


_TOKEN = re.compile(
    r"(?P<space>[ \t\r\n]+)|(?P<comment>//[^\n]*)"
    r"|(?P<number>(?:\d+\.?\d*|\.\d+)(?:[eE][+-]?\d+)?)"
    r"|(?P<name>\$?[A-Za-z_][A-Za-z0-9_]*)"
    r"|(?P<op>&&|\|\||<=|>=|==|!=|[-+*/<>!?:=(),;.])"
)


def tokenize(text: str) -> list[Token]:
    tokens: list[Token] = []
    line, line_start, index = 1, 0, 0
    while index < len(text):
        match = _TOKEN.match(text, index)
        column = index - line_start + 1
        if match is None:
            char = text[index]
            what = "string literals are" if char in "\"'" else f"the character {char!r} is"
            raise FormulaError(SYNTAX_ERROR, f"{what} not supported here", line, column)
        kind = match.lastgroup or ""
        if kind not in ("space", "comment"):
            tokens.append(Token(kind, match.group(), line, column))
        for offset, char in enumerate(match.group()):
            if char == "\n":
                line, line_start = line + 1, index + offset + 1
        index = match.end()
    tokens.append(Token("end", "", line, index - line_start + 1))
    return tokens


def unsupported(what: str, line: int, column: int) -> NoReturn:
    raise FormulaError(
        UNSUPPORTED,
        f"the Batch emulator does not support {what} in autoscale formulas; it evaluates the functions "
        f"{', '.join(FUNCTIONS)}, the variables {', '.join(SAMPLED)} (with .GetSample and .GetSamplePercent), "
        f"{', '.join(READABLE)}, and TimeInterval_Second/Minute/Hour/Day",
        line,
        column,
    )


class Parser:
    """Recursive descent over the tokens, C-like precedence (ternary < || < && < equality < relational < + < *)."""

    def __init__(self, text: str) -> None:
        self.tokens = tokenize(text)
        self.index = 0

    def peek(self) -> Token:
        return self.tokens[self.index]

    def take(self) -> Token:
        token = self.tokens[self.index]
        self.index += 1
        return token

    def accept(self, *ops: str) -> Token | None:
        token = self.peek()
        if token.kind == "op" and token.text in ops:
            self.index += 1
            return token
        return None

    def expect(self, op: str, context: str) -> Token:
        token = self.accept(op)
        if token is None:
            self.fail(f"expected '{op}' {context}")
        return token

    def fail(self, message: str, token: Token | None = None) -> NoReturn:
        token = token or self.peek()
        found = "the end of the formula" if token.kind == "end" else f"'{token.text}'"
        raise FormulaError(SYNTAX_ERROR, f"{message}, found {found}", token.line, token.column)

    def formula(self) -> list[Statement]:
        statements: list[Statement] = []
        while self.peek().kind != "end":
            if self.accept(";"):
                continue
            statements.append(self.statement())
            if self.peek().kind != "end":
                self.expect(";", "between statements")
        if not statements:
            raise FormulaError(SYNTAX_ERROR, "the formula has no statements", 1, 1)
        if len(statements) > MAX_STATEMENTS:
            extra = statements[MAX_STATEMENTS]
            raise FormulaError(
                SYNTAX_ERROR, f"a formula may have at most {MAX_STATEMENTS} statements", extra.line, extra.column
            )
        return statements

    def statement(self) -> Statement:
        token = self.take()
        if token.kind != "name":
            self.fail("expected a variable to assign to", token)
        self.expect("=", f"after {token.text}")
        return Statement(token.line, token.column, token.text, self.expression())

    def expression(self) -> Node:
        condition = self.binary(0)
        token = self.accept("?")
        if token is None:
            return condition
        then = self.expression()
        self.expect(":", "in the conditional expression")
        return Ternary(token.line, token.column, condition, then, self.expression())

    _LEVELS: tuple[tuple[str, ...], ...] = (
        ("||",),
        ("&&",),
        ("==", "!="),
        ("<", "<=", ">", ">="),
        ("+", "-"),
        ("*", "/"),
    )

    def binary(self, level: int) -> Node:
        if level == len(self._LEVELS):
            return self.unary()
        left = self.binary(level + 1)
        while (token := self.accept(*self._LEVELS[level])) is not None:
            left = Binary(token.line, token.column, token.text, left, self.binary(level + 1))
        return left

    def unary(self) -> Node:
        token = self.accept("-", "!", "+")
        if token is None:
            return self.postfix()
        operand = self.unary()
        return operand if token.text == "+" else Unary(token.line, token.column, token.text, operand)

    def postfix(self) -> Node:
        node = self.primary()
        while (dot := self.accept(".")) is not None:
            member = self.take()
            if member.kind != "name" or member.text.startswith("$"):
                self.fail("expected a method name after '.'", member)
            if self.peek().text != "(":
                unsupported(f"member access .{member.text}", member.line, member.column)
            args = self.arguments()
            if not isinstance(node, Name):
                unsupported(f"calling .{member.text}() on an expression", dot.line, dot.column)
            if node.name in _BATCH_VARIABLES:
                unsupported(f"the variable {node.name}", node.line, node.column)
            if node.name not in SAMPLED:
                what = node.name if node.name.startswith("$") else f"variable {node.name}"
                unsupported(f"the method {what}.{member.text}()", member.line, member.column)
            if member.text not in METHODS:
                unsupported(f"the method {node.name}.{member.text}()", member.line, member.column)
            node = Method(node.line, node.column, node.name, member.text, args)
        return node

    def arguments(self) -> tuple[Node, ...]:
        self.expect("(", "to start the arguments")
        args: list[Node] = []
        if self.accept(")"):
            return ()
        while True:
            args.append(self.expression())
            if self.accept(")"):
                return tuple(args)
            self.expect(",", "between arguments")

    def primary(self) -> Node:
        token = self.take()
        if token.kind == "number":
            return Number(token.line, token.column, float(token.text))
        if token.kind == "name":
            if self.peek().text == "(" and not token.text.startswith("$"):
                if token.text not in FUNCTIONS:
                    unsupported(f"the function {token.text}()", token.line, token.column)
                return Call(token.line, token.column, token.text, self.arguments())
            return Name(token.line, token.column, token.text)
        if token.kind == "op" and token.text == "(":
            inner = self.expression()
            self.expect(")", "to close the parenthesis")
            return inner
        self.fail("expected a number, a variable, a function call or '('", token)


def parse(text: str) -> list[Statement]:
    """The statements of a formula, or FormulaError (syntax, or a construct outside the subset)."""
    if len(text) > MAX_FORMULA_CHARS:
        raise FormulaError(
            "AutoScaleFormulaTooLong",
            f"the formula is {len(text)} characters long; the maximum is {MAX_FORMULA_CHARS}",
        )
    statements = Parser(text).formula()
    _check_names(statements)
    return statements


def _check_names(statements: list[Statement]) -> None:
    """Refuse, before any evaluation, a Batch variable the emulator has no data for (e.g. $CPUPercent)."""
    for statement in statements:
        for node in _walk(statement.expression):
            name = node.name if isinstance(node, Name) else node.target if isinstance(node, Method) else None
            if name in _BATCH_VARIABLES:
                unsupported(f"the variable {name}", node.line, node.column)
        if (
            statement.target in _BATCH_VARIABLES
            or statement.target in SAMPLED
            or statement.target
            in (
                "$CurrentDedicatedNodes",
                "$CurrentLowPriorityNodes",
            )
        ):
            raise FormulaError(
                SYNTAX_ERROR,
                f"{statement.target} is a read-only service-defined variable",
                statement.line,
                statement.column,
            )


def _walk(node: Node) -> list[Node]:
    found = [node]
    children: tuple[Node, ...] = ()
    if isinstance(node, Call | Method):
        children = node.args
    elif isinstance(node, Unary):
        children = (node.operand,)
    elif isinstance(node, Binary):
        children = (node.left, node.right)
    elif isinstance(node, Ternary):
        children = (node.condition, node.then, node.otherwise)
    for child in children:
        found.extend(_walk(child))
    return found
