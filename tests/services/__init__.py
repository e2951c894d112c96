"""Private data servers (PostgreSQL, Redis) and real Celery workers for the many-worker tests."""
