-- The operator console searches payments across merchants: by merchant reference alone, by the
-- payer (a wallet phone is unique, so its holder id), and by a day (with or without an amount).
-- Every console query is bounded by a LIMIT; these indexes keep each one off a full scan.
CREATE INDEX payments_reference_any ON payments (merchant_reference) WHERE merchant_reference IS NOT NULL;
CREATE INDEX payments_payer ON payments (payer_id, created_at DESC) WHERE payer_id IS NOT NULL;
CREATE INDEX payments_created ON payments (created_at DESC, amount_minor);
CREATE INDEX payouts_created ON payouts (created_at DESC);
CREATE INDEX settlement_batches_day ON settlement_batches (business_date DESC, id DESC);
CREATE INDEX recon_exceptions_detected ON recon_exceptions (detected_at);
CREATE INDEX bank_entries_booking ON bank_entries (booking_date);
CREATE INDEX recon_audit_created ON recon_audit (created_at DESC, id DESC);
