//! The detectors on NAB's real labelled series (`../shared/data/nab`), judged held out: each detector's threshold is
//! chosen on one NAB category and scored on the other, both ways, with NAB's standard profile. Only what that table
//! shows is asserted. The full tables (every profile, in sample too) are printed by
//! `cargo bench -p airq-anomaly --bench nab`.

use std::path::PathBuf;

use airq_anomaly::corpus::{self, Series};
use airq_anomaly::detector::{Detector, FixedThreshold, RollingZ, Seasonal};
use airq_anomaly::evaluate::{self, HeldOut};
use airq_anomaly::nab::{Profile, probationary_rows};

const DAY: i64 = 86_400;

fn held_out(corpus: &[Series], profile: Profile, make: impl Fn(&Series) -> Box<dyn Detector>) -> HeldOut {
    let scores = evaluate::score(corpus, make);
    let thresholds: Vec<f64> = (4..=80).map(|q| f64::from(q) / 4.0).collect();
    let first = evaluate::category(&corpus[0]).to_owned();
    evaluate::held_out(
        corpus,
        &scores,
        profile,
        &thresholds,
        &[0, 3_600, 6 * 3_600, DAY],
        |s| evaluate::category(s) == first,
    )
    .expect("two categories with windows")
}

#[test]
fn held_out_the_seasonal_detector_beats_a_fixed_threshold_and_misses_the_fewest_windows() {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../shared/data/nab");
    let corpus = corpus::load(&dir).unwrap_or_else(|e| panic!("the NAB corpus beside the repository: {e}"));
    assert_eq!(corpus.len(), 24, "NAB's realAWSCloudwatch and realKnownCause series");
    assert_eq!(corpus.iter().map(|s| s.windows.len()).sum::<usize>(), 49);
    let seasonal = |s: &Series| -> Box<dyn Detector> { Box::new(Seasonal::new(s.rows_in(DAY), 7, 2, s.rows_in(DAY))) };
    let rolling = |s: &Series| -> Box<dyn Detector> { Box::new(RollingZ::new(s.rows_in(DAY))) };
    let fixed = |s: &Series| -> Box<dyn Detector> { Box::new(FixedThreshold::new(probationary_rows(s.values.len()))) };

    let standard = [seasonal, rolling, fixed].map(|make| held_out(&corpus, Profile::STANDARD, make));
    let [seasonal_std, rolling_std, fixed_std] = standard;
    assert!(
        seasonal_std.score > fixed_std.score + 5.0,
        "{seasonal_std:?}\n{fixed_std:?}"
    );
    // Against the 1-day rolling z-score it is a tie on the standard profile (within one window's worth).
    assert!(
        (seasonal_std.score - rolling_std.score).abs() < 3.0,
        "{seasonal_std:?}\n{rolling_std:?}"
    );
    assert!(
        seasonal_std.detected * 3 >= seasonal_std.windows * 2,
        "two windows in three: {seasonal_std:?}"
    );

    let low_fn = [seasonal, rolling, fixed].map(|make| held_out(&corpus, Profile::REWARD_LOW_FN, make));
    assert!(
        low_fn[0].score > low_fn[1].score && low_fn[0].score > low_fn[2].score,
        "{low_fn:?}"
    );
}
