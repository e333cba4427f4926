#!/usr/bin/env bash
# Creates Label Studio's role and database next to Airflow's metadata DB.
# Run by the postgres image from /docker-entrypoint-initdb.d on the FIRST start of an
# empty data volume only (docker compose down -v to re-run). The password comes from
# the container environment (LABEL_STUDIO_DB_PASSWORD, set in .env); nothing is baked
# in. psql quotes the values itself (format %I / %L), so any password is safe.
# No `set -u`/`exit`: the postgres entrypoint sources this file when it is not
# executable.
set -e

: "${LABEL_STUDIO_DB_PASSWORD:?LABEL_STUDIO_DB_PASSWORD must be set}"

psql -v ON_ERROR_STOP=1 \
    --username "$POSTGRES_USER" --dbname "$POSTGRES_DB" \
    -v ls_user="${LABEL_STUDIO_DB_USER:-label_studio}" \
    -v ls_db="${LABEL_STUDIO_DB_NAME:-label_studio}" \
    -v ls_password="$LABEL_STUDIO_DB_PASSWORD" <<'SQL'
SELECT format('CREATE ROLE %I LOGIN PASSWORD %L', :'ls_user', :'ls_password')
WHERE NOT EXISTS (SELECT FROM pg_roles WHERE rolname = :'ls_user')\gexec
SELECT format('CREATE DATABASE %I OWNER %I', :'ls_db', :'ls_user')
WHERE NOT EXISTS (SELECT FROM pg_database WHERE datname = :'ls_db')\gexec
SQL
