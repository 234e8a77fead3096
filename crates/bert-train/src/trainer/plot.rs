//! `loss.png`: train and eval loss of a run against the step, drawn with plotters from
//! `metrics.jsonl` (text in DejaVu Sans, embedded: no system fonts needed).

use std::path::Path;
use std::sync::Once;

use anyhow::{Context, Result};
use plotters::prelude::*;

/// `(step, loss)` points of one split.
fn series(lines: &[serde_json::Value], split: &str) -> Vec<(f64, f64)> {
    lines
        .iter()
        .filter(|l| l["split"] == split)
        .filter_map(|l| Some((l["step"].as_f64()?, l["loss"].as_f64()?)))
        .filter(|(_, y)| y.is_finite())
        .collect()
}

/// Draws `dir/loss.png` from `dir/metrics.jsonl`.
pub fn loss_plot(dir: &Path) -> Result<()> {
    static FONT: Once = Once::new();
    FONT.call_once(|| {
        let _ = plotters::style::register_font(
            "sans-serif",
            FontStyle::Normal,
            dejavu::sans::regular(),
        );
    });
    let text = std::fs::read_to_string(dir.join("metrics.jsonl"))
        .with_context(|| format!("cannot read {}", dir.join("metrics.jsonl").display()))?;
    let lines: Vec<serde_json::Value> = text
        .lines()
        .filter_map(|l| serde_json::from_str(l).ok())
        .collect();
    let train = series(&lines, "train");
    let eval = series(&lines, "eval");
    let all: Vec<&(f64, f64)> = train.iter().chain(&eval).collect();
    if all.is_empty() {
        anyhow::bail!("no loss values in metrics.jsonl");
    }
    let x_max = all.iter().map(|p| p.0).fold(1.0, f64::max);
    let y_max = all.iter().map(|p| p.1).fold(f64::MIN, f64::max);
    let y_min = all.iter().map(|p| p.1).fold(f64::MAX, f64::min).min(0.0);
    let path = dir.join("loss.png");
    let tmp = dir.join(".loss.png.tmp.png");
    {
        let root = BitMapBackend::new(&tmp, (900, 540)).into_drawing_area();
        root.fill(&WHITE).map_err(|e| anyhow::anyhow!("{e:?}"))?;
        let mut chart = ChartBuilder::on(&root)
            .caption("loss", ("sans-serif", 22))
            .margin(16)
            .x_label_area_size(40)
            .y_label_area_size(56)
            .build_cartesian_2d(0.0..x_max, y_min..y_max * 1.05)
            .map_err(|e| anyhow::anyhow!("{e:?}"))?;
        chart
            .configure_mesh()
            .x_desc("step")
            .y_desc("loss")
            .draw()
            .map_err(|e| anyhow::anyhow!("{e:?}"))?;
        chart
            .draw_series(LineSeries::new(train.iter().copied(), &BLUE))
            .map_err(|e| anyhow::anyhow!("{e:?}"))?
            .label("train")
            .legend(|(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], BLUE));
        if !eval.is_empty() {
            chart
                .draw_series(LineSeries::new(eval.iter().copied(), RED.stroke_width(2)))
                .map_err(|e| anyhow::anyhow!("{e:?}"))?
                .label("eval")
                .legend(|(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], RED));
            chart
                .draw_series(eval.iter().map(|p| Circle::new(*p, 3, RED.filled())))
                .map_err(|e| anyhow::anyhow!("{e:?}"))?;
        }
        chart
            .configure_series_labels()
            .background_style(WHITE.mix(0.8))
            .border_style(BLACK)
            .draw()
            .map_err(|e| anyhow::anyhow!("{e:?}"))?;
        root.present().map_err(|e| anyhow::anyhow!("{e:?}"))?;
    }
    std::fs::rename(&tmp, &path).with_context(|| format!("cannot write {}", path.display()))?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn draws_a_png_from_metrics() {
        let dir = tempfile::tempdir().expect("tempdir");
        let mut text = String::new();
        for s in 1..=20 {
            text.push_str(&format!(
                "{{\"split\":\"train\",\"step\":{s},\"loss\":{}}}\n",
                5.0 / f64::from(s)
            ));
        }
        text.push_str("{\"split\":\"eval\",\"step\":10,\"loss\":0.9,\"accuracy\":0.5}\n");
        std::fs::write(dir.path().join("metrics.jsonl"), text).expect("metrics");
        loss_plot(dir.path()).expect("plot");
        let png = std::fs::read(dir.path().join("loss.png")).expect("png");
        assert_eq!(&png[1..4], b"PNG");
        assert!(png.len() > 5_000, "a drawn chart, not an empty image");
        std::fs::write(dir.path().join("metrics.jsonl"), "").expect("empty");
        assert!(loss_plot(dir.path()).is_err());
    }
}
