"""The in-memory provider: the same semantics as the PostgreSQL adapter, for tests."""
