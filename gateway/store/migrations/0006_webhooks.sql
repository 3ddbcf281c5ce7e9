-- Webhooks as a transactional outbox. An event row is written in the transaction of its change; a
-- trigger on events fans it out, in that same transaction, to one delivery per matching enabled
-- endpoint of the merchant, and NOTIFYs the workers (delivered only at commit). So a delivery exists
-- if and only if its event committed, and no event is missed by a worker that was down.
-- Endpoint secrets are stored encrypted (AES-GCM, key derived from the settings), never in clear.

CREATE TABLE webhook_endpoints (
    id                          uuid PRIMARY KEY,
    merchant_id                 uuid NOT NULL REFERENCES merchants (id),
    url                         text NOT NULL,
    description                 text,
    enabled_events              text[] NOT NULL CHECK (cardinality(enabled_events) >= 1),
    status                      text NOT NULL DEFAULT 'enabled' CHECK (status IN ('enabled', 'disabled')),
    disabled_reason             text,
    secret_sealed               bytea NOT NULL,
    previous_secret_sealed      bytea,
    previous_secret_expires_at  timestamptz,
    failing_since               timestamptz,
    created_at                  timestamptz NOT NULL DEFAULT now(),
    updated_at                  timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX webhook_endpoints_merchant ON webhook_endpoints (merchant_id, created_at DESC, id DESC);

CREATE TABLE webhook_deliveries (
    id               uuid PRIMARY KEY,
    event_id         uuid NOT NULL REFERENCES events (id),
    endpoint_id      uuid NOT NULL REFERENCES webhook_endpoints (id) ON DELETE CASCADE,
    merchant_id      uuid NOT NULL,
    status           text NOT NULL DEFAULT 'pending' CHECK (status IN ('pending', 'succeeded', 'failed')),
    attempt_count    integer NOT NULL DEFAULT 0,
    -- When the next attempt is due; while an attempt runs, the end of its lease (a worker that died
    -- mid-delivery leaves the row due again once the lease ends).
    next_attempt_at  timestamptz NOT NULL DEFAULT now(),
    -- Retries stop (status failed) once the first attempt of this round is older than the retry window.
    window_start_at  timestamptz NOT NULL DEFAULT now(),
    delivered_at     timestamptz,
    created_at       timestamptz NOT NULL DEFAULT now(),
    UNIQUE (event_id, endpoint_id)
);
CREATE INDEX webhook_deliveries_due ON webhook_deliveries (next_attempt_at) WHERE status = 'pending';
CREATE INDEX webhook_deliveries_endpoint ON webhook_deliveries (endpoint_id, created_at DESC, id DESC);

CREATE TABLE webhook_attempts (
    id                bigserial PRIMARY KEY,
    delivery_id       uuid NOT NULL REFERENCES webhook_deliveries (id) ON DELETE CASCADE,
    attempted_at      timestamptz NOT NULL,
    status_code       integer,
    latency_ms        integer NOT NULL,
    error             text,
    response_excerpt  text
);
CREATE INDEX webhook_attempts_delivery ON webhook_attempts (delivery_id, id DESC);

CREATE INDEX events_merchant_created ON events (merchant_id, created_at DESC, seq DESC) WHERE merchant_id IS NOT NULL;

CREATE FUNCTION webhook_fan_out() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF NEW.merchant_id IS NULL THEN
        RETURN NULL;
    END IF;
    INSERT INTO webhook_deliveries (id, event_id, endpoint_id, merchant_id)
    SELECT gen_random_uuid(), NEW.id, e.id, NEW.merchant_id
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
