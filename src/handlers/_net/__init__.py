"""Shared network pieces: TLS context, deadlines, fork safety, the protocol trace."""
