"""L{twisted_nat.trust.keyfile}: our identity saved in a key file."""

from __future__ import annotations

import errno
import os
import shutil
import stat
import subprocess
from collections.abc import Callable
from pathlib import Path

import pytest
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.hazmat.primitives.serialization import (
    BestAvailableEncryption,
    Encoding,
    NoEncryption,
    PrivateFormat,
    PublicFormat,
)

from tests.support.umask import usual_umask  # noqa: F401 (an autouse fixture)
from twisted_nat.errors import ConfigurationError, KeyFileError
from twisted_nat.trust import (
    Identity,
    create_identity,
    keyfile,
    load_identity,
    load_or_create_identity,
)

pytestmark = pytest.mark.skipif(os.name != "posix", reason="key file modes are POSIX")


def mode_of(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def refusal(path: Path, load: Callable[[str], object] = load_identity) -> str:
    with pytest.raises(KeyFileError) as caught:
        load(str(path))
    message = str(caught.value)
    assert "\n" not in message
    assert str(path) in message
    return message


def write_key(path: Path, data: bytes, mode: int = 0o600) -> None:
    path.write_bytes(data)
    path.chmod(mode)


def test_create_then_load(tmp_path: Path) -> None:
    path = tmp_path / "id.key"
    created = create_identity(str(path))
    assert mode_of(path) == 0o600
    assert path.read_bytes().startswith(b"-----BEGIN PRIVATE KEY-----\n")
    loaded = load_identity(str(path))
    assert loaded.public == created.public
    assert loaded.sign(b"x") == created.sign(b"x")  # Ed25519 signatures are deterministic


def test_two_keys_differ(tmp_path: Path) -> None:
    first = create_identity(str(tmp_path / "a"))
    second = create_identity(str(tmp_path / "b"))
    assert first.public != second.public


def test_create_never_widens(tmp_path: Path) -> None:
    os.umask(0)
    create_identity(str(tmp_path / "open"))
    assert mode_of(tmp_path / "open") == 0o600
    os.umask(0o077)
    create_identity(str(tmp_path / "strict"))
    assert mode_of(tmp_path / "strict") == 0o600
    os.umask(0o277)
    create_identity(str(tmp_path / "stricter"))
    assert mode_of(tmp_path / "stricter") == 0o400


def test_create_never_overwrites(tmp_path: Path) -> None:
    path = tmp_path / "id.key"
    path.write_bytes(b"precious")
    message = refusal(path, create_identity)
    assert message == (
        f"key file {path} already exists: it is never overwritten "
        "(remove it first, or choose another path)"
    )
    assert path.read_bytes() == b"precious"


def test_create_does_not_follow_a_symlink(tmp_path: Path) -> None:
    target = tmp_path / "target"
    link = tmp_path / "link"
    link.symlink_to(target)
    assert "already exists" in refusal(link, create_identity)
    assert not target.exists()


def test_create_in_a_missing_directory(tmp_path: Path) -> None:
    path = tmp_path / "no" / "such" / "id.key"
    assert "cannot create key file" in refusal(path, create_identity)


def test_failed_write_leaves_no_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    def full(fd: int, data: bytes) -> int:
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(os, "write", full)
    path = tmp_path / "id.key"
    assert "cannot write key file" in refusal(path, create_identity)
    assert not path.exists()


@pytest.mark.skipif(shutil.which("openssl") is None, reason="needs openssl")
def test_openssl_reads_our_file(tmp_path: Path) -> None:
    path = tmp_path / "id.key"
    identity = create_identity(str(path))
    der = subprocess.run(
        ["openssl", "pkey", "-in", str(path), "-pubout", "-outform", "DER"],
        capture_output=True,
        check=True,
    ).stdout
    assert der[-32:] == identity.public.raw


@pytest.mark.skipif(shutil.which("openssl") is None, reason="needs openssl")
def test_we_read_openssls_file(tmp_path: Path) -> None:
    path = tmp_path / "openssl.key"
    subprocess.run(
        ["openssl", "genpkey", "-algorithm", "ed25519", "-out", str(path)],
        capture_output=True,
        check=True,
    )
    path.chmod(0o600)
    identity = load_identity(str(path))
    der = subprocess.run(
        ["openssl", "pkey", "-in", str(path), "-pubout", "-outform", "DER"],
        capture_output=True,
        check=True,
    ).stdout
    assert identity.public.raw == der[-32:]


@pytest.mark.parametrize(
    ("mode", "what"),
    [
        (0o644, "readable"),
        (0o640, "readable"),
        (0o604, "readable"),
        (0o660, "readable"),
        (0o620, "writable"),
        (0o602, "writable"),
        (0o610, "usable"),
        (0o601, "usable"),
    ],
)
def test_load_refuses_a_file_others_may_use(tmp_path: Path, mode: int, what: str) -> None:
    path = tmp_path / "id.key"
    create_identity(str(path))
    path.chmod(mode)
    assert refusal(path) == (
        f"key file {path} is {what} by others (mode {mode:04o}): chmod 600 {path}"
    )
    # load_or_create refuses it too, and leaves it alone.
    before = path.read_bytes()
    assert "by others" in refusal(path, load_or_create_identity)
    assert path.read_bytes() == before
    assert mode_of(path) == mode


def test_owner_only_modes_load(tmp_path: Path) -> None:
    path = tmp_path / "id.key"
    created = create_identity(str(path))
    for mode in (0o400, 0o600, 0o700):
        path.chmod(mode)
        assert load_identity(str(path)).public == created.public


def test_the_chmod_advice_is_quoted_for_a_shell(tmp_path: Path) -> None:
    path = tmp_path / "my keys" / "id.key"
    path.parent.mkdir()
    create_identity(str(path))
    path.chmod(0o644)
    assert refusal(path).endswith(f"chmod 600 '{path}'")


def test_missing_file(tmp_path: Path) -> None:
    path = tmp_path / "id.key"
    assert refusal(path) == (
        f"key file {path} does not exist: create it with 'twisted-nat key new {path}'"
    )


def test_not_pem(tmp_path: Path) -> None:
    path = tmp_path / "id.key"
    write_key(path, b"hello, I am not a key\n")
    assert "does not hold a PEM private key" in refusal(path)
    write_key(path, b"")
    assert "does not hold a PEM private key" in refusal(path)


def test_a_public_key_is_not_a_private_key(tmp_path: Path) -> None:
    path = tmp_path / "id.pub"
    public = Ed25519PrivateKey.generate().public_key()
    write_key(path, public.public_bytes(Encoding.PEM, PublicFormat.SubjectPublicKeyInfo))
    assert "does not hold a PEM private key" in refusal(path)


def test_der_is_not_pem(tmp_path: Path) -> None:
    path = tmp_path / "id.der"
    private = Ed25519PrivateKey.generate()
    write_key(path, private.private_bytes(Encoding.DER, PrivateFormat.PKCS8, NoEncryption()))
    assert "does not hold a PEM private key" in refusal(path)


def test_other_kinds_of_key(tmp_path: Path) -> None:
    path = tmp_path / "id.key"
    pkcs8 = (Encoding.PEM, PrivateFormat.PKCS8, NoEncryption())
    write_key(path, rsa.generate_private_key(65537, 1024).private_bytes(*pkcs8))
    assert "holds an RSA key, not an Ed25519 one" in refusal(path)
    write_key(path, ec.generate_private_key(ec.SECP256R1()).private_bytes(*pkcs8))
    assert "holds an elliptic-curve (ECDSA) key, not an Ed25519 one" in refusal(path)


def test_encrypted_key(tmp_path: Path) -> None:
    path = tmp_path / "id.key"
    private = Ed25519PrivateKey.generate()
    encryption = BestAvailableEncryption(b"secret")
    write_key(path, private.private_bytes(Encoding.PEM, PrivateFormat.PKCS8, encryption))
    assert "is encrypted" in refusal(path)


def test_not_a_regular_file(tmp_path: Path) -> None:
    directory = tmp_path / "keys"
    directory.mkdir(mode=0o700)
    assert "is not a regular file" in refusal(directory)


def test_too_large(tmp_path: Path) -> None:
    path = tmp_path / "id.key"
    write_key(path, b"-----BEGIN PRIVATE KEY-----\n" + b"A" * 100_000)
    assert "too large" in refusal(path)


@pytest.mark.skipif(hasattr(os, "geteuid") and os.geteuid() == 0, reason="root reads anything")
def test_unreadable(tmp_path: Path) -> None:
    path = tmp_path / "id.key"
    create_identity(str(path))
    path.chmod(0o000)
    try:
        assert "cannot read key file" in refusal(path)
    finally:
        path.chmod(0o600)


def test_key_file_error_is_a_configuration_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigurationError):
        load_identity(str(tmp_path / "missing"))


def test_load_or_create(tmp_path: Path) -> None:
    path = tmp_path / "id.key"
    created, was_created = load_or_create_identity(str(path))
    assert was_created
    assert mode_of(path) == 0o600
    loaded, was_created = load_or_create_identity(str(path))
    assert not was_created
    assert loaded.public == created.public


def test_load_or_create_never_replaces_a_bad_file(tmp_path: Path) -> None:
    path = tmp_path / "id.key"
    write_key(path, b"garbage")
    assert "does not hold a PEM private key" in refusal(path, load_or_create_identity)
    assert path.read_bytes() == b"garbage"


def test_load_or_create_loses_a_race_gracefully(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = tmp_path / "id.key"
    real_create = keyfile.create_identity
    theirs: list[Identity] = []

    def another_process_first(where: str) -> Identity:
        theirs.append(real_create(where))
        return real_create(where)

    monkeypatch.setattr(keyfile, "create_identity", another_process_first)
    identity, was_created = load_or_create_identity(str(path))
    assert not was_created
    assert identity.public == theirs[0].public


def test_load_or_create_in_a_missing_directory(tmp_path: Path) -> None:
    path = tmp_path / "no" / "id.key"
    assert "cannot create key file" in refusal(path, load_or_create_identity)
