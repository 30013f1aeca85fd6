//! The paths airq's own services answer behind the gateway. Each service builds its router from these constants and
//! the operator builds the gateway's route table from them, so that this is the one list of what an AdhocService
//! may not take over ([`reserved`]).

/// The front: the dashboard's API and files. The dashboard itself is at `/`, which no AdhocService may take either.
pub mod front {
    /// The stations, and below it one station, its series and its forecast.
    pub const STATIONS: &str = "/api/stations";
    pub const COMPARE: &str = "/api/compare";
    pub const OPS: &str = "/api/ops";
    pub const ANOMALIES: &str = "/api/anomalies";
    pub const OPENAPI: &str = "/api/openapi.json";
    /// The dashboard's page, also at `/`.
    pub const INDEX: &str = "/index.html";
    /// The dashboard's script, style sheet and icon.
    pub const ASSETS: &str = "/assets/";
    /// Every path the front answers, each with everything below it.
    pub const ALL: [&str; 7] = [STATIONS, COMPARE, OPS, ANOMALIES, OPENAPI, INDEX, ASSETS];
}

/// The predictive service's API, behind the gateway (the gateway strips the prefix).
pub const PREDICTIVE: &str = "/api/predictive/";
/// The ETL service's API, behind the gateway (the gateway strips the prefix).
pub const ETL: &str = "/api/etl/";
/// Prefixes kept for the platform itself.
pub const KEPT: [&str; 2] = ["/api/front/", "/api/admin/"];

/// Every path an AdhocService's prefix may not overlap: the services' own, the kept ones and the paths the gateway
/// answers itself.
pub fn reserved() -> impl Iterator<Item = &'static str> {
    front::ALL
        .into_iter()
        .chain([PREDICTIVE, ETL])
        .chain(KEPT)
        .chain(crate::gateway::GATEWAY_PATHS)
}

/// The reserved path that `prefix` overlaps (one of them is a prefix of the other), if any.
pub fn overlapping(prefix: &str) -> Option<&'static str> {
    reserved().find(|reserved| prefix.starts_with(reserved) || reserved.starts_with(prefix))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_fronts_api_and_files_are_reserved_and_other_prefixes_are_not() {
        for taken in [
            "/api/stations/",
            "/api/stations",
            "/api/compare/",
            "/api/ops",
            "/api/",
            "/assets/x/",
            "/index.html",
        ] {
            assert!(overlapping(taken).is_some(), "{taken}");
        }
        for free in ["/adhoc/reports/", "/reports/", "/apix/"] {
            assert_eq!(overlapping(free), None, "{free}");
        }
    }
}
