//! Anomaly detection for airq's own metrics and for the measurements it loads.
//!
//! - [`detector`]: streaming detectors — a seasonal baseline with robust bands, and two simple baselines.
//! - [`watch`]: live signals followed by the seasonal detector, with anomalies that open and close.
//! - [`quality`]: marks for hourly measurements — a stuck sensor, a jump — that a load recomputes from stored data.
//! - [`nab`]: the Numenta Anomaly Benchmark's scoring, written from its published rules, to evaluate detectors on
//!   labelled series; [`corpus`] reads series in NAB's layout and [`evaluate`] sweeps thresholds as NAB does.

pub mod corpus;
pub mod detector;
pub mod evaluate;
pub mod nab;
pub mod quality;
pub mod watch;
