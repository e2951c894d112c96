"""The SMTP session: connecting, logging in, transactions, the connection pool."""
