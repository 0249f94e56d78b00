"""
The README's examples run as written: every ```python block is run by a
test here, against loopback servers the test starts, and what it prints is
checked.

The examples use the servers C{twistd -n --pidfile= nat} runs (STUN on
127.0.0.1:3478, rendezvous on 127.0.0.1:8765); the tests run that same
demonstration on free ports (L{tests.support.demo_servers}) and put its
ports in place of the README's before running an example as a program.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, TypeVar

import pytest

from tests.support.coturn import CoturnMode, require_tool, running_coturn
from tests.support.demo_servers import Demo, running_demo
from twisted_nat.stun.attributes import Username

REPO = Path(__file__).resolve().parent.parent
README = REPO / "README.md"

README_STUN = '("127.0.0.1", 3478)'
README_RENDEZVOUS = "tcp:host=127.0.0.1:port=8765"
README_TURN = "turn:turn.example.net"

Test = TypeVar("Test", bound=Callable[..., Any])

COVERED: list[str] = []
"""For each test of a block, a text only that block contains."""


def runs(marker: str) -> Callable[[Test], Test]:
    """
    Declare that the decorated test runs the README's ```python block
    containing C{marker}; the test gets that block as its C{example}
    argument.
    """

    def declare(test: Test) -> Test:
        COVERED.append(marker)
        setattr(test, "readme_marker", marker)  # noqa: B010 (mypy: functions have no such attribute)
        return test

    return declare


def python_blocks() -> list[str]:
    return re.findall(r"^```python\n(.*?)^```$", README.read_text(), re.S | re.M)


@pytest.fixture
def example(request: pytest.FixtureRequest) -> str:
    marker = request.function.readme_marker
    [block] = [b for b in python_blocks() if marker in b]
    return block


@pytest.fixture(scope="module")
def demo() -> Iterator[Demo]:
    with running_demo() as servers:
        yield servers


def with_demo(example: str, demo: Demo, *texts: str) -> str:
    """C{example} with the ports of C{demo} in place of the README's, in C{texts}."""
    ours = {README_STUN: repr(demo.stun), README_RENDEZVOUS: demo.rendezvous}
    for text in texts:
        assert text in example, f"the example no longer says {text}"
        example = example.replace(text, ours[text])
    return example


def run(program: str, directory: Path, **environment: str) -> list[str]:
    """Run C{program} as a script; its output lines, once it has exited with status 0."""
    script = directory / "example.py"
    script.write_text(program)
    env = {k: v for k, v in os.environ.items() if k != "TWISTED_NAT_TURN_PASSWORD"}
    env.update(PYTHONPATH=str(REPO), **environment)
    result = subprocess.run(
        [sys.executable, str(script)],
        cwd=directory,
        env=env,
        capture_output=True,
        text=True,
        timeout=20,
    )
    assert result.returncode == 0, result.stderr
    return result.stdout.splitlines()


# --- every block is run ---


def test_every_python_block_is_run_by_a_test():
    """Each ```python block is claimed by a test (by one marker) and each marker by one block."""
    blocks = python_blocks()
    assert blocks
    for block in blocks:
        claimed = {marker for marker in COVERED if marker in block}
        assert len(claimed) == 1, f"claimed by {sorted(claimed)}, not by one marker:\n{block}"
    for marker in COVERED:
        assert sum(marker in block for block in blocks) == 1, marker
    assert len(blocks) == len(set(COVERED))


def test_every_fence_is_sh_or_python():
    """Python under another fence (```py, a bare ```) would escape the test above."""
    fences = re.findall(r"^```(.*)$", README.read_text(), re.M)
    assert len(fences) % 2 == 0
    openings = fences[::2]
    closings = fences[1::2]
    assert set(openings) <= {"sh", "python"}, openings
    assert set(closings) == {""}


# --- the examples ---


@runs('"seen by"')
def test_stun_client_example_prints_the_public_address(example, demo, tmp_path):
    [line] = run(with_demo(example, demo, README_STUN), tmp_path)
    assert re.fullmatch(
        rf"public address \('127\.0\.0\.1', \d+\) seen by \('127\.0\.0\.1', {demo.stun[1]}\)"
        r" in \d\.\d+(e-\d+)? s",
        line,
    ), line


@pytest.fixture(scope="module")
def carols_directory(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """
    Where the service examples run: carol's key file stays there, so each
    run is the same carol to the demo's rendezvous, which binds the name
    to the first key that registers it.
    """
    return tmp_path_factory.mktemp("carol")


@runs("NATTraversalService(")
def test_service_example_connects_to_the_demo_bob_and_swaps_a_datagram(
    example, demo, carols_directory
):
    lines = run(with_demo(example, demo, README_STUN, README_RENDEZVOUS), carols_directory)
    key, candidates, path, answer = lines
    assert re.fullmatch(r"carol is tn-[a-z2-7]{56}", key), key
    assert oct((carols_directory / "carol.key").stat().st_mode & 0o777) == "0o600"
    kinds = candidates.split()[2:]
    assert candidates.startswith("our candidates ") and "srflx" in kinds
    assert "relay" not in kinds
    assert re.fullmatch(r"path (host|srflx|prflx) -> \S+ 127\.0\.0\.1:\d+ direct", path), path
    assert answer == "bob says b'echo: hello bob'"


@pytest.mark.interop
@runs("NATTraversalService(")
def test_service_example_with_a_turn_relay(example, demo, carols_directory):
    """
    With TWISTED_NAT_TURN_PASSWORD set, the example allocates a relay
    (coturn here) and offers it, but takes the direct path.
    """
    require_tool("turnserver")
    with running_coturn(
        CoturnMode.TURN, username="carol", password="readme-password", realm="readme.test"
    ) as coturn:
        assert README_TURN in example
        program = with_demo(example, demo, README_STUN, README_RENDEZVOUS).replace(
            README_TURN, f"turn:{coturn.host}:{coturn.port}"
        )
        lines = run(program, carols_directory, TWISTED_NAT_TURN_PASSWORD="readme-password")
    key, candidates, path, answer = lines
    assert "relay" in candidates.split()[2:]
    assert path.endswith(" direct"), path
    assert answer == "bob says b'echo: hello bob'"


@runs("UDPMultiplexer()")
def test_multiplexer_example_shares_the_socket(example, demo, tmp_path):
    public, game = run(with_demo(example, demo, README_STUN), tmp_path)
    assert re.fullmatch(r"public address \('127\.0\.0\.1', \d+\)", public), public
    assert game == r"game got b'\xc0 move e2e4'"


@runs("detect_nat(reactor")
def test_detect_nat_example_finds_no_nat_on_loopback(example, demo, tmp_path):
    kind, behaviour = run(with_demo(example, demo, README_STUN), tmp_path)
    assert re.fullmatch(r"open internet at \('127\.0\.0\.1', \d+\)", kind), kind
    assert behaviour == "mapping endpoint-independent filtering endpoint-independent"


@runs("decoded = decode(data)")
def test_codec_example_runs(example):
    namespace: dict[str, Any] = {}
    exec(compile(example, "README.md", "exec"), namespace)
    assert namespace["decoded"].get(Username) == Username("alice:bob")


@runs("SimulatedInternet")
def test_simulated_internet_example_prints_what_it_says(example, capsys):
    exec(compile(example, "README.md", "exec"), {})
    assert capsys.readouterr().out.split() == ["True", "False"]
