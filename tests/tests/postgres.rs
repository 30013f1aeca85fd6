//! The test PostgreSQL server is a real PostgreSQL 15, each test gets its own database, and airq's migrations run on it.

use airq_core::db::Database;
use airq_testenv::database;

#[tokio::test]
async fn server_is_postgresql_15() -> anyhow::Result<()> {
    let db = database().await?;
    let (version,): (String,) = sqlx::query_as("select version()").fetch_one(&db.pool).await?;
    assert!(version.starts_with("PostgreSQL 15."), "{version}");
    let (setting,): (String,) = sqlx::query_as("show server_version_num").fetch_one(&db.pool).await?;
    assert!(setting.starts_with("15"), "{setting}");
    Ok(())
}

#[tokio::test]
async fn each_test_database_is_separate() -> anyhow::Result<()> {
    let (first, second) = (database().await?, database().await?);
    assert_ne!(first.name, second.name);
    sqlx::query("create table only_here (id int)")
        .execute(&first.pool)
        .await?;
    let (in_second,): (i64,) =
        sqlx::query_as("select count(*) from information_schema.tables where table_name = 'only_here'")
            .fetch_one(&second.pool)
            .await?;
    assert_eq!(in_second, 0);
    Ok(())
}

#[tokio::test]
async fn migrations_create_the_reference_tables_once() -> anyhow::Result<()> {
    let test_db = database().await?;
    let db = Database::connect_url(&test_db.url, 2).await?;
    db.migrate().await?;
    db.migrate().await?;
    let Database::Postgres(pool) = &db else {
        anyhow::bail!("expected PostgreSQL for {}", test_db.url);
    };
    let (applied,): (i64,) = sqlx::query_as("select count(*) from _sqlx_migrations where success")
        .fetch_one(pool)
        .await?;
    let on_disk = std::fs::read_dir(concat!(env!("CARGO_MANIFEST_DIR"), "/../core/migrations/postgres"))?.count();
    assert_eq!(usize::try_from(applied)?, on_disk);
    let pollutants: Vec<(String, String)> =
        sqlx::query_as("select code, unit from parameters where kind = 'pollutant' order by code")
            .fetch_all(pool)
            .await?;
    assert!(
        pollutants.contains(&("pm25".to_owned(), "ug/m3".to_owned())),
        "{pollutants:?}"
    );
    // The foreign key is enforced by the real server.
    let bad = sqlx::query("insert into parameters (code, name, unit, kind) values ('x', 'x', 'furlongs', 'pollutant')")
        .execute(pool)
        .await;
    assert!(bad.is_err(), "a pollutant with an unknown unit was accepted");
    db.close().await;
    Ok(())
}
