"""mkdocs hook: the CLI reference page is generated from the CLI itself at build time, never by hand."""

from __future__ import annotations

from typing import Any

PLACEHOLDER = "<!-- cli-reference -->"


def cli_reference() -> str:
    """Markdown with the ``--help`` of ``mechbench`` and of every command and subcommand."""
    import typer
    from typer.testing import CliRunner

    from mechbench.cli import app

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


def on_page_markdown(markdown: str, page: Any, **_: Any) -> str:
    if PLACEHOLDER in markdown:
        return markdown.replace(PLACEHOLDER, cli_reference())
    return markdown
