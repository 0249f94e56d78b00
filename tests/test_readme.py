"""The README's examples run as written."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

from tests.netutil import free_udp_ports

REPO = Path(__file__).resolve().parent.parent


def python_blocks() -> list[str]:
    return re.findall(r"```python\n(.*?)```", (REPO / "README.md").read_text(), re.S)


def test_embedding_example_prints_the_public_address(tmp_path):
    [example] = [b for b in python_blocks() if "client.discover()" in b]
    [port] = free_udp_ports(1, "127.0.0.1")
    assert '("127.0.0.1", 3478)' in example
    example = example.replace('("127.0.0.1", 3478)', f'("127.0.0.1", {port})')
    script = tmp_path / "example.py"
    script.write_text(
        "import sys\n"
        f"sys.path.insert(0, {str(REPO)!r})\n"
        "from twisted.internet import reactor\n"
        "from twisted_nat.stun.server import BindingServer\n"
        f"reactor.listenUDP({port}, BindingServer(), interface='127.0.0.1')\n" + example
    )
    result = subprocess.run(
        [sys.executable, str(script)], capture_output=True, text=True, timeout=30
    )
    assert result.returncode == 0, result.stderr
    assert re.search(r"public address \('127\.0\.0\.1', \d+\) seen by", result.stdout)


def test_codec_example_runs():
    [codec_example] = [b for b in python_blocks() if "decoded = decode(data)" in b]
    namespace: dict[str, object] = {}
    exec(compile(codec_example, "README.md", "exec"), namespace)
    assert "decoded" in namespace


def test_simulated_internet_example_prints_what_it_says(capsys):
    [example] = [b for b in python_blocks() if "SimulatedInternet" in b]
    exec(compile(example, "README.md", "exec"), {})
    assert capsys.readouterr().out.split() == ["True", "False"]
