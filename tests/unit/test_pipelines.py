"""Two pipelines that could take the same input are refused when the pipelines file loads."""

import itertools
import json
from pathlib import Path

import pytest

from shared import ids
from shared.errors import ConfigError
from shared.pipelines import MatchSpec, PipelineSet, RoutingConflict, load_pipelines, route
from tests.unit.fakes import PIPELINE

PROJECT = Path(__file__).resolve().parents[2]


def pipeline(name: str, prefix: str = "", glob: str = "*") -> dict[str, object]:
    return {**PIPELINE, "name": name, "match": {"prefix": prefix, "glob": glob}}


def write(tmp_path: Path, *pipelines: dict[str, object]) -> Path:
    path = tmp_path / "pipelines.json"
    path.write_text(json.dumps({"pipelines": list(pipelines)}))
    return path


def common(first: tuple[str, str], second: tuple[str, str]) -> str | None:
    return MatchSpec(prefix=first[0], glob=first[1]).common_name(MatchSpec(prefix=second[0], glob=second[1]))


def test_identical_patterns_are_refused_naming_the_file_both_fields_and_a_name(tmp_path: Path) -> None:
    path = write(tmp_path, pipeline("a", glob="*.csv"), pipeline("b", glob="*.csv"))
    with pytest.raises(ConfigError) as raised:
        load_pipelines(path)
    assert str(raised.value) == (
        f"{path}: pipelines['a'].match (prefix '', glob '*.csv') and pipelines['b'].match (prefix '', glob '*.csv') "
        "can both take 'x.csv'; an input may match one pipeline at most"
    )


def test_star_crosses_slashes_so_a_folder_glob_overlaps_a_top_level_one(tmp_path: Path) -> None:
    # fnmatch's `*` matches '/', so '*.csv' takes 'data/x.csv' as well
    with pytest.raises(ConfigError, match=r"pipelines\['b'\]\.match .* can both take 'data/x\.csv'"):
        load_pipelines(write(tmp_path, pipeline("a", glob="*.csv"), pipeline("b", glob="data/*.csv")))
    assert common(("", "2026/*/*.log"), ("", "*.log")) == "2026/x/x.log"
    assert common(("", "**"), ("", "*")) == "x"


def test_prefix_and_glob_together_make_the_language(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"can both take 'images/.*\.png'"):
        load_pipelines(
            write(tmp_path, pipeline("images", prefix="images/"), pipeline("png", prefix="images/", glob="*.png"))
        )
    assert common(("images/", "*"), ("logs/", "*")) is None
    assert common(("in/", "*.csv"), ("", "in/a*")) == "in/a.csv"


def test_disjoint_pipelines_load_and_route_each_input_to_one(tmp_path: Path) -> None:
    pipelines = load_pipelines(
        write(
            tmp_path,
            pipeline("csv", glob="*.csv"),
            pipeline("text", glob="*.txt"),
            pipeline("logs", prefix="logs/", glob="*.log"),
            pipeline("upper", glob="[A-Z]*.dat"),
            pipeline("lower", glob="[!A-Z]*.dat"),
        )
    )
    assert [route(pipelines, name).name for name in ("d/a.csv", "a.txt", "logs/x.log", "Q.dat", "q.dat")] == [  # type: ignore[union-attr]
        "csv",
        "text",
        "logs",
        "upper",
        "lower",
    ]
    assert route(pipelines, "logs/x.txt").name == "text"  # type: ignore[union-attr]


@pytest.mark.parametrize(
    ("first", "second", "expected"),
    [
        (("", "[abc].txt"), ("", "[cde].txt"), "c.txt"),
        (("", "[abc].txt"), ("", "[def].txt"), None),
        (("", "[a-f]*"), ("", "[!a-f]*"), None),
        (("", "[!a]*"), ("", "[!b]*"), "xx"),  # the search prefers a '*' that takes something
        (("", "[z-a]*"), ("", "*"), None),  # an empty range matches nothing in fnmatch
        (("", "[[]x]"), ("", "?x*"), "[x]"),  # '[[]' is the set of '['; a lone ']' is plain
        (("", "*]["), ("", "x*"), "x]["),  # a '[' that never closes is a plain character
        (("", "report-??.csv"), ("", "report-?.csv"), None),
        (("", "report-??.csv"), ("", "report-1*"), "report-1x.csv"),
        (("", "a?c"), ("", "a/c"), "a/c"),  # '?' takes '/' too
        (("", "*.CSV"), ("", "*.csv"), None),  # case-sensitive, as routing is
    ],
)
def test_character_classes_and_question_marks(
    first: tuple[str, str], second: tuple[str, str], expected: str | None
) -> None:
    assert common(first, second) == expected


@pytest.mark.parametrize(
    ("first", "second"),
    [
        (("", "*"), ("", "*.")),  # Azure names cannot end in '.' ...
        (("", "*/"), ("", "*")),  # ... or '/'
        (("", "x*"), ("", "*\n")),  # nor hold control characters
        (("", "x" * 1020 + "*"), ("", "*" + "y" * 10)),  # both need over 1,024 characters
    ],
)
def test_only_names_that_can_be_submitted_count(first: tuple[str, str], second: tuple[str, str]) -> None:
    assert common(first, second) is None


def test_a_long_but_valid_common_name_is_found() -> None:
    name = common(("", "x" * 1000 + "*"), ("", "*" + "y" * 24))
    assert name == "x" * 1000 + "y" * 24


GLOBS = ["*", "a*", "*a", "*.b", "a/*", "?", "??", "a?", "[ab]", "[!a]*", "[a-b]/*", "*/*", "*a*", "b*.a", "[.]*", "a"]
NAMES = ["".join(chars) for length in range(1, 5) for chars in itertools.product("ab/.", repeat=length)]


@pytest.mark.parametrize(("first", "second"), list(itertools.combinations_with_replacement(GLOBS, 2)))
def test_the_overlap_agrees_with_routing_on_every_short_name(first: str, second: str) -> None:
    """Checked against fnmatch itself: a witness both route to, and no overlap missed among short names."""
    specs = MatchSpec(glob=first), MatchSpec(glob=second)
    name = specs[0].common_name(specs[1])
    if name is not None:
        assert specs[0].matches(name) and specs[1].matches(name)
        assert ids.check_blob_name(name) is None
    both = [n for n in NAMES if ids.check_blob_name(n) is None and specs[0].matches(n) and specs[1].matches(n)]
    if both:
        assert name is not None


def test_a_set_built_without_the_file_still_rejects_a_conflicting_input() -> None:
    pipelines = PipelineSet.model_validate({"pipelines": [pipeline("a"), pipeline("b", glob="*.txt")]})
    assert pipelines.overlaps()
    with pytest.raises(RoutingConflict, match=r"a, b all match 'n\.txt'"):
        route(pipelines, "n.txt")


def test_a_longer_prefix_wins_over_a_catch_all(tmp_path: Path) -> None:
    pipelines = load_pipelines(
        write(
            tmp_path,
            pipeline("everything"),
            pipeline("images", prefix="images/"),
            pipeline("png", prefix="images/png/", glob="*.png"),
        )
    )
    assert pipelines.overlaps() == []
    names = ("a.png", "images/a.png", "images/png/a.png", "images/png/a.txt")
    routed = {name: route(pipelines, name) for name in names}
    assert {name: p.name if p else None for name, p in routed.items()} == {
        "a.png": "everything",
        "images/a.png": "images",
        "images/png/a.png": "png",
        "images/png/a.txt": "images",  # the png pipeline does not take it: the next longest prefix does
    }


def test_the_sample_pipelines_file_loads() -> None:
    assert load_pipelines(PROJECT / "samples" / "pipelines.json").by_name("report") is not None
