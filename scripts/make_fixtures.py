#!/usr/bin/env python3
"""Reference numbers for lora-train's Rust tests, computed by transformers on CPU in fp32.

Run from the repository root (or anywhere; paths are resolved from this file):

    /path/to/python scripts/make_fixtures.py [--models-dir models] [--skip-real] [--only NAME ...]

Needs torch (CPU), transformers, tokenizers, safetensors, gguf, sentencepiece, numpy. The committed
files were produced by: Python 3.11.7, torch 2.15.0 (CPU), transformers 5.23.0, tokenizers 0.23.3,
safetensors 0.8.0, gguf 0.19.0, sentencepiece 0.2.3, numpy 2.4.6, jinja2 3.1.6
(tests/fixtures/VERSIONS.json records the exact versions and the sha256 of both GGUF files). The run is
seeded and deterministic (re-running rewrites identical files); it needs about 5 minutes of CPU time
(2 cores), more wall time on a busy machine. --skip-real redoes only chats.jsonl and the tiny models;
--only tiny-qwen2 tiny-qwen3 (say) redoes only those tiny models (and chats.jsonl, chats-think.jsonl).
tiny-qwen2/, tiny-qwen3/, tiny-mistral/, tiny-gemma2/ and tiny-gemma3-mm/ were made with transformers 5.24.0 (VERSIONS.json
"tiny_models" records each); tiny-qwen2 and tiny-qwen3's
chat templates are Qwen2.5-Instruct's and Qwen3's own (QWEN25_TEMPLATE, QWEN3_TEMPLATE below).

Writes, under tests/fixtures/:
  chats.jsonl                  test conversations (OpenAI messages format), defined below
  tiny-llama/, tiny-gemma3/,   seeded random HF models (f32 safetensors) with trained tiny tokenizers,
  tiny-qwen2/, tiny-qwen3/,    expected.safetensors (input_ids, attention_mask, logits) and score.json
  tiny-mistral/, tiny-gemma2/
  tiny-gemma3-mm/              Gemma3ForConditionalGeneration: tiny-gemma3's text weights and tokenizer with a
                               seeded tiny SigLIP vision tower, saved by transformers 5.24.0 (text tower under
                               language_model.model.*); expected.safetensors are its text logits on
                               tiny-gemma3's inputs, checked equal to those of the same weights as a
                               Gemma3ForCausalLM. final_logit_softcapping is null, as in every real Gemma 3:
                               transformers' Gemma3ForConditionalGeneration never applies it (5.24.0)
  chats-think.jsonl            conversations with reasoning (reasoning_content, inline <think>); their
  tiny-qwen3/think.json        renderings and last-assistant targets under Qwen3's template
  smollm2/expected.json        SmolLM2-135M-Instruct (GGUF, dequantized to fp32): template ids,
  gemma3/expected.json         plain encodes, losses, greedy continuations
  VERSIONS.json                library versions of the last full run, and under "tiny_models" the
                               transformers and torch each tiny model was made with
and reads src/data/templates/gemma.jinja (the official Gemma 3 chat template, which the Rust code
embeds too): the Gemma 3 270M base GGUF carries no chat template.

Loss definitions (loss_on): rendering uses the chat template; rendered text is tokenized with
add_special_tokens=False. k = index of the last assistant message; sequence = ids(template(messages[:k+1])).
  last_assistant: targets = len(ids(template(messages[:k], add_generation_prompt=True))) .. len(sequence)-1
  all_assistant:  for every assistant j <= k, targets = len(ids(template(messages[:j], gen=True))) ..
                  len(ids(template(messages[:j+1])))-1
  all:            targets = 1 .. len(sequence)-1
When a prompt is not a token prefix, targets start at the longest common prefix (counted in
"prefix_mismatches"); likewise, when template(messages[:j+1]) is not a token prefix of the sequence (Qwen3
renders an assistant turn without its <think> block once a later user turn follows), that turn's targets end
at the longest common prefix: lora-train's rule (src/data/mask.rs, mark_turn). Loss at target t = -log softmax(logits[t-1])[ids[t]]; per-example loss is the
mean over its targets, mean_loss is the token-weighted mean over all examples. Each example runs alone
(batch 1, no padding).
"""

from __future__ import annotations

import argparse
import copy
import hashlib
import json
import platform
import sys
import time
from collections import Counter
from pathlib import Path

import numpy as np
import torch
from safetensors.torch import save_file
from tokenizers import AddedToken, Tokenizer, decoders, models, normalizers, pre_tokenizers, processors, trainers

import transformers
from transformers import (
    AutoModelForCausalLM,
    AutoTokenizer,
    Gemma3ForCausalLM,
    Gemma3TextConfig,
    GenerationConfig,
    LlamaConfig,
    LlamaForCausalLM,
    MistralConfig,
    MistralForCausalLM,
    PreTrainedTokenizerFast,
    Qwen2Config,
    Qwen2ForCausalLM,
    Qwen3Config,
    Qwen3ForCausalLM,
)

ROOT = Path(__file__).resolve().parent.parent
FIXTURES = ROOT / "tests" / "fixtures"
GEMMA_TEMPLATE_PATH = ROOT / "src" / "data" / "templates" / "gemma.jinja"

SEED = 20250611
LOSS_ON = ["last_assistant", "all_assistant", "all"]

SMOLLM2_GGUF = "smollm2-135m-instruct.Q4_1.gguf"
GEMMA3_GGUF = "gemma-3-270m.Q4_K_M.gguf"

# SmolLM2-135M-Instruct's chat template (identical to the GGUF's tokenizer.chat_template; checked below).
CHATML_TEMPLATE = (
    "{% for message in messages %}{% if loop.first and messages[0]['role'] != 'system' %}"
    "{{ '<|im_start|>system\nYou are a helpful AI assistant named SmolLM, trained by Hugging Face<|im_end|>\n' }}"
    "{% endif %}{{'<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n'}}"
    "{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)

# Mistral-7B-Instruct-v0.3's chat template (tokenizer_config.json), verbatim: the system message goes into
# the last user turn, and there is no generation prompt (a prompt ends with "[/INST]").
MISTRAL_V03_TEMPLATE = """{%- if messages[0]["role"] == "system" %}
    {%- set system_message = messages[0]["content"] %}
    {%- set loop_messages = messages[1:] %}
{%- else %}
    {%- set loop_messages = messages %}
{%- endif %}
{%- if not tools is defined %}
    {%- set tools = none %}
{%- endif %}
{%- set user_messages = loop_messages | selectattr("role", "equalto", "user") | list %}

{#- This block checks for alternating user/assistant messages, skipping tool calling messages #}
{%- set ns = namespace() %}
{%- set ns.index = 0 %}
{%- for message in loop_messages %}
    {%- if not (message.role == "tool" or message.role == "tool_results" or (message.tool_calls is defined and message.tool_calls is not none)) %}
        {%- if (message["role"] == "user") != (ns.index % 2 == 0) %}
            {{- raise_exception("After the optional system message, conversation roles must alternate user/assistant/user/assistant/...") }}
        {%- endif %}
        {%- set ns.index = ns.index + 1 %}
    {%- endif %}
{%- endfor %}

{{- bos_token }}
{%- for message in loop_messages %}
    {%- if message["role"] == "user" %}
        {%- if tools is not none and (message == user_messages[-1]) %}
            {{- "[AVAILABLE_TOOLS] [" }}
            {%- for tool in tools %}
                {%- set tool = tool.function %}
                {{- '{"type": "function", "function": {' }}
                {%- for key, val in tool.items() if key != "return" %}
                    {%- if val is string %}
                        {{- '"' + key + '": "' + val + '"' }}
                    {%- else %}
                        {{- '"' + key + '": ' + val|tojson }}
                    {%- endif %}
                    {%- if not loop.last %}
                        {{- ", " }}
                    {%- endif %}
                {%- endfor %}
                {{- "}}" }}
                {%- if not loop.last %}
                    {{- ", " }}
                {%- else %}
                    {{- "]" }}
                {%- endif %}
            {%- endfor %}
            {{- "[/AVAILABLE_TOOLS]" }}
            {%- endif %}
        {%- if loop.last and system_message is defined %}
            {{- "[INST] " + system_message + "\\n\\n" + message["content"] + "[/INST]" }}
        {%- else %}
            {{- "[INST] " + message["content"] + "[/INST]" }}
        {%- endif %}
    {%- elif message.tool_calls is defined and message.tool_calls is not none %}
        {{- "[TOOL_CALLS] [" }}
        {%- for tool_call in message.tool_calls %}
            {%- set out = tool_call.function|tojson %}
            {{- out[:-1] }}
            {%- if not tool_call.id is defined or tool_call.id|length != 9 %}
                {{- raise_exception("Tool call IDs should be alphanumeric strings with length 9!") }}
            {%- endif %}
            {{- ', "id": "' + tool_call.id + '"}' }}
            {%- if not loop.last %}
                {{- ", " }}
            {%- else %}
                {{- "]" + eos_token }}
            {%- endif %}
        {%- endfor %}
    {%- elif message["role"] == "assistant" %}
        {{- " " + message["content"]|trim + eos_token}}
    {%- elif message["role"] == "tool_results" or message["role"] == "tool" %}
        {%- if message.content is defined and message.content.content is defined %}
            {%- set content = message.content.content %}
        {%- else %}
            {%- set content = message.content %}
        {%- endif %}
        {{- '[TOOL_RESULTS] {"content": ' + content|string + ", " }}
        {%- if not message.tool_call_id is defined or message.tool_call_id|length != 9 %}
            {{- raise_exception("Tool call IDs should be alphanumeric strings with length 9!") }}
        {%- endif %}
        {{- '"call_id": "' + message.tool_call_id + '"}[/TOOL_RESULTS]' }}
    {%- else %}
        {{- raise_exception("Only user and assistant roles are supported, with the exception of an initial optional system message!") }}
    {%- endif %}
{%- endfor %}
"""

# Qwen2.5-Instruct's chat template (tokenizer_config.json of Qwen/Qwen2.5-*-Instruct), verbatim.
QWEN25_TEMPLATE = """{%- if tools %}
    {{- '<|im_start|>system\\n' }}
    {%- if messages[0]['role'] == 'system' %}
        {{- messages[0]['content'] }}
    {%- else %}
        {{- 'You are Qwen, created by Alibaba Cloud. You are a helpful assistant.' }}
    {%- endif %}
    {{- "\\n\\n# Tools\\n\\nYou may call one or more functions to assist with the user query.\\n\\nYou are provided with function signatures within <tools></tools> XML tags:\\n<tools>" }}
    {%- for tool in tools %}
        {{- "\\n" }}
        {{- tool | tojson }}
    {%- endfor %}
    {{- "\\n</tools>\\n\\nFor each function call, return a json object with function name and arguments within <tool_call></tool_call> XML tags:\\n<tool_call>\\n{{\\"name\\": <function-name>, \\"arguments\\": <args-json-object>}}\\n</tool_call><|im_end|>\\n" }}
{%- else %}
    {%- if messages[0]['role'] == 'system' %}
        {{- '<|im_start|>system\\n' + messages[0]['content'] + '<|im_end|>\\n' }}
    {%- else %}
        {{- '<|im_start|>system\\nYou are Qwen, created by Alibaba Cloud. You are a helpful assistant.<|im_end|>\\n' }}
    {%- endif %}
{%- endif %}
{%- for message in messages %}
    {%- if (message.role == "user") or (message.role == "system" and not loop.first) or (message.role == "assistant" and not message.tool_calls) %}
        {{- '<|im_start|>' + message.role + '\\n' + message.content + '<|im_end|>' + '\\n' }}
    {%- elif message.role == "assistant" %}
        {{- '<|im_start|>' + message.role }}
        {%- if message.content %}
            {{- '\\n' + message.content }}
        {%- endif %}
        {%- for tool_call in message.tool_calls %}
            {%- if tool_call.function is defined %}
                {%- set tool_call = tool_call.function %}
            {%- endif %}
            {{- '\\n<tool_call>\\n{"name": "' }}
            {{- tool_call.name }}
            {{- '", "arguments": ' }}
            {{- tool_call.arguments | tojson }}
            {{- '}\\n</tool_call>' }}
        {%- endfor %}
        {{- '<|im_end|>\\n' }}
    {%- elif message.role == "tool" %}
        {%- if (loop.index0 == 0) or (messages[loop.index0 - 1].role != "tool") %}
            {{- '<|im_start|>user' }}
        {%- endif %}
        {{- '\\n<tool_response>\\n' }}
        {{- message.content }}
        {{- '\\n</tool_response>' }}
        {%- if loop.last or (messages[loop.index0 + 1].role != "tool") %}
            {{- '<|im_end|>\\n' }}
        {%- endif %}
    {%- endif %}
{%- endfor %}
{%- if add_generation_prompt %}
    {{- '<|im_start|>assistant\\n' }}
{%- endif %}
"""

# Qwen3's chat template (tokenizer_config.json of Qwen/Qwen3-0.6B and the other dense Qwen3), verbatim.
QWEN3_TEMPLATE = """{%- if tools %}
    {{- '<|im_start|>system\\n' }}
    {%- if messages[0].role == 'system' %}
        {{- messages[0].content + '\\n\\n' }}
    {%- endif %}
    {{- "# Tools\\n\\nYou may call one or more functions to assist with the user query.\\n\\nYou are provided with function signatures within <tools></tools> XML tags:\\n<tools>" }}
    {%- for tool in tools %}
        {{- "\\n" }}
        {{- tool | tojson }}
    {%- endfor %}
    {{- "\\n</tools>\\n\\nFor each function call, return a json object with function name and arguments within <tool_call></tool_call> XML tags:\\n<tool_call>\\n{\\"name\\": <function-name>, \\"arguments\\": <args-json-object>}\\n</tool_call><|im_end|>\\n" }}
{%- else %}
    {%- if messages[0].role == 'system' %}
        {{- '<|im_start|>system\\n' + messages[0].content + '<|im_end|>\\n' }}
    {%- endif %}
{%- endif %}
{%- set ns = namespace(multi_step_tool=true, last_query_index=messages|length - 1) %}
{%- for message in messages[::-1] %}
    {%- set index = (messages|length - 1) - loop.index0 %}
    {%- if ns.multi_step_tool and message.role == "user" and message.content is string and not(message.content.startswith('<tool_response>') and message.content.endswith('</tool_response>')) %}
        {%- set ns.multi_step_tool = false %}
        {%- set ns.last_query_index = index %}
    {%- endif %}
{%- endfor %}
{%- for message in messages %}
    {%- if message.content is string %}
        {%- set content = message.content %}
    {%- else %}
        {%- set content = '' %}
    {%- endif %}
    {%- if (message.role == "user") or (message.role == "system" and not loop.first) %}
        {{- '<|im_start|>' + message.role + '\\n' + content + '<|im_end|>' + '\\n' }}
    {%- elif message.role == "assistant" %}
        {%- set reasoning_content = '' %}
        {%- if message.reasoning_content is string %}
            {%- set reasoning_content = message.reasoning_content %}
        {%- else %}
            {%- if '</think>' in content %}
                {%- set reasoning_content = content.split('</think>')[0].rstrip('\\n').split('<think>')[-1].lstrip('\\n') %}
                {%- set content = content.split('</think>')[-1].lstrip('\\n') %}
            {%- endif %}
        {%- endif %}
        {%- if loop.index0 > ns.last_query_index %}
            {%- if loop.last or (not loop.last and reasoning_content) %}
                {{- '<|im_start|>' + message.role + '\\n<think>\\n' + reasoning_content.strip('\\n') + '\\n</think>\\n\\n' + content.lstrip('\\n') }}
            {%- else %}
                {{- '<|im_start|>' + message.role + '\\n' + content }}
            {%- endif %}
        {%- else %}
            {{- '<|im_start|>' + message.role + '\\n' + content }}
        {%- endif %}
        {%- if message.tool_calls %}
            {%- for tool_call in message.tool_calls %}
                {%- if (loop.first and content) or (not loop.first) %}
                    {{- '\\n' }}
                {%- endif %}
                {%- if tool_call.function %}
                    {%- set tool_call = tool_call.function %}
                {%- endif %}
                {{- '<tool_call>\\n{"name": "' }}
                {{- tool_call.name }}
                {{- '", "arguments": ' }}
                {%- if tool_call.arguments is string %}
                    {{- tool_call.arguments }}
                {%- else %}
                    {{- tool_call.arguments | tojson }}
                {%- endif %}
                {{- '}\\n</tool_call>' }}
            {%- endfor %}
        {%- endif %}
        {{- '<|im_end|>\\n' }}
    {%- elif message.role == "tool" %}
        {%- if loop.first or (messages[loop.index0 - 1].role != "tool") %}
            {{- '<|im_start|>user' }}
        {%- endif %}
        {{- '\\n<tool_response>\\n' }}
        {{- content }}
        {{- '\\n</tool_response>' }}
        {%- if loop.last or (messages[loop.index0 + 1].role != "tool") %}
            {{- '<|im_end|>\\n' }}
        {%- endif %}
    {%- endif %}
{%- endfor %}
{%- if add_generation_prompt %}
    {{- '<|im_start|>assistant\\n' }}
    {%- if enable_thinking is defined and enable_thinking is false %}
        {{- '<think>\\n\\n</think>\\n\\n' }}
    {%- endif %}
{%- endif %}"""

# The real SmolLM2 tokenizer.json splits every digit off before the GPT-2 byte-level regex.
SMOLLM2_PRE_TOKENIZER = pre_tokenizers.Sequence(
    [
        pre_tokenizers.Digits(individual_digits=True),
        pre_tokenizers.ByteLevel(add_prefix_space=False, trim_offsets=True, use_regex=True),
    ]
)


def sys_(content):
    return {"role": "system", "content": content}


def user(content):
    return {"role": "user", "content": content}


def asst(content):
    return {"role": "assistant", "content": content}


CHATS = [
    [
        sys_("You are a helpful assistant that answers briefly."),
        user("What is the capital of France?"),
        asst("The capital of France is Paris."),
    ],
    [
        user("Hi! Can you help me plan a picnic?"),
        asst("Of course. How many people are coming?"),
        user("Six, including two kids."),
        asst("Bring sandwiches, fruit, juice and a big blanket."),
    ],
    [
        user('Translate "good morning" into French, Japanese and Chinese.'),
        asst("Bonjour ! おはようございます。早上好！ ☀️🙂"),
    ],
    [
        sys_("You are a calculator."),
        user("12345 + 678 = ?"),
        asst("12345 + 678 = 13023"),
        user("And 2024 * 3?"),
        asst("2024 * 3 = 6072"),
    ],
    [
        user("  Please format this list:\n- apples\n- pears  \n"),
        asst("\nHere it is:\n\n1. apples\n2. pears\n\n"),
    ],
    [
        user("Name a primary color."),
        asst("Blue."),
        user("Another one, please."),
    ],
    [
        user("What does this print?\n\nx = 3\nprint(x  *  14)"),
        asst("It prints:\n  42\n\tDone."),
    ],
    [
        sys_("Answer with one word."),
        user("Sky color?"),
        asst("Blue"),
        user("Grass color?"),
        asst("Green"),
        user("Snow color?"),
        asst("White"),
    ],
    [
        sys_("Tu es un assistant qui répond en français."),
        user("Quelle heure est-il à Zürich ? 🕒"),
        asst("Il est 14 h 30 à Zürich. Crème brûlée, naïve, São Paulo."),
        user("Merci ! Et à Tōkyō ?"),
    ],
]

ENCODE_STRINGS = [
    "2024 and 1234567",
    "Hello world",
    " leading space",
    "  two leading spaces",
    "trailing spaces   ",
    "line1\nline2\n\n\nline5",
    "tab\tseparated\t\tvalues",
    "Crème brûlée à São Paulo, naïve Zürich",
    "日本語と中文のテキスト",
    "emoji 🙂👍🏽🇫🇷",
    "<|im_end|> literal",
    "<start_of_turn>user literal",
    "a  1 and x   12",
    "value:\n  7",
    "nbsp\u00a0and zero\u200bwidth",
]

def asst_thinking(content, reasoning):
    return {"role": "assistant", "content": content, "reasoning_content": reasoning}


# Conversations with reasoning, for Qwen3's template: the `reasoning_content` field, inline <think> blocks
# (with and without newlines), earlier turns whose reasoning the template drops, and both at once.
THINK_CHATS = [
    [user("What is 2 + 3?"), asst_thinking("2 + 3 = 5.", "Add two and three: five.")],
    [user("Name a primary color."), asst("<think>\nThe sky is blue.\n</think>\n\nBlue.")],
    [
        sys_("Answer briefly."),
        user("Hi!"),
        asst_thinking("Hello!", "A greeting; greet back."),
        user("What is 4 * 2?"),
        asst_thinking("8", "Four times two is eight."),
    ],
    [user("Capital of Italy?"), asst("<think>Rome is the capital.</think>Rome.")],
    [user("Say yes."), asst_thinking("<think>\ninline\n</think>\n\nYes.", "The field wins.")],
    [user("And no reasoning?"), asst("None at all.")],
    [
        user("First question?"),
        asst("<think>\nthink one\n</think>\n\nFirst answer."),
        user("Second question?"),
        asst("Second answer."),
    ],
]

GREEDY_PROMPTS = [
    [user("What is the capital of France?")],
    [sys_("You are a concise assistant."), user("List three colors.")],
    [user("Count from 1 to 5.")],
]
GREEDY_STEPS = 32

# Filler text for the tiny tokenizers, so their merges are not learned from the test chats alone.
FILLER = [
    "The quick brown fox jumps over the lazy dog. The dog sleeps in the sun all day long.",
    "Please answer the question. The answer is short, and the question is simple.",
    "In the morning we drink coffee; in the evening we read books and write letters.",
    "Numbers: 0 1 2 3 4 5 6 7 8 9 10 11 12 100 2024 12345 678 13023 6072 3.14",
    "She said that the weather would be nice, so they went to the park with the kids.",
    "User and assistant take turns. The assistant should be helpful, honest and brief.",
    "Colors: red, green, blue, yellow, white, black. Fruit: apples, pears, grapes.",
    "Learning rates, losses and tokens: the model predicts the next token in the text.",
]


# ----------------------------------------------------------------------------- helpers


def compact_json(obj, indent=0):
    """JSON with dict keys on their own lines but lists of scalars on one line (small, diffable files)."""
    pad = "  " * indent
    inner = "  " * (indent + 1)
    if isinstance(obj, dict):
        if not obj:
            return "{}"
        items = [f"{inner}{json.dumps(k, ensure_ascii=False)}: {compact_json(v, indent + 1)}" for k, v in obj.items()]
        return "{\n" + ",\n".join(items) + "\n" + pad + "}"
    if isinstance(obj, list):
        if all(not isinstance(v, (dict, list)) for v in obj):
            return "[" + ", ".join(json.dumps(v, ensure_ascii=False) for v in obj) + "]"
        return "[\n" + ",\n".join(inner + compact_json(v, indent + 1) for v in obj) + "\n" + pad + "]"
    return json.dumps(obj, ensure_ascii=False)


def write_json(path: Path, obj):
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(compact_json(obj) + "\n", encoding="utf-8")
    try:
        shown = path.relative_to(ROOT)
    except ValueError:
        shown = path
    print(f"wrote {shown} ({path.stat().st_size} bytes)")


def last_assistant_index(messages):
    idx = [i for i, m in enumerate(messages) if m["role"] == "assistant"]
    if not idx:
        raise ValueError("conversation has no assistant message")
    return idx[-1]


def common_prefix_len(a, b):
    n = 0
    for x, y in zip(a, b):
        if x != y:
            break
        n += 1
    return n


def render(tok, messages, gen=False):
    return tok.apply_chat_template(messages, tokenize=False, add_generation_prompt=gen)


def ids_of(tok, messages, gen=False):
    text = render(tok, messages, gen)
    ids = tok.encode(text, add_special_tokens=False)
    # apply_chat_template(tokenize=True) must agree with "render, then encode without special tokens".
    via_template = tok.apply_chat_template(messages, tokenize=True, add_generation_prompt=gen, return_dict=False)
    if hasattr(via_template, "keys"):
        via_template = via_template["input_ids"]
    if list(via_template) != ids:
        raise RuntimeError(f"apply_chat_template(tokenize=True) differs from encode(render) for {messages!r}")
    return ids


def target_spans(tok, messages, loss_on):
    """(input_ids, target_positions, prefix_mismatches) for one conversation."""
    k = last_assistant_index(messages)
    seq = ids_of(tok, messages[: k + 1])
    mismatches = 0

    def span(j):
        nonlocal mismatches
        prompt = ids_of(tok, messages[:j], gen=True)
        full = ids_of(tok, messages[: j + 1])
        end = len(full)
        if full != seq[:end]:
            # lora-train's rule (src/data/mask.rs): the turn's targets end where the renderings differ.
            mismatches += 1
            end = common_prefix_len(seq, full)
        start = len(prompt)
        if seq[:start] != prompt:
            mismatches += 1
            start = common_prefix_len(prompt, seq)
        return list(range(max(start, 1), end))

    if loss_on == "last_assistant":
        targets = span(k)
    elif loss_on == "all_assistant":
        targets = []
        for j, m in enumerate(messages[: k + 1]):
            if m["role"] == "assistant":
                targets.extend(span(j))
    elif loss_on == "all":
        targets = list(range(1, len(seq)))
    else:
        raise ValueError(loss_on)
    if not targets or targets[0] < 1:
        raise RuntimeError("empty target span or target at position 0")
    if targets != sorted(set(targets)):
        raise RuntimeError("overlapping target spans")
    return seq, targets, mismatches


@torch.no_grad()
def forward_logits(model, ids):
    out = model(input_ids=torch.tensor([ids], dtype=torch.long))
    return out.logits[0].float()


@torch.no_grad()
def score(model, tok, chats):
    result, tokenized = {}, {}
    cache = {}
    for loss_on in LOSS_ON:
        per_example, toks = [], []
        total, count, mismatches = 0.0, 0, 0
        for i, messages in enumerate(chats):
            seq, targets, mm = target_spans(tok, messages, loss_on)
            mismatches += mm
            key = tuple(seq)
            if key not in cache:
                cache[key] = torch.log_softmax(forward_logits(model, seq), dim=-1)
            logp = cache[key]
            t = torch.tensor(targets)
            nll = -logp[t - 1, torch.tensor(seq)[t]].double()
            loss_sum = float(nll.sum())
            per_example.append({"index": i, "loss": loss_sum / len(targets), "target_tokens": len(targets)})
            toks.append({"input_ids": seq, "target_positions": targets})
            total += loss_sum
            count += len(targets)
        result[loss_on] = {
            "mean_loss": total / count,
            "target_tokens": count,
            "examples": len(chats),
            "prefix_mismatches": mismatches,
            "per_example": per_example,
        }
        tokenized[loss_on] = toks
        if mismatches:
            print(f"  NOTE: {mismatches} prompt(s) were not a token prefix for loss_on={loss_on}")
    result["tokenized"] = tokenized
    return result


def seeded_init(model, seed, norm_center, norm_std=0.2, std=0.2):
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in sorted(model.named_parameters(), key=lambda kv: kv[0]):
            noise = torch.randn(p.shape, generator=gen, dtype=torch.float32)
            if "norm" in name:
                p.copy_(norm_center + norm_std * noise)
            else:
                p.copy_(std * noise)


def sha256_file(path: Path):
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


# ----------------------------------------------------------------------------- tiny tokenizers


def corpus():
    texts = list(FILLER) * 3
    for messages in CHATS:
        texts.extend(m["content"] for m in messages)
    texts.extend(ENCODE_STRINGS)
    texts.append("You are a helpful AI assistant named SmolLM, trained by Hugging Face")
    texts.extend(["system", "user", "assistant", "model"] * 5)
    return texts


def tiny_llama_tokenizer(vocab_size):
    specials = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]
    tk = Tokenizer(models.BPE())
    tk.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
    tk.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        min_frequency=2,
        special_tokens=specials,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tk.train_from_iterator(corpus(), trainer=trainer)
    tk.post_processor = processors.ByteLevel(trim_offsets=False)
    return PreTrainedTokenizerFast(
        tokenizer_object=tk,
        bos_token="<|im_start|>",
        eos_token="<|im_end|>",
        pad_token="<|im_end|>",
        unk_token="<|endoftext|>",
        chat_template=CHATML_TEMPLATE,
        clean_up_tokenization_spaces=False,
        model_max_length=128,
    )


def tiny_qwen_tokenizer(vocab_size, template):
    """Qwen-shaped tokenizer: byte-level BPE, ChatML and <think> specials, no BOS, eos <|im_end|>.

    Normalizer and pre-tokenizer are Qwen's own (NFC, then Qwen2Tokenizer's split regex: one digit per
    piece, then byte-level without its regex), which transformers' Qwen2Tokenizer rebuilds on load."""
    from tokenizers import Regex
    from transformers.models.qwen2.tokenization_qwen2 import PRETOKENIZE_REGEX

    specials = ["<|endoftext|>", "<|im_start|>", "<|im_end|>", "<think>", "</think>"]
    tk = Tokenizer(models.BPE())
    tk.normalizer = normalizers.NFC()
    tk.pre_tokenizer = pre_tokenizers.Sequence(
        [
            pre_tokenizers.Split(Regex(PRETOKENIZE_REGEX), behavior="isolated", invert=False),
            pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
        ]
    )
    tk.decoder = decoders.ByteLevel()
    texts = corpus() + ["You are Qwen, created by Alibaba Cloud. You are a helpful assistant."] * 3
    texts += [m.get("reasoning_content") or m["content"] for c in THINK_CHATS for m in c]
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        min_frequency=2,
        special_tokens=specials,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tk.train_from_iterator(texts, trainer=trainer)
    tk.post_processor = processors.ByteLevel(trim_offsets=False)
    return PreTrainedTokenizerFast(
        tokenizer_object=tk,
        bos_token=None,
        eos_token="<|im_end|>",
        pad_token="<|endoftext|>",
        unk_token=None,
        chat_template=template,
        clean_up_tokenization_spaces=False,
        model_max_length=512,
    )


def tiny_gemma_tokenizer(vocab_size, template):
    """Gemma-3-shaped tokenizer: BPE with byte fallback, ' ' -> '▁' normalizer, no pre-tokenizer."""
    specials = ["<pad>", "<eos>", "<bos>", "<unk>", "<mask>", "<start_of_turn>", "<end_of_turn>"]
    byte_tokens = [f"<0x{b:02X}>" for b in range(256)]
    trainer_tk = Tokenizer(models.BPE(unk_token="<unk>", byte_fallback=True, fuse_unk=True))
    trainer_tk.normalizer = normalizers.Replace(" ", "▁")
    # The trainer breaks ties in character counts arbitrarily when it cuts the alphabet: pick it here.
    counts = Counter(ch for text in corpus() for ch in text.replace(" ", "▁"))
    alphabet = [ch for ch, _ in sorted(counts.items(), key=lambda kv: (-kv[1], kv[0]))[:60]]
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size - len(byte_tokens),
        min_frequency=2,
        special_tokens=specials,
        initial_alphabet=alphabet,
        limit_alphabet=len(alphabet),
        show_progress=False,
    )
    trainer_tk.train_from_iterator(corpus(), trainer=trainer)
    trained = json.loads(trainer_tk.to_str())["model"]
    learned = [t for t, _ in sorted(trained["vocab"].items(), key=lambda kv: kv[1]) if t not in specials]
    vocab = {t: i for i, t in enumerate(specials + byte_tokens + learned)}
    merges = [tuple(m) if isinstance(m, list) else tuple(m.split(" ")) for m in trained["merges"]]
    tk = Tokenizer(models.BPE(vocab=vocab, merges=merges, unk_token="<unk>", byte_fallback=True, fuse_unk=True))
    tk.normalizer = normalizers.Replace(" ", "▁")
    tk.decoder = decoders.Sequence([decoders.Replace("▁", " "), decoders.ByteFallback(), decoders.Fuse()])
    tk.add_special_tokens([AddedToken(t, special=True, normalized=False) for t in specials])
    tk.post_processor = processors.TemplateProcessing(
        single="<bos> $A", pair="<bos> $A <bos> $B", special_tokens=[("<bos>", vocab["<bos>"])]
    )
    return PreTrainedTokenizerFast(
        tokenizer_object=tk,
        bos_token="<bos>",
        eos_token="<eos>",
        pad_token="<pad>",
        unk_token="<unk>",
        mask_token="<mask>",
        additional_special_tokens=["<start_of_turn>", "<end_of_turn>"],
        chat_template=template,
        clean_up_tokenization_spaces=False,
        model_max_length=512,
    )


def tiny_mistral_tokenizer(vocab_size, template):
    """Mistral-shaped tokenizer: sentencepiece-style BPE with byte fallback (as tiny_gemma_tokenizer) and
    Mistral's specials <unk>, <s>, </s>, [INST], [/INST]."""
    specials = ["<unk>", "<s>", "</s>", "[INST]", "[/INST]"]
    byte_tokens = [f"<0x{b:02X}>" for b in range(256)]
    trainer_tk = Tokenizer(models.BPE(unk_token="<unk>", byte_fallback=True, fuse_unk=True))
    trainer_tk.normalizer = normalizers.Replace(" ", "▁")
    counts = Counter(ch for text in corpus() for ch in text.replace(" ", "▁"))
    alphabet = [ch for ch, _ in sorted(counts.items(), key=lambda kv: (-kv[1], kv[0]))[:60]]
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size - len(byte_tokens),
        min_frequency=2,
        special_tokens=specials,
        initial_alphabet=alphabet,
        limit_alphabet=len(alphabet),
        show_progress=False,
    )
    trainer_tk.train_from_iterator(corpus(), trainer=trainer)
    trained = json.loads(trainer_tk.to_str())["model"]
    learned = [t for t, _ in sorted(trained["vocab"].items(), key=lambda kv: kv[1]) if t not in specials]
    vocab = {t: i for i, t in enumerate(specials + byte_tokens + learned)}
    merges = [tuple(m) if isinstance(m, list) else tuple(m.split(" ")) for m in trained["merges"]]
    tk = Tokenizer(models.BPE(vocab=vocab, merges=merges, unk_token="<unk>", byte_fallback=True, fuse_unk=True))
    tk.normalizer = normalizers.Replace(" ", "▁")
    tk.decoder = decoders.Sequence([decoders.Replace("▁", " "), decoders.ByteFallback(), decoders.Fuse()])
    tk.add_special_tokens([AddedToken(t, special=True, normalized=False) for t in specials])
    return PreTrainedTokenizerFast(
        tokenizer_object=tk,
        bos_token="<s>",
        eos_token="</s>",
        pad_token="</s>",
        unk_token="<unk>",
        chat_template=template,
        clean_up_tokenization_spaces=False,
        model_max_length=512,
    )


def save_tokenizer(tok, out: Path):
    (out / "special_tokens_map.json").unlink(missing_ok=True)
    tok.save_pretrained(out, save_jinja_files=False)
    # Older readers look for special_tokens_map.json; recent transformers no longer writes it.
    cfg = json.loads((out / "tokenizer_config.json").read_text(encoding="utf-8"))
    stm = out / "special_tokens_map.json"
    if not stm.exists():
        special = dict(tok.special_tokens_map)
        if cfg.get("extra_special_tokens"):
            special["additional_special_tokens"] = list(cfg["extra_special_tokens"])
        stm.write_text(compact_json(special) + "\n", encoding="utf-8")
    for key in ("chat_template", "bos_token", "eos_token"):
        if key not in cfg:
            raise RuntimeError(f"{out}/tokenizer_config.json lacks {key}")


# ----------------------------------------------------------------------------- tiny models


def logits_fixture(model, tok, pad_id):
    """input_ids [2,16] (row 1 right-padded with 5 pads), attention_mask, fp32 logits.

    Row 0 is the start of chat 0; row 1 is 11 tokens from the middle of chat 3 (no BOS, digits)."""
    seq_len, n_pad = 16, 5
    row0 = ids_of(tok, CHATS[0])[:seq_len]
    row1 = ids_of(tok, CHATS[3])[8 : 8 + seq_len - n_pad] + [pad_id] * n_pad
    if len(row0) != seq_len or len(row1) != seq_len:
        raise RuntimeError("chats too short for the logits fixture")
    input_ids = torch.tensor([row0, row1], dtype=torch.int64)
    mask = torch.ones_like(input_ids)
    mask[1, seq_len - n_pad :] = 0
    with torch.no_grad():
        logits = model(input_ids=input_ids, attention_mask=mask).logits.float().contiguous()
    # Row 1's unpadded positions must not depend on the padding.
    with torch.no_grad():
        alone = model(input_ids=input_ids[1:, : seq_len - n_pad]).logits.float()
    drift = (alone[0] - logits[1, : seq_len - n_pad]).abs().max().item()
    if drift > 1e-4:
        raise RuntimeError(f"padding changed unpadded logits by {drift}")
    return {"input_ids": input_ids, "attention_mask": mask, "logits": logits}


def max_masked_diff(a, b, mask):
    m = mask.bool()
    return float((a[m] - b[m]).abs().max())


def sensitivity(model_cls, config, state, fx, variants):
    """How far the fixture logits move when one config knob is changed: guides test tolerances."""
    out = {}
    for name, changes in variants.items():
        cfg = copy.deepcopy(config)
        for k, v in changes.items():
            setattr(cfg, k, v)
        m = model_cls(cfg).eval()
        m.load_state_dict(state)
        with torch.no_grad():
            lg = m(input_ids=fx["input_ids"], attention_mask=fx["attention_mask"]).logits.float()
        out[name] = max_masked_diff(lg, fx["logits"], fx["attention_mask"])
    return out


def add_legacy_config_keys(path: Path, extra: dict):
    """Also write the pre-`rope_parameters` keys that most hub checkpoints carry, consistent with the new ones."""
    cfg = json.loads(path.read_text(encoding="utf-8"))
    cfg.update(extra)
    path.write_text(json.dumps(cfg, indent=2, sort_keys=True) + "\n", encoding="utf-8")


def check_reload(out: Path, fx, model_cls):
    m = model_cls.from_pretrained(out, dtype=torch.float32, attn_implementation="eager").eval()
    with torch.no_grad():
        lg = m(input_ids=fx["input_ids"], attention_mask=fx["attention_mask"]).logits.float()
    d = max_masked_diff(lg, fx["logits"], fx["attention_mask"])
    if d != 0.0:
        raise RuntimeError(f"{out}: reloaded model differs by {d}")
    tok = AutoTokenizer.from_pretrained(out)
    return tok


def make_tiny_llama(gemma_template):
    out = FIXTURES / "tiny-llama"
    out.mkdir(parents=True, exist_ok=True)
    tok = tiny_llama_tokenizer(400)
    vocab = len(tok)
    # original_max_position_embeddings=32 puts head_dim 16's frequency bands in all three llama3 regimes
    # (band 0 unscaled, band 1 smoothed, bands 2+ divided by factor); with 16 no band stays unscaled.
    rope = {
        "rope_type": "llama3",
        "rope_theta": 10000.0,
        "factor": 8.0,
        "low_freq_factor": 1.0,
        "high_freq_factor": 4.0,
        "original_max_position_embeddings": 32,
    }
    config = LlamaConfig(
        vocab_size=vocab,
        hidden_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        head_dim=16,
        intermediate_size=128,
        hidden_act="silu",
        rms_norm_eps=1e-5,
        rope_parameters=rope,
        # The tiny tokenizer turns the longest test chat into ~160 tokens.
        max_position_embeddings=512,
        tie_word_embeddings=False,
        bos_token_id=tok.bos_token_id,
        eos_token_id=tok.eos_token_id,
        pad_token_id=tok.pad_token_id,
        attention_bias=False,
        mlp_bias=False,
    )
    config._attn_implementation = "eager"
    torch.manual_seed(SEED)
    model = LlamaForCausalLM(config).eval()
    seeded_init(model, SEED + 1, norm_center=1.0)
    model.save_pretrained(out, safe_serialization=True)
    legacy_rope = {k: v for k, v in rope.items() if k != "rope_theta"}
    add_legacy_config_keys(out / "config.json", {"rope_theta": 10000.0, "rope_scaling": legacy_rope})
    save_tokenizer(tok, out)
    GenerationConfig(bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id).save_pretrained(out)

    fx = logits_fixture(model, tok, tok.pad_token_id)
    save_file(fx, str(out / "expected.safetensors"), metadata={"model": "tiny-llama", "seed": str(SEED)})
    print(f"wrote tests/fixtures/tiny-llama/expected.safetensors ({(out / 'expected.safetensors').stat().st_size} bytes)")
    reloaded_tok = check_reload(out, fx, LlamaForCausalLM)
    if ids_of(reloaded_tok, CHATS[3]) != ids_of(tok, CHATS[3]):
        raise RuntimeError("tiny-llama tokenizer changed on reload")

    sc = score(model, reloaded_tok, CHATS)
    sens = sensitivity(
        LlamaForCausalLM,
        config,
        model.state_dict(),
        fx,
        {"no_rope_scaling": {"rope_parameters": {"rope_type": "default", "rope_theta": 10000.0}}},
    )
    sc["sensitivity_max_abs_logit_change"] = sens
    write_json(out / "score.json", sc)
    return tok


def make_tiny_gemma3(gemma_template):
    out = FIXTURES / "tiny-gemma3"
    out.mkdir(parents=True, exist_ok=True)
    tok = tiny_gemma_tokenizer(400, gemma_template)
    vocab = len(tok)
    layer_types = ["sliding_attention", "full_attention", "sliding_attention", "full_attention"]
    rope = {
        "full_attention": {"rope_type": "default", "rope_theta": 1_000_000.0},
        "sliding_attention": {"rope_type": "default", "rope_theta": 10_000.0},
    }
    config = Gemma3TextConfig(
        vocab_size=vocab,
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=4,
        num_attention_heads=4,
        num_key_value_heads=1,
        head_dim=16,
        hidden_activation="gelu_pytorch_tanh",
        max_position_embeddings=512,
        rms_norm_eps=1e-6,
        pad_token_id=tok.pad_token_id,
        eos_token_id=tok.eos_token_id,
        bos_token_id=tok.bos_token_id,
        tie_word_embeddings=True,
        rope_parameters=rope,
        query_pre_attn_scalar=24,
        sliding_window=4,
        layer_types=layer_types,
        final_logit_softcapping=30.0,
        # transformers' Gemma 3 attention never applies attn_logit_softcapping (real Gemma 3 configs set it
        # to null), so a non-null value here would be a trap for an implementation that honours it.
        attn_logit_softcapping=None,
    )
    config._attn_implementation = "eager"
    config.architectures = ["Gemma3ForCausalLM"]
    torch.manual_seed(SEED)
    model = Gemma3ForCausalLM(config).eval()
    # Gemma's RMSNorm scales by (1 + weight): stored weights around 0 keep the effective scale around 1,
    # except the q/k norms and the final norm, made larger so that query_pre_attn_scalar and the final
    # logit softcap change the logits well beyond test tolerances.
    seeded_init(model, SEED + 2, norm_center=0.0)
    with torch.no_grad():
        gen = torch.Generator().manual_seed(SEED + 3)
        for name, p in sorted(model.named_parameters(), key=lambda kv: kv[0]):
            if name.endswith("q_norm.weight") or name.endswith("k_norm.weight"):
                p.copy_(0.5 + 0.2 * torch.randn(p.shape, generator=gen))
            elif name == "model.norm.weight":
                p.copy_(1.0 + 0.2 * torch.randn(p.shape, generator=gen))
    model.save_pretrained(out, safe_serialization=True)
    add_legacy_config_keys(
        out / "config.json",
        {
            "rope_theta": 1_000_000.0,
            "rope_local_base_freq": 10_000.0,
            "sliding_window_pattern": 2,
            "_sliding_window_pattern": 2,
            "rope_scaling": None,
        },
    )
    save_tokenizer(tok, out)
    end_of_turn = tok.convert_tokens_to_ids("<end_of_turn>")
    GenerationConfig(
        bos_token_id=tok.bos_token_id, eos_token_id=[tok.eos_token_id, end_of_turn], pad_token_id=tok.pad_token_id
    ).save_pretrained(out)

    fx = logits_fixture(model, tok, tok.pad_token_id)
    save_file(fx, str(out / "expected.safetensors"), metadata={"model": "tiny-gemma3", "seed": str(SEED)})
    print(f"wrote tests/fixtures/tiny-gemma3/expected.safetensors ({(out / 'expected.safetensors').stat().st_size} bytes)")
    reloaded_tok = check_reload(out, fx, Gemma3ForCausalLM)
    if ids_of(reloaded_tok, CHATS[2]) != ids_of(tok, CHATS[2]):
        raise RuntimeError("tiny-gemma3 tokenizer changed on reload")

    sc = score(model, reloaded_tok, CHATS)
    sens = sensitivity(
        Gemma3ForCausalLM,
        config,
        model.state_dict(),
        fx,
        {
            "no_final_softcap": {"final_logit_softcapping": None},
            "query_pre_attn_scalar_eq_head_dim": {"query_pre_attn_scalar": 16},
            "no_sliding_window": {"sliding_window": 512},
            "single_rope_theta": {
                "rope_parameters": {
                    "full_attention": {"rope_type": "default", "rope_theta": 1_000_000.0},
                    "sliding_attention": {"rope_type": "default", "rope_theta": 1_000_000.0},
                }
            },
        },
    )
    sc["sensitivity_max_abs_logit_change"] = sens
    write_json(out / "score.json", sc)
    return tok


def make_tiny_qwen(name, model_cls, config, template):
    """A seeded tiny Qwen2/Qwen3 with a Qwen tokenizer: weights, logits, score.json (and think.json for Qwen3)."""
    out = FIXTURES / name
    out.mkdir(parents=True, exist_ok=True)
    tok = tiny_qwen_tokenizer(400, template)
    config.vocab_size = len(tok)
    config.pad_token_id = tok.pad_token_id
    config.eos_token_id = tok.eos_token_id
    config.bos_token_id = None
    config._attn_implementation = "eager"
    torch.manual_seed(SEED)
    model = model_cls(config).eval()
    # Biases (q/k/v in Qwen2) get the same seeded noise as the weights: they must matter.
    seeded_init(model, SEED + 4, norm_center=1.0)
    model.save_pretrained(out, safe_serialization=True)
    save_tokenizer_no_bos(tok, out)
    GenerationConfig(eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id).save_pretrained(out)

    fx = logits_fixture(model, tok, tok.pad_token_id)
    save_file(fx, str(out / "expected.safetensors"), metadata={"model": name, "seed": str(SEED)})
    print(f"wrote tests/fixtures/{name}/expected.safetensors ({(out / 'expected.safetensors').stat().st_size} bytes)")
    reloaded_tok = check_reload(out, fx, model_cls)
    if ids_of(reloaded_tok, CHATS[3]) != ids_of(tok, CHATS[3]):
        raise RuntimeError(f"{name} tokenizer changed on reload")
    sc = score(model, reloaded_tok, CHATS)
    variants = {"no_attention_biases": None} if model_cls is Qwen2ForCausalLM else {"no_qk_norm": None}
    sens = {}
    for variant in variants:
        state = {k: v.clone() for k, v in model.state_dict().items()}
        for k in state:
            if variant == "no_attention_biases" and k.endswith("_proj.bias"):
                state[k].zero_()
            if variant == "no_qk_norm" and (k.endswith("q_norm.weight") or k.endswith("k_norm.weight")):
                state[k].fill_(1.0)
        m = model_cls(config).eval()
        m.load_state_dict(state)
        with torch.no_grad():
            lg = m(input_ids=fx["input_ids"], attention_mask=fx["attention_mask"]).logits.float()
        sens[variant] = max_masked_diff(lg, fx["logits"], fx["attention_mask"])
    if config.use_sliding_window:
        sens.update(sensitivity(model_cls, config, model.state_dict(), fx, {"no_sliding_window": {"sliding_window": 512}}))
    sc["sensitivity_max_abs_logit_change"] = sens
    write_json(out / "score.json", sc)
    return reloaded_tok


def make_tiny_mistral(_gemma_template):
    out = FIXTURES / "tiny-mistral"
    out.mkdir(parents=True, exist_ok=True)
    tok = tiny_mistral_tokenizer(400, MISTRAL_V03_TEMPLATE)
    config = MistralConfig(
        vocab_size=len(tok),
        hidden_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        head_dim=16,
        intermediate_size=128,
        hidden_act="silu",
        rms_norm_eps=1e-5,
        rope_parameters={"rope_type": "default", "rope_theta": 1_000_000.0},
        max_position_embeddings=512,
        tie_word_embeddings=False,
        # Mistral 7B v0.1 slides every layer over 4096 tokens; 4 makes the window matter here.
        sliding_window=4,
        bos_token_id=tok.bos_token_id,
        eos_token_id=tok.eos_token_id,
        pad_token_id=tok.pad_token_id,
    )
    config._attn_implementation = "eager"
    config.architectures = ["MistralForCausalLM"]
    torch.manual_seed(SEED)
    model = MistralForCausalLM(config).eval()
    seeded_init(model, SEED + 6, norm_center=1.0)
    model.save_pretrained(out, safe_serialization=True)
    save_tokenizer(tok, out)
    GenerationConfig(
        bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id
    ).save_pretrained(out)
    fx = logits_fixture(model, tok, tok.pad_token_id)
    save_file(fx, str(out / "expected.safetensors"), metadata={"model": "tiny-mistral", "seed": str(SEED)})
    print(f"wrote tests/fixtures/tiny-mistral/expected.safetensors ({(out / 'expected.safetensors').stat().st_size} bytes)")
    reloaded_tok = check_reload(out, fx, MistralForCausalLM)
    if ids_of(reloaded_tok, CHATS[3]) != ids_of(tok, CHATS[3]):
        raise RuntimeError("tiny-mistral tokenizer changed on reload")
    sc = score(model, reloaded_tok, CHATS)
    sc["sensitivity_max_abs_logit_change"] = sensitivity(
        MistralForCausalLM, config, model.state_dict(), fx, {"no_sliding_window": {"sliding_window": None}}
    )
    write_json(out / "score.json", sc)


def make_tiny_gemma2(gemma_template):
    """A seeded tiny Gemma 2 with the tiny Gemma tokenizer (Gemma 3's template: Gemma 2's own refuses system turns)."""
    from transformers import Gemma2Config, Gemma2ForCausalLM

    out = FIXTURES / "tiny-gemma2"
    out.mkdir(parents=True, exist_ok=True)
    tok = tiny_gemma_tokenizer(400, gemma_template)
    config = Gemma2Config(
        vocab_size=len(tok),
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=4,
        num_attention_heads=4,
        num_key_value_heads=2,
        head_dim=16,
        hidden_activation="gelu_pytorch_tanh",
        max_position_embeddings=512,
        rms_norm_eps=1e-6,
        pad_token_id=tok.pad_token_id,
        eos_token_id=tok.eos_token_id,
        bos_token_id=tok.bos_token_id,
        tie_word_embeddings=True,
        rope_parameters={"rope_type": "default", "rope_theta": 10_000.0},
        query_pre_attn_scalar=24,
        sliding_window=4,
        final_logit_softcapping=30.0,
        # Real Gemma 2 caps at 50; 5 makes the cap move these small logits well beyond tolerances.
        attn_logit_softcapping=5.0,
    )
    config._attn_implementation = "eager"
    config.architectures = ["Gemma2ForCausalLM"]
    torch.manual_seed(SEED)
    model = Gemma2ForCausalLM(config).eval()
    seeded_init(model, SEED + 7, norm_center=0.0)
    with torch.no_grad():
        model.model.norm.weight.add_(1.0)
    model.save_pretrained(out, safe_serialization=True)
    save_tokenizer(tok, out)
    GenerationConfig(
        bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id
    ).save_pretrained(out)
    fx = logits_fixture(model, tok, tok.pad_token_id)
    save_file(fx, str(out / "expected.safetensors"), metadata={"model": "tiny-gemma2", "seed": str(SEED)})
    print(f"wrote tests/fixtures/tiny-gemma2/expected.safetensors ({(out / 'expected.safetensors').stat().st_size} bytes)")
    reloaded_tok = check_reload(out, fx, Gemma2ForCausalLM)
    if ids_of(reloaded_tok, CHATS[3]) != ids_of(tok, CHATS[3]):
        raise RuntimeError("tiny-gemma2 tokenizer changed on reload")
    sc = score(model, reloaded_tok, CHATS)
    sc["sensitivity_max_abs_logit_change"] = sensitivity(
        Gemma2ForCausalLM,
        config,
        model.state_dict(),
        fx,
        {
            "no_attn_softcap": {"attn_logit_softcapping": None},
            "no_final_softcap": {"final_logit_softcapping": None},
            "no_sliding_window": {"sliding_window": 512},
        },
    )
    write_json(out / "score.json", sc)


def make_tiny_gemma3_mm(_gemma_template):
    """tiny-gemma3's text model inside a Gemma3ForConditionalGeneration with a tiny seeded vision tower."""
    from transformers import Gemma3Config, Gemma3ForConditionalGeneration, SiglipVisionConfig

    src = FIXTURES / "tiny-gemma3"
    out = FIXTURES / "tiny-gemma3-mm"
    out.mkdir(parents=True, exist_ok=True)
    text = Gemma3ForCausalLM.from_pretrained(src, dtype=torch.float32, attn_implementation="eager").eval()
    text.config.final_logit_softcapping = None
    vision = SiglipVisionConfig(
        hidden_size=16, intermediate_size=32, num_hidden_layers=1, num_attention_heads=2, image_size=28, patch_size=14
    )
    # <mask> (id 4) never occurs in the test chats: the image and its boundary tokens point at it.
    mask_id = 4
    config = Gemma3Config(
        text_config=text.config.to_dict(),
        vision_config=vision.to_dict(),
        mm_tokens_per_image=4,
        image_token_index=mask_id,
        boi_token_index=mask_id,
        eoi_token_index=mask_id,
        tie_word_embeddings=True,
    )
    config.architectures = ["Gemma3ForConditionalGeneration"]
    config._attn_implementation = "eager"
    torch.manual_seed(SEED)
    model = Gemma3ForConditionalGeneration(config).eval()
    seeded_init(model, SEED + 5, norm_center=0.0)
    missing, unexpected = model.model.language_model.load_state_dict(text.model.state_dict(), strict=True)
    if missing or unexpected:
        raise RuntimeError(f"text tower: missing {missing}, unexpected {unexpected}")
    model.save_pretrained(out, safe_serialization=True)
    tok = AutoTokenizer.from_pretrained(src)
    save_tokenizer(tok, out)
    GenerationConfig.from_pretrained(src).save_pretrained(out)

    want = load_file_st(src / "expected.safetensors")
    with torch.no_grad():
        logits = model(input_ids=want["input_ids"], attention_mask=want["attention_mask"]).logits.float().contiguous()
        as_causal = text(input_ids=want["input_ids"], attention_mask=want["attention_mask"]).logits.float()
    d = max_masked_diff(logits, as_causal, want["attention_mask"])
    if d > 1e-5:
        raise RuntimeError(f"tiny-gemma3-mm: text logits differ from tiny-gemma3's by {d}")
    save_file(
        {"input_ids": want["input_ids"], "attention_mask": want["attention_mask"], "logits": logits},
        str(out / "expected.safetensors"),
        metadata={"model": "tiny-gemma3-mm", "seed": str(SEED), "max_abs_diff_to_tiny_gemma3": repr(d)},
    )
    print(f"wrote tests/fixtures/tiny-gemma3-mm (text logits {d:.1e} from tiny-gemma3's)")
    reloaded = Gemma3ForConditionalGeneration.from_pretrained(out, dtype=torch.float32, attn_implementation="eager").eval()
    with torch.no_grad():
        again = reloaded(input_ids=want["input_ids"], attention_mask=want["attention_mask"]).logits.float()
    if max_masked_diff(again, logits, want["attention_mask"]) != 0.0:
        raise RuntimeError("tiny-gemma3-mm changed on reload")


def load_file_st(path: Path):
    from safetensors.torch import load_file

    return load_file(str(path))


def save_tokenizer_no_bos(tok, out: Path):
    """save_tokenizer for a tokenizer without a BOS (Qwen's): the config must still carry the template and EOS."""
    (out / "special_tokens_map.json").unlink(missing_ok=True)
    tok.save_pretrained(out, save_jinja_files=False)
    cfg = json.loads((out / "tokenizer_config.json").read_text(encoding="utf-8"))
    stm = out / "special_tokens_map.json"
    if not stm.exists():
        stm.write_text(compact_json(dict(tok.special_tokens_map)) + "\n", encoding="utf-8")
    for key in ("chat_template", "eos_token"):
        if key not in cfg:
            raise RuntimeError(f"{out}/tokenizer_config.json lacks {key}")


def make_tiny_qwen2():
    config = Qwen2Config(
        hidden_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        intermediate_size=128,
        hidden_act="silu",
        rms_norm_eps=1e-6,
        rope_parameters={"rope_type": "default", "rope_theta": 1_000_000.0},
        max_position_embeddings=512,
        # Qwen2.5 up to 3B ties the head to the embeddings.
        tie_word_embeddings=True,
        use_sliding_window=False,
    )
    config.architectures = ["Qwen2ForCausalLM"]
    make_tiny_qwen("tiny-qwen2", Qwen2ForCausalLM, config, QWEN25_TEMPLATE)


def make_tiny_qwen3():
    config = Qwen3Config(
        hidden_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        # Not hidden / heads, as in the real Qwen3 (0.6B: hidden 1024, 16 heads of 128).
        head_dim=24,
        intermediate_size=128,
        hidden_act="silu",
        rms_norm_eps=1e-6,
        rope_parameters={"rope_type": "default", "rope_theta": 1_000_000.0},
        max_position_embeddings=512,
        tie_word_embeddings=False,
        attention_bias=False,
        # Real Qwen3 configs leave the window off; the fixture turns it on for layer 1 so the
        # windowed path of the family's decoder is compared with transformers too.
        use_sliding_window=True,
        sliding_window=4,
        max_window_layers=1,
    )
    config.architectures = ["Qwen3ForCausalLM"]
    tok = make_tiny_qwen("tiny-qwen3", Qwen3ForCausalLM, config, QWEN3_TEMPLATE)
    # Reasoning conversations: renderings and last-assistant targets (prefix rule) under transformers.
    cases = []
    for i, messages in enumerate(THINK_CHATS):
        k = last_assistant_index(messages)
        seq, targets, mismatches = target_spans(tok, messages, "last_assistant")
        cases.append(
            {
                "index": i,
                "k": k,
                "full_text": render(tok, messages),
                "prompt_text": render(tok, messages[:k], gen=True),
                "input_ids": seq,
                "target_positions": targets,
                "prefix_mismatches": mismatches,
            }
        )
    write_json(FIXTURES / "tiny-qwen3" / "think.json", {"template": "QWEN3_TEMPLATE", "cases": cases})


# ----------------------------------------------------------------------------- real models


def gemma_spm_from_gguf(path: Path):
    """A sentencepiece BPE model rebuilt from the GGUF's pieces/scores/types: the reference Gemma tokenizer."""
    import sentencepiece as spm
    from gguf import GGUFReader
    from sentencepiece import sentencepiece_model_pb2 as pb

    fields = GGUFReader(str(path)).fields
    toks = [bytes(fields["tokenizer.ggml.tokens"].parts[i]).decode("utf-8") for i in fields["tokenizer.ggml.tokens"].data]
    scores = [float(fields["tokenizer.ggml.scores"].parts[i][0]) for i in fields["tokenizer.ggml.scores"].data]
    types = [int(fields["tokenizer.ggml.token_type"].parts[i][0]) for i in fields["tokenizer.ggml.token_type"].data]
    m = pb.ModelProto()
    m.trainer_spec.model_type = pb.TrainerSpec.BPE
    m.trainer_spec.byte_fallback = True
    m.trainer_spec.vocab_size = len(toks)
    m.trainer_spec.unk_id, m.trainer_spec.bos_id, m.trainer_spec.eos_id, m.trainer_spec.pad_id = 3, 2, 1, 0
    m.normalizer_spec.name = "identity"
    m.normalizer_spec.add_dummy_prefix = False
    m.normalizer_spec.remove_extra_whitespaces = False
    m.normalizer_spec.escape_whitespaces = True
    for t, s, ty in zip(toks, scores, types):
        piece = m.pieces.add()
        # llama.cpp stores the whitespace-run pieces with real spaces; sentencepiece spells them with '▁'.
        piece.piece = t.replace(" ", "\u2581")
        piece.score = s
        piece.type = ty
    return spm.SentencePieceProcessor(model_proto=m.SerializeToString())


def pre_tokenizer_json(tok):
    pt = tok.backend_tokenizer.pre_tokenizer
    return json.loads(pt.__getstate__()) if pt is not None else None


def describe_backend(tok):
    full = json.loads(tok.backend_tokenizer.to_str())
    model = {k: v for k, v in full["model"].items() if k not in ("vocab", "merges")}
    return {
        "normalizer": full.get("normalizer"),
        "pre_tokenizer": full.get("pre_tokenizer"),
        "decoder": full.get("decoder"),
        "model": model,
        "merges": len(full["model"].get("merges", [])),
        "vocab": len(full["model"].get("vocab", {})),
    }


@torch.no_grad()
def greedy(model, tok, messages, stop_ids):
    """Argmax decoding with a KV cache and no stopping, then checked against one full forward pass."""
    prompt = ids_of(tok, messages, gen=True)
    out = model(input_ids=torch.tensor([prompt]), use_cache=True, logits_to_keep=1)
    generated = []
    for step in range(GREEDY_STEPS):
        nxt = int(out.logits[0, -1].argmax())
        generated.append(nxt)
        if step + 1 < GREEDY_STEPS:
            out = model(input_ids=torch.tensor([[nxt]]), past_key_values=out.past_key_values, use_cache=True)
    # The full forward over prompt + generated[:-1] must pick the same tokens; its margins tell a test
    # which steps are near-ties (where a float difference may legitimately flip the argmax).
    full = forward_logits(model, prompt + generated[:-1])[len(prompt) - 1 :]
    if full.argmax(-1).tolist() != generated:
        raise RuntimeError("KV-cache greedy disagrees with the full forward pass")
    top2 = torch.topk(full, 2, dim=-1).values
    margins = (top2[:, 0] - top2[:, 1]).tolist()
    hits = [i for i, t in enumerate(generated) if t in stop_ids]
    return {
        "messages": messages,
        "prompt_ids": prompt,
        "generated_ids": generated,
        "generated_text": tok.decode(generated, skip_special_tokens=False),
        "top1_top2_logit_margin": margins,
        "stop_token_in_generated": bool(hits),
        "first_stop_index": hits[0] if hits else None,
    }


def make_real(name, gguf_file, models_dir: Path, gemma_template):
    t0 = time.time()
    tok = AutoTokenizer.from_pretrained(str(models_dir), gguf_file=gguf_file)
    note = []
    converted_pre = pre_tokenizer_json(tok)
    if name == "smollm2":
        if tok.chat_template != CHATML_TEMPLATE:
            raise RuntimeError("SmolLM2 GGUF chat template differs from CHATML_TEMPLATE")
        template_source = "gguf tokenizer.chat_template"
        probe = ["a  1", "value:\n  7", "x   12 y"]
        before = [tok.encode(s, add_special_tokens=False) for s in probe]
        tok.backend_tokenizer.pre_tokenizer = SMOLLM2_PRE_TOKENIZER
        after = [tok.encode(s, add_special_tokens=False) for s in probe]
        changed = [{"text": s, "gguf_converted": b, "real": a} for s, b, a in zip(probe, before, after) if a != b]
        note.append(
            "transformers' GGUF converter ignores tokenizer.ggml.pre='smollm' and builds "
            f"pre_tokenizer={json.dumps(converted_pre)}; the real HF SmolLM2 tokenizer.json uses "
            "Sequence[Digits(individual_digits=true), ByteLevel(add_prefix_space=false, trim_offsets=true, "
            "use_regex=true)]. This script patches the backend pre_tokenizer to the real one and uses the "
            "patched tokenizer for every SmolLM2 fixture. Whitespace runs before digits tokenize differently."
        )
        note_examples = changed
        stop_ids = {tok.convert_tokens_to_ids("<|im_end|>"), tok.eos_token_id}
    else:
        if tok.chat_template:
            template_source = "gguf tokenizer.chat_template"
        else:
            tok.chat_template = gemma_template
            template_source = "src/data/templates/gemma.jinja (official Gemma 3 template; the GGUF has none)"
        sp = gemma_spm_from_gguf(models_dir / gguf_file)
        texts = list(ENCODE_STRINGS) + [m["content"] for c in CHATS + GREEDY_PROMPTS for m in c]
        texts = [t for t in texts if "<start_of_turn>" not in t and "<end_of_turn>" not in t]
        bad = [t for t in texts if sp.encode(t) != tok.encode(t, add_special_tokens=False)]
        if bad:
            raise RuntimeError(f"Gemma GGUF-converted tokenizer disagrees with sentencepiece on {bad!r}")
        note.append(
            "AutoTokenizer(gguf_file=) builds GemmaTokenizer: BPE(byte_fallback=true, fuse_unk=true), normalizer "
            "Replace(' ' -> '▁'), decoder Replace('▁'->' ')+ByteFallback+Fuse, pre_tokenizer "
            f"{json.dumps(converted_pre)} (a no-op: the normalizer has already replaced every ' '), no prefix "
            "space. The GGUF has no merges: transformers rebuilds them from the vocabulary ordered by token "
            "position, and respells the whitespace-run tokens (stored with real spaces in the GGUF) with '▁'. "
            f"Checked equal to a sentencepiece BPE model rebuilt from the GGUF pieces/scores/types on {len(texts)} "
            "texts (plain encodes and all message contents). No patch needed."
        )
        note_examples = []
        stop_ids = {tok.convert_tokens_to_ids("<end_of_turn>"), tok.eos_token_id}

    model = AutoModelForCausalLM.from_pretrained(
        str(models_dir), gguf_file=gguf_file, dtype=torch.float32, attn_implementation="eager"
    ).eval()
    print(f"  {name}: loaded in {time.time() - t0:.0f}s")
    cfg = model.config.to_dict()
    config_keys = [
        "model_type", "vocab_size", "hidden_size", "intermediate_size", "num_hidden_layers", "num_attention_heads",
        "num_key_value_heads", "head_dim", "rms_norm_eps", "rope_parameters", "max_position_embeddings",
        "tie_word_embeddings", "sliding_window", "layer_types", "query_pre_attn_scalar",
        "final_logit_softcapping", "attn_logit_softcapping", "hidden_act", "hidden_activation",
    ]

    template_ids = []
    for i, messages in enumerate(CHATS):
        k = last_assistant_index(messages)
        template_ids.append(
            {
                "index": i,
                "full_text": render(tok, messages),
                "full_ids": ids_of(tok, messages),
                "k": k,
                "prompt_text": render(tok, messages[:k], gen=True),
                "prompt_ids": ids_of(tok, messages[:k], gen=True),
            }
        )
        if len(template_ids[-1]["full_ids"]) >= 120:
            raise RuntimeError(f"chat {i} is {len(template_ids[-1]['full_ids'])} tokens for {name}")

    encode = [{"text": s, "ids": tok.encode(s, add_special_tokens=False)} for s in ENCODE_STRINGS]
    t1 = time.time()
    sc = score(model, tok, CHATS)
    print(f"  {name}: scored in {time.time() - t1:.0f}s")
    t1 = time.time()
    gr = [greedy(model, tok, p, stop_ids) for p in GREEDY_PROMPTS]
    print(f"  {name}: greedy in {time.time() - t1:.0f}s")

    expected = {
        "model_file": gguf_file,
        "tokenizer_note": " ".join(note),
        "tokenizer_note_examples": note_examples,
        "tokenizer_backend": describe_backend(tok),
        "chat_template_source": template_source,
        "chat_template": tok.chat_template,
        "bos_token": tok.bos_token,
        "bos_token_id": tok.bos_token_id,
        "eos_token": tok.eos_token,
        "eos_token_id": tok.eos_token_id,
        "pad_token": tok.pad_token,
        "pad_token_id": tok.pad_token_id,
        "stop_token_ids": sorted(stop_ids),
        "hf_config": {k: cfg.get(k) for k in config_keys if cfg.get(k) is not None},
        "template_ids": template_ids,
        "encode": encode,
        "score": sc,
        "greedy": gr,
    }
    write_json(FIXTURES / name / "expected.json", expected)
    return {"gguf": gguf_file, "sha256": sha256_file(models_dir / gguf_file), "bytes": (models_dir / gguf_file).stat().st_size}


def versions(model_files):
    import gguf
    import jinja2
    import safetensors
    import sentencepiece
    import tokenizers

    def ver(mod):
        return getattr(mod, "__version__", None) or _dist_version(mod.__name__)

    return {
        "python": platform.python_version(),
        "torch": torch.__version__,
        "transformers": transformers.__version__,
        "tokenizers": tokenizers.__version__,
        "safetensors": ver(safetensors),
        "gguf": ver(gguf),
        "sentencepiece": ver(sentencepiece),
        "numpy": np.__version__,
        "jinja2": jinja2.__version__,
        "seed": SEED,
        "models": model_files,
    }


def _dist_version(name):
    from importlib.metadata import version

    return version(name)


TINY_MAKERS = {
    "tiny-llama": make_tiny_llama,
    "tiny-gemma3": make_tiny_gemma3,
    "tiny-qwen2": lambda _gemma_template: make_tiny_qwen2(),
    "tiny-qwen3": lambda _gemma_template: make_tiny_qwen3(),
    "tiny-mistral": make_tiny_mistral,
    "tiny-gemma2": make_tiny_gemma2,
    # Reads tiny-gemma3 (made first in sorted order).
    "tiny-gemma3-mm": make_tiny_gemma3_mm,
}


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--models-dir", default="models", help="folder holding the two GGUF files (relative to repo root)")
    ap.add_argument("--skip-real", action="store_true", help="only chats.jsonl and the tiny models")
    ap.add_argument("--only", nargs="+", choices=sorted(TINY_MAKERS), help="only these tiny models (implies --skip-real)")
    args = ap.parse_args()
    models_dir = Path(args.models_dir)
    if not models_dir.is_absolute():
        models_dir = ROOT / models_dir

    torch.manual_seed(SEED)
    torch.set_num_threads(2)
    torch.use_deterministic_algorithms(True)
    transformers.logging.set_verbosity_error()
    t0 = time.time()

    FIXTURES.mkdir(parents=True, exist_ok=True)
    chats_path = FIXTURES / "chats.jsonl"
    chats_path.write_text(
        "".join(json.dumps({"messages": c}, ensure_ascii=False) + "\n" for c in CHATS), encoding="utf-8"
    )
    print(f"wrote {chats_path.relative_to(ROOT)}")
    think_path = FIXTURES / "chats-think.jsonl"
    think_path.write_text(
        "".join(json.dumps({"messages": c}, ensure_ascii=False) + "\n" for c in THINK_CHATS), encoding="utf-8"
    )
    print(f"wrote {think_path.relative_to(ROOT)}")
    gemma_template = GEMMA_TEMPLATE_PATH.read_text(encoding="utf-8")

    made = args.only or sorted(TINY_MAKERS)
    for name in made:
        TINY_MAKERS[name](gemma_template)
    versions_path = FIXTURES / "VERSIONS.json"
    recorded = json.loads(versions_path.read_text()) if versions_path.exists() else {}
    if not (args.skip_real or args.only):
        model_files = {
            "smollm2": make_real("smollm2", SMOLLM2_GGUF, models_dir, gemma_template),
            "gemma3": make_real("gemma3", GEMMA3_GGUF, models_dir, gemma_template),
        }
        recorded = {**versions(model_files), "tiny_models": recorded.get("tiny_models", {})}
    # Each tiny model keeps the versions it was made with: a run with --only updates its own.
    tiny = recorded.setdefault("tiny_models", {})
    for name in made:
        tiny[name] = {"transformers": transformers.__version__, "torch": torch.__version__}
    recorded["tiny_models"] = dict(sorted(tiny.items()))
    write_json(versions_path, recorded)
    print(f"done in {time.time() - t0:.0f}s")


if __name__ == "__main__":
    sys.exit(main())
