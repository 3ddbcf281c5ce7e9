-- Currencies and cross-border: the operators' rate table, holders' quotes and conversions, and two
-- gateway accounts per currency (gateway/domain/ledger.py): fx_position (what conversions bought and
-- sold in that currency; may go negative) and fx_fees (conversion fees, earned at once).
--
-- A conversion is ONE journal entry (kind 'conversion', conversion_id set):
--   wallet(A) -sell, fx_position(A) +sell; fx_position(B) -(receive + fee), wallet(B) +receive, fx_fees(B) +fee
-- so each currency's postings balance on their own. A quote is honoured once: conversions.quote_id
-- is UNIQUE and the quote's used_at/conversion_id are set in the conversion's transaction.

-- Add the two kinds to whatever the accounts.kind CHECK allows now (other migrations add kinds too).
DO $$
DECLARE
    kinds text[];
BEGIN
    SELECT array_agg(DISTINCT k ORDER BY k) INTO kinds
      FROM (SELECT (regexp_matches(pg_get_constraintdef(c.oid), '''([a-z_]+)''', 'g'))[1] AS k
              FROM pg_constraint c WHERE c.conname = 'accounts_kind_check' AND c.conrelid = 'accounts'::regclass) found;
    kinds := ARRAY(SELECT DISTINCT unnest(kinds || ARRAY['fx_position', 'fx_fees']) ORDER BY 1);
    ALTER TABLE accounts DROP CONSTRAINT accounts_kind_check;
    EXECUTE format('ALTER TABLE accounts ADD CONSTRAINT accounts_kind_check CHECK (kind = ANY (%L::text[]))', kinds);
END
$$;

ALTER TABLE journal_entries ADD COLUMN conversion_id uuid;
CREATE INDEX journal_entries_conversion ON journal_entries (conversion_id) WHERE conversion_id IS NOT NULL;

-- base/quote: 1 base = rate quote. The rate used for a pair at an instant is the row of either direction
-- valid then (valid_from <= t < valid_until, open-ended when NULL) with the latest valid_from.
CREATE TABLE fx_rates (
    id          uuid PRIMARY KEY,
    base        char(3) NOT NULL,
    quote       char(3) NOT NULL CHECK (quote <> base),
    rate        numeric NOT NULL CHECK (rate > 0),
    spread_bps  integer NOT NULL CHECK (spread_bps BETWEEN 0 AND 1000),
    valid_from  timestamptz NOT NULL,
    valid_until timestamptz CHECK (valid_until > valid_from),
    source      text NOT NULL CHECK (source IN ('api', 'csv')),
    created_by  uuid,
    created_at  timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX fx_rates_pair ON fx_rates (base, quote, valid_from DESC);
CREATE INDEX fx_rates_created ON fx_rates (created_at DESC, id DESC);

-- A quote keeps everything its conversion needs, so a later rate change never alters it; customer_rate is
-- the holder's rate (spread taken) the amounts were computed from, exactly (see gateway/domain/fx.py).
CREATE TABLE fx_quotes (
    id             uuid PRIMARY KEY,
    holder_id      uuid NOT NULL REFERENCES wallet_holders (id),
    rate_id        uuid NOT NULL REFERENCES fx_rates (id),
    from_currency  char(3) NOT NULL,
    to_currency    char(3) NOT NULL CHECK (to_currency <> from_currency),
    from_exponent  smallint NOT NULL CHECK (from_exponent BETWEEN 0 AND 4),
    to_exponent    smallint NOT NULL CHECK (to_exponent BETWEEN 0 AND 4),
    mid_rate       numeric NOT NULL CHECK (mid_rate > 0),
    spread_bps     integer NOT NULL CHECK (spread_bps BETWEEN 0 AND 1000),
    customer_rate  numeric NOT NULL CHECK (customer_rate > 0),
    fee_bps        integer NOT NULL CHECK (fee_bps BETWEEN 0 AND 1000),
    sell_minor     bigint NOT NULL CHECK (sell_minor > 0),
    receive_minor  bigint NOT NULL CHECK (receive_minor > 0),
    fee_minor      bigint NOT NULL CHECK (fee_minor >= 0),
    expires_at     timestamptz NOT NULL,
    created_at     timestamptz NOT NULL DEFAULT now(),
    used_at        timestamptz,
    conversion_id  uuid UNIQUE,
    CHECK ((used_at IS NULL) = (conversion_id IS NULL))
);
CREATE INDEX fx_quotes_holder ON fx_quotes (holder_id, created_at DESC);

CREATE TABLE conversions (
    id            uuid PRIMARY KEY,
    holder_id     uuid NOT NULL REFERENCES wallet_holders (id),
    quote_id      uuid NOT NULL UNIQUE REFERENCES fx_quotes (id),
    from_currency char(3) NOT NULL,
    to_currency   char(3) NOT NULL,
    sell_minor    bigint NOT NULL CHECK (sell_minor > 0),
    receive_minor bigint NOT NULL CHECK (receive_minor > 0),
    fee_minor     bigint NOT NULL CHECK (fee_minor >= 0),
    created_at    timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX conversions_holder ON conversions (holder_id, created_at DESC, id DESC);
