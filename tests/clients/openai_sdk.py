"""The official OpenAI Python SDK against `quiver serve --demo`: what a client sees.

Run by tests/serve.rs with the server's base URL as the only argument; exits non-zero
(with the assertion that failed) when the server is not what the SDK expects.
"""

import sys

from openai import OpenAI

base = sys.argv[1]
client = OpenAI(base_url=f"{base}/v1", api_key="unused", max_retries=0)

# Routes are listed as models.
models = [m.id for m in client.models.list()]
assert models == ["demo"], models
assert client.models.retrieve("demo").id == "demo"

# A completion, parsed into the SDK's strict types, with Quiver's headers alongside.
raw = client.chat.completions.with_raw_response.create(
    model="demo", messages=[{"role": "user", "content": "Which of the following explains tides? A) the moon"}]
)
assert raw.headers["x-quiver-decision-id"].startswith("demo:"), raw.headers
completion = raw.parse()
assert completion.choices[0].message.content.startswith("[SIMULATED "), completion
assert completion.usage.total_tokens == completion.usage.prompt_tokens + completion.usage.completion_tokens
assert completion.created > 0

# A stream: chunks with content, then the finish.
chunks = list(
    client.chat.completions.create(
        model="demo", stream=True, messages=[{"role": "user", "content": "Write a function that reverses a list"}]
    )
)
text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
assert text.startswith("[SIMULATED "), text
assert any(c.choices and c.choices[0].finish_reason == "stop" for c in chunks), chunks

# The legacy text API, routed the same way.
text = client.completions.create(model="demo", prompt="Write a function that reverses a list")
assert text.choices[0].text.startswith("[SIMULATED "), text
assert text.usage.total_tokens == text.usage.prompt_tokens + text.usage.completion_tokens

# An unknown route is the SDK's NotFoundError, with the server's message.
try:
    client.chat.completions.create(model="nope", messages=[{"role": "user", "content": "hi"}])
    raise AssertionError("an unknown route was answered")
except Exception as e:  # the SDK's error class
    assert type(e).__name__ == "NotFoundError", repr(e)
    assert "unknown route `nope`" in str(e), str(e)

print("openai sdk: ok")
