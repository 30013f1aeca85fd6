//! Anomaly detection for airq's own metrics and for the measurements it loads.
//!
//! - [`nab`]: the Numenta Anomaly Benchmark's scoring, written from its published rules, to evaluate detectors on
//!   labelled series.
//! - [`detector`]: streaming detectors — a seasonal baseline with robust bands, and two simple baselines.

pub mod detector;
pub mod nab;
