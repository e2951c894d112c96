"""Ready-made SMTP scripts for :class:`~src.testing.scripted_server.ScriptedServer`.

:class:`SMTPDialogue` is a small, configurable ESMTP server conversation: greeting,
EHLO/HELO, optional STARTTLS and AUTH, MAIL, RCPT, DATA (body read up to the final
dot), RSET, NOOP and QUIT. Any reply can be replaced, per command and per
occurrence, by another reply or by one of two actions: :data:`DROP` closes the
connection instead of answering, :data:`SILENT` never answers and waits for the
client to give up. The functions below cover the usual misbehaviours::

    ScriptedServer([smtp_refuse_connection(421), smtp_accept_all])   # 421, then accept
    ScriptedServer(SMTPDialogue(rcpt_replies={"bad@example.org": (550, "5.1.1 Unknown")}))
    ScriptedServer(SMTPDialogue(end_of_data=(552, "5.3.4 Too big")))
    ScriptedServer(drop_mid_data)           # connection lost inside the body
    ScriptedServer(drop_after_final_dot)    # body complete, reply never sent
    ScriptedServer(greet_then_silent)       # 220, then nothing

Every complete message body a dialogue read (up to and including the final
``CRLF.CRLF``, still dot-stuffed) is appended to the conversation's ``blocks``, so
``server.conversations[0].blocks == []`` proves no body was ever completed there.
"""

from __future__ import annotations

import base64
import binascii
import contextlib
import enum
import ssl
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import cast

from src.testing.scripted_server import Conversation, Script

__all__ = [
    "DROP",
    "SILENT",
    "Action",
    "Response",
    "SMTPDialogue",
    "drop_after_final_dot",
    "drop_mid_data",
    "greet_then_silent",
    "no_greeting",
    "render_reply",
    "send_reply",
    "silent_after_final_dot",
    "smtp_accept_all",
    "smtp_refuse_connection",
    "smtp_reply_then_accept",
]

END_OF_DATA = b"\r\n.\r\n"
_WAIT_FOR_CLIENT = 30.0  # how long SILENT waits; stopping the server cuts it short


class Action(enum.Enum):
    """Something to do instead of sending a reply."""

    DROP = "drop"
    """Close the connection without replying."""
    SILENT = "silent"
    """Never reply; keep reading until the client closes or the server stops."""


DROP = Action.DROP
SILENT = Action.SILENT

Reply = tuple[int, str]
Response = Reply | Action


def render_reply(code: int, text: str = "OK") -> bytes:
    """An SMTP reply as wire bytes; newlines in ``text`` make it a multi-line reply."""
    lines = text.splitlines() or [""]
    wire = "".join(f"{code}-{line}\r\n" for line in lines[:-1]) + f"{code} {lines[-1]}\r\n"
    return wire.encode("utf-8")


def send_reply(conv: Conversation, code: int, text: str = "OK") -> None:
    """Send an SMTP reply; newlines in ``text`` make it a multi-line reply."""
    conv.send(render_reply(code, text))


class _Stop(Exception):
    """Raised inside a dialogue to end the script (connection closed or silenced)."""


@dataclass
class SMTPDialogue:
    """A configurable ESMTP server conversation; call it with a :class:`Conversation`.

    * ``greeting``: the opening reply (or an :class:`Action`).
    * ``server_name``: first word of the EHLO reply.
    * ``extensions``: EHLO keywords; ``STARTTLS`` is added when ``tls_context`` is
      set (and TLS is not yet active), ``AUTH <mechanisms>`` when
      ``auth_mechanisms`` is not empty.
    * ``replies``: per command verb (``"EHLO"``, ``"MAIL"``, ``"RCPT"``, ``"DATA"``,
      ``"AUTH"``, ``"STARTTLS"``, ``"RSET"``, ``"NOOP"``, ``"QUIT"``, ...), a response
      replacing the default, or a sequence of responses used for the 1st, 2nd, ...
      occurrence of that verb on this connection (later ones get the default). A
      ``DATA`` reply other than 354 means no body is read; a ``STARTTLS`` reply of
      220 still starts TLS.
    * ``rcpt_replies``: per recipient address (case-insensitive), the RCPT reply.
    * ``end_of_data``: the reply after the final dot (or to ``BDAT ... LAST``, whose
      chunk is read whatever ``extensions`` say), or a sequence of them for the 1st,
      2nd, ... message of this connection.
    * ``drop_after_body_lines``: close the connection after reading that many lines
      of a message body.
    * ``reply_delay`` is waited before each reply; with ``drip_interval`` each reply
      is sent one byte at a time.
    * ``command_timeout``: how long to wait for the next client line.

    Default replies accept everything, AUTH included. The client gets no reply to
    anything after a response of :data:`DROP` or :data:`SILENT`.
    """

    greeting: Response = (220, "localhost ESMTP scripted test server")
    server_name: str = "localhost"
    extensions: Sequence[str] = ("8BITMIME", "SMTPUTF8", "ENHANCEDSTATUSCODES")
    replies: Mapping[str, Response | Sequence[Response]] = field(default_factory=dict)
    rcpt_replies: Mapping[str, Response] = field(default_factory=dict)
    end_of_data: Response | Sequence[Response] = (250, "2.0.0 OK: queued")
    drop_after_body_lines: int | None = None
    tls_context: ssl.SSLContext | None = None
    auth_mechanisms: Sequence[str] = ()
    reply_delay: float = 0.0
    drip_interval: float | None = None
    command_timeout: float = 5.0

    def __call__(self, conv: Conversation) -> None:
        """Run the dialogue on one connection until QUIT, EOF or an action ends it.

        A client that vanishes (reset or broken pipe) simply ends the dialogue.
        """
        with contextlib.suppress(_Stop, ConnectionResetError, BrokenPipeError):
            self._run(conv)

    # -- the conversation -------------------------------------------------------

    def _run(self, conv: Conversation) -> None:
        counts: dict[str, int] = {}
        messages = 0
        self._respond(conv, self.greeting)
        while True:
            line = conv.recv_line(self.command_timeout)
            if line is None or not line.endswith(b"\n"):
                return
            command = line.rstrip(b"\r\n").decode("utf-8", "replace")
            verb, _, argument = command.partition(" ")
            verb = verb.upper()
            counts[verb] = counts.get(verb, 0) + 1
            override = self._override(verb, counts[verb])
            if verb in ("EHLO", "HELO"):
                self._respond(conv, override or self._helo_reply(verb, conv))
            elif verb == "STARTTLS":
                self._starttls(conv, override)
            elif verb == "AUTH":
                self._auth(conv, argument, override)
            elif verb == "MAIL":
                self._respond(conv, override or (250, "2.1.0 OK"))
            elif verb == "RCPT":
                self._respond(conv, override or self._rcpt_reply(argument))
            elif verb == "DATA":
                response = override or (354, "End data with <CR><LF>.<CR><LF>")
                self._respond(conv, response)
                if isinstance(response, tuple) and response[0] == 354:
                    messages += 1
                    self._read_body(conv)
                    self._respond(conv, self._pick(self.end_of_data, messages))
            elif verb == "BDAT":
                if not self._read_chunk(conv, argument):
                    return
                if argument.upper().endswith(" LAST"):
                    messages += 1
                    self._respond(conv, override or self._pick(self.end_of_data, messages))
                else:
                    self._respond(conv, override or (250, "2.0.0 chunk received"))
            elif verb in ("RSET", "NOOP"):
                self._respond(conv, override or (250, "2.0.0 OK"))
            elif verb == "QUIT":
                self._respond(conv, override or (221, "2.0.0 Bye"))
                return
            else:
                self._respond(conv, override or (502, "5.5.2 Command not recognized"))

    def _helo_reply(self, verb: str, conv: Conversation) -> Reply:
        if verb == "HELO":
            return (250, self.server_name)
        keywords = list(self.extensions)
        if self.tls_context is not None and not conv.tls:
            keywords.append("STARTTLS")
        if self.auth_mechanisms:
            keywords.append("AUTH " + " ".join(self.auth_mechanisms))
        return (250, "\n".join([self.server_name, *keywords]))

    def _rcpt_reply(self, argument: str) -> Response:
        address = argument.partition(":")[2].strip()
        address = address.split(">", 1)[0].lstrip("<").strip()
        folded = address.casefold()
        for candidate, response in self.rcpt_replies.items():
            if candidate.casefold() == folded:
                return response
        return (250, "2.1.5 OK")

    def _starttls(self, conv: Conversation, override: Response | None) -> None:
        if self.tls_context is None or conv.tls:
            self._respond(conv, override or (454, "4.7.0 TLS not available"))
            return
        response = override or (220, "2.0.0 Ready to start TLS")
        self._respond(conv, response)
        if isinstance(response, tuple) and response[0] == 220:
            conv.start_tls(self.tls_context)

    def _auth(self, conv: Conversation, argument: str, override: Response | None) -> None:
        mechanism, _, initial = argument.partition(" ")
        mechanism = mechanism.upper()
        if mechanism not in (m.upper() for m in self.auth_mechanisms) or mechanism not in (
            "PLAIN",
            "LOGIN",
        ):
            self._respond(conv, override or (504, "5.5.4 Unrecognized authentication type"))
            return
        if mechanism == "PLAIN":
            steps = [] if initial else [""]
        else:
            steps = ["Password:"] if initial else ["Username:", "Password:"]
        for prompt in steps:
            self._respond(conv, (334, base64.b64encode(prompt.encode()).decode()))
            answer = conv.recv_line(self.command_timeout)
            if answer is None:
                raise _Stop
            answer = answer.strip()
            if answer == b"*":
                self._respond(conv, (501, "5.7.0 Authentication aborted"))
                return
            try:
                base64.b64decode(answer, validate=True)
            except binascii.Error:
                self._respond(conv, (501, "5.5.2 Cannot decode base64"))
                return
        self._respond(conv, override or (235, "2.7.0 Authentication successful"))

    def _read_body(self, conv: Conversation) -> None:
        if self.drop_after_body_lines is not None:
            for _ in range(self.drop_after_body_lines):
                if conv.recv_line(self.command_timeout) is None:
                    break
            raise _Stop
        completed = len(conv.blocks)
        conv.recv_until(END_OF_DATA, self.command_timeout)
        if len(conv.blocks) == completed:
            raise _Stop  # the client went away inside the body

    def _read_chunk(self, conv: Conversation, argument: str) -> bool:
        """Read a BDAT chunk (RFC 3030); False if the client went away inside it."""
        size_text = argument.split(" ", 1)[0]
        if not size_text.isdigit():
            self._respond(conv, (501, "5.5.4 BDAT needs a chunk size"))
            return True
        size = int(size_text)
        if self.drop_after_body_lines is not None:
            for _ in range(self.drop_after_body_lines):
                if conv.recv_line(self.command_timeout) is None:
                    break
            return False
        return len(conv.recv_exactly(size, self.command_timeout)) == size

    # -- helpers ----------------------------------------------------------------

    def _override(self, verb: str, occurrence: int) -> Response | None:
        if verb not in self.replies:
            return None
        return self._pick(self.replies[verb], occurrence)

    @staticmethod
    def _pick(value: Response | Sequence[Response], occurrence: int) -> Response | None:
        if isinstance(value, Action) or _is_reply(value):
            return cast(Response, value)
        responses = cast(Sequence[Response], value)
        return responses[occurrence - 1] if occurrence <= len(responses) else None

    def _respond(self, conv: Conversation, response: Response | None) -> None:
        if response is None:
            response = (250, "2.0.0 OK")
        if response is DROP:
            raise _Stop
        if response is SILENT:
            conv.wait_closed(_WAIT_FOR_CLIENT)
            raise _Stop
        assert isinstance(response, tuple)
        if self.reply_delay > 0 and not conv.sleep(self.reply_delay):
            raise _Stop
        wire = render_reply(*response)
        if self.drip_interval is None:
            conv.send(wire)
        else:
            conv.drip(wire, self.drip_interval)


def _is_reply(value: object) -> bool:
    return (
        isinstance(value, tuple)
        and len(value) == 2
        and isinstance(value[0], int)
        and isinstance(value[1], str)
    )


def smtp_accept_all(conv: Conversation) -> None:
    """A minimal, correct ESMTP server that accepts every message."""
    SMTPDialogue()(conv)


def smtp_refuse_connection(code: int = 421, text: str = "4.3.2 Service not available") -> Script:
    """A script that greets with ``code``/``text`` (e.g. 421 or 554) and hangs up."""

    def refuse(conv: Conversation) -> None:
        send_reply(conv, code, text)

    return refuse


def smtp_reply_then_accept(verb: str, code: int, text: str, times: int = 1) -> Script:
    """A dialogue answering the first ``times`` ``verb`` commands with ``code``/``text``.

    Later commands, on the same connection, get the normal accepting replies.
    """
    return SMTPDialogue(replies={verb.upper(): [(code, text)] * times})


def no_greeting(conv: Conversation) -> None:
    """Accept the connection but never greet; wait until the client closes."""
    conv.wait_closed(_WAIT_FOR_CLIENT)


def greet_then_silent(conv: Conversation) -> None:
    """Send a normal 220 greeting, then never answer again."""
    send_reply(conv, 220, "localhost ESMTP")
    conv.wait_closed(_WAIT_FOR_CLIENT)


def drop_mid_data(conv: Conversation) -> None:
    """Accept up to DATA, read one line of the body, then close the connection."""
    SMTPDialogue(drop_after_body_lines=1)(conv)


def drop_after_final_dot(conv: Conversation) -> None:
    """Read a complete body, then close without the final reply."""
    SMTPDialogue(end_of_data=DROP)(conv)


def silent_after_final_dot(conv: Conversation) -> None:
    """Read a complete body, then never send the final reply."""
    SMTPDialogue(end_of_data=SILENT)(conv)
