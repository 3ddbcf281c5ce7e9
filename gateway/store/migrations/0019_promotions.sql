-- Promotions (issue 13): campaigns that discount wallet payments, funded by the merchant or by the
-- bank's promotions account (one per currency, in the ledger). The guarded UPDATE of a campaign row in
-- the payment's transaction takes a place and the budget at once; the CHECKs below are the last line.
-- Add 'promotions' to whatever the accounts.kind CHECK allows now (other migrations add kinds too,
-- in any order: 0018 does the same for its FX kinds).
DO $$
DECLARE
    kinds text[];
BEGIN
    -- Each quoted text of the definition: a kind ('wallet'::text) or an array literal of kinds
    -- ('{clearing,fees}'::text[], the form 0018 leaves).
    SELECT array_agg(DISTINCT k ORDER BY k) INTO kinds
      FROM (SELECT regexp_split_to_table(btrim(m[1], '{}'), ',') AS k
              FROM pg_constraint c, regexp_matches(pg_get_constraintdef(c.oid), '''([^'']+)''', 'g') AS m
             WHERE c.conname = 'accounts_kind_check' AND c.conrelid = 'accounts'::regclass) found
     WHERE k ~ '^[a-z_]+$';
    kinds := ARRAY(SELECT DISTINCT unnest(kinds || ARRAY['promotions']) ORDER BY 1);
    ALTER TABLE accounts DROP CONSTRAINT accounts_kind_check;
    EXECUTE format('ALTER TABLE accounts ADD CONSTRAINT accounts_kind_check CHECK (kind = ANY (%L::text[]))', kinds);
END
$$;

CREATE TABLE campaigns (
    id               uuid PRIMARY KEY,
    name             text NOT NULL,
    currency         char(3) NOT NULL,
    rule             text NOT NULL CHECK (rule IN ('percent', 'fixed')),
    percent_bps      integer NOT NULL DEFAULT 0 CHECK (percent_bps BETWEEN 0 AND 10000),
    fixed_minor      bigint NOT NULL DEFAULT 0 CHECK (fixed_minor >= 0),
    cap_minor        bigint CHECK (cap_minor > 0),
    funded_by        text NOT NULL CHECK (funded_by IN ('merchant', 'bank')),
    time_zone        text NOT NULL,
    starts_at        timestamptz NOT NULL,
    ends_at          timestamptz NOT NULL,
    merchant_ids     uuid[] NOT NULL DEFAULT '{}',
    store_ids        uuid[] NOT NULL DEFAULT '{}',
    mccs             text[] NOT NULL DEFAULT '{}',
    min_amount_minor bigint NOT NULL DEFAULT 0 CHECK (min_amount_minor >= 0),
    per_holder_max   integer CHECK (per_holder_max > 0),
    budget_minor     bigint NOT NULL CHECK (budget_minor > 0),
    spent_minor      bigint NOT NULL DEFAULT 0,  -- benefits granted (a clawback does not give budget back)
    clawed_back_minor bigint NOT NULL DEFAULT 0,
    places_max       integer CHECK (places_max > 0),
    places_taken     integer NOT NULL DEFAULT 0,
    last_granted_minor bigint NOT NULL DEFAULT 0,  -- the benefit of the latest take (what its RETURNING reads)
    ended_at         timestamptz,
    created_at       timestamptz NOT NULL DEFAULT now(),
    updated_at       timestamptz NOT NULL DEFAULT now(),
    CHECK (ends_at > starts_at),
    CHECK (0 <= spent_minor AND spent_minor <= budget_minor),
    CHECK (0 <= clawed_back_minor AND clawed_back_minor <= spent_minor),
    CHECK (places_taken >= 0 AND (places_max IS NULL OR places_taken <= places_max))
);
CREATE INDEX campaigns_created ON campaigns (created_at DESC, id DESC);
-- What the per-process cache loads: the campaigns not ended and not past their end.
CREATE INDEX campaigns_live ON campaigns (ends_at) WHERE ended_at IS NULL;

-- Discounted payments per holder and campaign (the per-holder limit), taken in the payment's transaction.
CREATE TABLE campaign_uses (
    campaign_id uuid NOT NULL REFERENCES campaigns (id),
    holder_id   uuid NOT NULL REFERENCES wallet_holders (id),
    uses        integer NOT NULL CHECK (uses >= 0),
    PRIMARY KEY (campaign_id, holder_id)
);

-- The benefit a payment got, recorded on it. A merchant-funded discount lowers what is captured
-- (captured_minor = amount - discount); a bank-funded one keeps captured_minor = amount and the
-- promotions account pays discount_minor of it. A refund of a bank-funded payment claws back its share.
ALTER TABLE payments
    ADD COLUMN campaign_id uuid REFERENCES campaigns (id),
    ADD COLUMN discount_minor bigint NOT NULL DEFAULT 0,
    ADD COLUMN discount_funded_by text CHECK (discount_funded_by IN ('merchant', 'bank')),
    ADD COLUMN discount_clawed_back_minor bigint NOT NULL DEFAULT 0,
    ADD CONSTRAINT payments_discount CHECK (
        (campaign_id IS NULL AND discount_minor = 0 AND discount_funded_by IS NULL AND discount_clawed_back_minor = 0)
        OR (campaign_id IS NOT NULL AND discount_minor > 0 AND discount_minor < amount_minor
            AND discount_funded_by IS NOT NULL
            AND 0 <= discount_clawed_back_minor AND discount_clawed_back_minor <= discount_minor));
CREATE INDEX payments_campaign ON payments (campaign_id) WHERE campaign_id IS NOT NULL;

ALTER TABLE refunds ADD COLUMN discount_clawed_back_minor bigint NOT NULL DEFAULT 0
    CHECK (discount_clawed_back_minor >= 0);
