-- Velocity without Redis counts a pay-code charge held for its step-ups as Redis does (review R17, finding 2):
-- the PostgreSQL fallback (store.risk.recent_allowed) counts the allow decisions and the held decisions not
-- answered yet (a confirmed one is counted through its allow decision). The holder's are read through
-- risk_decisions_holder (every outcome); these serve the device's and the merchant's. Held decisions are
-- few: allow rows add no entry to them.
CREATE INDEX risk_decisions_held_device ON risk_decisions (device_id, created_at) WHERE held;
CREATE INDEX risk_decisions_held_merchant ON risk_decisions (merchant_id, created_at) WHERE held;
