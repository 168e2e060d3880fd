//! The judge against a loopback judge server with a known preference (more "good" than "bad"
//! in a reply wins, by two or more: strongly) and a known position bias (a tie goes to the
//! reply shown as A): games from both orders, inconsistent ties, the follow-up on a reply that
//! does not parse, judge errors, fallback on 529, the cache on a re-run, and rubric scores.

use crate::providers_support;

use lora_train::harness::judge::{default_traits, Judge};
use lora_train::harness::stats::{Game, PairTally};
use lora_train::harness::verdict::Verdict;
use lora_train::providers::{
    build_chat_client, ChatMessage, ChatProviderConfig, ChatProviderKind, Env,
};
use providers_support::{completion, MockServer, Recorded, Reply};

fn env() -> Env {
    Env::from_pairs([("OPENAI_API_KEY", "sk-judge-test")])
}

fn config(server: &MockServer, name: &str) -> ChatProviderConfig {
    let mut cfg = ChatProviderConfig::new(ChatProviderKind::OpenAi, "judge-model");
    cfg.base_url = Some(format!("{}/v1", server.url()));
    cfg.name = Some(name.into());
    cfg.initial_backoff_ms = Some(1);
    cfg.max_backoff_ms = Some(5);
    cfg.max_retries = Some(0);
    cfg.timeout_secs = Some(5.0);
    cfg
}

fn between<'a>(text: &'a str, open: &str, close: &str) -> Option<&'a str> {
    let start = text.find(open)? + open.len();
    let end = text[start..].find(close)? + start;
    Some(text[start..end].trim())
}

fn quality(reply: &str) -> i64 {
    reply.matches("good").count() as i64 - reply.matches("bad").count() as i64
}

/// The mock judge. "unparseable" replies never get a verdict; "shy" ones only on the follow-up.
pub fn judge_reply(req: &Recorded) -> Reply {
    let body = req.json();
    let messages = body["messages"].as_array().cloned().unwrap_or_default();
    let prompt = messages[0]["content"].as_str().unwrap_or("").to_string();
    let follow_up = messages.len() > 1;
    if let (Some(a), Some(b)) = (
        between(&prompt, "<response_a>", "</response_a>"),
        between(&prompt, "<response_b>", "</response_b>"),
    ) {
        if a.contains("unparseable") || b.contains("unparseable") {
            return Reply::json(200, completion("Both are fine, I think.", 50, 6));
        }
        if (a.contains("shy") || b.contains("shy")) && !follow_up {
            return Reply::json(200, completion("A is a little better.", 50, 6));
        }
        let d = quality(a) - quality(b);
        let label = match d {
            2.. => "A>>B",
            1 => "A>B",
            -1 => "B>A",
            ..=-2 => "B>>A",
            0 => "A>B", // the position bias
        };
        let text = format!("Comparing the two.\n{{\"verdict\": \"{label}\"}}");
        return Reply::json(200, completion(&text, 50, 12));
    }
    if let Some(reply) = between(&prompt, "<response>", "</response>") {
        let score = if reply.contains("good") { 5 } else { 2 };
        let traits: Vec<String> = prompt
            .lines()
            .filter_map(|l| l.strip_prefix("- ")?.split(':').next().map(str::to_string))
            .collect();
        let scores: serde_json::Map<String, serde_json::Value> =
            traits.into_iter().map(|t| (t, score.into())).collect();
        let text = format!("Scores.\n{}", serde_json::json!({ "scores": scores }));
        return Reply::json(200, completion(&text, 40, 10));
    }
    Reply::openai_error(400, "invalid_request_error", None, "not a judge prompt")
}

fn judge(configs: &[ChatProviderConfig]) -> Judge {
    let client = build_chat_client(configs, &env()).unwrap();
    Judge::new(client, None, None, default_traits()).unwrap()
}

fn prompt() -> Vec<ChatMessage> {
    vec![ChatMessage::user("Write a haiku about rust.")]
}

#[test]
fn both_orders_make_one_game_and_a_biased_tie_is_inconsistent() {
    let server = MockServer::start(judge_reply);
    let j = judge(&[config(&server, "judge")]);
    let strong = j.compare(&prompt(), "good good", "bad");
    assert_eq!(strong.first_as_a, Some(Verdict::MuchBetterA));
    assert_eq!(strong.first_as_b, Some(Verdict::MuchBetterB));
    assert_eq!(strong.game(), Some(Game::First { strong: true }));
    let weak = j.compare(&prompt(), "", "good");
    assert_eq!(weak.game(), Some(Game::Second { strong: false }));
    // Equal replies: the judge prefers whichever it sees as A, so the orders disagree.
    let biased = j.compare(&prompt(), "good", "good");
    assert_eq!(biased.game(), Some(Game::Inconsistent));
    assert_eq!(server.requests().len(), 6);

    // Over a set with a known answer: 3 wins, 1 loss, 2 inconsistent ties.
    let pairs = [
        ("good", "bad"),
        ("good good", "bad"),
        ("good", ""),
        ("bad", "good"),
        ("x", "y"),
        ("good", "good"),
    ];
    let games: Vec<Game> = pairs
        .iter()
        .map(|(a, b)| j.compare(&prompt(), a, b).game().unwrap())
        .collect();
    let t = PairTally::of(&games, 1);
    assert_eq!(
        (t.wins_first, t.wins_second, t.ties, t.inconsistent),
        (3, 1, 2, 2)
    );
    assert_eq!(t.n(), pairs.len());
    assert!((t.win_rate_first().unwrap() - 4.0 / 6.0).abs() < 1e-12);
}

#[test]
fn a_reply_without_a_verdict_is_asked_again_then_counted_as_an_error() {
    let server = MockServer::start(judge_reply);
    let j = judge(&[config(&server, "judge")]);
    let shy = j.compare(&prompt(), "shy good", "");
    assert_eq!(shy.game(), Some(Game::First { strong: false }));
    assert_eq!(shy.calls[0].requests, 2);
    assert!(shy.calls[0].error.is_none());
    let follow_up = &server.requests()[1].json()["messages"];
    assert_eq!(follow_up.as_array().unwrap().len(), 3, "{follow_up}");

    let before = server.requests().len();
    let broken = j.compare(&prompt(), "unparseable", "bad");
    assert_eq!(broken.game(), None);
    for call in &broken.calls {
        assert_eq!(call.requests, 2);
        assert!(
            call.error.as_deref().unwrap().contains("no verdict"),
            "{call:?}"
        );
    }
    assert_eq!(server.requests().len() - before, 4);
}

#[test]
fn the_second_judge_answers_when_the_first_is_overloaded() {
    let down =
        MockServer::start(|_| Reply::openai_error(529, "overloaded_error", None, "Overloaded"));
    let up = MockServer::start(judge_reply);
    let j = judge(&[config(&down, "primary"), config(&up, "backup")]);
    let got = j.compare(&prompt(), "good", "");
    assert_eq!(got.game(), Some(Game::First { strong: false }));
    for call in &got.calls {
        assert_eq!(call.provider.as_deref(), Some("backup"));
        assert_eq!(call.failed_attempts.len(), 1);
        assert_eq!(call.failed_attempts[0].provider, "primary");
        assert!(call.failed_attempts[0].error.contains("529"), "{call:?}");
    }
    assert_eq!(down.requests().len(), 2);
}

#[test]
fn a_rerun_over_the_same_cache_makes_no_new_judge_call() {
    let server = MockServer::start(judge_reply);
    let cache = tempfile::tempdir().unwrap();
    let mut cfg = config(&server, "judge");
    cfg.cache_dir = Some(cache.path().to_path_buf());
    let first = judge(std::slice::from_ref(&cfg)).compare(&prompt(), "good", "bad");
    assert_eq!(server.requests().len(), 2);
    let again = judge(&[cfg]).compare(&prompt(), "good", "bad");
    assert_eq!(server.requests().len(), 2, "the re-run called the judge");
    assert_eq!(again.game(), first.game());
    assert_eq!(again.calls.iter().map(|c| c.cached).sum::<u32>(), 2);
    assert_eq!(
        again.calls[0].input_tokens, 0,
        "a cached call costs nothing"
    );
}

#[test]
fn rubric_scores_every_trait() {
    let server = MockServer::start(judge_reply);
    let j = judge(&[config(&server, "judge")]);
    let good = j.rate(&prompt(), "a good reply");
    assert_eq!(good.scores.len(), 5);
    assert!(good.scores.values().all(|s| *s == Ok(5)), "{good:?}");
    let poor = j.rate(&prompt(), "meh");
    assert!(poor.scores.values().all(|s| *s == Ok(2)), "{poor:?}");
    assert_eq!(server.requests().len(), 2);
}
