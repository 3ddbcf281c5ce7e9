-- Daily settlement: business days per merchant (time zone + cutoff), batches, payouts, the
-- merchants' payout bank accounts, and two new ledger accounts.
--
-- Ledger design (see gateway/domain/ledger.py): a capture credits merchant_receivable with the net and
-- `fees` with the fee, as before; `fees` is the gateway's fee income NOT YET EARNED (a refund gives part
-- of it back). Closing a batch moves the batch's net from merchant_receivable to merchant_payable (what
-- is owed to the merchant's bank account now) and its fees from `fees` to `revenue` (earned). Paying a
-- payout moves it from merchant_payable to clearing (the bank).

ALTER TABLE merchants
    ADD COLUMN timezone text NOT NULL DEFAULT 'UTC' CHECK (length(timezone) BETWEEN 1 AND 64),
    ADD COLUMN settlement_cutoff time NOT NULL DEFAULT '00:00',
    ADD COLUMN fee_fixed_minor bigint NOT NULL DEFAULT 0 CHECK (fee_fixed_minor BETWEEN 0 AND 100000000);

-- The fixed part of the fee is copied onto the payment when it is created, like fee_bps.
ALTER TABLE payments ADD COLUMN fee_fixed_minor bigint NOT NULL DEFAULT 0 CHECK (fee_fixed_minor >= 0);

ALTER TABLE accounts DROP CONSTRAINT accounts_kind_check;
ALTER TABLE accounts ADD CONSTRAINT accounts_kind_check
    CHECK (kind IN ('wallet', 'merchant_receivable', 'fees', 'clearing', 'merchant_payable', 'revenue'));

-- batch_id on a capture or refund entry: the batch that settled it (set once, by the close, under the
-- merchant's settlement lock); on a 'settlement' entry: the batch it closes. payout_id: a payout's entry.
ALTER TABLE journal_entries ADD COLUMN batch_id uuid, ADD COLUMN payout_id uuid;
CREATE INDEX journal_entries_unbatched ON journal_entries (created_at)
    WHERE batch_id IS NULL AND kind IN ('capture', 'refund');
CREATE INDEX journal_entries_batch ON journal_entries (batch_id) WHERE batch_id IS NOT NULL;

-- The merchant's payout account: the full number sealed (AES-GCM, the row id as associated data) because
-- the payout file needs it; masked and keyed-hashed for display and lookup. One current account each.
CREATE TABLE merchant_bank_accounts (
    id            uuid PRIMARY KEY,
    merchant_id   uuid NOT NULL REFERENCES merchants (id),
    holder_name   text NOT NULL CHECK (length(holder_name) BETWEEN 1 AND 70),
    bank_name     text NOT NULL CHECK (length(bank_name) BETWEEN 1 AND 100),
    bic           text CHECK (bic ~ '^[A-Z0-9]{8}([A-Z0-9]{3})?$'),
    number_masked text NOT NULL,
    number_hash   bytea NOT NULL,
    number_sealed bytea NOT NULL,
    created_at    timestamptz NOT NULL DEFAULT now(),
    replaced_at   timestamptz
);
CREATE UNIQUE INDEX merchant_bank_accounts_current ON merchant_bank_accounts (merchant_id) WHERE replaced_at IS NULL;

-- One run per (business date, merchant or all merchants): asking again resumes the same run.
CREATE TABLE settlement_runs (
    id            uuid PRIMARY KEY,
    business_date date NOT NULL,
    merchant_id   uuid REFERENCES merchants (id),
    created_at    timestamptz NOT NULL DEFAULT now()
);
CREATE UNIQUE INDEX settlement_runs_scope
    ON settlement_runs (business_date, COALESCE(merchant_id, '00000000-0000-0000-0000-000000000000'));

-- A batch is written when its business day closes (status 'closed'); the 'open' batch of a day is the
-- set of its merchant's unbatched entries. Net = captured - refunded - fee + carry_in; a positive net is
-- paid out, a negative one is carried to the next batch (and stays in merchant_receivable).
CREATE TABLE settlement_batches (
    id              uuid PRIMARY KEY,
    run_id          uuid NOT NULL REFERENCES settlement_runs (id),
    merchant_id     uuid NOT NULL REFERENCES merchants (id),
    currency        char(3) NOT NULL,
    business_date   date NOT NULL,
    window_start    timestamptz NOT NULL,
    window_end      timestamptz NOT NULL,
    timezone        text NOT NULL,
    cutoff          time NOT NULL,
    status          text NOT NULL CHECK (status IN ('open', 'closed', 'paid', 'reconciled')),
    capture_count   integer NOT NULL CHECK (capture_count >= 0),
    refund_count    integer NOT NULL CHECK (refund_count >= 0),
    captured_minor  bigint NOT NULL CHECK (captured_minor >= 0),
    refunded_minor  bigint NOT NULL CHECK (refunded_minor >= 0),
    fee_minor       bigint NOT NULL,
    carry_in_minor  bigint NOT NULL CHECK (carry_in_minor <= 0),
    net_minor       bigint NOT NULL,
    payout_minor    bigint NOT NULL CHECK (payout_minor >= 0),
    carry_out_minor bigint NOT NULL CHECK (carry_out_minor <= 0),
    closed_at       timestamptz NOT NULL DEFAULT now(),
    paid_at         timestamptz,
    reconciled_at   timestamptz,
    UNIQUE (merchant_id, currency, business_date),
    CHECK (window_start <= window_end),
    CONSTRAINT settlement_batches_arithmetic CHECK (
        net_minor = captured_minor - refunded_minor - fee_minor + carry_in_minor
        AND payout_minor = GREATEST(net_minor, 0) AND carry_out_minor = LEAST(net_minor, 0))
);
CREATE INDEX settlement_batches_merchant ON settlement_batches (merchant_id, business_date DESC, id DESC);
CREATE INDEX settlement_batches_run ON settlement_batches (run_id);

-- Shared with reconciliation: it matches bank statement debits to payouts by reference and amount.
CREATE TABLE payouts (
    id              uuid PRIMARY KEY,
    batch_id        uuid NOT NULL REFERENCES settlement_batches (id),
    merchant_id     uuid NOT NULL REFERENCES merchants (id),
    amount_minor    bigint NOT NULL CHECK (amount_minor > 0),
    currency        char(3) NOT NULL,
    reference       text NOT NULL UNIQUE CHECK (reference ~ '^[A-Za-z0-9]{1,35}$'),
    status          text NOT NULL CHECK (status IN ('pending', 'paid', 'reconciled', 'failed')),
    execution_date  date NOT NULL,
    bank_account_id uuid REFERENCES merchant_bank_accounts (id),
    created_at      timestamptz NOT NULL DEFAULT now(),
    paid_at         timestamptz,
    reconciled_at   timestamptz
);
CREATE UNIQUE INDEX payouts_batch ON payouts (batch_id);
CREATE INDEX payouts_merchant ON payouts (merchant_id, created_at DESC, id DESC);

-- What settlement counts, one row per capture or refund entry: its merchant, currency, gross amount
-- (positive), fee (the capture's, or the part a refund gave back) and net (signed: a refund is negative).
-- The close, the reports and the invariant checker all read this one definition.
CREATE VIEW settlement_lines AS
SELECT e.id AS entry_id, e.batch_id, e.created_at, e.kind, e.payment_id, e.refund_id, pay.merchant_id, pay.currency,
       pay.merchant_reference, x.amount_minor, x.fee_minor,
       CASE WHEN e.kind = 'capture' THEN x.amount_minor - x.fee_minor ELSE x.fee_minor - x.amount_minor END AS net_minor
  FROM journal_entries e
  JOIN payments pay ON pay.id = e.payment_id
  LEFT JOIN refunds r ON r.id = e.refund_id
  CROSS JOIN LATERAL (SELECT CASE WHEN e.kind = 'capture' THEN pay.captured_minor ELSE r.amount_minor END AS amount_minor,
                             CASE WHEN e.kind = 'capture' THEN pay.fee_minor ELSE r.fee_back_minor END AS fee_minor) x
 WHERE e.kind IN ('capture', 'refund');
