-- Risk rules, second slice (issue 13, "Risk and alerts"): more kinds, outcomes that ask for the PIN or a
-- one-time code, every decision recorded with its reasons, alerts, and the holder's usual amounts.

-- Kinds: velocity per device and per merchant (Redis, PostgreSQL when Redis is down), an amount far
-- above the holder's usual, a new device with a large amount, a blocklisted device.
-- Outcomes: what a match asks for (domain.risk.Outcome).
ALTER TABLE risk_rules DROP CONSTRAINT risk_rules_kind_check;
ALTER TABLE risk_rules DROP CONSTRAINT risk_rules_outcome_check;
ALTER TABLE risk_rules
    ADD CONSTRAINT risk_rules_kind_check CHECK (kind IN ('blocked_wallet', 'velocity_wallet', 'velocity_device',
        'velocity_merchant', 'amount_unusual', 'new_device', 'blocked_device')),
    ADD CONSTRAINT risk_rules_outcome_check CHECK (outcome IN ('decline', 'require_pin', 'require_otp')),
    ADD COLUMN device_id       text CHECK (length(device_id) BETWEEN 1 AND 128),  -- blocked_device
    ADD COLUMN merchant_id     uuid REFERENCES merchants (id),  -- velocity_merchant: one merchant (NULL: each)
    ADD COLUMN multiplier_pct  integer CHECK (multiplier_pct BETWEEN 101 AND 100000),  -- amount_unusual: k x 100
    ADD COLUMN baseline        text CHECK (baseline IN ('median', 'p90')),              -- amount_unusual
    ADD COLUMN history_min     integer CHECK (history_min BETWEEN 1 AND 50),            -- amount_unusual
    ADD COLUMN device_age_s    integer CHECK (device_age_s BETWEEN 1 AND 2592000),      -- new_device
    ADD COLUMN min_amount_minor bigint CHECK (min_amount_minor >= 0),                   -- new_device
    ADD CONSTRAINT risk_rules_blocked_device CHECK (kind <> 'blocked_device' OR device_id IS NOT NULL),
    ADD CONSTRAINT risk_rules_velocity CHECK (kind NOT IN ('velocity_device', 'velocity_merchant')
        OR (window_s IS NOT NULL AND (max_count IS NOT NULL OR (max_amount_minor IS NOT NULL AND currency IS NOT NULL)))),
    ADD CONSTRAINT risk_rules_unusual CHECK (kind <> 'amount_unusual'
        OR (multiplier_pct IS NOT NULL AND baseline IS NOT NULL AND history_min IS NOT NULL AND currency IS NOT NULL)),
    ADD CONSTRAINT risk_rules_new_device CHECK (kind <> 'new_device'
        OR (device_age_s IS NOT NULL AND min_amount_minor IS NOT NULL AND currency IS NOT NULL));

-- The holder's last captured amounts per currency (at most 50, oldest first): what "usual" means for an
-- amount_unusual rule, read in one row instead of scanning the history. Kept by the triggers below in
-- the transaction that captures, whichever way the payment was captured (one statement or general path).
-- They are deferred to the commit: the row is then the last lock the transaction takes, after every
-- balance row, on every path (an AFTER trigger of the one-statement path would fire only after its
-- balance rows, the general path's before them: two orders, a deadlock between them).
CREATE TABLE holder_amounts (
    holder_id      uuid NOT NULL REFERENCES wallet_holders (id),
    currency       char(3) NOT NULL,
    amounts_minor  bigint[] NOT NULL CHECK (cardinality(amounts_minor) BETWEEN 1 AND 50),
    PRIMARY KEY (holder_id, currency)
);

CREATE FUNCTION holder_amounts_capture() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    INSERT INTO holder_amounts AS h (holder_id, currency, amounts_minor)
    VALUES (NEW.payer_id, NEW.currency, ARRAY[NEW.captured_minor])
    ON CONFLICT (holder_id, currency) DO UPDATE
       SET amounts_minor = (h.amounts_minor || EXCLUDED.amounts_minor)[
               greatest(1, cardinality(h.amounts_minor) + 1 - 49):cardinality(h.amounts_minor) + 1];
    RETURN NULL;
END
$$;
CREATE CONSTRAINT TRIGGER payments_holder_amounts AFTER UPDATE OF status ON payments
    DEFERRABLE INITIALLY DEFERRED FOR EACH ROW
    WHEN (NEW.status = 'succeeded' AND OLD.status IS DISTINCT FROM 'succeeded' AND NEW.payer_id IS NOT NULL
          AND NEW.captured_minor > 0)
    EXECUTE FUNCTION holder_amounts_capture();
CREATE CONSTRAINT TRIGGER payments_holder_amounts_new AFTER INSERT ON payments
    DEFERRABLE INITIALLY DEFERRED FOR EACH ROW
    WHEN (NEW.status = 'succeeded' AND NEW.payer_id IS NOT NULL AND NEW.captured_minor > 0)
    EXECUTE FUNCTION holder_amounts_capture();

-- A payment's one-time code is a sign-in challenge of reason 'payment' (the same outbox and sender);
-- only the risk verification accepts it, never the sign-in's (gateway/store/sign_in.attempt_code).
ALTER TABLE sign_in_challenges DROP CONSTRAINT sign_in_challenges_reason_check;
ALTER TABLE sign_in_challenges ADD CONSTRAINT sign_in_challenges_reason_check
    CHECK (reason IN ('phone_verification', 'new_device', 'payment'));

-- Every decision taken while a rule was active: the outcome and the rules that led to it (reasons).
-- 'allow' rows are written in the payment's transaction (so they exist exactly for authorised payments
-- and are what the PostgreSQL velocity fallback counts); the others are written with the refusal's
-- stored answer (services.risk.record_refusal), so they survive the payment's rollback.
-- A require_otp decision names its challenge; the retry that passes with the code marks it used
-- (step_up_used_at), so one code opens one payment.
CREATE TABLE risk_decisions (
    id              uuid PRIMARY KEY,
    created_at      timestamptz NOT NULL,
    holder_id       uuid NOT NULL REFERENCES wallet_holders (id),
    payment_id      uuid NOT NULL,  -- no foreign key: a static QR's payment is rolled back with its decline
    merchant_id     uuid NOT NULL,
    channel         text NOT NULL,
    currency        char(3) NOT NULL,
    amount_minor    bigint NOT NULL CHECK (amount_minor > 0),
    device_id       text,
    outcome         text NOT NULL CHECK (outcome IN ('allow', 'require_pin', 'require_otp', 'decline')),
    reasons         jsonb NOT NULL,
    passed          text[] NOT NULL DEFAULT '{}',  -- the step-ups this attempt passed: pin, otp
    challenge_id    uuid REFERENCES sign_in_challenges (id),
    step_up_used_at timestamptz,
    CHECK ((outcome = 'require_otp') = (challenge_id IS NOT NULL))
);
CREATE INDEX risk_decisions_created ON risk_decisions (created_at DESC, id DESC);
CREATE INDEX risk_decisions_holder ON risk_decisions (holder_id, created_at DESC, id DESC);
CREATE INDEX risk_decisions_alerts ON risk_decisions (created_at DESC, id DESC) WHERE outcome <> 'allow';
CREATE INDEX risk_decisions_device ON risk_decisions (device_id, created_at) WHERE outcome = 'allow';
CREATE INDEX risk_decisions_merchant ON risk_decisions (merchant_id, created_at) WHERE outcome = 'allow';
CREATE INDEX risk_decisions_otp ON risk_decisions (holder_id, merchant_id, amount_minor)
    WHERE outcome = 'require_otp' AND step_up_used_at IS NULL;
