-- The example world: its own schema, never Wakeline's tables. Idempotent (`install`).
CREATE SCHEMA IF NOT EXISTS world;

-- Every request an operation received, and what became of it (NULL: still running, or the
-- caller died mid-call and the transaction was rolled back).
CREATE TABLE IF NOT EXISTS world.calls (
    id              bigserial PRIMARY KEY,
    at              timestamptz NOT NULL DEFAULT clock_timestamp(),
    operation       text NOT NULL,
    idempotency_key text,
    subject         text,
    outcome         text CHECK (outcome IN ('performed', 'deduplicated', 'failed')),
    error           text
);
CREATE INDEX IF NOT EXISTS calls_by_operation ON world.calls (operation, subject);

-- One row per idempotency key that acted: the operation, a digest of its arguments and the
-- answer it gave. Written in the transaction of the effect, so both exist or neither does.
CREATE TABLE IF NOT EXISTS world.idempotency (
    key            text PRIMARY KEY,
    operation      text NOT NULL,
    request_digest text NOT NULL,
    response       jsonb NOT NULL,
    call_id        bigint NOT NULL,
    at             timestamptz NOT NULL DEFAULT clock_timestamp()
);

-- Failures on demand: `match` is an idempotency key or a subject (NULL: every call);
-- `remaining` NULL = forever.
CREATE TABLE IF NOT EXISTS world.faults (
    id        bigserial PRIMARY KEY,
    operation text NOT NULL,
    match     text,
    kind      text NOT NULL CHECK (kind IN ('transient', 'permanent', 'delay')),
    remaining integer CHECK (remaining IS NULL OR remaining >= 0),
    delay_s   double precision NOT NULL DEFAULT 0,
    message   text,
    fired     integer NOT NULL DEFAULT 0
);

CREATE TABLE IF NOT EXISTS world.charges (
    charge_id      text PRIMARY KEY,
    customer       text NOT NULL,
    amount_cents   bigint NOT NULL CHECK (amount_cents > 0),
    currency       text NOT NULL,
    card_last4     text,
    refunded_cents bigint NOT NULL DEFAULT 0 CHECK (refunded_cents <= amount_cents),
    created_at     timestamptz NOT NULL DEFAULT clock_timestamp()
);

CREATE TABLE IF NOT EXISTS world.refunds (
    refund_id    text PRIMARY KEY,
    charge_id    text NOT NULL REFERENCES world.charges,
    amount_cents bigint NOT NULL CHECK (amount_cents > 0),
    created_at   timestamptz NOT NULL DEFAULT clock_timestamp()
);

CREATE TABLE IF NOT EXISTS world.crm_records (
    record_id       text PRIMARY KEY,
    current_version integer NOT NULL
);

-- Every version of every record, never rewritten; version 0 is "did not exist".
CREATE TABLE IF NOT EXISTS world.crm_versions (
    record_id     text NOT NULL REFERENCES world.crm_records,
    version       integer NOT NULL CHECK (version > 0),
    fields        jsonb NOT NULL,
    deleted       boolean NOT NULL DEFAULT false,
    restored_from integer,
    created_at    timestamptz NOT NULL DEFAULT clock_timestamp(),
    PRIMARY KEY (record_id, version)
);

CREATE TABLE IF NOT EXISTS world.email_outbox (
    message_id    text PRIMARY KEY,
    recipient     text NOT NULL,
    subject       text NOT NULL,
    body          text NOT NULL,
    status        text NOT NULL CHECK (status IN ('queued', 'delivered', 'recalled')),
    correction_of text REFERENCES world.email_outbox,
    queued_at     timestamptz NOT NULL DEFAULT clock_timestamp(),
    deliver_at    timestamptz NOT NULL,
    delivered_at  timestamptz,
    recalled_at   timestamptz
);

CREATE TABLE IF NOT EXISTS world.inventory_stock (
    sku      text PRIMARY KEY,
    on_hand  integer NOT NULL CHECK (on_hand >= 0),
    reserved integer NOT NULL DEFAULT 0 CHECK (reserved >= 0 AND reserved <= on_hand)
);

CREATE TABLE IF NOT EXISTS world.inventory_reservations (
    reservation_id text PRIMARY KEY,
    sku            text NOT NULL REFERENCES world.inventory_stock,
    quantity       integer NOT NULL CHECK (quantity > 0),
    order_ref      text,
    status         text NOT NULL CHECK (status IN ('held', 'released')),
    created_at     timestamptz NOT NULL DEFAULT clock_timestamp(),
    released_at    timestamptz
);

CREATE TABLE IF NOT EXISTS world.vms (
    vm_id      text PRIMARY KEY,
    name       text NOT NULL,
    size       text NOT NULL,
    region     text NOT NULL,
    status     text NOT NULL CHECK (status IN ('running', 'deleted')),
    created_at timestamptz NOT NULL DEFAULT clock_timestamp(),
    deleted_at timestamptz
);
