-- An allow decision is written with every authorisation a rule concerns (issue 13: risk on the hot path).
-- Its holder is the payment's payer, which the payment's own foreign key (payments.payer_id) checks in the
-- same transaction; a refusal's holder is the authenticated payer. The decision's own foreign key to
-- wallet_holders repeated that lookup, with a row lock on the holder, for every authorisation: dropped.
-- The invariant checker keeps the guarantee (allow_decision_differs_from_its_payment: every decision's
-- holder exists, and an allow decision's payment exists and was paid by that holder at that merchant).
ALTER TABLE risk_decisions DROP CONSTRAINT risk_decisions_holder_id_fkey;
