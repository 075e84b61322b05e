"""cardmint.server.domain: the business rules (catalog, lots, cards, balances, auth) in plain
Python. No grpc, no SQL: it calls cardmint.server.storage and raises domain errors."""
