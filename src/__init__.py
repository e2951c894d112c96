"""mailhandlers: SMTP sending and POP3 retrieval for Python applications."""

__version__ = "0.1.0"
