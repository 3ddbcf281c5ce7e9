-- Failed sign-ins per account, counted before the password is checked (an attempt counts as a
-- failure until it succeeds, which deletes the row), and the lockout they earned. The account is
-- a keyed hash (HMAC-SHA256 under the API key pepper) of its kind and subject (phone number,
-- operator email, enrolment code, device id): no subject is stored in clear. Unknown accounts
-- have rows too, so the lockout cannot tell who exists.
CREATE TABLE login_failures (
    kind text NOT NULL CHECK (kind IN ('wallet', 'operator', 'enrolment', 'device')),
    subject_hash bytea NOT NULL CHECK (octet_length(subject_hash) = 32),
    failures integer NOT NULL CHECK (failures > 0),
    locked_until timestamptz,
    updated_at timestamptz NOT NULL,
    PRIMARY KEY (kind, subject_hash)
);
