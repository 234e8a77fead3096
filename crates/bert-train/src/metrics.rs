//! Evaluation metrics: accuracy, macro/micro F1, Matthews correlation, Pearson and Spearman.

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
}
