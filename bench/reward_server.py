"""The HTTP server of the `remote` reward (rewards/remote.py, the client): serves any registered
reward over HTTP on localhost, for reward models whose dependencies clash with the harness. Run
it in the reward model's own environment,

    python -m t2i_rl_bench.reward_server serve --reward pickscore \\
        --settings '{"model_path": "/w/pickscore"}' --port 8765

and name the client in the config: `{name: remote, settings: {url: "http://127.0.0.1:8765"}}`.

Protocol (JSON, stdlib only): `POST /score` with
`{"prompts": [...], "metadata": {...}, "images": {"shape": [B, 3, H, W], "dtype": "uint8", "data": <base64>}}`
answers `{"scores": [...], "info": {key: [...]}}`, or an HTTP error with `{"error": message}`;
`GET /health` answers `{"reward": name}`. Images travel as 8 bits per channel (what a reward model
reading a saved PNG sees), so the remote scores equal the local reward's on `quantize(images)`.
The server answers one request at a time in its main thread (a torch op in a side thread slows
the whole process, docs/design.md#measured-choices) and refuses NaN/inf scores like the harness does.
"""

from __future__ import annotations

import argparse
import base64
import json
import sys
from http.server import BaseHTTPRequestHandler, HTTPServer
from typing import Any

import numpy as np
import torch


# ---------------------------------------------------------------- the wire format (client and server)
def quantize(images: torch.Tensor) -> torch.Tensor:
    """Images (B, 3, H, W) in [0, 1] -> uint8, as they travel."""
    return (images.detach().float().clamp(0, 1) * 255).round().to(torch.uint8).cpu()


def encode_images(images: torch.Tensor) -> dict:
    arr = quantize(images).numpy()
    return {"shape": list(arr.shape), "dtype": "uint8", "data": base64.b64encode(arr.tobytes()).decode("ascii")}


def decode_images(payload: dict) -> torch.Tensor:
    if payload.get("dtype") != "uint8":
        raise ValueError(f"images must be uint8, got {payload.get('dtype')!r}")
    arr = np.frombuffer(base64.b64decode(payload["data"]), dtype=np.uint8).reshape(payload["shape"])
    return torch.from_numpy(arr.astype(np.float32) / 255.0)


def jsonable(value: Any) -> Any:
    if isinstance(value, torch.Tensor | np.ndarray):
        return np.asarray(value.detach().cpu() if isinstance(value, torch.Tensor) else value).tolist()
    try:
        json.dumps(value)
        return value
    except (TypeError, ValueError):
        return None


# ---------------------------------------------------------------- the server


def build_local(name: str, settings: dict | None = None):
    from t2i_rl_bench.registry import REWARDS

    factory = REWARDS.get(name)
    return factory(**(settings or {})) if isinstance(factory, type) else factory


def make_server(name: str, reward, host: str = "127.0.0.1", port: int = 0, timeout: float | None = None) -> HTTPServer:
    """`timeout`: seconds one request's reward call may take (None: the default of
    t2i_rl_bench.reward.reward_timeout; 0: none); past it the request answers HTTP 504 naming the
    reward and the time it ran, and the server serves on."""
    from t2i_rl_bench.reward import RewardError, RewardTimeout, check_scores, deadline, reward_timeout

    limit = reward_timeout() if timeout is None else timeout

    class Handler(BaseHTTPRequestHandler):
        def _send(self, code: int, body: dict) -> None:
            data = json.dumps(body).encode()
            self.send_response(code)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def do_GET(self):  # noqa: N802 - http.server's naming
            if self.path == "/health":
                self._send(200, {"reward": name})
            else:
                self._send(404, {"error": f"no {self.path}; use GET /health or POST /score"})

        def do_POST(self):  # noqa: N802
            if self.path != "/score":
                self._send(404, {"error": f"no {self.path}; use POST /score"})
                return
            try:
                body = json.loads(self.rfile.read(int(self.headers.get("Content-Length", 0))))
                images, prompts = decode_images(body["images"]), body["prompts"]
            except Exception as exc:  # noqa: BLE001 - a malformed request is the client's error
                self._send(400, {"error": f"malformed request: {exc!r}"})
                return
            try:
                with deadline(limit, name, f" on {len(prompts)} prompts (the server's --timeout)"):
                    scores, info = reward(images, prompts, body.get("metadata") or {})
                scores = check_scores(name, scores, prompts)
            except RewardTimeout as exc:
                self._send(504, {"error": str(exc)})
                return
            except RewardError as exc:
                self._send(500, {"error": str(exc)})
                return
            except Exception as exc:  # noqa: BLE001 - reported to the client, the server keeps serving
                self._send(500, {"error": f"reward {name!r} raised {exc!r}"})
                return
            info = {k: jsonable(v) for k, v in (info or {}).items()}
            self._send(200, {"scores": scores.tolist(), "info": {k: v for k, v in info.items() if v is not None}})

        def log_message(self, format, *args):  # noqa: A002 - quiet: one line per request is noise here
            pass

    server = HTTPServer((host, port), Handler)
    server.served = 0
    return server


def serve(
    name: str,
    settings: dict | None = None,
    host: str = "127.0.0.1",
    port: int = 8765,
    max_requests: int | None = None,
    idle_timeout: float | None = None,
    timeout: float | None = None,
) -> None:
    """Serve until `max_requests` requests were answered or none came for `idle_timeout` seconds
    (either unset: until killed). Prints the URL once listening (port 0 picks a free port).
    `timeout`: the limit of each request's reward call (make_server)."""
    server = make_server(name, build_local(name, settings), host, port, timeout)
    idle = {"timed_out": False}
    server.timeout = idle_timeout
    server.handle_timeout = lambda: idle.update(timed_out=True)
    print(f"serving reward {name} at http://{host}:{server.server_address[1]}", flush=True)
    try:
        while not idle["timed_out"] and (max_requests is None or server.served < max_requests):
            server.handle_request()
            server.served += 0 if idle["timed_out"] else 1
    finally:
        server.server_close()


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m t2i_rl_bench.reward_server", description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    s = sub.add_parser("serve", help="serve a registered reward over HTTP")
    s.add_argument("--reward", required=True, help="a registered reward name (python -m t2i_rl_bench list)")
    s.add_argument("--settings", default="{}", help="the reward's settings as JSON")
    s.add_argument("--host", default="127.0.0.1")
    s.add_argument("--port", type=int, default=8765, help="0 picks a free port (printed)")
    s.add_argument("--max-requests", type=int, default=None)
    s.add_argument("--idle-timeout", type=float, default=None, help="stop after this many seconds without a request")
    s.add_argument("--threads", type=int, default=1, help="torch threads")
    s.add_argument(
        "--timeout",
        type=float,
        default=None,
        help="seconds one request's reward call may take (default 600; 0 = none); past it HTTP 504",
    )
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    serve(
        args.reward, json.loads(args.settings), args.host, args.port, args.max_requests, args.idle_timeout, args.timeout
    )


if __name__ == "__main__":
    sys.exit(main())
