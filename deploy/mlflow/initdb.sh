#!/usr/bin/env bash
# MLflow's own role and database in the stack's PostgreSQL, beside the service's. The postgres
# image runs this from /docker-entrypoint-initdb.d when its data volume is empty; on an older
# volume, run it once by hand (docs/deployment.md, Containers). Running it again changes nothing.
set -euo pipefail
: "${MLFLOW_DB_PASSWORD:?MLFLOW_DB_PASSWORD is not set}"
# Values travel as psql variables, quoted by psql (:'...', :"..."), never spliced into the SQL.
# Each database admits only its owner and superusers (POSTGRES_USER is one, as the image makes
# it): MLflow's role cannot open the store's database.
psql -v ON_ERROR_STOP=1 --no-psqlrc --quiet --username "$POSTGRES_USER" --dbname "$POSTGRES_DB" \
  --set=password="$MLFLOW_DB_PASSWORD" --set=appdb="$POSTGRES_DB" <<'SQL'
SELECT format('CREATE ROLE mlflow LOGIN PASSWORD %L', :'password')
 WHERE NOT EXISTS (SELECT FROM pg_roles WHERE rolname = 'mlflow') \gexec
SELECT 'CREATE DATABASE mlflow OWNER mlflow'
 WHERE NOT EXISTS (SELECT FROM pg_database WHERE datname = 'mlflow') \gexec
REVOKE ALL ON DATABASE mlflow FROM PUBLIC;
REVOKE ALL ON DATABASE :"appdb" FROM PUBLIC;
SQL
echo "mlflow: role and database ready"
