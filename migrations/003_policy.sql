-- roomcast 003: the default room policy realtime.can_join(claims, room), which roomcast asks
-- with AUTHZ=sql. A DBA may replace it with CREATE OR REPLACE FUNCTION (same signature);
-- re-running this file restores the default. Re-runnable.
BEGIN;
SET LOCAL client_min_messages = warning;

-- Is the caller (already reduced to ids) the order's client or a seller with an item in it?
-- Callers check that the marketplace tables exist.
CREATE OR REPLACE FUNCTION realtime.order_member(order_id bigint, sub text, client_ids text[],
                                                 seller_ids text[])
RETURNS boolean
LANGUAGE plpgsql STABLE
SET search_path = pg_catalog, pg_temp
AS $$
BEGIN
    RETURN EXISTS (
        SELECT 1
          FROM public."order" o
         WHERE o.id_order = order_id
           AND (o.id_client::text = ANY (client_ids)
                OR (sub IS NOT NULL
                    AND EXISTS (SELECT 1 FROM public.client c
                                 WHERE c.id_client = o.id_client AND c.user_id::text = sub))
                OR EXISTS (SELECT 1
                             FROM public.product_order po
                             JOIN public.product p ON p.id_product = po.id_product
                             LEFT JOIN public.seller s ON s.id_seller = p.id_seller
                            WHERE po.id_order = o.id_order
                              AND (p.id_seller::text = ANY (seller_ids)
                                   OR (sub IS NOT NULL AND s.user_id::text = sub)))));
END
$$;
REVOKE ALL ON FUNCTION realtime.order_member(bigint, text, text[], text[]) FROM PUBLIC;

-- claims: the verified JWT claims. Identity as in the token rules: user id = sub, else user_id,
-- else id; client id = client_id or id_client; seller id = seller_id or id_seller, or
-- reference_id when role is seller (other roles use reference_id for other things).
-- Rules: admins any room; `admins` admins only; the token's `rooms` patterns (* wildcard);
-- user-<id> that user; product-<id> anyone authenticated; client-<id>/seller-<id> by claim id
-- or by client.user_id/seller.user_id = user id; order-<id> the order's client or a seller
-- with an item in it; delivery-<id> the same for an order referencing it; anything else false.
-- Marketplace rooms are false while the marketplace tables do not exist.
CREATE OR REPLACE FUNCTION realtime.can_join(claims jsonb, room text)
RETURNS boolean
LANGUAGE plpgsql STABLE SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    v_role text := lower(coalesce(claims ->> 'role', ''));
    v_sub text := coalesce(nullif(claims ->> 'sub', ''), nullif(claims ->> 'user_id', ''),
                           nullif(claims ->> 'id', ''));
    v_client_ids text[];
    v_seller_ids text[];
    v_kind text;
    v_id_text text;
    v_id bigint;
    v_pattern text;
BEGIN
    IF claims IS NULL OR jsonb_typeof(claims) <> 'object' OR room IS NULL
       OR room !~ '^[A-Za-z0-9_.:-]{1,128}$' THEN
        RETURN false;
    END IF;
    IF v_role = 'admin' THEN
        RETURN true;
    END IF;
    IF room = 'admins' THEN
        RETURN false;
    END IF;
    IF jsonb_typeof(claims -> 'rooms') = 'array' THEN
        FOR v_pattern IN SELECT jsonb_array_elements_text(claims -> 'rooms') LOOP
            -- * is the only wildcard: escape LIKE's own metacharacters first.
            IF room LIKE replace(replace(replace(replace(v_pattern, '\', '\\'), '%', '\%'),
                                         '_', '\_'), '*', '%') THEN
                RETURN true;
            END IF;
        END LOOP;
    END IF;

    v_kind := substring(room FROM '^([a-z]+)-[0-9]{1,18}$');
    IF v_kind IS NULL THEN
        RETURN false;
    END IF;
    v_id_text := substring(room FROM '-([0-9]{1,18})$');
    v_id := v_id_text::bigint;
    v_client_ids := array_remove(ARRAY[claims ->> 'client_id', claims ->> 'id_client'], NULL);
    v_seller_ids := array_remove(ARRAY[claims ->> 'seller_id', claims ->> 'id_seller',
                                       CASE WHEN v_role = 'seller' THEN claims ->> 'reference_id' END],
                                 NULL);

    CASE v_kind
    WHEN 'user' THEN
        RETURN v_sub IS NOT NULL AND v_sub = v_id_text;
    WHEN 'product' THEN
        RETURN true;
    WHEN 'client' THEN
        IF v_id_text = ANY (v_client_ids) THEN
            RETURN true;
        END IF;
        IF v_sub IS NULL OR to_regclass('public.client') IS NULL THEN
            RETURN false;
        END IF;
        RETURN EXISTS (SELECT 1 FROM public.client c
                        WHERE c.id_client = v_id AND c.user_id::text = v_sub);
    WHEN 'seller' THEN
        IF v_id_text = ANY (v_seller_ids) THEN
            RETURN true;
        END IF;
        IF v_sub IS NULL OR to_regclass('public.seller') IS NULL THEN
            RETURN false;
        END IF;
        RETURN EXISTS (SELECT 1 FROM public.seller s
                        WHERE s.id_seller = v_id AND s.user_id::text = v_sub);
    WHEN 'order', 'delivery' THEN
        IF to_regclass('public."order"') IS NULL OR to_regclass('public.client') IS NULL
           OR to_regclass('public.product_order') IS NULL OR to_regclass('public.product') IS NULL
           OR to_regclass('public.seller') IS NULL THEN
            RETURN false;
        END IF;
        IF v_kind = 'order' THEN
            RETURN realtime.order_member(v_id, v_sub, v_client_ids, v_seller_ids);
        END IF;
        RETURN EXISTS (SELECT 1 FROM public."order" o
                        WHERE o.id_delivery = v_id
                          AND realtime.order_member(o.id_order, v_sub, v_client_ids, v_seller_ids));
    ELSE
        RETURN false;
    END CASE;
END
$$;
-- It reveals who owns what: callable by its owner (roomcast's role) and roles a DBA grants.
REVOKE ALL ON FUNCTION realtime.can_join(jsonb, text) FROM PUBLIC;

COMMIT;
