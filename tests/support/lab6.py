"""
A dual-stack lab: two peers, each behind a router that is a stateful
firewall for IPv4 and IPv6 (no NAT at all), the routers joined by one link.

    a --lan-- fwa --wan-- fwb --lan-- b

Each firewall forwards what its own LAN sends, and from outside only what
belongs to a flow its LAN started (``ct state established,related``), the
way home routers treat global IPv6 addresses: an unsolicited datagram is
dropped, and simultaneous sends open both.  The rendezvous server runs on
fwa's outside address.  Namespaces are named ``v6lab-PID-HEX-...``, apart
from the NAT lab's, and everything is deleted when the context ends, the
test's processes first.
"""

from __future__ import annotations

import os
import secrets
import subprocess
from collections.abc import Iterator, Sequence
from contextlib import contextmanager

import attrs

from tests.support.natlab import (
    _delete_namespaces,
    _die_with_parent_hook,
    _existing_namespaces,
    _kill_processes_in,
    _stop_processes,
    child_environment,
)

PREFIX = "v6lab-"
RENDEZVOUS_PORT = 8765

PEERS = {
    # namespace: (its router, IPv4, IPv6, gateway IPv4, gateway IPv6)
    "a": ("fwa", "192.0.2.2", "2001:db8:a::2", "192.0.2.1", "2001:db8:a::1"),
    "b": ("fwb", "192.0.2.66", "2001:db8:b::2", "192.0.2.65", "2001:db8:b::1"),
}
ROUTERS = {
    # namespace: (outside IPv4, outside IPv6, the other router's, the LANs behind it)
    "fwa": ("192.0.2.129", "2001:db8:c::1", ("192.0.2.130", "2001:db8:c::2"), "b"),
    "fwb": ("192.0.2.130", "2001:db8:c::2", ("192.0.2.129", "2001:db8:c::1"), "a"),
}
LANS = {"a": ("192.0.2.0/26", "2001:db8:a::/64"), "b": ("192.0.2.64/26", "2001:db8:b::/64")}

FIREWALL = """
table inet lab6 {
    chain forward {
        type filter hook forward priority 0; policy drop;
        ct state established,related accept
        iifname "lan" accept
        meta l4proto { icmp, ipv6-icmp } accept
    }
    chain input {
        type filter hook input priority 0; policy accept;
        # A peer's datagram that reaches a router before its own peer's
        # left would otherwise leave a flow behind, which a NAT66 must
        # then avoid by taking another port; STUN stays open.
        iifname "wan" meta l4proto udp udp dport != { 3478, 3479 } ct state new drop
    }
}
"""


@attrs.define
class Lab6:
    """A built lab: its namespaces by role, and the processes spawned in it."""

    prefix: str
    processes: list[subprocess.Popen[str]] = attrs.field(factory=list)

    def ns(self, role: str) -> str:
        return f"{self.prefix}{role}"

    def run(self, role: str, argv: Sequence[str], stdin: str | None = None) -> str:
        """Run C{argv} in C{role}'s namespace; its stdout, or an error with its stderr."""
        result = subprocess.run(
            ["ip", "netns", "exec", self.ns(role), *argv],
            input=stdin,
            capture_output=True,
            text=True,
            timeout=60,
            env=child_environment(),
        )
        if result.returncode != 0:
            raise RuntimeError(f"{argv} in {role} failed: {result.stderr.strip()}")
        return result.stdout

    def spawn(self, role: str, argv: Sequence[str]) -> subprocess.Popen[str]:
        """Start C{argv} in C{role}'s namespace, stdout piped, line by line."""
        process = subprocess.Popen(
            ["ip", "netns", "exec", self.ns(role), *argv],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            text=True,
            bufsize=1,
            env=child_environment(),
            preexec_fn=_die_with_parent_hook(),
        )
        self.processes.append(process)
        return process

    def block(self, router: str, family: int) -> None:
        """C{router} drops every forwarded UDP datagram of C{family}, both ways."""
        protocol = "ipv6" if family == 6 else "ipv4"
        rule = f"insert rule inet lab6 forward meta nfproto {protocol} meta l4proto udp drop"
        self.run(router, ["nft", rule])

    def nat66(self, router: str) -> None:
        """C{router} masquerades its LAN's IPv6 behind its outside address (NAT66)."""
        ruleset = (
            "table ip6 lab6nat {\n"
            "    chain postrouting {\n"
            "        type nat hook postrouting priority 100;\n"
            '        oifname "wan" masquerade\n'
            "    }\n"
            "}\n"
        )
        self.run(router, ["nft", "-f", "-"], ruleset)

    def add_address(self, role: str, address: str) -> None:
        """One more IPv6 address on C{role}'s outside link (a router's)."""
        self.run(role, ["ip", "-6", "addr", "add", f"{address}/64", "dev", "wan", "nodad"])

    @property
    def rendezvous(self) -> str:
        """The peers' client endpoint for the rendezvous server."""
        return f"tcp:{ROUTERS['fwa'][0]}:{RENDEZVOUS_PORT}"

    @property
    def rendezvous_server(self) -> str:
        """Its server endpoint, on fwa's outside address."""
        return f"tcp:{RENDEZVOUS_PORT}:interface={ROUTERS['fwa'][0]}"


@contextmanager
def ipv6_lab() -> Iterator[Lab6]:
    """Build the lab, yield it, and tear it down whatever happened."""
    lab = Lab6(f"{PREFIX}{os.getpid()}-{secrets.token_hex(2)}-")
    try:
        _build(lab)
        yield lab
    finally:
        try:
            _stop_processes(lab.processes)
        finally:
            mine = [n for n in _existing_namespaces() if n.startswith(lab.prefix)]
            _kill_processes_in(mine)
            _delete_namespaces(mine)


def _build(lab: Lab6) -> None:
    roles = [*PEERS, *ROUTERS]
    _ip_batch([f"netns add {lab.ns(role)}" for role in roles])
    for peer, (router, *_) in PEERS.items():
        lab.run(peer, ["ip", "link", "add", "eth0", "type", "veth", "peer", "lan"])
        lab.run(peer, ["ip", "link", "set", "lan", "netns", lab.ns(router)])
    lab.run("fwa", ["ip", "link", "add", "wan", "type", "veth", "peer", "wanb"])
    lab.run("fwa", ["ip", "link", "set", "wanb", "netns", lab.ns("fwb")])
    lab.run("fwb", ["ip", "link", "set", "wanb", "name", "wan"])
    for role in roles:
        lab.run(role, ["sh", "-e"], _links_script(role))
    for router in ROUTERS:
        lab.run(router, ["nft", "-f", "-"], FIREWALL)


def _links_script(role: str) -> str:
    # No duplicate address detection, on the link-local addresses either:
    # until it ends (a second or two) neighbour discovery stalls, and the
    # first datagrams of a flow would wait for it.
    devices = ["eth0"] if role in PEERS else ["lan", "wan"]
    lines = [
        "sysctl -qw net.ipv6.conf.all.accept_dad=0",
        "sysctl -qw net.ipv6.conf.default.accept_dad=0",
        *(f"sysctl -qw net.ipv6.conf.{device}.accept_dad=0" for device in devices),
        "ip link set lo up",
    ]
    if role in PEERS:
        _, v4, v6, gw4, gw6 = PEERS[role]
        lines += [
            f"ip addr add {v4}/26 dev eth0",
            f"ip -6 addr add {v6}/64 dev eth0 nodad",
            "ip link set eth0 up",
            f"ip route add default via {gw4}",
            f"ip -6 route add default via {gw6}",
        ]
    else:
        out4, out6, (other4, other6), behind = ROUTERS[role]
        peer = "a" if behind == "b" else "b"
        _, _, _, gw4, gw6 = PEERS[peer]
        lan4, lan6 = LANS[behind]
        lines += [
            "sysctl -qw net.ipv4.ip_forward=1",
            "sysctl -qw net.ipv6.conf.all.forwarding=1",
            f"ip addr add {gw4}/26 dev lan",
            f"ip -6 addr add {gw6}/64 dev lan nodad",
            f"ip addr add {out4}/26 dev wan",
            f"ip -6 addr add {out6}/64 dev wan nodad",
            "ip link set lan up",
            "ip link set wan up",
            f"ip route add {lan4} via {other4}",
            f"ip -6 route add {lan6} via {other6}",
        ]
    return "\n".join(lines) + "\n"


def _ip_batch(commands: Sequence[str]) -> None:
    result = subprocess.run(
        ["ip", "-batch", "-"],
        input="".join(f"{c}\n" for c in commands),
        capture_output=True,
        text=True,
        timeout=60,
    )
    if result.returncode != 0:
        raise RuntimeError(f"building the IPv6 lab failed: {result.stderr.strip()}")
