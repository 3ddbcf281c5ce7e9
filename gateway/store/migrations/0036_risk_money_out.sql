-- A block stops money leaving the wallet (services.risk.check_money_out): a withdrawal or a conversion by a
-- blocked wallet, or from a blocked device, is declined, and its refusal recorded as a payment's is, with the
-- refusal's stored answer. Such a decision has no payment and no merchant: its channel ('withdrawal',
-- 'conversion') says what was refused, amount_minor and currency what would have left the wallet. It is
-- always a decline (a withdrawal or a conversion asks no step-up), so it is never held, names no challenge,
-- and is counted by no velocity window (those count allow and held decisions only).
--
-- Dropping NOT NULL changes the catalogue only. The CHECK is added NOT VALID: every row written before it
-- was written under the NOT NULL columns by a payment's channel, so it holds; NOT VALID spares the scan of
-- the whole table under this migration's ACCESS EXCLUSIVE lock, which would hold up every authorisation a
-- rule concerns for its length. Rows written from now on are checked (an operator may VALIDATE it later,
-- under a lock that lets writes through).
ALTER TABLE risk_decisions
    ALTER COLUMN payment_id DROP NOT NULL,
    ALTER COLUMN merchant_id DROP NOT NULL,
    ADD CONSTRAINT risk_decisions_money_out CHECK (CASE WHEN channel IN ('withdrawal', 'conversion')
        THEN payment_id IS NULL AND merchant_id IS NULL AND outcome = 'decline' AND NOT held
        ELSE payment_id IS NOT NULL AND merchant_id IS NOT NULL END) NOT VALID;
