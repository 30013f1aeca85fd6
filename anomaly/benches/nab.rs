//! The detectors on the Numenta Anomaly Benchmark's real series (`../shared/data/nab`, or `AIRQ_NAB_DIR`), scored
//! with NAB's rules. The headline table is held out: each detector's threshold and refractory period are chosen on one
//! NAB category and scored on the other, both ways. The second table chooses them on the whole corpus, as NAB does
//! (and so flatters whatever was tuned on it). Prints Markdown tables for docs/benchmarks.md.
//!
//! `cargo bench -p airq-anomaly --bench nab`

use std::path::PathBuf;
use std::time::Instant;

use airq_anomaly::corpus::{self, Series};
use airq_anomaly::detector::{Detector, FixedThreshold, Maximum, RollingZ, Seasonal};
use airq_anomaly::evaluate::{self, HeldOut, Outcome};
use airq_anomaly::nab::Profile;

const DAY: i64 = 86_400;
const HOUR: i64 = 3_600;

type Make = fn(&Series) -> Box<dyn Detector>;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let dir = std::env::var_os("AIRQ_NAB_DIR").map_or_else(
        || PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../shared/data/nab"),
        PathBuf::from,
    );
    let started = Instant::now();
    let corpus = corpus::load(&dir)?;
    let rows: usize = corpus.iter().map(|s| s.values.len()).sum();
    let windows: usize = corpus.iter().map(|s| s.windows.len()).sum();
    eprintln!(
        "{} series, {rows} rows, {windows} windows, read in {:.2?}",
        corpus.len(),
        started.elapsed()
    );

    let detectors: [(&str, &str, Make); 6] = [
        (
            "seasonal (daily)",
            "season 1 day, 7 past days, ±2 rows, scale from 1 day of residuals",
            |s| Box::new(Seasonal::new(s.rows_in(DAY), 7, 2, s.rows_in(DAY))),
        ),
        (
            "seasonal (weekly)",
            "season 1 week, 2 past weeks, ±2 rows, scale from 1 day of residuals",
            |s| Box::new(Seasonal::new(s.rows_in(7 * DAY), 2, 2, s.rows_in(DAY))),
        ),
        ("rolling z-score (1 h)", "mean and sd of the last hour", |s| {
            Box::new(RollingZ::new(s.rows_in(HOUR).max(8)))
        }),
        ("rolling z-score (1 day)", "mean and sd of the last day", |s| {
            Box::new(RollingZ::new(s.rows_in(DAY)))
        }),
        (
            "maximum of seasonal (daily) and rolling z (1 day)",
            "the larger of the two scores",
            |s| {
                Box::new(Maximum(vec![
                    Box::new(Seasonal::new(s.rows_in(DAY), 7, 2, s.rows_in(DAY))),
                    Box::new(RollingZ::new(s.rows_in(DAY))),
                ]))
            },
        ),
        (
            "fixed threshold",
            "mean and sd of the probationary rows, then fixed",
            |s| {
                Box::new(FixedThreshold::new(airq_anomaly::nab::probationary_rows(
                    s.values.len(),
                )))
            },
        ),
    ];
    // z-scores from 1 to 30 by quarters; refractory periods from none to a day.
    let thresholds: Vec<f64> = (4..=120).map(|q| f64::from(q) / 4.0).collect();
    let refractories = [0, HOUR, 6 * HOUR, DAY];
    let profiles = [
        ("standard", Profile::STANDARD),
        ("reward low FP", Profile::REWARD_LOW_FP),
        ("reward low FN", Profile::REWARD_LOW_FN),
    ];

    let first = corpus
        .first()
        .map(|s| evaluate::category(s).to_owned())
        .unwrap_or_default();
    let mut all_scores = Vec::new();
    for (_, _, make) in &detectors {
        let t = Instant::now();
        let scores = evaluate::score(&corpus, make);
        all_scores.push((scores, t.elapsed()));
    }

    println!("Held out (chosen on one category, scored on the other; `{first}` is the first part):\n");
    println!(
        "| detector | standard | reward low FP | reward low FN | windows found (standard) | false positives | chosen on the other part (standard) |"
    );
    println!("| --- | ---: | ---: | ---: | ---: | ---: | --- |");
    for ((name, _, _), (scores, _)) in detectors.iter().zip(&all_scores) {
        let held: Vec<HeldOut> = profiles
            .iter()
            .map(|(_, p)| {
                evaluate::held_out(&corpus, scores, *p, &thresholds, &refractories, |s| {
                    evaluate::category(s) == first
                })
            })
            .collect::<Option<_>>()
            .ok_or("a category without windows")?;
        let standard = held[0];
        println!(
            "| {name} | {:.1} | {:.1} | {:.1} | {}/{} | {} | z > {}, {} / z > {}, {} |",
            held[0].score,
            held[1].score,
            held[2].score,
            standard.detected,
            standard.windows,
            standard.false_positives,
            standard.first.threshold,
            human(standard.first.refractory_seconds),
            standard.second.threshold,
            human(standard.second.refractory_seconds),
        );
    }

    println!("\nIn sample (chosen on the whole corpus, as NAB does):\n");
    println!(
        "| detector | standard | reward low FP | reward low FN | at (standard) | windows found | false positives | scoring time |"
    );
    println!("| --- | ---: | ---: | ---: | --- | ---: | ---: | ---: |");
    for ((name, _, _), (scores, scoring)) in detectors.iter().zip(&all_scores) {
        let best: Vec<Outcome> = profiles
            .iter()
            .map(|(_, p)| evaluate::best(&corpus, scores, *p, &thresholds, &refractories))
            .collect::<Option<_>>()
            .ok_or("no thresholds")?;
        let standard = best[0];
        println!(
            "| {name} | {:.1} | {:.1} | {:.1} | z > {}, {} between alarms | {}/{} | {} | {:.0} ms |",
            best[0].score,
            best[1].score,
            best[2].score,
            standard.threshold,
            human(standard.refractory_seconds),
            standard.detected,
            standard.windows,
            standard.false_positives,
            scoring.as_secs_f64() * 1000.0,
        );
    }
    println!();
    for (name, how, _) in &detectors {
        println!("- {name}: {how}");
    }
    eprintln!("done in {:.2?}", started.elapsed());
    Ok(())
}

fn human(seconds: i64) -> String {
    match seconds {
        0 => "nothing".to_owned(),
        s if s % DAY == 0 => format!("{} d", s / DAY),
        s => format!("{} h", s / HOUR),
    }
}
