#!/usr/bin/env python3
"""Serve the training page (this folder) and an export folder at /export/, with the headers WASM threads need.

    python3 device_runner/web/serve.py --export artifacts/mbv2-top5-mobiletl [--port 8000] [--host 127.0.0.1]

then open http://localhost:8000/ (a phone on the same network: --host 0.0.0.0 and the machine's address; a
browser allows the service worker, so the offline mode, only on https or localhost).

Headers: `Cross-Origin-Opener-Policy: same-origin` and `Cross-Origin-Embedder-Policy: require-corp` make the
page cross-origin isolated, which browsers require for SharedArrayBuffer, i.e. for onnxruntime-web's
multi-threaded WASM. Any static server works without them (`python3 -m http.server` in this folder, with the
export copied or linked to ./export): the page then trains on one thread. Standard library only.
"""

from __future__ import annotations

import argparse
import functools
import http.server
import os
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
TYPES = {".mjs": "text/javascript", ".js": "text/javascript", ".wasm": "application/wasm", ".onnx": "application/octet-stream",
         ".safetensors": "application/octet-stream", ".json": "application/json", ".webmanifest": "application/manifest+json"}


class Handler(http.server.SimpleHTTPRequestHandler):
    export_dir: Path | None = None

    def translate_path(self, path: str) -> str:
        clean = path.split("?", 1)[0].split("#", 1)[0]
        if self.export_dir is not None and clean.startswith("/export/"):
            rel = Path(clean[len("/export/"):])
            if ".." in rel.parts:
                return str(HERE / "__forbidden__")
            return str(self.export_dir / rel)
        return super().translate_path(path)

    def guess_type(self, path):
        return TYPES.get(Path(str(path)).suffix, None) or super().guess_type(path)

    def end_headers(self):
        self.send_header("Cross-Origin-Opener-Policy", "same-origin")
        self.send_header("Cross-Origin-Embedder-Policy", "require-corp")
        self.send_header("Cross-Origin-Resource-Policy", "same-origin")
        self.send_header("Cache-Control", "no-cache")
        super().end_headers()

    def log_message(self, fmt, *args):
        if os.environ.get("MOBILETL_SERVE_LOG"):
            super().log_message(fmt, *args)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--export", help="a folder written by mobiletl-export, served at /export/")
    p.add_argument("--port", type=int, default=8000)
    p.add_argument("--host", default="127.0.0.1")
    a = p.parse_args(argv)
    if a.export and Path(a.export).name == "manifest.json":
        a.export = str(Path(a.export).parent)
    if a.export and not (Path(a.export) / "manifest.json").is_file():
        print(f"serve.py: error: {a.export} has no manifest.json (not a mobiletl-export folder)", file=sys.stderr)
        return 2
    if not (HERE / "node_modules" / "onnxruntime-web").is_dir():
        print("serve.py: error: node_modules is missing: run `npm ci` in device_runner/web (or scripts/setup.sh)",
              file=sys.stderr)
        return 2
    Handler.export_dir = Path(a.export).resolve() if a.export else None
    try:
        server = http.server.ThreadingHTTPServer((a.host, a.port), functools.partial(Handler, directory=str(HERE)))
    except OSError as exc:
        print(f"serve.py: error: cannot listen on {a.host}:{a.port}: {exc.strerror} (another --port?)", file=sys.stderr)
        return 2
    host = a.host if a.host not in ("0.0.0.0", "::") else "localhost"
    print(f"serving http://{host}:{server.server_address[1]}/  (export: {a.export or 'none; pick one in the page'})"
          + ("; from another device: http://<this machine's address>:" + str(server.server_address[1]) + "/"
             if host != a.host else ""), flush=True)
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        pass
    return 0


if __name__ == "__main__":
    sys.exit(main())
