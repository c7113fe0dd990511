"""Storage: schema, migrations, the bulk writer and the queries."""
