"""
A normal install of the project into a fresh virtual environment puts the
twistd plugin where twistd finds it.

Plugin discovery breaks silently (a stray C{twisted/__init__.py}, a package
list that forgets the dropin), so this installs the project for real and
asks twistd.
"""

from __future__ import annotations

import os
import subprocess
import venv
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent

pytestmark = pytest.mark.slow


def run(args: list[str], cwd: Path, timeout: float = 600) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV")}
    return subprocess.run(args, cwd=cwd, capture_output=True, text=True, timeout=timeout, env=env)


@pytest.fixture(scope="module")
def installed(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("fresh")
    env_dir = root / "venv"
    venv.EnvBuilder(with_pip=True).create(env_dir)
    pip = run([str(env_dir / "bin" / "python"), "-m", "pip", "install", "-q", str(REPO)], root)
    assert pip.returncode == 0, pip.stdout + pip.stderr
    return env_dir


def test_plugin_file_lands_without_package_markers(installed: Path) -> None:
    python = str(installed / "bin" / "python")
    where = run([python, "-c", "import twisted; print(twisted.__path__[0])"], installed)
    plugins = Path(where.stdout.strip()) / "plugins"
    assert (plugins / "nat_plugin.py").is_file()
    assert (plugins / "nat_endpoints.py").is_file()
    # twisted/plugins/__init__.py is still Twisted's own, which extends the
    # plugin path; ours must never ship one (nor a twisted/__init__.py).
    assert "pluginPackagePaths" in (plugins / "__init__.py").read_text()
    files = run(
        [
            python,
            "-c",
            "import importlib.metadata as m; print('\\n'.join(map(str, m.files('twisted-nat'))))",
        ],
        installed,
    ).stdout.split()
    assert "twisted/plugins/nat_plugin.py" in files
    assert "twisted/__init__.py" not in files
    assert "twisted/plugins/__init__.py" not in files
    assert "twisted_nat/py.typed" in files
    # every subpackage is listed in setup.cfg (automatic discovery is off)
    packages = [p.relative_to(REPO).as_posix() for p in (REPO / "twisted_nat").rglob("__init__.py")]
    assert "twisted_nat/tap/__init__.py" in packages
    for package in packages:
        assert package in files, package


def test_twistd_lists_nat_and_documents_every_option(installed: Path, tmp_path: Path) -> None:
    twistd = str(installed / "bin" / "twistd")
    listing = run([twistd, "--help"], tmp_path)
    assert listing.returncode == 0
    assert any(line.split()[:1] == ["nat"] for line in listing.stdout.splitlines()), listing.stdout
    top = run([twistd, "nat", "--help"], tmp_path)
    assert top.returncode == 0
    assert "server" in top.stdout
    peer = run([twistd, "nat", "peer", "--help"], tmp_path)
    assert peer.returncode == 0
    for option in ("--name", "--rendezvous", "--stun", "--connect", "--status", "--no-keepalive"):
        assert option in peer.stdout, option
    server = run([twistd, "nat", "server", "--help"], tmp_path)
    assert server.returncode == 0
    for option in (
        "--address",
        "--port",
        "--alternate-address",
        "--alternate-port",
        "--single",
        "--software",
        "--rendezvous",
    ):
        assert option in server.stdout, option


def test_console_script_is_installed(installed: Path, tmp_path: Path) -> None:
    result = run([str(installed / "bin" / "twisted-nat"), "stun", "--help"], tmp_path)
    assert result.returncode == 0
    assert "--timeout" in result.stdout
