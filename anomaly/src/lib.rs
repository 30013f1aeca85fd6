//! Anomaly detection for airq's own metrics and for the measurements it loads.
//!
//! - [`detector`]: streaming detectors — a seasonal baseline with robust bands, and two simple baselines.
//! - [`nab`]: the Numenta Anomaly Benchmark's scoring, written from its published rules, to evaluate detectors on
//!   labelled series; [`corpus`] reads series in NAB's layout and [`evaluate`] sweeps thresholds as NAB does.

pub mod corpus;
pub mod detector;
pub mod evaluate;
pub mod nab;
pub mod watch;
