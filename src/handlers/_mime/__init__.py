"""MIME: building outgoing messages, reading fetched ones, address and attachment checks."""
