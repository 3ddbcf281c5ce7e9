-- A campaign's counter rows under contention (issue 13's bench, 2026-12-04: the first phase with a new
-- campaign ran at 0.28x of the phase without it, 952 of 1,102 payments refused by their batches, the
-- gateway's backends waiting for row locks 61% of the time; the later phases ran at 0.99-1.02x).
--
-- The first payments of a campaign took the general path (each process learns the promotions account
-- there). Each general-path take holds a counter row from its take to its commit. With every row held
-- at once:
--   - the take gathered EVERY row, in shard order, for the rest of its transaction (0026: "what is left
--     may be spread over several", meant for the budget's last units but reached whenever no row was
--     free): every other take waited behind it, and
--   - a batch, finding no row (SKIP LOCKED), sent all its items to their general path at once,
-- so the general path's load kept every row held, and the batches refused, for as long as the load
-- lasted.
-- Now:
--   - a take that finds no free row with room for its whole benefit waits for ONE such row (which one
--     is spread by backend: gateway_campaign_row_to_wait) and takes from it; it gathers every row only
--     when no single row has room for the whole benefit (the budget's last units), as before;
--   - a batch that finds no free row with room waits for one (the same spread) for at most
--     database.campaign_row_wait_s (the session's gateway.campaign_row_wait_ms, 50 ms by default);
--     then, as before, its items fall back.
-- What is taken and when a take is refused do not change: a row is taken from only when its guards
-- (open, room, a place) hold on the row as locked, and the gather still answers the budget's last units.
-- Lock order is kept: a take waits for its one row holding no other counter row; a batch waits at its
-- start, holding only counter rows of campaigns before this one (campaign order).

-- The counter row that a backend waits for when every row with ``need`` room (and a place) is held: the
-- (pid mod n)-th of those n rows in shard order, read without locks (NULL: none has that room).
CREATE FUNCTION gateway_campaign_row_to_wait(campaign uuid, need bigint) RETURNS smallint
LANGUAGE sql STABLE AS $$
    SELECT x.shard FROM (
        SELECT k.shard, row_number() OVER (ORDER BY k.shard) - 1 AS n, count(*) OVER () AS rows_with_room
          FROM campaign_shards k
         WHERE k.campaign_id = $1 AND NOT k.closed AND k.budget_minor - k.spent_minor >= $2
           AND (k.places_max IS NULL OR k.places_taken < k.places_max)) x
     WHERE x.n = pg_backend_pid() % x.rows_with_room
$$;

-- gateway_campaign_take of 0026, with the wait for one row before the gather.
CREATE OR REPLACE FUNCTION gateway_campaign_take(campaign uuid, holder uuid, stated bigint, now_at timestamptz, holder_max int)
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
        -- Every row with room for the whole benefit is held by others (payments between their take and
        -- their commit): wait for ONE of them, spread by backend, and take from it if it still has room
        -- when it is released. In a block, so that the row is released when it had none left (a lock kept
        -- would break the gather's shard order below). Gathering every row here, as before, held them all
        -- for the rest of this transaction: every other take waited, every batch found no row and sent
        -- its items here (migration 0035).
        picked := gateway_campaign_row_to_wait($1, $3);
        IF picked IS NOT NULL THEN
            BEGIN
                UPDATE campaign_shards k SET spent_minor = k.spent_minor + $3, places_taken = k.places_taken + 1
                 WHERE k.campaign_id = $1 AND k.shard = picked AND NOT k.closed AND k.budget_minor - k.spent_minor >= $3
                   AND (k.places_max IS NULL OR k.places_taken < k.places_max)
                RETURNING k.shard INTO picked;
                IF picked IS NOT NULL THEN
                    RETURN $3;
                END IF;
                RAISE EXCEPTION USING ERRCODE = 'GW002';
            EXCEPTION WHEN SQLSTATE 'GW002' THEN
                NULL;
            END;
        END IF;
        -- No one row has room for the whole benefit (the budget's last units), or the one waited for was
        -- spent meanwhile: every row, waited for in shard order: what is left may be spread over several.
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

-- gateway_pay_batch of 0034, with the bounded wait for one row when none is free.
CREATE OR REPLACE FUNCTION gateway_pay_batch(
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
    need bigint;
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
    paid uuid[] := '{}';  -- the payments of the batch's applied items (one item per payment)
BEGIN
    -- One counter row per campaign of the batch with room for the smallest discount of its items: one that
    -- nobody else holds (SKIP LOCKED), else one waited for a bounded time (below); none: its items fall back.
    FOR r IN SELECT DISTINCT c.id FROM unnest($38) AS c(id) WHERE c.id IS NOT NULL ORDER BY c.id LOOP
        picked := NULL;
        -- A row with less than every item's discount pays none of them: neither picked nor waited for
        -- (review R35).
        need := greatest(1, (SELECT min(x.d) FROM unnest($38, $39) AS x(c, d) WHERE x.c = r.id));
        -- In a block: a row the pick locked and then skipped (spent by a commit after the statement's
        -- snapshot: PostgreSQL keeps such a lock) is released, so that the wait below holds no other row
        -- of this campaign (review R35; the take does the same, review R16).
        BEGIN
            SELECT k.shard, k.budget_minor - k.spent_minor, k.places_max - k.places_taken, c.starts_at, c.ends_at
              INTO picked, room, places_left, starts, ends
              FROM campaign_shards k JOIN campaigns c ON c.id = k.campaign_id
             WHERE k.campaign_id = r.id AND NOT k.closed AND c.ended_at IS NULL AND k.budget_minor - k.spent_minor >= need
               AND (k.places_max IS NULL OR k.places_taken < k.places_max)
             ORDER BY k.budget_minor - k.spent_minor DESC, k.shard
             LIMIT 1 FOR UPDATE OF k SKIP LOCKED;
            IF picked IS NULL THEN
                RAISE EXCEPTION USING ERRCODE = 'GW002';
            END IF;
        EXCEPTION WHEN SQLSTATE 'GW002' THEN
            picked := NULL;
        END;
        IF picked IS NULL THEN
            -- Every row with room is held by others: wait for one of them, spread by backend, at most
            -- database.campaign_row_wait_s (the batch holds no row of payments, holders or balances yet,
            -- and other campaigns' rows only in campaign order). In a block: a row found spent when it was
            -- released is not kept locked, nor is one given up on.
            DECLARE
                wait_for smallint := gateway_campaign_row_to_wait(r.id, need);
                waits text := current_setting('lock_timeout');  -- the session's, for the balance rows below
            BEGIN
                IF wait_for IS NULL THEN  -- no row has room: nothing to wait for
                    RAISE EXCEPTION USING ERRCODE = 'GW002';
                END IF;
                PERFORM set_config('lock_timeout',
                                   coalesce(nullif(current_setting('gateway.campaign_row_wait_ms', true), ''), '50'),
                                   true);
                SELECT k.shard, k.budget_minor - k.spent_minor, k.places_max - k.places_taken, c.starts_at, c.ends_at
                  INTO picked, room, places_left, starts, ends
                  FROM campaign_shards k JOIN campaigns c ON c.id = k.campaign_id
                 WHERE k.campaign_id = r.id AND k.shard = wait_for
                   AND NOT k.closed AND c.ended_at IS NULL AND k.budget_minor - k.spent_minor >= need
                   AND (k.places_max IS NULL OR k.places_taken < k.places_max)
                   FOR UPDATE OF k;
                IF picked IS NULL THEN
                    RAISE EXCEPTION USING ERRCODE = 'GW002';
                END IF;
                PERFORM set_config('lock_timeout', waits, true);
            EXCEPTION WHEN lock_not_available OR SQLSTATE 'GW002' THEN
                picked := NULL;  -- and the block's lock_timeout is undone with it
            END;
        END IF;
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
            -- The payment's guard, as the UPDATE below the loop would have it, on the row locked for it.
            SELECT p.merchant_id INTO merchant FROM payments p
             WHERE p.id = $1[i] AND p.updated_at = $2[i] AND p.status = 'requires_payment_method'
               AND p.payer_id IS NULL AND p.expires_at > greatest($9[i], clock_timestamp()) AND clock_timestamp() < $37[i]
               FOR UPDATE NOWAIT;
            PERFORM gateway_at_once(FOUND AND $1[i] <> ALL (paid));
            PERFORM 1 FROM wallet_holders w WHERE w.id = $4[i] FOR SHARE NOWAIT;
            PERFORM 1 FROM daily_spend d WHERE d.holder_id = $4[i] AND d.currency = $13[i] AND d.day = $12[i]
                FOR UPDATE NOWAIT;
            PERFORM 1 FROM balances b WHERE b.account_id = $10[i] AND b.shard = 0 FOR UPDATE NOWAIT;
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
            paid := paid || $1[i];
            applied := applied || true;
        EXCEPTION
            WHEN SQLSTATE 'GW001' OR check_violation OR unique_violation OR lock_not_available
                 OR deadlock_detected OR serialization_failure THEN
                applied := applied || false;
        END;
    END LOOP;
    -- The applied items' payments, in one statement: every statement that writes payments prepares its
    -- 16 CHECK constraints anew (~100 us), so once per batch instead of once per item. Their rows are
    -- locked since their guards passed above, so nothing changed them since. A CHECK refusing one of them
    -- (the use case's arithmetic would be wrong) refuses the whole batch: GW003, nothing written, and every
    -- item goes to its general path, which decides it alone.
    BEGIN
        UPDATE payments p SET status = u.status, payer_id = u.holder, authorized_minor = u.authorized,
               captured_minor = u.captured, fee_minor = u.fee, authorization_expires_at = u.auth_expires,
               confirm_by = NULL, wallet_account_id = u.wallet, channel = u.channel, spend_day = u.day,
               updated_at = u.now_at, campaign_id = u.campaign, discount_minor = coalesce(u.discount, 0),
               discount_funded_by = u.funded
          FROM unnest($1, $3, $4, $5, $6, $7, $8, $10, $11, $12, $9, $38, $39, $40) WITH ORDINALITY
               AS u(pid, status, holder, authorized, captured, fee, auth_expires, wallet, channel, day, now_at,
                    campaign, discount, funded, item)
         WHERE applied[u.item] AND p.id = u.pid;
        GET DIAGNOSTICS changed = ROW_COUNT;
    EXCEPTION WHEN check_violation THEN
        RAISE EXCEPTION 'a payment of the batch refused its update: %', SQLERRM USING ERRCODE = 'GW003';
    END;
    IF changed <> cardinality(paid) THEN
        RAISE EXCEPTION 'the batch updated % payments of % applied', changed, cardinality(paid) USING ERRCODE = 'GW003';
    END IF;
    UPDATE campaign_shards k SET spent_minor = k.spent_minor + u.used, places_taken = k.places_taken + u.taken
      FROM unnest(cs, css, c_used, c_taken) AS u(campaign_id, shard, used, taken)
     WHERE k.campaign_id = u.campaign_id AND k.shard = u.shard AND u.taken > 0;
    RETURN applied;
END $$;
