"""A small SMTP server for the local stack that keeps every message it receives as an .eml file.

    python tools/mailcatcher.py --host 127.0.0.1 --port 8783 --dir var/stack/mail

Each message is written atomically as <dir>/<UTC time>-<sequence>-<random>.eml with an `X-Labelops-Envelope-To`
header added, so tests and people can read exactly what Airflow sent.
"""

from __future__ import annotations

import argparse
import asyncio
import itertools
import os
import secrets
import signal
import time
from pathlib import Path

from aiosmtpd.controller import Controller


class KeepHandler:
    def __init__(self, directory: Path) -> None:
        self.directory = directory
        self.seq = itertools.count(1)

    async def handle_DATA(self, server, session, envelope):  # noqa: N802 (aiosmtpd's hook name)
        stamp = time.strftime("%Y%m%dT%H%M%S", time.gmtime())
        name = f"{stamp}-{next(self.seq):06d}-{secrets.token_hex(4)}.eml"
        header = (f"X-Labelops-Envelope-From: {envelope.mail_from}\r\n"
                  f"X-Labelops-Envelope-To: {', '.join(envelope.rcpt_tos)}\r\n").encode()
        tmp = self.directory / f".{name}.tmp"
        tmp.write_bytes(header + envelope.original_content)
        os.replace(tmp, self.directory / name)
        return "250 Message accepted for delivery"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--dir", type=Path, required=True)
    args = parser.parse_args()
    args.dir.mkdir(parents=True, exist_ok=True)
    controller = Controller(KeepHandler(args.dir), hostname=args.host, port=args.port, data_size_limit=50 * 2**20)
    controller.start()
    print(f"mailcatcher: listening on {args.host}:{args.port}, keeping messages in {args.dir}", flush=True)
    stop = asyncio.Event()
    loop = asyncio.new_event_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    loop.run_until_complete(stop.wait())
    controller.stop()


if __name__ == "__main__":
    main()
