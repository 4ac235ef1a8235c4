"""The Lambda package's pieces that need no pip: targets, the closure for the target, pruning, the zip."""

from __future__ import annotations

import os
import stat
import zipfile
from pathlib import Path

import pytest

from tokenpool.aws.lambda_package import Target, closure, prune, remove_distribution, write_zip


def _dist(root: Path, name: str, version: str = "1.0", requires: tuple[str, ...] = (),
          files: tuple[str, ...] = ()) -> Path:
    info = root / f"{name.replace('-', '_')}-{version}.dist-info"
    info.mkdir(parents=True)
    headers = ["Metadata-Version: 2.1", f"Name: {name}", f"Version: {version}",
               *(f"Requires-Dist: {r}" for r in requires)]
    (info / "METADATA").write_text("\n".join(headers) + "\n\n")
    for relative in files:
        (root / relative).parent.mkdir(parents=True, exist_ok=True)
        (root / relative).write_text(relative)
    record = [f"{f},sha256=x,1" for f in files] + [f"{info.name}/METADATA,,", f"{info.name}/RECORD,,"]
    (info / "RECORD").write_text("\n".join(record) + "\n")
    return info


def test_targets_follow_the_lambda_runtimes_glibc_and_reject_what_lambda_does_not_run():
    assert Target("x86_64", "3.11").platform_tags()[0] == "manylinux_2_26_x86_64"  # Amazon Linux 2
    tags = Target("arm64", "3.12").platform_tags()
    assert tags[0] == "manylinux_2_34_aarch64"  # Amazon Linux 2023
    assert tags[-2:] == ["manylinux_2_17_aarch64", "manylinux2014_aarch64"]
    assert Target("arm64", "3.13").marker_environment()["platform_machine"] == "aarch64"
    for arch, version in (("i386", "3.12"), ("x86_64", "3.10"), ("x86_64", "3"), ("x86_64", "3.12.1")):
        with pytest.raises(ValueError, match="expected"):
            Target(arch, version)


def test_the_closure_evaluates_markers_and_extras_for_the_target_not_the_builder(tmp_path):
    _dist(tmp_path, "tokenpool", requires=(
        "alpha>=1", "backport; python_version < '3.12'", "gamma[fast]", "winonly; sys_platform == 'win32'",
        "armonly; platform_machine == 'aarch64'",
    ))
    _dist(tmp_path, "alpha")
    _dist(tmp_path, "gamma", requires=("speedups>=2; extra == 'fast'", "docs; extra == 'docs'"))
    _dist(tmp_path, "backport")
    _dist(tmp_path, "speedups", version="2.0")

    on_311 = closure(tmp_path, Target("x86_64", "3.11"))
    assert on_311.missing == []
    assert on_311.reachable == {"tokenpool", "alpha", "gamma", "backport", "speedups"}

    on_312_arm = closure(tmp_path, Target("arm64", "3.12"))
    assert on_312_arm.missing == ["armonly"]
    assert "backport" not in on_312_arm.reachable  # installed by a 3.11 builder, never imported on 3.12


def test_removing_a_distribution_deletes_only_its_recorded_files_inside_the_package(tmp_path):
    root = tmp_path / "package"
    outside = tmp_path / "outside.txt"
    outside.write_text("keep")
    info = _dist(root, "backport", files=("backport/__init__.py", "backport/sub/x.py"))
    _dist(root, "other", files=("other/__init__.py",))
    with (info / "RECORD").open("a") as record:
        record.write("../outside.txt,,\n")
    remove_distribution(root, info)
    assert sorted(p.relative_to(root).as_posix() for p in root.rglob("*") if p.is_file()) == [
        "other-1.0.dist-info/METADATA", "other-1.0.dist-info/RECORD", "other/__init__.py"]
    assert outside.read_text() == "keep"


def test_prune_drops_scripts_byte_code_and_the_builders_wheel_path(tmp_path):
    info = _dist(tmp_path, "tokenpool", files=("tokenpool/__init__.py", "bin/tokenpool",
                                               "tokenpool/__pycache__/__init__.cpython-312.pyc"))
    (info / "direct_url.json").write_text('{"url": "file:///tmp/tokenpool-lambda-abc/wheel/..."}')
    with (info / "RECORD").open("a") as record:
        record.write("tokenpool-1.0.dist-info/direct_url.json,sha256=differs-every-build,60\n"
                     '"tokenpool/odd,name.py",sha256=y,1\n')
    (tmp_path / "tokenpool/odd,name.py").write_text("")
    prune(tmp_path)
    assert sorted(p.relative_to(tmp_path).as_posix() for p in tmp_path.rglob("*")) == [
        "tokenpool", "tokenpool-1.0.dist-info", "tokenpool-1.0.dist-info/METADATA",
        "tokenpool-1.0.dist-info/RECORD", "tokenpool/__init__.py", "tokenpool/odd,name.py"]
    # RECORD names only what the package holds (the removed files' hashes would differ between builds)
    assert (info / "RECORD").read_text().splitlines() == [
        "tokenpool/__init__.py,sha256=x,1", "tokenpool-1.0.dist-info/METADATA,,", "tokenpool-1.0.dist-info/RECORD,,",
        '"tokenpool/odd,name.py",sha256=y,1']


def _tree(root: Path, mtime: int) -> None:
    for relative, content in (("b/mod.py", "x = 1\n"), ("a/lib.so", "\x7fELF"), ("a/__init__.py", "")):
        path = root / relative
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(content)
        os.utime(path, (mtime, mtime))
    (root / "a/lib.so").chmod(0o775)
    (root / "b/mod.py").chmod(0o600)


def test_the_zip_is_the_same_bytes_whatever_the_files_dates_and_modes_are_sorted(tmp_path):
    first, second = tmp_path / "one", tmp_path / "two"
    _tree(first, 1_000_000_000)
    _tree(second, 1_700_000_000)
    (second / "b/mod.py").chmod(0o644)
    count, size = write_zip(first, tmp_path / "one.zip")
    write_zip(second, tmp_path / "two.zip")
    assert (tmp_path / "one.zip").read_bytes() == (tmp_path / "two.zip").read_bytes()
    assert (count, size) == (3, 10)
    with zipfile.ZipFile(tmp_path / "one.zip") as archive:
        infos = archive.infolist()
    assert [info.filename for info in infos] == ["a/__init__.py", "a/lib.so", "b/mod.py"]
    modes = {info.filename: stat.S_IMODE(info.external_attr >> 16) for info in infos}
    assert modes == {"a/__init__.py": 0o644, "a/lib.so": 0o755, "b/mod.py": 0o644}
    assert not list(tmp_path.glob(".*.partial"))
