//! The quality marks a load leaves on the series it touched: a sensor stuck, a jump (`airq_anomaly::quality`).
//! They are recomputed from the stored series once the load's values are in — each touched pollutant series from
//! the checker's memory before its first touched hour to that far after its last — so they depend on the stored
//! data alone: a re-load, a backfill of part of a range or a load resumed after a crash ends with the marks a
//! single clean load gives.

use std::collections::HashMap;

use airq_anomaly::quality::{Settings, check_hourly};
use airq_core::parameter::{Kind, Parameter};
use airq_core::store::{FLAG_JUMP, FLAG_STUCK, FLAGS_FROM_CHECKS, Point, Store};
use futures::StreamExt;

const HOUR: i64 = 3600;

/// The hours a load wrote, per series: first and last (Unix seconds).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Touched {
    ranges: HashMap<(i64, Parameter), (i64, i64)>,
}

impl Touched {
    pub fn add(&mut self, station_id: i64, parameter: Parameter, time: i64) {
        let range = self.ranges.entry((station_id, parameter)).or_insert((time, time));
        range.0 = range.0.min(time);
        range.1 = range.1.max(time);
    }

    pub fn merge(&mut self, other: Touched) {
        for ((station_id, parameter), (first, last)) in other.ranges {
            self.add(station_id, parameter, first);
            self.add(station_id, parameter, last);
        }
    }

    /// The pollutant series touched, in a stable order; weather series are not checked (rain is zero for weeks,
    /// wind turns at once).
    fn series(&self) -> Vec<(i64, Parameter, i64, i64)> {
        let mut series: Vec<_> = self
            .ranges
            .iter()
            .filter(|((_, p), _)| p.kind() == Kind::Pollutant)
            .map(|(&(station, parameter), &(first, last))| (station, parameter, first, last))
            .collect();
        series.sort_by_key(|&(station, parameter, first, _)| (station, parameter.code(), first));
        series
    }
}

/// What marking did: values of the touched ranges that carry each mark now, and marks set or cleared on the way.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize)]
pub struct MarkCounts {
    pub stuck: i64,
    pub jump: i64,
    pub changed: u64,
}

impl std::ops::AddAssign for MarkCounts {
    fn add_assign(&mut self, other: Self) {
        self.stuck += other.stuck;
        self.jump += other.jump;
        self.changed += other.changed;
    }
}

/// The hours of a series to read and to rewrite after a load touched `first..=last`: the marks of an hour depend
/// on `memory` hours before it and `ahead` after it, so the touched values change the marks of
/// `first - ahead ..= last + memory`, and those need the values of `first - ahead - memory ..= last + memory +
/// ahead`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Window {
    /// The first hour read (on the hour) and the end of the read (exclusive).
    read_from: i64,
    read_to: i64,
    write_from: i64,
    write_to: i64,
}

impl Window {
    fn new(first: i64, last: i64, settings: Settings) -> Self {
        let memory = settings.memory_hours() as i64 * HOUR;
        let ahead = settings.spike_hours as i64 * HOUR;
        let write_from = (first - ahead).div_euclid(HOUR) * HOUR;
        let write_to = last + memory + HOUR;
        Self {
            read_from: write_from - memory,
            read_to: write_to + ahead,
            write_from,
            write_to,
        }
    }
}

/// One series' stored values checked: the changes to write and the counts over `first..=last`.
fn check(points: &[Point], window: Window, first: i64, last: i64, settings: Settings) -> (Vec<(i64, i16)>, MarkCounts) {
    let hour_of = |time: i64| ((time - window.read_from).div_euclid(HOUR)) as usize;
    let hours = hour_of(window.read_to - 1) + 1;
    // The last value of each hour (one, unless a source stored a time off the hour).
    let mut hourly: Vec<Option<f64>> = vec![None; hours];
    for p in points {
        if let Some(slot) = hourly.get_mut(hour_of(p.time)) {
            *slot = Some(p.value);
        }
    }
    let marks = check_hourly(&hourly, settings);
    let mut counts = MarkCounts::default();
    let mut changes = Vec::new();
    for p in points
        .iter()
        .filter(|p| (window.write_from..window.write_to).contains(&p.time))
    {
        let m = marks.get(hour_of(p.time)).copied().unwrap_or_default();
        let bits = if m.stuck { FLAG_STUCK } else { 0 } | if m.jump { FLAG_JUMP } else { 0 };
        if p.flags & FLAGS_FROM_CHECKS != bits {
            changes.push((p.time, bits));
        }
        if (first..=last).contains(&p.time) {
            counts.stuck += i64::from(m.stuck);
            counts.jump += i64::from(m.jump);
        }
    }
    (changes, counts)
}

/// Recomputes the marks of every touched pollutant series, `parallelism` series at a time; `progress` is told
/// which series is being checked.
pub async fn mark(
    store: &Store,
    touched: &Touched,
    settings: Settings,
    parallelism: usize,
    progress: &indicatif::ProgressBar,
) -> Result<MarkCounts, airq_core::store::Error> {
    let series = touched.series();
    let total = series.len();
    let mut done = 0;
    // A phase of its own on the bar: series checked of those touched, not the bytes of the files read before (the
    // counts first, so that the new style never shows the old ones).
    progress.set_message("");
    progress.set_length(total as u64);
    progress.set_position(0);
    progress.set_style(
        indicatif::ProgressStyle::with_template(
            "{spinner} [{elapsed_precise}] {wide_bar} {pos}/{len} series checked for stuck sensors and jumps ({eta} left)",
        )
        .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar()),
    );
    let mut counts = MarkCounts::default();
    let mut checked = futures::stream::iter(series.into_iter().map(|(station, parameter, first, last)| async move {
        let window = Window::new(first, last, settings);
        let points = store
            .series(station, parameter, window.read_from, window.read_to)
            .await?;
        let (changes, counts) = tokio::task::spawn_blocking(move || check(&points, window, first, last, settings))
            .await
            .unwrap_or_default();
        let changed = store.set_check_flags(station, parameter, &changes).await?;
        Ok::<_, airq_core::store::Error>(MarkCounts { changed, ..counts })
    }))
    .buffer_unordered(parallelism.max(1));
    while let Some(result) = checked.next().await {
        counts += result?;
        done += 1;
        progress.set_position(done);
    }
    Ok(counts)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn points(values: &[(i64, f64, i16)]) -> Vec<Point> {
        values
            .iter()
            .map(|&(hour, value, flags)| Point {
                time: hour * HOUR,
                value,
                flags,
            })
            .collect()
    }

    /// The window of a load that touched `first..=last` hours, and the points of `values` in it.
    fn checked(values: &[(i64, f64, i16)], first: i64, last: i64) -> (Vec<(i64, i16)>, MarkCounts) {
        let settings = Settings::default();
        let window = Window::new(first * HOUR, last * HOUR, settings);
        let points: Vec<Point> = points(values)
            .into_iter()
            .filter(|p| (window.read_from..window.read_to).contains(&p.time))
            .collect();
        check(&points, window, first * HOUR, last * HOUR, settings)
    }

    #[test]
    fn only_changed_marks_are_written_and_a_source_flag_is_left_alone() {
        // Thirty hours at 12 after lower values, then ordinary values with a gap at hour 90.
        let mut values: Vec<(i64, f64, i16)> = (0..50).map(|h| (h, 5.0 + (h % 3) as f64, 0)).collect();
        values.extend((50..80).map(|h| (h, 12.0, 0)));
        values.extend((80..90).map(|h| (h, 20.0 + (h % 3) as f64, 0)));
        values.extend((91..110).map(|h| (h, 20.0 + (h % 3) as f64, 0)));
        // Hour 75 already marked stuck (kept), hour 85 wrongly marked (cleared), hour 78 has the source's bit.
        let at = |values: &mut Vec<(i64, f64, i16)>, hour: i64, flags: i16| {
            if let Some(v) = values.iter_mut().find(|v| v.0 == hour) {
                v.2 = flags;
            }
        };
        at(&mut values, 75, FLAG_STUCK);
        at(&mut values, 85, FLAG_STUCK);
        at(&mut values, 78, 1);
        let (changes, counts) = checked(&values, 0, 109);
        let mut expected: Vec<(i64, i16)> = (73..80).filter(|h| *h != 75).map(|h| (h * HOUR, FLAG_STUCK)).collect();
        expected.push((85 * HOUR, 0));
        assert_eq!(changes, expected);
        assert_eq!((counts.stuck, counts.jump), (7, 0));
    }

    #[test]
    fn counts_cover_the_touched_range_only() {
        let mut values: Vec<(i64, f64, i16)> = (0..20).map(|h| (h, 3.0, 0)).collect();
        values.extend((20..80).map(|h| (h, 7.0, 0)));
        let (_, counts) = checked(&values, 70, 79);
        assert_eq!(counts.stuck, 10);
    }

    #[test]
    fn hours_the_read_cannot_settle_are_not_written() {
        // A stored mark before the window's writable hours is left as it is, even if the checker, without its
        // memory there, would say otherwise.
        let values: Vec<(i64, f64, i16)> = (0..2000).map(|h| (h, 20.0 + (h % 7) as f64, FLAG_JUMP)).collect();
        let (changes, _) = checked(&values, 1500, 1510);
        let window = Window::new(1500 * HOUR, 1510 * HOUR, Settings::default());
        assert!(!changes.is_empty());
        assert!(
            changes
                .iter()
                .all(|(t, _)| (window.write_from..window.write_to).contains(t))
        );
        assert_eq!(window.write_from, 1497 * HOUR);
    }

    #[test]
    fn touched_ranges_merge_and_leave_weather_out() {
        let mut a = Touched::default();
        a.add(1, Parameter::Pm25, 100);
        a.add(1, Parameter::Temp, 100);
        let mut b = Touched::default();
        b.add(1, Parameter::Pm25, 50);
        b.add(1, Parameter::Pm25, 400);
        a.merge(b);
        assert_eq!(a.series(), vec![(1, Parameter::Pm25, 50, 400)]);
    }
}
