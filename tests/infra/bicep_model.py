"""A small model of the Bicep files, read from tree-sitter parse trees (no Bicep compiler exists on these machines).

Literals become Python values; anything computed stays an `Expr` holding its source text and node, so a check can
tell "set to the literal false" from "set to some expression".
"""

from __future__ import annotations

from dataclasses import dataclass, field
from functools import cache
from pathlib import Path
from typing import Any

from tree_sitter import Node, Parser
from tree_sitter_language_pack import get_parser

ROOT = Path(__file__).resolve().parents[2]
INFRA = ROOT / "infra"


@cache
def parser() -> Parser:
    return get_parser("bicep")


@dataclass(frozen=True)
class Expr:
    """A value Bicep computes at deployment: kept as its source text."""

    text: str
    node: Node = field(compare=False, repr=False)


@dataclass
class Decl:
    kind: str  # param | var | resource | module | output
    name: str
    node: Node
    decorators: dict[str, list[Any]] = field(default_factory=dict)
    type_text: str = ""  # param/output type; resource 'Type@version'; module path
    value: Any = None  # default (param), value (var/output), body (resource/module)
    existing: bool = False
    condition: str | None = None
    loop: bool = False


def text(node: Node) -> str:
    return (node.text or b"").decode()


def string_value(node: Node) -> str | Expr:
    parts = [child for child in node.named_children]
    if all(part.type in ("string_content", "escape_sequence") for part in parts):
        return "".join(text(part) if part.type == "string_content" else _unescape(text(part)) for part in parts)
    return Expr(text(node), node)


def _unescape(escape: str) -> str:
    return {"\\'": "'", "\\\\": "\\", "\\n": "\n", "\\t": "\t", "\\$": "$"}.get(escape, escape)


def value(node: Node) -> Any:
    """A parse-tree expression as Python: str/int/bool/None/dict/list for literals, Expr otherwise."""
    kind = node.type
    if kind == "string":
        return string_value(node)
    if kind == "number":
        return int(text(node))
    if kind == "boolean":
        return text(node) == "true"
    if kind == "null":
        return None
    if kind == "object":
        result: dict[str, Any] = {}
        for prop in node.named_children:
            if prop.type != "object_property":
                continue
            key_node, value_node = prop.named_children[0], prop.named_children[-1]
            key = string_value(key_node) if key_node.type == "string" else text(key_node)
            result[key if isinstance(key, str) else key.text] = value(value_node)
        return result
    if kind == "array":
        return [value(item) for item in node.named_children if item.type != "comment"]
    if kind in ("parenthesized_expression",) and node.named_child_count == 1:
        return value(node.named_children[0])
    return Expr(text(node), node)


def _decorators(node: Node) -> dict[str, list[Any]]:
    found: dict[str, list[Any]] = {}
    for decorator in node.named_children:
        call = decorator.named_children[0]
        if call.type == "call_expression":
            name = text(call.child_by_field_name("function") or call.named_children[0])
            arguments = call.child_by_field_name("arguments") or call.named_children[-1]
            found[name] = [value(arg) for arg in arguments.named_children]
        else:
            found[text(call)] = []
    return found


def _body(decl: Decl, node: Node) -> None:
    """The object after `=`, through `if (...)` and `[for ...: ...]`."""
    if node.type == "if_statement":
        decl.condition = text(node.named_children[0])
        node = node.named_children[-1]
    if node.type == "for_statement":
        decl.loop = True
        node = node.child_by_field_name("body") or node.named_children[-1]
    decl.value = value(node)


def declarations(source: bytes) -> tuple[list[Decl], Node]:
    tree = parser().parse(source)
    decls: list[Decl] = []
    pending: dict[str, list[Any]] = {}
    for node in tree.root_node.named_children:
        if node.type == "decorators":
            pending = _decorators(node)
            continue
        kinds = {
            "parameter_declaration": "param",
            "variable_declaration": "var",
            "resource_declaration": "resource",
            "module_declaration": "module",
            "output_declaration": "output",
        }
        if node.type not in kinds:
            continue
        children = node.named_children
        decl = Decl(kinds[node.type], text(children[0]), node, pending)
        pending = {}
        if decl.kind in ("param", "output"):
            decl.type_text = text(children[1])
            if len(children) > 2:
                decl.value = value(children[-1])
        elif decl.kind == "var":
            decl.value = value(children[-1])
        else:
            type_string = string_value(children[1])
            decl.type_text = type_string if isinstance(type_string, str) else type_string.text
            decl.existing = any(child.type == "existing" for child in node.children)
            _body(decl, children[-1])
        decls.append(decl)
    return decls, tree.root_node


@dataclass
class BicepFile:
    path: str  # relative to the repository
    source: str
    decls: list[Decl]
    root: Node

    def of(self, kind: str) -> list[Decl]:
        return [decl for decl in self.decls if decl.kind == kind]

    def get(self, kind: str, name: str) -> Decl:
        for decl in self.of(kind):
            if decl.name == name:
                return decl
        raise AssertionError(f"{self.path}: no {kind} {name}")

    def resources(self, type_name: str) -> list[Decl]:
        return [decl for decl in self.of("resource") if decl.type_text.split("@")[0] == type_name]


def load(files: dict[str, str]) -> dict[str, BicepFile]:
    loaded = {}
    for path, source in files.items():
        decls, root = declarations(source.encode())
        loaded[path] = BicepFile(path, source, decls, root)
    return loaded


def template_sources() -> dict[str, str]:
    """Every file of the template (Bicep, azure.yaml, main.parameters.json), by path relative to the repository."""
    paths = [*sorted(INFRA.rglob("*.bicep")), ROOT / "azure.yaml", INFRA / "main.parameters.json"]
    return {str(path.relative_to(ROOT)): path.read_text() for path in paths}


def walk(node: Node):  # type: ignore[no-untyped-def]
    yield node
    for child in node.children:
        yield from walk(child)
