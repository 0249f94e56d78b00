"""
STUN (RFC 8489): L{attributes<twisted_nat.stun.attributes>} and the tables
that decode them, the L{message<twisted_nat.stun.message>} and its codec,
the L{client<twisted_nat.stun.client>}, the L{server<twisted_nat.stun.server>},
and the keys of the L{credentials<twisted_nat.stun.credentials>} mechanisms.
Import names from those modules; this package re-exports none of them.
"""
