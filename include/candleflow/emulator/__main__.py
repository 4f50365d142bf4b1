"""`python -m candleflow.emulator --host 127.0.0.1 --port 8765 --clock real|<ISO instant> --limits on|off`"""

from __future__ import annotations

import argparse
import logging
import signal
import sys

from candleflow.emulator.server import EmulatorServer


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m candleflow.emulator", description=__doc__)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8765)
    parser.add_argument("--clock", default="real", help="'real', or an ISO instant the clock replays from")
    parser.add_argument("--limits", choices=("on", "off"), default="on",
                        help="enforce each exchange's published rate limits (POST /__admin/limits switches it later)")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    server = EmulatorServer(args.host, args.port, clock=args.clock, enforce_limits=args.limits == "on")
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
    logging.getLogger("candleflow.emulator").info(
        "exchange emulator on %s (clock %s, rate limits %s) serving %s", server.url, args.clock, args.limits,
        ", ".join(server.venues))
    try:
        server.serve_forever()
    except (KeyboardInterrupt, SystemExit):
        pass
    finally:
        server.httpd.server_close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
