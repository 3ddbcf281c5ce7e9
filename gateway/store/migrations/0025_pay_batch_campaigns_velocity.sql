-- The one-statement payment path gives promotion campaigns' discounts too (issue 13: campaigns on
-- the hot path stay cheap). gateway_pay_batch of 0015 takes four more arrays per item:
--   campaign      the campaign whose discount the gateway decided from its cache (NULL: none);
--   discount      that discount, the campaign's full stated benefit for the amount;
--   funded        'bank' or 'merchant' (the ledger entry the gateway built already says who pays);
--   holder_max    the campaign's per-holder limit (2^31 - 1: none);
--   spend         what the day's spend counts (the full amount, whatever the discount).
-- The item takes the holder's use and the campaign's place and budget with the same guards as the
-- general path (store.promotions.take), except that it never grants less than the stated discount:
-- when the budget left is smaller, or the places are gone, or the holder's limit is reached, or the
-- campaign ended or is outside its window, the item falls back and the general path decides (it
-- gives the budget's last units, or tries the next campaign). Its rollback gives back what it took.
-- Locks: the campaigns' rows first, in id order, then the balance shards, as the general path takes
-- them (promotions.grant before the ledger posting; a refund's claw-back before its posting).

-- It checks velocity limits per wallet too (risk rules on the hot path stay cheap): four more flat
-- arrays, one row per limit an item must keep (v_item names the item, as p_item does for postings):
--   v_window      the rule's window in seconds;
--   v_count_max   at most this many of the holder's payments authorised in the window, this one included
--                 (NULL: no count limit);
--   v_amount_max  at most this much of them in the payment's currency, this one included (NULL: none, or
--                 the rule limits another currency).
-- The holder's payments are counted as the general path counts them (store.risk.recent: held, captured
-- or waiting for confirmation, updated within the window), after the item holds the holder's day's
-- spend row, so one holder's payments are counted one at a time on both paths. An item over a limit
-- falls back: the general path decides the rule's outcome (a decline, a PIN, a code) and records it.
-- While a batch holds a campaign's row its items wait at most 5 ms on a row another transaction holds.


DROP FUNCTION gateway_pay_batch(
    uuid[], timestamptz[], text[], uuid[], bigint[], bigint[], bigint[], timestamptz[], timestamptz[], bigint[],
    text[], date[], text[], smallint[], bigint[], uuid[], text[], text[], bigint[], text[], int[], bigint[], text[],
    bigint[], int[], bigint[], smallint[], bigint[], bigint[], text[], text[], bytea[], text[], text[], int[],
    bytea[], timestamptz[]);

-- Paying payments in one round trip and one commit (group commit): item i of the arrays is one
-- request's payment, decided by the gateway from the payment's row as it read it (seen_at: its
-- updated_at then). Each item runs in its own subtransaction (the exception block): an item whose
-- guard fails, whose funds are short, whose rows another transaction holds, or that meets a unique
-- key is rolled back alone and reported false (the gateway then runs that request's general path,
-- which waits its turn, decides afresh and answers, a decline too); the other items commit together.
-- An item writes: the payment, the day's spend, its event, its ledger entry with postings and shard
-- changes (automatic capture) or the wallet's hold (manual capture), and its request's stored answer
-- under its idempotency key (key_principal NULL: a request without a key).
--
-- Time: an item is decided at now_at and holds only until decided_until (the payment's expiry or
-- the end of the local day its spend counts in, whichever comes first), by the database's clock:
-- an item that waited in the queue past it falls back (the general path then decides on the time).
--
-- Locks: the batch first locks the shared balance shards it will change (merchants', fees'), in
-- (account_id, shard) order, as every use case locks them, so batches never deadlock on them. Its
-- items then take their own rows (payment, holder, day's spend, wallet balance) with NOWAIT: a row
-- another transaction holds makes that item fall back at once, so a batch never waits on a
-- transaction that may be waiting on the shards the batch holds, and one payer's busy wallet never
-- holds up the others.
-- Postings and shard changes are flat arrays; p_item / s_item name the item each belongs to.
CREATE OR REPLACE FUNCTION gateway_pay_batch(
    payment_id uuid[], seen_at timestamptz[], status text[], holder uuid[], authorized bigint[], captured bigint[],
    fee bigint[], authorization_expires timestamptz[], now_at timestamptz[], wallet_account bigint[], channel text[],
    spend_day date[], currency text[], tier smallint[], daily_max bigint[], event_id uuid[], event_type text[],
    event_data text[], hold bigint[], entry_kind text[],
    p_item int[], p_account bigint[], p_currency text[], p_amount bigint[],
    s_item int[], s_account bigint[], s_shard smallint[], s_delta bigint[], s_released bigint[],
    key_principal text[], key_text text[], key_hash bytea[], key_method text[], key_path text[],
    key_status int[], key_body bytea[], decided_until timestamptz[],
    campaign uuid[], discount bigint[], funded text[], holder_max int[], spend bigint[],
    v_item int[], v_window int[], v_count_max bigint[], v_amount_max bigint[]
) RETURNS boolean[] LANGUAGE plpgsql AS $$
#variable_conflict use_column
DECLARE
    applied boolean[] := '{}';
    merchant uuid;
    spent bigint;
    entry bigint;
    changed bigint;
BEGIN
    PERFORM 1 FROM campaigns c WHERE c.id = ANY ($38) ORDER BY c.id FOR UPDATE OF c;
    PERFORM 1 FROM balances b
      JOIN (SELECT DISTINCT account_id, shard FROM unnest($26, $27) AS s(account_id, shard)
             WHERE account_id <> ALL ($10)) AS k
        ON b.account_id = k.account_id AND b.shard = k.shard
     ORDER BY b.account_id, b.shard
       FOR UPDATE OF b;
    -- From here on an item never waits long: what it cannot lock at once (a row inserted and not yet
    -- committed by another transaction, which NOWAIT cannot see) makes it fall back after 100 ms; after
    -- 5 ms while the batch holds a campaign's row, which every discounted payment of every process
    -- waits for (review R15: items of a batch waiting 100 ms each on a general-path payment that itself
    -- waits for the campaign row held the row for seconds).
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
            PERFORM gateway_at_once(NOT EXISTS (
                SELECT 1 FROM unnest($43, $44, $45, $46) AS v(item, window_s, count_max, amount_max)
                 CROSS JOIN LATERAL (
                       SELECT count(*) AS n, coalesce(sum(q.amount_minor) FILTER (WHERE q.currency = $13[i]), 0) AS total
                         FROM payments q
                        WHERE q.payer_id = $4[i] AND q.id <> $1[i]
                          AND q.updated_at > $9[i] - make_interval(secs => v.window_s)
                          AND q.status IN ('requires_capture', 'succeeded', 'requires_action')) r
                 WHERE v.item = i
                   AND (r.n + 1 > v.count_max OR r.total + $42[i] > v.amount_max)));
            IF $38[i] IS NOT NULL THEN
                INSERT INTO campaign_uses AS u (campaign_id, holder_id, uses) VALUES ($38[i], $4[i], 1)
                ON CONFLICT (campaign_id, holder_id) DO UPDATE SET uses = u.uses + 1 WHERE u.uses < $41[i];
                PERFORM gateway_at_once(FOUND);
                UPDATE campaigns c SET places_taken = c.places_taken + 1, spent_minor = c.spent_minor + $39[i],
                       last_granted_minor = $39[i], updated_at = now()
                 WHERE c.id = $38[i] AND c.ended_at IS NULL AND c.starts_at <= $9[i] AND $9[i] < c.ends_at
                   AND (c.places_max IS NULL OR c.places_taken < c.places_max)
                   AND c.spent_minor + $39[i] <= c.budget_minor;
                PERFORM gateway_at_once(FOUND);
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
            applied := applied || true;
        EXCEPTION
            WHEN SQLSTATE 'GW001' OR check_violation OR unique_violation OR lock_not_available
                 OR deadlock_detected OR serialization_failure THEN
                applied := applied || false;
        END;
    END LOOP;
    RETURN applied;
END $$;
