//! The checks CEL cannot make, done by whoever reads a resource (the operator, the one-machine mode) with the same
//! messages: cron expressions, calendar dates, and route prefixes that would shadow the platform's own routes.

use std::fmt;

use croner::parser::{CronParser, Seconds, Year};

use crate::{AdhocServiceSpec, EtlScheduleSpec, PredictiveModelSpec};

/// What is wrong with one field.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FieldError {
    /// The field's path, e.g. `spec.schedule`.
    pub field: String,
    pub message: String,
}

impl fmt::Display for FieldError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.field, self.message)
    }
}

/// Every problem found in a spec; empty when it is valid.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Problems(pub Vec<FieldError>);

impl Problems {
    fn add(&mut self, field: &str, message: impl Into<String>) {
        self.0.push(FieldError {
            field: field.to_owned(),
            message: message.into(),
        });
    }

    /// `Ok` when nothing was found.
    pub fn into_result(self) -> Result<(), Problems> {
        if self.0.is_empty() { Ok(()) } else { Err(self) }
    }
}

impl fmt::Display for Problems {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let lines: Vec<String> = self.0.iter().map(ToString::to_string).collect();
        f.write_str(&lines.join("; "))
    }
}

impl std::error::Error for Problems {}

/// Checks a cron expression the way a Kubernetes CronJob reads it: five fields (minute, hour, day of month, month,
/// day of week) or a macro such as `@hourly`.
pub fn check_cron(expression: &str) -> Result<(), String> {
    parse_cron(expression).map(drop)
}

/// [`check_cron`]'s reading of the expression, kept.
fn parse_cron(expression: &str) -> Result<croner::Cron, String> {
    let trimmed = expression.trim();
    if trimmed.starts_with("TZ=") || trimmed.starts_with("CRON_TZ=") {
        return Err("put the time zone in spec.timeZone, not in the schedule".to_owned());
    }
    if !trimmed.starts_with('@') && trimmed.split_whitespace().count() != 5 {
        return Err(format!(
            "{expression:?} is not a valid cron expression: expected 5 fields (minute hour day-of-month month day-of-week), found {}",
            trimmed.split_whitespace().count()
        ));
    }
    CronParser::builder()
        .seconds(Seconds::Disallowed)
        .year(Year::Disallowed)
        .build()
        .parse(trimmed)
        .map_err(|e| format!("{expression:?} is not a valid cron expression: {e}"))
}

/// The time between the next two runs of a valid cron expression, in seconds (for "late" alerts); `None` when the
/// expression is invalid or never runs again.
pub fn cron_period_seconds(expression: &str) -> Option<i64> {
    let cron = parse_cron(expression).ok()?;
    let now = jiff::Zoned::now().with_time_zone(jiff::tz::TimeZone::UTC);
    let first = cron.find_next_occurrence(&now, false).ok()?;
    let second = cron.find_next_occurrence(&first, false).ok()?;
    Some(second.timestamp().as_second() - first.timestamp().as_second())
}

fn check_date(problems: &mut Problems, field: &str, value: &str) {
    if value.parse::<jiff::civil::Date>().is_err() {
        problems.add(field, format!("{value:?} is not a calendar date (YYYY-MM-DD)"));
    }
}

/// Checks an EtlSchedule's spec.
pub fn etl_schedule(spec: &EtlScheduleSpec) -> Result<(), Problems> {
    let mut problems = Problems::default();
    if let Some(schedule) = &spec.schedule
        && let Err(message) = check_cron(schedule)
    {
        problems.add("spec.schedule", message);
    }
    if let Some(backfill) = &spec.backfill {
        check_date(&mut problems, "spec.backfill.from", &backfill.from);
        check_date(&mut problems, "spec.backfill.to", &backfill.to);
    }
    if spec.source.kind() == "invalid" {
        problems.add("spec.source", "set exactly one of csv, openaq or openMeteo");
    }
    for (field, url) in [
        (
            "spec.source.openaq.baseUrl",
            spec.source.openaq.as_ref().and_then(|s| s.base_url.as_deref()),
        ),
        (
            "spec.source.openMeteo.baseUrl",
            spec.source.open_meteo.as_ref().and_then(|s| s.base_url.as_deref()),
        ),
    ] {
        if let Some(url) = url
            && !(url.starts_with("http://") || url.starts_with("https://"))
        {
            problems.add(field, format!("{url:?} is not an http(s) URL"));
        }
    }
    problems.into_result()
}

/// Checks a PredictiveModel's spec.
pub fn predictive_model(spec: &PredictiveModelSpec) -> Result<(), Problems> {
    let mut problems = Problems::default();
    if spec.algorithm.name() == "invalid" {
        problems.add(
            "spec.algorithm",
            "set exactly one algorithm: knn, linear, neuralNetwork, gbm, ensemble, persistence, seasonalNaive or climatology",
        );
    }
    if let Some(ensemble) = &spec.algorithm.ensemble {
        if !(2..=8).contains(&ensemble.members.len()) {
            problems.add("spec.algorithm.ensemble.members", "give two to eight members");
        }
        for (i, member) in ensemble.members.iter().enumerate() {
            if member.algorithm().name() == "invalid" {
                problems.add(
                    &format!("spec.algorithm.ensemble.members[{i}]"),
                    "set exactly one algorithm: knn, linear, neuralNetwork, gbm, persistence, seasonalNaive or climatology",
                );
            }
        }
    }
    if let Some(schedule) = &spec.training.schedule
        && let Err(message) = check_cron(schedule)
    {
        problems.add("spec.training.schedule", message);
    }
    for (field, date) in [
        ("spec.training.from", &spec.training.from),
        ("spec.training.to", &spec.training.to),
    ] {
        if let Some(date) = date {
            check_date(&mut problems, field, date);
        }
    }
    if spec.features.lags.iter().any(|&lag| lag == 0 || lag > 8784) {
        problems.add("spec.features.lags", "each lag must be between 1 and 8784 hours");
    }
    if spec.target.stations.iter().any(|s| s.trim().is_empty()) {
        problems.add("spec.target.stations", "station names may not be empty");
    }
    problems.into_result()
}

/// The value of a Kubernetes quantity (`500m`, `1.5`, `2Gi`, `1e3`); `None` when the API server would not read it.
pub fn quantity(text: &str) -> Option<f64> {
    const SUFFIXES: [(&str, f64); 14] = [
        ("Ki", 1024.0),
        ("Mi", 1048576.0),
        ("Gi", 1073741824.0),
        ("Ti", 1099511627776.0),
        ("Pi", 1125899906842624.0),
        ("Ei", 1152921504606846976.0),
        ("n", 1e-9),
        ("u", 1e-6),
        ("m", 1e-3),
        ("k", 1e3),
        ("M", 1e6),
        ("G", 1e9),
        ("T", 1e12),
        ("P", 1e15),
    ];
    if !text.starts_with(|c: char| c.is_ascii_digit() || c == '.' || c == '+' || c == '-') {
        return None;
    }
    let (number, factor) = SUFFIXES
        .iter()
        .find_map(|(suffix, factor)| text.strip_suffix(suffix).map(|n| (n, *factor)))
        .unwrap_or((text, 1.0));
    let (number, factor) = match number.strip_suffix('E') {
        Some(n) => (n, 1e18),
        None => (number, factor),
    };
    number.parse::<f64>().ok().filter(|n| n.is_finite()).map(|n| n * factor)
}

/// Checks an AdhocService's spec.
pub fn adhoc_service(spec: &AdhocServiceSpec) -> Result<(), Problems> {
    let mut problems = Problems::default();
    if let Some(resources) = &spec.resources {
        for (part, amounts) in [("limits", &resources.limits), ("requests", &resources.requests)] {
            for (name, amount) in amounts.iter().flatten() {
                if quantity(&amount.0).is_none() {
                    problems.add(
                        &format!("spec.resources.{part}.{name}"),
                        format!("{:?} is not a quantity (e.g. 500m, 0.5, 256Mi, 1Gi)", amount.0),
                    );
                }
            }
        }
    }
    let prefix = spec.route.path_prefix.as_str();
    if prefix == "/" {
        problems.add(
            "spec.route.pathPrefix",
            "\"/\" is the dashboard's; choose a prefix such as /adhoc/<name>/",
        );
    }
    // The platform's routes, and the paths the gateway answers itself.
    if let Some(reserved) = crate::paths::overlapping(prefix) {
        problems.add(
            "spec.route.pathPrefix",
            format!("{prefix:?} overlaps {reserved:?}, which the platform's own services answer"),
        );
    }
    if let Some(limit) = &spec.route.rate_limit {
        if !(limit.requests_per_second.is_finite() && limit.requests_per_second > 0.0) {
            problems.add(
                "spec.route.rateLimit.requestsPerSecond",
                format!("must be above 0, not {}", limit.requests_per_second),
            );
        }
        if limit.burst == 0 {
            problems.add("spec.route.rateLimit.burst", "must be at least 1");
        }
    }
    if let Some(cors) = &spec.route.cors
        && cors.allow_credentials
        && cors.allowed_origins.iter().any(|o| o == "*")
    {
        problems.add(
            "spec.route.cors",
            "allowCredentials cannot be used with the origin \"*\": list the origins",
        );
    }
    if !spec.access.public && spec.access.groups.is_empty() {
        problems.add("spec.access", "set either public: true or a non-empty list of groups");
    }
    if spec.access.public && !spec.access.groups.is_empty() {
        problems.add("spec.access", "set either public: true or a list of groups, not both");
    }
    problems.into_result()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn adhoc(route: &str) -> AdhocServiceSpec {
        let yaml = format!("image: example/reports:1\nroute: {route}\naccess: {{ groups: [analysts] }}\n");
        serde_saphyr::from_str(&yaml).unwrap_or_else(|e| panic!("{yaml}: {e}"))
    }

    fn adhoc_problems(route: &str) -> String {
        adhoc_service(&adhoc(route))
            .err()
            .map(|p| p.to_string())
            .unwrap_or_default()
    }

    #[test]
    fn adhoc_routes_with_limits_and_cors_are_checked() {
        assert_eq!(
            adhoc_problems(
                "{ pathPrefix: /reports/, rateLimit: { requestsPerSecond: 5, burst: 10 }, cors: { allowedOrigins: [https://a.example] } }"
            ),
            ""
        );
        let message = adhoc_problems("{ pathPrefix: /reports/, rateLimit: { requestsPerSecond: 0, burst: 0 } }");
        assert!(message.contains("spec.route.rateLimit.requestsPerSecond"), "{message}");
        assert!(message.contains("spec.route.rateLimit.burst"), "{message}");
        let message =
            adhoc_problems("{ pathPrefix: /reports/, cors: { allowedOrigins: ['*'], allowCredentials: true } }");
        assert!(message.contains("spec.route.cors"), "{message}");
        let message = adhoc_problems("{ pathPrefix: /admin/reports/ }");
        assert!(message.contains("overlaps \"/admin/\""), "{message}");
    }

    #[test]
    fn quantities_are_read_as_the_api_server_reads_them() {
        for (text, value) in [
            ("500m", 0.5),
            ("0.5", 0.5),
            ("2Gi", 2.0 * 1073741824.0),
            ("1e3", 1000.0),
            ("1k", 1000.0),
        ] {
            assert_eq!(quantity(text), Some(value), "{text}");
        }
        for bad in ["lots", "", "Mi", " 1", "1 Gi", "1.5x", "inf", "NaN"] {
            assert_eq!(quantity(bad), None, "{bad:?}");
        }
        let mut spec = adhoc("{ pathPrefix: /reports/ }");
        spec.resources = serde_saphyr::from_str("limits: { cpu: lots, memory: 64Mi }").ok();
        let message = adhoc_service(&spec).err().map(|p| p.to_string()).unwrap_or_default();
        assert!(
            message.contains("spec.resources.limits.cpu") && !message.contains("memory"),
            "{message}"
        );
    }

    proptest::proptest! {
        /// Whatever the text, reading it as a quantity answers (no panic), and a number with a suffix reads back.
        #[test]
        fn any_text_read_as_a_quantity_answers(text in ".{0,12}", n in 0u32..100_000, suffix in "(|m|k|Ki|Mi|Gi|M|G)") {
            let _ = quantity(&text);
            let written = format!("{n}{suffix}");
            proptest::prop_assert!(quantity(&written).is_some(), "{}", written);
        }
    }

    #[test]
    fn a_schedules_period_is_the_time_between_its_next_two_runs() {
        assert_eq!(cron_period_seconds("15 * * * *"), Some(3_600));
        assert_eq!(cron_period_seconds("@daily"), Some(86_400));
        assert_eq!(cron_period_seconds("*/5 * * * *"), Some(300));
        assert_eq!(cron_period_seconds("every night"), None);
    }

    #[test]
    fn cron_expressions_are_read_like_a_cron_job() {
        for good in [
            "15 * * * *",
            "*/5 0-6 * * 1-5",
            "0 3 1 * *",
            "@hourly",
            "@daily",
            "0 0 * JAN,JUL SUN",
        ] {
            assert_eq!(check_cron(good), Ok(()), "{good}");
        }
        for bad in [
            "61 * * * *",
            "* * * *",
            "0 0 * * * *",
            "every hour",
            "0 25 * * *",
            "TZ=UTC 0 * * * *",
        ] {
            assert!(check_cron(bad).is_err(), "{bad} was accepted");
        }
        let message = check_cron("61 * * * *").err().unwrap_or_default();
        assert!(message.contains("\"61 * * * *\""), "{message}");
    }
}
