"""Ready-made integrations with application frameworks.

Each module needs its framework, installed through the matching extra (``celery``);
nothing here is imported by the core handlers.
"""
