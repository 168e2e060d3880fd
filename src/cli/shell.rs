//! Quoting for the commands we print for the user to paste into a POSIX shell (`sh`, `bash`,
//! `zsh`): a word of plain characters as it is, anything else in single quotes, as Python's
//! `shlex.quote` does.

use std::borrow::Cow;

/// `word` as one shell word that the shell gives back unchanged.
pub fn quote(word: &str) -> Cow<'_, str> {
    let plain = |c: char| c.is_ascii_alphanumeric() || "@%+=:,./-_".contains(c);
    if !word.is_empty() && word.chars().all(plain) {
        return Cow::Borrowed(word);
    }
    // Inside single quotes nothing is special but the quote itself: end the quoted part,
    // write an escaped quote, and start a new quoted part.
    Cow::Owned(format!("'{}'", word.replace('\'', r"'\''")))
}

/// The words joined by spaces, each quoted.
pub fn join<'a>(words: impl IntoIterator<Item = &'a str>) -> String {
    words.into_iter().map(quote).collect::<Vec<_>>().join(" ")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn plain_words_stay_as_they_are() {
        assert_eq!(quote("train.lr=1e-4"), "train.lr=1e-4");
        assert_eq!(quote("runs/job-1.toml"), "runs/job-1.toml");
    }

    #[test]
    fn spaces_dollars_and_globs_are_single_quoted() {
        assert_eq!(quote("my job.toml"), "'my job.toml'");
        assert_eq!(quote("output.dir=$HOME/x"), "'output.dir=$HOME/x'");
        assert_eq!(quote("a*b"), "'a*b'");
        assert_eq!(quote("a`b`\\c\"d"), "'a`b`\\c\"d'");
    }

    #[test]
    fn single_quotes_are_escaped_and_the_empty_word_survives() {
        assert_eq!(quote("it's"), r"'it'\''s'");
        assert_eq!(quote("'"), r"''\'''");
        assert_eq!(quote(""), "''");
    }

    #[test]
    fn join_quotes_each_word() {
        assert_eq!(
            join(["lora-train", "--set", "report.starts_with=Oui, bien"]),
            "lora-train --set 'report.starts_with=Oui, bien'"
        );
    }

    #[test]
    fn the_shell_reads_back_each_word() {
        let words = ["", "a b", "it's", "$x", "\"q\"", "\\", "new\nline", "é"];
        let Ok(out) = std::process::Command::new("sh")
            .arg("-c")
            .arg(format!("printf '%s\\0' {}", join(words)))
            .output()
        else {
            return; // no POSIX shell here
        };
        let text = String::from_utf8(out.stdout).unwrap();
        let back: Vec<&str> = text.split_terminator('\0').collect();
        assert_eq!(back, words);
    }
}
