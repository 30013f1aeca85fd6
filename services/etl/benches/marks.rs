//! Benchmark: the quality checks a load runs (`airq_anomaly::quality`: stuck sensor, jump) on the twelve Beijing
//! files' pollutant series — how many values each mark takes per pollutant, and what checking costs per value.
//! Run with `cargo bench -p airq-etl --bench marks`. The files are read by the loader's own CSV connector; nothing
//! is written to a database (the whole load, marks included, is the `bulk_load` bench), but each series is checked
//! as a load checks it, so the counts are those a load of the files stores.

use std::collections::BTreeMap;
use std::time::Instant;

use airq_anomaly::quality::{Settings, check_hourly};
use airq_api::etl::CsvFormat;
use airq_core::parameter::{Kind, Parameter};
use airq_etl::source::{Chunk, TimeRange, csv};
use tokio::sync::mpsc;

const HOUR: i64 = 3600;

fn main() -> anyhow::Result<()> {
    let folder = airq_testenv::shared_data("beijing-multisite")?;
    let mut series: BTreeMap<(String, Parameter), BTreeMap<i64, f64>> = BTreeMap::new();
    for input in csv::inputs(&folder.display().to_string())? {
        let (tx, mut rx) = mpsc::channel::<Chunk>(4);
        let name = input.name();
        let reader = std::thread::spawn(move || {
            let file = std::fs::File::open(&name)?;
            csv::read(&name, file, CsvFormat::Beijing, TimeRange::default(), &tx).map_err(anyhow::Error::from)
        });
        while let Some(chunk) = rx.blocking_recv() {
            for o in chunk.observations {
                if o.parameter.kind() == Kind::Pollutant {
                    series
                        .entry((o.station.to_string(), o.parameter))
                        .or_default()
                        .insert(o.time, o.value);
                }
            }
        }
        reader.join().map_err(|_| anyhow::anyhow!("the reader panicked"))??;
    }
    let settings = Settings::default();
    // `AIRQ_BENCH_EXAMPLES=o3` prints the hours around the first marks of that pollutant.
    let examples_of = std::env::var("AIRQ_BENCH_EXAMPLES").ok();
    let mut per_parameter: BTreeMap<&str, (usize, usize, usize, usize)> = BTreeMap::new();
    let mut values = 0;
    let mut seconds = 0.0;
    for ((station, parameter), points) in &series {
        let (Some((&first, _)), Some((&last, _))) = (points.first_key_value(), points.last_key_value()) else {
            continue;
        };
        // As a load sees a series: preceded by the checker's memory of missing hours (nothing is stored before it).
        let memory = settings.memory_hours();
        let mut hourly: Vec<Option<f64>> = std::iter::repeat_n(None, memory)
            .chain((first / HOUR..=last / HOUR).map(|h| points.get(&(h * HOUR)).copied()))
            .collect();
        let started = Instant::now();
        let marks = check_hourly(&hourly, settings).split_off(memory);
        let hourly = hourly.split_off(memory);
        seconds += started.elapsed().as_secs_f64();
        values += points.len();
        if examples_of.as_deref() == Some(parameter.code()) {
            let show = |h: usize| hourly[h].map_or("-".to_owned(), |v| format!("{v}"));
            for (h, _) in marks.iter().enumerate().filter(|(_, m)| m.jump).take(4) {
                let around: Vec<String> = (h.saturating_sub(4)..(h + 3).min(hourly.len())).map(show).collect();
                let time = chrono::DateTime::from_timestamp(first + h as i64 * HOUR, 0).unwrap_or_default();
                println!(
                    "jump {station} {time}: {} (hours around: {})",
                    show(h),
                    around.join(" ")
                );
            }
        }
        let entry = per_parameter.entry(parameter.code()).or_default();
        entry.0 += 1;
        entry.1 += points.len();
        entry.2 += marks.iter().filter(|m| m.stuck).count();
        entry.3 += marks.iter().filter(|m| m.jump).count();
    }
    println!(
        "settings: stuck after {} equal hours; jump above score {} (scale at least {}), {} days of the same hour",
        settings.stuck_hours, settings.jump_score, settings.min_scale, settings.days
    );
    println!("| pollutant | series | values | marked stuck | share | marked as jumps | share |");
    println!("| --- | --- | --- | --- | --- | --- | --- |");
    let share = |n: usize, of: usize| 100.0 * n as f64 / of.max(1) as f64;
    let mut totals = (0, 0, 0, 0);
    for (code, (n, count, stuck, jump)) in &per_parameter {
        println!(
            "| {code} | {n} | {count} | {stuck} | {:.3} % | {jump} | {:.3} % |",
            share(*stuck, *count),
            share(*jump, *count)
        );
        totals = (totals.0 + n, totals.1 + count, totals.2 + stuck, totals.3 + jump);
    }
    println!(
        "| all | {} | {} | {} | {:.3} % | {} | {:.3} % |",
        totals.0,
        totals.1,
        totals.2,
        share(totals.2, totals.1),
        totals.3,
        share(totals.3, totals.1)
    );
    println!(
        "checking: {values} values in {seconds:.2} s on one core, {:.2} µs per value",
        seconds * 1e6 / values.max(1) as f64
    );
    Ok(())
}
