"""The bounded cache of AEAD objects (L{twisted_nat.ciphers.CipherCache})."""

from __future__ import annotations

import os

import pytest

from twisted_nat import control
from twisted_nat.ciphers import SHARED, CipherCache
from twisted_nat.connection import AppDataRouter
from twisted_nat.control import SessionKeys


def keys() -> tuple[SessionKeys, SessionKeys]:
    session, secret = os.urandom(16), os.urandom(32)
    return SessionKeys.derive(session, secret, True), SessionKeys.derive(session, secret, False)


def test_ciphers_are_kept_for_the_most_recent_owners_only():
    cache = CipherCache(capacity=2)
    owners = [object(), object(), object()]
    pairs = [keys() for _ in owners]
    first = cache.encryptor(owners[0], pairs[0][0])
    assert cache.encryptor(owners[0], pairs[0][0]) is first, "kept while in use"
    cache.decryptor(owners[1], pairs[1][1])
    cache.encryptor(owners[0], pairs[0][0])  # owner 0 is now the most recent
    cache.encryptor(owners[2], pairs[2][0])  # owner 1 falls out
    assert len(cache) == 2
    assert cache.encryptor(owners[0], pairs[0][0]) is first
    again = cache.decryptor(owners[1], pairs[1][1])  # made again, and still right
    frame = control.encrypt_frame(pairs[1][0].send_cipher(), 5, b"after eviction")
    assert control.decrypt_frame(again, frame) == (5, b"after eviction")
    assert len(cache) == 2


def test_forgotten_owners_hold_nothing_and_a_cache_holds_someone():
    cache = CipherCache(capacity=4)
    owner = object()
    sending, _ = keys()
    cache.encryptor(owner, sending)
    cache.forget(owner)
    cache.forget(owner)  # twice is harmless
    assert len(cache) == 0
    with pytest.raises(ValueError):
        CipherCache(capacity=0)


def test_routers_share_one_cache_unless_given_their_own():
    assert AppDataRouter().ciphers is SHARED
    own = CipherCache(capacity=8)
    assert AppDataRouter(ciphers=own).ciphers is own
