"""The POP3 session: the wire, commands, logging in, mailbox operations, the pool."""
