"""The chat templates the synthetic models carry (``tokenizer.chat_template``)."""

from __future__ import annotations

from lfm2_edge.hub.catalog import DEFAULT_VL_SYSTEM_PROMPT
from lfm2_edge.prompt.tokens import IM_END, IM_START, IMAGE_MARKER

__all__ = ["CHAT_TEMPLATE", "LFM2_TOOLS_TEMPLATE", "LFM2_VL_TEMPLATE"]


def _jinja_str(text: str) -> str:
    """``text`` as a single-quoted Jinja string literal."""
    return "'" + text.replace("\\", "\\\\").replace("'", "\\'").replace("\n", "\\n") + "'"


# ChatML as the LFM2-VL card writes it: images before the text of their turn.
CHAT_TEMPLATE = (
    "{{- bos_token -}}"
    "{%- if messages[0]['role'] != 'system' -%}"
    "{{- " + _jinja_str(f"{IM_START}system\n{DEFAULT_VL_SYSTEM_PROMPT}{IM_END}\n") + " -}}"
    "{%- endif -%}"
    "{%- for message in messages -%}"
    "{{- " + _jinja_str(IM_START) + " + message['role'] + '\\n' -}}"
    "{%- if message['content'] is string -%}{{- message['content'] -}}"
    "{%- else -%}"
    "{%- for item in message['content'] if item['type'] in ('image', 'image_url') -%}"
    "{{- " + _jinja_str(IMAGE_MARKER) + " -}}{%- endfor -%}"
    "{%- for item in message['content'] if item['type'] == 'text' -%}"
    "{{- item['text'] -}}{%- endfor -%}"
    "{%- endif -%}"
    "{{- " + _jinja_str(f"{IM_END}\n") + " -}}"
    "{%- endfor -%}"
    "{%- if add_generation_prompt -%}{{- " + _jinja_str(f"{IM_START}assistant\n") + " -}}{%- endif -%}"
)

# The chat template of the official LFM2-VL GGUFs, as published (tokenizer.chat_template).
LFM2_VL_TEMPLATE = (
    "{{bos_token}}{% for message in messages %}{{'<|im_start|>' + message['role'] + '\\n'}}"
    "{% if message['content'] is string %}{{ message['content'] }}{% else %}"
    "{% for content in message['content'] %}{% if content['type'] == 'image' %}{{ '<image>' }}"
    "{% elif content['type'] == 'text' %}{{ content['text'] }}{% endif %}{% endfor %}{% endif %}"
    "{{'<|im_end|>\\n'}}{% endfor %}{% if add_generation_prompt %}{{'<|im_start|>assistant\\n' }}{% endif %}"
)

# A stand-in for the newer, tool-aware templates (LFM2 text models, LFM2.5-VL): the system
# turn carries the tool list, tool results are wrapped in tool-response markers, image
# parts write <image>. Not the published LFM2.5-VL text (3,837 bytes, not reachable here).
LFM2_TOOLS_TEMPLATE = """{{- bos_token -}}
{%- set ns = namespace(system_prompt="", content="") -%}
{%- if messages[0]["role"] == "system" -%}
    {%- set ns.system_prompt = messages[0]["content"] -%}
    {%- set messages = messages[1:] -%}
{%- endif -%}
{%- if tools -%}
    {%- set ns.system_prompt = ns.system_prompt + ("\n" if ns.system_prompt else "") -%}
    {%- set ns.system_prompt = ns.system_prompt + "List of tools: <|tool_list_start|>[" -%}
    {%- for tool in tools -%}
        {%- if tool is not string -%}
            {%- set tool = tool | tojson -%}
        {%- endif -%}
        {%- set ns.system_prompt = ns.system_prompt + tool -%}
        {%- if not loop.last -%}
            {%- set ns.system_prompt = ns.system_prompt + ", " -%}
        {%- endif -%}
    {%- endfor -%}
    {%- set ns.system_prompt = ns.system_prompt + "]<|tool_list_end|>" -%}
{%- endif -%}
{%- if ns.system_prompt -%}
    {{- "<|im_start|>system\n" + ns.system_prompt + "<|im_end|>\n" -}}
{%- endif -%}
{%- for message in messages -%}
    {{- "<|im_start|>" + message["role"] + "\n" -}}
    {%- if message["content"] is string -%}
        {%- set ns.content = message["content"] -%}
    {%- else -%}
        {%- set ns.content = "" -%}
        {%- for item in message["content"] -%}
            {%- if item["type"] == "image" -%}
                {%- set ns.content = ns.content + "<image>" -%}
            {%- elif item["type"] == "text" -%}
                {%- set ns.content = ns.content + item["text"] -%}
            {%- endif -%}
        {%- endfor -%}
    {%- endif -%}
    {%- if message["role"] == "tool" -%}
        {%- set ns.content = "<|tool_response_start|>" + ns.content + "<|tool_response_end|>" -%}
    {%- endif -%}
    {{- ns.content + "<|im_end|>\n" -}}
{%- endfor -%}
{%- if add_generation_prompt -%}
    {{- "<|im_start|>assistant\n" -}}
{%- endif -%}
"""
