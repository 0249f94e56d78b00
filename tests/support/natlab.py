"""
A lab of real Linux NATs, built from network namespaces, for end-to-end NAT traversal tests.

Fakes can only confirm what their authors believed about NATs.  This module builds the
real thing out of the kernel's own parts, so the code under test meets actual conntrack,
masquerading and filtering:

  - an I{internet} namespace with a bridge, several public addresses servers can bind,
    and a default route towards a I{void} namespace that silently drops everything, as
    the real internet does with traffic to private addresses (coturn needs a default
    route: without one, relaying to a private host candidate fails with C{ENETUNREACH}
    and coturn tears down the whole allocation);
  - per NAT, a I{router} namespace on that bridge with nftables NAT on its C{wan} side
    and a LAN bridge on the other, plus one or more I{peer} namespaces behind it;
  - per NAT, knobs that work while the lab runs: L{Nat.set_udp_timeout},
    L{Nat.set_loss} and L{Nat.flush_conntrack}.

Address plan (documentation ranges only, and only inside the namespaces)::

    203.0.113.0/25     the internet segment (one bridge in the internet namespace)
      .1               the internet's gateway address, used by every router
      .10 ...          internet host addresses servers bind (L{Internet.addresses})
      .64 + i          the wan address of router i (its NAT's public address)
      .126             the void namespace, the internet's default route
    203.0.113.128/25   peers of L{NatType.NONE} routers: one /28 each (at most 8)
    198.51.100.0/24    private LANs of the NATing routers: one /28 each (the first 16)
    192.0.2.0/24       more private LANs, one /28 each (the next 16)

In every LAN the router is the first host address and the peers follow.  Every router's
default route points at the internet namespace, which forwards between routers (needed
only to reach the public subnets of L{NatType.NONE} routers) and sends everything else to
the void.

Namespace names start with C{tn-<pid>-<token>-}: the owner's process id lets
L{cleanup_stale_labs} recognise what a crashed or killed run left behind without touching
the labs of test processes still running, and the random token keeps two labs of one
process apart.  Every namespace and every process in them is removed when L{nat_lab}
exits, also when the body raised.

Typical use::

    require_lab()
    with nat_lab([NatSpec("a", NatType.FULL_CONE), NatSpec("b", NatType.SYMMETRIC)]) as lab:
        server = lab.spawn(lab.internet.namespace, [sys.executable, "-m", "..."])
        result = lab.run(lab.nat("a").peer.namespace, [sys.executable, "-c", "..."])
"""

from __future__ import annotations

import ctypes
import enum
import ipaddress
import json
import os
import re
import secrets
import shlex
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager, suppress
from functools import cache
from pathlib import Path
from typing import IO, Any, Final

import attrs
import pytest

NAMESPACE_PREFIX: Final = "tn-"
"""Every namespace a lab creates starts with this; nothing else may use it."""

_NAME_PATTERN: Final = re.compile(r"^tn-(?P<pid>\d+)-(?P<token>[0-9a-f]{4})-")
"""Recognises our namespaces and extracts the owner's process id."""

_NAT_NAME_PATTERN: Final = re.compile(r"^[a-z][a-z0-9]{0,11}$")

_NETNS_DIRECTORY: Final = "/var/run/netns"
"""Where C{ip netns} keeps its named namespaces (iproute2's C{NETNS_RUN_DIR})."""

INTERNET_SEGMENT: Final = ipaddress.IPv4Network("203.0.113.0/25")
INTERNET_GATEWAY: Final = "203.0.113.1"
VOID_ADDRESS: Final = "203.0.113.126"
_FIRST_HOST_ADDRESS: Final = 10
_LAST_HOST_ADDRESS: Final = 63
_FIRST_ROUTER_ADDRESS: Final = 64
_PUBLIC_LANS: Final = tuple(ipaddress.IPv4Network("203.0.113.128/25").subnets(new_prefix=28))
_PRIVATE_LANS: Final = tuple(ipaddress.IPv4Network("198.51.100.0/24").subnets(new_prefix=28)) + (
    tuple(ipaddress.IPv4Network("192.0.2.0/24").subnets(new_prefix=28))
)
_MAX_PEERS: Final = 13
"""A /28 has 14 host addresses; the router takes the first."""

SEQUENTIAL_PORTS: Final = range(40000, 56384)
"""
The public ports a L{NatType.SYMMETRIC_SEQUENTIAL} NAT hands out, in order,
wrapping.  Enough that a whole matrix of pairs does not wrap the counter
onto ports conntrack still holds (for up to 120 s), where the kernel cannot
use the port it is given and the sequence breaks, as a real NAT's pool of
tens of thousands would not.  A pair of the matrix takes twenty peers a
dozen flows each (discovery, relays, punches) and each meeting run 64
more: the 4,096 ports it once had would wrap within a full matrix run.
"""

DEFAULT_UDP_TIMEOUT: Final = 30
"""
The kernel's C{nf_conntrack_udp_timeout} in a fresh namespace, in seconds.

Learned full-cone and restricted-cone entries expire after this long unless
L{NatSpec.udp_timeout} or L{Nat.set_udp_timeout} says otherwise.
"""

_TOOLS: Final = {"ip": "iproute2", "nft": "nftables", "conntrack": "conntrack"}
_SBIN_DIRECTORIES: Final = ("/usr/local/sbin", "/usr/sbin", "/sbin")
_STOP_GRACE_SECONDS: Final = 2.0
_PR_SET_PDEATHSIG: Final = 1
_TABLE: Final = "natlab"
"""The nftables table (family C{ip}) every router keeps its NAT and filter rules in."""
_LOSS_TABLE: Final = "natlab_loss"
"""The nftables table (family C{netdev}) with the loss rules on the wan device."""

_BLOCK_TABLE: Final = "natlab_block"
"""The nftables table (family C{netdev}) of L{Nat.block}'s rules on the wan device."""


class NatType(enum.Enum):
    """
    The classic NAT behaviours (RFC 3489 names, RFC 4787 terms in the docstrings).

    The cone types map endpoint-independently: a private transport address keeps one
    public port whatever it sends to.  They differ in what they let in.
    """

    NONE = "none"
    """No NAT: the router only routes, and peers have public addresses of their own."""

    FULL_CONE = "full-cone"
    """Endpoint-independent filtering: anyone may send to a mapped public port."""

    RESTRICTED_CONE = "restricted-cone"
    """Address-dependent filtering: any port of an address the inside host has sent to."""

    PORT_RESTRICTED_CONE = "port-restricted-cone"
    """Address-and-port-dependent filtering: plain Linux C{masquerade}."""

    SYMMETRIC = "symmetric"
    """
    Address-and-port-dependent mapping with random ports: C{masquerade random,fully-random}.
    """

    SYMMETRIC_SEQUENTIAL = "symmetric-sequential"
    """
    Address-and-port-dependent mapping with sequential ports: every new UDP flow is
    SNATed to the next port of a counter (nftables C{numgen inc}, evaluated once per flow
    in a NAT chain), as many carrier and enterprise NATs allocate, which makes the next
    mapping predictable from the last one.
    """


@attrs.frozen
class NatSpec:
    """
    What one NAT of a lab should look like.

    @ivar name: Short (up to 12 characters, C{[a-z][a-z0-9]*}) because it becomes part of
        namespace names, which show up in C{ip netns list} when debugging.
    @ivar type: The behaviour; see L{NatType}.
    @ivar peers: How many peer namespaces sit behind the router (1 to 13).
    @ivar hairpin: Let peers behind this NAT reach each other through their public
        mappings (UDP only).  Linux does no NAT loopback by itself, so this is off by
        default, like on many real routers.  Hairpinned traffic is not filtered.  No
        effect on L{NatType.NONE}, where peers reach each other directly anyway.
    @ivar udp_timeout: Conntrack UDP timeouts (both plain and stream) and the lifetime of
        learned cone entries, in seconds; C{None} keeps the kernel's defaults (30 s, and
        120 s for flows that saw replies) and L{DEFAULT_UDP_TIMEOUT} for learned entries.
    @ivar loss: Initial random loss on the router's wan interface, in percent per
        direction; see L{Nat.set_loss}.
    """

    name: str = attrs.field()
    type: NatType = NatType.PORT_RESTRICTED_CONE
    peers: int = attrs.field(default=1)
    hairpin: bool = False
    udp_timeout: int | None = attrs.field(default=None)
    loss: float = attrs.field(default=0.0)

    @name.validator
    def _check_name(self, attribute: attrs.Attribute[str], value: str) -> None:
        if not _NAT_NAME_PATTERN.match(value):
            raise ValueError(f"NAT name {value!r} must match {_NAT_NAME_PATTERN.pattern}")

    @peers.validator
    def _check_peers(self, attribute: attrs.Attribute[int], value: int) -> None:
        if not 1 <= value <= _MAX_PEERS:
            raise ValueError(f"a NAT has 1 to {_MAX_PEERS} peers, not {value}")

    @udp_timeout.validator
    def _check_timeout(self, attribute: attrs.Attribute[int | None], value: int | None) -> None:
        if value is not None:
            _check_udp_timeout(value)

    @loss.validator
    def _check_loss(self, attribute: attrs.Attribute[float], value: float) -> None:
        _check_loss_percent(value)


@attrs.frozen
class Peer:
    """
    A host behind a NAT.

    @ivar namespace: Where to run its programs (L{Lab.run}, L{Lab.spawn}).
    @ivar address: Its own address: private behind a NATing router, public behind a
        L{NatType.NONE} router.
    """

    namespace: str
    address: str


@attrs.frozen
class Internet:
    """
    The public side of the lab, where servers (STUN, TURN, an attacker) run.

    @ivar namespace: Where to run them.
    @ivar addresses: Public addresses of this namespace that servers may bind, starting
        with C{203.0.113.10}.  A server must bind one explicitly: a socket bound to
        C{0.0.0.0} may answer from another of them.
    @ivar gateway: The address routers use as their default route; not meant for servers.
    """

    namespace: str
    addresses: tuple[str, ...]
    gateway: str


class LabError(RuntimeError):
    """
    The lab could not be built, changed or torn down.

    The message always names the failing command and what it wrote to stderr, because
    such failures are environment problems that must be diagnosable from a CI log alone.
    """


@attrs.define(eq=False)
class Nat:
    """
    One NAT of a running lab: its router, its peers and its knobs.

    @ivar spec: What was asked for.
    @ivar router: The router's namespace.
    @ivar public_address: The router's wan address, which NATed peers appear as.  Peers of
        a L{NatType.NONE} router appear as themselves instead.
    @ivar lan: The subnet behind the router.
    @ivar lan_address: The router's address in L{lan}, the peers' default gateway.
    @ivar peers: The hosts behind the router, in order.
    """

    spec: NatSpec
    router: str
    public_address: str
    lan: ipaddress.IPv4Network
    lan_address: str
    peers: tuple[Peer, ...]
    _learned_timeout: int = attrs.field(alias="_learned_timeout")

    @property
    def name(self) -> str:
        """The name from L{NatSpec.name}."""
        return self.spec.name

    @property
    def type(self) -> NatType:
        """The behaviour from L{NatSpec.type}."""
        return self.spec.type

    @property
    def peer(self) -> Peer:
        """The first peer, for the common case of one peer per NAT."""
        return self.peers[0]

    @property
    def learns(self) -> bool:
        """
        Whether this router keeps its own table of mappings next to conntrack's.

        Cone filtering needs it, and so does hairpinning, which must find the inside host
        of a public port without a flow from outside to look it up in.
        """
        return self.type in (NatType.FULL_CONE, NatType.RESTRICTED_CONE) or (
            self.spec.hairpin and self.type is not NatType.NONE
        )

    def set_udp_timeout(self, seconds: int) -> None:
        """
        Make idle UDP mappings expire after C{seconds}, from the next packet on.

        Sets both conntrack timeouts (plain and stream) to the same value, because a test
        that wants a mapping to expire should not have to know whether it saw a reply, and
        makes learned cone entries live exactly as long.  Like conntrack, entries keep
        their current expiry until their next packet refreshes them.
        """
        _check_udp_timeout(seconds)
        self._learned_timeout = seconds
        script = _shell_script(
            sysctls=_conntrack_timeout_sysctls(seconds),
            nft=self._learn_script() if self.learns else None,
        )
        _run_checked(_netns_exec(self.router, ["sh", "-e"]), script)

    def set_loss(self, percent: float) -> None:
        """
        Drop C{percent} of the packets crossing the router's wan interface, each direction.

        A round trip through a lossy NAT therefore fails with probability
        M{1 - (1 - p)^2}.  There is no delay or jitter: this kernel has no C{netem}.
        C{0} turns loss off again.  Loss happens on the wire, in the wan device's netdev
        ingress and egress hooks: a lost outbound packet has still created or refreshed
        its mapping, as on a real lossy uplink, while a lost inbound one never reaches
        conntrack.
        """
        _check_loss_percent(percent)
        _run_checked(_netns_exec(self.router, ["nft", "-f", "-"]), _loss_script(percent))

    def block(self, *addresses: str) -> None:
        """
        Cut this NAT off from C{addresses} (both ways, on the wire of its wan
        link), as a path failure between two sites would, while the rest of
        the internet (the servers) stays reachable.  No addresses: unblock.
        """
        for address in addresses:
            ipaddress.IPv4Address(address)
        lines = [
            f"table netdev {_BLOCK_TABLE} {{",
            '  chain block_in { type filter hook ingress device "wan" priority filter; }',
            '  chain block_out { type filter hook egress device "wan" priority filter; }',
            "}",
            f"flush table netdev {_BLOCK_TABLE}",
        ]
        for address in addresses:
            lines.append(f"add rule netdev {_BLOCK_TABLE} block_in ip saddr {address} drop")
            lines.append(f"add rule netdev {_BLOCK_TABLE} block_out ip daddr {address} drop")
        _run_checked(_netns_exec(self.router, ["nft", "-f", "-"]), "\n".join(lines) + "\n")

    def flush_conntrack(self) -> None:
        """
        Forget every mapping, as a router reboot would (without losing its configuration).

        Flushes conntrack and, for cone and hairpinning routers, the learned entries too,
        since those would otherwise resurrect the old mappings for inbound traffic.
        """
        commands = "conntrack -F\n"
        if self.learns:
            commands += "nft -f - <<'EOF'\n" + self._flush_learned_script() + "EOF\n"
        _run_checked(_netns_exec(self.router, ["sh", "-e"]), commands)

    def learned_mappings(self) -> dict[int, tuple[str, int]]:
        """
        Return the learned public port to inside address and port table, unexpired entries.

        Empty for routers that do not learn (see L{learns}).  Tests use it to check that
        learned entries expire together with conntrack's.
        """
        if not self.learns:
            return {}
        result = _run_checked(
            _netns_exec(self.router, ["nft", "-j", "list", "map", "ip", _TABLE, "in_map"])
        )
        return _parse_in_map(result.stdout)

    def conntrack_entries(self) -> list[str]:
        """Return C{conntrack -L} for UDP, one entry per line, for failure messages."""
        result = _run_checked(
            _netns_exec(self.router, ["conntrack", "-L", "-p", "udp"]), allow_failure=True
        )
        return [line for line in result.stdout.splitlines() if line.strip()]

    def _learn_script(self) -> str:
        """
        Return an nftables transaction that (re)writes the learning chain.

        The chain runs in postrouting after source NAT, where the packet already carries
        its public port, and reads the inside address and port from conntrack (which side
        of the flow the packet travels decides which tuple holds them).  C{update} refreshes
        an entry's expiry on each outbound packet (RFC 4787 REQ-6, outbound refresh).
        """
        seconds = self._learned_timeout
        lines = [f"flush chain ip {_TABLE} learn"]
        for direction in ("original", "reply"):
            inside = f"ct {direction} ip saddr . ct {direction} proto-src"
            match = f'oifname "wan" meta l4proto udp ct direction {direction}'
            lines.append(
                f"add rule ip {_TABLE} learn {match} "
                f"update @in_map {{ udp sport timeout {seconds}s : {inside} }}"
            )
            lines.append(
                f"add rule ip {_TABLE} learn {match} "
                f"update @out_map {{ {inside} timeout {seconds}s : udp sport }}"
            )
        if self.type is NatType.RESTRICTED_CONE:
            lines.append(
                f'add rule ip {_TABLE} learn oifname "wan" meta l4proto udp '
                f"update @contacted {{ udp sport . ip daddr timeout {seconds}s }}"
            )
        return "\n".join(lines) + "\n"

    def _flush_learned_script(self) -> str:
        lines = [f"flush map ip {_TABLE} in_map", f"flush map ip {_TABLE} out_map"]
        if self.type is NatType.RESTRICTED_CONE:
            lines.append(f"flush set ip {_TABLE} contacted")
        return "\n".join(lines) + "\n"

    def _ruleset(self) -> str:
        """
        Return the router's complete nftables ruleset, one table.

        Mapping is C{masquerade} (port preserved when free) for every cone type.  Cone
        types additionally pin a private transport address to the public port it got
        first (C{out_map}), because masquerade alone would pick the private port again
        for a new destination when the first mapping had to use another; and a private
        port that is already another host's public port gets a random one instead.
        Filtering comes from conntrack (port-restricted), widened by a DNAT of new inbound
        flows through the learned C{in_map}: from anyone (full cone), or from addresses in
        C{contacted} (restricted cone).  Unsolicited inbound packets that nothing
        translated are dropped silently, like on a home router.
        """
        public = self.public_address
        maps = ""
        pre: list[str] = []
        post: list[str] = []
        if self.learns:
            options = f"flags dynamic, timeout; timeout {self._learned_timeout}s;"
            maps += f"  map in_map {{ type inet_service : ipv4_addr . inet_service; {options} }}\n"
            maps += f"  map out_map {{ type ipv4_addr . inet_service : inet_service; {options} }}\n"
            if self.type is NatType.RESTRICTED_CONE:
                maps += f"  set contacted {{ type inet_service . ipv4_addr; {options} }}\n"
        if self.type is NatType.FULL_CONE:
            pre.append('iifname "wan" dnat ip to udp dport map @in_map')
        elif self.type is NatType.RESTRICTED_CONE:
            pre.append(
                'iifname "wan" udp dport . ip saddr @contacted dnat ip to udp dport map @in_map'
            )
        if self.spec.hairpin and self.learns:
            pre.append(f'iifname "lan" ip daddr {public} dnat ip to udp dport map @in_map')
            hairpinned = f'oifname "lan" ip saddr {self.lan} ct status dnat meta l4proto udp'
            post.append(f"{hairpinned} snat ip to {public} : ip saddr . udp sport map @out_map")
            post.append(f"{hairpinned} snat ip to {public}")
        if self.type in (NatType.FULL_CONE, NatType.RESTRICTED_CONE):
            post.append(
                'oifname "wan" meta l4proto udp '
                f"snat ip to {public} : ip saddr . udp sport map @out_map"
            )
            post.append('oifname "wan" meta l4proto udp udp sport @in_map masquerade random')
        if self.type is NatType.SYMMETRIC:
            post.append('oifname "wan" masquerade random,fully-random')
        elif self.type is NatType.SYMMETRIC_SEQUENTIAL:
            # numgen yields host byte order where a port wants network order, so
            # the counter goes through a typed map to become a port number.
            ports = ", ".join(f"{i} : {port}" for i, port in enumerate(SEQUENTIAL_PORTS))
            post.append(
                f'oifname "wan" meta l4proto udp snat ip to {public} : '
                f"numgen inc mod {len(SEQUENTIAL_PORTS)} map {{ {ports} }}"
            )
            post.append('oifname "wan" masquerade')
        elif self.type is not NatType.NONE:
            post.append('oifname "wan" masquerade')
        filtering = ""
        if self.type is not NatType.NONE:
            filtering = (
                "  chain forward { type filter hook forward priority filter; policy accept;\n"
                '    iifname "wan" ct state established,related accept\n'
                '    iifname "wan" ct status dnat accept\n'
                '    iifname "wan" drop\n'
                "  }\n"
                "  chain input { type filter hook input priority filter; policy accept;\n"
                '    iifname "wan" ct state established,related accept\n'
                '    iifname "wan" icmp type echo-request accept\n'
                '    iifname "wan" drop\n'
                "  }\n"
            )
        nat_chains = ""
        if self.type is not NatType.NONE:
            nat_chains = (
                "  chain prerouting { type nat hook prerouting priority dstnat; policy accept;\n"
                + "".join(f"    {rule}\n" for rule in pre)
                + "  }\n"
                + "  chain postrouting { type nat hook postrouting priority srcnat; "
                + "policy accept;\n"
                + "".join(f"    {rule}\n" for rule in post)
                + "  }\n"
            )
        learn_chain = ""
        if self.learns:
            learn_chain = (
                "  chain learn { type filter hook postrouting priority srcnat + 10; "
                "policy accept; }\n"
            )
        script = (
            f"table ip {_TABLE} {{\n"
            + maps
            + nat_chains
            + learn_chain
            + filtering
            + "}\n"
            + f"table netdev {_LOSS_TABLE} {{\n"
            + '  chain loss_in { type filter hook ingress device "wan" priority filter; '
            + "policy accept; }\n"
            + '  chain loss_out { type filter hook egress device "wan" priority filter; '
            + "policy accept; }\n"
            + "}\n"
        )
        if self.learns:
            script += self._learn_script()
        if self.spec.loss:
            script += _loss_script(self.spec.loss)
        return script


@attrs.define(eq=False)
class Lab:
    """
    A running lab, as handed out by L{nat_lab}.

    @ivar prefix: The start of every namespace name of this lab.
    @ivar internet: The public side.
    @ivar void: The namespace that silently drops what the internet cannot deliver.
    @ivar nats: The NATs by name, in the order they were asked for.
    @ivar build_seconds: How long building took, for keeping an eye on test speed.
    """

    prefix: str
    internet: Internet
    void: str
    nats: dict[str, Nat]
    build_seconds: float = 0.0
    _processes: list[subprocess.Popen[str]] = attrs.field(factory=list, alias="_processes")

    @property
    def namespaces(self) -> tuple[str, ...]:
        """Every namespace of the lab, in creation order."""
        names = [self.internet.namespace, self.void]
        for nat in self.nats.values():
            names.append(nat.router)
            names.extend(peer.namespace for peer in nat.peers)
        return tuple(names)

    def nat(self, name: str) -> Nat:
        """Return the NAT called C{name}."""
        try:
            return self.nats[name]
        except KeyError:
            raise KeyError(f"no NAT {name!r} in this lab; it has {sorted(self.nats)}") from None

    def run(
        self,
        namespace: str,
        argv: Sequence[str],
        *,
        timeout: float = 30.0,
        input: str | None = None,
        check: bool = False,
    ) -> subprocess.CompletedProcess[str]:
        """
        Run C{argv} inside C{namespace} to completion and capture its output as text.

        The child gets this process's environment (see L{child_environment}), so
        C{sys.executable} with C{-m} or C{-c} works as it does here.
        """
        self._check_namespace(namespace)
        return subprocess.run(
            _netns_exec(namespace, argv),
            input=input,
            capture_output=True,
            text=True,
            timeout=timeout,
            check=check,
            env=child_environment(),
        )

    def spawn(
        self,
        namespace: str,
        argv: Sequence[str],
        *,
        stdin: int | IO[Any] | None = subprocess.DEVNULL,
        stdout: int | IO[Any] | None = subprocess.PIPE,
        stderr: int | IO[Any] | None = None,
    ) -> subprocess.Popen[str]:
        """
        Start C{argv} inside C{namespace} in the background, in text mode, line-buffered.

        The process is stopped when the lab is torn down (SIGTERM, then SIGKILL), and gets
        SIGKILL from the kernel should this process die first, so a crashed test run does
        not leave servers behind.  Because that signal follows the spawning I{thread},
        spawn from a thread that outlives the process.  stderr goes to this process's
        stderr by default, where pytest captures it; a pipe nobody reads would
        eventually block a chatty child.
        """
        self._check_namespace(namespace)
        process = subprocess.Popen(
            _netns_exec(namespace, argv),
            stdin=stdin,
            stdout=stdout,
            stderr=stderr,
            text=True,
            bufsize=1,
            env=child_environment(),
            preexec_fn=_die_with_parent_hook(),
        )
        self._processes.append(process)
        return process

    @property
    def processes(self) -> tuple[subprocess.Popen[str], ...]:
        """Every process L{spawn} started, finished or not."""
        return tuple(self._processes)

    def _check_namespace(self, namespace: str) -> None:
        """Refuse namespaces of other labs or the host, where a test has no business."""
        if namespace not in self.namespaces:
            raise ValueError(f"{namespace!r} is not a namespace of this lab")


def child_environment() -> dict[str, str]:
    """
    Return the environment for processes run in the lab.

    It is this process's environment with two additions: the repository root on
    C{PYTHONPATH}, so scripts can import C{tests.support} helpers as the tests do, and
    C{PYTHONUNBUFFERED}, because a child whose stdout is a pipe would otherwise keep its
    "ready" line in a buffer while the test waits for it.
    """
    env = dict(os.environ)
    root = str(Path(__file__).resolve().parents[2])
    paths = [path for path in env.get("PYTHONPATH", "").split(os.pathsep) if path]
    if root not in paths:
        paths.append(root)
    env["PYTHONPATH"] = os.pathsep.join(paths)
    env["PYTHONUNBUFFERED"] = "1"
    return env


def find_tool(name: str) -> str | None:
    """
    Return the path of executable C{name}, or C{None}.

    Also looks in the sbin directories: C{ip}, C{nft} and C{conntrack} live there, and
    they are often missing from C{PATH} in minimal environments.
    """
    return shutil.which(name) or shutil.which(name, path=os.pathsep.join(_SBIN_DIRECTORIES))


def lab_unavailable_reason() -> str | None:
    """
    Return why no lab can be built here, or C{None} if one can.

    Beyond root and the tools, this creates and deletes a probe namespace and runs
    C{nft} in it: containers can be root without the capabilities or kernel modules
    namespaced NAT needs, and that should be a clear skip, not a build failure.
    """
    return _lab_unavailable_reason()


@cache
def _lab_unavailable_reason() -> str | None:
    if not sys.platform.startswith("linux"):
        return "the NAT lab needs Linux network namespaces"
    if os.geteuid() != 0:
        return "the NAT lab needs root (network namespaces and nftables)"
    missing = [
        f"{tool} (Debian package {package})"
        for tool, package in _TOOLS.items()
        if find_tool(tool) is None
    ]
    if missing:
        return "the NAT lab needs " + ", ".join(missing)
    probe = f"{NAMESPACE_PREFIX}{os.getpid()}-{secrets.token_hex(2)}-probe"
    try:
        for argv in (["ip", "netns", "add", probe], _netns_exec(probe, ["nft", "list", "tables"])):
            result = subprocess.run(argv, capture_output=True, text=True, timeout=30)
            if result.returncode != 0:
                return (
                    f"the NAT lab cannot work here: {shlex.join(argv)} failed with "
                    f"{result.stderr.strip() or result.returncode}"
                )
    finally:
        subprocess.run(["ip", "netns", "delete", probe], capture_output=True, timeout=30)
    return None


def require_lab() -> None:
    """
    End the current test unless a lab can be built here.

    A missing prerequisite skips the test on a developer machine, but fails it when the
    environment variable C{CI} is C{true}: the CI image is meant to run these tests, and
    a silent skip there would hide that the NAT tests no longer run at all.
    """
    reason = lab_unavailable_reason()
    if reason is None:
        return
    if os.environ.get("CI", "").strip().lower() == "true":
        pytest.fail(f"{reason}; CI=true, so this is a setup error", pytrace=False)
    pytest.skip(reason)


@contextmanager
def nat_lab(nats: Sequence[NatSpec], *, internet_addresses: int = 4) -> Iterator[Lab]:
    """
    Build a lab with C{nats}, yield it, and always tear it down completely.

    Leftovers of earlier runs that died without tearing down are removed first (see
    L{cleanup_stale_labs}).  Call L{require_lab} before, to turn a missing prerequisite
    into a skip.

    @param nats: The NATs, each with a distinct name.
    @param internet_addresses: How many public addresses the internet namespace gets for
        servers (2 to 54): an RFC 5780 STUN server needs two, coturn and an attacker want
        their own.
    @raise LabError: Building failed; the message names the command and its stderr.
        Teardown failures are raised too, unless the body already raised.
    """
    cleanup_stale_labs()
    lab = _plan(nats, internet_addresses)
    succeeded = False
    try:
        started = time.monotonic()
        _build(lab)
        lab.build_seconds = time.monotonic() - started
        yield lab
        succeeded = True
    finally:
        problems = _teardown(lab)
        if problems and succeeded:
            raise LabError("tearing down the NAT lab failed:\n" + "\n".join(problems))


def cleanup_stale_labs() -> list[str]:
    """
    Remove the namespaces (and the processes in them) of labs whose owner process is gone.

    A test run killed with SIGKILL, or a machine's CI job cancelled mid-test, cannot
    tear down; its leftovers would clash with later runs only by name, but they hold
    processes and memory.  Labs whose owner still runs are left alone, so parallel test
    processes do not destroy each other's labs.

    @return: The namespaces removed.
    """
    stale = [
        name
        for name in _existing_namespaces()
        if (match := _NAME_PATTERN.match(name)) and not _process_alive(int(match["pid"]))
    ]
    if stale:
        _kill_processes_in(stale)
        _delete_namespaces(stale)
    return stale


def lab_namespaces(prefix: str = NAMESPACE_PREFIX) -> list[str]:
    """Return the existing namespaces whose name starts with C{prefix}."""
    return [name for name in _existing_namespaces() if name.startswith(prefix)]


def _plan(specs: Sequence[NatSpec], internet_addresses: int) -> Lab:
    """Decide every name and address before touching the system, so errors come early."""
    names = [spec.name for spec in specs]
    if len(set(names)) != len(names):
        raise ValueError(f"NAT names must be distinct: {names}")
    host_capacity = _LAST_HOST_ADDRESS - _FIRST_HOST_ADDRESS + 1
    if not 2 <= internet_addresses <= host_capacity:
        raise ValueError(f"internet_addresses must be 2 to {host_capacity}")
    router_capacity = int(ipaddress.IPv4Address(VOID_ADDRESS)) - int(
        INTERNET_SEGMENT[_FIRST_ROUTER_ADDRESS]
    )
    if len(specs) > router_capacity:
        raise ValueError(f"a lab has at most {router_capacity} NATs")
    public_lans = iter(_PUBLIC_LANS)
    private_lans = iter(_PRIVATE_LANS)
    prefix = f"{NAMESPACE_PREFIX}{os.getpid()}-{secrets.token_hex(2)}-"
    nats: dict[str, Nat] = {}
    for index, spec in enumerate(specs):
        pool = public_lans if spec.type is NatType.NONE else private_lans
        lan = next(pool, None)
        if lan is None:
            raise ValueError(f"too many NATs of this kind for the address plan at {spec.name!r}")
        hosts = list(lan.hosts())
        nats[spec.name] = Nat(
            spec=spec,
            router=f"{prefix}{spec.name}-r",
            public_address=str(INTERNET_SEGMENT[_FIRST_ROUTER_ADDRESS + index]),
            lan=lan,
            lan_address=str(hosts[0]),
            peers=tuple(
                Peer(namespace=f"{prefix}{spec.name}-p{number}", address=str(hosts[number + 1]))
                for number in range(spec.peers)
            ),
            _learned_timeout=spec.udp_timeout or DEFAULT_UDP_TIMEOUT,
        )
    internet = Internet(
        namespace=f"{prefix}inet",
        addresses=tuple(
            str(INTERNET_SEGMENT[_FIRST_HOST_ADDRESS + number])
            for number in range(internet_addresses)
        ),
        gateway=INTERNET_GATEWAY,
    )
    return Lab(prefix=prefix, internet=internet, void=f"{prefix}void", nats=nats)


def _build(lab: Lab) -> None:
    """
    Create everything in two steps, each as parallel as the kernel allows.

    First one C{ip -batch} in the host namespace adds all namespaces and all veth pairs,
    creating each veth end directly in its namespace (so nothing ever appears in the
    host namespace); then one shell per namespace configures it (links, addresses,
    routes, sysctls, nftables), all of them at once.
    """
    segment = INTERNET_SEGMENT.prefixlen
    batch = [f"netns add {name}" for name in lab.namespaces]
    inet = lab.internet.namespace
    batch.append(f"link add name void netns {inet} type veth peer name eth0 netns {lab.void}")
    scripts: dict[str, str] = {}
    internet_ip = [
        "link set lo up",
        "link add name br0 type bridge",
        "link set br0 up",
        # The first address added is the primary one, which the kernel picks as source
        # for sockets bound to 0.0.0.0: a server address, not the gateway.
        *(f"addr add {address}/{segment} dev br0" for address in lab.internet.addresses),
        f"addr add {lab.internet.gateway}/{segment} dev br0",
        "link set void master br0",
        "link set void up",
    ]
    internet_routes = [f"route add default via {VOID_ADDRESS}"]
    for index, nat in enumerate(lab.nats.values()):
        port = f"r{index}"
        batch.append(
            f"link add name {port} netns {inet} type veth peer name wan netns {nat.router}"
        )
        internet_ip += [f"link set {port} master br0", f"link set {port} up"]
        if nat.type is NatType.NONE:
            internet_routes.append(f"route add {nat.lan} via {nat.public_address}")
        router_ip = [
            "link set lo up",
            "link set wan up",
            f"addr add {nat.public_address}/{segment} dev wan",
            "link add name lan type bridge",
            "link set lan up",
            f"addr add {nat.lan_address}/{nat.lan.prefixlen} dev lan",
        ]
        for number, peer in enumerate(nat.peers):
            batch.append(
                f"link add name p{number} netns {nat.router} type veth "
                f"peer name eth0 netns {peer.namespace}"
            )
            router_ip += [f"link set p{number} master lan", f"link set p{number} up"]
            scripts[peer.namespace] = _shell_script(
                ip=[
                    "link set lo up",
                    "link set eth0 up",
                    f"addr add {peer.address}/{nat.lan.prefixlen} dev eth0",
                    f"route add default via {nat.lan_address}",
                ],
                sysctls=_host_sysctls(),
            )
        router_ip.append(f"route add default via {lab.internet.gateway}")
        sysctls = _router_sysctls()
        if nat.spec.udp_timeout is not None:
            sysctls |= _conntrack_timeout_sysctls(nat.spec.udp_timeout)
        scripts[nat.router] = _shell_script(ip=router_ip, nft=nat._ruleset(), sysctls=sysctls)
    scripts[inet] = _shell_script(ip=internet_ip + internet_routes, sysctls=_router_sysctls())
    scripts[lab.void] = _shell_script(
        ip=["link set lo up", "link set eth0 up", f"addr add {VOID_ADDRESS}/{segment} dev eth0"],
        sysctls=_host_sysctls(),
        nft=(
            "table ip void {\n"
            "  chain input { type filter hook input priority filter; policy drop; }\n"
            "  chain forward { type filter hook forward priority filter; policy drop; }\n"
            "}\n"
        ),
    )
    _run_checked(["ip", "-batch", "-"], "\n".join(batch) + "\n")
    _run_parallel(scripts)


def _teardown(lab: Lab) -> list[str]:
    """
    Stop every process and delete every namespace of C{lab}; return what went wrong.

    Processes go first: a namespace whose name is deleted lives on, invisibly, for as
    long as a process is inside.  Besides the processes L{Lab.spawn} started, this kills
    whatever else runs in the lab's namespaces, such as daemons they forked.
    """
    problems: list[str] = []
    try:
        _stop_processes(lab.processes)
    finally:
        # Even if stopping was interrupted: the kill pass below catches those too.
        mine = [name for name in _existing_namespaces() if name.startswith(lab.prefix)]
        _kill_processes_in(mine)
        _delete_namespaces(mine)
    left = [name for name in _existing_namespaces() if name.startswith(lab.prefix)]
    if left:
        problems.append(f"namespaces still present: {left}")
    return problems


def _stop_processes(processes: Sequence[subprocess.Popen[str]]) -> None:
    """SIGTERM what still runs, SIGKILL what outlives the grace period, close the pipes."""
    for process in processes:
        if process.poll() is None:
            process.terminate()
    deadline = time.monotonic() + _STOP_GRACE_SECONDS
    for process in processes:
        try:
            process.wait(timeout=max(0.0, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
        for stream in (process.stdin, process.stdout, process.stderr):
            if stream is not None:
                with suppress(OSError):
                    stream.close()


def _existing_namespaces() -> list[str]:
    try:
        return sorted(os.listdir(_NETNS_DIRECTORY))
    except FileNotFoundError:
        return []


def _kill_processes_in(namespaces: Sequence[str]) -> None:
    """SIGKILL every process inside C{namespaces}, found by their network namespace inode."""
    inodes: set[tuple[int, int]] = set()
    for name in namespaces:
        try:
            status = os.stat(os.path.join(_NETNS_DIRECTORY, name))
        except OSError:
            continue
        inodes.add((status.st_dev, status.st_ino))
    if not inodes:
        return
    for _attempt in range(5):
        victims = [pid for pid in _all_pids() if _netns_of(pid) in inodes]
        if not victims:
            return
        for pid in victims:
            with suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        time.sleep(0.02)


def _all_pids() -> list[int]:
    return [int(entry) for entry in os.listdir("/proc") if entry.isdigit()]


def _netns_of(pid: int) -> tuple[int, int] | None:
    try:
        status = os.stat(f"/proc/{pid}/ns/net")
    except OSError:
        return None
    return (status.st_dev, status.st_ino)


def _delete_namespaces(namespaces: Sequence[str]) -> None:
    """Delete C{namespaces} in one C{ip} call; C{-force} goes on past already-gone ones."""
    if namespaces:
        subprocess.run(
            ["ip", "-force", "-batch", "-"],
            input="".join(f"netns delete {name}\n" for name in namespaces),
            capture_output=True,
            text=True,
            timeout=60,
        )


def _process_alive(pid: int) -> bool:
    """
    Whether C{pid} still runs; a zombie does not.

    A lab owner killed with SIGKILL can stay a zombie for a while when its parent (or an
    init that is slow to reap) has not collected it, and its lab is stale all the same.
    """
    try:
        with open(f"/proc/{pid}/stat") as stat:
            state = stat.read().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return False
    return state not in ("Z", "X")


def _netns_exec(namespace: str, argv: Sequence[str]) -> list[str]:
    return ["ip", "netns", "exec", namespace, *argv]


def _run_checked(
    argv: Sequence[str], input: str | None = None, *, allow_failure: bool = False
) -> subprocess.CompletedProcess[str]:
    """Run a configuration command; on failure raise L{LabError} with the command's stderr."""
    result = subprocess.run(argv, input=input, capture_output=True, text=True, timeout=60)
    if result.returncode != 0 and not allow_failure:
        raise LabError(_failure_message(argv, input, result.returncode, result.stderr))
    return result


def _run_parallel(scripts: Mapping[str, str]) -> None:
    """
    Run a shell script in each namespace of C{scripts}, all at once.

    @raise LabError: Naming every namespace whose script failed, with its stderr and the
        script itself.
    """
    argvs = {namespace: _netns_exec(namespace, ["sh", "-e"]) for namespace in scripts}
    running = {
        namespace: subprocess.Popen(
            argv,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for namespace, argv in argvs.items()
    }
    failures = []
    for namespace, process in running.items():
        _, stderr = process.communicate(scripts[namespace], timeout=60)
        if process.returncode != 0:
            failures.append(
                _failure_message(argvs[namespace], scripts[namespace], process.returncode, stderr)
            )
    if failures:
        raise LabError("building the NAT lab failed:\n" + "\n".join(failures))


def _failure_message(argv: Sequence[str], input: str | None, returncode: int, stderr: str) -> str:
    message = f"command {shlex.join(argv)} exited with {returncode}: {stderr.strip()}"
    if input:
        message += f"\n--- its input ---\n{input}--- end of input ---"
    return message


def _shell_script(
    *,
    ip: Sequence[str] = (),
    sysctls: Mapping[str, str] | None = None,
    nft: str | None = None,
) -> str:
    """
    Return one C{sh -e} script for a namespace: C{ip} batch, then sysctls, then nftables.

    One process per namespace instead of one per command is what keeps building fast.
    Sysctls whose file does not exist (a kernel without IPv6 or C{br_netfilter}) are
    skipped: they only switch off features that are then absent anyway.
    """
    lines = []
    if ip:
        lines.append("ip -batch - <<'EOF'\n" + "\n".join(ip) + "\nEOF")
    for name, value in (sysctls or {}).items():
        path = shlex.quote("/proc/sys/" + name.replace(".", "/"))
        lines.append(f"if [ -e {path} ]; then printf '%s\\n' {shlex.quote(value)} > {path}; fi")
    if nft:
        lines.append("nft -f - <<'EOF'\n" + nft + "EOF")
    return "\n".join(lines) + "\n"


def _host_sysctls() -> dict[str, str]:
    """No IPv6: the lab is IPv4, and router solicitations would only add noise to captures."""
    return {
        "net.ipv6.conf.all.disable_ipv6": "1",
        "net.ipv6.conf.default.disable_ipv6": "1",
    }


def _router_sysctls() -> dict[str, str]:
    """
    Forwarding on; everything that second-guesses our routing off.

    Redirects would teach routers shortcuts through the internet namespace's gateway and
    reverse-path filtering could drop hairpinned packets; C{br_netfilter} (loaded on many
    hosts for Docker) would run bridged frames through the IP hooks, and so through NAT a
    second time.
    """
    return _host_sysctls() | {
        "net.ipv4.ip_forward": "1",
        "net.ipv4.conf.all.send_redirects": "0",
        "net.ipv4.conf.default.send_redirects": "0",
        "net.ipv4.conf.all.accept_redirects": "0",
        "net.ipv4.conf.default.accept_redirects": "0",
        "net.ipv4.conf.all.rp_filter": "0",
        "net.ipv4.conf.default.rp_filter": "0",
        "net.bridge.bridge-nf-call-iptables": "0",
        "net.bridge.bridge-nf-call-ip6tables": "0",
        "net.bridge.bridge-nf-call-arptables": "0",
    }


def _conntrack_timeout_sysctls(seconds: int) -> dict[str, str]:
    return {
        "net.netfilter.nf_conntrack_udp_timeout": str(seconds),
        "net.netfilter.nf_conntrack_udp_timeout_stream": str(seconds),
    }


def _loss_script(percent: float) -> str:
    """
    Return an nftables transaction that replaces the loss rules.

    C{numgen random mod 10000} gives loss in steps of 0.01 %; the rules are replaced in
    one transaction, so no packet sees a half-changed state.  Only IPv4 is dropped: lost
    ARP would add loss of its own to the first packets of every neighbour.
    """
    table = f"netdev {_LOSS_TABLE}"
    lines = [f"flush chain {table} loss_in", f"flush chain {table} loss_out"]
    threshold = round(percent * 100)
    if threshold:
        drop = f"meta protocol ip numgen random mod 10000 < {threshold} drop"
        lines.append(f"add rule {table} loss_in {drop}")
        lines.append(f"add rule {table} loss_out {drop}")
    return "\n".join(lines) + "\n"


def _parse_in_map(text: str) -> dict[int, tuple[str, int]]:
    """Parse C{nft -j list map} output of C{in_map} (port : address . port)."""
    mappings: dict[int, tuple[str, int]] = {}
    for item in json.loads(text).get("nftables", []):
        for element in item.get("map", {}).get("elem", []):
            key, value = element
            if isinstance(key, dict):
                key = key["elem"]["val"]
            address, port = value["concat"]
            mappings[int(key)] = (str(address), int(port))
    return mappings


def _check_udp_timeout(seconds: int) -> None:
    if not isinstance(seconds, int) or seconds < 1:
        raise ValueError(f"UDP timeouts are whole seconds, at least 1, not {seconds!r}")


def _check_loss_percent(percent: float) -> None:
    if not 0 <= percent <= 100:
        raise ValueError(f"loss is a percentage from 0 to 100, not {percent!r}")


def _die_with_parent_hook() -> Callable[[], None] | None:
    """
    Return a C{preexec_fn} asking the kernel to SIGKILL the child when we die.

    It survives C{ip netns exec}'s C{execve}, since C{ip} is not set-user-ID.
    """
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        prctl = libc.prctl
    except (OSError, AttributeError):
        return None

    def hook() -> None:
        prctl(_PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)

    return hook
