-- Audit events. An admin action (API key created or revoked, terminal enrolled or revoked, wallet
-- unlocked, settlement run, ...) writes its event into the events table in the action's own
-- transaction, with who did it (actor_type: operator, api_key, device, wallet_holder; NULL actor_id
-- with actor_type 'cli' for the command line) and the request it came with. A merchant lists its
-- own through GET /v1/events; operators list every event through GET /v1/operator/events.
--
-- Only the webhook event types are delivered: an audit-only event is written with deliverable =
-- false and the fan-out skips it, so an endpoint subscribed to '*' receives exactly what it did
-- before (Stripe does not deliver account-management events either).
ALTER TABLE events
    ADD COLUMN actor_type  text,
    ADD COLUMN actor_id    uuid,
    ADD COLUMN request_id  text,
    ADD COLUMN deliverable boolean NOT NULL DEFAULT true;

CREATE OR REPLACE FUNCTION webhook_fan_out() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF NEW.merchant_id IS NULL OR NOT NEW.deliverable THEN
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
