"""The official `openai` Python client against a live `cria serve` (URL in CRIA_SERVER_URL).

Run by crates/cria-server/tests/serve_openai.rs, which starts the server and passes the URL and the
API key; every check asserts on what the client returns, and the script exits non-zero (with the
assertion) on the first failure.
"""

import json
import os
import sys

import openai

URL = os.environ["CRIA_SERVER_URL"] + "/v1"
KEY = os.environ["CRIA_API_KEY"]
client = openai.OpenAI(base_url=URL, api_key=KEY, max_retries=0, timeout=120)

# models
models = client.models.list().data
assert len(models) == 1, models
model = models[0].id

# chat, greedy: the same text whether streamed or not
msgs = [{"role": "user", "content": "Name a color."}]
r = client.chat.completions.create(model=model, messages=msgs, temperature=0, max_tokens=16)
text = r.choices[0].message.content
assert r.choices[0].message.role == "assistant"
assert text, r
assert r.choices[0].finish_reason in ("stop", "length"), r
assert r.usage.completion_tokens >= 1 and r.usage.prompt_tokens > 5, r.usage

chunks = list(
    client.chat.completions.create(
        model=model,
        messages=msgs,
        temperature=0,
        max_tokens=16,
        stream=True,
        stream_options={"include_usage": True},
    )
)
streamed = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
assert streamed == text, (streamed, text)
assert chunks[-1].usage.completion_tokens == r.usage.completion_tokens, chunks[-1]
assert [c.choices[0].finish_reason for c in chunks if c.choices][-1] == r.choices[0].finish_reason

# seeded sampling is reproducible; n choices
kw = dict(model=model, messages=msgs, temperature=1.0, seed=1234, max_tokens=12, n=2)
a = client.chat.completions.create(**kw)
b = client.chat.completions.create(**kw)
assert [c.message.content for c in a.choices] == [c.message.content for c in b.choices]
assert len(a.choices) == 2

# cria's extra samplers go through extra_body
r = client.chat.completions.create(
    model=model, messages=msgs, max_tokens=8, seed=1, extra_body={"top_k": 1, "min_p": 0.1}
)
assert r.choices[0].message.content

# legacy completions, with log-probs
c = client.completions.create(
    model=model, prompt="The capital of France is", max_tokens=5, temperature=0, logprobs=2
)
assert c.choices[0].text, c
assert len(c.choices[0].logprobs.tokens) == c.usage.completion_tokens
assert "".join(c.choices[0].logprobs.tokens) == c.choices[0].text
s = list(
    client.completions.create(
        model=model, prompt="The capital of France is", max_tokens=5, temperature=0, stream=True
    )
)
assert "".join(x.choices[0].text for x in s if x.choices) == c.choices[0].text

# json_schema structured output parses and follows the schema
schema = {
    "type": "object",
    "properties": {"city": {"type": "string"}, "population": {"type": "integer"}},
    "required": ["city", "population"],
    "additionalProperties": False,
}
r = client.chat.completions.create(
    model=model,
    messages=[{"role": "user", "content": "Describe Paris as JSON."}],
    response_format={"type": "json_schema", "json_schema": {"name": "city", "schema": schema, "strict": True}},
    temperature=0,
    max_tokens=80,
)
obj = json.loads(r.choices[0].message.content)
assert isinstance(obj["city"], str) and isinstance(obj["population"], int), obj

# tools: the conversation with a tool call and its result renders and answers
tools = [
    {
        "type": "function",
        "function": {
            "name": "get_weather",
            "description": "Weather in a city",
            "parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]},
        },
    }
]
r = client.chat.completions.create(
    model=model,
    messages=[
        {"role": "user", "content": "Weather in Paris?"},
        {
            "role": "assistant",
            "content": None,
            "tool_calls": [
                {"id": "call_1", "type": "function", "function": {"name": "get_weather", "arguments": '{"city": "Paris"}'}}
            ],
        },
        {"role": "tool", "tool_call_id": "call_1", "content": "sunny, 21 C"},
    ],
    tools=tools,
    temperature=0,
    max_tokens=60,
)
# SmolLM2 answers this with another call (the lazy call grammar holds it to the schema).
m = r.choices[0].message
assert m.content is not None or m.tool_calls, r
if m.tool_calls:
    assert r.choices[0].finish_reason == "tool_calls", r
    assert json.loads(m.tool_calls[0].function.arguments)["city"] == "Paris", r

# tool_choice "required": the answer is a call to a listed tool, with arguments under its schema
ask = [{"role": "user", "content": "What is the weather in Paris?"}]
r = client.chat.completions.create(
    model=model, messages=ask, tools=tools, tool_choice="required", temperature=0, max_tokens=60
)
assert r.choices[0].finish_reason == "tool_calls", r
call = r.choices[0].message.tool_calls[0]
assert call.type == "function" and call.function.name == "get_weather", call
assert isinstance(json.loads(call.function.arguments)["city"], str), call
# ... and streamed: the call arrives as a tool_calls delta
chunks = list(
    client.chat.completions.create(
        model=model, messages=ask, tools=tools, tool_choice="required", temperature=0, max_tokens=60, stream=True
    )
)
deltas = [tc for c in chunks if c.choices for tc in (c.choices[0].delta.tool_calls or [])]
assert deltas and deltas[0].function.name == "get_weather", chunks
assert deltas[0].function.arguments == call.function.arguments
assert [c.choices[0].finish_reason for c in chunks if c.choices][-1] == "tool_calls"
# log-probs with tools: the held-back tokens keep theirs, streamed or not, the same ones
kw = dict(model=model, messages=ask, tools=tools, tool_choice="required", temperature=0, max_tokens=60, logprobs=True)
whole = client.chat.completions.create(**kw).choices[0].logprobs.content
streamed = [
    t for c in client.chat.completions.create(stream=True, **kw) if c.choices and c.choices[0].logprobs
    for t in c.choices[0].logprobs.content
]
assert whole and [t.token for t in streamed] == [t.token for t in whole], (streamed, whole)

# embeddings (the client asks for base64 and decodes it)
e = client.embeddings.create(model=model, input=["hello world", "goodbye"])
assert len(e.data) == 2
v = e.data[0].embedding
assert len(v) == 576, len(v)
norm = sum(x * x for x in v) ** 0.5
assert abs(norm - 1.0) < 1e-4, norm
assert e.data[0].embedding != e.data[1].embedding

# errors arrive as the client's exception types
# a single-model server takes any model name and answers with its own
r = client.chat.completions.create(model="no-such-model", messages=msgs, max_tokens=2)
assert r.model == model, r.model
try:
    client.chat.completions.create(model=model, messages=msgs, n=0)
    raise SystemExit("n=0 accepted")
except openai.BadRequestError as err:
    assert err.body["param"] == "n", err.body
try:
    client.chat.completions.create(
        model=model, messages=[{"role": "user", "content": "word " * 5000}], max_tokens=4
    )
    raise SystemExit("an over-long prompt was accepted")
except openai.BadRequestError as err:
    assert "context" in str(err), err
bad = openai.OpenAI(base_url=URL, api_key="wrong", max_retries=0)
try:
    bad.models.list()
    raise SystemExit("a wrong key was accepted")
except openai.AuthenticationError:
    pass

print("openai client: all checks passed", file=sys.stderr)
