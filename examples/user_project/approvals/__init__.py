"""A small expense-approval app: the workflow, its commands, and the app's own table."""

from approvals.app import EXPENSE, SCHEMA, build_runtime, create_schema, submit_claim

__all__ = ["EXPENSE", "SCHEMA", "build_runtime", "create_schema", "submit_claim"]
