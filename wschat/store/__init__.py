"""The durable history on one node: SQLite, its schema files and its sweeps."""
