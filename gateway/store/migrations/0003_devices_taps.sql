-- POS devices (agents) enrolled per terminal, and wallet phones provisioned for NFC taps.

CREATE TABLE enrolment_codes (
    code_hash   bytea PRIMARY KEY,
    terminal_id uuid NOT NULL REFERENCES terminals (id),
    merchant_id uuid NOT NULL REFERENCES merchants (id),
    expires_at  timestamptz NOT NULL,
    used_at     timestamptz,
    created_at  timestamptz NOT NULL DEFAULT now()
);

CREATE TABLE devices (
    id          uuid PRIMARY KEY,
    merchant_id uuid NOT NULL REFERENCES merchants (id),
    store_id    uuid NOT NULL REFERENCES stores (id),
    terminal_id uuid NOT NULL REFERENCES terminals (id),
    name        text NOT NULL,
    secret_hash bytea NOT NULL,
    status      text NOT NULL DEFAULT 'active' CHECK (status IN ('active', 'revoked')),
    created_at  timestamptz NOT NULL DEFAULT now(),
    revoked_at  timestamptz
);
CREATE INDEX devices_terminal ON devices (terminal_id);

-- A payment token for one wallet phone: never a card number. Only a keyed hash of the token PAN
-- is stored (and its last digits); the ICC master key is derived from the issuer master key
-- whenever it is needed and never stored.
CREATE TABLE tap_tokens (
    id          uuid PRIMARY KEY,
    holder_id   uuid NOT NULL REFERENCES wallet_holders (id),
    phone_device text NOT NULL,
    pan_hash    bytea NOT NULL UNIQUE,
    pan_last4   text NOT NULL,
    psn         smallint NOT NULL CHECK (psn BETWEEN 0 AND 99),
    expiry_yymm char(4) NOT NULL,
    last_atc    integer NOT NULL DEFAULT 0 CHECK (last_atc BETWEEN 0 AND 65535),
    status      text NOT NULL DEFAULT 'active' CHECK (status IN ('active', 'revoked')),
    created_at  timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX tap_tokens_holder ON tap_tokens (holder_id);

-- Every counter value a token has used, with the tap that used it: a retry of the same tap is
-- recognised, any other use of an old counter is a replay. Written in its own transaction, so a
-- declined tap still burns its counter.
CREATE TABLE tap_uses (
    token_id                uuid NOT NULL REFERENCES tap_tokens (id),
    atc                     integer NOT NULL,
    device_id               uuid NOT NULL REFERENCES devices (id),
    terminal_transaction_id text NOT NULL,
    created_at              timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (token_id, atc)
);

ALTER TABLE payments ADD COLUMN terminal_transaction_id text;
CREATE UNIQUE INDEX payments_terminal_txn ON payments (terminal_id, terminal_transaction_id)
    WHERE terminal_transaction_id IS NOT NULL;
CREATE INDEX payments_reference ON payments (merchant_id, merchant_reference) WHERE merchant_reference IS NOT NULL;
