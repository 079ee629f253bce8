-- `GET /orders?track_number=T` and `?customer_id=C`: equality on the column, then the same
-- newest-first keyset order as orders_recent_idx, so that a search and its paging are one index
-- scan with no sort, however many orders there are.
--
-- Partial, on purpose: a btree entry cannot exceed about 2.7 KB, and validation puts no upper
-- bound on these fields, so a full index would make one valid order with a long track number fail
-- its whole batch's INSERT, again on every retry, and stall ingest. The API refuses values longer
-- than 256 characters (see `http::OrderFilter`), so a search never needs the rows left out; its
-- queries repeat the predicate so that the planner can use these indexes.
CREATE INDEX orders_track_number_idx ON orders (track_number, date_created DESC, order_uid DESC)
    WHERE length(track_number) <= 256;
CREATE INDEX orders_customer_id_idx ON orders (customer_id, date_created DESC, order_uid DESC)
    WHERE length(customer_id) <= 256;
