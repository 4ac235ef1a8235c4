#!/bin/sh
# PostgreSQL's first start (the official image runs /docker-entrypoint-initdb.d/* once, on an empty data
# volume): tokenpool's two roles and its database, as docs/security.md, "Roles and grants" describes.
# tokenpool_owner owns the database (and so the public schema): `tokenpool db upgrade` runs as it.
# tokenpool_app may connect and nothing else until `db upgrade` grants it exactly grants.sql.
# The passwords come from the environment (compose.yaml passes them from .env) as psql variables.
set -eu
: "${TOKENPOOL_OWNER_DB_PASSWORD:?}" "${TOKENPOOL_APP_DB_PASSWORD:?}"
psql --no-psqlrc -v ON_ERROR_STOP=1 --username "${POSTGRES_USER:-postgres}" --dbname postgres \
     -v owner_password="$TOKENPOOL_OWNER_DB_PASSWORD" -v app_password="$TOKENPOOL_APP_DB_PASSWORD" <<'SQL'
SET password_encryption = 'scram-sha-256';
CREATE ROLE tokenpool_owner LOGIN PASSWORD :'owner_password';
CREATE ROLE tokenpool_app LOGIN PASSWORD :'app_password';
CREATE DATABASE tokenpool OWNER tokenpool_owner;
REVOKE ALL ON DATABASE tokenpool FROM PUBLIC;
GRANT CONNECT, TEMPORARY ON DATABASE tokenpool TO tokenpool_app;
SQL
