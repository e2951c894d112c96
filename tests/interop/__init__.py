"""Interoperability tests against private Postfix and Dovecot instances."""
