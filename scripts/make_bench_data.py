"""Data for the memory benchmark (scripts/bench_memory.sh).

`make_bench_data.py data --seq 1024 --out bench-results/data` writes a deterministic train.jsonl
(OpenAI `messages` format): conversations of a short system turn, a user turn of ~0.88 x seq
words and an assistant reply of ~0.32 x seq words. With seq = 1024 that is ~1400 tokens per
conversation with either the SmolLM2 or the Gemma 3 tokenizer, the reply ~380 of them.
With data.max_seq_len = seq and loss_on = "last_assistant", lora-train cuts each conversation
from the left to exactly seq tokens and keeps the whole reply as the targets, so a micro-batch
of 4 is exactly 4 x seq tokens with no padding. (loss_on = "all" would not do: a conversation
whose targets start at its second token cannot be cut from the left, so it is dropped.)

`make_bench_data.py tokens --bin target/release/lora-train --model M.gguf --data train.jsonl
--out tokens.jsonl` writes each conversation's token ids and loss targets exactly as lora-train
renders and masks them (from `lora-train inspect`), so the PEFT side trains on the same tokens.
"""
import argparse
import json
import os
import random
import subprocess

WORDS = """the of and to in is that it for was on are as with his they at be this from have or by
one had not but what all were when we there can an your which their said if do will each about
how up out them then she many some so these would other into has more her two like him see time
could no make than first been its who now people my made over did down only way find use may
water long little very after words called just where most know get through back much before go
good new write our used me man too any day same right look think also around another came come
work three word must because does part even place well such here take why things help put years
different away again off went old number great tell men say small every found still between name
should home big give air line set own under read last never us left end along while might next
sound below saw something thought both few those always looked show large often together asked
house world going want school important until form food keep children feet land side without boy
once animals life enough took sometimes four head above kind began almost live page got earth need
far hand high year mother light parts country father let night following picture being study second
eyes soon times story boys since white days ever paper hard near sentence better best across during
today others however sure means knew try told young miles sun ways thing whole hear example heard
several change answer room sea against top turned learn point city play toward five using himself
usually river morning garden system machine memory value train model layer weight""".split()


def sentence(rng, lo, hi):
    words = [rng.choice(WORDS) for _ in range(rng.randint(lo, hi))]
    return " ".join(words).capitalize() + rng.choice([".", ".", ".", "?", "!"])


def paragraph(rng, n_words):
    out, count = [], 0
    while count < n_words:
        s = sentence(rng, 8, 18)
        out.append(s)
        count += len(s.split())
    return " ".join(out)


def conversation(rng, i, seq):
    return {"messages": [
        {"role": "system", "content": "You are a careful assistant that summarises long notes."},
        {"role": "user", "content": f"Notes, part {i + 1}:\n\n" + paragraph(rng, round(0.88 * seq))
            + "\n\nPlease rewrite these notes in your own words."},
        {"role": "assistant", "content": paragraph(rng, round(0.32 * seq))},
    ]}


def write_atomic(path, lines):
    os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
    with open(path + ".tmp", "w", encoding="utf-8") as f:
        for line in lines:
            f.write(json.dumps(line, ensure_ascii=False) + "\n")
    os.replace(path + ".tmp", path)


def cmd_data(a):
    rng = random.Random(4)
    path = os.path.join(a.out, "train.jsonl")
    write_atomic(path, [conversation(rng, i, a.seq) for i in range(a.count)])
    print(path)


def parse_inspect(text):
    """Token ids and target flags from `lora-train inspect` (`pos id [>] "piece"` lines)."""
    ids, targets, inside = [], [], False
    for line in text.splitlines():
        if line.startswith("=== tokens"):
            inside = True
        elif line.startswith("==="):
            inside = False
        elif inside and line[:6].strip().isdigit():
            ids.append(int(line[7:15]))
            targets.append(line[16] == ">")
    return {"input_ids": ids, "targets": targets}


def cmd_tokens(a):
    with open(a.data, encoding="utf-8") as f:
        n = sum(1 for line in f if line.strip())
    if a.count:
        n = min(n, a.count)
    rows = []
    for i in range(n):
        out = subprocess.run([a.bin, "inspect", "--model", a.model, "--data", a.data, "--index", str(i),
                              "--loss-on", "last_assistant"], capture_output=True, text=True, check=True)
        row = parse_inspect(out.stdout)
        if not row["input_ids"] or not any(row["targets"]):
            raise SystemExit(f"{a.data}: conversation {i}: no tokens or no targets in `lora-train inspect` output")
        rows.append(row)
    write_atomic(a.out, rows)
    print(f"{a.out}: {n} conversations, {min(len(r['input_ids']) for r in rows)}.."
          f"{max(len(r['input_ids']) for r in rows)} tokens")


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="cmd", required=True)
    d = sub.add_parser("data", help="write train.jsonl")
    d.add_argument("--seq", type=int, default=1024, help="the max_seq_len the data is sized for")
    d.add_argument("--count", type=int, default=16)
    d.add_argument("--out", default="bench-results/data")
    t = sub.add_parser("tokens", help="dump lora-train's tokenization for the PEFT side")
    t.add_argument("--bin", required=True)
    t.add_argument("--model", required=True)
    t.add_argument("--data", required=True)
    t.add_argument("--out", required=True)
    t.add_argument("--count", type=int, default=0, help="only the first N conversations (0: all)")
    a = p.parse_args()
    {"data": cmd_data, "tokens": cmd_tokens}[a.cmd](a)


if __name__ == "__main__":
    main()
