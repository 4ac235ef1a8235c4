"""PostgreSQL adapter: connections, migrations, every SQL statement, and the pool store."""
