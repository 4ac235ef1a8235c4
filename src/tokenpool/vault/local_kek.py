"""The embedded key-encryption key: a JSON key file under TOKENPOOL_HOME, readable by its owner only.

The file holds every KEK version, ``{"current": N, "keys": {"1": base64, ...}}``, so keys wrapped before a
rotation still unwrap. A wrapped key is ``0x01 | KEK version (4 bytes) | nonce (12) | ciphertext || tag``,
AES-256-GCM with associated data ``b"tokenpool-kek" + version``. Creation and rotation hold an exclusive
``flock`` on ``<file>.lock`` and replace the file atomically, so concurrent first use by several processes
ends with one KEK and a concurrent rotation cannot drop a version.
"""

from __future__ import annotations

import base64
import binascii
import contextlib
import fcntl
import hashlib
import json
import os
import secrets
import stat
import struct
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from tokenpool.observability.logging import get_logger
from tokenpool.vault.errors import KeyProviderError

log = get_logger(__name__)

KEY_BYTES: Final = 32
WRAP_FORMAT: Final = 0x01
_WRAP_HEADER = struct.Struct(">BI")
_NONCE_BYTES: Final = 12
_WRAPPED_BYTES: Final = _WRAP_HEADER.size + _NONCE_BYTES + KEY_BYTES + 16
_AAD_PREFIX: Final = b"tokenpool-kek"


@dataclass(frozen=True, slots=True)
class _KeyFile:
    current: int
    keys: dict[int, AESGCM]
    fingerprints: dict[int, str]
    identity: tuple[int, int, int, int]

    @property
    def kek_id(self) -> str:
        return f"local:v{self.current}:{self.fingerprints[self.current]}"


class LocalKeyProvider:
    """KEK from a local key file, created when the first key is wrapped (mode 0600, folder 0700 when this
    creates it). Reading a wrapped key never creates one: a process pointed at the wrong file (or none)
    fails with a clear error instead of quietly starting a new key the stored keys were not wrapped with."""

    def __init__(self, path: Path) -> None:
        self.path = Path(path)
        self._lock = threading.Lock()
        self._cached: _KeyFile | None = None

    def __repr__(self) -> str:
        return f"LocalKeyProvider(path={str(self.path)!r})"

    @property
    def kek_id(self) -> str:
        """``local:v<version>:<fingerprint>``; the fingerprint tells a replaced key file apart, reveals nothing."""
        return self._key_file(create=False).kek_id

    def generate_key(self) -> tuple[bytes, bytes]:
        plaintext = secrets.token_bytes(KEY_BYTES)
        return plaintext, self._wrap(self._key_file(create=True), plaintext)

    def unwrap(self, wrapped: bytes) -> bytes:
        key_file = self._key_file(create=False)
        if len(wrapped) != _WRAPPED_BYTES:
            raise KeyProviderError(f"a wrapped key is {_WRAPPED_BYTES} bytes, not {len(wrapped)}")
        fmt, version = _WRAP_HEADER.unpack_from(wrapped)
        if fmt != WRAP_FORMAT:
            raise KeyProviderError(f"unknown wrapped-key format 0x{fmt:02x}")
        kek = key_file.keys.get(version)
        if kek is None:
            raise KeyProviderError(
                f"the key was wrapped by KEK version {version}, which {self.path} does not hold "
                f"(it holds {sorted(key_file.keys)}): restore the key file this installation used"
            )
        try:
            return kek.decrypt(wrapped[_WRAP_HEADER.size:_WRAP_HEADER.size + _NONCE_BYTES],
                               wrapped[_WRAP_HEADER.size + _NONCE_BYTES:], _AAD_PREFIX + wrapped[1:5])
        except InvalidTag:
            raise KeyProviderError(
                f"KEK version {version} in {self.path} cannot unwrap this key: the key file was replaced "
                "(restore the one this installation used) or the wrapped key is damaged"
            ) from None

    def rewrap(self, wrapped: bytes) -> bytes:
        plaintext = self.unwrap(wrapped)
        return self._wrap(self._key_file(create=False), plaintext)

    def rotate_kek(self) -> str:
        """Adds a KEK version and makes it current; older versions stay for unwrap."""
        with self._lock, self._exclusive():
            # Read under the lock: a rotation by another process since our last read must not be lost.
            previous = self._read() or self._create()
            state = self._read_raw()
            version = max(previous.keys) + 1
            state["keys"][str(version)] = base64.b64encode(secrets.token_bytes(KEY_BYTES)).decode()
            state["current"] = version
            self._write(state)
            rotated = self._read()
            if rotated is None:
                raise KeyProviderError(f"the key file {self.path} vanished right after it was written")
            self._cached = rotated
        log.info("vault_kek_rotated", path=str(self.path), kek_id=rotated.kek_id)
        return rotated.kek_id

    # --- the key file -----------------------------------------------------------------------------

    @staticmethod
    def _wrap(key_file: _KeyFile, plaintext: bytes) -> bytes:
        header = _WRAP_HEADER.pack(WRAP_FORMAT, key_file.current)
        nonce = os.urandom(_NONCE_BYTES)
        return header + nonce + key_file.keys[key_file.current].encrypt(nonce, plaintext, _AAD_PREFIX + header[1:])

    def _key_file(self, *, create: bool) -> _KeyFile:
        """The key file as now on disk: re-read when it changed (another process rotated); when absent,
        created (``create``) or refused."""
        with self._lock:
            try:
                identity = _identity(os.stat(self.path))
            except FileNotFoundError:
                identity = None
            except OSError as exc:
                raise KeyProviderError(f"cannot read the key file {self.path}: {exc.strerror}") from None
            if self._cached is not None and self._cached.identity == identity:
                return self._cached
            key_file = self._read()
            if key_file is None and not create:
                raise KeyProviderError(
                    f"no key file at {self.path}: `tokenpool db upgrade` creates one with the first keys; for "
                    "an existing database restore the key file it was set up with (TOKENPOOL_VAULT_LOCAL_KEY_FILE)")
            if key_file is None:
                with self._exclusive():
                    key_file = self._read() or self._create()
            self._cached = key_file
            return key_file

    def _create(self) -> _KeyFile:
        """Called holding the file lock, after a read found no file."""
        state = {"current": 1, "keys": {"1": base64.b64encode(secrets.token_bytes(KEY_BYTES)).decode()}}
        self._write(state)
        key_file = self._read()
        if key_file is None:
            raise KeyProviderError(f"the key file {self.path} vanished right after it was written")
        log.info("vault_kek_created", path=str(self.path), kek_id=key_file.kek_id)
        return key_file

    def _read(self) -> _KeyFile | None:
        """The parsed key file, or None if there is none; refuses a file group or others can read."""
        try:
            fd = os.open(self.path, os.O_RDONLY | os.O_CLOEXEC)
        except FileNotFoundError:
            return None
        except OSError as exc:
            raise KeyProviderError(f"cannot read the key file {self.path}: {exc.strerror}") from None
        with os.fdopen(fd, "rb") as file:
            info = os.fstat(file.fileno())
            if not stat.S_ISREG(info.st_mode):
                raise KeyProviderError(f"the key file {self.path} is not a regular file")
            if info.st_mode & 0o077:
                raise KeyProviderError(
                    f"the key file {self.path} is open to group or others (mode {stat.S_IMODE(info.st_mode):04o}); "
                    f"only its owner may read it: chmod 600 {self.path}"
                )
            raw = file.read()
        return _parse(self.path, raw, _identity(info))

    def _read_raw(self) -> dict[str, Any]:
        with self.path.open("rb") as file:
            state: dict[str, Any] = json.loads(file.read())
        return state

    def _write(self, state: dict[str, Any]) -> None:
        """Temp file (O_EXCL, 0600) in the same folder, fsync, rename over the key file, fsync the folder."""
        temp = self.path.with_name(f".{self.path.name}.{os.getpid()}.{secrets.token_hex(4)}.tmp")
        try:
            fd = os.open(temp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600)
            try:
                os.write(fd, json.dumps(state, indent=1, sort_keys=True).encode() + b"\n")
                os.fsync(fd)
            finally:
                os.close(fd)
            os.replace(temp, self.path)
            folder = os.open(self.path.parent, os.O_RDONLY | os.O_CLOEXEC)
            try:
                os.fsync(folder)
            finally:
                os.close(folder)
        except OSError as exc:
            with contextlib.suppress(OSError):
                temp.unlink()
            raise KeyProviderError(f"cannot write the key file {self.path}: {exc.strerror}") from None

    @contextlib.contextmanager
    def _exclusive(self) -> Iterator[None]:
        """Exclusive flock on ``<file>.lock``: other processes and other open descriptors in this one wait."""
        folder = self.path.parent
        try:
            if not folder.exists():
                folder.mkdir(mode=0o700, parents=True, exist_ok=True)
                # mkdir applies the umask; a folder holding a key file is the owner's alone.
                folder.chmod(0o700)
            fd = os.open(self.path.with_name(self.path.name + ".lock"), os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
        except OSError as exc:
            raise KeyProviderError(
                f"cannot create the key file {self.path} (folder {folder}): {exc.strerror}"
            ) from None
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            yield
        finally:
            os.close(fd)


def _identity(info: os.stat_result) -> tuple[int, int, int, int]:
    # ctime moves on every write, rename and chmod: a chmod to 0644 is caught at the next use.
    return info.st_dev, info.st_ino, info.st_ctime_ns, info.st_size


def _parse(path: Path, raw: bytes, identity: tuple[int, int, int, int]) -> _KeyFile:
    try:
        state = json.loads(raw)
        current = int(state["current"])
        decoded = {int(version): base64.b64decode(encoded, validate=True) for version, encoded in state["keys"].items()}
    except (ValueError, KeyError, TypeError, AttributeError, binascii.Error):
        raise KeyProviderError(f"the key file {path} is malformed (expected {{\"current\": N, \"keys\": {{...}}}})") \
            from None
    if current not in decoded or any(len(key) != KEY_BYTES for key in decoded.values()):
        raise KeyProviderError(f"the key file {path} is malformed: no current KEK, or a KEK not {KEY_BYTES} bytes")
    return _KeyFile(
        current=current,
        keys={version: AESGCM(key) for version, key in decoded.items()},
        fingerprints={version: hashlib.sha256(b"tokenpool-kek-id" + key).hexdigest()[:8]
                      for version, key in decoded.items()},
        identity=identity,
    )
