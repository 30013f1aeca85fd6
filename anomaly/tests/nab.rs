//! The detectors on NAB's real labelled series (`../shared/data/nab`), with NAB's standard profile and a threshold
//! chosen over the whole corpus for each detector: the seasonal detector must beat both baselines. The full table
//! (every profile, more variants) is printed by `cargo bench -p airq-anomaly --bench nab`.

use std::path::PathBuf;

use airq_anomaly::corpus::{self, Series};
use airq_anomaly::detector::{Detector, FixedThreshold, RollingZ, Seasonal};
use airq_anomaly::evaluate;
use airq_anomaly::nab::{Profile, probationary_rows};

const DAY: i64 = 86_400;

fn best(corpus: &[Series], make: impl Fn(&Series) -> Box<dyn Detector>) -> evaluate::Outcome {
    let scores = evaluate::score(corpus, make);
    let thresholds: Vec<f64> = (4..=80).map(|q| f64::from(q) / 4.0).collect();
    evaluate::best(
        corpus,
        &scores,
        Profile::STANDARD,
        &thresholds,
        &[0, 3_600, 6 * 3_600, DAY],
    )
    .expect("thresholds")
}

#[test]
fn on_the_nab_corpus_the_seasonal_detector_beats_the_baselines() {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../shared/data/nab");
    let corpus = corpus::load(&dir).unwrap_or_else(|e| panic!("the NAB corpus beside the repository: {e}"));
    assert_eq!(corpus.len(), 24, "NAB's realAWSCloudwatch and realKnownCause series");
    assert_eq!(corpus.iter().map(|s| s.windows.len()).sum::<usize>(), 49);

    let seasonal = best(&corpus, |s| {
        Box::new(Seasonal::new(s.rows_in(DAY), 7, 2, s.rows_in(DAY)))
    });
    let rolling = best(&corpus, |s| Box::new(RollingZ::new(s.rows_in(DAY))));
    let fixed = best(&corpus, |s| {
        Box::new(FixedThreshold::new(probationary_rows(s.values.len())))
    });
    assert!(
        seasonal.score > rolling.score && seasonal.score > fixed.score,
        "seasonal {seasonal:?}\nrolling {rolling:?}\nfixed {fixed:?}"
    );
    assert!(
        seasonal.detected * 4 >= seasonal.windows * 3,
        "finds three windows in four: {seasonal:?}"
    );
}
