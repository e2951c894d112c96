"""DKIM signing of outgoing messages (RFC 6376, Ed25519 from RFC 8463), through dkimpy."""
