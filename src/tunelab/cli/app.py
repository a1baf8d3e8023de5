"""The Typer app that every command module adds its commands to."""

from __future__ import annotations

from typing import Annotated

import typer

app = typer.Typer(
    help="tunelab: fine-tune, evaluate, govern and serve open models on your own hardware.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
)
_state = {"debug": False}


@app.callback()
def _root(debug: Annotated[bool, typer.Option("--debug", help="Show tracebacks on errors.")] = False) -> None:
    _state["debug"] = debug

