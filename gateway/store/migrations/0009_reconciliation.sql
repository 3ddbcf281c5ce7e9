-- Reconciliation of the bank's statements of the gateway's own accounts against what the ledger
-- expects from the bank (wallet top-ups in, withdrawals out; payouts once settlement lands).
--
-- Invariants (proven by store/sql/invariants.sql):
-- - in an active match, the bank side equals the expected side plus what was written off
--   (signed from the bank account's view: CRDT positive, DBIT negative);
-- - a matched item's amount is the amount of the bank entry / expected movement it names;
-- - the write-off account's balance is the sum of the write-off items of active matches;
-- - a transfer is marked reconciled exactly when it is in an active match.

-- Money the bank shows that the ledger cannot explain (or the reverse), once an operator writes it off.
ALTER TABLE accounts DROP CONSTRAINT accounts_kind_check;
ALTER TABLE accounts ADD CONSTRAINT accounts_kind_check
    CHECK (kind IN ('wallet', 'merchant_receivable', 'fees', 'clearing', 'merchant_payable', 'revenue', 'write_off'));

ALTER TABLE transfers ADD COLUMN reconciled_at timestamptz;
CREATE INDEX transfers_unreconciled ON transfers (currency, created_at) WHERE reconciled_at IS NULL;

CREATE TABLE bank_statements (
    id            uuid PRIMARY KEY,
    statement_ref text NOT NULL UNIQUE,       -- Stmt/Id (camt) or statement_id (CSV)
    format        text NOT NULL CHECK (format IN ('camt053', 'csv')),
    account       text NOT NULL,              -- IBAN or other id of the gateway's account
    currency      char(3) NOT NULL,
    opening_minor bigint,
    closing_minor bigint,
    date_from     date NOT NULL,
    date_to       date NOT NULL,
    entry_count   integer NOT NULL,
    imported_by   uuid,
    created_at    timestamptz NOT NULL DEFAULT now()
);

CREATE TABLE bank_entries (
    id            uuid PRIMARY KEY DEFAULT gen_random_uuid(),
    statement_id  uuid NOT NULL REFERENCES bank_statements (id),
    statement_ref text NOT NULL,
    entry_ref     text NOT NULL,
    direction     text NOT NULL CHECK (direction IN ('CRDT', 'DBIT')),
    amount_minor  bigint NOT NULL CHECK (amount_minor > 0),
    currency      char(3) NOT NULL,
    booking_date  date NOT NULL,
    value_date    date,
    refs          text[] NOT NULL,            -- EndToEndIds, or our references found in the remittance text
    ref_amounts   bigint[],                   -- per ref when the bank itemised a batch (TxDtls amounts)
    remittance    text NOT NULL DEFAULT '',
    matched       boolean NOT NULL DEFAULT false,
    created_at    timestamptz NOT NULL DEFAULT now(),
    UNIQUE (statement_ref, entry_ref)
);
CREATE INDEX bank_entries_unmatched ON bank_entries (currency, booking_date) WHERE NOT matched;

-- A match ties bank entries to expected movements (and, for a write-off, to the written-off rest).
CREATE TABLE recon_matches (
    id          uuid PRIMARY KEY,
    rule        text NOT NULL CHECK (rule IN ('reference', 'batch', 'split', 'manual', 'write_off')),
    active      boolean NOT NULL DEFAULT true,
    currency    char(3) NOT NULL,
    created_by  uuid,                         -- the operator; NULL for the automatic matcher
    created_at  timestamptz NOT NULL DEFAULT now(),
    reopened_at timestamptz
);

CREATE TABLE recon_match_items (
    id            bigserial PRIMARY KEY,
    match_id      uuid NOT NULL REFERENCES recon_matches (id),
    active        boolean NOT NULL DEFAULT true,
    side          text NOT NULL CHECK (side IN ('bank', 'expected', 'write_off')),
    bank_entry_id uuid REFERENCES bank_entries (id),
    expected_kind text,                       -- 'top_up' | 'withdrawal' (| 'payout')
    expected_id   uuid,
    amount_minor  bigint NOT NULL,            -- signed, from the bank account's view
    CHECK ((side = 'bank') = (bank_entry_id IS NOT NULL)),
    CHECK ((side = 'expected') = (expected_id IS NOT NULL AND expected_kind IS NOT NULL))
);
CREATE INDEX recon_match_items_match ON recon_match_items (match_id);
-- Nothing is matched twice: one active match per bank entry and per expected movement.
CREATE UNIQUE INDEX recon_match_items_bank_once ON recon_match_items (bank_entry_id) WHERE active AND side = 'bank';
CREATE UNIQUE INDEX recon_match_items_expected_once ON recon_match_items (expected_kind, expected_id)
    WHERE active AND side = 'expected';

CREATE TABLE recon_exceptions (
    id              uuid PRIMARY KEY DEFAULT gen_random_uuid(),
    kind            text NOT NULL CHECK (kind IN ('missing_at_bank', 'amount_mismatch', 'unknown_entry', 'duplicate_entry')),
    status          text NOT NULL DEFAULT 'open' CHECK (status IN ('open', 'resolved', 'cleared')),
    currency        char(3) NOT NULL,
    bank_entry_id   uuid REFERENCES bank_entries (id),
    expected_kind   text,
    expected_id     uuid,
    reference       text,
    bank_amount_minor     bigint,             -- signed
    expected_amount_minor bigint,             -- signed
    match_id        uuid REFERENCES recon_matches (id),   -- the resolution's match
    detected_at     timestamptz NOT NULL DEFAULT now(),
    resolved_at     timestamptz,
    seq             bigserial NOT NULL UNIQUE
);
-- A re-run finds an open exception again rather than opening a second one.
CREATE UNIQUE INDEX recon_exceptions_open ON recon_exceptions
    (kind, COALESCE(bank_entry_id, '00000000-0000-0000-0000-000000000000'),
     COALESCE(expected_id, '00000000-0000-0000-0000-000000000000')) WHERE status = 'open';
CREATE INDEX recon_exceptions_list ON recon_exceptions (status, seq DESC);

-- Every operator action on reconciliation, append-only: who, when, what.
CREATE TABLE recon_audit (
    id           bigserial PRIMARY KEY,
    operator_id  uuid,
    action       text NOT NULL,               -- import | match | write_off | reopen
    exception_id uuid,
    match_id     uuid,
    statement_id uuid,
    reason       text,
    details      jsonb NOT NULL DEFAULT '{}',
    created_at   timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX recon_audit_exception ON recon_audit (exception_id) WHERE exception_id IS NOT NULL;
