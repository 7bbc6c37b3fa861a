"""`bench list`: the registered plug-ins and bench.toml's entries, profiles, datasets, matrices and suites."""
from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

from ..cli_options import ConfigOpt

ORDER = 2


def list_(config: Optional[Path] = ConfigOpt,
          markdown: bool = typer.Option(False, "--markdown", help="Print the docs site's reference page instead "
                                        "(`bench list --markdown > docs/reference.md`).")):
    """Show every registered defense and attack (one line each, with parameters) and the bench.toml entries."""
    from ..config import load_config
    from ..registry import plugins

    cfg = load_config(config)
    if markdown:
        from ..reference import render_markdown

        typer.echo(render_markdown(cfg), nl=False)
        return
    for kind, title in (("defense", "Defenses"), ("attack", "Attacks")):
        typer.echo(f"{title} (registered plug-ins):")
        for name, cls in plugins(kind).items():
            typer.echo(f"  {name:14s} {cls.describe()}")
            params = ", ".join(f"{k}={_show(f.default)}" for k, f in cls.Params.model_fields.items())
            typer.echo(f"  {'':14s} params: {params}")
        entries = ", ".join(f"{n}" + (f" ({cfg.entry(kind, n)['plugin']})" if "plugin" in cfg.entry(kind, n) else "")
                            for n in cfg.names(kind))
        typer.echo(f"  names for --{kind} ({cfg.path.name} entries, and plug-ins without one): {entries}\n")
    typer.echo(f"Profiles: {', '.join(f'{k} ({v.description})' for k, v in cfg.profiles.items())}")
    typer.echo(f"Datasets: {', '.join(cfg.datasets)}; matrices: {', '.join(cfg.matrices) or '(none)'}")
    typer.echo("Suites (--suite; each attack on what the previous ones left robust):" if cfg.suites else "Suites: (none)")
    for name, spec in cfg.suites.items():
        eps = f" eps {spec.eps:.6g}" if spec.eps is not None else ""
        typer.echo(f"  {name:14s} {spec.norm}{eps}: {' -> '.join(spec.attacks)}  ({spec.description})")


def _show(v):
    from pydantic_core import PydanticUndefined

    return "[]" if v is PydanticUndefined else repr(v)


def register(app: typer.Typer) -> None:
    app.command("list")(list_)
