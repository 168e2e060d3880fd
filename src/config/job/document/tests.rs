//! The document's spans, lines and `--set` addressing on nested tables.

use super::super::schema::{job_section, Section};
use super::*;
use serde::Deserialize;

job_section! {
    /// A check of a test schema, as `[[eval.check]]` will be.
    pub struct TestCheck {
        pub kind: String,
        pub weight: f64 = 1.0,
    }
}

job_section! {
    pub struct TestJudge {
        pub model: String = String::new(),
    }
}

job_section! {
    pub struct TestEval {
        pub judge: TestJudge = TestJudge::default(),
        pub check: Vec<TestCheck> = Vec::new(),
    }
}

job_section! {
    pub struct TestRoot {
        pub eval: TestEval = TestEval::default(),
    }
}

const TEXT: &str = "[eval.judge]\nmodel = \"a\"\n\n[[eval.check]]\nkind = \"x\"\n\n[[eval.check]]\nkind = \"y\"\nweight = \"heavy\"\n";

fn doc(text: &str) -> Document<'static> {
    Document::parse(text, Path::new("job.toml"), TestRoot::KEYS).unwrap()
}

#[test]
fn set_addresses_nested_tables_and_arrays_of_tables() {
    let mut d = doc("");
    d.apply_override("eval.judge.model=m").unwrap();
    d.apply_override("eval.check.0.kind=contains").unwrap();
    d.apply_override("eval.check.1.kind=length").unwrap();
    d.apply_override("eval.check.1.weight=2").unwrap();
    d.check_keys().unwrap();
    let root = TestRoot::deserialize(toml::Value::Table(d.table.clone())).unwrap();
    assert_eq!(root.eval.judge.model, "m");
    let kinds: Vec<&str> = root.eval.check.iter().map(|c| c.kind.as_str()).collect();
    assert_eq!(kinds, ["contains", "length"]);
    assert_eq!(root.eval.check[1].weight, 2.0);
    let written: Vec<String> = d.written().into_iter().collect();
    assert_eq!(written, ["eval.check", "eval.judge.model"]);
}

#[test]
fn set_refuses_what_it_cannot_address_with_a_clear_message() {
    let mut d = doc("");
    let msg = |r: Result<()>| r.unwrap_err().to_string();
    let gap = msg(d.apply_override("eval.check.2.kind=x"));
    assert!(gap.contains("`eval.check` has 0 entries"), "{gap}");
    let no_index = msg(d.apply_override("eval.check.kind=x"));
    assert!(
        no_index.contains("address a key of one by its index"),
        "{no_index}"
    );
    let typo = msg(d.apply_override("eval.judge.modle=x"));
    assert!(
        typo.contains("unknown key `eval.judge.modle` (did you mean `eval.judge.model`?)"),
        "{typo}"
    );
    let typo = msg(d.apply_override("eval.check.0.knd=x"));
    assert!(typo.contains("unknown key `eval.check.0.knd`"), "{typo}");
}

#[test]
fn errors_in_nested_tables_name_their_line() {
    let d = doc(TEXT);
    let msg = d.check_keys().unwrap_err().to_string();
    assert_eq!(
        msg,
        "job.toml:9: `eval.check.1.weight`: expected a number, found string \"heavy\""
    );
    let d = doc("[[eval.check]]\nweight = 2\n");
    let msg = d.check_keys().unwrap_err().to_string();
    assert_eq!(msg, "job.toml:1: missing key `eval.check.0.kind`");
}
