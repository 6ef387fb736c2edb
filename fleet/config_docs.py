"""`fleet config docs`: docs/configuration.md, rendered from fleet/settings.py (every FLEET_* variable).

Why rendered: a table written by hand drifts from the code that reads the variables; `--check` (run by
tests/test_configuration.py) fails when the page and the settings module disagree.
"""
from __future__ import annotations

import json
from pathlib import Path

import click
from pydantic.fields import FieldInfo
from pydantic_core import PydanticUndefined

from fleet.settings import GROUPS, EnvGroup

DOCS = Path(__file__).resolve().parents[1] / "docs" / "configuration.md"
HEADER = """\
# Configuration

Every `FLEET_*` environment variable, by who reads it. Rendered from
[fleet/settings.py](../fleet/settings.py) by `fleet config docs` (do not edit by hand: the tests run
`fleet config docs --check`). An empty variable counts as unset; lists are comma-separated; booleans take
true/false, 1/0, yes/no, on/off.
"""


def _default(field: FieldInfo) -> str:
    if field.default_factory is not None:
        return "(generated)" if field.default_factory.__name__ == "<lambda>" else "(computed)"
    value = field.default
    if value is PydanticUndefined or value is None:
        return "unset"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, list | tuple):
        return ",".join(str(v) for v in value)
    if isinstance(value, Path):
        return str(value).replace(str(Path.home()), "~")
    return json.dumps(value) if isinstance(value, str) and not value else str(value)


def _type(field: FieldInfo) -> str:
    text = str(field.annotation).replace("typing.", "").replace("pathlib.", "").replace("<class '", "")
    return text.replace("'>", "").replace("NoneType", "None").replace("|", "\\|")


def _group(group: type[EnvGroup]) -> list[str]:
    lines = [f"## {group.title}", "", f"{(group.__doc__ or '').strip()} Read by {group.read_by}.", "",
             "| variable | type | default | what it does |", "|---|---|---|---|"]
    for name, field in group.model_fields.items():
        description = (field.description or "").replace("|", "\\|")
        lines.append(f"| `{group.env_name(name)}` | {_type(field)} | `{_default(field)}` | {description} |")
    aliases = [f"`{group.env_name(name)}` falls back to {', '.join(f'`{a}`' for a in also)}"
               for name, also in group.env_aliases.items()]
    return lines + ([""] + [f"{alias}." for alias in aliases] if aliases else []) + [""]


def render() -> str:
    lines = [HEADER]
    for group in GROUPS:
        lines += _group(group)
    return "\n".join(lines).rstrip() + "\n"


def check(path: Path = DOCS) -> str | None:
    """None when `path` is what `render()` gives; else what to do."""
    if not path.exists() or path.read_text() != render():
        return f"{path} is not what fleet/settings.py renders: run `fleet config docs` and commit the result"
    return None


@click.group(name="config")
def config_group() -> None:
    """Every FLEET_* setting (fleet/settings.py)."""


@config_group.command(name="docs")
@click.option("--out", type=click.Path(dir_okay=False, path_type=Path), default=DOCS, show_default=True)
@click.option("--check", "check_only", is_flag=True, help="Change nothing; exit 1 if the page is out of date.")
def docs_command(out: Path, check_only: bool) -> None:
    """Render docs/configuration.md from fleet/settings.py."""
    if check_only:
        problem = check(out)
        if problem:
            raise click.ClickException(problem)
        click.echo(f"{out} is up to date")
        return
    out.write_text(render())
    click.echo(f"wrote {out}")
