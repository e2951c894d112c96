"""The keys of the message dict the POP3 spec promises, in the order it lists them."""

from __future__ import annotations

SPEC_KEYS = [
    "messageId",
    "popId",
    "messageIdHeader",
    "from",
    "to",
    "cc",
    "bcc",
    "subject",
    "textBody",
    "htmlBody",
    "receivedAt",
    "size",
    "attachmentCount",
    "attachments",
    "isRead",
    "isStarred",
    "isDeleted",
    "isSpam",
    "isDraft",
    "isSent",
]
