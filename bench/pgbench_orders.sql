-- The writers of the writer-cost scenario (bench/run.py): one transaction per order update as
-- the REST service would run it, a product's stock and an order's total. With roomcast's
-- triggers each commit publishes product_updated (row trigger) and order_updated (at commit): 2
-- outbox rows and 2 NOTIFYs, which take PostgreSQL's notify lock once, at commit.
\set pid random(1, :nproducts)
\set oid random(1, :norders)
BEGIN;
UPDATE public.product SET stock = stock + 1, updated_at = now() WHERE id_product = :pid;
UPDATE public."order" SET total = total + 1, updated_at = now() WHERE id_order = :oid;
END;
