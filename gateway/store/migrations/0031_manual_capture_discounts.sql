-- Discounts on manual captures (docs/promotions.md, "Manual capture"). Until now only a payment captured
-- at once was discounted. A manual authorisation now takes its discount (the holder's use, a place and the
-- budget, by gateway_campaign_take under the same guards) and RESERVES it: the wallet holds amount -
-- discount, and the payment records the reservation (reserved_campaign_id, discount_reserved_minor,
-- reserved_funded_by) while campaign_id / discount_minor (what a capture granted, as before) stay empty.
-- The capture of c of the authorised amount A keeps floor(reserved * c / A) as the payment's discount
-- (campaign_id, discount_minor: exactly what an at-once discount records, so refunds claw back as before)
-- and gives the rest back to the campaign's counter rows; a share of 0 gives back the place and the use
-- too. A cancelled or expired authorisation gives back everything: budget, place and the holder's use.
-- The reservation columns stay as the payment's record of what its authorisation reserved.
ALTER TABLE payments
    ADD COLUMN reserved_campaign_id uuid REFERENCES campaigns (id),
    ADD COLUMN discount_reserved_minor bigint NOT NULL DEFAULT 0,
    ADD COLUMN reserved_funded_by text CHECK (reserved_funded_by IN ('merchant', 'bank')),
    ADD CONSTRAINT payments_discount_reserved CHECK (
        (reserved_campaign_id IS NULL AND discount_reserved_minor = 0 AND reserved_funded_by IS NULL)
        OR (reserved_campaign_id IS NOT NULL AND discount_reserved_minor > 0 AND discount_reserved_minor < amount_minor
            AND reserved_funded_by IS NOT NULL AND discount_minor <= discount_reserved_minor
            AND (campaign_id IS NULL OR campaign_id = reserved_campaign_id)));

-- What a reservation gives back to its campaign (part of it at a partial capture, all of it at a cancel or
-- expiry), in the caller's transaction: amount_minor of the budget and, when place, one place, from the
-- counter rows taken in shard order (the order of the take's gather and of the end; a row locked stays
-- locked until the commit) and stopping as soon as everything is given back. Rows closed by the campaign's
-- end take it back too: the rows' sums stay the campaign's spent and places, and no take reads a closed row.
-- The holder's use is given back first, by gateway_campaign_give_back_use (lock order: a holder's use row,
-- then the counter rows).
CREATE FUNCTION gateway_campaign_give_back(campaign uuid, amount_minor bigint, place boolean)
RETURNS void LANGUAGE plpgsql AS $$
DECLARE
    need bigint := amount_minor;
    place_due boolean := place;
    here bigint;
    r record;
BEGIN
    IF need < 0 THEN
        RAISE EXCEPTION 'a give-back is not negative: %', need;
    END IF;
    FOR r IN SELECT k.shard, k.spent_minor, k.places_taken FROM campaign_shards k
              WHERE k.campaign_id = campaign ORDER BY k.shard FOR UPDATE LOOP
        EXIT WHEN need = 0 AND NOT place_due;
        here := least(need, r.spent_minor);
        IF here > 0 OR (place_due AND r.places_taken > 0) THEN
            UPDATE campaign_shards k SET spent_minor = k.spent_minor - here,
                   places_taken = k.places_taken - CASE WHEN place_due AND r.places_taken > 0 THEN 1 ELSE 0 END
             WHERE k.campaign_id = campaign AND k.shard = r.shard;
            need := need - here;
            place_due := place_due AND r.places_taken = 0;
        END IF;
    END LOOP;
    IF need <> 0 OR place_due THEN  -- the rows hold less than the reservation took: never silently
        RAISE EXCEPTION 'campaign % cannot give back % and place %', campaign, amount_minor, place;
    END IF;
END $$;

-- The holder's use given back (a reservation that kept nothing): counted only where the campaign has a
-- per-holder limit (as gateway_campaign_take counts it).
CREATE FUNCTION gateway_campaign_give_back_use(campaign uuid, holder uuid)
RETURNS void LANGUAGE sql AS $$
    UPDATE campaign_uses u SET uses = u.uses - 1
     WHERE u.campaign_id = campaign AND u.holder_id = holder AND u.uses > 0
       AND EXISTS (SELECT 1 FROM campaigns c WHERE c.id = campaign AND c.per_holder_max IS NOT NULL);
$$;
