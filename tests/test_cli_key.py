"""C{twisted-nat key new} and C{twisted-nat key show}."""

from __future__ import annotations

import os
import stat
import subprocess
import sys
from pathlib import Path

import pytest

from tests.support.umask import usual_umask  # noqa: F401 (an autouse fixture)
from twisted_nat.cli import main
from twisted_nat.trust import PeerKey, create_identity, load_identity

REPO = Path(__file__).resolve().parent.parent

pytestmark = pytest.mark.skipif(os.name != "posix", reason="key file modes are POSIX")


def run(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    """Run the command in this process: its exit status, stdout and stderr."""
    try:
        main(list(argv))
    except SystemExit as e:
        status = e.code if isinstance(e.code, int) else 1
        if isinstance(e.code, str):
            sys.stderr.write(e.code + "\n")
    else:
        status = 0
    out, err = capsys.readouterr()
    return status, out, err


def test_new_creates_an_owner_only_key_and_prints_it(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = tmp_path / "id.key"
    status, out, err = run(capsys, "key", "new", str(path))
    assert (status, err) == (0, "")
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    printed = PeerKey.parse(out.strip())
    assert out == printed.text + "\n"
    assert load_identity(str(path)).public == printed


def test_new_refuses_to_overwrite(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = tmp_path / "id.key"
    identity = create_identity(str(path))
    before = path.read_bytes()
    status, out, err = run(capsys, "key", "new", str(path))
    assert status != 0
    assert out == ""
    assert err == (
        f"twisted-nat: key file {path} already exists: it is never overwritten "
        "(remove it first, or choose another path)\n"
    )
    assert path.read_bytes() == before
    assert load_identity(str(path)).public == identity.public


def test_new_in_a_missing_directory(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    status, out, err = run(capsys, "key", "new", str(tmp_path / "nowhere" / "id.key"))
    assert status != 0
    assert out == ""
    assert err.startswith("twisted-nat: cannot create key file ")
    assert err.count("\n") == 1


def test_show_prints_the_public_key(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = tmp_path / "id.key"
    identity = create_identity(str(path))
    status, out, err = run(capsys, "key", "show", str(path))
    assert (status, out, err) == (0, identity.public.text + "\n", "")


def test_show_and_new_agree(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = str(tmp_path / "id.key")
    _, created, _ = run(capsys, "key", "new", path)
    _, shown, _ = run(capsys, "key", "show", path)
    assert created == shown


def test_show_refuses_a_group_readable_key(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = tmp_path / "id.key"
    create_identity(str(path))
    path.chmod(0o640)
    status, out, err = run(capsys, "key", "show", str(path))
    assert status != 0
    assert out == ""
    assert err == (
        f"twisted-nat: key file {path} is readable by others (mode 0640): chmod 600 {path}\n"
    )


def test_show_a_missing_file(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = tmp_path / "id.key"
    status, out, err = run(capsys, "key", "show", str(path))
    assert status != 0
    assert out == ""
    assert err == (
        f"twisted-nat: key file {path} does not exist: "
        f"create it with 'twisted-nat key new {path}'\n"
    )
    assert not path.exists()


def test_show_a_file_that_is_not_a_key(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = tmp_path / "id.key"
    path.write_text("not a key\n")
    path.chmod(0o600)
    status, out, err = run(capsys, "key", "show", str(path))
    assert status != 0
    assert out == ""
    assert "does not hold a PEM private key" in err
    assert err.count("\n") == 1


@pytest.mark.parametrize(
    ("argv", "complaint"),
    [
        (["key"], "twisted-nat: name a key command: new, show\n"),
        (["key", "new"], "twisted-nat: name one key file: twisted-nat key new PATH\n"),
        (["key", "show", "a", "b"], "twisted-nat: name one key file: twisted-nat key show PATH\n"),
        (["key", "delete", "a"], "twisted-nat: Unknown command: delete\n"),
    ],
)
def test_usage_errors(
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
    argv: list[str],
    complaint: str,
) -> None:
    monkeypatch.chdir(tmp_path)
    status, out, err = run(capsys, *argv)
    assert status != 0
    assert (out, err) == ("", complaint)
    assert list(tmp_path.iterdir()) == []


def test_the_command_itself(tmp_path: Path) -> None:
    """The real program: exit status and one-line errors, without a reactor."""
    path = tmp_path / "id.key"
    env = dict(os.environ, PYTHONPATH=str(REPO))

    def command(*argv: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-m", "twisted_nat.cli", "key", *argv],
            capture_output=True,
            text=True,
            timeout=30,
            cwd=tmp_path,
            env=env,
        )

    created = command("new", str(path))
    assert (created.returncode, created.stderr) == (0, "")
    shown = command("show", str(path))
    assert (shown.returncode, shown.stdout) == (0, created.stdout)
    again = command("new", str(path))
    assert again.returncode == 1
    assert again.stderr.count("\n") == 1
    assert "already exists" in again.stderr
    path.chmod(0o644)
    refused = command("show", str(path))
    assert refused.returncode == 1
    assert refused.stdout == ""
    assert refused.stderr == (
        f"twisted-nat: key file {path} is readable by others (mode 0644): chmod 600 {path}\n"
    )
