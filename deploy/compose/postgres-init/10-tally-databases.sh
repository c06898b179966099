#!/bin/sh
# Run once by the postgres image on an empty data directory (docker-entrypoint-initdb.d), as
# POSTGRES_USER (tally, which owns every database and runs the nodes' migrations):
# the control database, one database per shard, and tally_audit, a role that may read the
# shard databases and nothing else (tally audit-serve is read-only: it is given no more).
set -eu
psql -v ON_ERROR_STOP=1 --username "$POSTGRES_USER" --dbname postgres \
    -v audit_password="$TALLY_AUDIT_PG_PASSWORD" <<'SQL'
CREATE DATABASE tally_control;
CREATE DATABASE tally_shard_0;
CREATE DATABASE tally_shard_1;
CREATE ROLE tally_audit LOGIN PASSWORD :'audit_password';
SQL
for database in tally_shard_0 tally_shard_1; do
    # The tables are made later, by the node's migrations (as tally): the default privileges
    # give tally_audit SELECT on each as it is created.
    psql -v ON_ERROR_STOP=1 --username "$POSTGRES_USER" --dbname "$database" <<SQL
GRANT CONNECT ON DATABASE $database TO tally_audit;
GRANT USAGE ON SCHEMA public TO tally_audit;
ALTER DEFAULT PRIVILEGES FOR ROLE $POSTGRES_USER IN SCHEMA public
    GRANT SELECT ON TABLES TO tally_audit;
SQL
done
