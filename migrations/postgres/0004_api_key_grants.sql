-- Hardening: what an API key carries besides its scopes, and where it is honoured.
-- JSON arrays as TEXT, like `scopes`. NULL (a key issued before this migration) reads as
-- an empty list: no roles, no teams, its own namespace only, the safe reading.
ALTER TABLE api_keys ADD COLUMN roles TEXT;
ALTER TABLE api_keys ADD COLUMN teams TEXT;
ALTER TABLE api_keys ADD COLUMN honoured_in TEXT;
