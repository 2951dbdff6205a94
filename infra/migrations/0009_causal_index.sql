-- The compensator's causal index and its fan-outs (compensator/scopes.py). Written by the
-- compensator's sink in the same transaction as the events they come from, so the index
-- holds exactly what the compensator has read, whatever process read it.

-- event -> children: one row per causal link of an event the compensator read
-- (`parent_event_ids`, and a ToolResult's intent -> the result). The child's workflow and
-- partition say where its compensation runs.
CREATE TABLE IF NOT EXISTS compensator_edges (
    topic          text    NOT NULL,
    parent_id      text    NOT NULL,
    child_id       text    NOT NULL,
    child_type     text    NOT NULL,
    workflow_key   bytea   NOT NULL,
    workflow_id    text    NOT NULL,
    partition      integer NOT NULL,
    PRIMARY KEY (topic, parent_id, child_id)
);
CREATE INDEX IF NOT EXISTS compensator_edges_child ON compensator_edges (topic, child_id);

-- Every call (ToolIntent) the compensator read, by agent and boundary, with its workflow:
-- agent -> workflows by time, boundary -> workflows.
CREATE TABLE IF NOT EXISTS compensator_calls (
    topic          text    NOT NULL,
    intent_id      text    NOT NULL,
    agent_id       text    NOT NULL,
    boundary       text,
    event_time     bigint  NOT NULL,
    workflow_key   bytea   NOT NULL,
    workflow_id    text    NOT NULL,
    partition      integer NOT NULL,
    PRIMARY KEY (topic, intent_id)
);
CREATE INDEX IF NOT EXISTS compensator_calls_agent
    ON compensator_calls (topic, agent_id, event_time);
CREATE INDEX IF NOT EXISTS compensator_calls_boundary
    ON compensator_calls (topic, boundary) WHERE boundary IS NOT NULL;

-- A quarantine whose scope spans workflows (agent, boundary, tainted): the origin. Its
-- target is refused by the SDK (key `agent:<id>` / `boundary:<b>` on the quarantines topic)
-- until a Release of it; late calls in scope join it as new fan-outs while it is active.
CREATE TABLE IF NOT EXISTS compensator_origins (
    origin_id      text        PRIMARY KEY,
    topic          text        NOT NULL,
    scope          text        NOT NULL CHECK (scope IN ('agent', 'boundary', 'tainted')),
    target         text,
    since          bigint,
    gate_key       bytea,
    workflow_key   bytea       NOT NULL,
    partition      integer     NOT NULL,
    value          bytea       NOT NULL,
    state          text        NOT NULL DEFAULT 'active' CHECK (state IN ('active', 'released')),
    created_at     timestamptz NOT NULL DEFAULT now(),
    released_at    timestamptz
);
CREATE INDEX IF NOT EXISTS compensator_origins_active ON compensator_origins (topic, scope)
    WHERE state = 'active';

-- The events a tainted origin taints (its tainted events and everything descending from
-- them that the compensator read), kept up to date as late events arrive.
CREATE TABLE IF NOT EXISTS compensator_taint (
    origin_id      text NOT NULL REFERENCES compensator_origins (origin_id),
    event_id       text NOT NULL,
    PRIMARY KEY (origin_id, event_id)
);

-- The fan-out outbox: one row per (origin, affected workflow, kind). The child event
-- (a Quarantine naming the origin in `origin_id`, or the Release lifting it) is encoded when
-- the row is made and produced from the row by the process that holds the origin's
-- partition (the executor), then marked sent: a fan-out that died halfway resumes from the
-- rows not sent, and a child sent twice is the same event (the compensator ignores a
-- Quarantine it already has a plan for).
CREATE TABLE IF NOT EXISTS compensator_fanouts (
    origin_id      text        NOT NULL REFERENCES compensator_origins (origin_id),
    kind           text        NOT NULL CHECK (kind IN ('quarantine', 'release')),
    workflow_key   bytea       NOT NULL,
    workflow_id    text        NOT NULL,
    event_id       text        NOT NULL UNIQUE,
    value          bytea       NOT NULL,
    origin_partition integer   NOT NULL,
    created_at     timestamptz NOT NULL DEFAULT now(),
    sent_at        timestamptz,
    PRIMARY KEY (origin_id, kind, workflow_key)
);
CREATE INDEX IF NOT EXISTS compensator_fanouts_unsent ON compensator_fanouts (origin_partition)
    WHERE sent_at IS NULL;
