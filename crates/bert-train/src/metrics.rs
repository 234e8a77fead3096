//! Evaluation metrics: accuracy, macro/micro F1, Matthews correlation, Pearson and Spearman;
//! entity-level precision/recall/F1 with seqeval's chunking rules; SQuAD exact match and F1 with
//! the official answer normalisation.

use std::collections::HashMap;

/// Share of equal pairs.
pub fn accuracy(pred: &[usize], gold: &[usize]) -> f64 {
    if gold.is_empty() {
        return 0.0;
    }
    pred.iter().zip(gold).filter(|(p, g)| p == g).count() as f64 / gold.len() as f64
}

fn confusion(pred: &[usize], gold: &[usize], class: usize) -> (f64, f64, f64) {
    let mut tp = 0.0;
    let mut fp = 0.0;
    let mut fn_ = 0.0;
    for (&p, &g) in pred.iter().zip(gold) {
        match (p == class, g == class) {
            (true, true) => tp += 1.0,
            (true, false) => fp += 1.0,
            (false, true) => fn_ += 1.0,
            _ => {}
        }
    }
    (tp, fp, fn_)
}

fn f1(tp: f64, fp: f64, fn_: f64) -> f64 {
    if tp == 0.0 {
        return 0.0;
    }
    2.0 * tp / (2.0 * tp + fp + fn_)
}

/// Unweighted mean of per-class F1 over `num_classes` classes.
pub fn macro_f1(pred: &[usize], gold: &[usize], num_classes: usize) -> f64 {
    if num_classes == 0 {
        return 0.0;
    }
    (0..num_classes)
        .map(|c| {
            let (tp, fp, fn_) = confusion(pred, gold, c);
            f1(tp, fp, fn_)
        })
        .sum::<f64>()
        / num_classes as f64
}

/// F1 of the positive class (1) of a binary task, as GLUE reports it for MRPC/QQP.
pub fn binary_f1(pred: &[usize], gold: &[usize]) -> f64 {
    let (tp, fp, fn_) = confusion(pred, gold, 1);
    f1(tp, fp, fn_)
}

/// Matthews correlation coefficient (multi-class form, as scikit-learn).
pub fn matthews(pred: &[usize], gold: &[usize], num_classes: usize) -> f64 {
    let n = gold.len() as f64;
    let mut t = vec![0.0; num_classes];
    let mut p = vec![0.0; num_classes];
    let mut c = 0.0;
    for (&pi, &gi) in pred.iter().zip(gold) {
        if gi < num_classes {
            t[gi] += 1.0;
        }
        if pi < num_classes {
            p[pi] += 1.0;
        }
        if pi == gi {
            c += 1.0;
        }
    }
    let tp: f64 = t.iter().zip(&p).map(|(a, b)| a * b).sum();
    let num = c * n - tp;
    let den = ((n * n - p.iter().map(|x| x * x).sum::<f64>())
        * (n * n - t.iter().map(|x| x * x).sum::<f64>()))
    .sqrt();
    if den == 0.0 { 0.0 } else { num / den }
}

/// Pearson correlation.
pub fn pearson(x: &[f64], y: &[f64]) -> f64 {
    let n = x.len() as f64;
    if n < 2.0 {
        return 0.0;
    }
    let mx = x.iter().sum::<f64>() / n;
    let my = y.iter().sum::<f64>() / n;
    let cov: f64 = x.iter().zip(y).map(|(a, b)| (a - mx) * (b - my)).sum();
    let vx: f64 = x.iter().map(|a| (a - mx).powi(2)).sum();
    let vy: f64 = y.iter().map(|b| (b - my).powi(2)).sum();
    if vx == 0.0 || vy == 0.0 {
        0.0
    } else {
        cov / (vx * vy).sqrt()
    }
}

/// Ranks with ties averaged (1-based).
fn ranks(x: &[f64]) -> Vec<f64> {
    let mut idx: Vec<usize> = (0..x.len()).collect();
    idx.sort_by(|&a, &b| x[a].total_cmp(&x[b]));
    let mut r = vec![0.0; x.len()];
    let mut i = 0;
    while i < idx.len() {
        let mut j = i;
        while j + 1 < idx.len() && x[idx[j + 1]] == x[idx[i]] {
            j += 1;
        }
        let avg = (i + j) as f64 / 2.0 + 1.0;
        for k in i..=j {
            r[idx[k]] = avg;
        }
        i = j + 1;
    }
    r
}

/// Spearman rank correlation (Pearson of tie-averaged ranks).
pub fn spearman(x: &[f64], y: &[f64]) -> f64 {
    pearson(&ranks(x), &ranks(y))
}

/// Micro-averaged F1 over the classes other than `ignore` (e.g. the "no relation" class); equal
/// to accuracy when nothing is ignored.
pub fn micro_f1(pred: &[usize], gold: &[usize], num_classes: usize, ignore: Option<usize>) -> f64 {
    let (mut tp, mut fp, mut fn_) = (0.0, 0.0, 0.0);
    for c in (0..num_classes).filter(|&c| Some(c) != ignore) {
        let (a, b, d) = confusion(pred, gold, c);
        tp += a;
        fp += b;
        fn_ += d;
    }
    f1(tp, fp, fn_)
}

/// An entity: type and inclusive word range.
pub type Entity = (String, usize, usize);

fn split_tag(tag: &str) -> (char, &str) {
    // seqeval: the first character is the prefix, the rest after the first '-' the type.
    let prefix = tag.chars().next().unwrap_or('O');
    let rest = tag.get(prefix.len_utf8()..).unwrap_or("");
    let kind = rest.split_once('-').map_or(rest, |(_, t)| t);
    (prefix, if kind.is_empty() { "_" } else { kind })
}

/// Entities of a tag sequence (IOB1/IOB2/IOBES) with seqeval's default (conlleval) rules: an
/// `I-` after `O` or after another type starts an entity.
pub fn entities(tags: &[&str]) -> Vec<Entity> {
    let mut out = Vec::new();
    let (mut prev_tag, mut prev_type) = ('O', "_".to_string());
    let mut begin = 0;
    for (i, tag) in tags.iter().copied().chain(std::iter::once("O")).enumerate() {
        let (t, kind) = split_tag(tag);
        let end = matches!(prev_tag, 'E' | 'S')
            || (matches!(prev_tag, 'B' | 'I') && matches!(t, 'B' | 'S' | 'O'))
            || (prev_tag != 'O' && prev_tag != '.' && prev_type != kind);
        if end {
            out.push((prev_type.clone(), begin, i - 1));
        }
        let start = matches!(t, 'B' | 'S')
            || (matches!(prev_tag, 'E' | 'S' | 'O') && matches!(t, 'E' | 'I'))
            || (t != 'O' && t != '.' && prev_type != kind);
        if start {
            begin = i;
        }
        prev_tag = t;
        prev_type = kind.to_string();
    }
    out
}

/// Entity-level micro precision, recall and F1 over sentences (seqeval's `classification_report`
/// "micro avg"), plus per-type F1.
#[derive(Debug, Clone, PartialEq)]
pub struct EntityScores {
    /// Correct predicted entities / predicted entities.
    pub precision: f64,
    /// Correct predicted entities / gold entities.
    pub recall: f64,
    /// Harmonic mean.
    pub f1: f64,
    /// F1 by entity type.
    pub per_type: Vec<(String, f64)>,
}

/// Scores predicted against gold tag sequences, sentence by sentence.
pub fn entity_scores(pred: &[Vec<String>], gold: &[Vec<String>]) -> EntityScores {
    let collect = |seqs: &[Vec<String>]| -> Vec<(usize, Entity)> {
        seqs.iter()
            .enumerate()
            .flat_map(|(s, tags)| {
                let tags: Vec<&str> = tags.iter().map(String::as_str).collect();
                entities(&tags).into_iter().map(move |e| (s, e))
            })
            .collect()
    };
    let p = collect(pred);
    let g = collect(gold);
    let gold_set: std::collections::HashSet<&(usize, Entity)> = g.iter().collect();
    let correct: Vec<&(usize, Entity)> = p.iter().filter(|e| gold_set.contains(e)).collect();
    let ratio = |a: usize, b: usize| if b == 0 { 0.0 } else { a as f64 / b as f64 };
    let harmonic = |p: f64, r: f64| {
        if p + r == 0.0 {
            0.0
        } else {
            2.0 * p * r / (p + r)
        }
    };
    let precision = ratio(correct.len(), p.len());
    let recall = ratio(correct.len(), g.len());
    let mut types: Vec<String> = g.iter().map(|(_, e)| e.0.clone()).collect();
    types.sort();
    types.dedup();
    let per_type = types
        .into_iter()
        .map(|t| {
            let count = |v: &[&(usize, Entity)]| v.iter().filter(|(_, e)| e.0 == t).count();
            let pp = ratio(count(&correct), count(&p.iter().collect::<Vec<_>>()));
            let rr = ratio(count(&correct), count(&g.iter().collect::<Vec<_>>()));
            (t, harmonic(pp, rr))
        })
        .collect();
    EntityScores {
        precision,
        recall,
        f1: harmonic(precision, recall),
        per_type,
    }
}

/// The official SQuAD normalisation: lower case, no punctuation, no articles (a, an, the),
/// single spaces.
pub fn normalize_answer(s: &str) -> String {
    let lower: String = s
        .to_lowercase()
        .chars()
        .filter(|c| !is_python_punctuation(*c))
        .collect();
    lower
        .split_whitespace()
        .filter(|w| !matches!(*w, "a" | "an" | "the"))
        .collect::<Vec<_>>()
        .join(" ")
}

/// `string.punctuation` of Python: the ASCII punctuation characters only.
fn is_python_punctuation(c: char) -> bool {
    c.is_ascii_punctuation()
}

/// Exact match after normalisation.
pub fn squad_exact(prediction: &str, gold: &str) -> bool {
    normalize_answer(prediction) == normalize_answer(gold)
}

/// Token-overlap F1 after normalisation.
pub fn squad_f1(prediction: &str, gold: &str) -> f64 {
    let p = normalize_answer(prediction);
    let g = normalize_answer(gold);
    let p: Vec<&str> = p.split_whitespace().collect();
    let g: Vec<&str> = g.split_whitespace().collect();
    let mut counts: HashMap<&str, i64> = HashMap::new();
    for w in &g {
        *counts.entry(w).or_default() += 1;
    }
    let mut same = 0;
    for w in &p {
        if let Some(c) = counts.get_mut(w)
            && *c > 0
        {
            *c -= 1;
            same += 1;
        }
    }
    if same == 0 {
        return 0.0;
    }
    let precision = same as f64 / p.len() as f64;
    let recall = same as f64 / g.len() as f64;
    2.0 * precision * recall / (precision + recall)
}

/// SQuAD v1.1 `exact_match` and `f1` in percent: each prediction scored against its best gold
/// answer, averaged over questions.
pub fn squad_scores(predictions: &[String], golds: &[Vec<String>]) -> (f64, f64) {
    let n = golds.len().max(1) as f64;
    let mut em = 0.0;
    let mut f1 = 0.0;
    for (p, g) in predictions.iter().zip(golds) {
        em += if g.iter().any(|a| squad_exact(p, a)) {
            1.0
        } else {
            0.0
        };
        f1 += g.iter().map(|a| squad_f1(p, a)).fold(0.0, f64::max);
    }
    (100.0 * em / n, 100.0 * f1 / n)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn classification_metrics_by_hand() {
        let gold = [0, 0, 1, 1, 1, 2];
        let pred = [0, 1, 1, 1, 0, 2];
        assert!((accuracy(&pred, &gold) - 4.0 / 6.0).abs() < 1e-12);
        // class 0: tp 1 fp 1 fn 1 → 0.5; class 1: tp 2 fp 1 fn 1 → 2/3; class 2: 1.
        assert!((macro_f1(&pred, &gold, 3) - (0.5 + 2.0 / 3.0 + 1.0) / 3.0).abs() < 1e-12);
        assert!((binary_f1(&[1, 1, 0, 0], &[1, 0, 1, 0]) - 0.5).abs() < 1e-12);
        // Binary MCC: tp=1 tn=1 fp=1 fn=1 → 0; perfect → 1; inverted → −1.
        assert!(matthews(&[1, 1, 0, 0], &[1, 0, 1, 0], 2).abs() < 1e-12);
        assert!((matthews(&[1, 0, 1], &[1, 0, 1], 2) - 1.0).abs() < 1e-12);
        assert!((matthews(&[0, 1], &[1, 0], 2) + 1.0).abs() < 1e-12);
    }

    #[test]
    fn correlations_by_hand() {
        let x = [1.0, 2.0, 3.0, 4.0];
        assert!((pearson(&x, &[2.0, 4.0, 6.0, 8.0]) - 1.0).abs() < 1e-12);
        assert!((pearson(&x, &[1.0, 3.0, 2.0, 4.0]) - 0.8).abs() < 1e-12);
        // Monotone but not linear: Spearman 1, Pearson below 1.
        let y = [1.0, 10.0, 100.0, 1000.0];
        assert!((spearman(&x, &y) - 1.0).abs() < 1e-12);
        assert!(pearson(&x, &y) < 0.99);
        // Ties get averaged ranks: ranks of [1, 2, 2, 3] are [1, 2.5, 2.5, 4].
        assert_eq!(ranks(&[1.0, 2.0, 2.0, 3.0]), vec![1.0, 2.5, 2.5, 4.0]);
    }

    #[test]
    fn micro_f1_ignores_a_class() {
        let gold = [0, 0, 1, 1, 2];
        let pred = [0, 1, 1, 0, 2];
        assert!((micro_f1(&pred, &gold, 3, None) - 0.6).abs() < 1e-12);
        // Without class 0: tp 2 (1,2), fp 1 (pred 1 at i=1), fn 1 (gold 1 at i=3) → 2/3.
        assert!((micro_f1(&pred, &gold, 3, Some(0)) - 2.0 / 3.0).abs() < 1e-12);
    }

    #[test]
    fn entities_follow_seqeval() {
        let e = |tags: &[&str]| entities(tags);
        assert_eq!(
            e(&["B-PER", "I-PER", "O", "B-LOC"]),
            vec![("PER".into(), 0, 1), ("LOC".into(), 3, 3)]
        );
        // conlleval: I- after O starts an entity; a type change splits one.
        assert_eq!(
            e(&["O", "I-PER", "I-PER", "I-LOC"]),
            vec![("PER".into(), 1, 2), ("LOC".into(), 3, 3)]
        );
        assert_eq!(
            e(&["B-PER", "B-PER", "I-PER"]),
            vec![("PER".into(), 0, 0), ("PER".into(), 1, 2)]
        );
        assert_eq!(
            e(&["B-creative-work", "I-creative-work"]),
            vec![("creative-work".into(), 0, 1)]
        );
        // 2 gold entities, 2 predicted, 1 right: P = R = F1 = 0.5.
        let gold = vec![vec![
            "B-PER".to_string(),
            "I-PER".into(),
            "O".into(),
            "B-LOC".into(),
        ]];
        let pred = vec![vec![
            "B-PER".to_string(),
            "I-PER".into(),
            "B-LOC".into(),
            "I-LOC".into(),
        ]];
        let s = entity_scores(&pred, &gold);
        assert!((s.precision - 0.5).abs() < 1e-12 && (s.recall - 0.5).abs() < 1e-12);
        assert!((s.f1 - 0.5).abs() < 1e-12);
        assert_eq!(s.per_type, vec![("LOC".into(), 0.0), ("PER".into(), 1.0)]);
    }

    #[test]
    fn squad_metrics_by_hand() {
        assert_eq!(
            normalize_answer("The  Quick, brown fox!"),
            "quick brown fox"
        );
        assert!(squad_exact("the Denver Broncos", "Denver Broncos"));
        // pred {denver, broncos, won}, gold {denver, broncos}: P 2/3, R 1 → 0.8.
        assert!((squad_f1("Denver Broncos won", "Denver Broncos") - 0.8).abs() < 1e-12);
        assert_eq!(squad_f1("a", "the"), 0.0);
        let (em, f1) = squad_scores(
            &["Broncos".into(), "Santa Clara".into()],
            &[
                vec!["Denver Broncos".into(), "Broncos".into()],
                vec!["Levi's Stadium".into()],
            ],
        );
        assert!((em - 50.0).abs() < 1e-9 && (f1 - 50.0).abs() < 1e-9);
    }
}
