"""Measurements that need a fresh process (peak RSS); run by :mod:`bench.run`.

``python -m bench.child pop3-rss MODE HOST PORT USER PASSWORD`` fetches message 1 and
prints one JSON line: the message size and how far the peak RSS rose above the RSS
just before the fetch. MODE is ``fetch_message`` (parsed dict), ``raw`` (raw bytes
API) or ``poplib`` (stdlib RETR, lines joined).
"""

from __future__ import annotations

import gc
import json
import logging
import sys


def pop3_rss(mode: str, host: str, port: int, user: str, password: str) -> dict[str, int]:
    from bench import peers
    from bench.measure import peak_rss_kib, reset_peak_rss, rss_kib
    from src.handlers.pop3 import POP3ProtocolHandler

    logging.getLogger("src.handlers").setLevel(logging.ERROR)
    handler = POP3ProtocolHandler(host, port, user, password, encryption="none")
    handler.get_mailbox_stat()  # imports, connection code paths, TLS-free warm-up
    gc.collect()
    if not reset_peak_rss():
        raise SystemExit("cannot reset the peak RSS (/proc/self/clear_refs)")
    before = rss_kib()
    if mode == "fetch_message":
        message = handler.fetch_message(1)
        assert message is not None
        size = int(message["size"])
    elif mode == "raw":
        raw = handler.fetch_raw_messages([1])[1]
        size = len(raw)
    elif mode == "poplib":
        client = peers.poplib_login(host, port, user, password)
        size = len(peers.poplib_retrieve(client, 1))
        client.quit()
    else:
        raise SystemExit(f"unknown mode {mode!r}")
    peak = peak_rss_kib()
    return {"size": size, "before_kib": before, "peak_kib": peak, "growth_kib": peak - before}


def main(argv: list[str]) -> int:
    if len(argv) == 6 and argv[0] == "pop3-rss":
        print(json.dumps(pop3_rss(argv[1], argv[2], int(argv[3]), argv[4], argv[5])))
        return 0
    raise SystemExit(__doc__)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
