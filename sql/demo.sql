-- Demo rows for sql/marketplace.sql: sellers 1..3 (user ids 101..103), clients 1..3 (user ids
-- 201..203), six products, two deliveries, four orders with items. Inserted only while the
-- seller table is empty, so re-running changes nothing; sequences are moved past the fixed ids
-- so later inserts get fresh ones.
--
--   order 1: client 1, delivery 1, items of sellers 1 and 2
--   order 2: client 2, delivery 1, item of seller 3
--   order 3: client 3, delivery 2, items of sellers 1, 2 and 3
--   order 4: client 1, no delivery, item of seller 1
BEGIN;
SET LOCAL client_min_messages = warning;

DO $$
BEGIN
    IF EXISTS (SELECT 1 FROM public.seller) THEN
        RETURN;
    END IF;

    INSERT INTO public.seller (id_seller, user_id, name, email) VALUES
        (1, 101, 'Nordic Goods', 'sales@nordic.example'),
        (2, 102, 'Casa Verde', 'hola@casaverde.example'),
        (3, 103, 'Kiln & Co', 'hello@kiln.example');

    INSERT INTO public.client (id_client, user_id, name, email, address) VALUES
        (1, 201, 'Ada Lovelace', 'ada@example.com', '12 Analytical St, London'),
        (2, 202, 'Alan Turing', 'alan@example.com', '3 Bletchley Rd, Milton Keynes'),
        (3, 203, 'Grace Hopper', 'grace@example.com', '99 Cobol Ave, Arlington');

    INSERT INTO public.product (id_product, id_seller, name, description, price, stock, status) VALUES
        (1, 1, 'Wool blanket', 'Grey merino, 150x200', 89.00, 12, 'active'),
        (2, 1, 'Birch cutting board', 'End grain', 34.50, 40, 'active'),
        (3, 2, 'Olive oil 1L', 'Cold pressed', 18.90, 100, 'active'),
        (4, 2, 'Terracotta pot', '30 cm', 22.00, 0, 'out_of_stock'),
        (5, 3, 'Stoneware mug', '350 ml, speckled', 16.00, 60, 'active'),
        (6, 3, 'Serving bowl', 'Hand thrown', 48.00, 8, 'inactive');

    INSERT INTO public.delivery (id_delivery, status, address, carrier, tracking_number) VALUES
        (1, 'in_transit', '12 Analytical St, London', 'DHL', 'DHL-0001'),
        (2, 'pending', '99 Cobol Ave, Arlington', 'UPS', NULL);

    INSERT INTO public."order" (id_order, id_client, id_delivery, status, total) VALUES
        (1, 1, 1, 'shipped', 126.80),
        (2, 2, 1, 'shipped', 32.00),
        (3, 3, 2, 'paid', 148.50),
        (4, 1, NULL, 'pending', 34.50);

    INSERT INTO public.product_order (id_product_order, id_order, id_product, quantity, price) VALUES
        (1, 1, 1, 1, 89.00),
        (2, 1, 3, 2, 18.90),
        (3, 2, 5, 2, 16.00),
        (4, 3, 2, 1, 34.50),
        (5, 3, 4, 3, 22.00),
        (6, 3, 6, 1, 48.00),
        (7, 4, 2, 1, 34.50);

    INSERT INTO public.cart (id_cart, id_client) VALUES (1, 2);
    INSERT INTO public.cart_item (id_cart_item, id_cart, id_product, quantity) VALUES
        (1, 1, 1, 1),
        (2, 1, 3, 4);

    -- The rows above bypassed the serial sequences.
    PERFORM setval(pg_get_serial_sequence('public.seller', 'id_seller'), 3);
    PERFORM setval(pg_get_serial_sequence('public.client', 'id_client'), 3);
    PERFORM setval(pg_get_serial_sequence('public.product', 'id_product'), 6);
    PERFORM setval(pg_get_serial_sequence('public.delivery', 'id_delivery'), 2);
    PERFORM setval(pg_get_serial_sequence('public."order"', 'id_order'), 4);
    PERFORM setval(pg_get_serial_sequence('public.product_order', 'id_product_order'), 7);
    PERFORM setval(pg_get_serial_sequence('public.cart', 'id_cart'), 1);
    PERFORM setval(pg_get_serial_sequence('public.cart_item', 'id_cart_item'), 2);
END
$$;

COMMIT;
