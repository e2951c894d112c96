"""SMTP and POP3 handlers."""

import logging

logging.getLogger(__name__).addHandler(logging.NullHandler())
