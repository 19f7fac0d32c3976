"""The official OpenAI Python SDK against `quiver serve` with upstreams that misbehave:
what a client sees of an upstream's own refusal and of a rate limit.

Run by tests/serve.rs with the server's base URL; the routes are `strict` (its chosen
model refuses every request with 400 `context_length_exceeded`) and `limited` (its chosen
model answers 429 with `Retry-After: 1`; the other answers). Exits non-zero with the
assertion that failed.
"""

import sys

import openai
from openai import OpenAI

base = sys.argv[1]
client = OpenAI(base_url=f"{base}/v1", api_key="unused", max_retries=0)
hi = [{"role": "user", "content": "hi"}]

# The upstream's 400 reaches the SDK as its BadRequestError, with the upstream's code.
try:
    client.chat.completions.create(model="strict", messages=hi)
    raise AssertionError("a refused request was answered")
except openai.BadRequestError as e:
    assert e.status_code == 400, e
    assert e.code == "context_length_exceeded", (e.code, e.body)

# A 429 upstream falls back: the SDK gets an answer, from the other model, twice.
for _ in range(2):
    raw = client.chat.completions.with_raw_response.create(model="limited", messages=hi)
    assert raw.headers["x-quiver-model"] == "good", raw.headers
    assert raw.parse().choices[0].message.content, raw.parse()

print("openai sdk errors: ok")
