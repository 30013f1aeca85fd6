//! Benchmark: the bulk load of the Beijing files into PostgreSQL by `airq-etl load` (release build), against
//! `psql \copy` of the same rows into the same table on the same server; and the loader's peak memory as the input
//! grows (3, 6 and 12 files). Run with `cargo bench -p airq-etl --bench bulk_load`.
//!
//! The rows `psql` copies are exactly those the loader stored (exported from its database), into an empty
//! `measurements` table with the same primary key and foreign keys, in a database with the same stations.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Instant;

use nix::sys::resource::{UsageWho, getrusage};

/// Peak resident memory of the largest child waited for so far, in MiB.
fn children_peak_mib() -> f64 {
    getrusage(UsageWho::RUSAGE_CHILDREN).map_or(0.0, |u| u.max_rss() as f64 / 1024.0)
}

fn run(command: &mut Command) -> anyhow::Result<f64> {
    let started = Instant::now();
    let output = command.output()?;
    anyhow::ensure!(
        output.status.success(),
        "{:?} failed: {}",
        command,
        String::from_utf8_lossy(&output.stderr)
    );
    Ok(started.elapsed().as_secs_f64())
}

async fn fresh_database() -> anyhow::Result<airq_testenv::TestDatabase> {
    let db = airq_testenv::database().await?;
    airq_core::db::Database::connect_url(&db.url, 2)
        .await?
        .migrate()
        .await?;
    Ok(db)
}

fn subset(folder: &Path, n: usize, dir: &Path) -> anyhow::Result<PathBuf> {
    let target = dir.join(format!("files-{n}"));
    std::fs::create_dir_all(&target)?;
    let mut files: Vec<PathBuf> = std::fs::read_dir(folder)?
        .map(|e| e.map(|e| e.path()))
        .collect::<Result<_, _>>()?;
    files.sort();
    for file in files.iter().take(n) {
        let name = file.file_name().ok_or_else(|| anyhow::anyhow!("no file name"))?;
        std::os::unix::fs::symlink(file, target.join(name))?;
    }
    Ok(target)
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let folder = airq_testenv::shared_data("beijing-multisite")?;
    let binary = Path::new(env!("CARGO_BIN_EXE_airq-etl"));
    let psql = airq_testenv::postgres::binaries()?.join("psql");
    let work = tempfile::tempdir()?;
    let parallelism = std::env::var("AIRQ_BENCH_PARALLELISM").unwrap_or_else(|_| "2".to_owned());

    // Peak memory as the input grows; the last (12 files) is also the timed load.
    let mut peaks = Vec::new();
    let mut timed = None;
    for n in [3, 6, 12] {
        let files = subset(&folder, n, work.path())?;
        let db = fresh_database().await?;
        // Each size in a process of its own: the peak of the child is read after it exits, and only grows, so the
        // sizes are measured smallest first.
        let seconds = run(Command::new(binary)
            .args(["load", "--name", "bench", "--csv"])
            .arg(&files)
            .args([
                "--database-url",
                &db.url,
                "--parallelism",
                &parallelism,
                "--log-level",
                "warn",
            ]))?;
        let rows: i64 = sqlx::query_scalar("select count(*) from measurements")
            .fetch_one(&db.pool)
            .await?;
        let peak = children_peak_mib();
        println!("airq-etl load, {n} files: {rows} measurements in {seconds:.2} s, peak RSS {peak:.1} MiB");
        peaks.push((n, rows, seconds, peak));
        if n == 12 {
            timed = Some((db, rows, seconds));
        } else {
            db.remove().await?;
        }
    }
    let Some((loaded, rows, load_seconds)) = timed else {
        anyhow::bail!("the 12-file load did not run");
    };

    // The same rows, exported, then copied by psql into an empty table of a database with the same stations.
    let export = work.path().join("measurements.tsv");
    run(Command::new(&psql).args([
        &loaded.url,
        "-c",
        &format!(
            "\\copy (select station_id, parameter, time, value, flags from measurements) to '{}'",
            export.display()
        ),
    ]))?;
    let target = fresh_database().await?;
    let stations: Vec<(i64, String, String, String)> =
        sqlx::query_as("select id, code, name, source from stations order by id")
            .fetch_all(&loaded.pool)
            .await?;
    for (id, code, name, source) in stations {
        sqlx::query("insert into stations (id, code, name, source) overriding system value values ($1, $2, $3, $4)")
            .bind(id)
            .bind(code)
            .bind(name)
            .bind(source)
            .execute(&target.pool)
            .await?;
    }
    let copy_seconds = run(Command::new(&psql).args([
        &target.url,
        "-c",
        &format!(
            "\\copy measurements (station_id, parameter, time, value, flags) from '{}'",
            export.display()
        ),
    ]))?;
    let copied: i64 = sqlx::query_scalar("select count(*) from measurements")
        .fetch_one(&target.pool)
        .await?;
    anyhow::ensure!(copied == rows, "psql copied {copied} rows, the load stored {rows}");
    println!("psql \\copy: {copied} rows in {copy_seconds:.2} s");

    loaded.remove().await?;
    target.remove().await?;
    let load_rate = rows as f64 / load_seconds;
    let copy_rate = copied as f64 / copy_seconds;
    println!();
    println!(
        "| input | measurements stored | airq-etl load | rows/s | psql \\copy | rows/s | ratio (load / copy rate) | peak RSS |"
    );
    println!("| --- | --- | --- | --- | --- | --- | --- | --- |");
    for (n, rows_n, seconds, peak) in &peaks {
        let (copy_cell, copy_rate_cell, ratio_cell) = if *n == 12 {
            (
                format!("{copy_seconds:.2} s"),
                format!("{copy_rate:.0}"),
                format!("{:.2}", load_rate / copy_rate),
            )
        } else {
            ("".to_owned(), "".to_owned(), "".to_owned())
        };
        println!(
            "| {n} files | {rows_n} | {seconds:.2} s | {:.0} | {copy_cell} | {copy_rate_cell} | {ratio_cell} | {peak:.1} MiB |",
            *rows_n as f64 / seconds
        );
    }
    Ok(())
}
