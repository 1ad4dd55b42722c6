"""Shared by the PostgreSQL adapter, the runtime and the in-memory provider: the persistence
model, the contracts (Protocols), input checks, storable text and tracing."""
