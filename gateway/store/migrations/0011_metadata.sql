-- Metadata on payments and refunds: the merchant's own string key-value pairs, searchable by the
-- list endpoints (metadata[key]=value is `metadata @> '{"key": "value"}'`, which jsonb_path_ops serves).
ALTER TABLE payments ADD COLUMN metadata jsonb NOT NULL DEFAULT '{}';
ALTER TABLE refunds ADD COLUMN metadata jsonb NOT NULL DEFAULT '{}';
CREATE INDEX payments_metadata ON payments USING gin (metadata jsonb_path_ops);
CREATE INDEX refunds_metadata ON refunds USING gin (metadata jsonb_path_ops);
-- The merchant-wide refund list, newest first (as payments_merchant serves the payments list).
CREATE INDEX refunds_merchant ON refunds (merchant_id, created_at DESC, id DESC);
-- Every list is keyset-paginated newest first on (created_at, id) within its tenant: these lists had no
-- index on that key.
CREATE INDEX merchants_created ON merchants (created_at DESC, id DESC);
CREATE INDEX api_keys_merchant_created ON api_keys (merchant_id, created_at DESC, id DESC);
CREATE INDEX bank_accounts_holder ON bank_accounts (holder_id, created_at DESC, id DESC);
