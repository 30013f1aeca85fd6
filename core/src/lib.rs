//! What every airq binary shares: configuration flags, telemetry (JSON logs, Prometheus metrics), the HTTP serving
//! set-up with its operational endpoints, and the database connection with its migrations.

pub mod config;
pub mod db;
pub mod http;
pub mod log_sink;
pub mod openapi;
pub mod parameter;
pub mod service;
pub mod store;
pub mod telemetry;
pub mod time;
