-- The ledger's invariants. Each query returns the rows that break one; all empty means sound.
-- name: entry_unbalanced
SELECT entry_id, currency, sum(amount_minor) AS total FROM postings GROUP BY entry_id, currency HAVING sum(amount_minor) <> 0;
-- name: entry_too_small
SELECT e.id FROM journal_entries e LEFT JOIN postings p ON p.entry_id = e.id GROUP BY e.id HAVING count(p.id) < 2;
-- name: posting_currency_mismatch
SELECT p.id FROM postings p JOIN accounts a ON a.id = p.account_id WHERE p.currency <> a.currency;
-- name: balance_differs_from_postings
SELECT a.id, b.posted, COALESCE(s.total, 0) AS postings_total
  FROM accounts a
  JOIN (SELECT account_id, sum(posted_minor) AS posted FROM balances GROUP BY account_id) b ON b.account_id = a.id
  LEFT JOIN (SELECT account_id, sum(amount_minor) AS total FROM postings GROUP BY account_id) s ON s.account_id = a.id
 WHERE b.posted <> COALESCE(s.total, 0);
-- name: shards_missing
SELECT a.id FROM accounts a LEFT JOIN balances b ON b.account_id = a.id GROUP BY a.id, a.shard_count HAVING count(b.shard) <> a.shard_count;
-- name: forbidden_negative
SELECT account_id, shard, posted_minor, held_minor FROM balances WHERE no_overdraft AND posted_minor - held_minor < 0;
-- name: hold_differs_from_authorizations
SELECT a.id, b.held_minor, COALESCE(h.total, 0) AS authorized
  FROM accounts a JOIN balances b ON b.account_id = a.id AND b.shard = 0
  LEFT JOIN (SELECT wallet_account_id, sum(authorized_minor - discount_reserved_minor) AS total FROM payments
              WHERE status IN ('requires_capture', 'requires_action') GROUP BY wallet_account_id) h ON h.wallet_account_id = a.id
 WHERE a.kind = 'wallet' AND b.held_minor <> COALESCE(h.total, 0);
-- name: captured_payment_postings
SELECT pay.id, pay.captured_minor, pay.refunded_minor, pay.fee_minor
  FROM payments pay
  LEFT JOIN (SELECT e.payment_id,
                    sum(p.amount_minor) FILTER (WHERE e.kind = 'capture' AND a.kind = 'wallet' AND p.amount_minor < 0) AS captured,
                    sum(p.amount_minor) FILTER (WHERE e.kind = 'capture' AND a.kind = 'fees') AS fee,
                    sum(p.amount_minor) FILTER (WHERE e.kind = 'refund' AND a.kind = 'wallet') AS refunded,
                    count(DISTINCT e.id) FILTER (WHERE e.kind = 'capture') AS captures
               FROM journal_entries e JOIN postings p ON p.entry_id = e.id JOIN accounts a ON a.id = p.account_id
              WHERE e.payment_id IS NOT NULL GROUP BY e.payment_id) x ON x.payment_id = pay.id
 WHERE COALESCE(-x.captured, 0) <> pay.captured_minor - CASE WHEN pay.discount_funded_by = 'bank' THEN pay.discount_minor ELSE 0 END
    OR COALESCE(x.fee, 0) <> pay.fee_minor
    OR COALESCE(x.refunded, 0) <> pay.refunded_minor - pay.discount_clawed_back_minor - pay.cashback_clawed_back_minor
    OR (pay.captured_minor > 0 AND x.captures <> 1)
    OR (pay.captured_minor > 0 AND pay.wallet_account_id IS DISTINCT FROM
        (SELECT p.account_id FROM journal_entries e JOIN postings p ON p.entry_id = e.id JOIN accounts a ON a.id = p.account_id
          WHERE e.payment_id = pay.id AND e.kind = 'capture' AND a.kind = 'wallet' LIMIT 1));
-- name: refunds_differ_from_payment
SELECT pay.id FROM payments pay LEFT JOIN (SELECT payment_id, sum(amount_minor) AS total FROM refunds GROUP BY payment_id) r
    ON r.payment_id = pay.id WHERE COALESCE(r.total, 0) <> pay.refunded_minor;
-- name: uncaptured_state_with_money
SELECT id FROM payments WHERE status IN ('requires_payment_method', 'requires_action', 'canceled', 'expired') AND captured_minor <> 0;
-- name: refund_fee_postings
SELECT r.payment_id FROM (SELECT payment_id, sum(fee_back_minor) AS fee_back FROM refunds GROUP BY payment_id) r
  LEFT JOIN (SELECT e.payment_id, sum(p.amount_minor) AS fee_posted FROM journal_entries e
          JOIN postings p ON p.entry_id = e.id JOIN accounts a ON a.id = p.account_id
         WHERE e.kind = 'refund' AND a.kind = 'fees' GROUP BY e.payment_id) f ON f.payment_id = r.payment_id
 WHERE COALESCE(-f.fee_posted, 0) <> r.fee_back;
-- name: webhook_delivery_of_another_merchant
SELECT d.id FROM webhook_deliveries d JOIN events ev ON ev.id = d.event_id JOIN webhook_endpoints e ON e.id = d.endpoint_id
 WHERE ev.merchant_id IS DISTINCT FROM d.merchant_id OR e.merchant_id <> d.merchant_id;
-- name: webhook_delivered_without_a_2xx
SELECT d.id FROM webhook_deliveries d
 WHERE d.status = 'succeeded'
   AND NOT EXISTS (SELECT 1 FROM webhook_attempts a WHERE a.delivery_id = d.id AND a.status_code BETWEEN 200 AND 299);
-- name: recon_match_unbalanced
SELECT i.match_id, sum(i.amount_minor) FILTER (WHERE i.side = 'bank') AS bank,
       sum(i.amount_minor) FILTER (WHERE i.side <> 'bank') AS expected_and_written_off
  FROM recon_match_items i WHERE i.active GROUP BY i.match_id
HAVING COALESCE(sum(i.amount_minor) FILTER (WHERE i.side = 'bank'), 0)
    <> COALESCE(sum(i.amount_minor) FILTER (WHERE i.side <> 'bank'), 0);
-- name: recon_bank_item_amount_differs
SELECT i.id FROM recon_match_items i JOIN bank_entries b ON b.id = i.bank_entry_id
 WHERE i.active AND i.amount_minor <> CASE b.direction WHEN 'CRDT' THEN b.amount_minor ELSE -b.amount_minor END;
-- name: recon_bank_entry_matched_flag
SELECT b.id FROM bank_entries b
 WHERE b.matched <> EXISTS (SELECT 1 FROM recon_match_items i WHERE i.active AND i.side = 'bank' AND i.bank_entry_id = b.id);
-- name: recon_transfer_item_amount_differs
SELECT i.id FROM recon_match_items i JOIN transfers t ON t.id = i.expected_id AND t.kind = i.expected_kind
 WHERE i.active AND i.amount_minor <> CASE t.kind WHEN 'top_up' THEN t.amount_minor ELSE -t.amount_minor END;
-- name: recon_transfer_reconciled_flag
SELECT t.id FROM transfers t
 WHERE (t.reconciled_at IS NOT NULL) <> EXISTS (SELECT 1 FROM recon_match_items i
        WHERE i.active AND i.side = 'expected' AND i.expected_kind = t.kind AND i.expected_id = t.id);
-- name: write_off_balance_differs_from_write_offs
SELECT c.currency, COALESCE(l.total, 0) AS ledger, COALESCE(w.total, 0) AS written_off
  FROM (SELECT currency FROM accounts WHERE kind = 'write_off' UNION SELECT currency FROM recon_matches) c
  LEFT JOIN (SELECT a.currency, sum(p.amount_minor) AS total FROM postings p JOIN accounts a ON a.id = p.account_id
              WHERE a.kind = 'write_off' GROUP BY a.currency) l ON l.currency = c.currency
  LEFT JOIN (SELECT m.currency, sum(i.amount_minor) AS total FROM recon_match_items i JOIN recon_matches m ON m.id = i.match_id
              WHERE i.active AND i.side = 'write_off' GROUP BY m.currency) w ON w.currency = c.currency
 WHERE COALESCE(l.total, 0) <> COALESCE(w.total, 0);
-- name: settlement_batch_differs_from_its_entries
SELECT b.id FROM settlement_batches b
  LEFT JOIN (SELECT batch_id, count(*) FILTER (WHERE kind = 'capture') AS captures, count(*) FILTER (WHERE kind = 'refund') AS refunds,
                    COALESCE(sum(amount_minor) FILTER (WHERE kind = 'capture'), 0) AS captured,
                    COALESCE(sum(amount_minor) FILTER (WHERE kind = 'refund'), 0) AS refunded,
                    COALESCE(sum(fee_minor) FILTER (WHERE kind = 'capture'), 0) - COALESCE(sum(fee_minor) FILTER (WHERE kind = 'refund'), 0) AS fee,
                    COALESCE(sum(cashback_minor) FILTER (WHERE kind = 'capture'), 0)
                    - COALESCE(sum(cashback_minor) FILTER (WHERE kind = 'refund'), 0) AS cashback,
                    sum(net_minor) AS net
               FROM settlement_lines WHERE batch_id IS NOT NULL GROUP BY batch_id) l ON l.batch_id = b.id
 WHERE (COALESCE(l.captures, 0), COALESCE(l.refunds, 0), COALESCE(l.captured, 0), COALESCE(l.refunded, 0), COALESCE(l.fee, 0),
        COALESCE(l.cashback, 0), COALESCE(l.net, 0) + b.carry_in_minor)
       IS DISTINCT FROM (b.capture_count::int8, b.refund_count::int8, b.captured_minor::numeric, b.refunded_minor::numeric,
                         b.fee_minor::numeric, b.cashback_minor::numeric, b.net_minor::numeric);
-- name: settlement_line_differs_from_its_merchant_postings
-- What settlement counts of an entry (its line's net: gross - fee - the merchant's cashback, signed) is
-- exactly what the entry posted to its own merchant's receivable in its currency, so a batch's payout is
-- what the ledger says the merchant is owed, entry by entry.
SELECT l.entry_id, l.net_minor, x.posted
  FROM settlement_lines l
  LEFT JOIN (SELECT p.entry_id, sum(p.amount_minor) AS posted, min(a.owner_id::text) AS owner_min,
                    max(a.owner_id::text) AS owner_max, min(a.currency) AS currency_min, max(a.currency) AS currency_max
               FROM postings p JOIN accounts a ON a.id = p.account_id JOIN journal_entries e ON e.id = p.entry_id
              WHERE a.kind = 'merchant_receivable' AND e.kind IN ('capture', 'refund') GROUP BY p.entry_id) x
    ON x.entry_id = l.entry_id
 WHERE COALESCE(x.posted, 0) <> l.net_minor
    OR x.owner_min <> l.merchant_id::text OR x.owner_max <> l.merchant_id::text
    OR x.currency_min <> l.currency OR x.currency_max <> l.currency;
-- name: entry_settled_by_a_wrong_batch
SELECT l.entry_id FROM settlement_lines l LEFT JOIN settlement_batches b ON b.id = l.batch_id
 WHERE l.batch_id IS NOT NULL AND (b.id IS NULL OR b.merchant_id <> l.merchant_id OR b.currency <> l.currency OR l.created_at >= b.window_end);
-- name: entry_unsettled_before_a_closed_cutoff
SELECT l.entry_id, l.created_at FROM settlement_lines l
 WHERE l.batch_id IS NULL AND EXISTS (SELECT 1 FROM settlement_batches b WHERE b.merchant_id = l.merchant_id
                                         AND b.currency = l.currency AND b.window_end > l.created_at);
-- name: carry_over_not_carried
SELECT id FROM (SELECT id, carry_in_minor, lag(carry_out_minor, 1, 0::int8) OVER (PARTITION BY merchant_id, currency ORDER BY business_date) AS carried
                  FROM settlement_batches) b WHERE carry_in_minor <> carried;
-- name: merchant_receivable_differs_from_unsettled
SELECT a.id, bal.posted, COALESCE(u.net, 0) + COALESCE(c.carry_out_minor, 0) AS unsettled
  FROM accounts a
  JOIN (SELECT account_id, sum(posted_minor) AS posted FROM balances GROUP BY account_id) bal ON bal.account_id = a.id
  LEFT JOIN (SELECT merchant_id, currency, sum(net_minor) AS net FROM settlement_lines WHERE batch_id IS NULL GROUP BY merchant_id, currency) u
    ON u.merchant_id = a.owner_id AND u.currency = a.currency
  LEFT JOIN (SELECT DISTINCT ON (merchant_id, currency) merchant_id, currency, carry_out_minor FROM settlement_batches
              ORDER BY merchant_id, currency, business_date DESC) c ON c.merchant_id = a.owner_id AND c.currency = a.currency
 WHERE a.kind = 'merchant_receivable' AND bal.posted <> COALESCE(u.net, 0) + COALESCE(c.carry_out_minor, 0);
-- name: unearned_fees_differ_from_unsettled
SELECT a.id, bal.posted, COALESCE(u.fee, 0) AS unsettled
  FROM accounts a
  JOIN (SELECT account_id, sum(posted_minor) AS posted FROM balances GROUP BY account_id) bal ON bal.account_id = a.id
  LEFT JOIN (SELECT currency, sum(CASE WHEN kind = 'capture' THEN fee_minor ELSE -fee_minor END) AS fee FROM settlement_lines
              WHERE batch_id IS NULL GROUP BY currency) u ON u.currency = a.currency
 WHERE a.kind = 'fees' AND bal.posted <> COALESCE(u.fee, 0);
-- name: revenue_differs_from_batch_fees
SELECT a.id, bal.posted, COALESCE(f.fee, 0) AS batch_fees
  FROM accounts a
  JOIN (SELECT account_id, sum(posted_minor) AS posted FROM balances GROUP BY account_id) bal ON bal.account_id = a.id
  LEFT JOIN (SELECT currency, sum(fee_minor) AS fee FROM settlement_batches GROUP BY currency) f ON f.currency = a.currency
 WHERE a.kind = 'revenue' AND bal.posted <> COALESCE(f.fee, 0);
-- name: merchant_payable_differs_from_unpaid_payouts
SELECT a.id, bal.posted, COALESCE(p.unpaid, 0) AS unpaid
  FROM accounts a
  JOIN (SELECT account_id, sum(posted_minor) AS posted FROM balances GROUP BY account_id) bal ON bal.account_id = a.id
  LEFT JOIN (SELECT merchant_id, currency, sum(amount_minor) AS unpaid FROM payouts WHERE status IN ('pending', 'failed')
              GROUP BY merchant_id, currency) p ON p.merchant_id = a.owner_id AND p.currency = a.currency
 WHERE a.kind = 'merchant_payable' AND bal.posted <> COALESCE(p.unpaid, 0);
-- name: batch_payout_mismatch
SELECT b.id FROM settlement_batches b LEFT JOIN payouts p ON p.batch_id = b.id
 WHERE (b.payout_minor > 0) <> (p.id IS NOT NULL)
    OR p.amount_minor <> b.payout_minor OR p.currency <> b.currency OR p.merchant_id <> b.merchant_id
    OR (b.status = 'paid' AND p.status IS DISTINCT FROM 'paid' AND p.status IS DISTINCT FROM 'reconciled')
    OR (b.status = 'closed' AND p.status IN ('paid', 'reconciled'));
-- name: settlement_entry_differs_from_batch
SELECT b.id FROM settlement_batches b
  LEFT JOIN (SELECT e.batch_id, count(DISTINCT e.id) AS entries,
                    COALESCE(sum(p.amount_minor) FILTER (WHERE a.kind = 'merchant_payable'), 0) AS payable,
                    COALESCE(sum(p.amount_minor) FILTER (WHERE a.kind = 'revenue'), 0) AS revenue
               FROM journal_entries e JOIN postings p ON p.entry_id = e.id JOIN accounts a ON a.id = p.account_id
              WHERE e.kind = 'settlement' GROUP BY e.batch_id) s ON s.batch_id = b.id
 WHERE COALESCE(s.entries, 0) <> CASE WHEN b.payout_minor = 0 AND b.fee_minor = 0 THEN 0 ELSE 1 END
    OR COALESCE(s.payable, 0) <> b.payout_minor OR COALESCE(s.revenue, 0) <> b.fee_minor
UNION ALL
SELECT e.batch_id FROM journal_entries e LEFT JOIN settlement_batches b ON b.id = e.batch_id WHERE e.kind = 'settlement' AND b.id IS NULL;
-- name: payout_cleared_differs_from_status
SELECT p.id FROM payouts p
  LEFT JOIN (SELECT e.payout_id, sum(po.amount_minor) AS cleared FROM journal_entries e JOIN postings po ON po.entry_id = e.id
               JOIN accounts a ON a.id = po.account_id WHERE e.payout_id IS NOT NULL AND a.kind = 'clearing' GROUP BY e.payout_id) x
    ON x.payout_id = p.id
 WHERE COALESCE(x.cleared, 0) <> CASE WHEN p.status IN ('paid', 'reconciled') THEN p.amount_minor ELSE 0 END;
-- name: recon_payout_item_amount_differs
SELECT i.id FROM recon_match_items i JOIN payouts p ON p.id = i.expected_id AND i.expected_kind = 'payout'
 WHERE i.active AND i.amount_minor <> -p.amount_minor;
-- name: recon_payout_reconciled_flag
SELECT p.id FROM payouts p
 WHERE (p.status = 'reconciled') <> EXISTS (SELECT 1 FROM recon_match_items i
        WHERE i.active AND i.side = 'expected' AND i.expected_kind = 'payout' AND i.expected_id = p.id);
-- name: batch_reconciled_differs_from_its_payout
SELECT b.id FROM settlement_batches b LEFT JOIN payouts p ON p.batch_id = b.id
 WHERE (b.status = 'reconciled') <> (p.status IS NOT DISTINCT FROM 'reconciled');
-- name: promotions_account_differs_from_benefits
SELECT c.currency, COALESCE(l.total, 0) AS ledger, COALESCE(b.net, 0) + COALESCE(k.net, 0) - COALESCE(g.total, 0) AS benefits_net
  FROM (SELECT currency FROM accounts WHERE kind = 'promotions' UNION SELECT currency FROM payments WHERE discount_funded_by = 'bank'
        UNION SELECT currency FROM payments WHERE cashback_minor > 0 UNION SELECT currency FROM promotion_gifts) c
  LEFT JOIN (SELECT a.currency, sum(p.amount_minor) AS total FROM postings p JOIN accounts a ON a.id = p.account_id
              WHERE a.kind = 'promotions' GROUP BY a.currency) l ON l.currency = c.currency
  LEFT JOIN (SELECT currency, sum(discount_clawed_back_minor - discount_minor) AS net FROM payments
              WHERE discount_funded_by = 'bank' GROUP BY currency) b ON b.currency = c.currency
  LEFT JOIN (SELECT currency, sum(cashback_clawed_back_minor - cashback_minor) AS net FROM payments
              WHERE cashback_funded_by = 'bank' GROUP BY currency) k ON k.currency = c.currency
  LEFT JOIN (SELECT currency, sum(amount_minor) AS total FROM promotion_gifts GROUP BY currency) g ON g.currency = c.currency
 WHERE COALESCE(l.total, 0) <> COALESCE(b.net, 0) + COALESCE(k.net, 0) - COALESCE(g.total, 0);
-- name: payment_promotion_postings
SELECT pay.id, pay.discount_minor, pay.discount_clawed_back_minor, pay.cashback_clawed_back_minor, COALESCE(x.promo, 0) AS posted,
       r.clawed AS refunds_clawed, r.cashback_clawed AS refunds_cashback_clawed
  FROM payments pay
  LEFT JOIN (SELECT e.payment_id, sum(p.amount_minor) AS promo FROM journal_entries e JOIN postings p ON p.entry_id = e.id
               JOIN accounts a ON a.id = p.account_id
              WHERE a.kind = 'promotions' AND e.payment_id IS NOT NULL AND e.kind IN ('capture', 'refund')
              GROUP BY e.payment_id) x ON x.payment_id = pay.id
  LEFT JOIN (SELECT payment_id, sum(discount_clawed_back_minor) AS clawed, sum(cashback_clawed_back_minor) AS cashback_clawed
               FROM refunds GROUP BY payment_id) r ON r.payment_id = pay.id
 WHERE COALESCE(x.promo, 0) <> CASE WHEN pay.discount_funded_by = 'bank' THEN pay.discount_clawed_back_minor - pay.discount_minor ELSE 0 END
                               + CASE WHEN pay.cashback_funded_by = 'bank' THEN pay.cashback_clawed_back_minor ELSE 0 END
    OR COALESCE(r.clawed, 0) <> pay.discount_clawed_back_minor
    OR COALESCE(r.cashback_clawed, 0) <> pay.cashback_clawed_back_minor
    OR (pay.discount_funded_by = 'merchant' AND pay.discount_clawed_back_minor <> 0);
-- name: cashback_differs_from_its_entry
SELECT pay.id, pay.cashback_minor, x.entries, x.wallet, x.promo, x.others
  FROM payments pay
  LEFT JOIN (SELECT e.payment_id, count(DISTINCT e.id) AS entries,
                    sum(p.amount_minor) FILTER (WHERE a.kind = 'wallet') AS wallet,
                    sum(p.amount_minor) FILTER (WHERE a.kind = 'promotions') AS promo,
                    count(*) FILTER (WHERE a.kind NOT IN ('wallet', 'promotions')) AS others,
                    count(DISTINCT a.id) FILTER (WHERE a.kind = 'wallet') AS wallets,
                    min(a.owner_id::text) FILTER (WHERE a.kind = 'wallet') AS owner
               FROM journal_entries e JOIN postings p ON p.entry_id = e.id JOIN accounts a ON a.id = p.account_id
              WHERE e.kind = 'cashback' GROUP BY e.payment_id) x ON x.payment_id = pay.id
 WHERE (pay.cashback_funded_by = 'bank' OR x.payment_id IS NOT NULL)
   AND (pay.cashback_funded_by IS DISTINCT FROM 'bank' OR x.entries IS DISTINCT FROM 1 OR x.wallet IS DISTINCT FROM pay.cashback_minor OR x.promo IS DISTINCT FROM -pay.cashback_minor
        OR x.others <> 0 OR x.wallets <> 1 OR x.owner IS DISTINCT FROM pay.payer_id::text
        OR pay.cashback_minor > pay.captured_minor)
UNION ALL
SELECT e.payment_id, NULL, count(*), NULL, NULL, NULL FROM journal_entries e WHERE e.kind = 'cashback' AND e.payment_id IS NULL
 GROUP BY e.payment_id;
-- name: merchant_cashback_differs_from_its_capture
-- A merchant-funded cashback is paid inside its capture's entry: the merchant's receivable debited exactly
-- cashback_minor (beside its credit of captured - fee, which it never exceeds) and the payer's wallet
-- credited exactly that (beside its debit of what was captured), with no 'cashback' entry and nothing of the
-- promotions account; any other capture has neither leg. Its refunds give it back to the merchant: each
-- refund entry credits the merchant its clawback beside the debit of amount - fee given back.
SELECT pay.id, pay.cashback_minor, pay.cashback_funded_by, x.wallet_credit, x.merchant_debit, x.merchant_credit
  FROM payments pay
  JOIN (SELECT e.payment_id,
               COALESCE(sum(p.amount_minor) FILTER (WHERE a.kind = 'wallet' AND p.amount_minor > 0), 0) AS wallet_credit,
               COALESCE(sum(p.amount_minor) FILTER (WHERE a.kind = 'merchant_receivable' AND p.amount_minor < 0), 0)
                   AS merchant_debit,
               COALESCE(sum(p.amount_minor) FILTER (WHERE a.kind = 'merchant_receivable' AND p.amount_minor > 0), 0)
                   AS merchant_credit,
               count(*) FILTER (WHERE a.kind = 'promotions') AS promo,
               min(a.owner_id::text) FILTER (WHERE a.kind = 'wallet') AS wallet_min,
               max(a.owner_id::text) FILTER (WHERE a.kind = 'wallet') AS wallet_max
          FROM journal_entries e JOIN postings p ON p.entry_id = e.id JOIN accounts a ON a.id = p.account_id
         WHERE e.kind = 'capture' AND e.payment_id IS NOT NULL GROUP BY e.payment_id) x ON x.payment_id = pay.id
 WHERE x.wallet_credit <> CASE WHEN pay.cashback_funded_by = 'merchant' THEN pay.cashback_minor ELSE 0 END
    OR x.merchant_debit <> -x.wallet_credit OR x.merchant_credit <> pay.captured_minor - pay.fee_minor
    OR x.wallet_min IS DISTINCT FROM pay.payer_id::text OR x.wallet_max IS DISTINCT FROM pay.payer_id::text
    OR (pay.cashback_funded_by = 'merchant' AND (x.promo <> 0 OR pay.cashback_minor > pay.captured_minor - pay.fee_minor
        OR EXISTS (SELECT 1 FROM journal_entries c WHERE c.payment_id = pay.id AND c.kind = 'cashback')))
UNION ALL
SELECT pay.id, pay.cashback_minor, pay.cashback_funded_by, NULL, NULL, y.merchant_credit
  FROM payments pay
  JOIN (SELECT r.payment_id,
               COALESCE(sum(p.amount_minor) FILTER (WHERE a.kind = 'merchant_receivable' AND p.amount_minor > 0), 0)
                   AS merchant_credit
          FROM refunds r JOIN journal_entries e ON e.refund_id = r.id AND e.kind = 'refund'
          JOIN postings p ON p.entry_id = e.id JOIN accounts a ON a.id = p.account_id
         GROUP BY r.payment_id) y ON y.payment_id = pay.id
 WHERE y.merchant_credit <> CASE WHEN pay.cashback_funded_by = 'merchant' THEN pay.cashback_clawed_back_minor ELSE 0 END;
-- name: gifts_differ_from_their_entries
SELECT COALESCE(g.holder_id, x.holder_id) AS holder_id, COALESCE(g.currency, x.currency) AS currency,
       g.gifts, g.total, x.entries, x.total AS posted
  FROM (SELECT holder_id, currency, count(*) AS gifts, sum(amount_minor) AS total FROM promotion_gifts GROUP BY holder_id, currency) g
  FULL JOIN (SELECT a.owner_id AS holder_id, a.currency, count(DISTINCT e.id) AS entries, sum(p.amount_minor) AS total
               FROM journal_entries e JOIN postings p ON p.entry_id = e.id JOIN accounts a ON a.id = p.account_id
              WHERE e.kind = 'gift' AND a.kind = 'wallet' GROUP BY a.owner_id, a.currency) x
    ON x.holder_id = g.holder_id AND x.currency = g.currency
 WHERE g.gifts IS DISTINCT FROM x.entries OR g.total IS DISTINCT FROM x.total
UNION ALL
SELECT NULL, NULL, NULL, NULL, count(*), NULL FROM (
    SELECT e.id FROM journal_entries e JOIN postings p ON p.entry_id = e.id JOIN accounts a ON a.id = p.account_id
     WHERE e.kind = 'gift' GROUP BY e.id
    HAVING count(*) <> 2 OR count(*) FILTER (WHERE a.kind = 'wallet') <> 1 OR count(*) FILTER (WHERE a.kind = 'promotions') <> 1) bad
HAVING count(*) > 0;
-- name: first_payment_gift_not_the_first
SELECT g.id, g.holder_id, g.payment_id FROM promotion_gifts g JOIN payments pay ON pay.id = g.payment_id
 WHERE g.kind = 'first_payment'
   AND (pay.payer_id <> g.holder_id OR pay.captured_minor = 0
        OR NOT EXISTS (SELECT 1 FROM journal_entries e WHERE e.payment_id = g.payment_id AND e.kind = 'gift'));
-- name: campaign_over_budget_or_places
SELECT c.id, c.budget_minor, k.spent_minor, c.places_max, k.places_taken, COALESCE(g.granted, 0) AS granted,
       COALESCE(g.payments, 0) AS payments
  FROM campaigns c
  JOIN (SELECT campaign_id, sum(spent_minor) AS spent_minor, sum(places_taken) AS places_taken
          FROM campaign_shards GROUP BY campaign_id) k ON k.campaign_id = c.id
  LEFT JOIN (SELECT campaign_id, sum(granted) AS granted, sum(uses) AS payments, sum(clawed) AS clawed FROM (
               SELECT campaign_id, discount_minor AS granted, 1 AS uses, discount_clawed_back_minor AS clawed
                 FROM payments WHERE campaign_id IS NOT NULL
               UNION ALL
               SELECT cashback_campaign_id, cashback_minor, 1, cashback_clawed_back_minor
                 FROM payments WHERE cashback_campaign_id IS NOT NULL
               UNION ALL
               SELECT campaign_id, amount_minor, 1, 0 FROM promotion_gifts
               UNION ALL  -- a manual authorisation's discount, reserved while it is open (migration 0031)
               SELECT reserved_campaign_id, discount_reserved_minor, 1, 0
                 FROM payments WHERE reserved_campaign_id IS NOT NULL AND status = 'requires_capture'
               ) b GROUP BY campaign_id) g ON g.campaign_id = c.id
 WHERE k.spent_minor > c.budget_minor OR k.places_taken > COALESCE(c.places_max, k.places_taken)
    OR k.spent_minor <> COALESCE(g.granted, 0) OR k.places_taken <> COALESCE(g.payments, 0)
    OR c.clawed_back_minor <> COALESCE(g.clawed, 0) OR c.clawed_back_minor > k.spent_minor;
-- name: campaign_shards_add_up
-- A campaign's counter rows (migration 0026) hold exactly its budget and places, and are closed exactly
-- when it was ended; a campaign without rows could never be taken from (nor checked above).
SELECT c.id, c.budget_minor, k.budget_minor AS rows_budget, c.places_max, k.places_max AS rows_places,
       c.ended_at, k.closed, k.open
  FROM campaigns c
  LEFT JOIN (SELECT campaign_id, sum(budget_minor) AS budget_minor, sum(places_max) AS places_max,
                    count(*) FILTER (WHERE places_max IS NULL) AS unlimited, count(*) AS rows,
                    count(*) FILTER (WHERE closed) AS closed, count(*) FILTER (WHERE NOT closed) AS open
               FROM campaign_shards GROUP BY campaign_id) k ON k.campaign_id = c.id
 WHERE k.campaign_id IS NULL OR k.budget_minor <> c.budget_minor
    OR (c.places_max IS NULL AND k.unlimited <> k.rows)
    OR (c.places_max IS NOT NULL AND (k.unlimited <> 0 OR k.places_max <> c.places_max))
    OR (c.ended_at IS NULL AND k.closed <> 0) OR (c.ended_at IS NOT NULL AND k.open <> 0);
-- name: campaign_holder_over_limit
SELECT COALESCE(u.campaign_id, g.campaign_id) AS campaign_id, COALESCE(u.holder_id, g.payer_id) AS holder_id,
       COALESCE(u.uses, 0) AS uses, COALESCE(g.payments, 0) AS payments
  FROM campaign_uses u
  FULL JOIN (SELECT campaign_id, payer_id, count(*) AS payments FROM (
               SELECT campaign_id, payer_id FROM payments WHERE campaign_id IS NOT NULL
               UNION ALL
               SELECT cashback_campaign_id, payer_id FROM payments WHERE cashback_campaign_id IS NOT NULL
               UNION ALL
               SELECT campaign_id, holder_id FROM promotion_gifts
               UNION ALL
               SELECT reserved_campaign_id, payer_id FROM payments
                WHERE reserved_campaign_id IS NOT NULL AND status = 'requires_capture') b
              GROUP BY campaign_id, payer_id) g ON g.campaign_id = u.campaign_id AND g.payer_id = u.holder_id
  LEFT JOIN campaigns c ON c.id = COALESCE(u.campaign_id, g.campaign_id)
 WHERE COALESCE(u.uses, 0) > COALESCE(c.per_holder_max, COALESCE(u.uses, 0))
    -- uses are counted where there is a limit (gifts: one); without, a row left from before 0026 counts fewer
    OR (CASE WHEN c.per_holder_max IS NOT NULL OR c.rule IN ('gift_registration', 'gift_first_payment')
             THEN COALESCE(u.uses, 0) <> COALESCE(g.payments, 0) ELSE COALESCE(u.uses, 0) > COALESCE(g.payments, 0) END)
    OR (c.rule IN ('gift_registration', 'gift_first_payment') AND COALESCE(u.uses, 0) > 1);
-- name: reserved_discount_differs_from_its_capture
-- A discount a manual authorisation reserved (migration 0031) is its campaign's, of its campaign's funder, and
-- held back from the wallet's hold (hold_differs_from_authorizations); while the authorisation is open nothing
-- is granted or captured. Its capture of c of the authorised amount A keeps exactly floor(reserved * c / A)
-- as the payment's discount (c is what was captured, plus the kept discount when the merchant funds it: it
-- sold for less), from the same campaign and funder; a share of 0 keeps no campaign. A cancelled or expired
-- authorisation keeps nothing. (What is given back is what the counter rows no longer count:
-- campaign_over_budget_or_places.)
SELECT pay.id, pay.status, pay.discount_reserved_minor, pay.discount_minor, pay.captured_minor, pay.authorized_minor
  FROM payments pay LEFT JOIN campaigns c ON c.id = pay.reserved_campaign_id
 WHERE pay.reserved_campaign_id IS NOT NULL
   AND NOT COALESCE(c.funded_by = pay.reserved_funded_by AND c.rule IN ('percent', 'fixed')
       AND pay.authorized_minor = pay.amount_minor AND CASE
         WHEN pay.status = 'requires_capture' THEN pay.campaign_id IS NULL AND pay.captured_minor = 0
         WHEN pay.status = 'succeeded' THEN
              pay.discount_minor = div(pay.discount_reserved_minor::numeric
                                       * (pay.captured_minor + CASE WHEN pay.reserved_funded_by = 'merchant'
                                                                    THEN pay.discount_minor ELSE 0 END),
                                       pay.authorized_minor)
              AND (CASE WHEN pay.discount_minor = 0 THEN pay.campaign_id IS NULL
                        ELSE pay.campaign_id = pay.reserved_campaign_id
                             AND pay.discount_funded_by = pay.reserved_funded_by END)
         WHEN pay.status IN ('canceled', 'expired') THEN pay.campaign_id IS NULL AND pay.discount_minor = 0
         ELSE false END, false);
-- name: conversion_differs_from_its_entry
SELECT c.id FROM conversions c
  CROSS JOIN LATERAL (
    SELECT count(DISTINCT e.id) AS entries,
           COALESCE(sum(p.amount_minor) FILTER (WHERE a.kind = 'wallet' AND a.owner_id = c.holder_id AND a.currency = c.from_currency), 0) AS wallet_from,
           COALESCE(sum(p.amount_minor) FILTER (WHERE a.kind = 'fx_position' AND a.currency = c.from_currency), 0) AS position_from,
           COALESCE(sum(p.amount_minor) FILTER (WHERE a.kind = 'fx_position' AND a.currency = c.to_currency), 0) AS position_to,
           COALESCE(sum(p.amount_minor) FILTER (WHERE a.kind = 'wallet' AND a.owner_id = c.holder_id AND a.currency = c.to_currency), 0) AS wallet_to,
           COALESCE(sum(p.amount_minor) FILTER (WHERE a.kind = 'fx_fees' AND a.currency = c.to_currency), 0) AS fees_to,
           count(p.id) FILTER (WHERE NOT ((a.kind = 'wallet' AND a.owner_id = c.holder_id OR a.kind = 'fx_position')
                                          AND a.currency IN (c.from_currency, c.to_currency)
                                       OR a.kind = 'fx_fees' AND a.currency = c.to_currency)) AS others
      FROM journal_entries e JOIN postings p ON p.entry_id = e.id JOIN accounts a ON a.id = p.account_id
     WHERE e.conversion_id = c.id AND e.kind = 'conversion') x
 WHERE x.entries <> 1 OR x.wallet_from <> -c.sell_minor OR x.position_from <> c.sell_minor
    OR x.position_to <> -(c.receive_minor + c.fee_minor) OR x.wallet_to <> c.receive_minor OR x.fees_to <> c.fee_minor
    OR x.others <> 0
UNION ALL
SELECT e.conversion_id FROM journal_entries e LEFT JOIN conversions c ON c.id = e.conversion_id
 WHERE (e.kind IN ('conversion', 'conversion_return') OR e.conversion_id IS NOT NULL)
   AND (c.id IS NULL OR e.kind NOT IN ('conversion', 'conversion_return'));
-- name: conversion_differs_from_its_quote
SELECT q.id FROM fx_quotes q LEFT JOIN conversions c ON c.quote_id = q.id
 WHERE (q.conversion_id IS NULL) <> (c.id IS NULL) OR q.conversion_id <> c.id
    OR (c.holder_id, c.from_currency, c.to_currency, c.sell_minor, c.receive_minor, c.fee_minor)
       <> (q.holder_id, q.from_currency, q.to_currency, q.sell_minor, q.receive_minor, q.fee_minor)
    OR c.created_at > q.expires_at;
-- name: quote_differs_from_its_rate
SELECT q.id FROM fx_quotes q JOIN fx_rates r ON r.id = q.rate_id
  CROSS JOIN LATERAL (SELECT q.sell_minor * q.customer_rate * power(10::numeric, q.to_exponent - q.from_exponent) AS gross) g
 WHERE (r.base, r.quote) NOT IN ((q.from_currency, q.to_currency), (q.to_currency, q.from_currency))
    OR q.spread_bps <> r.spread_bps
    OR q.mid_rate <> CASE WHEN r.base = q.from_currency THEN r.rate ELSE trunc(1::numeric(60, 40) / r.rate, 18) END
    OR q.customer_rate <> q.mid_rate * (10000 - q.spread_bps) * 0.0001
    OR q.fee_minor <> ceil(g.gross * q.fee_bps * 0.0001)
    OR q.receive_minor <> floor(g.gross) - q.fee_minor
    OR q.receive_minor + q.fee_minor > g.gross;
-- name: fx_position_differs_from_conversions
-- What conversions sold into the position less what they bought out of it, net of what returns gave back
-- (a return sells the target back to the position and buys the source out of it).
SELECT a.id, bal.posted, COALESCE(s.sold, 0) - COALESCE(b.bought, 0) AS conversions
  FROM accounts a
  JOIN (SELECT account_id, sum(posted_minor) AS posted FROM balances GROUP BY account_id) bal ON bal.account_id = a.id
  LEFT JOIN (SELECT from_currency AS currency, sum(sell_minor - returned_source_minor) AS sold FROM conversions
              GROUP BY from_currency) s ON s.currency = a.currency
  LEFT JOIN (SELECT to_currency AS currency, sum(receive_minor + fee_minor - returned_minor - returned_fee_minor) AS bought
               FROM conversions GROUP BY to_currency) b
    ON b.currency = a.currency
 WHERE a.kind = 'fx_position' AND bal.posted <> COALESCE(s.sold, 0) - COALESCE(b.bought, 0);
-- name: fx_fees_differ_from_conversions
SELECT a.id, bal.posted, COALESCE(f.fee, 0) AS fees
  FROM accounts a
  JOIN (SELECT account_id, sum(posted_minor) AS posted FROM balances GROUP BY account_id) bal ON bal.account_id = a.id
  LEFT JOIN (SELECT to_currency AS currency, sum(fee_minor - returned_fee_minor) AS fee FROM conversions GROUP BY to_currency) f
    ON f.currency = a.currency
 WHERE a.kind = 'fx_fees' AND bal.posted <> COALESCE(f.fee, 0);
-- name: conversion_return_differs_from_its_entries
-- A conversion's returns (kind 'conversion_return') move exactly its returned_* totals, each leg on its own
-- account, and those totals are the conversion's amounts times returned/received, rounded down.
SELECT c.id, c.returned_minor, c.returned_source_minor, c.returned_fee_minor
  FROM conversions c
  CROSS JOIN LATERAL (
    SELECT COALESCE(sum(p.amount_minor) FILTER (WHERE a.kind = 'wallet' AND a.owner_id = c.holder_id AND a.currency = c.to_currency), 0) AS wallet_to,
           COALESCE(sum(p.amount_minor) FILTER (WHERE a.kind = 'fx_fees' AND a.currency = c.to_currency), 0) AS fees_to,
           COALESCE(sum(p.amount_minor) FILTER (WHERE a.kind = 'fx_position' AND a.currency = c.to_currency), 0) AS position_to,
           COALESCE(sum(p.amount_minor) FILTER (WHERE a.kind = 'fx_position' AND a.currency = c.from_currency), 0) AS position_from,
           COALESCE(sum(p.amount_minor) FILTER (WHERE a.kind = 'wallet' AND a.owner_id = c.holder_id AND a.currency = c.from_currency), 0) AS wallet_from,
           count(p.id) FILTER (WHERE NOT ((a.kind = 'wallet' AND a.owner_id = c.holder_id OR a.kind = 'fx_position')
                                          AND a.currency IN (c.from_currency, c.to_currency)
                                       OR a.kind = 'fx_fees' AND a.currency = c.to_currency)) AS others
      FROM journal_entries e JOIN postings p ON p.entry_id = e.id JOIN accounts a ON a.id = p.account_id
     WHERE e.conversion_id = c.id AND e.kind = 'conversion_return') x
 WHERE x.wallet_to <> -c.returned_minor OR x.fees_to <> -c.returned_fee_minor
    OR x.position_to <> c.returned_minor + c.returned_fee_minor OR x.position_from <> -c.returned_source_minor
    OR x.wallet_from <> c.returned_source_minor OR x.others <> 0
    OR c.returned_source_minor <> div(c.sell_minor::numeric * c.returned_minor, c.receive_minor)
    OR c.returned_fee_minor <> div(c.fee_minor::numeric * c.returned_minor, c.receive_minor);
-- name: payment_conversion_differs_from_its_payment
-- A payment's conversion is its payer's, into the payment's currency, for at least what the payment took
-- from the wallet (the authorisation less a reserved discount, or less a bank-funded one granted with the
-- capture: the promotions account paid that part), made as it was paid; what it returned is what the refunds credited the wallet plus what
-- the payment released of its hold (the authorisation less the capture, once captured, cancelled or expired).
-- Every return entry is either a refund's (refund_id: a refund of that payment) or the release's
-- (refund_id NULL, payment_id the payment); each refund crediting something has exactly one, of exactly
-- what it credited, and a payment that released something has exactly one release return, of exactly that.
SELECT c.id, pay.id AS payment_id, c.returned_minor, COALESCE(r.credited, 0) + rel.released_minor AS given_back
  FROM conversions c JOIN payments pay ON pay.id = c.payment_id
  LEFT JOIN (SELECT payment_id, sum(amount_minor - discount_clawed_back_minor - cashback_clawed_back_minor) AS credited
              FROM refunds
              GROUP BY payment_id) r ON r.payment_id = pay.id
  CROSS JOIN LATERAL (SELECT CASE WHEN pay.status IN ('succeeded', 'canceled', 'expired')
                                  THEN pay.authorized_minor - pay.captured_minor ELSE 0 END AS released_minor) rel
 WHERE pay.payer_id IS DISTINCT FROM c.holder_id OR pay.currency <> c.to_currency
    OR c.receive_minor < pay.authorized_minor - CASE WHEN pay.discount_reserved_minor > 0 THEN pay.discount_reserved_minor
                                                     WHEN pay.discount_funded_by = 'bank' THEN pay.discount_minor ELSE 0 END
    OR pay.status = 'requires_payment_method'
    OR c.returned_minor <> COALESCE(r.credited, 0) + rel.released_minor
UNION ALL
SELECT c.id, COALESCE(e.refund_id, e.payment_id), NULL, NULL FROM journal_entries e JOIN conversions c ON c.id = e.conversion_id
  LEFT JOIN refunds r ON r.id = e.refund_id
 WHERE e.kind = 'conversion_return'
   AND NOT (e.refund_id IS NOT NULL AND e.payment_id IS NULL AND r.payment_id IS NOT DISTINCT FROM c.payment_id
            OR e.refund_id IS NULL AND e.payment_id IS NOT DISTINCT FROM c.payment_id)
UNION ALL
SELECT c.id, r.id, x.returns, x.wallet_to FROM refunds r JOIN conversions c ON c.payment_id = r.payment_id
  CROSS JOIN LATERAL (
    SELECT count(DISTINCT e.id) AS returns,
           COALESCE(sum(p.amount_minor) FILTER (WHERE a.kind = 'wallet' AND a.owner_id = c.holder_id AND a.currency = c.to_currency), 0) AS wallet_to
      FROM journal_entries e JOIN postings p ON p.entry_id = e.id JOIN accounts a ON a.id = p.account_id
     WHERE e.refund_id = r.id AND e.kind = 'conversion_return') x
 WHERE r.amount_minor - r.discount_clawed_back_minor - r.cashback_clawed_back_minor > 0
   AND (x.returns <> 1 OR -x.wallet_to <> r.amount_minor - r.discount_clawed_back_minor - r.cashback_clawed_back_minor)
UNION ALL
SELECT c.id, pay.id, x.returns, x.wallet_to FROM conversions c JOIN payments pay ON pay.id = c.payment_id
  CROSS JOIN LATERAL (SELECT CASE WHEN pay.status IN ('succeeded', 'canceled', 'expired')
                                  THEN pay.authorized_minor - pay.captured_minor ELSE 0 END AS released_minor) rel
  CROSS JOIN LATERAL (
    SELECT count(DISTINCT e.id) AS returns,
           COALESCE(sum(p.amount_minor) FILTER (WHERE a.kind = 'wallet' AND a.owner_id = c.holder_id AND a.currency = c.to_currency), 0) AS wallet_to
      FROM journal_entries e JOIN postings p ON p.entry_id = e.id JOIN accounts a ON a.id = p.account_id
     WHERE e.conversion_id = c.id AND e.kind = 'conversion_return' AND e.refund_id IS NULL) x
 WHERE x.returns <> CASE WHEN rel.released_minor > 0 THEN 1 ELSE 0 END OR -x.wallet_to <> rel.released_minor;
-- name: held_payment_differs_from_its_step_ups
-- A payment the risk rules held for its holder's step-ups (a pay-code charge, migration 0029) is its holder's
-- pay-code payment; it left requires_action by a confirmation (succeeded or requires_capture, or ended after
-- one) exactly when its held decision was answered, and then one 'allow' decision passed every step-up the
-- matched rules asked for; still waiting, or reversed unconfirmed, it has no 'allow' decision.
SELECT d.id, d.payment_id, p.status, d.step_up_used_at, allowed.n AS allowed
  FROM risk_decisions d
  LEFT JOIN payments p ON p.id = d.payment_id
  CROSS JOIN LATERAL (
      SELECT count(*) AS n,
             bool_and(a.passed @> ARRAY(
                 SELECT DISTINCT CASE r->>'outcome' WHEN 'require_pin' THEN 'pin' ELSE 'otp' END
                   FROM jsonb_array_elements(d.reasons) r
                  WHERE r->>'outcome' IN ('require_pin', 'require_otp'))) AS passed_all
        FROM risk_decisions a WHERE a.payment_id = d.payment_id AND a.outcome = 'allow') allowed
 WHERE d.held AND (p.id IS NULL OR p.payer_id IS DISTINCT FROM d.holder_id OR p.channel IS DISTINCT FROM 'pay_code'
    OR (d.step_up_used_at IS NULL) <> (allowed.n = 0)
    OR (d.step_up_used_at IS NOT NULL AND (allowed.n <> 1 OR NOT allowed.passed_all))
    OR (p.status = 'requires_action' AND d.step_up_used_at IS NOT NULL)
    OR (p.status IN ('succeeded', 'requires_capture') AND d.step_up_used_at IS NULL));

-- name: allow_decision_differs_from_its_payment
-- Every risk decision's holder exists (risk_decisions has no foreign key to wallet_holders since 0032), and an
-- 'allow' decision, written in its payment's transaction, names a payment that exists and was paid by the
-- decision's holder at the decision's merchant.
SELECT d.id, d.payment_id, d.holder_id, d.outcome
  FROM risk_decisions d
  LEFT JOIN payments p ON p.id = d.payment_id
 WHERE NOT EXISTS (SELECT 1 FROM wallet_holders w WHERE w.id = d.holder_id)
    OR (d.outcome = 'allow' AND (p.id IS NULL OR p.payer_id IS DISTINCT FROM d.holder_id
                                 OR p.merchant_id <> d.merchant_id));

-- name: pay_code_decision_names_another_device
-- A pay-code payment's risk decision written with it (its 'allow' or held decision, in the charge's transaction,
-- and the confirmation's 'allow' copied from the held one) names the device its code was issued to: the holder's
-- phone, never the counter's terminal. A refusal's decision is not checked: its charge rolled back, so its code
-- may be another than the one that paid the payment later. Decisions recorded before the device was passed on
-- have none.
SELECT d.id, d.payment_id, d.device_id, c.device_id AS code_device_id
  FROM pay_codes c
  JOIN risk_decisions d ON d.payment_id = c.payment_id AND d.channel = 'pay_code' AND (d.outcome = 'allow' OR d.held)
 WHERE d.device_id <> c.device_id;

-- name: money_out_decision_without_its_block
-- A withdrawal's or a conversion's risk decision (migration 0036: no payment, no merchant, a decline, by its
-- CHECK) was declined by the blocks alone, each concerning it (domain.risk.money_out): it has a reason, and
-- every reason names a rule of its kind that is a blocked_wallet of the decision's holder or a blocked_device
-- of the decision's device (rules are disabled, never deleted).
SELECT d.id, d.holder_id, d.channel, d.device_id, d.reasons
  FROM risk_decisions d
 WHERE d.channel IN ('withdrawal', 'conversion')
   AND (jsonb_array_length(d.reasons) = 0
        OR EXISTS (SELECT 1 FROM jsonb_array_elements(d.reasons) r
                    WHERE NOT EXISTS (SELECT 1 FROM risk_rules k
                                       WHERE 'rsk_' || replace(k.id::text, '-', '') = r->>'rule'
                                         AND k.kind = r->>'kind'
                                         AND CASE k.kind WHEN 'blocked_wallet' THEN k.holder_id = d.holder_id
                                                         WHEN 'blocked_device' THEN k.device_id = d.device_id
                                                         ELSE false END)));
