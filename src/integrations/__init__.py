"""Ready-made integrations with application frameworks.

Each module needs its framework, installed through the matching extra: ``celery``
(``celery_tasks``, ``pop3_tasks``, and ``idempotency`` with Redis), ``postgres`` for
the stores on PostgreSQL, ``crypto`` (``credentials``). Nothing here is imported by
the core handlers.
"""
