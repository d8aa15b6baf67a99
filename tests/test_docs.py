"""What the documents promise a new operator holds: how to install labelsync is written in
three places (pyproject.toml, the systemd unit's header, docs/deployments.md), they agree,
and none installs by a bare name that is not ours; the README's quick start lists every
port and its setting."""

from __future__ import annotations

import re
import tomllib
from pathlib import Path

from labelsync.settings import DEFAULT_CADDY_ADMIN, Settings

ROOT = Path(__file__).resolve().parent.parent
# `pip install labelsync` (or pipx, or `labelsync==…`): a name on PyPI, another project's.
BARE_INSTALL = re.compile(r"\bpipx? install (?:-\S+ )*labelsync(?:[=<>~!]\S*)?(?=\s|$|`)")
INSTALL_STEP = re.compile(r"^(?:useradd|python3 -m venv|\S*pip install|install) ")


def _documents() -> list[Path]:
    return [
        ROOT / "README.md",
        *sorted((ROOT / "docs").glob("*.md")),
        ROOT / "Containerfile",
        *sorted((ROOT / "systemd").iterdir()),
        *sorted((ROOT / "examples").rglob("*.y*ml")),
    ]


def test_the_distribution_is_not_the_name_another_project_holds_on_pypi() -> None:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    assert project["name"] == "caddy-labelsync"
    assert project["scripts"]["labelsync"].startswith("labelsync.")  # the command stays


def test_no_document_installs_by_a_bare_name() -> None:
    found = [
        f"{path.relative_to(ROOT)}:{number}: {line.strip()}"
        for path in _documents()
        for number, line in enumerate(path.read_text().splitlines(), 1)
        if BARE_INSTALL.search(line)
    ]
    assert found == []
    assert BARE_INSTALL.search("pip install labelsync")
    assert BARE_INSTALL.search("/opt/labelsync/bin/pip install -q labelsync==0.1")
    assert not BARE_INSTALL.search("pip install /path/to/labelsync")


def test_the_units_install_steps_are_the_readmes() -> None:
    unit_steps = [
        line.removeprefix("#").strip()
        for line in (ROOT / "systemd" / "labelsync.service").read_text().splitlines()
        if line.startswith("#   ")
    ]
    unit_steps = [step for step in unit_steps if INSTALL_STEP.match(step)]
    # "Running under systemd" moved from the README to the deployments page.
    readme_steps = [
        line.removeprefix("sudo ").split("  #")[0].strip()
        for line in (ROOT / "docs" / "deployments.md").read_text().splitlines()
        if line.startswith("sudo ")
    ]
    assert len(unit_steps) == 5, unit_steps
    missing = [step for step in unit_steps if step not in readme_steps]
    assert missing == [], f"in systemd/labelsync.service, not in docs/deployments.md: {missing}"


def test_the_quick_start_lists_every_port_and_the_setting_that_moves_it() -> None:
    readme = (ROOT / "README.md").read_text()
    section = readme.split("## Where it listens", 1)[1].split("\n## ", 1)[0]
    rows = [line for line in section.splitlines() if line.startswith("| `")]
    defaults = Settings.model_construct()
    opened = {
        "LABELSYNC_LISTEN": defaults.listen.split(","),
        "LABELSYNC_RESOLVER_LISTEN": [defaults.resolver_listen],
        "LABELSYNC_DASHBOARD_LISTEN": [str(defaults.dashboard_listen)],
        "LABELSYNC_CADDY_ADMIN": [DEFAULT_CADDY_ADMIN.removeprefix("http://")],
    }
    for variable, addresses in opened.items():
        row = next((r for r in rows if f"`{variable}`" in r), None)
        assert row is not None, f"{variable} is not in the quick start's table"
        for address in addresses:
            assert f"`{address}`" in row, (variable, address, row)
    assert any("`LABELSYNC_METRICS_LISTEN`" in line for line in section.splitlines())
