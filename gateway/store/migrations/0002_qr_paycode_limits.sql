-- Scan-to-pay, pay-codes, verification tiers and the payment PIN.

-- The merchant's name and city in its own language, for the QR alternate-language template (64).
ALTER TABLE merchants
    ADD COLUMN name_local text,
    ADD COLUMN city_local text,
    ADD COLUMN language_local char(2);

ALTER TABLE wallet_holders
    ALTER COLUMN tier SET DEFAULT 4,
    ADD COLUMN pin_hash text,
    ADD COLUMN pin_failures integer NOT NULL DEFAULT 0 CHECK (pin_failures >= 0),
    ADD COLUMN payments_locked_at timestamptz;

-- How a payment was paid, and until when a payment waiting for the payer's PIN may be confirmed.
ALTER TABLE payments
    ADD COLUMN channel text,
    ADD COLUMN confirm_by timestamptz;
CREATE INDEX payments_confirm_expiry ON payments (confirm_by) WHERE status = 'requires_action';

-- What each holder paid per currency and local day: the daily cap is checked against this row,
-- which also serialises a holder's concurrent payments of the day.
CREATE TABLE daily_spend (
    holder_id   uuid NOT NULL REFERENCES wallet_holders (id),
    currency    char(3) NOT NULL,
    day         date NOT NULL,
    spent_minor bigint NOT NULL CHECK (spent_minor >= 0),
    PRIMARY KEY (holder_id, currency, day)
);

-- QR codes: dynamic ones belong to one payment and are used once; static ones belong to a store.
CREATE TABLE qr_codes (
    token       text PRIMARY KEY,
    kind        text NOT NULL CHECK (kind IN ('dynamic', 'static')),
    merchant_id uuid NOT NULL REFERENCES merchants (id),
    store_id    uuid REFERENCES stores (id),
    payment_id  uuid REFERENCES payments (id),
    payload     text NOT NULL,
    expires_at  timestamptz,
    used_at     timestamptz,
    created_at  timestamptz NOT NULL DEFAULT now(),
    CHECK ((kind = 'dynamic') = (payment_id IS NOT NULL AND expires_at IS NOT NULL))
);
CREATE INDEX qr_codes_payment ON qr_codes (payment_id) WHERE payment_id IS NOT NULL;
CREATE UNIQUE INDEX qr_codes_static_store ON qr_codes (store_id) WHERE kind = 'static';

-- Pay-codes are bearer credentials for a minute: only a keyed hash of the digits is stored.
CREATE TABLE pay_codes (
    code_hash   bytea PRIMARY KEY,
    holder_id   uuid NOT NULL REFERENCES wallet_holders (id),
    device_id   text NOT NULL,
    code_masked text NOT NULL,
    expires_at  timestamptz NOT NULL,
    used_at     timestamptz,
    payment_id  uuid REFERENCES payments (id),
    created_at  timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX pay_codes_holder ON pay_codes (holder_id, created_at DESC);
