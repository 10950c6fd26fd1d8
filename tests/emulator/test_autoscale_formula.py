"""The autoscale formula language alone (local/batch/autoscale.py): parsing, each operator, vectors, samples."""

from __future__ import annotations

import pytest

from local.batch.autoscale import FormulaError, Metrics, Outcome, evaluate

# Batch's documented "task-based adjustment" example, as the pipeline's generated formula follows it.
DOCUMENTED = """// Get pending tasks for the past 15 minutes.
$samples = $PendingTasks.GetSamplePercent(TimeInterval_Minute * 15);
// If we have fewer than 70 percent data points, we use the last sample point,
// otherwise we use the maximum of last sample point and the history average.
$tasks = $samples < 70 ? max(0, $PendingTasks.GetSample(1)) :
    max($PendingTasks.GetSample(1), avg($PendingTasks.GetSample(TimeInterval_Minute * 15)));
$targetVMs = $tasks > 0 ? $tasks : max(0, $TargetDedicatedNodes / 2);
$TargetDedicatedNodes = max(0, min($targetVMs, 20));
$NodeDeallocationOption = taskcompletion;
"""

NOW = 10_000.0


def pending(*values: float, every: float = 30.0) -> Metrics:
    """Metrics whose $PendingTasks samples are `values`, oldest first, the last one taken now."""
    times = [NOW - every * (len(values) - 1 - index) for index in range(len(values))]
    return Metrics(now=NOW, samples={"$PendingTasks": list(zip(times, values, strict=True))})


def run(formula: str, metrics: Metrics | None = None) -> Outcome:
    return evaluate(formula, metrics or Metrics(now=NOW))


def value(expression: str, metrics: Metrics | None = None) -> str:
    """The results entry of `$v = expression`."""
    results = run(f"$v = {expression}; $TargetDedicatedNodes = 0", metrics).results
    return dict(part.split("=", 1) for part in results.split(";"))["$v"]


def error(formula: str, metrics: Metrics | None = None) -> FormulaError:
    with pytest.raises(FormulaError) as caught:
        run(formula, metrics)
    return caught.value


def test_documented_example_with_few_samples_uses_the_last_sample() -> None:
    outcome = run(DOCUMENTED, pending(0, 7))  # 2 of the 30 samples 15 minutes should hold: under 70 %
    assert outcome == Outcome(
        target_dedicated=7,
        target_low_priority=0,
        deallocation="taskcompletion",
        results="$TargetDedicatedNodes=7;$NodeDeallocationOption=taskcompletion;"
        "$samples=6.666666666666667;$targetVMs=7;$tasks=7",
    )


def test_documented_example_with_full_history_takes_the_larger_of_last_and_average() -> None:
    history = [40.0] * 29 + [10.0]  # a full 15 minutes: average 39, last 10
    assert run(DOCUMENTED, pending(*history)).target_dedicated == 20  # capped at 20
    history = [12.0] * 29 + [3.0]
    outcome = run(DOCUMENTED, pending(*history))
    assert outcome.target_dedicated == 11  # avg 11.7 truncated: Batch rounds a fractional target down
    assert outcome.results.startswith("$TargetDedicatedNodes=11.7;")


def test_documented_example_halves_the_pool_when_idle() -> None:
    idle = Metrics(now=NOW, samples={"$PendingTasks": [(NOW, 0.0)]}, target_dedicated=5)
    assert run(DOCUMENTED, idle).target_dedicated == 2  # 5 / 2 = 2.5, truncated


def test_ceil_and_floor_round_targets_explicitly() -> None:
    formula = (
        "$TargetDedicatedNodes = min(10, ceil(max($PendingTasks.GetSample(1)) / 4));"
        "$TargetLowPriorityNodes = floor(7 / 2);"
    )
    outcome = run(formula, pending(9))
    assert (outcome.target_dedicated, outcome.target_low_priority) == (3, 3)
    assert outcome.results == "$TargetDedicatedNodes=3;$TargetLowPriorityNodes=3;$NodeDeallocationOption=requeue"
    assert (
        value("ceil(1.2, 2.5)") == "[2,3]" and value("floor($PendingTasks.GetSample(2) / 2)", pending(3, 5)) == "[1,2]"
    )


@pytest.mark.parametrize(
    ("expression", "expected"),
    [
        ("1 + 2 * 3", "7"),
        ("(1 + 2) * 3", "9"),
        ("10 - 4 - 3", "3"),
        ("7 / 2", "3.5"),
        ("-3 + +1", "-2"),
        ("2 < 3", "1"),
        ("3 <= 3", "1"),
        ("2 > 3", "0"),
        ("3 >= 4", "0"),
        ("2 == 2", "1"),
        ("2 != 2", "0"),
        ("1 && 0", "0"),
        ("1 || 0", "1"),
        ("!0", "1"),
        ("!5", "0"),
        ("0 ? 1 : 2", "2"),
        ("1 ? 0 ? 3 : 4 : 5", "4"),
        ("1 < 2 && 2 < 3 ? 10 : 20", "10"),
        ("min(4, 2, 8)", "2"),
        ("max(4, 2, 8)", "8"),
        ("avg(1, 2, 3, 7)", "3.25"),
        ("sum(1, 2, 3)", "6"),
        ("TimeInterval_Minute * 2 == TimeInterval_Second * 120", "1"),
        ("TimeInterval_Hour > TimeInterval_Minute * 59", "1"),
        ("TimeInterval_Day / 24 == TimeInterval_Hour", "1"),
        ("taskcompletion == taskcompletion", "1"),
        ("TimeInterval_Minute * 15", "00:15:00"),
    ],
)
def test_operators(expression: str, expected: str) -> None:
    assert value(expression) == expected


def test_vectors_flatten_into_min_max_avg_and_combine_componentwise() -> None:
    metrics = pending(1, 2, 3)
    assert value("$PendingTasks.GetSample(3)", metrics) == "[1,2,3]"
    assert value("avg($PendingTasks.GetSample(3), 7)", metrics) == "3.25"  # avg(v, 7) is avg(1,2,3,7)
    assert value("max($PendingTasks.GetSample(3)) + min($PendingTasks.GetSample(3))", metrics) == "4"
    assert value("$PendingTasks.GetSample(3) * 2 + $PendingTasks.GetSample(3)", metrics) == "[3,6,9]"
    assert (
        "reduce it with max(), min() or avg()"
        in error("$TargetDedicatedNodes = $PendingTasks.GetSample(1)", metrics).message
    )
    assert "needs a number" in error("$v = $PendingTasks.GetSample(1) > 0; $TargetDedicatedNodes = 0", metrics).message


def test_user_variables_with_or_without_dollar_and_the_aliases() -> None:
    outcome = run("maxNodes = 4; $wanted = 6; $TargetDedicated = min(maxNodes, $wanted);")
    assert outcome.target_dedicated == 4
    assert outcome.results == "$TargetDedicated=4;$NodeDeallocationOption=requeue;maxNodes=4;$wanted=6"
    both = run("$TargetDedicatedNodes = 2; $TargetDedicated = 5;")  # the full name wins over its alias
    assert both.target_dedicated == 2


def test_get_sample_by_interval_counts_only_the_window_and_checks_the_percentage() -> None:
    metrics = pending(9, 1, 2, 3, 4)  # 30 s apart; the last 2 minutes hold 1..4 (the first is older)
    assert value("$PendingTasks.GetSample(TimeInterval_Minute * 2)", metrics) == "[1,2,3,4]"
    assert value("$PendingTasks.GetSamplePercent(TimeInterval_Minute * 2)", metrics) == "100"
    assert value("$PendingTasks.GetSamplePercent(TimeInterval_Minute * 4)", metrics) == "62.5"
    assert value("$PendingTasks.GetSample(TimeInterval_Second * 30, TimeInterval_Minute * 2)", metrics) == "[1,2,3]"
    assert value("$PendingTasks.GetSample(TimeInterval_Minute * 4, 60)", metrics) == "[9,1,2,3,4]"
    too_few = error("$TargetDedicatedNodes = avg($PendingTasks.GetSample(TimeInterval_Minute * 4, 70))", metrics)
    assert too_few.code == "InsufficientSampleData"
    assert too_few.detail == "Line 1, Col 29: Insufficient data from data set: $PendingTasks wanted 70%, received 62%"


def test_get_sample_with_too_few_samples_is_an_error() -> None:
    problem = error("$TargetDedicatedNodes = max($PendingTasks.GetSample(3))", pending(1, 2))
    assert problem.code == "InsufficientSampleData" and "wanted 3 samples, received 2" in problem.message
    empty = error("$TargetDedicatedNodes = avg($ActiveTasks.GetSample(TimeInterval_Minute))", pending(1))
    assert "empty" in empty.message


def test_compressed_time_scales_intervals() -> None:
    # With time compressed 600x, TimeInterval_Minute covers 0.1 s of samples taken every 0.05 s.
    times = [NOW - 0.05 * index for index in range(4)][::-1]
    metrics = Metrics(now=NOW, samples={"$RunningTasks": [(t, 2.0) for t in times]}, time_scale=1 / 600)
    assert value("$RunningTasks.GetSamplePercent(TimeInterval_Minute)", metrics) == "100"
    assert value("$RunningTasks.GetSample(TimeInterval_Minute)", metrics) == "[2,2]"


@pytest.mark.parametrize(
    ("formula", "line", "column", "text"),
    [
        (
            "$TargetDedicatedNodes = (1 + 2",
            1,
            31,
            "expected ')' to close the parenthesis, found the end of the formula",
        ),
        ("$a = 1\n$b = 2", 2, 1, "expected ';' between statements, found '$b'"),
        ("$a = 1;\n  $b == 2;", 2, 6, "expected '=' after $b, found '=='"),
        ("$a = 1 +* 2", 1, 9, "expected a number, a variable, a function call or '(', found '*'"),
        ('$a = "text"', 1, 6, "string literals are not supported here"),
        ("$a = 1 ? 2", 1, 11, "expected ':' in the conditional expression, found the end of the formula"),
        ("$a = max(1 2)", 1, 12, "expected ',' between arguments, found '2'"),
        ("// only a comment", 1, 1, "the formula has no statements"),
        ("$PendingTasks = 3", 1, 1, "$PendingTasks is a read-only service-defined variable"),
    ],
)
def test_syntax_errors_say_where(formula: str, line: int, column: int, text: str) -> None:
    problem = error(formula)
    assert problem.code == "AutoScalingFormulaSyntaxError"
    assert (problem.line, problem.column, problem.message) == (line, column, text)


@pytest.mark.parametrize(
    ("formula", "named"),
    [
        ("$TargetDedicatedNodes = max(0, $CPUPercent.GetSample(1))", "the variable $CPUPercent"),
        ("$TargetDedicatedNodes = percentile($PendingTasks.GetSample(10), 90)", "the function percentile()"),
        ("$TargetDedicatedNodes = $PendingTasks.Count()", "the method $PendingTasks.Count()"),
        ("$TargetDedicatedNodes = $SucceededTasks.GetSample(1)", "the variable $SucceededTasks"),
        ("$t = time(); $TargetDedicatedNodes = $t.hour", "the function time()"),
        ("$TargetDedicatedNodes = $PreemptedNodeCount", "the variable $PreemptedNodeCount"),
        ("$x = 1; $TargetDedicatedNodes = $x.hour", "member access .hour"),
    ],
)
def test_constructs_outside_the_subset_are_refused_by_name(formula: str, named: str) -> None:
    problem = error(formula)
    assert problem.code == "FormulaNotSupportedByEmulator"
    assert problem.message.startswith(f"the Batch emulator does not support {named} in autoscale formulas")


def test_evaluation_errors() -> None:
    assert "used before it is assigned" in error("$TargetDedicatedNodes = $nodes").message
    assert "division by zero" in error("$TargetDedicatedNodes = 1 / 0").message
    assert "must be 0 or more" in error("$TargetDedicatedNodes = -1").message
    assert "must be one of requeue" in error("$NodeDeallocationOption = 3").message
    assert "GetSample(...)" in error("$TargetDedicatedNodes = $PendingTasks").message


def test_limits() -> None:
    assert error("$a = 1;" * 101).message == "a formula may have at most 100 statements"
    too_long = error("$TargetDedicatedNodes = 1;" + " " * 8192)
    assert too_long.code == "AutoScaleFormulaTooLong"
    assert run("// 8192 characters are allowed\n$TargetDedicatedNodes = 1;".ljust(8192)).target_dedicated == 1
