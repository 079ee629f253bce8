-- Erasure (`ordersvc erase`): an erased order leaves a tombstone, so that it is never stored
-- again, whatever brings its message back (a redelivery, a republish, a replay of an old
-- backup). The tombstone is also the audit row: the id, when, and why; never personal data.
-- `completed_at` is set once every copy ordersvc knows of is gone (the streams, every
-- replica's memory); NULL means a run of `erase` did not finish and should be run again.
CREATE TABLE erased_orders (
    order_uid    text        PRIMARY KEY CHECK (order_uid ~ '^[A-Za-z0-9_-]{1,64}$'),
    erased_at    timestamptz NOT NULL DEFAULT now(),
    reason       text        NOT NULL,
    completed_at timestamptz
);

-- A rejected message that carried an erased order keeps its row (stream, sequence, kind,
-- reason) but not its bytes: `payload` is emptied and this says when.
ALTER TABLE rejected_messages ADD COLUMN payload_erased_at timestamptz;

-- `ordersvc rejected reprocess`: what became of a rejected message sent through today's rules.
-- The row itself is kept as it was recorded.
ALTER TABLE rejected_messages
    ADD COLUMN outcome        text CHECK (outcome IN ('stored', 'duplicate', 'refused')),
    ADD COLUMN outcome_kind   text,
    ADD COLUMN outcome_reason text,
    ADD COLUMN reprocessed_at timestamptz;

-- Redeliveries are recognised by (stream, sequence, payload hash). An erased payload is empty,
-- and two erased rows of one sequence (a stream deleted and recreated reuses sequences) would
-- then collide: the key covers only rows whose payload is what arrived.
DROP INDEX rejected_messages_once_idx;
CREATE UNIQUE INDEX rejected_messages_once_idx
    ON rejected_messages (stream, stream_seq, md5(payload))
    WHERE payload_erased_at IS NULL;

-- Changelog messages `erase` deleted (it publishes the other orders they carried again first).
-- A replica that was behind one meets a hole in the changelog's sequences, or a stream that now
-- starts later, and would take it for lost messages and restore afresh; this tells it that
-- nothing was lost. `created_ns` is the stream's creation time (nanoseconds): a stream deleted
-- and made again starts its sequences anew, and these rows do not speak for it.
CREATE TABLE erased_changelog_messages (
    changelog  text   NOT NULL,
    created_ns bigint NOT NULL,
    seq        bigint NOT NULL,
    PRIMARY KEY (changelog, created_ns, seq)
);
