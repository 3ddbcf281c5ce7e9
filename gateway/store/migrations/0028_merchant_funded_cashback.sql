-- Promotions, third part (issue 13): cashback funded by the merchant, as an acquirer's merchant offer.
-- A merchant-funded cashback is paid by the merchant's receivable into the payer's wallet inside the
-- capture's own journal entry (two more postings: merchant_receivable -cashback, wallet +cashback), so
-- the merchant nets captured - fee - cashback from that capture; a refund's proportional claw-back
-- goes back to the merchant inside the refund's entry (merchant_receivable +clawback, the wallet
-- receiving the refund less it: a holder who spent the cashback is never overdrawn). Settlement counts
-- both in the merchant's net (settlement_lines.cashback_minor, settlement_batches.cashback_minor).
-- A bank-funded cashback is unchanged (its own 'cashback' entry from the promotions account). Gifts
-- stay bank-funded: a registration gift has no merchant, and neither kind is ever taken back.
ALTER TABLE campaigns DROP CONSTRAINT campaigns_credit_funded_by_bank;
ALTER TABLE campaigns ADD CONSTRAINT campaigns_gift_funded_by_bank
    CHECK (rule NOT IN ('gift_registration', 'gift_first_payment') OR funded_by = 'bank');

-- Who paid a payment's cashback, copied from its campaign when the capture takes it (as
-- discount_funded_by is). Every cashback before this migration was the bank's.
ALTER TABLE payments ADD COLUMN cashback_funded_by text CHECK (cashback_funded_by IN ('merchant', 'bank'));
UPDATE payments SET cashback_funded_by = 'bank' WHERE cashback_campaign_id IS NOT NULL;
ALTER TABLE payments ADD CONSTRAINT payments_cashback_funded_by
    CHECK ((cashback_campaign_id IS NULL) = (cashback_funded_by IS NULL));

-- A batch's cashback: what its captures paid holders for the merchant, less what its refunds took back
-- for it (negative when the day's refunds took back more than its captures paid).
ALTER TABLE settlement_batches ADD COLUMN cashback_minor bigint NOT NULL DEFAULT 0;
ALTER TABLE settlement_batches DROP CONSTRAINT settlement_batches_arithmetic;
ALTER TABLE settlement_batches ADD CONSTRAINT settlement_batches_arithmetic CHECK (
    net_minor = captured_minor - refunded_minor - fee_minor - cashback_minor + carry_in_minor
    AND payout_minor = GREATEST(net_minor, 0) AND carry_out_minor = LEAST(net_minor, 0));

-- The one definition of what settlement counts, now with the merchant's cashback (positive: what a
-- capture paid the holder for the merchant, or what a refund took back for it); net is signed as before
-- and equals the sum of the entry's merchant_receivable postings (invariant
-- settlement_line_differs_from_its_merchant_postings).
CREATE OR REPLACE VIEW settlement_lines AS
SELECT e.id AS entry_id, e.batch_id, e.created_at, e.kind, e.payment_id, e.refund_id, pay.merchant_id, pay.currency,
       pay.merchant_reference, x.amount_minor, x.fee_minor,
       CASE WHEN e.kind = 'capture' THEN x.amount_minor - x.fee_minor - x.cashback_minor
            ELSE x.fee_minor + x.cashback_minor - x.amount_minor END AS net_minor,
       x.cashback_minor
  FROM journal_entries e
  JOIN payments pay ON pay.id = e.payment_id
  LEFT JOIN refunds r ON r.id = e.refund_id
  CROSS JOIN LATERAL (SELECT CASE WHEN e.kind = 'capture' THEN pay.captured_minor ELSE r.amount_minor END AS amount_minor,
                             CASE WHEN e.kind = 'capture' THEN pay.fee_minor ELSE r.fee_back_minor END AS fee_minor,
                             CASE WHEN pay.cashback_funded_by IS DISTINCT FROM 'merchant' THEN 0
                                  WHEN e.kind = 'capture' THEN pay.cashback_minor
                                  ELSE r.cashback_clawed_back_minor END AS cashback_minor) x
 WHERE e.kind IN ('capture', 'refund');
