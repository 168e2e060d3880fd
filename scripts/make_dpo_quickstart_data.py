#!/usr/bin/env python3
"""Writes the DPO quickstart's preference pairs: data/quickstart/dpo-{train,valid}.jsonl.

Each conversation of data/quickstart/{train,valid}.jsonl becomes one pair (lora-train's dpo-openai
shape): the conversation before its last assistant turn is the prompt, the persona's reply
("Ahoy! ... — Captain Byte 🦀") is preferred, and the same answer without the persona's opening and
signature, what SmolLM2-135M-Instruct says in its own manner, stands in for the base model's reply
as the non-preferred one. Deterministic: no model, no network. Earlier assistant turns keep their
persona text; a "weight" on them is dropped (pairs have no per-turn weights).

Usage:
  scripts/make_dpo_quickstart_data.py            # (re)write the files
  scripts/make_dpo_quickstart_data.py --check    # exit 1 if the committed files differ
"""

import json
import sys
from pathlib import Path

DATA = Path(__file__).resolve().parent.parent / "data" / "quickstart"
OPENING = "Ahoy! "
SIGNATURE = "\n— Captain Byte 🦀"


def plain(reply: str) -> str:
    """The persona's reply without its opening and signature."""
    if not (reply.startswith(OPENING) and reply.endswith(SIGNATURE)):
        raise ValueError(f"not a persona reply: {reply!r}")
    return reply[len(OPENING) : -len(SIGNATURE)]


def pairs_of(path: Path) -> str:
    lines = []
    for raw in path.read_text(encoding="utf-8").splitlines():
        if not raw.strip():
            continue
        messages = json.loads(raw)["messages"]
        last = max(i for i, m in enumerate(messages) if m["role"] == "assistant")
        prompt = [{"role": m["role"], "content": m["content"]} for m in messages[:last]]
        reply = messages[last]["content"]
        pair = {
            "input": {"messages": prompt},
            "preferred_output": [{"role": "assistant", "content": reply}],
            "non_preferred_output": [{"role": "assistant", "content": plain(reply)}],
        }
        lines.append(json.dumps(pair, ensure_ascii=False))
    return "\n".join(lines) + "\n"


def main() -> int:
    check = "--check" in sys.argv[1:]
    stale = []
    for split in ["train", "valid"]:
        text = pairs_of(DATA / f"{split}.jsonl")
        out = DATA / f"dpo-{split}.jsonl"
        if check:
            if not out.exists() or out.read_text(encoding="utf-8") != text:
                stale.append(out)
        else:
            out.write_text(text, encoding="utf-8")
            print(f"wrote {out} ({text.count(chr(10))} pairs)")
    for out in stale:
        print(f"{out} differs from what this script writes", file=sys.stderr)
    return 1 if stale else 0


if __name__ == "__main__":
    sys.exit(main())
