-- Cross-currency payments (issue 13, "Currencies and cross-border"): a payment in a currency the wallet
-- lacks is paid through a conversion made in the payment's transaction, and refunds convert back at the
-- rate of that conversion (docs/cross_currency.md, gateway/domain/fx_payments.py).
--
-- A payment's conversion is an ordinary conversion (one 'conversion' entry, gateway/store/migrations/
-- 0018_fx.sql) whose row names the payment; the payment then holds or captures from the holder's wallet
-- in the payment's currency as any payment does. A conversion return is ONE journal entry (kind
-- 'conversion_return', conversion_id = the conversion it gives back, refund_id = the refund if any):
--   wallet(T) -target, fx_fees(T) -fee_back, fx_position(T) +(target + fee_back);
--   fx_position(S) -source, wallet(S) +source
-- with the conversion's returned_* totals growing in the same transaction; each total is the
-- conversion's amount times (returned_minor / receive_minor), rounded down (the invariant checker
-- proves it), so returns never give back more than was sold.

-- The quote a payment's preview offered the payer (reused while it is valid); NULL for other quotes.
ALTER TABLE fx_quotes ADD COLUMN payment_id uuid REFERENCES payments (id);
CREATE INDEX fx_quotes_open_for_payment ON fx_quotes (payment_id, holder_id, expires_at DESC)
    WHERE payment_id IS NOT NULL AND used_at IS NULL;

ALTER TABLE conversions
    ADD COLUMN payment_id            uuid UNIQUE REFERENCES payments (id),
    ADD COLUMN returned_minor        bigint NOT NULL DEFAULT 0,  -- of to_currency, given back so far
    ADD COLUMN returned_source_minor bigint NOT NULL DEFAULT 0,  -- of from_currency, given back so far
    ADD COLUMN returned_fee_minor    bigint NOT NULL DEFAULT 0,  -- of to_currency, the fee given back so far
    ADD CONSTRAINT conversions_returned_within CHECK (
        returned_minor BETWEEN 0 AND receive_minor AND returned_source_minor BETWEEN 0 AND sell_minor
        AND returned_fee_minor BETWEEN 0 AND fee_minor AND (returned_minor = 0 OR payment_id IS NOT NULL));
