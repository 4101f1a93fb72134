//! Plain-text tables for people: a header row and aligned columns.

/// A table being filled row by row.
#[derive(Debug)]
pub(crate) struct Table {
    header: Vec<&'static str>,
    rows: Vec<Vec<String>>,
}

impl Table {
    pub(crate) fn new(header: &[&'static str]) -> Self {
        Table {
            header: header.to_vec(),
            rows: Vec::new(),
        }
    }

    pub(crate) fn row(&mut self, cells: Vec<String>) {
        self.rows.push(cells);
    }

    /// The table as text, each column as wide as its widest cell; `empty`
    /// alone when there are no rows.
    pub(crate) fn render(&self, empty: &str) -> String {
        if self.rows.is_empty() {
            return format!("{empty}\n");
        }
        let mut widths: Vec<usize> = self.header.iter().map(|h| h.chars().count()).collect();
        for row in &self.rows {
            for (i, cell) in row.iter().enumerate() {
                if let Some(width) = widths.get_mut(i) {
                    *width = (*width).max(cell.chars().count());
                }
            }
        }
        let line = |cells: &mut dyn Iterator<Item = &str>| {
            let mut out = String::new();
            for (i, cell) in cells.enumerate() {
                if i > 0 {
                    out.push_str("  ");
                }
                out.push_str(cell);
                let pad = widths.get(i).copied().unwrap_or(0)
                    - cell
                        .chars()
                        .count()
                        .min(widths.get(i).copied().unwrap_or(0));
                out.extend(std::iter::repeat_n(' ', pad));
            }
            out.truncate(out.trim_end().len());
            out.push('\n');
            out
        };
        let mut out = line(&mut self.header.iter().copied());
        for row in &self.rows {
            out.push_str(&line(&mut row.iter().map(String::as_str)));
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn columns_align_and_trailing_space_goes() {
        let mut table = Table::new(&["NAME", "N"]);
        table.row(vec!["sweep".into(), "1".into()]);
        table.row(vec!["a".into(), "22".into()]);
        assert_eq!(table.render("none"), "NAME   N\nsweep  1\na      22\n");
        assert_eq!(Table::new(&["X"]).render("no rows"), "no rows\n");
    }
}
