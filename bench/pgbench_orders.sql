-- The writers of the writer-cost scenario (bench/run.py): one transaction per order update as
-- the REST service would run it, a product's stock and an order's total. With roomcast's
-- triggers each commit publishes product_updated and order_updated (2 outbox rows, 1 NOTIFY).
\set pid random(1, :nproducts)
\set oid random(1, :norders)
BEGIN;
UPDATE public.product SET stock = stock + 1, updated_at = now() WHERE id_product = :pid;
UPDATE public."order" SET total = total + 1, updated_at = now() WHERE id_order = :oid;
END;
