-- A pay-code charge that a risk rule asks the PIN or a one-time code of (nobody at the counter can answer)
-- is held in requires_action, its amount reserved, for the holder to confirm it in the app with what was
-- asked (services.risk: ``check`` with ``hold``, then ``confirm_held``). Its decision is 'held': the code it
-- sent opens that payment only (never another payment through store.risk.use_code). Confirming writes an
-- 'allow' decision with the step-ups passed and marks the held one answered (step_up_used_at); one held
-- decision per payment.
ALTER TABLE risk_decisions
    ADD COLUMN held boolean NOT NULL DEFAULT false,
    ADD CONSTRAINT risk_decisions_held CHECK (NOT held OR outcome IN ('require_pin', 'require_otp'));
CREATE UNIQUE INDEX risk_decisions_held_payment ON risk_decisions (payment_id) WHERE held;
