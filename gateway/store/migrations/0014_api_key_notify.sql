-- API key lookups are cached in each serving process (services.key_cache); these triggers push
-- every change that could make a cached lookup wrong. A key revoked, changed or deleted, or its
-- merchant suspended or reactivated, NOTIFYs 'api_key_changes' with the merchant's id: each
-- process evicts every cached key of that merchant. A TRUNCATE sends an empty payload: evict all.
-- NOTIFY is transactional: it is delivered at commit, never for a change that rolled back, and
-- identical notifications of one transaction are folded into one.
CREATE FUNCTION api_key_changed() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF TG_OP = 'TRUNCATE' THEN
        PERFORM pg_notify('api_key_changes', '');
        RETURN NULL;
    END IF;
    IF TG_TABLE_NAME = 'merchants' THEN
        PERFORM pg_notify('api_key_changes', OLD.id::text);
        RETURN NULL;
    END IF;
    -- The cached entries carry the old merchant id; a key moved to another merchant is evicted too.
    PERFORM pg_notify('api_key_changes', OLD.merchant_id::text);
    RETURN NULL;
END
$$;

CREATE TRIGGER api_keys_changed AFTER UPDATE OR DELETE ON api_keys
    FOR EACH ROW EXECUTE FUNCTION api_key_changed();
CREATE TRIGGER api_keys_truncated AFTER TRUNCATE ON api_keys
    FOR EACH STATEMENT EXECUTE FUNCTION api_key_changed();
CREATE TRIGGER merchants_status_changed AFTER UPDATE OF status ON merchants
    FOR EACH ROW WHEN (OLD.status IS DISTINCT FROM NEW.status) EXECUTE FUNCTION api_key_changed();
