"""`bench` command line: the app, its sub-commands (one module each in bench/commands/) and the one place that
turns errors, usage mistakes and Ctrl-C into a message and an exit status."""
from __future__ import annotations

import sys

import typer
from rich.markup import escape

from . import progress
from .cpu_memory import keep_freed_memory
from .errors import BenchError

app = typer.Typer(add_completion=False, no_args_is_help=True, rich_markup_mode=None, pretty_exceptions_enable=False,
                  help="Adversarial-robustness benchmark: registered defenses x registered attacks, "
                       "settings in bench.toml, results with full provenance in results/.")


def _register_command_modules() -> None:
    """Every sub-command lives in a module of bench/commands/ that adds it with `register(app)` (no edits here),
    listed in `bench --help` by the module's ORDER (default 100), then by name."""
    import importlib
    import pkgutil

    from . import commands

    modules = [importlib.import_module(f"{commands.__name__}.{info.name}") for info in pkgutil.iter_modules(commands.__path__)]
    for module in sorted(modules, key=lambda m: (getattr(m, "ORDER", 100), m.__name__)):
        module.register(app)


_register_command_modules()


def _bare_matrix(argv: list[str]) -> list[str]:
    # `--matrix` without a name means settings.matrix; click options cannot take an optional value
    return [a if a != "--matrix" or (i + 1 < len(argv) and not argv[i + 1].startswith("-")) else "--matrix="
            for i, a in enumerate(argv)]


INTERRUPTED = "interrupted — finished rows and checkpoints are saved; the same command resumes"


def _print_error(message: str) -> None:
    # messages name bench.toml tables like [tables.NAME]: print them literally, not as rich markup
    progress.console.print(f"[bold red]error:[/] {escape(message)}", highlight=False, soft_wrap=True)


class Terminated(BaseException):
    """SIGTERM (a scheduler's, `kill`'s, a CI's timeout), raised where the process is: it unwinds like Ctrl-C, so
    locks are released and the same line is printed (a BaseException: nothing that catches Exception swallows it)."""


def _on_sigterm(signum, frame) -> None:
    raise Terminated()


def _interrupted(code: int = 130) -> None:
    import signal

    # a second Ctrl-C or SIGTERM must not turn this exit into a traceback
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    # plain stderr, not the rich console: a Ctrl-C inside one of its prints leaves that line in its buffer
    sys.stderr.write(f"\n{INTERRUPTED}\n")
    sys.stderr.flush()
    sys.exit(code)


def _click_exceptions():
    """The exception classes of the click that typer uses (the pinned typer ships its own, typer._click) and of
    a standalone click, if one is installed."""
    found = []
    for name in ("typer._click.exceptions", "click.exceptions"):
        try:
            found.append(__import__(name, fromlist=["ClickException"]))
        except ImportError:
            pass
    return found


def _given_value(argv: list[str], opts) -> str | None:
    """What the user typed for an option (--opt VALUE or --opt=VALUE), for the error message: the last one when
    it is given twice, as click keeps the last (`--n-test 40 --n-test 0` rejects 0)."""
    found = None
    for i, arg in enumerate(argv):
        for opt in opts:
            if arg == opt and i + 1 < len(argv):
                found = argv[i + 1]
            elif arg.startswith(opt + "=") and opt.startswith("--"):
                found = arg[len(opt) + 1:]
    return found


def _usage_message(e, argv: list[str]) -> str | None:
    """One paragraph for a click usage error: the command, the bad value and what is allowed; None when `e` is
    not one."""
    for mod in _click_exceptions():
        if not isinstance(e, mod.ClickException):
            continue
        ctx = getattr(e, "ctx", None)
        command = ctx.command_path if ctx is not None else "bench"
        see = f"See `{command} --help`."
        if isinstance(e, mod.NoSuchOption):
            close = [p for p in (e.possibilities or []) if p.startswith("--")]
            hint = f" Did you mean {' or '.join(sorted(close))}?" if close else ""
            return f"{command} has no option {e.option_name}.{hint} {see}"
        if isinstance(e, mod.MissingParameter) and getattr(e, "param", None) is not None:
            param = e.param
            opt = "/".join(param.opts) if getattr(param, "opts", None) else param.name
            help_text = (getattr(param, "help", "") or "").strip()
            return f"{command} needs {opt}{f' ({help_text})' if help_text else ''}. {see}"
        if isinstance(e, mod.BadParameter) and getattr(e, "param", None) is not None:
            param = e.param
            opts = list(getattr(param, "opts", []) or [param.name])
            value = _given_value(argv, opts)
            shown = f" {value!r}" if value is not None and not e.message.startswith(value) else ""
            help_text = (getattr(param, "help", "") or "").strip()
            allowed = f" {opts[0]}: {help_text}" if help_text and "not allowed" not in e.message else ""
            return f"{command} {opts[0]}{shown}: {e.message.rstrip('.')}.{allowed} {see}"
        if isinstance(e, mod.UsageError):
            message = e.format_message().strip()
            if message.startswith("No such command") and ctx is not None and hasattr(ctx.command, "commands"):
                import difflib

                names = sorted(ctx.command.commands)
                bad = message.split("'")[1] if "'" in message else ""
                close = difflib.get_close_matches(bad, names, n=1)
                hint = f" Did you mean '{close[0]}'?" if close and "Did you mean" not in message else ""
                return f"{message} Allowed: {', '.join(names)}.{hint} See `{command} --help`."
            return f"{message} {see}"
        return e.format_message()
    return None


def main():
    import signal

    keep_freed_memory()
    argv = _bare_matrix(sys.argv[1:])
    signal.signal(signal.SIGTERM, _on_sigterm)
    try:
        rv = app(args=argv, prog_name="bench", standalone_mode=False)
    except BenchError as e:
        _print_error(str(e))
        sys.exit(2)
    except KeyboardInterrupt:
        _interrupted()
    except Terminated:
        _interrupted(143)  # 128 + SIGTERM, what a shell reports for a process SIGTERM ended
    except SystemExit:
        raise
    except Exception as e:  # click usage errors arrive here in non-standalone mode
        from typer.exceptions import Abort

        for mod in _click_exceptions():
            if isinstance(e, getattr(mod, "NoArgsIsHelpError", ())):  # bare `bench`: the help, as click does
                typer.echo(e.format_message(), err=True)
                sys.exit(2)
        message = _usage_message(e, argv)
        if message is not None:
            _print_error(message)
            sys.exit(getattr(e, "exit_code", 2) or 2)
        if isinstance(e, Abort) or any(isinstance(e, getattr(m, "Abort", ())) for m in _click_exceptions()):
            _interrupted()
        if isinstance(e, OSError) and e.filename:  # a folder or file the environment denies: not a bug
            _print_error(f"{e.strerror or e}: {e.filename}")
            sys.exit(1)
        raise
    # in non-standalone mode typer turns Ctrl-C into Exit(130) and returns the code instead of exiting
    if isinstance(rv, int) and not isinstance(rv, bool):
        if rv == 130:
            _interrupted()
        if rv:
            sys.exit(rv)


if __name__ == "__main__":
    main()
