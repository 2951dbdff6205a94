-- The approval queue (policy/queue.py): what `wakeline approvals list | show | approve | deny`
-- reads, filled by the approvals processor (processors/approvals.py) from the events topic.
-- Working state, not the record: the record is the events topic and the ledger built from it.
-- Every write is keyed by an event id, so re-reading the topic changes nothing. Raw Avro
-- frames are kept so the CLI decodes the request and its intent itself before it signs.
-- (Numbered 0008: 0007 is the ledger's lookup keys.)

-- ToolIntents that wait for an approval (policy_decision require_approval), until their
-- ApprovalRequested arrives (the intent comes first, on the same partition).
CREATE TABLE IF NOT EXISTS approval_intents (
    intent_id    text        PRIMARY KEY,
    approval_id  text,
    partition    integer     NOT NULL,
    "offset"     bigint      NOT NULL,
    value        bytea       NOT NULL
);
CREATE INDEX IF NOT EXISTS approval_intents_approval ON approval_intents (approval_id);

-- One row per ApprovalRequested. state: pending (nothing decided yet), approved (a quorum of
-- valid approvals), denied (a valid denial, or the SDK's timeout), closed (the call's
-- ToolResult arrived). An expired pending request is shown as expired (expires_at < now).
CREATE TABLE IF NOT EXISTS approval_requests (
    request_id     text        PRIMARY KEY,
    partition      integer     NOT NULL,
    "offset"       bigint      NOT NULL,
    workflow_key   bytea       NOT NULL,
    workflow_id    text        NOT NULL,
    run_id         text        NOT NULL,
    agent_id       text        NOT NULL,
    principal      text        NOT NULL,
    tenant         text,
    intent_id      text,
    tool           text        NOT NULL,
    args           text,
    reason         text,
    binding        bytea       NOT NULL,
    quorum         integer     NOT NULL,
    approver_keys  jsonb       NOT NULL,
    policy_version text,
    requested_at   bigint      NOT NULL,
    expires_at     bigint      NOT NULL,
    value          bytea       NOT NULL,
    -- the intent's frame (NULL: no such intent before the request on its partition) and
    -- whether the request's binding is the binding of that intent
    intent         bytea,
    bound          boolean     NOT NULL DEFAULT false,
    state          text        NOT NULL DEFAULT 'pending'
                   CHECK (state IN ('pending', 'approved', 'denied', 'closed')),
    result_id      text,
    result_status  text,
    closed_at      bigint
);
CREATE INDEX IF NOT EXISTS approval_requests_open ON approval_requests (state, expires_at);
CREATE INDEX IF NOT EXISTS approval_requests_intent ON approval_requests (intent_id);

-- Every ApprovalGranted / ApprovalDenied as received, with whether it counts for its request
-- (policy/approvals.py `why_not`, judged when it arrived; NULL why: it counts).
CREATE TABLE IF NOT EXISTS approval_decisions (
    event_id     text        PRIMARY KEY,
    request_id   text        NOT NULL,
    partition    integer     NOT NULL,
    "offset"     bigint      NOT NULL,
    decision     text        NOT NULL CHECK (decision IN ('approve', 'deny')),
    approver     text        NOT NULL,
    time         bigint      NOT NULL,
    expires_at   bigint,
    binding      bytea,
    signature    bytea,
    public_key   bytea,
    comment      text,
    timed_out    boolean     NOT NULL DEFAULT false,
    counts       boolean     NOT NULL,
    why          text
);
CREATE INDEX IF NOT EXISTS approval_decisions_request ON approval_decisions (request_id, time);
