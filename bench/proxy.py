"""A loopback TCP proxy that delays every byte by a fixed time in each direction.

``python -m bench.proxy --target 127.0.0.1:2525 --delay 0.005`` listens on a free
loopback port, prints ``LISTEN <port>`` on stdout, and forwards each accepted
connection to the target. Every chunk read from one side is written to the other
``delay`` seconds after it arrived, so a request/reply exchange costs ``2 * delay``
more than on plain loopback, while pipelined bytes stay pipelined (chunks are not
queued behind each other's delay).

It runs as a separate process so its threads do not compete with the measured
client for the GIL. It is bounded: at most ``--max-connections`` at once, and it
exits by itself after ``--lifetime`` seconds or when its stdin closes.
"""

from __future__ import annotations

import argparse
import contextlib
import queue
import socket
import sys
import threading
import time

_CHUNK = 1 << 16


def _pump(source: socket.socket, sink: socket.socket, delay: float) -> None:
    """Copy ``source`` to ``sink``, each chunk ``delay`` seconds after it was read."""
    pending: queue.Queue[tuple[float, bytes]] = queue.Queue()

    def writer() -> None:
        while True:
            due, data = pending.get()
            wait = due - time.monotonic()
            if wait > 0:
                time.sleep(wait)
            try:
                if not data:
                    sink.shutdown(socket.SHUT_WR)
                    return
                sink.sendall(data)
            except OSError:
                return

    thread = threading.Thread(target=writer, daemon=True)
    thread.start()
    try:
        while True:
            try:
                data = source.recv(_CHUNK)
            except OSError:
                data = b""
            pending.put((time.monotonic() + delay, data))
            if not data:
                break
    finally:
        thread.join()


def _serve_one(
    client: socket.socket, target: tuple[str, int], delay: float, slots: threading.BoundedSemaphore
) -> None:
    try:
        with client, socket.create_connection(target, timeout=10) as upstream:
            upstream.settimeout(None)
            for sock in (client, upstream):
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            back = threading.Thread(target=_pump, args=(upstream, client, delay), daemon=True)
            back.start()
            _pump(client, upstream, delay)
            back.join()
    except OSError:
        pass
    finally:
        slots.release()


def serve(
    listener: socket.socket,
    target: tuple[str, int],
    delay: float,
    max_connections: int,
    stop: threading.Event,
) -> None:
    slots = threading.BoundedSemaphore(max_connections)
    listener.settimeout(0.2)
    while not stop.is_set():
        try:
            client, _ = listener.accept()
        except TimeoutError:
            continue
        except OSError:
            return
        if not slots.acquire(blocking=False):
            client.close()  # over the bound: refuse rather than queue
            continue
        threading.Thread(
            target=_serve_one, args=(client, target, delay, slots), daemon=True
        ).start()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--target", required=True, help="host:port on loopback")
    parser.add_argument("--delay", type=float, default=0.005, help="seconds each way")
    parser.add_argument("--max-connections", type=int, default=32)
    parser.add_argument("--lifetime", type=float, default=1800.0)
    args = parser.parse_args(argv)
    host, _, port = args.target.rpartition(":")
    if host not in ("127.0.0.1", "localhost", "::1"):
        parser.error("the proxy only forwards to loopback")
    listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    listener.bind(("127.0.0.1", 0))
    listener.listen(64)
    stop = threading.Event()
    thread = threading.Thread(
        target=serve,
        args=(listener, (host, int(port)), args.delay, args.max_connections, stop),
        daemon=True,
    )
    thread.start()
    print(f"LISTEN {listener.getsockname()[1]}", flush=True)

    def watch_stdin() -> None:
        with contextlib.suppress(OSError, ValueError):
            sys.stdin.read()
        stop.set()

    threading.Thread(target=watch_stdin, daemon=True).start()
    stop.wait(args.lifetime)
    stop.set()
    listener.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
