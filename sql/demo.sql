-- Demo rows for sql/marketplace.sql: sellers 1..3, clients 1..3 and admin 1 with fixed auth
-- user ids (the JWT sub) 00000000-0000-4000-a000-000000000101..103 (sellers), ...201..203
-- (clients) and ...301 (admin); six products, two deliveries, four orders with items. Inserted
-- only while the seller table is empty, so re-running changes nothing; sequences are moved past
-- the fixed ids so later inserts get fresh ones.
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

    INSERT INTO public.seller (id_seller, user_id, seller_name, seller_email, seller_password,
                               phone, bussines_name, location) VALUES
        (1, '00000000-0000-4000-a000-000000000101', 'Ingrid Berg', 'sales@nordic.example',
         'x', 4790000001, 'Nordic Goods', 'Oslo'),
        (2, '00000000-0000-4000-a000-000000000102', 'Lucia Verde', 'hola@casaverde.example',
         'x', 34600000002, 'Casa Verde', 'Sevilla'),
        (3, '00000000-0000-4000-a000-000000000103', 'Tom Kiln', 'hello@kiln.example',
         'x', 44700000003, 'Kiln & Co', 'Stoke');

    INSERT INTO public.client (id_client, user_id, client_name, client_email, client_password,
                               address, phone) VALUES
        (1, '00000000-0000-4000-a000-000000000201', 'Ada Lovelace', 'ada@example.com', 'x',
         '12 Analytical St, London', '+44 20 0001'),
        (2, '00000000-0000-4000-a000-000000000202', 'Alan Turing', 'alan@example.com', 'x',
         '3 Bletchley Rd, Milton Keynes', '+44 19 0002'),
        (3, '00000000-0000-4000-a000-000000000203', 'Grace Hopper', 'grace@example.com', 'x',
         '99 Cobol Ave, Arlington', '+1 703 0003');

    INSERT INTO public.admin (id_admin, user_id, admin_name, admin_email, admin_password) VALUES
        (1, '00000000-0000-4000-a000-000000000301', 'Site Admin', 'admin@example.com', 'x');

    INSERT INTO public.category (id_category, category_name) VALUES (1, 'Home'), (2, 'Kitchen');
    INSERT INTO public.inventory (id_inventory, id_seller) VALUES (1, 1), (2, 2), (3, 3);
    INSERT INTO public.payment_method (id_payment_method, method_name) VALUES
        (1, 'card'), (2, 'bank transfer');

    INSERT INTO public.product (id_product, id_seller, id_inventory, id_category, product_name,
                                description, price, stock, status) VALUES
        (1, 1, 1, 1, 'Wool blanket', 'Grey merino, 150x200', 89.00, 12, 'active'),
        (2, 1, 1, 2, 'Birch cutting board', 'End grain', 34.50, 40, 'active'),
        (3, 2, 2, 2, 'Olive oil 1L', 'Cold pressed', 18.90, 100, 'active'),
        (4, 2, 2, 1, 'Terracotta pot', '30 cm', 22.00, 0, 'inactive'),
        (5, 3, 3, 2, 'Stoneware mug', '350 ml, speckled', 16.00, 60, 'active'),
        (6, 3, 3, 2, 'Serving bowl', 'Hand thrown', 48.00, 8, 'pending');

    INSERT INTO public.delivery (id_delivery, delivery_address, city, status, delivery_person,
                                 delivery_cost) VALUES
        (1, '12 Analytical St', 'London', 'in_transit', 'DHL', 5.00),
        (2, '99 Cobol Ave', 'Arlington', 'pending', NULL, 7.50);

    INSERT INTO public.cart (id_cart, id_client, status) VALUES
        (1, 1, 'completed'), (2, 2, 'completed'), (3, 3, 'completed');

    INSERT INTO public."order" (id_order, id_client, id_cart, id_payment_method, id_delivery,
                                status, total_amount, delivery_type, payment_status) VALUES
        (1, 1, 1, 1, 1, 'shipped', 126.80, 'standard', 'paid'),
        (2, 2, 2, 1, 1, 'shipped', 32.00, 'standard', 'paid'),
        (3, 3, 3, 2, 2, 'payment_confirmed', 148.50, 'express', 'paid'),
        (4, 1, 1, 1, NULL, 'pending', 34.50, 'standard', 'pending');

    INSERT INTO public.product_order (id_product_order, id_order, id_product, price_unit,
                                      subtotal) VALUES
        (1, 1, 1, 89.00, 89.00),
        (2, 1, 3, 18.90, 37.80),
        (3, 2, 5, 16.00, 32.00),
        (4, 3, 2, 34.50, 34.50),
        (5, 3, 4, 22.00, 66.00),
        (6, 3, 6, 48.00, 48.00),
        (7, 4, 2, 34.50, 34.50);

    -- The rows above bypassed the serial sequences.
    PERFORM setval(pg_get_serial_sequence('public.seller', 'id_seller'), 3);
    PERFORM setval(pg_get_serial_sequence('public.client', 'id_client'), 3);
    PERFORM setval(pg_get_serial_sequence('public.admin', 'id_admin'), 1);
    PERFORM setval(pg_get_serial_sequence('public.category', 'id_category'), 2);
    PERFORM setval(pg_get_serial_sequence('public.inventory', 'id_inventory'), 3);
    PERFORM setval(pg_get_serial_sequence('public.payment_method', 'id_payment_method'), 2);
    PERFORM setval(pg_get_serial_sequence('public.product', 'id_product'), 6);
    PERFORM setval(pg_get_serial_sequence('public.delivery', 'id_delivery'), 2);
    PERFORM setval(pg_get_serial_sequence('public.cart', 'id_cart'), 3);
    PERFORM setval(pg_get_serial_sequence('public."order"', 'id_order'), 4);
    PERFORM setval(pg_get_serial_sequence('public.product_order', 'id_product_order'), 7);
END
$$;

COMMIT;
