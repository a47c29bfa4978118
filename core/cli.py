"""What `curate` and `train` share on the command line: one-line errors and warnings, `--debug` anywhere,
and the `recipes` command."""

from __future__ import annotations

import sys
import warnings

import click

from core.errors import one_line
from core.recipe import recipe_table

MAX_MESSAGE_CHARS = 1000  # an error or warning line, whatever a key or path it names holds


def _warning_line(message, category, filename, lineno, file=None, line=None) -> None:
    click.echo(f"warning: {one_line(message, MAX_MESSAGE_CHARS)}", err=True)


class OneLineErrors(click.Group):
    """Errors become one line on stderr and a non-zero exit (2 for bad input, 1 otherwise);
    `--debug` shows the traceback instead, wherever it stands on the command line (`curate --debug build`
    and `curate build ... --debug` alike); warnings become one `warning: ...` line too. Shared by `curate`
    and `train`."""

    def parse_args(self, ctx: click.Context, args: list[str]) -> list[str]:
        if "--debug" in args[: args.index("--") if "--" in args else len(args)]:
            args = ["--debug", *(a for a in args if a != "--debug")]  # the group's option, wherever typed
        return super().parse_args(ctx, args)

    def invoke(self, ctx: click.Context):
        if not ctx.params.get("debug"):
            warnings.showwarning = _warning_line
        try:
            return super().invoke(ctx)
        except click.UsageError as exc:  # a missing or malformed option: one line too, with where to look
            if ctx.params.get("debug"):
                raise
            where = f" (see `{exc.ctx.command_path} --help`)" if exc.ctx else ""
            click.echo(f"error: {exc.format_message()}{where}", err=True)
            sys.exit(2)
        except (click.exceptions.Exit, click.exceptions.Abort, click.ClickException):
            raise
        except Exception as exc:
            if ctx.params.get("debug"):
                raise
            click.echo(f"error: {one_line(exc, MAX_MESSAGE_CHARS)}", err=True)
            sys.exit(2 if isinstance(exc, (ValueError, FileNotFoundError, KeyError)) else 1)


def recipes_command(kind: str, keys: str) -> click.Command:
    """`curate recipes` / `train recipes`: the shipped recipes of a kind, or with --keys every key a recipe
    takes (`keys`: "module:function" returning that list, imported only when asked)."""

    @click.command(name="recipes", help=f"""List the shipped {kind} recipes, or every key a recipe takes.

    \b
    Examples:
      {kind} recipes
      {kind} recipes --keys
    """)
    @click.option("--keys", "list_keys", is_flag=True, help="List every key a recipe takes (type, default) instead.")
    def recipes(list_keys: bool) -> None:
        if list_keys:
            import importlib

            module, function = keys.split(":")
            click.echo(getattr(importlib.import_module(module), function)())
        else:
            click.echo(recipe_table(kind))

    return recipes
