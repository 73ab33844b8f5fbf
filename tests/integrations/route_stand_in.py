"""A stand-in of the gateway's ``POST /v1/route`` (issue 27's contract) on a real HTTP server on 127.0.0.1.

It ranks the LLMs it was given by a hash of the request's last message (so the choice depends on the prompt, and a
test can say which LLM each prompt must reach), checks the client key like the gateway, and keeps every body it got.
"""

from __future__ import annotations

import hashlib
import json
import threading
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer


def hashed_ranking(llms: Sequence[str]) -> Callable[[str], list[str]]:
    """``prompt -> llms`` rotated by a hash of the prompt: the first is the chosen LLM."""

    def ranked(prompt: str) -> list[str]:
        shift = int(hashlib.sha256(prompt.encode()).hexdigest(), 16) % len(llms)
        return [*llms[shift:], *llms[:shift]]

    return ranked


def route_answer(ranked: list[str]) -> dict:
    """The contract's 200 body for ``ranked`` (best first)."""
    rows = [
        {
            "llm": llm,
            "rank": i + 1,
            "predicted_error": 0.1 * (i + 1),
            "predicted_cost_usd": 1e-4,
            "score": 0.1 * (i + 1) + 1.2e-5,
            "error_term": 0.1 * (i + 1),
            "cost_term": 1.2e-5,
        }
        for i, llm in enumerate(ranked)
    ]
    return {
        "object": "uniroute.route",
        "router_version": "1",
        "served_alias": "champion",
        "embedder_id": "stand-in",
        "chosen_llm": ranked[0],
        "cost_weight": 0.12,
        "bounded_by": {"kind": "none", "value": None, "source": "router"},
        "cluster_weights": [{"cluster": 0, "weight": 1.0}],
        "ranked": rows,
        "shadow": None,
    }


class RouteStandIn:
    """``with RouteStandIn(ranking, key) as stand_in:`` serves ``stand_in.url`` (``http://127.0.0.1:PORT``).

    ``bodies``: every request body it answered; ``refused``: how many it refused (wrong key, bad body).
    """

    def __init__(self, ranking: Callable[[str], list[str]], key: str) -> None:
        self.ranking, self.key = ranking, key
        self.bodies: list[dict] = []
        self.refused = 0
        self._server = ThreadingHTTPServer(("127.0.0.1", 0), self._handler())
        self.url = f"http://127.0.0.1:{self._server.server_address[1]}"

    def _handler(self) -> type[BaseHTTPRequestHandler]:
        stand_in = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"
            disable_nagle_algorithm = True  # headers and body go out as two writes

            def do_POST(self) -> None:  # http.server calls it by this name
                raw = self.rfile.read(int(self.headers.get("Content-Length", 0)))
                if self.path != "/v1/route":
                    return self._send(404, _error("no such route", "not_found"))
                if self.headers.get("Authorization") != f"Bearer {stand_in.key}":
                    stand_in.refused += 1
                    return self._send(401, _error("Invalid client key", "invalid_api_key"))
                try:
                    body = json.loads(raw)
                    prompt = body["messages"][-1]["content"]
                except (ValueError, KeyError, IndexError, TypeError):
                    stand_in.refused += 1
                    return self._send(400, _error("messages: missing", "invalid_request"))
                stand_in.bodies.append(body)
                self._send(200, route_answer(stand_in.ranking(prompt)))

            def _send(self, status: int, payload: dict) -> None:
                data = json.dumps(payload).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def log_message(self, *args: object) -> None:  # quiet
                pass

        return Handler

    def __enter__(self) -> RouteStandIn:
        threading.Thread(target=self._server.serve_forever, name="route-stand-in", daemon=True).start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._server.shutdown()
        self._server.server_close()


def _error(message: str, code: str) -> dict:
    return {"error": {"message": message, "type": "invalid_request_error", "param": None, "code": code}}


@contextmanager
def route_stand_in(llms: Sequence[str], key: str) -> Iterator[RouteStandIn]:
    """A :class:`RouteStandIn` ranking ``llms`` by :func:`hashed_ranking`."""
    with RouteStandIn(hashed_ranking(llms), key) as stand_in:
        yield stand_in
