"""Prompt templates and the one generic way to find what the assistant said.

A template turns a LLaVA conversation into one string and reports the character spans of
the assistant's answers. Labels are then derived from tokenizer offsets (collate.py), so the
same code serves every chat template: no hand-written preprocess function per model family.
"""
from __future__ import annotations

from dataclasses import dataclass

IMAGE_TOKEN = "<image>"

# Vicuna v1 / LLaVA-1.5 conversation format, as a Jinja chat template so that stock
# transformers (`processor.apply_chat_template`) renders exactly what victor trains on.
VICUNA_SYSTEM = (
    "A chat between a curious human and an artificial intelligence assistant. "
    "The assistant gives helpful, detailed, and polite answers to the human's questions."
)
VICUNA_CHAT_TEMPLATE = (
    "{% set sys = namespace(text='" + VICUNA_SYSTEM.replace("'", "\\'") + "') %}"
    "{% for message in messages %}{% if message['role'] == 'system' %}"
    "{% set sys.text = message['content'] if message['content'] is string else message['content'][0]['text'] %}"
    "{% endif %}{% endfor %}"
    "{{ sys.text }}"
    "{% for message in messages %}"
    "{% if message['role'] == 'user' %} USER: "
    "{% if message['content'] is string %}{{ message['content'] }}{% else %}"
    "{% for item in message['content'] %}{% if item['type'] == 'image' %}<image>\n"
    "{% elif item['type'] == 'text' %}{{ item['text'] }}{% endif %}{% endfor %}{% endif %}"
    "{% elif message['role'] == 'assistant' %} ASSISTANT: "
    "{% generation %}"
    "{% if message['content'] is string %}{{ message['content'] }}{% else %}"
    "{% for item in message['content'] %}{% if item['type'] == 'text' %}{{ item['text'] }}{% endif %}{% endfor %}"
    "{% endif %}{{ eos_token }}{% endgeneration %}"
    "{% endif %}{% endfor %}"
    "{% if add_generation_prompt %} ASSISTANT:{% endif %}"
)

# Words every template string above uses; the tiny world's tokenizer must know them.
TEMPLATE_TEXT = VICUNA_SYSTEM + " USER: ASSISTANT:"


@dataclass
class Rendered:
    text: str
    # [start, end) character spans of supervised text (assistant answers, with their end token)
    spans: list[tuple[int, int]]
