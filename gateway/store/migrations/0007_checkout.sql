-- Hosted checkout: where the payer's browser goes back to. The client secret of the checkout URL
-- is derived from the payment id by HMAC under a server key: it is never stored.
ALTER TABLE payments
    ADD COLUMN return_url text CHECK (length(return_url) <= 2048),
    ADD COLUMN cancel_url text CHECK (length(cancel_url) <= 2048),
    ADD CONSTRAINT payments_cancel_needs_return CHECK (cancel_url IS NULL OR return_url IS NOT NULL);
