//! Stations: created or refreshed as loads describe them, listed by code.

use super::{NewStation, Result, Station, Store, sql};
use crate::on_pool;

impl Store {
    /// Creates the station, or refreshes its name and position; returns its id.
    pub async fn ensure_station(&self, station: &NewStation) -> Result<i64> {
        const UPSERT: &str =
            "insert into stations (code, name, source, latitude, longitude) values ($1, $2, $3, $4, $5)
             on conflict (code) do update set name = excluded.name,
                 latitude = coalesce(excluded.latitude, stations.latitude),
                 longitude = coalesce(excluded.longitude, stations.longitude)
             returning id";
        on_pool!(&self.db, pool => sqlx::query_scalar(UPSERT)
            .bind(&station.code)
            .bind(&station.name)
            .bind(&station.source)
            .bind(station.latitude)
            .bind(station.longitude)
            .fetch_one(pool)
            .await)
        .map_err(sql("storing a station"))
    }

    /// Every station, by code.
    pub async fn stations(&self) -> Result<Vec<Station>> {
        const SELECT: &str = "select id, code, name, source, latitude, longitude from stations order by code";
        on_pool!(&self.db, pool => sqlx::query_as(SELECT).fetch_all(pool).await).map_err(sql("reading stations"))
    }
}
