-- Promotions, second part (issue 13): cashback credited when a payment is captured, and gifts on a
-- holder's registration and on its first payment. Both are bank-funded: the promotions account pays
-- them into the holder's wallet, in the transaction of the capture (or of the registration), after
-- the same guarded UPDATE of the campaign row that discounts take (places, budget, per-holder use).
ALTER TABLE campaigns DROP CONSTRAINT campaigns_rule_check;
ALTER TABLE campaigns ADD CONSTRAINT campaigns_rule_check
    CHECK (rule IN ('percent', 'fixed', 'cashback', 'gift_registration', 'gift_first_payment'));
-- What is credited after the fact is paid by the promotions account only (a merchant-funded credit
-- would move the merchant's receivable outside a capture or refund, which settlement does not count).
ALTER TABLE campaigns ADD CONSTRAINT campaigns_credit_funded_by_bank
    CHECK (rule IN ('percent', 'fixed') OR funded_by = 'bank');

-- The cashback a payment's capture credited, and what its refunds took back (one benefit per
-- payment: a discounted payment gets no cashback). It is written just before the capture's own
-- update of the row, so "at most the amount captured" is the invariant checker's (a CHECK is not
-- deferrable).
ALTER TABLE payments
    ADD COLUMN cashback_campaign_id uuid REFERENCES campaigns (id),
    ADD COLUMN cashback_minor bigint NOT NULL DEFAULT 0,
    ADD COLUMN cashback_clawed_back_minor bigint NOT NULL DEFAULT 0,
    ADD CONSTRAINT payments_cashback CHECK (
        (cashback_campaign_id IS NULL AND cashback_minor = 0 AND cashback_clawed_back_minor = 0)
        OR (cashback_campaign_id IS NOT NULL AND campaign_id IS NULL AND cashback_minor > 0
            AND 0 <= cashback_clawed_back_minor AND cashback_clawed_back_minor <= cashback_minor));
CREATE INDEX payments_cashback_campaign ON payments (cashback_campaign_id) WHERE cashback_campaign_id IS NOT NULL;

ALTER TABLE refunds ADD COLUMN cashback_clawed_back_minor bigint NOT NULL DEFAULT 0
    CHECK (cashback_clawed_back_minor >= 0);

-- Gifts received: once per holder and campaign, and a first-payment gift once per holder ever
-- (whatever the campaign). Never taken back.
CREATE TABLE promotion_gifts (
    id           uuid PRIMARY KEY,
    kind         text NOT NULL CHECK (kind IN ('registration', 'first_payment')),
    campaign_id  uuid NOT NULL REFERENCES campaigns (id),
    holder_id    uuid NOT NULL REFERENCES wallet_holders (id),
    payment_id   uuid REFERENCES payments (id),
    currency     char(3) NOT NULL,
    amount_minor bigint NOT NULL CHECK (amount_minor > 0),
    created_at   timestamptz NOT NULL DEFAULT now(),
    CHECK ((kind = 'first_payment') = (payment_id IS NOT NULL)),
    UNIQUE (campaign_id, holder_id)
);
CREATE UNIQUE INDEX promotion_gifts_first_payment ON promotion_gifts (holder_id) WHERE kind = 'first_payment';
CREATE INDEX promotion_gifts_holder ON promotion_gifts (holder_id, created_at DESC, id DESC);
