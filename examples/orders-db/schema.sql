CREATE TABLE IF NOT EXISTS orders (
    id       bigserial PRIMARY KEY,
    customer text NOT NULL,
    item     text NOT NULL,
    qty      int NOT NULL CHECK (qty > 0),
    status   text NOT NULL DEFAULT 'placed',
    placed   timestamptz NOT NULL DEFAULT now()
);
