"""
miniupnpd (Debian's C{miniupnpd-nftables}) as the gateway of a lab NAT:
a real PCP, NAT-PMP and UPnP-IGD server nobody here wrote, in the NAT's
router namespace, for the port mapping lab tests.

What it needs there (it checks its outside address by STUN, and maps only
if that test sees unsolicited answers): the nftables chains it adds its
rules to, the router's own traffic left un-NATed and STUN answers let in
on the wan side; its own config, pid file and no lease file, so that a
restart forgets every mapping as a rebooted router does.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import time
import uuid
from pathlib import Path

import pytest

from tests.support.lab_servers import OURS, OURS_ALTERNATE
from tests.support.natlab import Lab, Nat

_CHAINS = """
table inet filter {
  chain forward { type filter hook forward priority 0; policy accept; jump miniupnpd; }
  chain miniupnpd { }
  chain prerouting { type nat hook prerouting priority -100; policy accept;
    jump prerouting_miniupnpd; }
  chain postrouting { type nat hook postrouting priority 100; policy accept;
    jump postrouting_miniupnpd; }
  chain prerouting_miniupnpd { }
  chain postrouting_miniupnpd { }
}
"""

MIN_LIFETIME = 4
"""The shortest lease miniupnpd grants here: short leases make renewals testable."""


def require_miniupnpd() -> str:
    """The miniupnpd binary; the test skips without it, or fails under C{CI=true}."""
    found = shutil.which("miniupnpd") or (
        "/usr/sbin/miniupnpd" if os.path.exists("/usr/sbin/miniupnpd") else None
    )
    if found is None:
        reason = "miniupnpd is not installed (Debian package miniupnpd-nftables)"
        if os.environ.get("CI", "").strip().lower() == "true":
            pytest.fail(f"{reason}; CI=true, so this is a setup error", pytrace=False)
        pytest.skip(reason)
    return found


class Miniupnpd:
    """One miniupnpd serving C{nat}'s LAN, started by L{start}, stopped by L{stop}."""

    def __init__(self, lab: Lab, nat: Nat, workdir: str, binary: str) -> None:
        self.lab = lab
        self.nat = nat
        self.binary = binary
        self.directory = Path(workdir) / f"miniupnpd-{nat.name}"
        self.directory.mkdir(exist_ok=True)
        self.process: subprocess.Popen[str] | None = None
        self.log = self.directory / "log"
        self._prepare()

    def _prepare(self) -> None:
        router = self.nat.router
        public = self.nat.public_address
        # natlab's own table (tests/support/natlab.py): the router's traffic
        # leaves un-NATed, and the STUN server's answers get in.
        rules = _CHAINS + (
            f"insert rule ip natlab postrouting ip saddr {public} accept\n"
            f'insert rule ip natlab input iifname "wan" udp sport {{ {OURS}, {OURS_ALTERNATE} }}'
            " accept\n"
        )
        self.lab.run(router, ["nft", "-f", "-"], input=rules, check=True)
        stun = self.lab.internet.addresses[0]
        config = [
            "ext_ifname=wan",
            "listening_ip=lan",
            "http_port=0",
            "enable_natpmp=yes",
            "enable_upnp=yes",
            "secure_mode=yes",
            "system_uptime=no",
            f"uuid={uuid.uuid4()}",
            "ext_perform_stun=yes",
            f"ext_stun_host={stun}",
            f"ext_stun_port={OURS}",
            f"min_lifetime={MIN_LIFETIME}",
            "max_lifetime=86400",
            "upnp_table_name=filter",
            "upnp_nat_table_name=filter",
            "upnp_forward_chain=miniupnpd",
            "upnp_nat_chain=prerouting_miniupnpd",
            "upnp_nat_postrouting_chain=postrouting_miniupnpd",
            f"allow 1024-65535 {self.nat.lan} 1024-65535",
            "deny 0-65535 0.0.0.0/0 0-65535",
        ]
        (self.directory / "miniupnpd.conf").write_text("\n".join(config) + "\n")

    def start(self) -> None:
        """Start it, and return once it serves NAT-PMP (it answers an address request)."""
        conf = self.directory / "miniupnpd.conf"
        pid = self.directory / "miniupnpd.pid"
        argv = [self.binary, "-f", str(conf), "-d", "-P", str(pid)]
        with self.log.open("a") as log:
            self.process = self.lab.spawn(self.nat.router, argv, stdout=log, stderr=log)
        probe = (
            "import socket, sys, time\n"
            "s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM); s.settimeout(0.2)\n"
            "for _ in range(100):\n"
            "    s.sendto(b'\\0\\0', (sys.argv[1], 5351))\n"
            "    try:\n"
            "        data, _ = s.recvfrom(64)\n"
            "        if len(data) == 12 and data[3] == 0: sys.exit(0)\n"
            "    except OSError: time.sleep(0.1)\n"
            "sys.exit('miniupnpd did not answer NAT-PMP')\n"
        )
        ready = self.lab.run(
            self.nat.peer.namespace, [sys.executable, "-c", probe, self.nat.lan_address]
        )
        if ready.returncode != 0:
            raise RuntimeError(f"miniupnpd did not start: {ready.stderr}\n{self.log.read_text()}")

    def stop(self) -> None:
        """Stop it (SIGTERM, then SIGKILL): it forgets its mappings, as a reboot does."""
        process, self.process = self.process, None
        if process is None or process.poll() is not None:
            return
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(timeout=5)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(timeout=5)

    def restart(self) -> None:
        """
        Restart it as a router reboots: stopped, its rules gone (miniupnpd
        leaves them in nftables when it stops, and takes them up again when
        it starts), started with a new epoch and no mappings.
        """
        self.stop()
        flush = "".join(
            f"flush chain inet filter {chain}\n"
            for chain in ("miniupnpd", "prerouting_miniupnpd", "postrouting_miniupnpd")
        )
        self.lab.run(self.nat.router, ["nft", "-f", "-"], input=flush, check=True)
        time.sleep(0.2)
        self.start()

    def ruleset(self) -> str:
        """The router's nftables ruleset, where miniupnpd's mappings show as C{dnat} rules."""
        return self.lab.run(self.nat.router, ["nft", "list", "ruleset"], check=True).stdout
