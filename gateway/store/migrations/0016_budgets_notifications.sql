-- Holder notifications, monthly budgets and the holder's time zone (issue 13).
--
-- Notifications: one row per thing a wallet holder is told (kind, a JSON payload without secrets),
-- read_at once the holder marked it read. When a push hook is configured at the time a notification
-- is written, push_status is 'pending' and the push worker delivers it at least once: a delivery is
-- leased (push_next_at moved past the attempt's timeout, push_attempts + 1) in a short transaction,
-- sent, then recorded ('pushed' with pushed_at, or 'pending' again with the next try's time, or
-- 'failed' once the attempts are used up); a process dying mid-attempt leaves the row due again
-- when its lease ends. 'none': no hook was configured, the notification is only listed.
ALTER TABLE wallet_holders ADD COLUMN time_zone text;  -- IANA name; NULL: the gateway's default

CREATE TABLE notifications (
    id            uuid PRIMARY KEY,
    holder_id     uuid NOT NULL REFERENCES wallet_holders (id),
    kind          text NOT NULL,
    data          jsonb NOT NULL,
    created_at    timestamptz NOT NULL DEFAULT now(),
    read_at       timestamptz,
    push_status   text NOT NULL CHECK (push_status IN ('none', 'pending', 'pushed', 'failed')),
    push_attempts integer NOT NULL DEFAULT 0 CHECK (push_attempts >= 0),
    push_next_at  timestamptz,
    pushed_at     timestamptz,
    push_error    text,
    CHECK ((push_status = 'pending') = (push_next_at IS NOT NULL)),
    CHECK ((push_status = 'pushed') = (pushed_at IS NOT NULL))
);
CREATE INDEX notifications_holder ON notifications (holder_id, created_at DESC, id DESC);
CREATE INDEX notifications_holder_unread ON notifications (holder_id, created_at DESC, id DESC) WHERE read_at IS NULL;
CREATE INDEX notifications_push_due ON notifications (push_next_at) WHERE push_status = 'pending';

-- A monthly budget per (holder, category, currency); category is an MCC group or 'overall'.
-- Setting it again replaces its amount (same id).
CREATE TABLE budgets (
    id           uuid PRIMARY KEY,
    holder_id    uuid NOT NULL REFERENCES wallet_holders (id),
    category     text NOT NULL,
    currency     char(3) NOT NULL,
    amount_minor bigint NOT NULL CHECK (amount_minor > 0),
    created_at   timestamptz NOT NULL DEFAULT now(),
    updated_at   timestamptz NOT NULL DEFAULT now(),
    UNIQUE (holder_id, category, currency)
);
CREATE INDEX budgets_holder_list ON budgets (holder_id, created_at DESC, id DESC);

-- A reminder exists at most once per budget, month (its first day in the holder's time zone) and
-- threshold: the primary key makes a second one impossible, whatever races.
CREATE TABLE budget_reminders (
    budget_id         uuid NOT NULL REFERENCES budgets (id) ON DELETE CASCADE,
    month             date NOT NULL,
    threshold_percent smallint NOT NULL CHECK (threshold_percent BETWEEN 1 AND 1000),
    notification_id   uuid NOT NULL,
    created_at        timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (budget_id, month, threshold_percent)
);

-- How far the budget worker has evaluated the journal: every journal entry created before
-- horizon_at is evaluated (a journal entry's created_at is its transaction's start), and every entry
-- created at or after it has an id above entry_id_floor. One row; the worker locks it to advance.
CREATE TABLE spending_cursor (
    singleton      boolean PRIMARY KEY DEFAULT true CHECK (singleton),
    horizon_at     timestamptz NOT NULL,
    entry_id_floor bigint NOT NULL CHECK (entry_id_floor >= 0),
    updated_at     timestamptz NOT NULL DEFAULT now()
);
-- Floor 0: the first evaluation reads the entries of transactions begun since this migration by id
-- range from the start, so none committed in the meantime is skipped.
INSERT INTO spending_cursor (horizon_at, entry_id_floor) VALUES (now(), 0);
