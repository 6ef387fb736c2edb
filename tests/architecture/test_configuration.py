"""Every FLEET_* variable is declared once, in fleet/settings.py, described, read only there, and shown in
docs/configuration.md as that module renders it."""
from __future__ import annotations

import ast
import re
import subprocess
from pathlib import Path

import pytest
from click.testing import CliRunner

from fleet.config_docs import check, config_group, render
from fleet.settings import GROUPS, ControlPlaneSettings, DiscoverySettings, declared

ROOT = Path(__file__).resolve().parents[2]
SETTINGS = ROOT / "fleet" / "settings.py"
NAME = re.compile(r"\bFLEET_[A-Z0-9_]*")


def tracked_files() -> list[Path]:
    listed = subprocess.run(["git", "ls-files", "--cached", "--others", "--exclude-standard"], cwd=ROOT,
                            capture_output=True, text=True, check=True).stdout.split()
    return [ROOT / name for name in listed if (ROOT / name).is_file()]


def test_the_configuration_page_is_what_the_settings_module_renders():
    assert check() is None, "run `fleet config docs` and commit docs/configuration.md"
    result = CliRunner().invoke(config_group, ["docs", "--check"])
    assert result.exit_code == 0, result.output


def test_the_check_fails_on_a_page_that_drifted(tmp_path):
    page = tmp_path / "configuration.md"
    page.write_text(render().replace("PACK_SIZE", "PACK_COUNT"))
    result = CliRunner().invoke(config_group, ["docs", "--check", "--out", str(page)])
    assert result.exit_code == 1 and "fleet config docs" in result.output


def test_every_setting_has_a_description():
    missing = [group.env_name(name) for group in GROUPS for name, field in group.model_fields.items()
               if not (field.description or "").strip()]
    assert missing == []


def test_every_fleet_name_in_the_tree_is_declared_in_the_settings_module():
    names = set(declared())
    unknown = {}
    for path in tracked_files():
        try:
            text = path.read_text()
        except (UnicodeDecodeError, OSError):
            continue
        for found in NAME.findall(text):
            # a prefix (FLEET_EKS_*, FLEET_LOADTEST_MAX_) must start some declared name
            known = any(n.startswith(found) for n in names) if found.endswith("_") else found in names
            if not known:
                unknown.setdefault(found, str(path.relative_to(ROOT)))
    assert unknown == {}, "declare these in fleet/settings.py (and run `fleet config docs`)"


def _reads(tree: ast.AST) -> list[str]:
    """FLEET_* names read from the environment (os.environ[...], .get, getenv, `in os.environ`) or handed to
    click/argparse as an environment variable name."""
    found = []
    for node in ast.walk(tree):
        texts = []
        if isinstance(node, ast.Subscript) and "environ" in ast.unparse(node.value):
            texts.append(node.slice)
        elif isinstance(node, ast.Call):
            func = ast.unparse(node.func)
            if "environ" in func or func.endswith("getenv"):
                texts += node.args[:1]
            texts += [k.value for k in node.keywords if k.arg in ("envvar", "env_var")]
        elif isinstance(node, ast.Compare) and any("environ" in ast.unparse(c) for c in node.comparators):
            texts.append(node.left)
        found += [t.value for t in texts if isinstance(t, ast.Constant) and str(t.value).startswith("FLEET_")]
    return found


def test_nothing_but_the_settings_module_reads_a_fleet_variable():
    readers = {}
    for path in tracked_files():
        if path.suffix != ".py" or path == SETTINGS:
            continue
        reads = _reads(ast.parse(path.read_text()))
        if reads:
            readers[str(path.relative_to(ROOT))] = reads
    assert readers == {}


def test_a_group_reads_its_variables_and_renders_them_back(monkeypatch):
    env = {"FLEET_PACK_SIZE": "7", "FLEET_ALLOWED_SERVER_NETWORKS": "10.0.0.0/8, 127.0.0.0/8",
           "FLEET_TRITON_ADMIN_KEY": "", "AWS_ENDPOINT_URL_S3": "http://s3.local"}
    settings = ControlPlaneSettings.from_env(env, api_token="t")
    assert settings.pack_size == 7 and settings.allowed_server_networks == ["10.0.0.0/8", "127.0.0.0/8"]
    assert settings.triton_admin_key is None, "an empty variable counts as unset"
    assert settings.s3_endpoint_url == "http://s3.local", "FLEET_S3_ENDPOINT_URL falls back to AWS_ENDPOINT_URL_S3"
    again = ControlPlaneSettings.from_env(settings.environment())
    assert again == settings
    monkeypatch.setenv("FLEET_DISCOVERY_TARGET", "ecs")
    assert DiscoverySettings.from_env().target == "ecs"
    assert ControlPlaneSettings(api_token="t").pack_size == 1000, "constructing a group reads no environment"


def test_a_bad_value_names_the_setting():
    with pytest.raises(ValueError, match="allowed_server_networks: 'ten' is not a CIDR"):
        ControlPlaneSettings.from_env({"FLEET_ALLOWED_SERVER_NETWORKS": "ten"})
