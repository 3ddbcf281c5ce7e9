-- Core schema: tenants, credentials, the double-entry ledger, payments, refunds, events and
-- idempotency keys. Money columns are bigint minor units; currencies are ISO 4217 codes.

CREATE TABLE operators (
    id            uuid PRIMARY KEY,
    email         text NOT NULL UNIQUE,
    password_hash text NOT NULL,
    role          text NOT NULL CHECK (role IN ('admin', 'settlement', 'support')),
    created_at    timestamptz NOT NULL DEFAULT now()
);

CREATE TABLE merchants (
    id          uuid PRIMARY KEY,
    name        text NOT NULL,
    mcc         char(4) NOT NULL,
    country     char(2) NOT NULL,
    city        text NOT NULL,
    fee_bps     integer NOT NULL CHECK (fee_bps BETWEEN 0 AND 10000),
    status      text NOT NULL DEFAULT 'active' CHECK (status IN ('active', 'suspended')),
    created_at  timestamptz NOT NULL DEFAULT now()
);

CREATE TABLE stores (
    id          uuid PRIMARY KEY,
    merchant_id uuid NOT NULL REFERENCES merchants (id),
    name        text NOT NULL,
    city        text NOT NULL,
    created_at  timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX stores_merchant ON stores (merchant_id);

CREATE TABLE terminals (
    id          uuid PRIMARY KEY,
    merchant_id uuid NOT NULL REFERENCES merchants (id),
    store_id    uuid NOT NULL REFERENCES stores (id),
    label       text NOT NULL,
    status      text NOT NULL DEFAULT 'active' CHECK (status IN ('active', 'revoked')),
    created_at  timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX terminals_merchant ON terminals (merchant_id);

-- API keys are stored only as a keyed hash; the prefix is shown to people to tell keys apart.
CREATE TABLE api_keys (
    id          uuid PRIMARY KEY,
    merchant_id uuid NOT NULL REFERENCES merchants (id),
    kind        text NOT NULL CHECK (kind IN ('secret', 'publishable')),
    prefix      text NOT NULL,
    key_hash    bytea NOT NULL UNIQUE,
    created_at  timestamptz NOT NULL DEFAULT now(),
    revoked_at  timestamptz
);
CREATE INDEX api_keys_merchant ON api_keys (merchant_id);

CREATE TABLE wallet_holders (
    id            uuid PRIMARY KEY,
    phone         text NOT NULL UNIQUE,
    password_hash text NOT NULL,
    tier          smallint NOT NULL DEFAULT 1,
    created_at    timestamptz NOT NULL DEFAULT now()
);

CREATE TABLE bank_accounts (
    id              uuid PRIMARY KEY,
    holder_id       uuid NOT NULL REFERENCES wallet_holders (id),
    bank_name       text NOT NULL,
    number_masked   text NOT NULL,
    number_hash     bytea NOT NULL,
    created_at      timestamptz NOT NULL DEFAULT now(),
    UNIQUE (holder_id, number_hash)
);

-- Ledger. An account's balance is the sum of its shards; hot accounts (a merchant every payer
-- pays, the fee and clearing accounts) have several shards so concurrent payments do not queue
-- on one row. Accounts that may not go negative have exactly one shard, and the CHECK makes an
-- overdraft impossible whatever races: available = posted - held >= 0.
CREATE TABLE accounts (
    id           bigserial PRIMARY KEY,
    kind         text NOT NULL CHECK (kind IN ('wallet', 'merchant_receivable', 'fees', 'clearing')),
    owner_id     uuid,
    currency     char(3) NOT NULL,
    no_overdraft boolean NOT NULL,
    shard_count  smallint NOT NULL CHECK (shard_count BETWEEN 1 AND 64),
    created_at   timestamptz NOT NULL DEFAULT now(),
    CHECK (NOT no_overdraft OR shard_count = 1)
);
CREATE UNIQUE INDEX accounts_owner ON accounts (kind, COALESCE(owner_id, '00000000-0000-0000-0000-000000000000'), currency);

CREATE TABLE balances (
    account_id   bigint NOT NULL REFERENCES accounts (id),
    shard        smallint NOT NULL,
    posted_minor bigint NOT NULL DEFAULT 0,
    held_minor   bigint NOT NULL DEFAULT 0 CONSTRAINT balances_held_nonnegative CHECK (held_minor >= 0),
    no_overdraft boolean NOT NULL,
    PRIMARY KEY (account_id, shard),
    CONSTRAINT balances_no_overdraft CHECK (NOT no_overdraft OR posted_minor - held_minor >= 0)
) WITH (fillfactor = 70);

CREATE TABLE journal_entries (
    id          bigserial PRIMARY KEY,
    kind        text NOT NULL,
    payment_id  uuid,
    refund_id   uuid,
    transfer_id uuid,
    created_at  timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX journal_entries_payment ON journal_entries (payment_id) WHERE payment_id IS NOT NULL;

CREATE TABLE postings (
    id           bigserial PRIMARY KEY,
    entry_id     bigint NOT NULL REFERENCES journal_entries (id),
    account_id   bigint NOT NULL REFERENCES accounts (id),
    currency     char(3) NOT NULL,
    amount_minor bigint NOT NULL CHECK (amount_minor <> 0),
    created_at   timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX postings_entry ON postings (entry_id);
CREATE INDEX postings_account ON postings (account_id, id DESC);

CREATE TABLE payments (
    id                       uuid PRIMARY KEY,
    merchant_id              uuid NOT NULL REFERENCES merchants (id),
    store_id                 uuid REFERENCES stores (id),
    terminal_id              uuid REFERENCES terminals (id),
    amount_minor             bigint NOT NULL CHECK (amount_minor > 0),
    currency                 char(3) NOT NULL,
    status                   text NOT NULL,
    capture_method           text NOT NULL CHECK (capture_method IN ('automatic', 'manual')),
    merchant_reference       text,
    description              text,
    expires_at               timestamptz NOT NULL,
    payer_id                 uuid REFERENCES wallet_holders (id),
    wallet_account_id        bigint REFERENCES accounts (id),
    authorized_minor         bigint NOT NULL DEFAULT 0,
    captured_minor           bigint NOT NULL DEFAULT 0,
    refunded_minor           bigint NOT NULL DEFAULT 0,
    fee_minor                bigint NOT NULL DEFAULT 0,
    fee_bps                  integer NOT NULL,
    authorization_expires_at timestamptz,
    created_at               timestamptz NOT NULL DEFAULT now(),
    updated_at               timestamptz NOT NULL DEFAULT now(),
    CHECK (0 <= captured_minor AND captured_minor <= authorized_minor AND authorized_minor <= amount_minor),
    CHECK (0 <= refunded_minor AND refunded_minor <= captured_minor),
    CHECK (0 <= fee_minor AND fee_minor <= captured_minor)
);
CREATE INDEX payments_merchant ON payments (merchant_id, created_at DESC, id DESC);
CREATE INDEX payments_open_expiry ON payments (expires_at) WHERE status = 'requires_payment_method';
CREATE INDEX payments_auth_expiry ON payments (authorization_expires_at) WHERE status = 'requires_capture';

CREATE TABLE refunds (
    id           uuid PRIMARY KEY,
    payment_id   uuid NOT NULL REFERENCES payments (id),
    merchant_id  uuid NOT NULL REFERENCES merchants (id),
    amount_minor bigint NOT NULL CHECK (amount_minor > 0),
    fee_back_minor bigint NOT NULL CHECK (fee_back_minor >= 0),
    currency     char(3) NOT NULL,
    reason       text,
    status       text NOT NULL DEFAULT 'succeeded',
    created_at   timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX refunds_payment ON refunds (payment_id);

-- Wallet top-ups and withdrawals against a linked bank account.
CREATE TABLE transfers (
    id              uuid PRIMARY KEY,
    holder_id       uuid NOT NULL REFERENCES wallet_holders (id),
    bank_account_id uuid NOT NULL REFERENCES bank_accounts (id),
    kind            text NOT NULL CHECK (kind IN ('top_up', 'withdrawal')),
    amount_minor    bigint NOT NULL CHECK (amount_minor > 0),
    currency        char(3) NOT NULL,
    created_at      timestamptz NOT NULL DEFAULT now()
);

-- Every state change writes one event in the same transaction; webhooks and settlement read them.
CREATE TABLE events (
    seq          bigserial PRIMARY KEY,
    id           uuid NOT NULL UNIQUE,
    type         text NOT NULL,
    merchant_id  uuid,
    holder_id    uuid,
    object_id    uuid NOT NULL,
    data         jsonb NOT NULL,
    created_at   timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX events_merchant ON events (merchant_id, seq DESC) WHERE merchant_id IS NOT NULL;
CREATE INDEX events_object ON events (object_id, seq);

-- Idempotency keys (Brandur Leach's design): claimed atomically, completed in the same
-- transaction as the work they guard, replayed byte for byte, reaped after retention.
CREATE TABLE idempotency_keys (
    principal        text NOT NULL,
    key              text NOT NULL,
    request_hash     bytea NOT NULL,
    method           text NOT NULL,
    path             text NOT NULL,
    locked_at        timestamptz,
    response_status  integer,
    response_body    bytea,
    created_at       timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (principal, key),
    CHECK ((locked_at IS NULL) = (response_status IS NOT NULL))
);
CREATE INDEX idempotency_keys_created ON idempotency_keys (created_at);
