"""The SASL layer shared by SMTP and POP3 logins: no I/O, no protocol knowledge.

Each mechanism is a client state machine (:class:`Mechanism`): the protocol layer asks
it for the initial response, feeds it each server challenge, and reports the server's
success with :meth:`Mechanism.verify_final`. :func:`choose_mechanisms` picks the
candidates, :func:`create_mechanism` builds one, and :func:`mask_secrets` hides every
form of a secret in what the server echoes.
"""

from __future__ import annotations

from .._net.masking import MASK, base64_forms, mask_secrets
from .base import Hidden, Mechanism, State
from .channel_binding import ChannelBinding, tls_server_end_point
from .errors import (
    CleartextRefusedError,
    NoMechanismError,
    SASLAuthenticationError,
    SASLFailure,
    SASLPrepError,
    SASLProtocolError,
    SASLSecurityError,
    SASLServerVerificationError,
    SASLStateError,
)
from .oauth import OAuthBearer, XOAuth2, parse_error_challenge
from .saslprep import saslprep
from .scram import MAX_ITERATIONS, MIN_ITERATIONS, SCRAM_HASHES, Scram, default_nonce
from .selection import (
    CHANNEL_BOUND,
    CLEARTEXT,
    PREFERENCE,
    SUPPORTED,
    CredentialKind,
    Refusal,
    choose_mechanisms,
    cleartext_consent,
    create_mechanism,
)
from .simple import CramMD5, External, Login, Plain, apop_digest, apop_timestamp

__all__ = [
    "CHANNEL_BOUND",
    "CLEARTEXT",
    "MASK",
    "MAX_ITERATIONS",
    "MIN_ITERATIONS",
    "PREFERENCE",
    "SCRAM_HASHES",
    "SUPPORTED",
    "ChannelBinding",
    "CleartextRefusedError",
    "CramMD5",
    "CredentialKind",
    "External",
    "Hidden",
    "Login",
    "Mechanism",
    "NoMechanismError",
    "OAuthBearer",
    "Plain",
    "Refusal",
    "SASLAuthenticationError",
    "SASLFailure",
    "SASLPrepError",
    "SASLProtocolError",
    "SASLSecurityError",
    "SASLServerVerificationError",
    "SASLStateError",
    "Scram",
    "State",
    "XOAuth2",
    "apop_digest",
    "apop_timestamp",
    "base64_forms",
    "choose_mechanisms",
    "cleartext_consent",
    "create_mechanism",
    "default_nonce",
    "mask_secrets",
    "parse_error_challenge",
    "saslprep",
    "tls_server_end_point",
]
