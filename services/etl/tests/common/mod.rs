//! The ETL tests' databases: a fresh PostgreSQL database of the test server, or a SQLite file; both migrated.

#![allow(dead_code, clippy::unwrap_used)]

use std::path::Path;

use airq_core::db::Database;
use airq_core::store::Store;

pub async fn postgres_store() -> (Store, airq_testenv::TestDatabase) {
    let db = airq_testenv::database().await.unwrap();
    let database = Database::connect_url(&db.url, 5).await.unwrap();
    database.migrate().await.unwrap();
    (Store::new(database), db)
}

pub async fn sqlite_store(dir: &Path, name: &str) -> Store {
    let url = format!("sqlite://{}", dir.join(name).display());
    let database = Database::connect_url(&url, 2).await.unwrap();
    database.migrate().await.unwrap();
    Store::new(database)
}
