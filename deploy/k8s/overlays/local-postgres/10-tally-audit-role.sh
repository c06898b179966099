#!/bin/sh
# Run once by the postgres image on an empty data directory, as POSTGRES_USER (tally, which
# owns POSTGRES_DB and runs the node's migrations): tally_audit, a role that may read this
# database and nothing else, for tally audit-serve. The tables are made later by the node's
# migrations: the default privileges give tally_audit SELECT on each as it is created.
set -eu
psql -v ON_ERROR_STOP=1 --username "$POSTGRES_USER" --dbname "$POSTGRES_DB" \
    -v audit_password="$TALLY_AUDIT_PG_PASSWORD" <<'SQL'
CREATE ROLE tally_audit LOGIN PASSWORD :'audit_password';
SQL
psql -v ON_ERROR_STOP=1 --username "$POSTGRES_USER" --dbname "$POSTGRES_DB" <<SQL
GRANT CONNECT ON DATABASE $POSTGRES_DB TO tally_audit;
GRANT USAGE ON SCHEMA public TO tally_audit;
ALTER DEFAULT PRIVILEGES FOR ROLE $POSTGRES_USER IN SCHEMA public
    GRANT SELECT ON TABLES TO tally_audit;
SQL
