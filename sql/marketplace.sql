-- The marketplace schema (schema public) exactly as the REST service's TypeORM `synchronize`
-- creates it: serial keys, timestamp WITHOUT time zone DEFAULT now(), only the foreign keys it
-- declares (none on product.id_seller, "order".id_client, "order".id_payment_method, delivery).
-- roomcast never writes these tables: its triggers read them and its policy (realtime.can_join,
-- realtime.identity) checks ownership in them. For `make run` and the tests; the REST service
-- creates the same tables itself, before or after roomcast's migrations (migration 007 attaches
-- the triggers either way). Idempotent: psql -v ON_ERROR_STOP=1 -f marketplace.sql
BEGIN;
SET LOCAL client_min_messages = warning;

DO $$
BEGIN
    IF to_regtype('public.product_status_enum') IS NULL THEN
        CREATE TYPE public.product_status_enum AS ENUM ('pending', 'active', 'rejected', 'inactive');
    END IF;
END
$$;

CREATE TABLE IF NOT EXISTS public.seller (
    id_seller serial PRIMARY KEY,
    user_id uuid NULL, -- the auth service's user id (the JWT's sub)
    seller_name varchar(100) NOT NULL,
    seller_email varchar(100) NOT NULL UNIQUE,
    seller_password varchar(255) NOT NULL,
    phone bigint NOT NULL,
    bussines_name varchar(150) NOT NULL,
    location varchar(255) NOT NULL,
    created_at timestamp NOT NULL DEFAULT now()
);

CREATE TABLE IF NOT EXISTS public.client (
    id_client serial PRIMARY KEY,
    user_id uuid NULL,
    client_name varchar(100) NOT NULL,
    client_email varchar(100) NOT NULL UNIQUE,
    client_password varchar(255) NOT NULL,
    address varchar(255) NOT NULL,
    phone varchar(20) NOT NULL,
    document_type varchar(20) NULL,
    document_number varchar(50) NULL,
    birth_date date NULL,
    avatar_url text NULL,
    additional_addresses text NULL,
    created_at timestamp NOT NULL DEFAULT now()
);

CREATE TABLE IF NOT EXISTS public.admin (
    id_admin serial PRIMARY KEY,
    user_id uuid NULL,
    admin_name varchar(100) NOT NULL,
    admin_email varchar(100) NOT NULL UNIQUE,
    admin_password varchar(255) NOT NULL,
    role varchar(50) NOT NULL DEFAULT 'admin',
    created_at timestamp NOT NULL DEFAULT now()
);

CREATE TABLE IF NOT EXISTS public.category (
    id_category serial PRIMARY KEY,
    category_name varchar(100) NOT NULL,
    description text NULL
);

CREATE TABLE IF NOT EXISTS public.sub_category (
    id_sub_category serial PRIMARY KEY,
    id_category integer NULL REFERENCES public.category (id_category),
    sub_category_name varchar(100) NOT NULL,
    description text NULL
);

CREATE TABLE IF NOT EXISTS public.inventory (
    id_inventory serial PRIMARY KEY,
    id_seller integer NULL REFERENCES public.seller (id_seller),
    updated_at timestamp NOT NULL DEFAULT now()
);

CREATE TABLE IF NOT EXISTS public.product (
    id_product serial PRIMARY KEY,
    id_seller integer NOT NULL, -- no foreign key
    id_inventory integer NULL REFERENCES public.inventory (id_inventory),
    id_category integer NULL REFERENCES public.category (id_category),
    id_sub_category integer NULL REFERENCES public.sub_category (id_sub_category),
    product_name varchar(150) NOT NULL,
    description text NULL,
    price numeric(10, 2) NOT NULL,
    stock integer NOT NULL,
    image_url text NULL,
    status public.product_status_enum NOT NULL DEFAULT 'pending',
    created_at timestamp NOT NULL DEFAULT now()
);

CREATE TABLE IF NOT EXISTS public.sub_category_product (
    id_sub_category_product serial PRIMARY KEY,
    id_sub_category integer NOT NULL,
    id_product integer NOT NULL
);

CREATE TABLE IF NOT EXISTS public.payment_method (
    id_payment_method serial PRIMARY KEY,
    method_name varchar(100) NOT NULL,
    description text NULL
);

CREATE TABLE IF NOT EXISTS public.delivery (
    id_delivery serial PRIMARY KEY,
    id_product integer NULL, -- no foreign key; orders point here through "order".id_delivery
    delivery_address varchar(255) NOT NULL,
    city varchar(100) NOT NULL,
    status varchar(50) NOT NULL DEFAULT 'pending', -- free text
    estimated_time timestamp NULL,
    delivery_person varchar(100) NULL,
    delivery_cost numeric(10, 2) NOT NULL DEFAULT 0,
    phone bigint NULL
);

CREATE TABLE IF NOT EXISTS public.cart (
    id_cart serial PRIMARY KEY,
    id_client integer NULL REFERENCES public.client (id_client),
    status varchar(50) NOT NULL DEFAULT 'active',
    id_product integer NULL,
    quantity integer NULL
);

CREATE TABLE IF NOT EXISTS public.product_cart (
    id_product_cart serial PRIMARY KEY,
    id_product integer NULL REFERENCES public.product (id_product),
    id_cart integer NULL REFERENCES public.cart (id_cart),
    quantity integer NOT NULL,
    added_at timestamp NOT NULL DEFAULT now(),
    updated_at timestamp NOT NULL DEFAULT now()
);

CREATE TABLE IF NOT EXISTS public."order" (
    id_order serial PRIMARY KEY,
    order_date timestamp NOT NULL DEFAULT now(),
    status varchar(50) NOT NULL DEFAULT 'pending',
    total_amount numeric(10, 2) NOT NULL,
    delivery_type varchar(100) NOT NULL,
    id_client integer NOT NULL, -- no foreign key
    id_cart integer NULL REFERENCES public.cart (id_cart),
    id_payment_method integer NOT NULL, -- no foreign key
    id_delivery integer NULL REFERENCES public.delivery (id_delivery),
    payment_receipt_url text NULL,
    payment_verified_at timestamp NULL,
    transaction_id varchar(255) NULL,
    payment_status varchar(50) NOT NULL DEFAULT 'pending',
    payment_error text NULL,
    -- added later by one of the REST service's SQL migrations
    coupon_code varchar(50) NULL,
    discount_amount numeric(10, 2) NULL DEFAULT 0
);

-- No quantity column: the REST service keeps price_unit and subtotal.
CREATE TABLE IF NOT EXISTS public.product_order (
    id_product_order serial PRIMARY KEY,
    id_order integer NULL REFERENCES public."order" (id_order) ON DELETE CASCADE,
    id_product integer NULL REFERENCES public.product (id_product),
    price_unit numeric(10, 2) NOT NULL,
    subtotal numeric(10, 2) NOT NULL,
    created_at timestamp NOT NULL DEFAULT now(),
    rating integer NULL,
    review_comment text NULL,
    reviewed_at timestamp NULL
);

CREATE TABLE IF NOT EXISTS public.coupons (
    id_coupon serial PRIMARY KEY,
    code varchar(50) NOT NULL UNIQUE,
    description text NULL,
    discount_type varchar(20) NOT NULL DEFAULT 'percentage',
    discount_value numeric(10, 2) NOT NULL DEFAULT 0,
    order_id integer NULL, -- no foreign key
    is_active boolean NOT NULL DEFAULT true,
    created_at timestamp NOT NULL DEFAULT now()
);

COMMIT;
