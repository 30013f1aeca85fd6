//! Property tests (a fuzzer run with every test) of the path canonicaliser: on any input it returns an error or a
//! path that is already canonical and holds no trick, never panics; the corpus in `tests/corpus/paths.txt` (paths
//! attackers send) is checked each time. `PROPTEST_CASES=1000000 cargo test -p airq-gateway --test path_fuzz` runs
//! it longer (docs/benchmarks.md says how long it ran without a finding).

use airq_gateway::path::canonical;
use proptest::prelude::*;

/// What every canonical path holds.
fn check(raw: &str) -> Result<(), TestCaseError> {
    let Ok(path) = canonical(raw) else {
        return Ok(());
    };
    prop_assert!(path.starts_with('/'), "{raw:?} → {path:?}");
    prop_assert!(!path.contains("//"), "{raw:?} → {path:?}");
    for segment in path.split('/') {
        prop_assert!(segment != "." && segment != "..", "{raw:?} → {path:?}");
    }
    prop_assert!(
        !path.bytes().any(|b| b < 0x20 || b == 0x7f || b == b'\\'),
        "{raw:?} → {path:?}"
    );
    let upper = path.to_ascii_uppercase();
    prop_assert!(!upper.contains("%2F") && !upper.contains("%5C"), "{raw:?} → {path:?}");
    // Escapes are upper case and never stand for an unreserved character (those are decoded).
    let bytes = path.as_bytes();
    for (i, &b) in bytes.iter().enumerate() {
        if b == b'%' {
            let escape = &path[i + 1..(i + 3).min(path.len())];
            prop_assert!(
                escape.len() == 2 && escape.bytes().all(|c| c.is_ascii_digit() || (b'A'..=b'F').contains(&c)),
                "{raw:?} → {path:?}"
            );
            let value = u8::from_str_radix(escape, 16).unwrap_or(0);
            prop_assert!(
                !(value.is_ascii_alphanumeric() || matches!(value, b'-' | b'.' | b'_' | b'~')),
                "{raw:?} → {path:?}"
            );
        }
    }
    // Canonical already: a second pass changes nothing.
    prop_assert_eq!(canonical(&path), Ok(path.clone()), "{:?}", raw);
    Ok(())
}

/// Paths made of the pieces tricks are made of.
fn tricky() -> impl Strategy<Value = String> {
    let piece = prop_oneof![
        Just("/"),
        Just(".."),
        Just("."),
        Just("%2e"),
        Just("%2E"),
        Just("%2f"),
        Just("%5c"),
        Just("%25"),
        Just("%"),
        Just("%7e"),
        Just("%41"),
        Just("%00"),
        Just("\\"),
        Just(";"),
        Just("a"),
        Just("admin"),
        Just("private"),
        Just("é"),
        Just("~"),
    ];
    proptest::collection::vec(piece, 0..16).prop_map(|pieces| format!("/{}", pieces.concat()))
}

proptest! {
    #[test]
    fn any_text_is_refused_or_made_canonical(raw in any::<String>()) {
        check(&raw)?;
    }

    #[test]
    fn paths_of_trick_pieces_are_refused_or_made_canonical(raw in tricky()) {
        check(&raw)?;
    }

    #[test]
    fn plain_paths_are_their_own_canonical_form(segments in proptest::collection::vec("[a-z0-9_~-]{1,8}", 0..6)) {
        let path = format!("/{}", segments.join("/"));
        prop_assert_eq!(canonical(&path), Ok(path.clone()));
    }
}

#[test]
fn the_corpus_holds() {
    let corpus = include_str!("corpus/paths.txt");
    let mut checked = 0;
    for line in corpus.lines().filter(|l| !l.starts_with('#') && !l.is_empty()) {
        check(line).unwrap_or_else(|e| panic!("{line:?}: {e}"));
        checked += 1;
    }
    assert!(checked >= 40, "{checked}");
    // Tricks that climb above the root or hide a separator have no plain form: refused.
    for trick in [
        "/%2e%2e/admin",
        "/a/%2e%2e/%2e%2e/admin",
        "/..%2fadmin",
        "/a\\..\\admin",
    ] {
        assert!(canonical(trick).is_err(), "{trick} → {:?}", canonical(trick));
    }
}
