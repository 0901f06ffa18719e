"""`--help`: an entry point's usage, then every config key it takes with its default and its doc.

A key's doc is the comment written directly above its field in the config dataclass (a group's
doc is its dataclass's docstring), read here from the source. One text documents a key for the
reader of the code and for the command line alike, so the two cannot drift apart; a field
without a comment is shown as undocumented, and a test keeps that from happening.
"""

from __future__ import annotations

import ast
import inspect
import shutil
import textwrap
from dataclasses import fields, is_dataclass
from typing import Any, cast, get_type_hints

from omegaconf import OmegaConf

UNDOCUMENTED = "(undocumented)"


def command_help(usage: str, schema: type, can_print_config: bool) -> str:
    """The full --help text of an entry point whose config is `schema`."""
    options = ["  -h, --help        show this help and exit"]
    if can_print_config:
        options.append("  --print-config    print the resolved config as YAML and exit (no data, no folder)")
    return "\n".join(
        [
            usage.strip(),
            "",
            "Options:",
            *options,
            "",
            "Config keys, set as key=value (a group's keys as group.key=value) or in a YAML config file;",
            "each with its default:",
            "",
            *key_lines(schema),
        ]
    )


def key_lines(schema: type) -> list[str]:
    """Every key of `schema` with its default and doc, the groups (nested dataclasses) after the keys."""
    defaults = cast("dict[str, Any]", OmegaConf.to_container(OmegaConf.structured(schema), resolve=False))
    return _block_lines(schema, defaults, prefix="")


def documented_keys(schema: type, prefix: str = "") -> dict[str, str]:
    """Each dotted key of `schema` and its doc (UNDOCUMENTED where its field has no comment)."""
    docs = field_docs(schema)
    keys: dict[str, str] = {}
    for name, block in _fields(schema):
        if block is None:
            keys[prefix + name] = docs.get(name, UNDOCUMENTED)
        else:
            keys.update(documented_keys(block, f"{prefix}{name}."))
    return keys


def field_docs(block: type) -> dict[str, str]:
    """The comment lines directly above each field of the dataclass `block`, joined into one line."""
    source = inspect.getsource(block)
    lines = source.splitlines()
    (node,) = ast.parse(textwrap.dedent(source)).body
    assert isinstance(node, ast.ClassDef)
    docs: dict[str, str] = {}
    for statement in node.body:
        if not (isinstance(statement, ast.AnnAssign) and isinstance(statement.target, ast.Name)):
            continue
        comment: list[str] = []
        above = statement.lineno - 2  # 0-based index of the line above the field
        while above >= 0 and lines[above].strip().startswith("#"):
            comment.insert(0, lines[above].strip().lstrip("#").strip())
            above -= 1
        if comment:
            docs[statement.target.id] = " ".join(comment)
    return docs


def group_doc(block: type) -> str | None:
    """The first paragraph of the dataclass's own docstring, on one line (None without a docstring;
    the docstring dataclasses generate lists the fields, which the keys below already show)."""
    (node,) = ast.parse(textwrap.dedent(inspect.getsource(block))).body
    assert isinstance(node, ast.ClassDef)
    docstring = ast.get_docstring(node)
    return " ".join(docstring.split("\n\n")[0].split()) if docstring else None


def _fields(block: type) -> list[tuple[str, type | None]]:
    """(name, nested dataclass or None) for each field of `block`."""
    hints = get_type_hints(block)
    return [
        (entry.name, hints[entry.name] if is_dataclass(hints[entry.name]) else None)
        for entry in fields(block)
    ]


def _block_lines(block: type, defaults: dict[str, Any], prefix: str) -> list[str]:
    docs = field_docs(block)
    indent = "  " * prefix.count(".")
    lines: list[str] = []
    groups: list[tuple[str, type]] = []
    for name, nested in _fields(block):
        if nested is not None:
            groups.append((name, nested))
            continue
        lines.append(f"{indent}{prefix}{name} = {_shown(defaults[name])}")
        lines.extend(_wrapped(docs.get(name, UNDOCUMENTED), indent + "    "))
    for name, nested in groups:
        heading = f"{indent}{prefix}{name}:"
        lines.extend(["", *_wrapped(group_doc(nested) or "", indent + "    ", first=heading + " ")])
        lines.extend(_block_lines(nested, defaults[name], f"{prefix}{name}."))
    return lines


def _wrapped(text: str, indent: str, first: str | None = None) -> list[str]:
    """`text` wrapped to the terminal (at most 110 columns), the first line after `first` if given."""
    width = max(60, min(shutil.get_terminal_size((100, 24)).columns, 110))
    return textwrap.wrap(
        text, width=width, initial_indent=indent if first is None else first, subsequent_indent=indent
    ) or [(first or "").rstrip()]


def _shown(value: Any) -> str:
    """A default as it is written on the command line."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return str(value).lower()
    if isinstance(value, list):
        return "[" + ", ".join(_shown(item) for item in value) + "]"
    if value == "???":
        return "??? (required)"
    return str(value)
