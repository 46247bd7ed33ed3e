"""PostgreSQL, the history of record: for one node instead of SQLite, or shared by several."""
