"""The local key-encryption key file (tokenpool.vault.LocalKeyProvider), in a temp folder per test."""

from __future__ import annotations

import json
import os
import stat
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from tokenpool.vault import KeyProviderError, LocalKeyProvider


def mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def test_the_key_file_is_created_on_first_use_for_its_owner_only(tmp_path: Path) -> None:
    path = tmp_path / "home" / "vault" / "kek.json"
    provider = LocalKeyProvider(path)
    assert not path.exists()
    plaintext, wrapped = provider.generate_key()
    assert len(plaintext) == 32
    assert plaintext not in wrapped
    assert mode(path) == 0o600
    assert mode(path.parent) == 0o700
    state = json.loads(path.read_text())
    assert state["current"] == 1
    assert list(state["keys"]) == ["1"]
    assert provider.kek_id.startswith("local:v1:")
    assert [p.name for p in path.parent.iterdir() if p.name.endswith(".tmp")] == []


def test_a_second_provider_on_the_same_file_unwraps_the_first_ones_keys(tmp_path: Path) -> None:
    path = tmp_path / "kek.json"
    plaintext, wrapped = LocalKeyProvider(path).generate_key()
    second = LocalKeyProvider(path)
    assert second.unwrap(wrapped) == plaintext
    assert second.kek_id == LocalKeyProvider(path).kek_id


def test_after_a_rotation_old_keys_unwrap_and_rewrap_uses_the_new_kek(tmp_path: Path) -> None:
    provider = LocalKeyProvider(tmp_path / "kek.json")
    plaintext, wrapped = provider.generate_key()
    old_kek = provider.kek_id
    new_kek = provider.rotate_kek()
    assert new_kek.startswith("local:v2:")
    assert new_kek != old_kek
    assert provider.kek_id == new_kek
    assert provider.unwrap(wrapped) == plaintext
    rewrapped = provider.rewrap(wrapped)
    assert int.from_bytes(rewrapped[1:5], "big") == 2
    assert int.from_bytes(wrapped[1:5], "big") == 1
    assert LocalKeyProvider(tmp_path / "kek.json").unwrap(rewrapped) == plaintext
    _fresh, wrapped_after = provider.generate_key()
    assert int.from_bytes(wrapped_after[1:5], "big") == 2


def test_a_rotation_by_another_process_is_seen_without_a_restart(tmp_path: Path) -> None:
    path = tmp_path / "kek.json"
    running = LocalKeyProvider(path)
    running.generate_key()
    plaintext, wrapped = LocalKeyProvider(path).generate_key()
    LocalKeyProvider(path).rotate_kek()
    rewrapped = LocalKeyProvider(path).rewrap(wrapped)
    assert running.unwrap(rewrapped) == plaintext
    assert running.kek_id.startswith("local:v2:")


def test_a_key_file_open_to_group_or_others_is_refused_with_the_fix(tmp_path: Path) -> None:
    path = tmp_path / "kek.json"
    provider = LocalKeyProvider(path)
    _plaintext, wrapped = provider.generate_key()
    path.chmod(0o644)
    with pytest.raises(KeyProviderError, match=r"chmod 600 .*kek\.json") as raised:
        LocalKeyProvider(path).unwrap(wrapped)
    assert "0644" in str(raised.value)
    with pytest.raises(KeyProviderError, match="chmod 600"):
        provider.unwrap(wrapped)  # a running provider notices at its next use


def test_a_replaced_key_file_cannot_unwrap_and_says_so(tmp_path: Path) -> None:
    path = tmp_path / "kek.json"
    _plaintext, wrapped = LocalKeyProvider(path).generate_key()
    path.unlink()
    with pytest.raises(KeyProviderError, match="replaced"):
        LocalKeyProvider(path).unwrap(wrapped)


def test_a_key_wrapped_by_a_kek_version_the_file_lacks_is_refused(tmp_path: Path) -> None:
    rotated = LocalKeyProvider(tmp_path / "a" / "kek.json")
    rotated.rotate_kek()
    _plaintext, wrapped = rotated.generate_key()
    other = LocalKeyProvider(tmp_path / "b" / "kek.json")
    other.generate_key()  # a key file of its own, holding version 1 only
    with pytest.raises(KeyProviderError, match="version 2"):
        other.unwrap(wrapped)


def test_reading_a_wrapped_key_never_creates_a_key_file(tmp_path: Path) -> None:
    _plaintext, wrapped = LocalKeyProvider(tmp_path / "a" / "kek.json").generate_key()
    elsewhere = tmp_path / "b" / "kek.json"
    with pytest.raises(KeyProviderError, match="db upgrade"):
        LocalKeyProvider(elsewhere).unwrap(wrapped)
    assert not elsewhere.exists()


def test_a_malformed_key_file_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "kek.json"
    fd = os.open(path, os.O_WRONLY | os.O_CREAT, 0o600)
    os.write(fd, b'{"current": 2, "keys": {"1": "AAAA"}}')
    os.close(fd)
    with pytest.raises(KeyProviderError, match="malformed"):
        LocalKeyProvider(path).generate_key()


def test_concurrent_first_use_by_threads_ends_with_one_kek(tmp_path: Path) -> None:
    path = tmp_path / "vault" / "kek.json"
    providers = [LocalKeyProvider(path) for _ in range(8)]
    barrier = threading.Barrier(len(providers))
    results: list[tuple[bytes, bytes]] = []

    def first_use(provider: LocalKeyProvider) -> None:
        barrier.wait()
        results.append(provider.generate_key())

    threads = [threading.Thread(target=first_use, args=(p,)) for p in providers]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=30)
    assert len(results) == len(providers)
    assert len({p.kek_id for p in providers}) == 1
    reader = LocalKeyProvider(path)
    assert all(reader.unwrap(wrapped) == plaintext for plaintext, wrapped in results)


FIRST_USE = """
import sys, time
from pathlib import Path
from tokenpool.vault import LocalKeyProvider
start = float(sys.argv[2])
while time.time() < start:
    pass
provider = LocalKeyProvider(Path(sys.argv[1]))
plaintext, wrapped = provider.generate_key()
print(provider.kek_id, plaintext.hex(), wrapped.hex())
"""


def test_concurrent_first_use_by_processes_ends_with_one_kek(tmp_path: Path) -> None:
    path = tmp_path / "vault" / "kek.json"
    start = time.time() + 2.0  # all processes imported and spinning before any touches the file
    processes = [
        subprocess.Popen([sys.executable, "-c", FIRST_USE, str(path), str(start)], stdout=subprocess.PIPE, text=True)
        for _ in range(3)
    ]
    # The last line: structlog's unconfigured default prints the creation event to stdout too.
    outputs = [process.communicate(timeout=60)[0].splitlines()[-1].split() for process in processes]
    assert all(process.returncode == 0 for process in processes)
    assert len({kek_id for kek_id, _plain, _wrapped in outputs}) == 1
    reader = LocalKeyProvider(path)
    assert reader.kek_id == outputs[0][0]
    assert all(reader.unwrap(bytes.fromhex(wrapped)) == bytes.fromhex(plain) for _kek, plain, wrapped in outputs)


def test_concurrent_rotations_lose_no_kek_version(tmp_path: Path) -> None:
    path = tmp_path / "kek.json"
    before = LocalKeyProvider(path).generate_key()
    providers = [LocalKeyProvider(path) for _ in range(4)]
    barrier = threading.Barrier(len(providers))
    wrapped_by: list[tuple[bytes, bytes]] = []

    def rotate_and_wrap(provider: LocalKeyProvider) -> None:
        barrier.wait()
        provider.rotate_kek()
        wrapped_by.append(provider.generate_key())

    threads = [threading.Thread(target=rotate_and_wrap, args=(p,)) for p in providers]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=30)
    state = json.loads(path.read_text())
    assert sorted(state["keys"], key=int) == ["1", "2", "3", "4", "5"]
    assert state["current"] == 5
    reader = LocalKeyProvider(path)
    assert all(reader.unwrap(w) == p for p, w in [before, *wrapped_by])
