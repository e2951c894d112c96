"""Secrets and OAuth2 token sources shared by SMTP and POP3."""
