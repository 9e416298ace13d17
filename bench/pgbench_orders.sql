-- The writers of the writer-cost scenario (bench/run.py), written as the REST service writes:
-- a stock change (UPDATE product) and an order status change (a single-row UPDATE of "order"),
-- each in its own transaction. With roomcast's triggers each publishes one event:
-- product_updated (row trigger) and order_updated (at commit, after looking up the order's
-- sellers through product_order); one outbox row and one NOTIFY per commit.
\set pid random(1, :nproducts)
\set oid random(1, :norders)
UPDATE public.product SET stock = stock + 1 WHERE id_product = :pid;
UPDATE public."order" SET status = CASE WHEN status = 'processing' THEN 'shipped' ELSE 'processing' END
 WHERE id_order = :oid;
