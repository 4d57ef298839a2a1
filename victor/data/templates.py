"""Prompt templates and the one generic way to find what the assistant said.

A template turns a LLaVA conversation into one string and reports the character spans of
the assistant's answers. Labels are then derived from tokenizer offsets (collate.py), so the
same code serves every chat template: no hand-written preprocess function per model family.
"""
from __future__ import annotations

from dataclasses import dataclass

IMAGE_TOKEN = "<image>"

# Vicuna v1 conversation format (LLaVA-1.5's and Croc's prompt version `v1`: `conv_vicuna_v1`,
# turns "USER: ... ASSISTANT: ...</s>" with no space after `</s>`), as a Jinja chat template so
# that stock transformers (`processor.apply_chat_template`) renders exactly what victor trains on.
VICUNA_SYSTEM = (
    "A chat between a curious user and an artificial intelligence assistant. "
    "The assistant gives helpful, detailed, and polite answers to the user's questions."
)
VICUNA_CHAT_TEMPLATE = (
    "{% set sys = namespace(text='" + VICUNA_SYSTEM.replace("'", "\\'") + "') %}"
    "{% for message in messages %}{% if message['role'] == 'system' %}"
    "{% set sys.text = message['content'] if message['content'] is string else message['content'][0]['text'] %}"
    "{% endif %}{% endfor %}"
    "{{ sys.text }}"
    "{% for message in messages %}"
    "{% if message['role'] == 'user' %}"
    "{% if loop.first or messages[loop.index0 - 1]['role'] != 'assistant' %} {% endif %}USER: "
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

# ChatML with LLaVA-NeXT's default system message (the ViCToR scripts' prompt version `qwen_1_5`:
# `conv_qwen`, "You are a helpful assistant.", not Qwen2.5's own "You are Qwen, created by ...").
CHATML_SYSTEM = "You are a helpful assistant."
_CONTENT = (
    "{% if message['content'] is string %}{{ message['content'] }}{% else %}"
    "{% for item in message['content'] %}{% if item['type'] == 'image' %}<image>\n"
    "{% elif item['type'] == 'text' %}{{ item['text'] }}{% endif %}{% endfor %}{% endif %}"
)
CHATML_CHAT_TEMPLATE = (
    "{% if messages[0]['role'] != 'system' %}<|im_start|>system\n" + CHATML_SYSTEM + "<|im_end|>\n{% endif %}"
    "{% for message in messages %}<|im_start|>{{ message['role'] }}\n"
    "{% if message['role'] == 'assistant' %}{% generation %}" + _CONTENT + "<|im_end|>\n{% endgeneration %}"
    "{% else %}" + _CONTENT + "<|im_end|>\n{% endif %}{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)

# Words the Vicuna template uses (the tiny world reads it); its tokenizer must know them.
TEMPLATE_TEXT = VICUNA_SYSTEM + " USER: ASSISTANT:"


@dataclass
class Rendered:
    text: str
    # [start, end) character spans of supervised text (assistant answers, with their end token)
    spans: list[tuple[int, int]]
