-- Run once by the postgres image, as its superuser, when the data volume is first initialised
-- (mounted into /docker-entrypoint-initdb.d/ by docker-compose.yaml).
-- ordersvc connects as its own role, never as the superuser: LOGIN CREATEDB NOSUPERUSER.
-- The service creates its own database (`ordersvc migrate`), so none is created here.
-- 'ordersvc' is a development password: change it (ALTER ROLE ordersvc PASSWORD '...') and
-- DATABASE_URL anywhere else.
DO $$
BEGIN
    IF NOT EXISTS (SELECT FROM pg_roles WHERE rolname = 'ordersvc') THEN
        CREATE ROLE ordersvc LOGIN CREATEDB NOSUPERUSER PASSWORD 'ordersvc';
    ELSE
        ALTER ROLE ordersvc LOGIN CREATEDB NOSUPERUSER;
    END IF;
END
$$;
