"""A reward served by another process over HTTP on localhost (the client; the server and the
protocol are bench/reward_server.py), for reward models whose dependencies clash with the
harness: run the server in the reward model's own environment,

    python -m t2i_rl_bench.reward_server serve --reward pickscore \\
        --settings '{"model_path": "/w/pickscore"}' --port 8765

and name the client in the config: `{name: remote, settings: {url: "http://127.0.0.1:8765"}}`.
"""

from __future__ import annotations

import json
import urllib.error
import urllib.request

import numpy as np

from t2i_rl_bench.reward_server import encode_images, jsonable


class RemoteRewardError(RuntimeError):
    """The remote reward could not be reached or failed; the message names the URL."""


class RemoteReward:
    """Client: scores images by `POST {url}/score`. `timeout` (seconds) bounds connecting and each
    read (None: the study's timeouts.reward_s, which also bounds the whole call); the server is
    asked for `/health` at construction unless `check_on_start` is false."""

    def __init__(self, url: str = "http://127.0.0.1:8765", timeout: float | None = None, check_on_start: bool = True):
        from t2i_rl_bench.reward import reward_timeout

        problems = self.check_weights({"url": url})
        if problems:
            raise RemoteRewardError("; ".join(problems))
        self.url = url.rstrip("/")
        self.timeout = float(timeout if timeout is not None else reward_timeout() or 600.0)
        self.reward = None
        if check_on_start:
            self.reward = self.health(min(self.timeout, 10.0))["reward"]

    @staticmethod
    def check_weights(settings: dict) -> list[str]:
        """The URL is well formed (the server itself may start later in the workflow)."""
        url = str(settings.get("url", "http://127.0.0.1:8765"))
        if not url.startswith(("http://", "https://")):
            return [f"remote setting 'url' ({url}): not an http:// URL"]
        return []

    def _request(self, path: str, body: dict | None, timeout: float) -> dict:
        url = self.url + path
        data = None if body is None else json.dumps(body).encode()
        request = urllib.request.Request(url, data=data, headers={"Content-Type": "application/json"})
        try:
            with urllib.request.urlopen(request, timeout=timeout) as response:
                return json.loads(response.read())
        except urllib.error.HTTPError as exc:
            try:
                message = json.loads(exc.read()).get("error", "")
            except Exception:  # noqa: BLE001 - the status code alone is still worth reporting
                message = ""
            raise RemoteRewardError(f"remote reward at {url} failed with HTTP {exc.code}: {message}") from exc
        except TimeoutError as exc:
            raise RemoteRewardError(f"remote reward at {url} did not answer within {timeout:g} s") from exc
        except urllib.error.URLError as exc:
            if isinstance(exc.reason, TimeoutError):
                raise RemoteRewardError(f"remote reward at {url} did not answer within {timeout:g} s") from exc
            raise RemoteRewardError(
                f"remote reward at {url} is unreachable ({exc.reason}); is its server running? Start it with "
                f"`python -m t2i_rl_bench.reward_server serve --reward NAME --port PORT`"
            ) from exc

    def health(self, timeout: float | None = None) -> dict:
        return self._request("/health", None, timeout or self.timeout)

    def __call__(self, images, prompts, metadata=None):
        metadata = {k: v for k, v in (metadata or {}).items() if jsonable(v) is not None}
        body = {
            "prompts": list(prompts),
            "metadata": {k: jsonable(v) for k, v in metadata.items()},
            "images": encode_images(images),
        }
        answer = self._request("/score", body, self.timeout)
        scores = np.asarray(answer["scores"], dtype=np.float64)
        if scores.shape != (len(prompts),):
            raise RemoteRewardError(
                f"remote reward at {self.url}/score returned {scores.shape} scores for {len(prompts)} prompts"
            )
        return scores, {k: np.asarray(v) for k, v in answer.get("info", {}).items()}
