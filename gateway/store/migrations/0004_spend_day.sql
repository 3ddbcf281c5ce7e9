-- The local day whose daily cap an authorisation counted against, so that money released by a
-- cancel, an expiry or a partial capture is given back to that day's allowance.
ALTER TABLE payments ADD COLUMN spend_day date;
