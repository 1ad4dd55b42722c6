"""The workflow runtime: events, sweeps of due timeouts and the worker loop."""
