"""STUN (RFC 8489): message codec, client and server."""
