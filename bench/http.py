"""HTTP benchmark: wrk against one ``tokenpool serve``, each endpoint next to ``/healthz`` in the same run.

    python -m bench.http [--seconds 10] [--connections 16,64] [--workers 1] [--info-connections 16]
                         [--pairs N] [--refill] [--no-http] [--json PATH] [--keep-logs DIR]

Starts its own stack through the CLI only (so the same script measures any version of the code): a
temporary ``TOKENPOOL_HOME`` with the embedded PostgreSQL (``tokenpool db upgrade``), the TOME emulator,
synthetic pairs (``tokenpool pool seed``), an API key with every scope and ``tokenpool serve``. It creates
1,000 cards over HTTP for the detokenize refs and card ids, then runs ``wrk -t2`` for each endpoint at each
connection count with the server logging at WARNING, and once more at INFO to show what logging costs.
Prints requests/s, p50 and p99 latency and the ratio to ``/healthz`` of the same pass as a markdown table.
``--refill`` also runs ``python -m bench.refill`` on the same embedded server (the API stopped) and
relays its pairs/s. Everything is stopped and the temporary folder removed at the end.
"""

from __future__ import annotations

import argparse
import http.client
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager, suppress
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

HOST = "127.0.0.1"
PROGRAM = "default"
REPO = Path(__file__).resolve().parent.parent
WRK_SCRIPT = Path(__file__).resolve().parent / "wrk" / "requests.lua"
WRK_INSTALL = "apt-get update -qq && apt-get install -y -qq wrk"
SCOPES = "cards:write,cards:read,tokens:detokenize,reservations:write,pools:read,metrics:read"
REF_CARDS = 1_000  # cards created before the runs: detokenize refs and card ids
# Card creation cannot outrun /healthz; one uvicorn process answers a few thousand /healthz a second
# under wrk on this machine kind, so this bounds the cards one run can create, with room to spare.
CARDS_PER_S_CEILING = 3_000
COMMAND_TIMEOUT_S = 300
# /healthz answers in ~5 ms at 16 connections; ~40 ms is Linux's delayed ACK meeting Nagle's algorithm.
NAGLE_SUSPECT_MS = 35
# Settings this script decides; any other TOKENPOOL_* of the caller's environment is passed through.
OWN_SETTINGS = ("TOKENPOOL_HOME", "TOKENPOOL_DATABASE_URL", "TOKENPOOL_DATABASE_ADMIN_URL", "TOKENPOOL_TOME_URL",
                "TOKENPOOL_LOG_LEVEL", "TOKENPOOL_DEFAULT_POOL")


@dataclass(frozen=True)
class Endpoint:
    name: str
    requests: list[str]  # lines of the wrk request file: "METHOD PATH [BODY]"
    expected_status: int


@dataclass
class Row:
    workers: int
    log_level: str
    connections: int
    endpoint: str
    requests_per_s: float
    p50_ms: float
    p99_ms: float
    vs_healthz: float | None
    requests: int
    errors: int
    load_average: str  # /proc/loadavg's 1, 5 and 15 min figures just before the run


def main() -> None:
    args = parse_args()
    if not args.no_http and shutil.which("wrk") is None:
        sys.exit(f"wrk is not installed; install it with:\n  {WRK_INSTALL}")
    report: dict[str, Any] = {"meta": meta(args), "rows": [], "refill": []}
    print_meta(report["meta"])
    with stack(args) as home:
        if not args.no_http:
            report["rows"] = [asdict(row) for row in measure_http(home, args)]
        if args.refill:
            report["refill"] = measure_refill(home, args)
    if args.json:
        Path(args.json).write_text(json.dumps(report, indent=2) + "\n")
        print(f"\nwrote {args.json}")


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seconds", type=int, default=10, help="duration of each wrk run")
    parser.add_argument("--connections", default="16,64", help="wrk connection counts (always -t2)")
    parser.add_argument("--workers", type=int, default=1, help="tokenpool serve --workers N")
    parser.add_argument("--info-connections", type=int, default=16,
                        help="connections of the pass with the server logging at INFO (0: skip that pass)")
    parser.add_argument("--warmup", type=int, default=2, help="seconds of unreported wrk per endpoint after start")
    parser.add_argument("--pairs", type=int, default=0,
                        help="synthetic pairs to seed (0: enough for every card the runs can create)")
    parser.add_argument("--refill", action="store_true",
                        help="also run python -m bench.refill (database side of the refill) on the same server")
    parser.add_argument("--refill-args", default="", help="arguments passed to bench.refill, e.g. '--pairs 5000'")
    parser.add_argument("--no-http", action="store_true", help="skip the HTTP runs (with --refill)")
    parser.add_argument("--env", action="append", default=[], metavar="NAME=VALUE",
                        help="extra setting for every tokenpool process (repeatable)")
    parser.add_argument("--json", metavar="PATH", help="also write every figure as JSON")
    parser.add_argument("--keep-logs", metavar="DIR", help="copy the servers' logs there before the cleanup")
    args = parser.parse_args()
    args.connection_counts = [int(c) for c in args.connections.split(",") if c.strip()]
    return args


def meta(args: argparse.Namespace) -> dict[str, Any]:
    wrk = subprocess.run(["wrk", "--version"], capture_output=True, text=True, check=False) if shutil.which(
        "wrk") else None
    return {
        "started_at": time.strftime("%Y-%m-%d %H:%M:%S %Z"),
        "code": str(REPO),
        "python": sys.version.split()[0],
        "cpus": os.cpu_count(),
        "wrk": (wrk.stdout or wrk.stderr).splitlines()[0] if wrk else None,
        "workers": args.workers,
        "seconds": args.seconds,
        "connections": args.connection_counts,
        "info_connections": args.info_connections,
        "load_average": load_average(),
        "passed_settings": sorted(k for k in os.environ if k.startswith("TOKENPOOL_") and k not in OWN_SETTINGS),
    }


def print_meta(info: dict[str, Any]) -> None:
    print(f"code under test: {info['code']}; Python {info['python']}; {info['cpus']} CPUs; {info['wrk']}")
    print(f"load average at start: {info['load_average']}")
    if info["passed_settings"]:
        print(f"settings passed from the environment: {', '.join(info['passed_settings'])}")


# -- the stack: every piece started through the CLI -------------------------------------------------------


class Stack:
    """The children of one benchmark run, all under one temporary TOKENPOOL_HOME."""

    def __init__(self, home: Path, extra_env: Sequence[str]) -> None:
        self.home = home
        self.logs = home / "logs"
        self.logs.mkdir(parents=True)
        env = {k: v for k, v in os.environ.items() if k not in OWN_SETTINGS}
        env.update({"TOKENPOOL_HOME": str(home), "TOKENPOOL_DEFAULT_POOL": PROGRAM, "TOKENPOOL_LOG_LEVEL": "WARNING"})
        # One key drives the whole load: per-key limits far above it (unless given), still checked, so their
        # cost is in the figures.
        for name, value in (("TOKENPOOL_RATE_LIMIT_CARDS", "1000000/second"),
                            ("TOKENPOOL_RATE_LIMIT_DETOKENIZE_REFS", "1000000000/minute"),
                            ("TOKENPOOL_MAX_OPEN_RESERVATIONS", "1000000")):
            env.setdefault(name, value)
        for item in extra_env:
            name, _, value = item.partition("=")
            env[name] = value
        self.env = env
        self.emulator: subprocess.Popen[bytes] | None = None
        self.server: subprocess.Popen[bytes] | None = None
        self.server_url = ""
        self.server_log: Path | None = None

    def cli(self, *args: str) -> str:
        """Runs ``tokenpool ARGS`` to completion and returns its standard output."""
        done = subprocess.run(
            [sys.executable, "-m", "tokenpool", *args], env=self.env, capture_output=True, text=True,
            timeout=COMMAND_TIMEOUT_S, check=False,
        )
        if done.returncode != 0:
            raise RuntimeError(f"tokenpool {' '.join(args)} exited with {done.returncode}:\n{done.stdout}{done.stderr}")
        return done.stdout

    def cli_json(self, *args: str) -> dict[str, Any]:
        """The JSON object a ``--json`` command prints (its last line that is one)."""
        output = self.cli(*args)
        for line in reversed(output.splitlines()):
            if line.startswith("{"):
                value: dict[str, Any] = json.loads(line)
                return value
        raise RuntimeError(f"tokenpool {' '.join(args)} printed no JSON object:\n{output}")

    def start_emulator(self) -> None:
        port = free_port()
        self.emulator = self._spawn(
            ["tome-emulator", "--host", HOST, "--port", str(port), "--db", str(self.home / "tome-vault.sqlite3"),
             "--log-level", "WARNING"],
            self.logs / "tome-emulator.log", self.env,
        )
        self.env["TOKENPOOL_TOME_URL"] = f"http://{HOST}:{port}"
        wait_until_ready(f"http://{HOST}:{port}/_admin/health", self.emulator)

    def start_server(self, workers: int, log_level: str) -> str:
        port = free_port()
        self.server_log = self.logs / f"api-{log_level.lower()}.log"
        env = {**self.env, "TOKENPOOL_LOG_LEVEL": log_level}
        self.server = self._spawn(
            ["serve", "--host", HOST, "--port", str(port), "--workers", str(workers)], self.server_log, env
        )
        self.server_url = f"http://{HOST}:{port}"
        wait_until_ready(f"{self.server_url}/healthz", self.server)
        if workers > 1:
            time.sleep(2)  # the first worker answering does not mean every worker has opened its connections
        return self.server_url

    def stop_server(self) -> None:
        if self.server is not None:
            stop(self.server)
            self.server = None

    def close(self) -> None:
        self.stop_server()
        if self.emulator is not None:
            stop(self.emulator)
            self.emulator = None
        try:
            self.cli("db", "stop")
        except (RuntimeError, subprocess.TimeoutExpired) as error:
            print(f"warning: tokenpool db stop failed: {error}", file=sys.stderr)

    def _spawn(self, args: list[str], log: Path, env: dict[str, str]) -> subprocess.Popen[bytes]:
        with log.open("ab") as out:
            # A session of its own, so stop() can reach uvicorn's worker processes through the group.
            return subprocess.Popen([sys.executable, "-m", "tokenpool", *args], env=env, stdout=out,
                                    stderr=subprocess.STDOUT, start_new_session=True)


@contextmanager
def stack(args: argparse.Namespace) -> Iterator[Stack]:
    """The database, emulator, pairs and (for the HTTP runs) the API key; everything removed on exit."""
    folder = Path(tempfile.mkdtemp(prefix="tokenpool-bench-http-"))
    pieces = Stack(folder, args.env)
    try:
        started = time.perf_counter()
        pieces.cli("db", "upgrade")  # starts the embedded PostgreSQL under this home
        if not args.no_http:
            pieces.start_emulator()
            pairs = args.pairs or seed_size(args)
            seed_started = time.perf_counter()
            pieces.cli("pool", "seed", "--synthetic", "--count", str(pairs), "--pool", PROGRAM)
            seeded_in = time.perf_counter() - seed_started
            print(f"seeded {pairs:,} synthetic pairs in {seeded_in:.1f} s ({pairs / seeded_in:,.0f} pairs/s,"
                  f" CLI start included); stack ready in {time.perf_counter() - started:.1f} s")
        yield pieces
    finally:
        pieces.close()
        if args.keep_logs:
            shutil.copytree(pieces.logs, args.keep_logs, dirs_exist_ok=True)
        shutil.rmtree(folder, ignore_errors=True)


def seed_size(args: argparse.Namespace) -> int:
    """Enough pairs that no card run drains the pool (an empty pool would measure the TOME path)."""
    card_runs = len(args.connection_counts) + (1 if args.info_connections else 0)
    seconds = card_runs * args.seconds + (2 * args.warmup if args.info_connections else args.warmup)
    return max(50_000, int(CARDS_PER_S_CEILING * args.workers * seconds * 1.2) + REF_CARDS)


def free_port() -> int:
    import socket

    with socket.socket() as probe:
        probe.bind((HOST, 0))
        port: int = probe.getsockname()[1]
        return port


def wait_until_ready(url: str, process: subprocess.Popen[bytes], timeout_s: float = 120) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"{process.args!r} exited with {process.returncode} before it was ready")
        try:
            status, _ = request_json("GET", url, None, None)
            if status == 200:
                return
        except OSError:
            pass
        time.sleep(0.2)
    raise TimeoutError(f"{url} not ready within {timeout_s:.0f} s")


def stop(process: subprocess.Popen[bytes]) -> None:
    """SIGTERM to the process; its whole group (uvicorn's workers) is killed if it does not end in 20 s."""
    if process.poll() is None:
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(timeout=20)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait()
    with suppress(ProcessLookupError):
        os.killpg(process.pid, signal.SIGKILL)  # a worker the master left behind


# -- HTTP -----------------------------------------------------------------------------------------------------


_local = threading.local()


def request_json(method: str, url: str, key: str | None, body: Any) -> tuple[int, Any]:
    """One request on this thread's keep-alive connection to the URL's server."""
    match = re.match(r"http://([^/:]+):(\d+)(/.*)$", url)
    if not match:
        raise ValueError(url)
    host, port, path = match.group(1), int(match.group(2)), match.group(3)
    connections: dict[tuple[str, int], http.client.HTTPConnection] = _local.__dict__.setdefault("connections", {})
    conn = connections.get((host, port))
    if conn is None:
        conn = connections[(host, port)] = http.client.HTTPConnection(host, port, timeout=30)
    headers = {"Content-Type": "application/json"}
    if key:
        headers["Authorization"] = f"Bearer {key}"
    try:
        conn.request(method, path, body=None if body is None else json.dumps(body), headers=headers)
        response = conn.getresponse()
        data = response.read()
    except (OSError, http.client.HTTPException):
        conn.close()
        del connections[(host, port)]
        raise
    try:
        return response.status, json.loads(data) if data else None
    except ValueError:
        return response.status, data.decode(errors="replace")


def create_cards(url: str, key: str, count: int) -> list[dict[str, Any]]:
    def create(i: int) -> dict[str, Any]:
        status, card = request_json("POST", f"{url}/v1/cards", key, {"program": PROGRAM, "customer_ref": f"ref-{i}"})
        if status != 201:
            raise RuntimeError(f"POST /v1/cards answered {status}: {card}")
        return dict(card)

    with ThreadPoolExecutor(8) as threads:
        return list(threads.map(create, range(count)))


def endpoints(cards: list[dict[str, Any]]) -> list[Endpoint]:
    refs = [card["external_ref"] for card in cards]

    def detokenize(n: int) -> list[str]:
        bodies = [refs[i : i + n] for i in range(0, len(refs) - n + 1, n)]
        return [f"POST /v1/detokenize {json.dumps({'external_refs': b}, separators=(',', ':'))}" for b in bodies]

    new_card = json.dumps({"program": PROGRAM, "customer_ref": "bench"}, separators=(",", ":"))
    return [
        Endpoint("GET /healthz", ["GET /healthz"], 200),
        Endpoint("POST /v1/cards", [f"POST /v1/cards {new_card}"], 201),  # no Idempotency-Key: a card each
        Endpoint("POST /v1/detokenize, 1 ref", detokenize(1), 200),
        Endpoint("POST /v1/detokenize, 100 refs", detokenize(100), 200),
        Endpoint("POST /v1/detokenize, 1,000 refs", detokenize(1_000), 200),
        Endpoint("GET /v1/cards/{id}", [f"GET /v1/cards/{card['card_id']}" for card in cards], 200),
    ]


def check_endpoint(url: str, key: str, endpoint: Endpoint) -> None:
    """One request before the run: a wrong answer would otherwise be measured as a fast one."""
    method, path, *body = endpoint.requests[0].split(" ", 2)
    status, answer = request_json(method, f"{url}{path}", key, json.loads(body[0]) if body else None)
    if status != endpoint.expected_status:
        raise RuntimeError(f"{endpoint.name} answered {status}, expected {endpoint.expected_status}: {answer}")
    if "detokenize" in endpoint.name:
        results = answer["results"]
        if not answer.get("complete", True) or any(r.get("internal_token") is None for r in results):
            raise RuntimeError(f"{endpoint.name}: refs not all answered: {str(answer)[:500]}")
    if endpoint.name == "POST /v1/cards" and answer.get("token_source") != "pool":
        raise RuntimeError(f"POST /v1/cards was not served from the pool: {answer}")


# -- wrk --------------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class WrkResult:
    requests: int
    requests_per_s: float
    p50_ms: float
    p99_ms: float
    errors: int


def run_wrk(url: str, key: str, request_file: Path, connections: int, seconds: int) -> WrkResult:
    command = [
        "wrk", "-t2", f"-c{connections}", f"-d{seconds}s", f"--timeout={max(30, seconds)}s", "-s", str(WRK_SCRIPT),
        "-H", f"Authorization: Bearer {key}", "-H", "Content-Type: application/json", url, "--", str(request_file),
    ]
    done = subprocess.run(command, capture_output=True, text=True, timeout=seconds + 90, check=False)
    line = next((x for x in done.stdout.splitlines() if x.startswith("WRK_RESULT ")), None)
    if done.returncode != 0 or line is None:
        raise RuntimeError(f"wrk exited with {done.returncode}:\n{done.stdout}{done.stderr}")
    result = json.loads(line.removeprefix("WRK_RESULT "))
    errors = sum(result[k] for k in ("connect_errors", "read_errors", "write_errors", "status_errors", "timeouts"))
    return WrkResult(
        requests=result["requests"],
        requests_per_s=result["requests"] / (result["duration_us"] / 1e6),
        p50_ms=result["p50_us"] / 1e3,
        p99_ms=result["p99_us"] / 1e3,
        errors=errors,
    )


def load_average() -> str:
    try:
        return " ".join(Path("/proc/loadavg").read_text().split()[:3])
    except OSError:
        return "?"


def measure_http(pieces: Stack, args: argparse.Namespace) -> list[Row]:
    key = pieces.cli_json("apikey", "create", "--name", "bench", "--scopes", SCOPES, "--json")["key"]
    available_before = pieces.cli_json("pool", "stats", "--pool", PROGRAM, "--json")["available"]
    url = pieces.start_server(args.workers, "WARNING")
    cards = create_cards(url, key, REF_CARDS)
    files = pieces.home / "requests"
    files.mkdir()
    plan: list[tuple[Endpoint, Path]] = []
    for i, endpoint in enumerate(endpoints(cards)):
        path = files / f"{i}.txt"
        path.write_text("\n".join(endpoint.requests) + "\n")
        plan.append((endpoint, path))

    passes = [("WARNING", c) for c in args.connection_counts]
    if args.info_connections:
        passes.append(("INFO", args.info_connections))
    rows: list[Row] = []
    print(f"\nserver: tokenpool serve --workers {args.workers}; wrk -t2, {args.seconds} s per run; the server logs"
          " at WARNING (TOKENPOOL_LOG_LEVEL) so logging does not dominate, except in the INFO pass\n")
    current_level = "WARNING"
    warmed = False
    for level, connections in passes:
        if level != current_level:
            pieces.stop_server()
            url = pieces.start_server(args.workers, level)
            current_level, warmed = level, False
        for endpoint, path in plan:
            check_endpoint(url, key, endpoint)
            if not warmed and args.warmup:
                run_wrk(url, key, path, min(args.connection_counts), args.warmup)
        warmed = True
        healthz_rate: float | None = None
        for endpoint, path in plan:
            load = load_average()
            result = run_wrk(url, key, path, connections, args.seconds)
            if endpoint.name == "GET /healthz":
                healthz_rate = result.requests_per_s
                if result.p50_ms >= NAGLE_SUSPECT_MS and connections <= 16:
                    print(f"  note: /healthz p50 {result.p50_ms:.0f} ms at {connections} connections is the delayed-ACK"
                          " wait of a socket without TCP_NODELAY (uvicorn --workers N > 1 binds its listener"
                          " with proto 0): every figure of this pass is bounded by it")
            row = Row(
                workers=args.workers, log_level=level, connections=connections, endpoint=endpoint.name,
                requests_per_s=result.requests_per_s, p50_ms=result.p50_ms, p99_ms=result.p99_ms,
                vs_healthz=result.requests_per_s / healthz_rate if healthz_rate else None,
                requests=result.requests, errors=result.errors, load_average=load,
            )
            rows.append(row)
            print(f"  {level:7} c={connections:<3} {endpoint.name:32} {row.requests_per_s:>9,.0f} req/s"
                  f"  p50 {row.p50_ms:7.1f} ms  p99 {row.p99_ms:7.1f} ms  errors {row.errors}  load {load}",
                  flush=True)
    pieces.stop_server()

    available_after = pieces.cli_json("pool", "stats", "--pool", PROGRAM, "--json")["available"]
    print_table(rows)
    print_logging_cost(rows)
    print(f"\npairs taken by card creation: {available_before - available_after:,}; still available:"
          f" {available_after:,}" + ("" if available_after else "  ** THE POOL RAN DRY: cards came from TOME **"))
    log_sizes = {p.name: p.stat().st_size for p in sorted(pieces.logs.glob("api-*.log"))}
    print(f"server log bytes: {log_sizes}")
    return rows


def print_table(rows: list[Row]) -> None:
    print("\n| workers | log | conns | endpoint | req/s | p50 ms | p99 ms | vs /healthz | errors | load avg |")
    print("|---:|---|---:|---|---:|---:|---:|---:|---:|---|")
    for r in rows:
        ratio = f"{r.vs_healthz:.0%}" if r.vs_healthz is not None else ""
        print(f"| {r.workers} | {r.log_level} | {r.connections} | {r.endpoint} | {r.requests_per_s:,.0f} |"
              f" {r.p50_ms:.1f} | {r.p99_ms:.1f} | {ratio} | {r.errors} | {r.load_average} |")


def print_logging_cost(rows: list[Row]) -> None:
    info = {r.endpoint: r for r in rows if r.log_level == "INFO"}
    if not info:
        return
    connections = next(iter(info.values())).connections
    quiet = {r.endpoint: r for r in rows if r.log_level == "WARNING" and r.connections == connections}
    print(f"\nlogging cost at {connections} connections (INFO req/s over WARNING req/s):")
    for name, row in info.items():
        if name in quiet:
            print(f"  {name:32} {quiet[name].requests_per_s:>9,.0f} -> {row.requests_per_s:>9,.0f} req/s"
                  f"  ({row.requests_per_s / quiet[name].requests_per_s:.0%})")


# -- the refill's database side: bench.refill, as it is in this checkout ------------------------------------


def measure_refill(pieces: Stack, args: argparse.Namespace) -> list[str]:
    """Runs ``python -m bench.refill`` against this run's embedded server and returns its pairs/s lines."""
    print(f"\npython -m bench.refill {args.refill_args} (load average {load_average()})", flush=True)
    env = {k: v for k, v in pieces.env.items() if k != "TOKENPOOL_TOME_URL"}  # it starts its own emulator
    done = subprocess.run(
        [sys.executable, "-m", "bench.refill", *args.refill_args.split()], cwd=REPO, env=env, capture_output=True,
        text=True, timeout=3_600, check=False,
    )
    print(done.stdout, end="")
    if done.returncode != 0:
        raise RuntimeError(f"bench.refill exited with {done.returncode}:\n{done.stderr}")
    return [line.strip() for line in done.stdout.splitlines() if "pairs/s" in line]


if __name__ == "__main__":
    main()
