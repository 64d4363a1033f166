-- Constitution versions: immutable once stored; the active one is the highest version.
CREATE TABLE IF NOT EXISTS constitutions (
  version    integer PRIMARY KEY CHECK (version > 0),
  document   text NOT NULL,
  checksum   text NOT NULL,
  signatures jsonb NOT NULL,
  loaded_by  text NOT NULL,
  loaded_at  timestamptz NOT NULL DEFAULT now()
);

CREATE OR REPLACE FUNCTION constitutions_immutable() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
  RAISE EXCEPTION 'constitution versions are immutable: % is not allowed', TG_OP
    USING ERRCODE = 'insufficient_privilege';
END $$;
DROP TRIGGER IF EXISTS constitutions_no_change ON constitutions;
CREATE TRIGGER constitutions_no_change BEFORE UPDATE OR DELETE ON constitutions
  FOR EACH ROW EXECUTE FUNCTION constitutions_immutable();
