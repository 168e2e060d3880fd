"""Reference numbers for the evaluation statistics: writes tests/fixtures/eval/stats.json.

Plain Python, no dependencies: a seeded set of per-prompt games among four candidates, then
Bradley-Terry ratings by Hunter's MM iteration (ties half a win, FastChat's convention; a
different algorithm from the Newton fit in src/harness/stats/ratings.rs), each pair's win rate,
online Elo with K = 4, and the length-controlled win rate by plain gradient ascent on the
logistic log-likelihood. tests/it/harness_stats.rs compares ours with these to 1e-6.

    python3 scripts/make_eval_stats_fixtures.py
"""

import json
import math
import os
import random

K = 4
ANCHOR = 0
PROMPTS = 120
SEED = 20261202


def make_games():
    rng = random.Random(SEED)
    strength = [0.0, 0.6, -0.3, 0.2]
    games = []
    for prompt in range(PROMPTS):
        # Each prompt compares every candidate with the anchor, and 1 with 2.
        for first, second in [(1, 0), (2, 0), (3, 0), (1, 2)]:
            p = 1 / (1 + math.exp(strength[second] - strength[first]))
            u = rng.random()
            if u < 0.12:
                kind = "inconsistent"
            elif u < 0.2:
                kind = "tie"
            elif rng.random() < p:
                kind = "first_strong" if rng.random() < 0.3 else "first"
            else:
                kind = "second_strong" if rng.random() < 0.3 else "second"
            len_diff = rng.randint(-80, 80)
            games.append({"prompt": prompt, "first": first, "second": second,
                          "game": kind, "len_diff": len_diff})
    return games


def score(kind):
    return {"first": 1.0, "first_strong": 1.0, "second": 0.0, "second_strong": 0.0,
            "tie": 0.5, "inconsistent": 0.5}[kind]


def weight(kind, strong_weight):
    return strong_weight if kind.endswith("_strong") else 1.0


def bradley_terry_mm(games, strong_weight):
    w = [[0.0] * K for _ in range(K)]
    n = [[0.0] * K for _ in range(K)]
    for g in games:
        i, j, s = g["first"], g["second"], score(g["game"])
        wt = weight(g["game"], strong_weight)
        w[i][j] += wt * s
        w[j][i] += wt * (1 - s)
        n[i][j] += wt
        n[j][i] += wt
    p = [1.0] * K
    for _ in range(100000):
        new = []
        for i in range(K):
            wins = sum(w[i])
            denom = sum(n[i][j] / (p[i] + p[j]) for j in range(K) if j != i)
            new.append(wins / denom)
        new = [x / new[ANCHOR] for x in new]
        change = max(abs(math.log(a) - math.log(b)) for a, b in zip(new, p))
        p = new
        if change < 1e-15:
            break
    return [1000 + 400 * math.log10(x) for x in p]


def pair_win_rates(games, strong_weight):
    out = []
    for first, second in sorted({(g["first"], g["second"]) for g in games}):
        sel = [g for g in games if (g["first"], g["second"]) == (first, second)]
        wf = sum(weight(g["game"], strong_weight) for g in sel if g["game"].startswith("first"))
        ws = sum(weight(g["game"], strong_weight) for g in sel if g["game"].startswith("second"))
        ties = sum(1 for g in sel if g["game"] in ("tie", "inconsistent"))
        out.append({"first": first, "second": second,
                    "win_rate_first": (wf + ties / 2) / (wf + ws + ties)})
    return out


def online_elo(games, strong_weight):
    r = [1000.0] * K
    for g in games:
        i, j = g["first"], g["second"]
        for _ in range(int(weight(g["game"], strong_weight))):
            e = 1 / (1 + 10 ** ((r[j] - r[i]) / 400))
            d = 4 * (score(g["game"]) - e)
            r[i] += d
            r[j] -= d
    return r


def lc_win_rate(pairs):
    ds = [d for _, d in pairs]
    mean = sum(ds) / len(ds)
    sigma = math.sqrt(sum((d - mean) ** 2 for d in ds) / len(ds))
    xs = [math.tanh(d / sigma) for d in ds]
    ys = [s for s, _ in pairs]
    b0 = b1 = 0.0
    for _ in range(200000):
        g0 = g1 = 0.0
        for x, y in zip(xs, ys):
            p = 1 / (1 + math.exp(-(b0 + b1 * x)))
            g0 += y - p
            g1 += (y - p) * x
        b0 += 0.5 * g0 / len(xs)
        b1 += 0.5 * g1 / len(xs)
        if max(abs(g0), abs(g1)) < 1e-12:
            break
    return 1 / (1 + math.exp(-b0))


def main():
    games = make_games()
    out = {"candidates": K, "anchor": ANCHOR, "prompts": PROMPTS, "games": games, "by_weight": {}}
    for sw in (1, 3):
        out["by_weight"][str(sw)] = {
            "bradley_terry": bradley_terry_mm(games, sw),
            "win_rates": pair_win_rates(games, sw),
            "online_elo": online_elo(games, sw),
        }
    out["lc_win_rate_1_vs_0"] = lc_win_rate(
        [(score(g["game"]), g["len_diff"]) for g in games if (g["first"], g["second"]) == (1, 0)])
    path = os.path.join(os.path.dirname(__file__), "..", "tests", "fixtures", "eval", "stats.json")
    with open(path, "w") as f:
        json.dump(out, f, indent=1)
        f.write("\n")
    print(f"wrote {os.path.normpath(path)}")


if __name__ == "__main__":
    main()
