"""
UPnP-IGD's messages, pure: the SSDP search and its answer, the gateway's
device description, and the SOAP actions of WANIPConnection:1 and :2 with
their answers and faults.

What a gateway sends is read defensively: SSDP answers and descriptions
must point at the gateway itself; XML is parsed only without a document
type (no entity can be declared, so none can be expanded), in UTF-8 (so
the check cannot be dodged by another encoding) and only up to
L{MAX_XML} bytes; anything else raises L{IGDError}.
"""

from __future__ import annotations

import ipaddress
import xml.etree.ElementTree as ElementTree
from urllib.parse import urljoin, urlsplit
from xml.sax.saxutils import escape

import attrs

SSDP_PORT = 1900
MAX_XML = 65536
"""The most bytes of a description or SOAP answer read."""

SEARCH_TARGET = "urn:schemas-upnp-org:device:InternetGatewayDevice:1"
SERVICES = (
    "urn:schemas-upnp-org:service:WANIPConnection:2",
    "urn:schemas-upnp-org:service:WANIPConnection:1",
    "urn:schemas-upnp-org:service:WANPPPConnection:1",
)
"""The services that map ports, best first: only :2 has AddAnyPortMapping."""

_ENVELOPE = "http://schemas.xmlsoap.org/soap/envelope/"
_ENCODING = "http://schemas.xmlsoap.org/soap/encoding/"

CONFLICT = 718
"""ConflictInMappingEntry: the external port is another host's."""
ONLY_PERMANENT = 725
"""OnlyPermanentLeasesSupported: the lease duration must be 0."""
NO_SUCH_ENTRY = 714
"""NoSuchEntryInArray: the gateway has no such mapping."""


class IGDError(ValueError):
    """A gateway's SSDP answer, description or SOAP answer that cannot be used."""


def search(gateway_ip: str) -> bytes:
    """An SSDP M-SEARCH for an Internet gateway, sent to the gateway itself."""
    return (
        "M-SEARCH * HTTP/1.1\r\n"
        f"HOST: {gateway_ip}:{SSDP_PORT}\r\n"
        'MAN: "ssdp:discover"\r\n'
        "MX: 1\r\n"
        f"ST: {SEARCH_TARGET}\r\n"
        "\r\n"
    ).encode("ascii")


def _on_gateway(url: str, gateway_ip: str) -> str:
    parts = urlsplit(url)
    if parts.scheme != "http" or parts.hostname is None:
        raise IGDError(f"not an http URL: {url!r}")
    try:
        host = ipaddress.ip_address(parts.hostname)
    except ValueError:
        raise IGDError(f"the gateway named a host, not its address: {url!r}") from None
    if str(host) != gateway_ip:
        raise IGDError(f"{url!r} is not on the gateway {gateway_ip}")
    return url


def location(answer: bytes, gateway_ip: str) -> str:
    """The description URL of an SSDP answer; IGDError unless it is on the gateway."""
    try:
        text = answer.decode("ascii")
    except UnicodeDecodeError:
        raise IGDError("an SSDP answer must be ASCII") from None
    lines = text.split("\r\n")
    if not lines[0].startswith("HTTP/1.1 200"):
        raise IGDError(f"not an SSDP answer: {lines[0][:40]!r}")
    headers = {}
    for line in lines[1:]:
        name, colon, value = line.partition(":")
        if colon:
            headers[name.strip().lower()] = value.strip()
    found = headers.get("location")
    if found is None:
        raise IGDError("an SSDP answer without LOCATION")
    return _on_gateway(found, gateway_ip)


def parse_xml(data: bytes) -> ElementTree.Element:
    """XML from a gateway: bounded, and refused if it declares a document type or entities."""
    if len(data) > MAX_XML:
        raise IGDError(f"more than {MAX_XML} bytes of XML")
    try:
        text = data.decode("utf-8").upper()
    except UnicodeDecodeError:
        raise IGDError("XML from a gateway must be UTF-8") from None
    if "\0" in text or "<!DOCTYPE" in text or "<!ENTITY" in text:
        raise IGDError("XML with a document type or entities is refused")
    try:
        return ElementTree.fromstring(data)
    except ElementTree.ParseError as e:
        raise IGDError(f"malformed XML: {e}") from None


def _local(tag: str) -> str:
    return tag.rpartition("}")[2]


@attrs.frozen
class Service:
    """A port mapping service: its type and the URL its actions are posted to."""

    type: str
    control_url: str

    @property
    def any_port(self) -> bool:
        """Whether it has AddAnyPortMapping (WANIPConnection:2)."""
        return self.type.endswith("WANIPConnection:2")


def find_service(description: bytes, url: str, gateway_ip: str) -> Service:
    """The best port mapping service of the description found at C{url}."""
    root = parse_xml(description)
    found: dict[str, str] = {}
    for element in root.iter():
        if _local(element.tag) != "service":
            continue
        fields = {_local(child.tag): (child.text or "").strip() for child in element}
        kind, control = fields.get("serviceType"), fields.get("controlURL")
        if kind in SERVICES and control and kind not in found:
            found[kind] = _on_gateway(urljoin(url, control), gateway_ip)
    for kind in SERVICES:
        if kind in found:
            return Service(kind, found[kind])
    raise IGDError("the gateway's description has no port mapping service")


def action(service: Service, name: str, arguments: list[tuple[str, str]]) -> tuple[bytes, bytes]:
    """The SOAPAction header and body of the action C{name}."""
    values = "".join(f"<{key}>{escape(value)}</{key}>" for key, value in arguments)
    body = (
        '<?xml version="1.0"?>\r\n'
        f'<s:Envelope xmlns:s="{_ENVELOPE}" s:encodingStyle="{_ENCODING}">'
        f'<s:Body><u:{name} xmlns:u="{service.type}">{values}</u:{name}></s:Body>'
        "</s:Envelope>\r\n"
    )
    return f'"{service.type}#{name}"'.encode("ascii"), body.encode("utf-8")


@attrs.frozen
class Fault:
    """A UPnP error an action answered with."""

    code: int
    description: str


def answer(status: int, body: bytes, name: str) -> dict[str, str] | Fault:
    """The output arguments of action C{name}'s answer, or the fault it reports."""
    root = parse_xml(body)
    if status == 200:
        for element in root.iter():
            if _local(element.tag) == f"{name}Response":
                return {_local(child.tag): (child.text or "").strip() for child in element}
        raise IGDError(f"no {name}Response in the gateway's answer")
    for element in root.iter():
        if _local(element.tag) == "UPnPError":
            fields = {_local(child.tag): (child.text or "").strip() for child in element}
            try:
                return Fault(int(fields.get("errorCode", "")), fields.get("errorDescription", ""))
            except ValueError:
                break
    raise IGDError(f"HTTP {status} without a UPnP error code")
