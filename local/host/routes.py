"""HTTP trigger routes: ASP.NET-style templates (`items/{id:int}`, `{name?}`, `{*rest}`) to functions."""

from __future__ import annotations

import re
from dataclasses import dataclass
from urllib.parse import unquote

from .bindings import FunctionSpec, HttpTrigger
from .settings import StartupError

_CONSTRAINTS = {
    "int": r"-?\d+",
    "long": r"-?\d+",
    "bool": r"(?:true|false)",
    "guid": r"[0-9a-fA-F]{8}-?(?:[0-9a-fA-F]{4}-?){3}[0-9a-fA-F]{12}",
    "alpha": r"[A-Za-z]+",
    "decimal": r"-?\d+(?:\.\d+)?",
    "double": r"-?\d+(?:\.\d+)?",
    "float": r"-?\d+(?:\.\d+)?",
}
_PARAMETER = re.compile(r"\{([^{}]+)\}")


@dataclass(frozen=True)
class _Parameter:
    name: str
    pattern: str
    optional: bool
    catch_all: bool
    default: str | None


def _parameter(token: str, template: str) -> _Parameter:
    catch_all = token.startswith("*")
    token = token.lstrip("*")
    default = None
    if "=" in token:
        token, default = token.split("=", 1)
    optional = token.endswith("?")
    token = token.rstrip("?")
    name, *constraints = token.split(":")
    if not name:
        raise StartupError(f"route {template!r}: a parameter has no name")
    pattern = ".*" if catch_all else "[^/]+"
    for constraint in constraints:
        kind = constraint.split("(", 1)[0].lower()
        if kind == "regex":
            pattern = constraint[len("regex("):-1]
        elif kind in _CONSTRAINTS:
            pattern = _CONSTRAINTS[kind]
    return _Parameter(name, pattern, optional or default is not None, catch_all, default)


@dataclass(frozen=True)
class Route:
    spec: FunctionSpec
    template: str
    pattern: re.Pattern[str]
    parameters: tuple[_Parameter, ...]
    methods: frozenset[str] | None
    precedence: tuple[int, int, int]

    @classmethod
    def compile(cls, spec: FunctionSpec) -> Route:
        trigger = spec.trigger
        assert isinstance(trigger, HttpTrigger)
        template = trigger.route
        parameters: list[_Parameter] = []
        regex: list[str] = []
        literal_segments = 0
        for index, segment in enumerate(template.split("/") if template else []):
            separator = "/" if index else ""
            whole = _PARAMETER.fullmatch(segment)
            if whole:
                parameter = _parameter(whole.group(1), template)
                group = f"p{len(parameters)}"
                parameters.append(parameter)
                capture = f"(?P<{group}>{parameter.pattern})"
                regex.append(f"(?:{separator}{capture})?" if parameter.optional or parameter.catch_all
                             else separator + capture)
                continue
            pieces: list[str] = []
            position = 0
            for match in _PARAMETER.finditer(segment):
                pieces.append(re.escape(segment[position:match.start()]))
                parameter = _parameter(match.group(1), template)
                pieces.append(f"(?P<p{len(parameters)}>{parameter.pattern.replace('[^/]+', '[^/]+?')})")
                parameters.append(parameter)
                position = match.end()
            pieces.append(re.escape(segment[position:]))
            literal_segments += position == 0
            regex.append(separator + "".join(pieces))
        has_catch_all = any(parameter.catch_all for parameter in parameters)
        return cls(spec, template, re.compile("".join(regex), re.IGNORECASE), tuple(parameters),
                   trigger.methods, (int(has_catch_all), -literal_segments, len(parameters)))

    def match(self, path: str) -> dict[str, str] | None:
        found = self.pattern.fullmatch(path)
        if not found:
            return None
        values: dict[str, str] = {}
        for index, parameter in enumerate(self.parameters):
            value = found.group(f"p{index}")
            if value is not None:
                values[parameter.name] = unquote(value)
            elif parameter.default is not None:
                values[parameter.name] = parameter.default
        return values


@dataclass(frozen=True)
class RouteMatch:
    spec: FunctionSpec
    route_params: dict[str, str]


class Router:
    """Finds the function for a request path under the route prefix (host.json routePrefix)."""

    def __init__(self, functions: list[FunctionSpec], prefix: str) -> None:
        self.prefix = prefix.strip("/")
        self.routes = sorted((Route.compile(spec) for spec in functions), key=lambda route: route.precedence)

    def match(self, method: str, path: str) -> RouteMatch | None:
        """`path` is the request path without the query string, still percent-encoded."""
        relative = path.strip("/")
        if self.prefix:
            prefix = self.prefix.lower()
            if relative.lower() == prefix:
                relative = ""
            elif relative.lower().startswith(prefix + "/"):
                relative = relative[len(prefix) + 1:]
            else:
                return None
        for route in self.routes:
            if route.methods is not None and method.upper() not in route.methods:
                continue
            params = route.match(relative)
            if params is not None:
                return RouteMatch(route.spec, params)
        return None
