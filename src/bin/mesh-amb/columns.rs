//! Text tables for a terminal: aligned columns, and names from the network
//! made harmless to print.

use mesh_amb::discovery::wire::is_bidi_control;

/// Rows (the first one a header) in columns two spaces apart, each line
/// without trailing blanks.
pub fn aligned(rows: &[Vec<String>]) -> String {
    let columns = rows.iter().map(Vec::len).max().unwrap_or(0);
    let mut widths = vec![0usize; columns];
    for row in rows {
        for (w, cell) in widths.iter_mut().zip(row) {
            *w = (*w).max(cell.chars().count());
        }
    }
    let mut out = String::new();
    for row in rows {
        let mut line = String::new();
        for (n, (cell, w)) in row.iter().zip(&widths).enumerate() {
            if n > 0 {
                line.push_str("  ");
            }
            line.push_str(cell);
            line.extend(std::iter::repeat_n(' ', w - cell.chars().count()));
        }
        out.push_str(line.trim_end());
        out.push('\n');
    }
    out
}

/// Names came from the link: control characters are shown escaped, so a
/// record cannot move the cursor or forge rows on the operator's terminal,
/// and so are bidi controls, so that it cannot reorder a line or pass for
/// another name on a terminal that honours them.
pub fn escape(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        if c.is_control() || is_bidi_control(c) {
            out.extend(c.escape_default());
        } else {
            out.push(c);
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_from_the_link_cannot_steer_the_terminal() {
        assert_eq!(escape("a\u{1b}[2Jb\n"), "a\\u{1b}[2Jb\\n");
        assert_eq!(escape("\u{202e}1h@bew"), "\\u{202e}1h@bew");
        assert_eq!(escape("\u{2067}x\u{2069}"), "\\u{2067}x\\u{2069}");
        assert_eq!(escape("שלום <b>&"), "שלום <b>&", "letters and markup stay");
    }
}
