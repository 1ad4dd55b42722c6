"""The ``duraflows-pg`` command line and its demo."""
