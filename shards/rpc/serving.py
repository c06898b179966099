"""The foreground life of a server process: announce it, run it until SIGINT/SIGTERM."""

from __future__ import annotations

import asyncio
import signal
from typing import Protocol


class Server(Protocol):
    def request_stop(self) -> None: ...

    async def run(self) -> None: ...


def metrics_url(listen: str, port: int) -> str:
    return f"http://{listen.rsplit(':', 1)[0]}:{port}/metrics"


async def run_announced(
    server: Server, service: str, listen: str, port: int, metrics_listen: str, metrics_port: int
) -> int:
    """Print the metrics URL (if any) and then the serving line, which whoever started this
    process waits for; run until a signal asks to stop; say so. The signal handlers are in
    place before the serving line: a SIGTERM sent as soon as it is read stops the server
    gracefully instead of killing the process."""
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(signum, server.request_stop)
    if metrics_port:
        print(f"tally: metrics on {metrics_url(metrics_listen, metrics_port)}", flush=True)
    host = listen.rsplit(":", 1)[0]
    print(f"tally: serving {service} on {host}:{port}", flush=True)
    await server.run()
    print("tally: stopped", flush=True)
    return 0
