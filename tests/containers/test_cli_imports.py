"""`fleet sync` needs only what sync needs: the server image carries no locust, matplotlib or flask."""
from __future__ import annotations

import subprocess
import sys

HEAVY = ("locust", "matplotlib", "flask", "apiflask", "sqlalchemy", "gevent", "control_plane", "loadtest")


def _modules_after(code: str) -> set[str]:
    out = subprocess.run([sys.executable, "-c", code + "\nimport sys; print(' '.join(sys.modules))"],
                         capture_output=True, text=True, check=True, timeout=120)
    return set(out.stdout.split())


def test_importing_the_cli_and_resolving_sync_imports_nothing_heavy():
    loaded = _modules_after("from fleet.cli import main\nimport click\n"
                            "main.get_command(click.Context(main), 'sync')")
    assert not {m.split(".")[0] for m in loaded} & set(HEAVY)


def test_fleet_help_lists_every_room_command_without_importing_it():
    out = subprocess.run([sys.executable, "-m", "fleet.cli", "--help"], capture_output=True, text=True,
                         check=True, timeout=120).stdout
    for name in ("adfilter", "control-plane", "loadtest", "report", "rehearse", "sync"):
        assert f"  {name} " in out
    loaded = _modules_after("from fleet.cli import main\nimport click\n"
                            "main.list_commands(click.Context(main))")
    assert "matplotlib" not in loaded and "locust" not in loaded


def test_a_room_command_still_runs_when_asked_for():
    out = subprocess.run([sys.executable, "-m", "fleet.cli", "report", "--help"], capture_output=True,
                         text=True, timeout=120)
    assert out.returncode == 0 and "Usage:" in out.stdout
