"""The C{twistd nat} plugin: one line, the work lives in L{twisted_nat.tap}."""

from twisted.application.service import ServiceMaker

nat = ServiceMaker(
    "twisted-nat",
    "twisted_nat.tap",
    "NAT traversal: STUN server (RFC 8489 / RFC 5780)",
    "nat",
)
