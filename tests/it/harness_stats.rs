//! The evaluation statistics against `scripts/make_eval_stats_fixtures.py`: Bradley-Terry over
//! four candidates (fitted there by a different algorithm), each pair's win rate, online Elo and
//! the length-controlled win rate, with strong verdicts weighing one and three games.

use crate::common;

use lora_train::harness::stats::{
    bradley_terry, bradley_terry_ci, lc_win_rate, online_elo, Game, PairTally, RatedGame,
};
use serde_json::Value;

fn game(kind: &str) -> Game {
    match kind {
        "first" => Game::First { strong: false },
        "first_strong" => Game::First { strong: true },
        "second" => Game::Second { strong: false },
        "second_strong" => Game::Second { strong: true },
        "tie" => Game::Tie,
        "inconsistent" => Game::Inconsistent,
        other => panic!("unknown game {other}"),
    }
}

fn fixture() -> (Value, Vec<RatedGame>, Vec<f64>) {
    let fx = common::read_json(&common::fixtures().join("eval/stats.json"));
    let mut games = Vec::new();
    let mut len_diff = Vec::new();
    for g in fx["games"].as_array().unwrap() {
        let idx = |k: &str| g[k].as_u64().unwrap() as usize;
        games.push(RatedGame {
            prompt: idx("prompt"),
            first: idx("first"),
            second: idx("second"),
            game: game(g["game"].as_str().unwrap()),
        });
        len_diff.push(g["len_diff"].as_f64().unwrap());
    }
    (fx, games, len_diff)
}

fn close(got: f64, want: &Value, what: &str) {
    let want = want.as_f64().unwrap();
    assert!(
        (got - want).abs() < 1e-6,
        "{what}: ours {got}, reference {want}"
    );
}

#[test]
fn four_candidates_match_the_reference_fit_win_rates_and_elo() {
    let (fx, games, _) = fixture();
    let k = fx["candidates"].as_u64().unwrap() as usize;
    let anchor = fx["anchor"].as_u64().unwrap() as usize;
    for weight in [1u32, 3] {
        let want = &fx["by_weight"][weight.to_string()];
        let ours = bradley_terry(k, &games, anchor, weight);
        for (i, r) in ours.iter().enumerate() {
            close(
                r.unwrap(),
                &want["bradley_terry"][i],
                &format!("BT {i}, weight {weight}"),
            );
        }
        let elo = online_elo(k, &games, weight);
        for (i, r) in elo.iter().enumerate() {
            close(
                *r,
                &want["online_elo"][i],
                &format!("Elo {i}, weight {weight}"),
            );
        }
        for pair in want["win_rates"].as_array().unwrap() {
            let (a, b) = (
                pair["first"].as_u64().unwrap() as usize,
                pair["second"].as_u64().unwrap() as usize,
            );
            let pair_games: Vec<Game> = games
                .iter()
                .filter(|g| (g.first, g.second) == (a, b))
                .map(|g| g.game)
                .collect();
            let tally = PairTally::of(&pair_games, weight);
            assert_eq!(tally.n(), pair_games.len());
            close(
                tally.win_rate_first().unwrap(),
                &pair["win_rate_first"],
                &format!("{a} vs {b}"),
            );
        }
    }
}

#[test]
fn the_length_controlled_win_rate_matches_the_reference() {
    let (fx, games, len_diff) = fixture();
    let pairs: Vec<(f64, f64)> = games
        .iter()
        .zip(&len_diff)
        .filter(|(g, _)| (g.first, g.second) == (1, 0))
        .map(|(g, d)| (g.game.score_first(), *d))
        .collect();
    close(
        lc_win_rate(&pairs).unwrap(),
        &fx["lc_win_rate_1_vs_0"],
        "LC win rate",
    );
}

#[test]
fn rating_intervals_are_seeded_and_rank_by_overlap() {
    let (fx, games, _) = fixture();
    let k = fx["candidates"].as_u64().unwrap() as usize;
    let n = fx["prompts"].as_u64().unwrap() as usize;
    let a = bradley_terry_ci(k, &games, 0, 1, n, 200, 5);
    assert_eq!(a, bradley_terry_ci(k, &games, 0, 1, n, 200, 5));
    for r in &a {
        let [lo, hi] = r.ci95.unwrap();
        assert!(lo <= r.rating.unwrap() && r.rating.unwrap() <= hi, "{r:?}");
        assert!(!r.unbounded);
    }
    // The anchor's rating is fixed at 1000 in every round, so its interval is a point.
    assert_eq!(a[0].ci95, Some([1000.0, 1000.0]));
    // Candidate 1 (the strongest) ranks first; a rank counts only intervals wholly above.
    assert_eq!(a[1].rank, 1);
    for (i, r) in a.iter().enumerate() {
        let above = (0..k)
            .filter(|&j| j != i && a[j].ci95.unwrap()[0] > r.ci95.unwrap()[1])
            .count();
        assert_eq!(r.rank, 1 + above);
    }
}
