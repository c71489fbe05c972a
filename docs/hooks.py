"""mkdocs hook: the pages that describe the CLI and the analyses are generated at build time, never by hand.

Placeholders (HTML comments, so a page reads fine in a plain Markdown viewer too):

* ``<!-- cli-reference -->``: the ``--help`` of ``mechbench`` and of every command and subcommand;
* ``<!-- analysis-list -->``: a table of every registered analysis (``mechbench.analyses.ANALYSES``): name,
  aliases, description, citation and its pages, then an options table for each analysis that has none on
  any page;
* ``<!-- options: NAME -->``: the options table of analysis NAME, from the fields of its pydantic config
  model (nested blocks such as ``sinks.calibration`` as dotted rows).

An analysis's page is ``docs/metrics/<name>.md`` when it exists, else the page that holds its options
placeholder, so adding an analysis package needs no edit here.
"""

from __future__ import annotations

import enum
import json
import posixpath
import re
import types
import typing
from pathlib import Path
from typing import Any

PLACEHOLDER = "<!-- cli-reference -->"
ANALYSIS_LIST = "<!-- analysis-list -->"
OPTIONS = re.compile(r"<!-- options: ([A-Za-z0-9_.-]+) -->")
HEADING = re.compile(r"^(#{1,6})\s+(.+?)\s*#*\s*$")
FENCE = re.compile(r"^\s*(```|~~~)")


def cli_reference() -> str:
    """Markdown with the ``--help`` of ``mechbench`` and of every command and subcommand."""
    import typer
    from typer.testing import CliRunner

    from mechbench.analyses import ANALYSES
    from mechbench.cli import app

    len(ANALYSES)  # discover here, so that a broken analysis fails the build with its own traceback
    root = typer.main.get_command(app)
    runner = CliRunner()
    sections = []

    def walk(command: Any, path: list[str]) -> None:
        result = runner.invoke(app, [*path, "--help"], prog_name="mechbench", terminal_width=100,
                               env={"NO_COLOR": "1"})
        if result.exit_code != 0:
            raise RuntimeError(f"`mechbench {' '.join(path)} --help` failed: {result.output}")
        title = " ".join(["mechbench", *path])
        sections.append(f"## `{title}`\n\n```text\n{result.output.rstrip()}\n```\n")
        subcommands = getattr(command, "commands", {})  # a group (typer vendors click: no isinstance)
        for name in sorted(subcommands):
            walk(subcommands[name], [*path, name])

    walk(root, [])
    return "\n".join(sections)


# --- text helpers ---------------------------------------------------------------------------------------

def cell(text: str) -> str:
    """Plain text (descriptions, citations) as one Markdown table cell: one line, markup characters
    escaped; a pair of backticks (``code`` in RST style, or `code`) stays a code span."""
    text = " ".join(str(text).split())
    parts = re.split(r"``(.+?)``|`(.+?)`", text)
    out = []
    for index, part in enumerate(parts):
        if part is None:
            continue
        if index % 3 == 0:
            part = re.sub(r"([\\*_\[\]|])", r"\\\1", part).replace("<", "&lt;")
            out.append(part)
        else:
            out.append(code(part))
    return "".join(out)


def code(text: str) -> str:
    """``text`` as an inline code span inside a table cell."""
    text = text.replace("|", "\\|")
    fence = "``" if "`" in text else "`"
    pad = " " if text.startswith("`") or text.endswith("`") else ""
    return f"{fence}{pad}{text}{pad}{fence}"


def first_line(doc: str | None) -> str:
    """The first paragraph of a docstring, on one line."""
    if not doc:
        return ""
    return " ".join(doc.strip().split("\n\n")[0].split())


def slug(heading: str) -> str:
    """The id mkdocs' ``toc`` extension gives a heading (default slugify, after inline markup is rendered)."""
    from markdown.extensions.toc import slugify

    text = re.sub(r"\[([^\]]*)\]\([^)]*\)", r"\1", heading)  # links: their text
    text = re.sub(r"[`*]", "", text)
    return slugify(text, "-")


# --- options tables from a pydantic config model --------------------------------------------------------

def is_model(annotation: Any) -> bool:
    from pydantic import BaseModel

    return isinstance(annotation, type) and issubclass(annotation, BaseModel)


def bound(value: Any) -> str:
    if isinstance(value, int) and not isinstance(value, bool) and abs(value) >= 2**32:
        exponent = abs(value).bit_length() - 1
        if abs(value) == 2**exponent:
            return f"{'-' if value < 0 else ''}2**{exponent}"
    return repr(value)


def constrained(base: str, metadata: list[Any]) -> str:
    """``base`` with the annotated-types constraints of ``metadata`` (``int > 0``, ``float in (0, 1)``)."""
    lower = upper = None
    extra = []
    for item in metadata:
        for attribute, symbol in (("gt", "("), ("ge", "[")):
            if getattr(item, attribute, None) is not None:
                lower = (symbol, getattr(item, attribute))
        for attribute, symbol in (("lt", ")"), ("le", "]")):
            if getattr(item, attribute, None) is not None:
                upper = (symbol, getattr(item, attribute))
        if getattr(item, "min_length", None) is not None:
            n = item.min_length
            extra.append(f"at least {n} item{'s' if n != 1 else ''}")
        if getattr(item, "max_length", None) is not None:
            extra.append(f"at most {item.max_length} items")
        if getattr(item, "pattern", None) is not None:
            extra.append(f"matching {code(item.pattern)}")
    if lower and upper:
        base = f"{base} in {lower[0]}{bound(lower[1])}, {bound(upper[1])}{upper[0]}"
    elif lower:
        base = f"{base} {'>' if lower[0] == '(' else '≥'} {bound(lower[1])}"
    elif upper:
        base = f"{base} {'<' if upper[0] == ')' else '≤'} {bound(upper[1])}"
    return ", ".join([base, *extra])


def type_name(annotation: Any, metadata: list[Any] | None = None) -> str:
    """A short, readable name of a config field's type, as Markdown."""
    metadata = list(metadata or [])
    origin = typing.get_origin(annotation)
    args = typing.get_args(annotation)
    if origin is typing.Annotated:
        return type_name(args[0], [*annotation.__metadata__, *metadata])
    if annotation is type(None) or annotation is None:
        return "null"
    if origin in (typing.Union, types.UnionType):
        names = [type_name(arg) for arg in args if arg is not type(None)]
        if type(None) in args:
            names.append("null")
        return constrained(" or ".join(names), metadata)
    if origin is typing.Literal:
        return "/".join(code(str(value)) for value in args)
    if origin in (list, tuple, set, frozenset) or annotation in (list, tuple, set, frozenset):
        if origin is tuple and args and args[-1] is not Ellipsis:
            return constrained(f"({', '.join(type_name(arg) for arg in args)})", metadata)
        item = f" of {type_name(args[0])}" if args else ""
        return constrained(f"list{item}", metadata)
    if origin is dict or annotation is dict:
        inner = f" {type_name(args[0])} → {type_name(args[1])}" if len(args) == 2 else ""
        return constrained(f"mapping{inner}", metadata)
    if isinstance(annotation, type) and issubclass(annotation, enum.Enum):
        return "/".join(code(str(member.value)) for member in annotation)
    if is_model(annotation):
        return "block"
    names = {str: "string", bool: "bool", int: "int", float: "float", Path: "path"}
    name = names.get(annotation) if isinstance(annotation, type) else None
    return constrained(name or getattr(annotation, "__name__", str(annotation)), metadata)


def default_text(field: Any) -> str:
    from pydantic_core import PydanticUndefined

    if field.default_factory is not None:
        value = field.default_factory()
    elif field.default is PydanticUndefined:
        return "required"
    else:
        value = field.default
    return value_text(value)


def value_text(value: Any) -> str:
    from pydantic import BaseModel

    if isinstance(value, BaseModel):
        return "on (see below)"
    if isinstance(value, enum.Enum):
        value = value.value
    if isinstance(value, str) and value and value == value.strip() and value.isprintable():
        return code(value)

    def plain(item: Any) -> Any:
        if isinstance(item, (list, tuple, set, frozenset)):
            return [plain(x) for x in item]
        if isinstance(item, dict):
            return {str(k): plain(v) for k, v in item.items()}
        if isinstance(item, enum.Enum):
            return item.value
        return item

    return code(json.dumps(plain(value), ensure_ascii=False, default=str))


def option_rows(model: Any, prefix: str = "") -> list[tuple[str, str, str, str]]:
    """(dotted option name, type, default, description) of every field of ``model`` (the last three as
    Markdown), a nested block's fields right after it."""
    rows = []
    for name, field in model.model_fields.items():
        annotation = field.annotation
        candidates = [annotation, *typing.get_args(annotation)]
        block = next((arg for arg in candidates if is_model(arg)), None)
        description = field.description or (first_line(block.__doc__) if block is not None else "")
        rows.append((prefix + name, type_name(annotation, field.metadata), default_text(field),
                     cell(description) if description else "—"))
        if block is not None:
            rows.extend(option_rows(block, f"{prefix}{name}."))
    return rows


def options_table(name: str) -> str:
    """The Markdown options table of analysis ``name``."""
    from mechbench.analyses import ANALYSES, unknown_analysis_message

    if name not in ANALYSES:
        raise RuntimeError(f"docs placeholder <!-- options: {name} -->: {unknown_analysis_message(name)}")
    spec = ANALYSES[name]
    rows = option_rows(spec.config_model)
    intro = f"`{spec.config_model.__name__}`: the `analyses.{spec.name}` block of a config file; unknown keys are " \
            "errors."
    nested = next((row[0] for row in rows if "." in row[0]), None)
    if nested is not None:
        block, option = nested.split(".", 1)
        intro += (f" The options of a nested block are shown as `block.option` and written nested in YAML "
                  f"(`{block}: {{{option}: ...}}`).")
    lines = [intro, "", "| option | type | default | description |", "|---|---|---|---|"]
    lines += [f"| {code(option)} | {kind} | {default} | {description} |" for option, kind, default, description in rows]
    return "\n".join(lines) + "\n"


# --- the analysis list -----------------------------------------------------------------------------------

def options_locations(docs_dir: Path) -> dict[str, tuple[str, str]]:
    """Analysis name -> where its options placeholder is: (``page.md#anchor`` of the enclosing top-level
    section, or the page; ``page.md#anchor`` of the heading right above the placeholder)."""
    found: dict[str, tuple[str, str]] = {}
    for path in sorted(docs_dir.rglob("*.md")):
        page = path.relative_to(docs_dir).as_posix()
        seen: dict[str, int] = {}
        section = anchor = ""
        in_fence = False
        for line in path.read_text(encoding="utf-8").splitlines():
            if FENCE.match(line):
                in_fence = not in_fence
                continue
            heading = None if in_fence else HEADING.match(line)
            if heading:
                base = slug(heading.group(2))
                count = seen.get(base, 0)
                seen[base] = count + 1
                anchor = base if count == 0 else f"{base}_{count}"
                if len(heading.group(1)) == 1:
                    section = ""
                elif len(heading.group(1)) == 2:
                    section = anchor
            for match in OPTIONS.finditer(line):
                found.setdefault(match.group(1), (f"{page}#{section}" if section else page,
                                                  f"{page}#{anchor}" if anchor else page))
    return found


def homeless_heading(name: str) -> str:
    """Heading of the options of an analysis that no page shows, generated under the analysis list."""
    return f"Options of `{name}`"


def analysis_list(docs_dir: Path, page_uri: str) -> str:
    """The table of every registered analysis, then the options of those no page shows."""
    from mechbench.analyses import ANALYSES

    here = posixpath.dirname(page_uri)

    def link(target: str) -> str:
        path, _, anchor = target.partition("#")
        relative = posixpath.relpath(path, here or ".")
        return f"{relative}#{anchor}" if anchor else relative

    locations = options_locations(docs_dir)
    rows = ["| analysis | aliases | description | citation | docs |", "|---|---|---|---|---|"]
    homeless = []
    for name in sorted(ANALYSES):
        spec = ANALYSES[name]
        own = f"metrics/{name}.md"
        docs = []
        if (docs_dir / own).is_file():
            docs.append(f"[metrics]({link(own)})")
        if name in locations:
            section, options = locations[name]
            if not docs:
                docs.append(f"[metrics]({link(section)})")
        else:
            homeless.append(spec)
            options = f"{page_uri}#{slug(homeless_heading(name))}"
        docs.append(f"[options]({link(options)})")
        aliases = ", ".join(code(alias) for alias in spec.aliases) or "—"
        rows.append(f"| {code(name)} | {aliases} | {cell(spec.description)} | {cell(spec.citation)} | "
                    f"{', '.join(docs)} |")
    parts = ["\n".join(rows) + "\n"]
    for spec in homeless:
        parts.append(f"#### {homeless_heading(spec.name)}\n\n{options_table(spec.name)}")
    return "\n".join(parts)


def on_page_markdown(markdown: str, page: Any, config: Any, **_: Any) -> str:
    if PLACEHOLDER in markdown:
        markdown = markdown.replace(PLACEHOLDER, cli_reference())
    if ANALYSIS_LIST in markdown:
        markdown = markdown.replace(ANALYSIS_LIST, analysis_list(Path(config["docs_dir"]), page.file.src_uri))
    return OPTIONS.sub(lambda match: options_table(match.group(1)), markdown)
