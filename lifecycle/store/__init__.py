"""Storage: the tables (models), the database and its migrations, settings, errors, the outbox, idempotency keys, bulk
writes and the usage partitions."""
