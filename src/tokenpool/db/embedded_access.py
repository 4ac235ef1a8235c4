"""Who may connect to the embedded server, and as what: its access rules, roles and their passwords.

The wheel initialises the server with ``trust`` for everyone on its socket. On every start, tokenpool
replaces that: the superuser ``postgres`` is accepted only from the OS users that run the server and
tokenpool (``peer``, as the kernel reports them: there is no superuser password to leak), every other
role only with its SCRAM-SHA-256 password, and nothing over TCP (the server has no TCP listener).

tokenpool's own roles are ``tokenpool_owner`` (migrations; owns the database and every object) and
``tokenpool_app`` (everything else; only the privileges of grants.sql). Their passwords are made on
first start and kept under ``TOKENPOOL_HOME/secrets`` (folder 0700, files 0600), one libpq password file
per role, which the URLs name with ``passfile=``: a URL carries no secret, so it may be logged, shown
or handed to a child process. A data folder made before the roles existed gets them on its next start,
and its objects are handed from the superuser to the owner role.
"""

from __future__ import annotations

import os
import pwd
import secrets
import time
from dataclasses import dataclass
from pathlib import Path

import psycopg
from psycopg import sql
from psycopg.conninfo import conninfo_to_dict, make_conninfo

from tokenpool.db.roles import create_login_role, set_password

SUPERUSER = "postgres"  # the wheel's
OWNER_ROLE = "tokenpool_owner"
APP_ROLE = "tokenpool_app"
_PASSFILES = {OWNER_ROLE: "db-owner.pgpass", APP_ROLE: "db-app.pgpass"}
_IDENT_MAP = "tokenpool"
# pg_advisory_lock key of the setup: processes starting at once provision the roles one at a time.
_SETUP_LOCK = 0x746F6B656E706F6F  # "tokenpoo"
_RELOAD_TIMEOUT_S = 10.0

_HBA = f"""\
# Written by tokenpool on every start of its embedded server (tokenpool/db/embedded_access.py); edits
# are replaced. The server listens on its Unix socket only: no TCP line, so no TCP connection.
# TYPE  DATABASE  USER         METHOD
# The superuser: only the OS users that run the server and tokenpool (pg_ident.conf), no password.
local   all       {SUPERUSER}     peer map={_IDENT_MAP}
# Every other role (tokenpool_owner, tokenpool_app, ...): its SCRAM-SHA-256 password.
local   all       all          scram-sha-256
"""


@dataclass(frozen=True, slots=True)
class EmbeddedDatabase:
    """URLs of tokenpool's database on the embedded server (no secret in them: ``passfile=``)."""

    owner_url: str
    app_url: str


def secrets_dir(home: Path) -> Path:
    return home.resolve() / "secrets"


def passfile(home: Path, role: str) -> Path:
    """The libpq password file of ``role`` (``*:*:*:role:password``, mode 0600)."""
    return secrets_dir(home) / _PASSFILES[role]


# --- access rules ---------------------------------------------------------------------------------


def enforce_access_rules(pgdata: Path, superuser_url: str) -> None:
    """Puts tokenpool's pg_hba.conf and pg_ident.conf in force (a no-op when they already are)."""
    hba, ident = _HBA, _ident_map(pgdata)
    if _read(pgdata / "pg_hba.conf") == hba and _read(pgdata / "pg_ident.conf") == ident:
        return
    with psycopg.connect(superuser_url, autocommit=True) as conn:
        conn.execute("SELECT pg_advisory_lock(%s)", (_SETUP_LOCK,))  # released with the connection
        if _read(pgdata / "pg_hba.conf") == hba and _read(pgdata / "pg_ident.conf") == ident:
            return  # another process did it meanwhile
        _write_like(pgdata / "pg_ident.conf", ident, pgdata)
        _write_like(pgdata / "pg_hba.conf", hba, pgdata)
        errors = conn.execute("SELECT line_number, error FROM pg_hba_file_rules WHERE error IS NOT NULL").fetchall()
        if errors:  # never reload a file the server would reject (it would keep the old one, trust included)
            raise RuntimeError(f"pg_hba.conf written by tokenpool is invalid: {errors}")
        # Passwords are set as SCRAM verifiers already (db/roles.py); this keeps any other way to SCRAM too.
        conn.execute("ALTER SYSTEM SET password_encryption = 'scram-sha-256'")
        row = conn.execute("SELECT clock_timestamp()").fetchone()
        conn.execute("SELECT pg_reload_conf()")
    assert row is not None
    _wait_for_reload(superuser_url, row[0])


def _ident_map(pgdata: Path) -> str:
    users = sorted({pwd.getpwuid(os.geteuid()).pw_name, pwd.getpwuid(pgdata.stat().st_uid).pw_name})
    lines = "".join(f"{_IDENT_MAP}  {user}  {SUPERUSER}\n" for user in users)
    return (
        "# Written by tokenpool (tokenpool/db/embedded_access.py): the OS users that may connect as the\n"
        "# superuser, the one that runs the server and the one that runs tokenpool. Edits are replaced.\n"
        "# MAPNAME  SYSTEM-USERNAME  PG-USERNAME\n" + lines
    )


def _wait_for_reload(superuser_url: str, requested_at: object) -> None:
    # pg_reload_conf() only signals the postmaster. A new session reports the postmaster's last load
    # time: once it is past the request, new connections are checked against the new rules.
    deadline = time.monotonic() + _RELOAD_TIMEOUT_S
    while True:
        with psycopg.connect(superuser_url, autocommit=True) as conn:
            row = conn.execute("SELECT pg_conf_load_time() > %s", (requested_at,)).fetchone()
        if row is not None and row[0]:
            return
        if time.monotonic() > deadline:
            raise TimeoutError("the embedded server did not reload its configuration")
        time.sleep(0.05)


def _read(path: Path) -> str | None:
    try:
        return path.read_text(encoding="utf-8")
    except FileNotFoundError:
        return None


def _write_like(path: Path, text: str, owner_of: Path) -> None:
    """Replaces ``path`` atomically with a 0600 file owned like ``owner_of`` (the server's OS user)."""
    stat = owner_of.stat()
    temporary = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    fd = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
        os.write(fd, text.encode())
        os.fsync(fd)
        if os.geteuid() == 0:
            os.fchown(fd, stat.st_uid, stat.st_gid)
    finally:
        os.close(fd)
    os.replace(temporary, path)


# --- roles, passwords, the database ---------------------------------------------------------------


def provision(home: Path, superuser_url: str, database: str) -> EmbeddedDatabase:
    """Makes sure the two roles (with the passwords of their files) and ``database`` (owned by the owner
    role, as every object in it) exist; returns the roles' URLs. One query when all is in place."""
    with psycopg.connect(superuser_url, autocommit=True) as conn:
        if not _provisioned(conn, home, database):
            conn.execute("SELECT pg_advisory_lock(%s)", (_SETUP_LOCK,))  # released with the connection
            for role in (OWNER_ROLE, APP_ROLE):
                password, made_now = _stored_password(home, role)
                exists = conn.execute("SELECT 1 FROM pg_roles WHERE rolname = %s", (role,)).fetchone()
                if not exists:
                    create_login_role(conn, role, password)
                elif made_now:  # a role whose password file was lost (or predates it): a new password
                    set_password(conn, role, password)
            _give_database_to_owner(conn, superuser_url, database)
    return EmbeddedDatabase(_url(superuser_url, home, OWNER_ROLE, database),
                            _url(superuser_url, home, APP_ROLE, database))


def _provisioned(conn: psycopg.Connection, home: Path, database: str) -> bool:
    if not all(passfile(home, role).is_file() for role in _PASSFILES):
        return False
    row = conn.execute(
        "SELECT (SELECT count(*) FROM pg_roles WHERE rolname = ANY(%s) AND rolcanlogin),"
        " (SELECT pg_get_userbyid(datdba) FROM pg_database WHERE datname = %s)",
        (list(_PASSFILES), database),
    ).fetchone()
    return row is not None and row[0] == len(_PASSFILES) and row[1] == OWNER_ROLE


def _give_database_to_owner(conn: psycopg.Connection, superuser_url: str, database: str) -> None:
    row = conn.execute("SELECT pg_get_userbyid(datdba) FROM pg_database WHERE datname = %s", (database,)).fetchone()
    if row is None:
        conn.execute(sql.SQL("CREATE DATABASE {} OWNER {}").format(
            sql.Identifier(database), sql.Identifier(OWNER_ROLE)))
        return
    if row[0] == OWNER_ROLE:
        return
    # Made by an earlier tokenpool as the superuser: its objects first (a crash in between is redone by
    # the next start, as the database is still not the owner's), then the database itself.
    with psycopg.connect(_with_database(superuser_url, database), autocommit=True) as objects:
        statements = objects.execute(_HAND_OVER, {"owner": OWNER_ROLE}).fetchall()
        with objects.transaction():
            for (statement,) in statements:
                objects.execute(statement)
    conn.execute(sql.SQL("ALTER DATABASE {} OWNER TO {}").format(sql.Identifier(database), sql.Identifier(OWNER_ROLE)))


# The ALTER ... OWNER statements that give every relation and routine of schema public to the owner.
# Not REASSIGN OWNED BY postgres: the bootstrap superuser's objects cannot be reassigned that way. An
# index, and the sequence of an identity column, follow their table.
_HAND_OVER = """
SELECT format('ALTER %%s %%s OWNER TO %%I',
              CASE c.relkind WHEN 'S' THEN 'SEQUENCE' WHEN 'v' THEN 'VIEW' WHEN 'm' THEN 'MATERIALIZED VIEW'
                             WHEN 'f' THEN 'FOREIGN TABLE' ELSE 'TABLE' END,
              c.oid::regclass, %(owner)s::text)
FROM pg_class c
JOIN pg_namespace n ON n.oid = c.relnamespace
WHERE n.nspname = 'public' AND c.relkind IN ('r', 'p', 'v', 'm', 'S', 'f')
  AND pg_get_userbyid(c.relowner) <> %(owner)s
  AND NOT EXISTS (SELECT 1 FROM pg_depend d
                  WHERE d.classid = 'pg_class'::regclass AND d.objid = c.oid AND d.deptype IN ('a', 'i'))
UNION ALL
SELECT format('ALTER ROUTINE %%s OWNER TO %%I', p.oid::regprocedure, %(owner)s::text)
FROM pg_proc p
JOIN pg_namespace n ON n.oid = p.pronamespace
WHERE n.nspname = 'public' AND pg_get_userbyid(p.proowner) <> %(owner)s
"""


def _stored_password(home: Path, role: str) -> tuple[str, bool]:
    """The role's password from its file, made (and the file written, 0600) when there is none.
    Returns (password, made now). Called under the setup lock."""
    folder = secrets_dir(home)
    folder.mkdir(mode=0o700, parents=True, exist_ok=True)
    folder.chmod(0o700)
    path = passfile(home, role)
    text = _read(path)
    if text is not None and text.count(":") == 4:
        if path.stat().st_mode & 0o077:
            path.chmod(0o600)  # libpq ignores a password file others may read
        return text.strip().rsplit(":", 1)[1], False
    password = secrets.token_urlsafe(32)  # no ':' or '\\', the two characters a password file escapes
    _write_like(path, f"*:*:*:{role}:{password}\n", folder)
    return password, True


def _url(superuser_url: str, home: Path, role: str, database: str) -> str:
    params = {key: value for key, value in conninfo_to_dict(superuser_url).items() if key != "password"}
    params.update(user=role, dbname=database, passfile=str(passfile(home, role)))
    return make_conninfo(**params)  # type: ignore[arg-type]


def _with_database(url: str, database: str) -> str:
    params = conninfo_to_dict(url)
    params["dbname"] = database
    return make_conninfo(**params)  # type: ignore[arg-type]
