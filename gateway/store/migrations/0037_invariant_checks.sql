-- Ledger invariant checks run in the background: an operator asks for one (POST
-- /v1/operator/ledger/invariant_checks), a worker of any gateway process runs it in one read-only snapshot
-- under its own time limit (ledger.check_timeout_s), and the operator reads its outcome. The synchronous
-- GET /v1/operator/ledger/invariants is bound by the serving statement timeout (database.statement_timeout_s,
-- 8 s), which a large ledger outlasts: over 10^7 payments it answered 503 database_busy (bench --big).
CREATE TABLE invariant_checks (
    id uuid PRIMARY KEY,
    status text NOT NULL DEFAULT 'queued' CHECK (status IN ('queued', 'running', 'passed', 'failed', 'error')),
    requested_by text NOT NULL,  -- the operator's actor id, as the audit event names it
    created_at timestamptz NOT NULL DEFAULT now(),
    started_at timestamptz,      -- its first attempt's start
    finished_at timestamptz,
    -- While running, the worker renews its lease; a check whose lease lapsed (its process died or lost the
    -- database) is taken again by any worker. attempts is the fencing token: a worker writes only while the
    -- attempt it took is the last one.
    lease_until timestamptz,
    attempts int NOT NULL DEFAULT 0 CHECK (attempts >= 0),
    invariants_total int NOT NULL CHECK (invariants_total > 0),
    invariants_done int NOT NULL DEFAULT 0,
    violations jsonb,            -- passed / failed: each violated invariant's name and its first rows
    error text,                  -- error: why it could not finish (its time limit, interrupted too often)
    CHECK (invariants_done BETWEEN 0 AND invariants_total),
    CHECK ((status IN ('passed', 'failed')) = (violations IS NOT NULL)),
    CHECK ((status = 'error') = (error IS NOT NULL)),
    CHECK ((status = 'running') = (lease_until IS NOT NULL)),
    CHECK ((status IN ('passed', 'failed', 'error')) = (finished_at IS NOT NULL))
);
-- At most one check queued or running: asking again meanwhile is answered that one.
CREATE UNIQUE INDEX invariant_checks_one_active ON invariant_checks ((true)) WHERE status IN ('queued', 'running');
CREATE INDEX invariant_checks_created ON invariant_checks (created_at DESC, id DESC);
