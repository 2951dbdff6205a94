-- The compensator's state (compensator/store.py). Mutable working state, not the record:
-- the record is the events topic (and the ledger built from it), where the compensator's own
-- CompensationStarted / CompensationResult / Escalation events land.
--
-- Workflow ids are the Kafka key, byte for byte (bytea): an id with a NUL or invalid UTF-8
-- must never stop the daemon. Text columns hold values already scrubbed of NUL.

-- One row per partition of the events topic: the fencing epoch, bumped by every process
-- that is assigned the partition; every state write and every lease checks it.
CREATE TABLE IF NOT EXISTS compensator_partitions (
    topic        text        NOT NULL,
    partition    integer     NOT NULL,
    epoch        bigint      NOT NULL DEFAULT 0,
    owner        text,
    updated_at   timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (topic, partition)
);

-- The events a plan is computed from, per workflow, in partition order: tool intents and
-- results, quarantines and releases, the compensator's own events (raw Avro frames).
CREATE TABLE IF NOT EXISTS compensator_events (
    topic        text        NOT NULL,
    partition    integer     NOT NULL,
    "offset"     bigint      NOT NULL,
    workflow_key bytea       NOT NULL,
    event_id     text        NOT NULL,
    event_type   text        NOT NULL,
    event_time   bigint      NOT NULL,
    value        bytea       NOT NULL,
    PRIMARY KEY (topic, partition, "offset")
);
CREATE INDEX IF NOT EXISTS compensator_events_workflow
    ON compensator_events (workflow_key, partition, "offset");

-- One plan per Quarantine event that started one (a duplicate Quarantine starts none).
--   state: running (actions left), done (every action finished), released (a Release came)
CREATE TABLE IF NOT EXISTS compensator_plans (
    quarantine_id  text        PRIMARY KEY,
    topic          text        NOT NULL,
    partition      integer     NOT NULL,
    "offset"       bigint      NOT NULL,
    workflow_key   bytea       NOT NULL,
    workflow_id    text        NOT NULL,
    scope          text        NOT NULL,
    run_id         text,
    reason         text        NOT NULL,
    quarantined_by text        NOT NULL,
    quarantined_at bigint      NOT NULL,
    state          text        NOT NULL DEFAULT 'running'
                   CHECK (state IN ('running', 'done', 'released')),
    steps          jsonb       NOT NULL DEFAULT '[]',
    created_at     timestamptz NOT NULL DEFAULT now(),
    finished_at    timestamptz,
    release_id     text,
    released_by    text,
    released_at    timestamptz
);
CREATE INDEX IF NOT EXISTS compensator_plans_workflow ON compensator_plans (workflow_key);
CREATE INDEX IF NOT EXISTS compensator_plans_open ON compensator_plans (topic, partition)
    WHERE state = 'running';

-- One row per call a plan compensates, run newest first (seq 0 first).
--   state: pending, running (a process holds the lease), done, nothing (nothing to undo),
--          failed (for good: escalated), cancelled (a Release came first)
-- The lease: a process runs an action only while lease_until is in the future and the token
-- is the one it took; another process waits for the lease to expire before it runs it again.
CREATE TABLE IF NOT EXISTS compensator_actions (
    quarantine_id   text        NOT NULL REFERENCES compensator_plans (quarantine_id),
    intent_id       text        NOT NULL,
    seq             integer     NOT NULL,
    compensation    text        NOT NULL,
    idempotency_key text        NOT NULL,
    tool            text        NOT NULL,
    run_id          text        NOT NULL,
    state           text        NOT NULL DEFAULT 'pending'
                    CHECK (state IN ('pending', 'running', 'done', 'nothing', 'failed',
                                     'cancelled')),
    -- attempts: times a process took the lease (a crash mid-action counts);
    -- failures: transient failures the handler returned (the retry budget counts these)
    attempts        integer     NOT NULL DEFAULT 0,
    failures        integer     NOT NULL DEFAULT 0,
    lease_owner     text,
    lease_token     bigint      NOT NULL DEFAULT 0,
    lease_until     timestamptz,
    not_before      timestamptz,
    detail          text,
    external_ids    jsonb       NOT NULL DEFAULT '{}',
    started_at      timestamptz,
    finished_at     timestamptz,
    updated_at      timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (quarantine_id, intent_id)
);
CREATE INDEX IF NOT EXISTS compensator_actions_idempotency
    ON compensator_actions (idempotency_key);

-- Human tasks: one per escalated call (kind 'call') and one per plan (kind 'plan', the
-- incident report). The Escalation event is produced from the row (escalation_event_id is
-- fixed when the row is made; published_at once the broker acknowledged it), then the
-- webhook is notified (notified_at, or notify_error after the retries ran out).
--   state: open, acked (someone is on it), resolved (with a note)
CREATE TABLE IF NOT EXISTS compensator_tasks (
    task_id             text        PRIMARY KEY,
    kind                text        NOT NULL CHECK (kind IN ('call', 'plan')),
    quarantine_id       text        NOT NULL REFERENCES compensator_plans (quarantine_id),
    intent_id           text,
    workflow_key        bytea       NOT NULL,
    workflow_id         text        NOT NULL,
    partition           integer     NOT NULL,
    reason              text        NOT NULL,
    title               text        NOT NULL,
    report              text        NOT NULL,
    report_json         jsonb       NOT NULL DEFAULT '{}',
    state               text        NOT NULL DEFAULT 'open'
                        CHECK (state IN ('open', 'acked', 'resolved')),
    created_at          timestamptz NOT NULL DEFAULT now(),
    updated_at          timestamptz NOT NULL DEFAULT now(),
    acked_at            timestamptz,
    acked_by            text,
    resolved_at         timestamptz,
    resolved_by         text,
    resolution_note     text,
    escalation_event_id text        NOT NULL,
    published_at        timestamptz,
    notified_at         timestamptz,
    notify_attempts     integer     NOT NULL DEFAULT 0,
    notify_error        text
);
CREATE INDEX IF NOT EXISTS compensator_tasks_open ON compensator_tasks (state, created_at);
CREATE INDEX IF NOT EXISTS compensator_tasks_unpublished ON compensator_tasks (partition)
    WHERE published_at IS NULL;
CREATE UNIQUE INDEX IF NOT EXISTS compensator_tasks_one_per_call
    ON compensator_tasks (quarantine_id, kind, coalesce(intent_id, ''));
