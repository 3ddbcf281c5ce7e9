-- Sign-in security and verification levels (issue 13): one-time codes sent to the holder's phone on
-- registration and on sign-in from a new device, trusted devices, revocable sessions, verification
-- levels that open tiers (gateway/domain/verification.py), signed KYC callbacks.

-- Level 0 none, 1 phone, 2 real_name, 3 bank_card, 4 in_person (domain.verification.Level).
ALTER TABLE wallet_holders
    ADD COLUMN verification_level smallint NOT NULL DEFAULT 0 CHECK (verification_level BETWEEN 0 AND 4),
    ADD COLUMN phone_verified_at  timestamptz,
    ADD COLUMN password_changed_at timestamptz;
-- Holders registered before codes existed were admitted on their phone number alone (tier 4 = phone):
-- each keeps the level its tier stands for (tier 4 -> phone ... tier 1 -> in person), and its tier.
UPDATE wallet_holders SET verification_level = 5 - LEAST(GREATEST(tier, 1), 4);

-- The devices a holder has proven with a code (trusted_at) and signed in from. A device is the wallet
-- app's own device_id. Revoking one (revoked_at) signs out its sessions and forgets the trust: its next
-- sign-in needs a code again, which makes it trusted anew.
CREATE TABLE wallet_devices (
    id              uuid PRIMARY KEY,
    holder_id       uuid NOT NULL REFERENCES wallet_holders (id),
    device_id       text NOT NULL,
    trusted_at      timestamptz,
    trusted_by      text NOT NULL CHECK (trusted_by IN ('code', 'before_codes')),
    last_sign_in_at timestamptz,
    revoked_at      timestamptz,
    created_at      timestamptz NOT NULL DEFAULT now(),
    UNIQUE (holder_id, device_id)
);
-- Known devices of holders registered before this change: every device the gateway has seen bound to
-- the holder (the device of a pay-code, the phone of a tap token). Their sign-ins need no code; any
-- other device of theirs gets one code, once.
INSERT INTO wallet_devices (id, holder_id, device_id, trusted_at, trusted_by)
SELECT gen_random_uuid(), holder_id, device_id, now(), 'before_codes'
  FROM (SELECT holder_id, device_id FROM pay_codes
        UNION SELECT holder_id, phone_device FROM tap_tokens) AS seen
ON CONFLICT (holder_id, device_id) DO NOTHING;

-- One row per token issued: the token's sid claim. Revocation sets revoked_at; the trigger below
-- pushes it to every process, which refuse the token from then on without a database round trip.
CREATE TABLE wallet_sessions (
    id          uuid PRIMARY KEY,
    holder_id   uuid NOT NULL REFERENCES wallet_holders (id),
    device_id   uuid REFERENCES wallet_devices (id),  -- NULL: signed in without a device_id
    expires_at  timestamptz NOT NULL,                  -- the token's exp
    revoked_at  timestamptz,
    created_at  timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX wallet_sessions_holder ON wallet_sessions (holder_id) WHERE revoked_at IS NULL;
CREATE INDEX wallet_sessions_device ON wallet_sessions (device_id) WHERE revoked_at IS NULL;
-- What a process loads when its listener (re)connects: revocations whose tokens may still be alive.
CREATE INDEX wallet_sessions_revoked ON wallet_sessions (expires_at) WHERE revoked_at IS NOT NULL;

-- Payload 'session id:holder id:expiry (Unix s):revoked at (Unix s)'; delivered at commit only.
CREATE FUNCTION wallet_session_revoked() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    PERFORM pg_notify('wallet_session_revocations', NEW.id::text || ':' || NEW.holder_id::text || ':'
                      || floor(extract(epoch FROM NEW.expires_at))::bigint::text || ':'
                      || floor(extract(epoch FROM NEW.revoked_at))::bigint::text);
    RETURN NULL;
END
$$;
CREATE TRIGGER wallet_sessions_revoked AFTER UPDATE OF revoked_at ON wallet_sessions
    FOR EACH ROW WHEN (OLD.revoked_at IS NULL AND NEW.revoked_at IS NOT NULL)
    EXECUTE FUNCTION wallet_session_revoked();

-- A code sent to the holder's phone: only its keyed hash is kept. A code is dead once used
-- (consumed_at), past expires_at, or after attempts_max wrong tries; a resend replaces the hash
-- (the previous code dies) without resetting the attempts.
CREATE TABLE sign_in_challenges (
    id           uuid PRIMARY KEY,
    holder_id    uuid NOT NULL REFERENCES wallet_holders (id),
    reason       text NOT NULL CHECK (reason IN ('phone_verification', 'new_device')),
    device_id    text,  -- the device the answer will trust (NULL: a sign-in without a device_id)
    code_hash    bytea NOT NULL,
    attempts     integer NOT NULL DEFAULT 0,
    attempts_max integer NOT NULL,
    sends        integer NOT NULL DEFAULT 1,
    last_sent_at timestamptz NOT NULL DEFAULT now(),
    expires_at   timestamptz NOT NULL,
    consumed_at  timestamptz,
    created_at   timestamptz NOT NULL DEFAULT now(),
    CHECK (attempts <= attempts_max)
);
CREATE INDEX sign_in_challenges_holder ON sign_in_challenges (holder_id, created_at);

-- The code sender's outbox: what the SMS hook must send. The code is kept only sealed (AES-GCM under a
-- key derived from auth.api_key_pepper, the row's id as associated data) and only until the hook took
-- it or the challenge died; then sealed_code is NULL.
CREATE TABLE sign_in_messages (
    id              uuid PRIMARY KEY,
    challenge_id    uuid NOT NULL REFERENCES sign_in_challenges (id),
    phone           text NOT NULL,
    sealed_code     bytea,
    status          text NOT NULL DEFAULT 'pending' CHECK (status IN ('pending', 'sent', 'failed', 'dropped')),
    attempts        integer NOT NULL DEFAULT 0,
    next_attempt_at timestamptz NOT NULL DEFAULT now(),
    lease_until     timestamptz,
    last_error      text,
    sent_at         timestamptz,
    created_at      timestamptz NOT NULL DEFAULT now(),
    CHECK ((status = 'pending') = (sealed_code IS NOT NULL))
);
CREATE INDEX sign_in_messages_due ON sign_in_messages (next_attempt_at) WHERE status = 'pending';
CREATE INDEX sign_in_messages_challenge ON sign_in_messages (challenge_id);

-- KYC callbacks seen, by their webhook-id: a replay is refused. Older than the timestamp tolerance
-- they are refused by their timestamp anyway, so rows are reaped after a while.
CREATE TABLE kyc_callbacks (
    message_id  text PRIMARY KEY,
    holder_id   uuid,
    level       smallint,
    received_at timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX kyc_callbacks_received ON kyc_callbacks (received_at);
