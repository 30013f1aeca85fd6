//! The canonical form of a request path, computed once before routing: the gateway matches routes on it, checks
//! access on it and forwards it, so an upstream never sees a path other than the one that was authorised. Tricks
//! such as `/a/../admin`, `//admin` or `/%2e%2e/admin` become the plain path they stand for; what has no plain form
//! (an encoded `/` or `\`, a NUL) is refused.

use std::fmt::Write as _;

/// Why a path cannot be routed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PathError {
    #[error("the path must start with '/'")]
    NotAbsolute,
    #[error("the path has a malformed percent-escape at byte {0}")]
    BadEscape(usize),
    #[error("the path has an encoded '/' or '\\' (at byte {0}), which the gateway does not route")]
    EncodedSeparator(usize),
    #[error("the path has a control character or backslash at byte {0}")]
    ForbiddenCharacter(usize),
    #[error("the path climbs above the root with '..'")]
    AboveRoot,
}

/// Characters RFC 3986 calls unreserved: a `%XX` escape of one of them means the character itself.
fn unreserved(byte: u8) -> bool {
    byte.is_ascii_alphanumeric() || matches!(byte, b'-' | b'.' | b'_' | b'~')
}

fn hex(byte: u8) -> Option<u8> {
    match byte {
        b'0'..=b'9' => Some(byte - b'0'),
        b'a'..=b'f' => Some(byte - b'a' + 10),
        b'A'..=b'F' => Some(byte - b'A' + 10),
        _ => None,
    }
}

/// The canonical path: escapes of unreserved characters decoded, other escapes in upper case, empty segments
/// (`//`) and `.` segments removed, `..` segments applied. A trailing `/` is kept.
pub fn canonical(raw: &str) -> Result<String, PathError> {
    let bytes = raw.as_bytes();
    if bytes.first() != Some(&b'/') {
        return Err(PathError::NotAbsolute);
    }
    // First pass: normalise escapes into `decoded`, still as one string of segments.
    let mut decoded = String::with_capacity(raw.len());
    let mut i = 0;
    while i < bytes.len() {
        let byte = bytes[i];
        match byte {
            b'%' => {
                let (Some(high), Some(low)) = (
                    bytes.get(i + 1).copied().and_then(hex),
                    bytes.get(i + 2).copied().and_then(hex),
                ) else {
                    return Err(PathError::BadEscape(i));
                };
                let value = high * 16 + low;
                if value == b'/' || value == b'\\' {
                    return Err(PathError::EncodedSeparator(i));
                }
                if value < 0x20 || value == 0x7f {
                    return Err(PathError::ForbiddenCharacter(i));
                }
                if unreserved(value) {
                    decoded.push(char::from(value));
                } else {
                    let _ = write!(decoded, "%{value:02X}");
                }
                i += 3;
            }
            b'\\' => return Err(PathError::ForbiddenCharacter(i)),
            byte if byte < 0x20 || byte == 0x7f => return Err(PathError::ForbiddenCharacter(i)),
            _ => {
                // Multi-byte UTF-8 and reserved characters pass through as they came.
                let width = raw[i..].chars().next().map_or(1, char::len_utf8);
                decoded.push_str(&raw[i..i + width]);
                i += width;
            }
        }
    }
    // Second pass: segments.
    let trailing_slash = decoded.ends_with('/');
    let mut segments: Vec<&str> = Vec::new();
    let mut ends_in_directory = trailing_slash;
    for segment in decoded.split('/') {
        match segment {
            "" => {}
            "." => ends_in_directory = true,
            ".." => {
                if segments.pop().is_none() {
                    return Err(PathError::AboveRoot);
                }
                ends_in_directory = true;
            }
            other => {
                segments.push(other);
                ends_in_directory = trailing_slash;
            }
        }
    }
    let mut path = String::with_capacity(decoded.len());
    for segment in &segments {
        path.push('/');
        path.push_str(segment);
    }
    if path.is_empty() || ends_in_directory {
        path.push('/');
    }
    Ok(path)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn plain_paths_stay_as_they_are() {
        for path in ["/", "/api/etl/loads", "/api/etl/", "/a/b.c/d_e~f", "/caf\u{e9}"] {
            assert_eq!(canonical(path).as_deref(), Ok(path));
        }
    }

    #[test]
    fn tricks_become_the_path_they_stand_for() {
        let cases = [
            ("/a/../admin", "/admin"),
            ("//admin", "/admin"),
            ("/api//etl///loads", "/api/etl/loads"),
            ("/x/%2e%2e/admin/users", "/admin/users"),
            ("/x/%2E%2e/admin", "/admin"),
            ("/./admin/./users", "/admin/users"),
            ("/api/etl/..", "/api/"),
            ("/api/etl/.", "/api/etl/"),
            ("/%61dmin", "/admin"),
            ("/a%20b", "/a%20b"),
            ("/a%3fb", "/a%3Fb"),
        ];
        for (raw, expected) in cases {
            assert_eq!(canonical(raw).as_deref(), Ok(expected), "{raw}");
        }
    }

    #[test]
    fn paths_without_a_plain_form_are_refused() {
        assert_eq!(canonical("/a%2fb"), Err(PathError::EncodedSeparator(2)));
        assert_eq!(canonical("/a%2Fb"), Err(PathError::EncodedSeparator(2)));
        assert_eq!(canonical("/a%5cb"), Err(PathError::EncodedSeparator(2)));
        assert_eq!(canonical("/a\\b"), Err(PathError::ForbiddenCharacter(2)));
        assert_eq!(canonical("/a%00"), Err(PathError::ForbiddenCharacter(2)));
        assert_eq!(canonical("/a%zz"), Err(PathError::BadEscape(2)));
        assert_eq!(canonical("/a%2"), Err(PathError::BadEscape(2)));
        assert_eq!(canonical("/.."), Err(PathError::AboveRoot));
        assert_eq!(canonical("/%2e%2e/admin"), Err(PathError::AboveRoot));
        assert_eq!(canonical("admin"), Err(PathError::NotAbsolute));
    }
}
