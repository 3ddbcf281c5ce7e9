-- Use cases done in ONE statement (issue 12): the statement applies what the gateway decided from
-- a row it read just before (a payment created, a payment paid) together with its event, its
-- ledger entry and its stored idempotent answer, guarded by the state that decision rests on.
-- When a guard no longer holds (the row changed meanwhile, the key exists, a cap would be crossed)
-- the statement raises this error and so changes nothing at all; the gateway then runs the general,
-- multi-statement path of the use case, which decides afresh and gives the answer (a decline too).
CREATE OR REPLACE FUNCTION gateway_at_once(ok boolean) RETURNS boolean LANGUAGE plpgsql AS $$
BEGIN
    IF ok IS NOT TRUE THEN
        RAISE EXCEPTION 'a guard of a one-statement use case failed' USING ERRCODE = 'GW001';
    END IF;
    RETURN true;
END $$;
