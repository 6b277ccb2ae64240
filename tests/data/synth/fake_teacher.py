"""A fake OpenAI-compatible teacher for the `data synth` tests: a plain http.server process with canned replies,
so that the real openai client goes over real HTTP. Run: python fake_teacher.py MODE [--delay S]; it prints
"PORT <n>" once it listens on 127.0.0.1.

Modes: good (canned replies that fit each kind of synth prompt, a few made to be dropped by a filter), slow
(good, after --delay seconds), someslow (slow for requests whose seed is 1 modulo 3), garbage (prose with nothing
to parse), badshape (200 with no `choices`), error (HTTP 500). GET /calls answers how many chat requests it got."""

from __future__ import annotations

import argparse
import contextlib
import json
import re
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

MODEL = "fake-teacher"
QA = [  # by the request's seed; 5 is a near-copy of a seed row, 7 repeats its question, 9 comes fenced
    ("How do I close my savings account?", "Visit a branch with your ID, or send a signed letter; it takes a day."),
    ("Can I get a paper statement every month?", "Yes, choose Paper statements in Settings; each costs 1 euro."),
    ("What should I do if the ATM keeps my card?", "Call us at once: we block the card and send a new one."),
    ("Do you offer student accounts?", "Yes, students under 26 pay no account fee and get a free card."),
    ("How long does a mortgage decision take?", "Usually ten working days after we have all your documents."),
    ("Can I change my PIN online?", "Yes: in the app go to Cards, Security, Change PIN. It works at once."),
    ("Where can I find my IBAN?", "It is on the first page of the app, under your account name."),
    ("Why was my contactless payment declined?", "Why was my contactless payment declined?"),
    ("Is mobile banking available abroad?", "Yes, the app works in every country with an internet connection."),
    ("How do I add a second account holder?", "Both holders sign the joint account form in a branch."),
    ("What is the daily cash withdrawal limit?", "You can withdraw up to 1,000 euros a day at our machines."),
    ("Can I freeze my card temporarily?", "Yes, tap Freeze in the card screen; tap again to unfreeze it."),
]
UTTERANCES = {
    "card_arrival": ["where is the card you sent me", "the courier never delivered my new card",
                     "how many days until my replacement card comes", "still waiting for my debit card to show up",
                     "has my card been posted yet", "tracking number for my card delivery please"],
    "lost_card": ["my card fell out of my pocket somewhere", "I think my card was stolen at the bar",
                  "cannot find my card anywhere, block it", "lost my purse with the card inside",
                  "report a missing card", "my child lost my credit card at school"],
    "exchange_rate": ["what is today's rate for yen", "you charged me a terrible conversion rate",
                      "how do you calculate currency conversion", "rate for swiss francs to euros",
                      "is the exchange rate fixed at payment time", "why did the rate change between two payments"],
}
# the teacher labels one of its own utterances differently the second time: relabelling drops it
RELABEL = {t: lb for lb, ts in UTTERANCES.items() for t in ts} | {"report a missing card": "card_arrival"}
CALLS = 0
LOCK = threading.Lock()


def _qa_reply(seed: int) -> str:
    q, a = QA[seed % len(QA)]
    body = json.dumps({"question": q, "answer": a})
    if seed % len(QA) == 9:
        return f"Sure! Here is a new example:\n```json\n{body}\n```"
    if seed % len(QA) == 3:
        return f"Q: {q}\nA: {a}"
    return body


def _doc_reply(prompt: str) -> str:
    chunk = prompt.split("<<<DOCUMENT", 1)[1].split("DOCUMENT>>>", 1)[0]
    sentences = [s.strip() for s in re.split(r"(?<=[.!?])\s+", chunk) if len(s.split()) >= 5]
    pairs = [{"question": f"What does the text say about {' '.join(s.split()[:4]).lower()}?", "answer": s}
             for s in sentences[:2]]
    pairs.append({"question": "Who founded the company?", "answer": "Marco Polo founded it in Venice in 1271."})
    return json.dumps(pairs)


def reply(body: dict[str, Any]) -> str:
    msgs = body["messages"]
    prompt = msgs[-1]["content"]
    seed = int(body.get("seed") or 0)
    if msgs[0]["content"].startswith("You classify texts"):
        text = re.search(r"Text: (['\"])(.*)\1\n", prompt)
        return RELABEL.get(text.group(2) if text else "", "no idea")
    label = re.search(r'with the label "([^"]+)"', prompt)
    if label:
        pool = UTTERANCES.get(label.group(1), [])
        n = int(re.search(r"Write (\d+) new", prompt).group(1))  # type: ignore[union-attr]
        return json.dumps([pool[(seed + i) % len(pool)] for i in range(min(n, len(pool)))])
    if "<<<DOCUMENT" in prompt:
        return _doc_reply(prompt)
    return _qa_reply(seed)


def _handler(mode: str, delay: float) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        def log_message(self, *args: Any) -> None:  # quiet
            pass

        def _send(self, status: int, payload: Any) -> None:
            data = json.dumps(payload).encode()
            self.send_response(status)
            self.send_header("content-type", "application/json")
            self.send_header("content-length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def do_GET(self) -> None:  # noqa: N802
            if self.path.endswith("/models"):
                self._send(200, {"object": "list", "data": [{"id": MODEL, "object": "model", "created": 0,
                                                             "owned_by": "tests"}]})
            elif self.path == "/calls":
                self._send(200, {"calls": CALLS})
            else:
                self._send(404, {"error": {"message": "not found"}})

        def do_POST(self) -> None:  # noqa: N802
            global CALLS
            body = json.loads(self.rfile.read(int(self.headers.get("content-length", 0))) or b"{}")
            if not self.path.endswith("/chat/completions"):
                self._send(404, {"error": {"message": "not found"}})
                return
            with LOCK:
                CALLS += 1
            if mode == "slow" or (mode == "someslow" and int(body.get("seed") or 0) % 3 == 1):
                time.sleep(delay)
            if mode == "error":
                self._send(500, {"error": {"message": "the fake teacher is broken"}})
                return
            if mode == "badshape":
                self._send(200, {"hello": "world"})
                return
            text = "Lorem ipsum dolor sit amet, I am a teapot." if mode == "garbage" else reply(body)
            self._send(200, {"id": f"chatcmpl-{CALLS}", "object": "chat.completion", "created": 0,
                             "model": body.get("model", MODEL), "choices": [{
                                 "index": 0, "finish_reason": "stop",
                                 "message": {"role": "assistant", "content": text}}],
                             "usage": {"prompt_tokens": 1, "completion_tokens": 1, "total_tokens": 2}})

    return Handler


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("mode", choices=["good", "slow", "someslow", "garbage", "badshape", "error"])
    ap.add_argument("--delay", type=float, default=5.0)
    args = ap.parse_args()
    server = ThreadingHTTPServer(("127.0.0.1", 0), _handler(args.mode, args.delay))
    server.daemon_threads = True
    print(f"PORT {server.server_address[1]}", flush=True)
    with contextlib.suppress(KeyboardInterrupt):
        server.serve_forever()
    sys.exit(0)


if __name__ == "__main__":
    main()
