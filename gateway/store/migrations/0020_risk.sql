-- Risk rules (issue 13, "Risk and alerts"): rules an operator sets, checked at every authorisation.
-- blocked_wallet: a wallet holder that may not pay; velocity_wallet: at most max_count payments
-- (and/or max_amount_minor in currency) by one holder within window_s.
CREATE TABLE risk_rules (
    id               uuid PRIMARY KEY,
    kind             text NOT NULL CHECK (kind IN ('blocked_wallet', 'velocity_wallet')),
    outcome          text NOT NULL CHECK (outcome IN ('decline')),
    holder_id        uuid REFERENCES wallet_holders (id),
    currency         char(3),
    window_s         integer CHECK (window_s BETWEEN 1 AND 2592000),
    max_count        integer CHECK (max_count > 0),
    max_amount_minor bigint CHECK (max_amount_minor > 0),
    created_at       timestamptz NOT NULL,
    disabled_at      timestamptz,
    CHECK (kind <> 'blocked_wallet' OR holder_id IS NOT NULL),
    CHECK (kind <> 'velocity_wallet' OR (window_s IS NOT NULL AND (max_count IS NOT NULL OR
                                         (max_amount_minor IS NOT NULL AND currency IS NOT NULL))))
);
CREATE INDEX risk_rules_created ON risk_rules (created_at DESC, id DESC);
