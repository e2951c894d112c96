"""Test helpers shipped with mailhandlers: in-process mail servers and TLS material.

These modules need the ``testing`` extra (``aiosmtpd``, ``trustme``); the core
handlers do not import them.
"""
