"""MkDocs hook: replace ``<!-- cli-reference -->`` with the help of every ``neuronet`` subcommand."""

from __future__ import annotations

import argparse


def _help_sections() -> str:
    from neuronet.cli.main import build_parser

    parser = build_parser()
    parts = ["## `neuronet`", "", "```text", parser.format_help().rstrip(), "```", ""]
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for name, sub in action.choices.items():
                parts += [f"## `neuronet {name}`", "", "```text", sub.format_help().rstrip(), "```", ""]
    return "\n".join(parts)


def on_page_markdown(markdown: str, page, config, files) -> str:
    if "<!-- cli-reference -->" in markdown:
        return markdown.replace("<!-- cli-reference -->", _help_sections())
    return markdown
