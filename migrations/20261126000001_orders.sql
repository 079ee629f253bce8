-- Stored orders. `document` holds the message exactly as received (validated UTF-8 JSON): it is
-- what HTTP serves, byte for byte, before and after a restart. Text rather than JSONB because
-- JSONB would reformat the document and costs a parse on every write and on every cache restore.
CREATE TABLE orders (
    order_uid    text        PRIMARY KEY CHECK (order_uid ~ '^[A-Za-z0-9_-]{1,64}$'),
    document     text        NOT NULL,
    date_created timestamptz NOT NULL,
    customer_id  text        NOT NULL,
    track_number text        NOT NULL,
    stream_seq   bigint      NOT NULL,
    stored_at    timestamptz NOT NULL DEFAULT now()
);

-- Keyset pagination of the recent-orders list (newest first); order_uid breaks ties.
CREATE INDEX orders_recent_idx ON orders (date_created DESC, order_uid DESC);

-- Every message that was not stored as an order: the raw bytes, why, and where it came from.
CREATE TABLE rejected_messages (
    id          bigserial   PRIMARY KEY,
    stream      text        NOT NULL,
    stream_seq  bigint      NOT NULL,
    subject     text        NOT NULL,
    received_at timestamptz NOT NULL DEFAULT now(),
    kind        text        NOT NULL,
    reason      text        NOT NULL,
    payload     bytea       NOT NULL
);

-- A redelivered message (crash between commit and ack) must not be recorded twice. The payload
-- hash is part of the key because a stream that is deleted and recreated reuses sequence numbers.
CREATE UNIQUE INDEX rejected_messages_once_idx
    ON rejected_messages (stream, stream_seq, md5(payload));
CREATE INDEX rejected_messages_received_idx ON rejected_messages (received_at DESC);
