-- Campaign counters spread over rows (issue 13: with a campaign on, payments stay within 10% of the
-- figure without it). Until now every discounted payment of every process updated the campaign's one
-- row: batches of all processes queued for it, and PostgreSQL walked its chain of versions (bench
-- 2026-12-03: 0.70x with a campaign; PostgreSQL CPU per payment 1.06 -> 1.89 ms). A campaign's budget
-- and places are now split over at most 16 counter rows (campaign_shards; the split is
-- domain.promotions.shard_split): the sums are the campaign's budget and places, each row is guarded by
-- its CHECKs, so the campaign is never over either whatever row pays. What was spent and taken is the
-- sum over its rows (campaigns.spent_minor, places_taken and last_granted_minor are dropped).
--
-- Who takes from which row:
--   the one-statement path (gateway_pay_batch): per batch and campaign, ONE row that nobody holds
--     (SKIP LOCKED, never waiting) with room for a payment; its items take from it in memory and the
--     row is updated once, at the end of the batch;
--   the general path (gateway_campaign_take): a row with room for the whole benefit that nobody holds;
--     else every row, waited for in shard order, the benefit (or the budget's last units) taken across
--     them: so the last unit is given exactly once, and never refused while one is left;
--   the end of a campaign (store.promotions.end) closes every row, waited for in shard order: a batch
--     or take that then locks a row reads it closed (and every row is closed in the same commit as
--     ended_at). It holds the campaign's own row FOR NO KEY UPDATE meanwhile, which the foreign-key
--     share locks of the payments and uses that name the campaign, taken after a counter row, do not
--     wait for (review R16: FOR UPDATE deadlocked with them);
--   a take refused (spent, full, closed) keeps no counter row locked (review R16).
-- A holder's uses (campaign_uses) are counted only where the campaign has a per-holder limit (gifts: one):
-- with none there is nothing to enforce, and a row per holder and campaign to update at every payment.
-- Lock order stays: a holder's use row, then the campaign's counter rows (in shard order when several),
-- then balance shards. Claw-backs still count on the campaign's row (clawed_back_minor).
CREATE TABLE campaign_shards (
    campaign_id  uuid NOT NULL REFERENCES campaigns (id),
    shard        smallint NOT NULL CHECK (shard >= 0),
    budget_minor bigint NOT NULL CHECK (budget_minor > 0),
    spent_minor  bigint NOT NULL DEFAULT 0,
    places_max   integer CHECK (places_max > 0),  -- NULL: the campaign has no limit of places
    places_taken integer NOT NULL DEFAULT 0,
    closed       boolean NOT NULL DEFAULT false,  -- the campaign was ended
    PRIMARY KEY (campaign_id, shard),
    CHECK (0 <= spent_minor AND spent_minor <= budget_minor),
    CHECK (places_taken >= 0 AND (places_max IS NULL OR places_taken <= places_max))
);

-- A campaign created before this migration keeps its counters in one row.
INSERT INTO campaign_shards (campaign_id, shard, budget_minor, spent_minor, places_max, places_taken, closed)
SELECT id, 0, budget_minor, spent_minor, places_max, places_taken, ended_at IS NOT NULL FROM campaigns;

ALTER TABLE campaigns DROP COLUMN spent_minor, DROP COLUMN places_taken, DROP COLUMN last_granted_minor;
ALTER TABLE campaigns ADD CONSTRAINT campaigns_clawed_back CHECK (clawed_back_minor >= 0);

-- The general path's take, in the caller's transaction: one use of the holder (at most holder_max), a
-- place, and the stated benefit or, when less is left, the budget's last units. Returns the benefit
-- granted; NULL when the campaign ended or is outside its window at now_at, or the holder's limit, the
-- places or the budget refuse (then nothing is taken).
CREATE FUNCTION gateway_campaign_take(campaign uuid, holder uuid, stated bigint, now_at timestamptz, holder_max int)
RETURNS bigint LANGUAGE plpgsql AS $$
#variable_conflict use_column
DECLARE
    picked smallint;
    left_minor bigint;
    places_left bigint;
    closed_any boolean;
    granted bigint;
    need bigint;
    here bigint;
    placed boolean := false;
    r record;
BEGIN
    IF NOT EXISTS (SELECT 1 FROM campaigns c WHERE c.id = $1 AND c.ended_at IS NULL
                      AND c.starts_at <= $4 AND $4 < c.ends_at) THEN
        RETURN NULL;
    END IF;
    -- One subtransaction for the rest: a refusal (GW002) gives back the holder's use and releases every
    -- counter row locked on the way, with the block.
    BEGIN
        IF $5 IS NOT NULL THEN  -- a per-holder limit (none: NULL, and nothing to count; review R16: COUNT_MAX
                                -- is a limit a campaign may have, no longer read as none)
            INSERT INTO campaign_uses AS u (campaign_id, holder_id, uses) VALUES ($1, $2, 1)
            ON CONFLICT (campaign_id, holder_id) DO UPDATE SET uses = u.uses + 1 WHERE u.uses < $5;
            IF NOT FOUND THEN
                RETURN NULL;
            END IF;
        END IF;
        -- In a block: a row the pick locked and then skipped (its room taken by a commit after the
        -- statement's snapshot: PostgreSQL keeps such a lock) is released when nothing was picked; kept,
        -- it broke the gather's shard order below and deadlocked two gathers (review R16).
        BEGIN
            WITH pick AS (
                SELECT k.campaign_id, k.shard FROM campaign_shards k
                 WHERE k.campaign_id = $1 AND NOT k.closed AND k.budget_minor - k.spent_minor >= $3
                   AND (k.places_max IS NULL OR k.places_taken < k.places_max)
                 ORDER BY k.budget_minor - k.spent_minor DESC, k.shard
                 LIMIT 1 FOR UPDATE SKIP LOCKED)
            UPDATE campaign_shards k SET spent_minor = k.spent_minor + $3, places_taken = k.places_taken + 1
              FROM pick WHERE k.campaign_id = pick.campaign_id AND k.shard = pick.shard
            RETURNING k.shard INTO picked;
            IF picked IS NOT NULL THEN
                RETURN $3;
            END IF;
            RAISE EXCEPTION USING ERRCODE = 'GW002';
        EXCEPTION WHEN SQLSTATE 'GW002' THEN
            NULL;
        END;
        -- A refusal keeps no counter row locked (review R16: a payment refused by a spent campaign, which
        -- caches offer for up to their refresh period, then took its next offer holding every row of it:
        -- two such payments trying two spent campaigns in opposite orders deadlocked, and every payment
        -- offered a spent campaign waited for all its rows). What is committed never comes back (spent and
        -- places taken only grow, a closed row stays closed), so a campaign spent, full or closed as last
        -- committed is refused at once, locking nothing.
        SELECT sum(k.budget_minor - k.spent_minor), sum(k.places_max - k.places_taken), bool_or(k.closed)
          INTO left_minor, places_left, closed_any
          FROM campaign_shards k WHERE k.campaign_id = $1;
        IF closed_any IS NOT FALSE OR left_minor <= 0 OR places_left <= 0 THEN
            RAISE EXCEPTION USING ERRCODE = 'GW002';
        END IF;
        -- Every row, waited for in shard order: what is left may be spread over several.
        SELECT sum(k.budget_minor - k.spent_minor), sum(k.places_max - k.places_taken), bool_or(k.closed)
          INTO left_minor, places_left, closed_any
          FROM (SELECT * FROM campaign_shards s WHERE s.campaign_id = $1 ORDER BY s.shard FOR UPDATE) k;
        IF closed_any IS NOT FALSE OR left_minor <= 0 OR places_left <= 0 THEN
            RAISE EXCEPTION USING ERRCODE = 'GW002';
        END IF;
        granted := least($3, left_minor);
        need := granted;
        -- The place from the first row that has one; the budget from that row, then the others in order.
        FOR r IN SELECT k.shard, k.budget_minor - k.spent_minor AS room
                   FROM campaign_shards k WHERE k.campaign_id = $1
                  ORDER BY (k.places_max IS NULL OR k.places_taken < k.places_max) DESC, k.shard LOOP
            EXIT WHEN placed AND need = 0;
            here := least(need, r.room);
            IF here > 0 OR NOT placed THEN
                UPDATE campaign_shards k SET spent_minor = k.spent_minor + here,
                       places_taken = k.places_taken + CASE WHEN placed THEN 0 ELSE 1 END
                 WHERE k.campaign_id = $1 AND k.shard = r.shard;
                need := need - here;
                placed := true;
            END IF;
        END LOOP;
        RETURN granted;
    EXCEPTION WHEN SQLSTATE 'GW002' THEN
        RETURN NULL;  -- refused: nothing taken, nothing locked
    END;
END $$;

-- gateway_pay_batch of 0025 with two changes: a campaign's items take from one counter row the batch
-- picked (above) instead of each updating the campaign's row; and 0025's velocity limits per wallet (its
-- v_* arrays, a count of the holder's payments per item: O(the holder's payments in the window)) are gone:
-- velocity rules of every kind are counted in Redis windows before the statement
-- (services.context.pay_counted, docs/risk.md).
DROP FUNCTION gateway_pay_batch(
    uuid[], timestamptz[], text[], uuid[], bigint[], bigint[], bigint[], timestamptz[], timestamptz[], bigint[],
    text[], date[], text[], smallint[], bigint[], uuid[], text[], text[], bigint[], text[], int[], bigint[], text[],
    bigint[], int[], bigint[], smallint[], bigint[], bigint[], text[], text[], bytea[], text[], text[], int[],
    bytea[], timestamptz[], uuid[], bigint[], text[], int[], bigint[], int[], int[], bigint[], bigint[]);

CREATE FUNCTION gateway_pay_batch(
    payment_id uuid[], seen_at timestamptz[], status text[], holder uuid[], authorized bigint[], captured bigint[],
    fee bigint[], authorization_expires timestamptz[], now_at timestamptz[], wallet_account bigint[], channel text[],
    spend_day date[], currency text[], tier smallint[], daily_max bigint[], event_id uuid[], event_type text[],
    event_data text[], hold bigint[], entry_kind text[],
    p_item int[], p_account bigint[], p_currency text[], p_amount bigint[],
    s_item int[], s_account bigint[], s_shard smallint[], s_delta bigint[], s_released bigint[],
    key_principal text[], key_text text[], key_hash bytea[], key_method text[], key_path text[],
    key_status int[], key_body bytea[], decided_until timestamptz[],
    campaign uuid[], discount bigint[], funded text[], holder_max int[], spend bigint[]
) RETURNS boolean[] LANGUAGE plpgsql AS $$
#variable_conflict use_column
DECLARE
    applied boolean[] := '{}';
    merchant uuid;
    spent bigint;
    entry bigint;
    changed bigint;
    r record;
    j int;
    picked smallint;
    room bigint;
    places_left int;
    starts timestamptz;
    ends timestamptz;
    -- Per campaign of the batch (cs): its counter row picked (css), what that row had left (c_room,
    -- c_places: NULL is no limit), the campaign's window, and what the batch's applied items took.
    cs uuid[] := '{}';
    css smallint[] := '{}';
    c_room bigint[] := '{}';
    c_places int[] := '{}';
    c_starts timestamptz[] := '{}';
    c_ends timestamptz[] := '{}';
    c_used bigint[] := '{}';
    c_taken int[] := '{}';
BEGIN
    -- One counter row per campaign of the batch, one that nobody else holds (SKIP LOCKED: a batch
    -- never waits for a campaign), with room for at least one payment; none: its items fall back.
    FOR r IN SELECT DISTINCT c.id FROM unnest($38) AS c(id) WHERE c.id IS NOT NULL ORDER BY c.id LOOP
        picked := NULL;
        SELECT k.shard, k.budget_minor - k.spent_minor, k.places_max - k.places_taken, c.starts_at, c.ends_at
          INTO picked, room, places_left, starts, ends
          FROM campaign_shards k JOIN campaigns c ON c.id = k.campaign_id
         WHERE k.campaign_id = r.id AND NOT k.closed AND c.ended_at IS NULL AND k.spent_minor < k.budget_minor
           AND (k.places_max IS NULL OR k.places_taken < k.places_max)
         ORDER BY k.budget_minor - k.spent_minor DESC, k.shard
         LIMIT 1 FOR UPDATE OF k SKIP LOCKED;
        cs := array_append(cs, r.id);
        css := array_append(css, picked);
        c_room := array_append(c_room, CASE WHEN picked IS NULL THEN 0 ELSE room END);
        c_places := array_append(c_places, places_left);
        c_starts := array_append(c_starts, starts);
        c_ends := array_append(c_ends, ends);
        c_used := array_append(c_used, 0::bigint);
        c_taken := array_append(c_taken, 0);
    END LOOP;
    PERFORM 1 FROM balances b
      JOIN (SELECT DISTINCT account_id, shard FROM unnest($26, $27) AS s(account_id, shard)
             WHERE account_id <> ALL ($10)) AS k
        ON b.account_id = k.account_id AND b.shard = k.shard
     ORDER BY b.account_id, b.shard
       FOR UPDATE OF b;
    -- From here on an item never waits long: what it cannot lock at once (a row inserted and not yet
    -- committed by another transaction, which NOWAIT cannot see) makes it fall back after 100 ms; after
    -- 5 ms while the batch holds a campaign's counter row, which a payment taking a budget's last units
    -- and the campaign's end wait for (review R15: items of a batch waiting 100 ms each on a general-path
    -- payment that itself waited for the campaign's one row held that row for seconds).
    PERFORM set_config('lock_timeout',
                       CASE WHEN EXISTS (SELECT 1 FROM unnest($38) AS c(id) WHERE c.id IS NOT NULL)
                            THEN '5ms' ELSE '100ms' END, true);
    FOR i IN 1 .. coalesce(cardinality(payment_id), 0) LOOP
        BEGIN
            PERFORM 1 FROM payments p WHERE p.id = $1[i] FOR UPDATE NOWAIT;
            PERFORM 1 FROM wallet_holders w WHERE w.id = $4[i] FOR SHARE NOWAIT;
            PERFORM 1 FROM daily_spend d WHERE d.holder_id = $4[i] AND d.currency = $13[i] AND d.day = $12[i]
                FOR UPDATE NOWAIT;
            PERFORM 1 FROM balances b WHERE b.account_id = $10[i] AND b.shard = 0 FOR UPDATE NOWAIT;
            UPDATE payments p SET status = $3[i], payer_id = $4[i], authorized_minor = $5[i], captured_minor = $6[i],
                   fee_minor = $7[i], authorization_expires_at = $8[i], confirm_by = NULL,
                   wallet_account_id = $10[i], channel = $11[i], spend_day = $12[i], updated_at = $9[i],
                   campaign_id = $38[i], discount_minor = coalesce($39[i], 0), discount_funded_by = $40[i]
             WHERE p.id = $1[i] AND p.updated_at = $2[i] AND p.status = 'requires_payment_method'
               AND p.payer_id IS NULL AND p.expires_at > greatest($9[i], clock_timestamp()) AND clock_timestamp() < $37[i]
            RETURNING p.merchant_id INTO merchant;
            PERFORM gateway_at_once(FOUND);
            PERFORM 1 FROM wallet_holders w
             WHERE w.id = $4[i] AND w.tier = $14[i] AND w.payments_locked_at IS NULL
               AND EXISTS (SELECT 1 FROM merchants m WHERE m.id = merchant AND m.status = 'active')
               FOR SHARE OF w;
            PERFORM gateway_at_once(FOUND);
            INSERT INTO daily_spend AS d (holder_id, currency, day, spent_minor) VALUES ($4[i], $13[i], $12[i], $42[i])
            ON CONFLICT (holder_id, currency, day) DO UPDATE SET spent_minor = d.spent_minor + EXCLUDED.spent_minor
            RETURNING d.spent_minor INTO spent;
            PERFORM gateway_at_once(spent <= $15[i]);
            IF $38[i] IS NOT NULL THEN
                IF $41[i] IS NOT NULL THEN  -- a per-holder limit (none: NULL)
                    INSERT INTO campaign_uses AS u (campaign_id, holder_id, uses) VALUES ($38[i], $4[i], 1)
                    ON CONFLICT (campaign_id, holder_id) DO UPDATE SET uses = u.uses + 1 WHERE u.uses < $41[i];
                    PERFORM gateway_at_once(FOUND);
                END IF;
                j := array_position(cs, $38[i]);
                PERFORM gateway_at_once(css[j] IS NOT NULL AND c_starts[j] <= $9[i] AND $9[i] < c_ends[j]
                                        AND c_used[j] + $39[i] <= c_room[j]
                                        AND (c_places[j] IS NULL OR c_taken[j] < c_places[j]));
            END IF;
            IF $19[i] > 0 THEN
                UPDATE balances b SET held_minor = b.held_minor + $19[i] WHERE b.account_id = $10[i] AND b.shard = 0;
                PERFORM gateway_at_once(FOUND);
            ELSE
                INSERT INTO journal_entries (kind, payment_id) VALUES ($20[i], $1[i]) RETURNING id INTO entry;
                INSERT INTO postings (entry_id, account_id, currency, amount_minor)
                SELECT entry, t.account_id, t.currency, t.amount_minor
                  FROM unnest($21, $22, $23, $24) AS t(item, account_id, currency, amount_minor)
                 WHERE t.item = i;
                UPDATE balances b
                   SET posted_minor = b.posted_minor + d.delta, held_minor = b.held_minor - d.released
                  FROM unnest($25, $26, $27, $28, $29) AS d(item, account_id, shard, delta, released)
                 WHERE d.item = i AND b.account_id = d.account_id AND b.shard = d.shard;
                GET DIAGNOSTICS changed = ROW_COUNT;
                PERFORM gateway_at_once(changed = (SELECT count(*) FROM unnest($25) AS s(item) WHERE s.item = i));
            END IF;
            INSERT INTO events (id, type, merchant_id, holder_id, object_id, data)
            VALUES ($16[i], $17[i], merchant, $4[i], $1[i], $18[i]::jsonb);
            IF $30[i] IS NOT NULL THEN
                INSERT INTO idempotency_keys (principal, key, request_hash, method, path, response_status, response_body)
                VALUES ($30[i], $31[i], $32[i], $33[i], $34[i], $35[i], $36[i])
                ON CONFLICT (principal, key) DO NOTHING;
                PERFORM gateway_at_once(FOUND);
            END IF;
            -- Last, after every statement that may roll the item back (a variable is not rolled back):
            -- what it took of its campaign's row, written once for the batch below.
            IF $38[i] IS NOT NULL THEN
                c_used[j] := c_used[j] + $39[i];
                c_taken[j] := c_taken[j] + 1;
            END IF;
            applied := applied || true;
        EXCEPTION
            WHEN SQLSTATE 'GW001' OR check_violation OR unique_violation OR lock_not_available
                 OR deadlock_detected OR serialization_failure THEN
                applied := applied || false;
        END;
    END LOOP;
    UPDATE campaign_shards k SET spent_minor = k.spent_minor + u.used, places_taken = k.places_taken + u.taken
      FROM unnest(cs, css, c_used, c_taken) AS u(campaign_id, shard, used, taken)
     WHERE k.campaign_id = u.campaign_id AND k.shard = u.shard AND u.taken > 0;
    RETURN applied;
END $$;
