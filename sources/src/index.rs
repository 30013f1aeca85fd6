//! A folder of files served over HTTP: a URL ending in `/` names an index — a web server's directory listing (HTML,
//! as nginx's `autoindex`, Apache or `python3 -m http.server` write it) or a plain-text list, one file per line — and
//! the load reads every `.csv` and `.csv.gz` file it links to, as it reads every such file of a local folder.
//!
//! Only files under the index's own URL are followed: a listing's links to parent folders, other hosts or query
//! strings are left out, so an index can never send the load elsewhere.

use std::sync::LazyLock;

use reqwest::Url;

use super::SourceError;

/// An `href` attribute's value, quoted with either quote.
static HREF: LazyLock<regex::Regex> = LazyLock::new(|| {
    regex::Regex::new(r#"(?i)\bhref\s*=\s*(?:"([^"]*)"|'([^']*)')"#).unwrap_or_else(|e| panic!("the href pattern: {e}"))
});

/// Whether `url` names an index (a folder) rather than a file.
pub fn is_index(url: &str) -> bool {
    Url::parse(url).is_ok_and(|u| u.path().ends_with('/'))
}

/// The files an index lists: the `.csv` and `.csv.gz` links of an HTML listing, or the lines of a plain-text one,
/// resolved against `base`, kept only under `base`, without duplicates, sorted.
pub fn files(base: &Url, body: &str, html: bool) -> Vec<Url> {
    let links: Vec<&str> = if html {
        HREF.captures_iter(body)
            .filter_map(|c| c.get(1).or_else(|| c.get(2)))
            .map(|m| m.as_str())
            .collect()
    } else {
        body.lines()
            .map(str::trim)
            .filter(|l| !l.is_empty() && !l.starts_with('#'))
            .collect()
    };
    let mut found: Vec<Url> = links
        .into_iter()
        .filter_map(|link| base.join(&decode_entities(link)).ok())
        .filter(|url| under(base, url) && is_csv(url))
        .collect();
    found.sort();
    found.dedup();
    found
}

/// HTML listings write `&` as `&amp;` inside attributes.
fn decode_entities(link: &str) -> String {
    link.replace("&amp;", "&")
}

fn under(base: &Url, url: &Url) -> bool {
    url.scheme() == base.scheme()
        && url.host_str() == base.host_str()
        && url.port_or_known_default() == base.port_or_known_default()
        && url.query().is_none()
        && url.path().starts_with(base.path())
        && url.path().len() > base.path().len()
        // No parent segments left after resolution, and a file rather than a sub-folder.
        && !url.path()[base.path().len()..].split('/').any(|s| s == ".." || s.is_empty())
}

fn is_csv(url: &Url) -> bool {
    let path = url.path().to_ascii_lowercase();
    path.ends_with(".csv") || path.ends_with(".csv.gz")
}

/// Fetches the index at `url` and returns the files it lists.
pub async fn fetch(client: &reqwest::Client, url: &str) -> Result<Vec<Url>, SourceError> {
    let error = |detail: String| SourceError::Http {
        input: url.to_owned(),
        detail,
    };
    let base = Url::parse(url).map_err(|e| error(format!("not a URL: {e}")))?;
    let response = client
        .get(base.clone())
        .send()
        .await
        .map_err(|e| error(format!("cannot read the index: {e}")))?;
    if !response.status().is_success() {
        return Err(error(format!("the index: the server answered {}", response.status())));
    }
    let html = response
        .headers()
        .get(reqwest::header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|t| t.to_ascii_lowercase().contains("html"));
    let body = response
        .text()
        .await
        .map_err(|e| error(format!("cannot read the index: {e}")))?;
    let found = files(&base, &body, html);
    if found.is_empty() {
        return Err(error(
            "the index lists no .csv or .csv.gz file under it (a URL ending in / is read as a folder's index)"
                .to_owned(),
        ));
    }
    Ok(found)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn base() -> Url {
        Url::parse("http://files.example:8000/beijing/").unwrap_or_else(|e| panic!("{e}"))
    }

    fn names(found: &[Url]) -> Vec<&str> {
        found
            .iter()
            .map(|u| u.path().rsplit('/').next().unwrap_or_default())
            .collect()
    }

    #[test]
    fn a_python_http_server_listing_gives_its_csv_files() {
        let body = r#"<!DOCTYPE HTML><html><head><title>Directory listing for /beijing/</title></head><body>
<ul>
<li><a href="PRSA_Data_Dongsi_20130301-20170228.csv.gz">PRSA_Data_Dongsi_20130301-20170228.csv.gz</a></li>
<li><a href="PRSA_Data_Aotizhongxin_20130301-20170228.csv.gz">PRSA_Data_Aotizhongxin_20130301-20170228.csv.gz</a></li>
<li><a href="README.md">README.md</a></li>
<li><a href="old/">old/</a></li>
</ul></body></html>"#;
        let found = files(&base(), body, true);
        assert_eq!(
            names(&found),
            [
                "PRSA_Data_Aotizhongxin_20130301-20170228.csv.gz",
                "PRSA_Data_Dongsi_20130301-20170228.csv.gz"
            ]
        );
    }

    #[test]
    fn an_nginx_listing_with_a_parent_link_and_absolute_links() {
        let body = "<html><body><h1>Index of /beijing/</h1><hr><pre><a href=\"../\">../</a>\n\
            <a href='a%20b.CSV'>a b.CSV</a>  06-Dec-2026 10:00  12\n\
            <a href=\"/beijing/c.csv\">c.csv</a>\n\
            <a href=\"/other/d.csv\">d.csv</a>\n\
            <a href=\"http://elsewhere.example/beijing/e.csv\">e.csv</a>\n\
            <a href=\"../beijing/f.csv\">f.csv</a>\n\
            <a href=\"g.csv?download=1\">g</a>\n\
            <A HREF=\"h.csv\">h</A></pre></body></html>";
        let found = files(&base(), body, true);
        assert_eq!(names(&found), ["a%20b.CSV", "c.csv", "f.csv", "h.csv"]);
    }

    #[test]
    fn a_plain_text_index_lists_one_file_per_line() {
        let body = "# the Beijing files\nx.csv\n\n  y.csv.gz  \nhttp://files.example:8000/beijing/z.csv\nnot-csv.txt\n";
        assert_eq!(names(&files(&base(), body, false)), ["x.csv", "y.csv.gz", "z.csv"]);
    }

    #[test]
    fn only_a_url_ending_in_a_slash_is_an_index() {
        assert!(is_index("http://h/data/"));
        assert!(!is_index("http://h/data/file.csv"));
        assert!(!is_index("../shared/data/beijing-multisite"));
    }

    proptest::proptest! {
        /// Whatever a listing holds, only files under the index are followed, each once.
        #[test]
        fn whatever_the_listing_only_files_under_the_index_are_followed(
            links in proptest::collection::vec("[a-zA-Z0-9./:?#%_-]{0,30}", 0..20),
            html in proptest::bool::ANY,
        ) {
            let body = if html {
                links.iter().map(|l| format!("<a href=\"{l}\">x</a>")).collect::<Vec<_>>().join("\n")
            } else {
                links.join("\n")
            };
            let found = files(&base(), &body, html);
            let mut unique = found.clone();
            unique.dedup();
            proptest::prop_assert_eq!(unique.len(), found.len());
            for url in found {
                proptest::prop_assert!(url.as_str().starts_with(base().as_str()), "{}", url);
                proptest::prop_assert!(url.query().is_none());
                proptest::prop_assert!(is_csv(&url));
            }
        }
    }
}
