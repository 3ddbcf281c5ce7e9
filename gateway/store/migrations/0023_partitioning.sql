-- Events partitioned by month of created_at (native declarative partitioning), so that retention
-- drops a month at once instead of deleting row by row, and the hot partition's indexes stay small.
-- docs/scaling.md says why events only (idempotency keys' ON CONFLICT (principal, key) needs a
-- unique index without the partition key; payments and postings are never dropped) and why not
-- pg_partman. gateway/store/partitions.py keeps the months ahead and drops the expired ones.
--
-- A unique constraint on a partitioned table must include the partition key, so the primary key
-- becomes (seq, created_at) and events.id is unique with created_at (ids are random UUIDs the
-- gateway draws). A foreign key to a partitioned table must name such a constraint, so a webhook
-- delivery carries its event's created_at: it keeps the FK, lets a join prune to one partition,
-- and lets retention delete an expired month's deliveries before the month goes.

ALTER TABLE webhook_deliveries ADD COLUMN event_created_at timestamptz;
UPDATE webhook_deliveries d SET event_created_at = e.created_at FROM events e WHERE e.id = d.event_id;
ALTER TABLE webhook_deliveries ALTER COLUMN event_created_at SET NOT NULL,
                               DROP CONSTRAINT webhook_deliveries_event_id_fkey;
CREATE INDEX webhook_deliveries_event_created ON webhook_deliveries (event_created_at);

ALTER TABLE events RENAME TO events_unpartitioned;
ALTER SEQUENCE events_seq_seq OWNED BY NONE;  -- kept: seq goes on from where it was

CREATE TABLE events (LIKE events_unpartitioned INCLUDING DEFAULTS INCLUDING CONSTRAINTS,
                     PRIMARY KEY (seq, created_at), UNIQUE (id, created_at))
    PARTITION BY RANGE (created_at);
ALTER SEQUENCE events_seq_seq OWNED BY events.seq;

-- Months (UTC, named events_pYYYYMM as gateway/domain/partitions.py does) from the oldest event, or
-- 13 months back (the default retention: a row written with an old created_at has a home), to three
-- months ahead; the maintenance worker takes over from here.
DO $$
DECLARE
    month date := date_trunc('month', LEAST((SELECT min(created_at) FROM events_unpartitioned),
                                            now() - interval '400 days') AT TIME ZONE 'UTC')::date;
BEGIN
    WHILE month < (date_trunc('month', now() AT TIME ZONE 'UTC') + interval '4 months')::date LOOP
        EXECUTE format('CREATE TABLE %I PARTITION OF events FOR VALUES FROM (%L) TO (%L)',
                       'events_p' || to_char(month, 'YYYYMM'), month::text || ' 00:00:00+00',
                       (month + interval '1 month')::date::text || ' 00:00:00+00');
        month := (month + interval '1 month')::date;
    END LOOP;
END
$$;

INSERT INTO events SELECT * FROM events_unpartitioned;
DROP TABLE events_unpartitioned;

CREATE INDEX events_merchant ON events (merchant_id, seq DESC) WHERE merchant_id IS NOT NULL;
CREATE INDEX events_object ON events (object_id, seq);
CREATE INDEX events_merchant_created ON events (merchant_id, created_at DESC, seq DESC) WHERE merchant_id IS NOT NULL;

ALTER TABLE webhook_deliveries ADD CONSTRAINT webhook_deliveries_event_fkey
    FOREIGN KEY (event_id, event_created_at) REFERENCES events (id, created_at);

CREATE OR REPLACE FUNCTION webhook_fan_out() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF NEW.merchant_id IS NULL OR NOT NEW.deliverable THEN
        RETURN NULL;
    END IF;
    INSERT INTO webhook_deliveries (id, event_id, event_created_at, endpoint_id, merchant_id)
    SELECT gen_random_uuid(), NEW.id, NEW.created_at, e.id, NEW.merchant_id
      FROM webhook_endpoints e
     WHERE e.merchant_id = NEW.merchant_id AND e.status = 'enabled'
       AND ('*' = ANY (e.enabled_events) OR NEW.type = ANY (e.enabled_events));
    IF FOUND THEN
        -- One notification per transaction (PostgreSQL folds identical ones), sent at commit.
        PERFORM pg_notify('webhook_deliveries', '');
    END IF;
    RETURN NULL;
END
$$;

CREATE TRIGGER events_webhook_fan_out AFTER INSERT ON events FOR EACH ROW EXECUTE FUNCTION webhook_fan_out();
