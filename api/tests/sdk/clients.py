"""The official OpenAI and Anthropic Python SDKs against the Carapace
gateway, with only the base URL and key changed. Run by
api/tests/api/gateway.rs; prints one `... ok` line per check and exits
non-zero on the first failure."""

import os
import sys

import anthropic
import openai

URL = os.environ["GATEWAY_URL"]
KEY = os.environ["GATEWAY_KEY"]
TOOLS_OPENAI = [{
    "type": "function",
    "function": {
        "name": "get_weather",
        "description": "Weather in a city",
        "parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]},
    },
}]
TOOLS_ANTHROPIC = [{
    "name": "get_weather",
    "description": "Weather in a city",
    "input_schema": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]},
}]


def check(cond, what):
    if not cond:
        print(f"FAILED: {what}", flush=True)
        sys.exit(1)
    print(f"{what} ok", flush=True)


oa = openai.OpenAI(base_url=URL, api_key=KEY, max_retries=0)
hello = [{"role": "user", "content": "hi"}]

r = oa.chat.completions.create(model="fast", messages=hello)
check(r.choices[0].message.content == "Hello world" and r.usage.prompt_tokens == 11, "openai chat")

text = ""
for chunk in oa.chat.completions.create(model="fast", messages=hello, stream=True):
    if chunk.choices and chunk.choices[0].delta.content:
        text += chunk.choices[0].delta.content
check(text == "Hello world", "openai stream")

r = oa.chat.completions.create(model="fast", messages=hello, tools=TOOLS_OPENAI)
call = r.choices[0].message.tool_calls[0]
check(call.function.name == "get_weather" and '"Paris"' in call.function.arguments, "openai tools")

names = []
for chunk in oa.chat.completions.create(model="fast", messages=hello, tools=TOOLS_OPENAI, stream=True):
    for c in (chunk.choices[0].delta.tool_calls or []) if chunk.choices else []:
        if c.function and c.function.name:
            names.append(c.function.name)
check(names == ["get_weather"], "openai stream tools")

an = anthropic.Anthropic(base_url=URL.removesuffix("/v1"), api_key=KEY, max_retries=0)
m = an.messages.create(model="smart", max_tokens=10, messages=hello)
check(m.content[0].text == "Hello world" and m.usage.input_tokens == 13, "anthropic messages")

with an.messages.stream(model="smart", max_tokens=10, messages=hello) as stream:
    streamed = "".join(stream.text_stream)
    final = stream.get_final_message()
check(streamed == "Hello world" and final.usage.output_tokens == 5, "anthropic stream")

m = an.messages.create(model="smart", max_tokens=10, messages=hello, tools=TOOLS_ANTHROPIC)
check(m.content[0].type == "tool_use" and m.content[0].input == {"city": "Paris"}, "anthropic tools")

with an.messages.stream(model="smart", max_tokens=10, messages=hello, tools=TOOLS_ANTHROPIC) as stream:
    final = stream.get_final_message()
check(final.content[0].type == "tool_use" and final.content[0].input == {"city": "Paris"}, "anthropic stream tools")

bad = openai.OpenAI(base_url=URL, api_key="cpk_" + "A" * 43, max_retries=0)
try:
    bad.chat.completions.create(model="fast", messages=hello)
    check(False, "openai bad key refused")
except openai.AuthenticationError:
    check(True, "openai bad key refused")
