//! Columns aligned the way `kubectl get` prints them.

/// Prints `rows` under `header`, each column as wide as its widest cell, separated by three spaces; the last column
/// is not padded.
pub fn print(header: &[&str], rows: &[Vec<String>]) {
    print!("{}", render(header, rows));
}

pub fn render(header: &[&str], rows: &[Vec<String>]) -> String {
    let mut widths: Vec<usize> = header.iter().map(|h| h.chars().count()).collect();
    for row in rows {
        for (i, cell) in row.iter().enumerate() {
            if let Some(width) = widths.get_mut(i) {
                *width = (*width).max(cell.chars().count());
            }
        }
    }
    let mut out = String::new();
    let header: Vec<String> = header.iter().map(|h| (*h).to_owned()).collect();
    for row in std::iter::once(&header).chain(rows) {
        let last = row.len().saturating_sub(1);
        for (i, cell) in row.iter().enumerate() {
            out.push_str(cell);
            if i < last {
                let pad = widths.get(i).copied().unwrap_or(0) - cell.chars().count() + 3;
                out.push_str(&" ".repeat(pad));
            }
        }
        out.push('\n');
    }
    out
}

#[cfg(test)]
mod tests {
    #[test]
    fn columns_are_as_wide_as_their_widest_cell() {
        let text = super::render(
            &["KIND", "NAME", "READY"],
            &[
                vec!["Platform".into(), "airq".into(), "True".into()],
                vec!["PredictiveModel".into(), "pm25".into(), "False".into()],
            ],
        );
        assert_eq!(
            text,
            "KIND              NAME   READY\nPlatform          airq   True\nPredictiveModel   pm25   False\n"
        );
    }
}
