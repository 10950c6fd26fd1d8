"""Evaluating an autoscale formula (the subset in autoscale_syntax.py) over a pool's metric samples. Pure.

Semantics follow Batch's documentation ("Create a formula to automatically scale compute nodes in a
Batch pool"):

- values are doubles, doubleVecs (what GetSample returns), time intervals and the deallocation words;
  comparisons and && || ! give 1 or 0, and a condition is true when nonzero;
- min/max/avg/sum take a doubleVecList: any mix of doubles and vectors, flattened ("avg(v, 7)" is
  "avg(1,2,3,7)" for v = [1,2,3]); ceil/floor of a double is a double, of a list a vector;
- GetSample(count) is the last `count` samples; GetSample(interval [, percent]) the samples of the last
  interval, failing with InsufficientSampleData when fewer than `percent` % of the samples that
  interval should hold are there; GetSample(start, end [, percent]) looks back from `start` to `end`;
  GetSamplePercent(interval) is that percentage (samples are taken every 30 s on Batch);
- a fractional target is truncated: Batch rounds 2.9 nodes down to 2 (Azure/Batch#151,
  MicrosoftDocs/azure-docs#95350), so formulas use ceil() to round up;
- the results string is "$TargetDedicatedNodes=1;$NodeDeallocationOption=requeue;..." then the user
  variables by name, as in the REST spec's Pools_EvaluatePoolAutoscale example.

A vector where a number is needed (a comparison, a condition, a target) is an error that says to
reduce it with max/min/avg, rather than a guess.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field

from local.batch.autoscale_syntax import (
    DEALLOCATION_OPTIONS,
    EVALUATION_ERROR,
    INSUFFICIENT_SAMPLES,
    MAX_FORMULA_CHARS,
    SAMPLED,
    TARGETS,
    TIME_UNITS,
    Binary,
    Call,
    FormulaError,
    Method,
    Name,
    Node,
    Number,
    Statement,
    Ternary,
    Unary,
    parse,
)

__all__ = ["BATCH_SAMPLE_SECONDS", "MAX_FORMULA_CHARS", "FormulaError", "Metrics", "Outcome", "evaluate", "parse"]

BATCH_SAMPLE_SECONDS = 30.0  # "samples are obtained every 30 seconds"


@dataclass(frozen=True)
class Interval:
    """A timeinterval, in Batch seconds."""

    seconds: float


@dataclass(frozen=True)
class Word:
    """A bare deallocation option such as taskcompletion."""

    text: str


Vector = tuple[float, ...]
Value = float | Vector | Interval | Word


@dataclass(frozen=True)
class Metrics:
    """What a formula can read about its pool.

    `samples` maps $PendingTasks/$ActiveTasks/$RunningTasks to (time, value) pairs, oldest first, with
    times in the same clock as `now` (seconds). `time_scale` is how many of those seconds one Batch
    second lasts: the emulator compresses time for tests, and a formula's TimeInterval_Minute then
    covers 60 x time_scale seconds of samples, taken every 30 x time_scale seconds.
    """

    now: float
    samples: Mapping[str, Sequence[tuple[float, float]]] = field(default_factory=dict)
    time_scale: float = 1.0
    target_dedicated: int = 0
    target_low_priority: int = 0
    current_dedicated: int = 0
    current_low_priority: int = 0


@dataclass(frozen=True)
class Outcome:
    """A successful evaluation: node targets (truncated), the deallocation option, Batch's results string."""

    target_dedicated: int
    target_low_priority: int
    deallocation: str
    results: str


def evaluate(formula: str, metrics: Metrics) -> Outcome:
    """Evaluate `formula` against `metrics`; FormulaError says what went wrong and where."""
    return _Evaluation(metrics).run(parse(formula))


def _fail(node: Node, message: str, code: str = EVALUATION_ERROR) -> FormulaError:
    return FormulaError(code, message, node.line, node.column)


def _describe(value: Value) -> str:
    if isinstance(value, tuple):
        return "a vector"
    if isinstance(value, Interval):
        return "a time interval"
    if isinstance(value, Word):
        return f"the word {value.text}"
    return "a number"


def _number(value: Value, node: Node, where: str) -> float:
    if isinstance(value, float):
        return value
    hint = "; reduce it with max(), min() or avg()" if isinstance(value, tuple) else ""
    raise _fail(node, f"{where} needs a number, not {_describe(value)}{hint}")


def _format(value: Value) -> str:
    if isinstance(value, Word):
        return value.text
    if isinstance(value, Interval):
        whole = int(value.seconds)
        return f"{whole // 3600:02d}:{whole // 60 % 60:02d}:{whole % 60:02d}"
    if isinstance(value, tuple):
        return "[" + ",".join(_format(item) for item in value) + "]"
    return str(int(value)) if value.is_integer() else repr(value)


_ARITHMETIC: dict[str, Callable[[float, float], float]] = {
    "+": lambda a, b: a + b,
    "-": lambda a, b: a - b,
    "*": lambda a, b: a * b,
    "/": lambda a, b: a / b,
}
_COMPARISON: dict[str, Callable[[float, float], bool]] = {
    "<": lambda a, b: a < b,
    "<=": lambda a, b: a <= b,
    ">": lambda a, b: a > b,
    ">=": lambda a, b: a >= b,
    "==": lambda a, b: a == b,
    "!=": lambda a, b: a != b,
}


class _Evaluation:
    def __init__(self, metrics: Metrics) -> None:
        self.metrics = metrics
        self.variables: dict[str, Value] = {
            "$TargetDedicatedNodes": float(metrics.target_dedicated),
            "$TargetLowPriorityNodes": float(metrics.target_low_priority),
            "$NodeDeallocationOption": Word("requeue"),
        }
        self.spelled: dict[str, str] = {}  # canonical target name -> the name the formula assigned

    def run(self, statements: list[Statement]) -> Outcome:
        for statement in statements:
            value = self.value(statement.expression)
            name = TARGETS.get(statement.target, statement.target)
            if name in ("$TargetDedicatedNodes", "$TargetLowPriorityNodes"):
                _number(value, statement.expression, statement.target)
                # Batch: "If both the fully named variable and its alias are set ... the fully named wins".
                if self.spelled.get(name) == name and statement.target != name:
                    continue
                self.spelled[name] = statement.target
            elif name == "$NodeDeallocationOption" and not isinstance(value, Word):
                raise _fail(
                    statement.expression,
                    f"$NodeDeallocationOption must be one of {', '.join(DEALLOCATION_OPTIONS)}",
                )
            self.variables[name] = value
        dedicated = self._target("$TargetDedicatedNodes", statements)
        low_priority = self._target("$TargetLowPriorityNodes", statements)
        option = self.variables["$NodeDeallocationOption"]
        assert isinstance(option, Word)
        parts = [
            f"{self.spelled.get('$TargetDedicatedNodes', '$TargetDedicatedNodes')}="
            f"{_format(self.variables['$TargetDedicatedNodes'])}"
        ]
        if "$TargetLowPriorityNodes" in self.spelled:
            parts.append(
                f"{self.spelled['$TargetLowPriorityNodes']}={_format(self.variables['$TargetLowPriorityNodes'])}"
            )
        parts.append(f"$NodeDeallocationOption={option.text}")
        own = sorted(
            (name for name in self.variables if name not in ("$NodeDeallocationOption", *TARGETS.values())),
            key=lambda name: name.lstrip("$").lower(),
        )
        parts.extend(f"{name}={_format(self.variables[name])}" for name in own)
        return Outcome(dedicated, low_priority, option.text, ";".join(parts))

    def _target(self, name: str, statements: list[Statement]) -> int:
        value = self.variables[name]
        assert isinstance(value, float)
        if math.isnan(value) or value < 0 or math.isinf(value):
            where = next((s for s in statements if TARGETS.get(s.target) == name), statements[-1])
            raise _fail(where, f"{name} evaluated to {_format(value)}; a node count must be 0 or more")
        return int(value)  # truncated, as Batch does

    # ------------------------------------------------------------------ expressions

    def value(self, node: Node) -> Value:
        if isinstance(node, Number):
            return node.value
        if isinstance(node, Name):
            return self.name(node)
        if isinstance(node, Unary):
            operand = self.value(node.operand)
            if node.op == "!":
                return 0.0 if _number(operand, node, "'!'") else 1.0
            if isinstance(operand, Interval):
                return Interval(-operand.seconds)
            if isinstance(operand, tuple):
                return tuple(-item for item in operand)
            return -_number(operand, node, "'-'")
        if isinstance(node, Ternary):
            condition = _number(self.value(node.condition), node, "the condition of '?'")
            return self.value(node.then if condition else node.otherwise)
        if isinstance(node, Binary):
            return self.binary(node)
        if isinstance(node, Call):
            return self.call(node)
        if isinstance(node, Method):
            return self.method(node)
        raise _fail(node, "unexpected expression")

    def name(self, node: Name) -> Value:
        canonical = TARGETS.get(node.name, node.name)
        if canonical in self.variables:
            return self.variables[canonical]
        if node.name in TIME_UNITS:
            return Interval(TIME_UNITS[node.name])
        if node.name in DEALLOCATION_OPTIONS:
            return Word(node.name)
        if node.name == "$CurrentDedicatedNodes":
            return float(self.metrics.current_dedicated)
        if node.name == "$CurrentLowPriorityNodes":
            return float(self.metrics.current_low_priority)
        if node.name in SAMPLED:
            raise _fail(node, f"{node.name} is a set of samples; read it with {node.name}.GetSample(...)")
        raise _fail(node, f"the variable {node.name} is used before it is assigned")

    def binary(self, node: Binary) -> Value:
        if node.op in ("&&", "||"):
            first = _number(self.value(node.left), node, f"'{node.op}'")
            if (node.op == "&&" and not first) or (node.op == "||" and first):
                return 1.0 if first else 0.0
            return 1.0 if _number(self.value(node.right), node, f"'{node.op}'") else 0.0
        left, right = self.value(node.left), self.value(node.right)
        if node.op in _COMPARISON:
            compare = _COMPARISON[node.op]
            if isinstance(left, Interval) and isinstance(right, Interval):
                return 1.0 if compare(left.seconds, right.seconds) else 0.0
            if isinstance(left, Word) and isinstance(right, Word) and node.op in ("==", "!="):
                return 1.0 if compare(float(left.text == right.text), 1.0) else 0.0
            where = f"'{node.op}'"
            return 1.0 if compare(_number(left, node, where), _number(right, node, where)) else 0.0
        return self.arithmetic(node, left, right)

    def arithmetic(self, node: Binary, left: Value, right: Value) -> Value:
        operate = _ARITHMETIC[node.op]

        def apply(a: float, b: float) -> float:
            if node.op == "/" and b == 0:
                raise _fail(node, "division by zero")
            return operate(a, b)

        if isinstance(left, Interval) or isinstance(right, Interval):
            if isinstance(left, Interval) and isinstance(right, Interval) and node.op in "+-":
                return Interval(apply(left.seconds, right.seconds))
            if isinstance(left, Interval) and isinstance(right, float) and node.op in "*/":
                return Interval(apply(left.seconds, right))
            if isinstance(left, float) and isinstance(right, Interval) and node.op == "*":
                return Interval(left * right.seconds)
            raise _fail(node, f"cannot apply '{node.op}' to {_describe(left)} and {_describe(right)}")
        if isinstance(left, Word) or isinstance(right, Word):
            raise _fail(node, f"cannot apply '{node.op}' to {_describe(left)} and {_describe(right)}")
        if isinstance(left, tuple) and isinstance(right, tuple):
            if len(left) != len(right):
                raise _fail(node, f"'{node.op}' on vectors of different lengths ({len(left)} and {len(right)})")
            return tuple(apply(a, b) for a, b in zip(left, right, strict=True))
        if isinstance(left, tuple):
            assert isinstance(right, float)
            return tuple(apply(a, right) for a in left)
        if isinstance(right, tuple):
            return tuple(apply(left, b) for b in right)
        return apply(left, right)

    def call(self, node: Call) -> Value:
        args = [self.value(arg) for arg in node.args]
        if not args:
            raise _fail(node, f"{node.function}() needs at least one argument")
        flat: list[float] = []
        for arg, source in zip(args, node.args, strict=True):
            if isinstance(arg, tuple):
                flat.extend(arg)
            else:
                flat.append(_number(arg, source, f"{node.function}()"))
        if node.function in ("ceil", "floor"):
            rounding = math.ceil if node.function == "ceil" else math.floor
            if len(args) == 1 and isinstance(args[0], float):
                return float(rounding(args[0]))
            return tuple(float(rounding(item)) for item in flat)
        if not flat:
            raise _fail(node, f"{node.function}() of no samples: the vector is empty")
        if node.function == "min":
            return min(flat)
        if node.function == "max":
            return max(flat)
        if node.function == "sum":
            return math.fsum(flat)
        return math.fsum(flat) / len(flat)  # avg

    # ------------------------------------------------------------------ samples

    def method(self, node: Method) -> Value:
        samples = [(float(t), float(v)) for t, v in self.metrics.samples.get(node.target, ())]
        args = [self.value(arg) for arg in node.args]
        intervals = [arg for arg in args if isinstance(arg, Interval)]
        call = f"{node.target}.{node.method}()"
        if node.method == "GetSample" and len(args) == 1 and isinstance(args[0], float):
            count = int(args[0])
            if count < 1:
                raise _fail(node, f"{call} needs a count of at least 1")
            if len(samples) < count:
                raise _fail(
                    node,
                    f"Insufficient data from data set: {node.target} wanted {count} samples, received {len(samples)}",
                    INSUFFICIENT_SAMPLES,
                )
            return tuple(value for _time, value in samples[-count:])
        if not 1 <= len(intervals) <= 2 or args[: len(intervals)] != intervals:
            form = "(count), (interval [, percent]) or (start, end [, percent])"
            if node.method == "GetSamplePercent":
                form = "(interval) or (start, end)"
            raise _fail(node, f"{call} takes {form}")
        rest = args[len(intervals) :]
        if node.method == "GetSamplePercent" and rest:
            raise _fail(node, f"{call} takes (interval) or (start, end)")
        if len(rest) > 1:
            raise _fail(node, f"{call} takes at most one percentage after its interval(s)")
        start, end = (
            (0.0, intervals[0].seconds) if len(intervals) == 1 else (intervals[0].seconds, intervals[1].seconds)
        )
        if end <= start:
            raise _fail(node, f"{call}: the look-back end must be further back than its start")
        scale = self.metrics.time_scale
        newest, oldest = self.metrics.now - start * scale, self.metrics.now - end * scale
        window = [value for time, value in samples if oldest < time <= newest]
        expected = max(1.0, (end - start) / BATCH_SAMPLE_SECONDS)
        percent = min(100.0, 100.0 * len(window) / expected)
        if node.method == "GetSamplePercent":
            return percent
        wanted = _number(rest[0], node.args[-1], f"the percentage of {call}") if rest else 0.0
        if percent < wanted:
            raise _fail(
                node,
                f"Insufficient data from data set: {node.target} wanted {_format(wanted)}%, "
                f"received {_format(float(int(percent)))}%",
                INSUFFICIENT_SAMPLES,
            )
        return tuple(window)
