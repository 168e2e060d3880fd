//! Did-you-mean for the job file: unknown tables, keys and values get the nearest valid name,
//! as cargo and clap do, and the names other tools use for our keys (transformers, PEFT,
//! axolotl) lead to ours, so `learning_rate` still finds `train.lr`.

use super::schema::{all_names, Key};

/// Names other tools use for our keys.
pub const KEY_ALIASES: &[(&str, &str)] = &[
    ("model_name_or_path", "model.source"),
    ("model", "model.source"),
    ("model_id", "model.source"),
    ("path", "model.source"),
    ("torch_dtype", "model.dtype"),
    ("precision", "model.dtype"),
    ("rank", "lora.r"),
    ("lora_r", "lora.r"),
    ("lora_rank", "lora.r"),
    ("lora_alpha", "lora.alpha"),
    ("lora_dropout", "lora.dropout"),
    ("targets", "lora.target_modules"),
    ("lora_target_modules", "lora.target_modules"),
    ("rslora", "lora.use_rslora"),
    ("adapter", "lora.init_adapter"),
    ("train_file", "data.train"),
    ("train_path", "data.train"),
    ("valid", "data.validation"),
    ("val", "data.validation"),
    ("validation_file", "data.validation"),
    ("eval_file", "data.validation"),
    ("val_set_size", "data.validation"),
    ("max_length", "data.max_seq_len"),
    ("max_seq_length", "data.max_seq_len"),
    ("sequence_len", "data.max_seq_len"),
    ("seq_len", "data.max_seq_len"),
    ("cutoff_len", "data.max_seq_len"),
    ("num_train_epochs", "train.epochs"),
    ("num_epochs", "train.epochs"),
    ("steps", "train.max_steps"),
    ("num_steps", "train.max_steps"),
    ("total_steps", "train.max_steps"),
    ("batch_size", "train.micro_batch_size"),
    ("per_device_train_batch_size", "train.micro_batch_size"),
    ("gradient_accumulation_steps", "train.grad_accum"),
    ("gradient_accumulation", "train.grad_accum"),
    ("learning_rate", "train.lr"),
    ("lr_scheduler_type", "train.scheduler"),
    ("lr_scheduler", "train.scheduler"),
    ("warmup", "train.warmup_steps"),
    ("min_lr", "train.min_lr_ratio"),
    ("clip_grad_norm", "train.max_grad_norm"),
    ("eval_steps", "train.eval_every"),
    ("save_steps", "train.save_every"),
    ("save_total_limit", "train.keep_last"),
    ("output_dir", "output.dir"),
    ("out_dir", "output.dir"),
    ("path", "output.dir"),
];

/// Names other tools use for our tables.
pub const SECTION_ALIASES: &[(&str, &str)] = &[
    ("models", "model"),
    ("adapter", "lora"),
    ("peft", "lora"),
    ("dataset", "data"),
    ("datasets", "data"),
    ("training", "train"),
    ("trainer", "train"),
    ("optimizer", "train"),
    ("outputs", "output"),
    ("out", "output"),
];

/// "unknown section `x`", with the nearest table of `root` or the list of them.
pub fn unknown_section_msg(root: &[Key], name: &str) -> String {
    let names = root.iter().map(|k| (k.name, k.name));
    match nearest(name, names.chain(SECTION_ALIASES.iter().copied())) {
        Some(best) => format!("unknown section `{name}` (did you mean `{best}`?)"),
        None => {
            let known: Vec<&str> = root.iter().map(|k| k.name).collect();
            format!(
                "unknown section `{name}` (valid sections: {})",
                known.join(", ")
            )
        }
    }
}

/// "unknown key `table.x`" in the table at `table` (a dotted path) whose keys are `keys`.
pub fn unknown_key_msg(root: &[Key], table: &str, keys: &[Key], name: &str) -> String {
    match nearest_key(root, Some(table), name) {
        Some(best) => format!("unknown key `{table}.{name}` (did you mean `{best}`?)"),
        None => {
            let valid: Vec<&str> = keys.iter().map(|k| k.name).collect();
            format!(
                "unknown key `{table}.{name}` (valid keys in [{table}]: {})",
                valid.join(", ")
            )
        }
    }
}

/// The full name nearest to `key`: keys and aliases of the table `table` first, then an exact
/// or close name from another table (a key written in the wrong table). Tables at the root are
/// not candidates (a `[section]` is suggested by [`unknown_section_msg`]).
pub fn nearest_key(root: &[Key], table: Option<&str>, key: &str) -> Option<String> {
    let key = normalize(key);
    let mut best: Option<(usize, String)> = None;
    // A key of the table written in beats one of a table inside it (`eval.limit` is nearer
    // `eval.data.limit` than `report.limit`), which beats one elsewhere.
    let place = |parent: &str| match table {
        Some(t) if parent == t => 0,
        Some(t)
            if parent
                .strip_prefix(t)
                .is_some_and(|rest| rest.starts_with('.')) =>
        {
            1
        }
        _ => 2,
    };
    let mut consider = |name: &str, full: String, place: usize| {
        let dist = edit_distance(&key, name);
        if dist > max_typos(&key) {
            return;
        }
        let score = 4 * dist + place;
        if best.as_ref().is_none_or(|(s, _)| score < *s) {
            best = Some((score, full));
        }
    };
    let mut names = Vec::new();
    all_names(root, "", &mut names);
    for (full, name) in names {
        let Some((parent, _)) = full.rsplit_once('.') else {
            continue;
        };
        consider(name, full.clone(), place(parent));
    }
    for (alias, full) in KEY_ALIASES {
        consider(
            alias,
            full.to_string(),
            place(full.rsplit_once('.').map_or("", |(p, _)| p)),
        );
    }
    best.map(|(_, full)| full)
}

/// The candidate (compared by its first element, reported by its second) nearest to `word`.
pub fn nearest<'c>(
    word: &str,
    candidates: impl Iterator<Item = (&'c str, &'c str)>,
) -> Option<&'c str> {
    let word = normalize(word);
    candidates
        .map(|(name, report)| (edit_distance(&word, name), report))
        .filter(|(dist, _)| *dist <= max_typos(&word))
        .min_by_key(|(dist, _)| *dist)
        .map(|(_, report)| report)
}

fn normalize(word: &str) -> String {
    word.trim().to_lowercase().replace('-', "_")
}

/// How many edits still count as a misspelling rather than another word.
fn max_typos(word: &str) -> usize {
    (word.chars().count() / 3).max(2)
}

/// Levenshtein distance over chars.
fn edit_distance(a: &str, b: &str) -> usize {
    let b: Vec<char> = b.chars().collect();
    let mut prev: Vec<usize> = (0..=b.len()).collect();
    let mut cur = vec![0; b.len() + 1];
    for (i, ca) in a.chars().enumerate() {
        cur[0] = i + 1;
        for (j, cb) in b.iter().enumerate() {
            let subst = prev[j] + usize::from(ca != *cb);
            cur[j + 1] = subst.min(prev[j + 1] + 1).min(cur[j] + 1);
        }
        std::mem::swap(&mut prev, &mut cur);
    }
    prev[b.len()]
}

#[cfg(test)]
mod tests {
    use super::super::schema::{find, Section};
    use super::super::JobConfig;
    use super::*;

    #[test]
    fn edit_distance_counts_single_edits() {
        assert_eq!(edit_distance("lerning_rate", "learning_rate"), 1);
        assert_eq!(edit_distance("", "abc"), 3);
        assert_eq!(edit_distance("kitten", "sitting"), 3);
    }

    #[test]
    fn every_alias_leads_to_a_key_of_the_schema() {
        for (alias, full) in KEY_ALIASES {
            let path: Vec<&str> = full.split('.').collect();
            assert!(find(JobConfig::KEYS, &path).is_some(), "{alias} -> {full}");
        }
        for (alias, table) in SECTION_ALIASES {
            assert!(
                find(JobConfig::KEYS, &[table]).is_some(),
                "{alias} -> {table}"
            );
        }
    }
}
