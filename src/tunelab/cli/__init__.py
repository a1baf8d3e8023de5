"""The command line: a thin Typer app. Each command calls one function in a stage package; errors become
one-line messages and exit codes here, in one place (0 ok, 1 a gate said no, 2 bad input, 130 interrupted).
"""

from __future__ import annotations

import sys

import typer

from tunelab.cli import bench, export, govern, run, serving  # noqa: F401  (each module adds its commands to `app`)
from tunelab.cli.app import _state, app
from tunelab.errors import TunelabError

__all__ = ["app", "main"]


def main(argv: list[str] | None = None) -> None:
    import click

    cmd = typer.main.get_command(app)
    try:
        rv = cmd.main(args=argv if argv is not None else sys.argv[1:], prog_name="tunelab", standalone_mode=False)
        # typer turns Ctrl-C (and typer.Exit) into a returned exit code when not in standalone mode
        if isinstance(rv, int) and rv != 0:
            if rv == 130:
                _fail("interrupted", 130, KeyboardInterrupt())
            sys.exit(rv)
    except TunelabError as e:
        _fail(f"error: {e}", e.exit_code, e)
    except (click.exceptions.Abort, typer.Abort) as e:  # click turns Ctrl-C into Abort
        _fail("interrupted", 130, e)
    except KeyboardInterrupt as e:
        _fail("interrupted", 130, e)
    except (click.exceptions.Exit, typer.Exit) as e:
        sys.exit(e.exit_code)
    except (click.ClickException, typer.TyperException) as e:  # usage errors (typer >= 0.22 vendors click)
        show = getattr(e, "show", None)
        if show is not None:
            show()
        else:
            print(f"error: {e}", file=sys.stderr)
        sys.exit(2)
    except OSError as e:
        _fail(f"error: {e.filename or ''}: {e.strerror or e}", 2, e)
    except Exception as e:
        _fail(f"internal error: {type(e).__name__}: {e} (run with --debug for the traceback)", 3, e)
    sys.exit(0)


def _fail(message: str, code: int, exc: BaseException) -> None:
    if _state["debug"]:
        import traceback

        traceback.print_exception(exc)
    print(message, file=sys.stderr)
    sys.exit(code)
