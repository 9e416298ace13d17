-- The marketplace schema (schema public) as the REST service creates it. roomcast never writes
-- these tables: its triggers read them and its policy (realtime.can_join) checks ownership in
-- them. For `make run` and the tests. Idempotent: psql -v ON_ERROR_STOP=1 -f marketplace.sql
BEGIN;
SET LOCAL client_min_messages = warning;

DO $$
BEGIN
    IF to_regtype('public.product_status_enum') IS NULL THEN
        CREATE TYPE public.product_status_enum AS ENUM ('active', 'inactive', 'out_of_stock');
    END IF;
END
$$;

CREATE TABLE IF NOT EXISTS public.seller (
    id_seller serial PRIMARY KEY,
    user_id integer UNIQUE,
    name varchar(120) NOT NULL,
    email varchar(255),
    phone varchar(40),
    created_at timestamptz NOT NULL DEFAULT now()
);

CREATE TABLE IF NOT EXISTS public.client (
    id_client serial PRIMARY KEY,
    user_id integer UNIQUE,
    name varchar(120) NOT NULL,
    email varchar(255) NOT NULL,
    phone varchar(40),
    address text,
    created_at timestamptz NOT NULL DEFAULT now()
);

CREATE TABLE IF NOT EXISTS public.product (
    id_product serial PRIMARY KEY,
    id_seller integer NOT NULL REFERENCES public.seller (id_seller),
    name varchar(200) NOT NULL,
    description text,
    price numeric(10, 2) NOT NULL CHECK (price >= 0),
    stock integer NOT NULL DEFAULT 0 CHECK (stock >= 0),
    status public.product_status_enum NOT NULL DEFAULT 'active',
    created_at timestamptz NOT NULL DEFAULT now(),
    updated_at timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX IF NOT EXISTS product_id_seller_idx ON public.product (id_seller);

CREATE TABLE IF NOT EXISTS public.delivery (
    id_delivery serial PRIMARY KEY,
    status text NOT NULL DEFAULT 'pending',
    address text NOT NULL,
    carrier varchar(80),
    tracking_number varchar(80),
    estimated_at timestamptz,
    created_at timestamptz NOT NULL DEFAULT now(),
    updated_at timestamptz NOT NULL DEFAULT now()
);

CREATE TABLE IF NOT EXISTS public."order" (
    id_order serial PRIMARY KEY,
    id_client integer NOT NULL REFERENCES public.client (id_client),
    id_delivery integer NULL REFERENCES public.delivery (id_delivery),
    status text NOT NULL DEFAULT 'pending',
    total numeric(12, 2) NOT NULL DEFAULT 0,
    created_at timestamptz NOT NULL DEFAULT now(),
    updated_at timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX IF NOT EXISTS order_id_client_idx ON public."order" (id_client);
CREATE INDEX IF NOT EXISTS order_id_delivery_idx ON public."order" (id_delivery);

CREATE TABLE IF NOT EXISTS public.product_order (
    id_product_order serial PRIMARY KEY,
    id_order integer NOT NULL REFERENCES public."order" (id_order) ON DELETE CASCADE,
    id_product integer NOT NULL REFERENCES public.product (id_product),
    quantity integer NOT NULL CHECK (quantity > 0),
    price numeric(10, 2) NOT NULL
);
CREATE INDEX IF NOT EXISTS product_order_id_order_idx ON public.product_order (id_order);
CREATE INDEX IF NOT EXISTS product_order_id_product_idx ON public.product_order (id_product);

CREATE TABLE IF NOT EXISTS public.cart (
    id_cart serial PRIMARY KEY,
    id_client integer NOT NULL UNIQUE REFERENCES public.client (id_client) ON DELETE CASCADE,
    created_at timestamptz NOT NULL DEFAULT now(),
    updated_at timestamptz NOT NULL DEFAULT now()
);

CREATE TABLE IF NOT EXISTS public.cart_item (
    id_cart_item serial PRIMARY KEY,
    id_cart integer NOT NULL REFERENCES public.cart (id_cart) ON DELETE CASCADE,
    id_product integer NOT NULL REFERENCES public.product (id_product),
    quantity integer NOT NULL CHECK (quantity > 0),
    UNIQUE (id_cart, id_product)
);

COMMIT;
