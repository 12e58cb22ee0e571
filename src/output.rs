//! Printing user-controlled text safely.
//!
//! File names can hold anything but `/` and NUL: terminal escape sequences,
//! newlines, or a leading `=` that a spreadsheet would run as a formula.

/// Escapes control characters so a name cannot move the cursor, recolour the
/// terminal or fake extra lines.
pub fn terminal_safe(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            c if c.is_control() => out.push_str(&format!("\\u{{{:x}}}", c as u32)),
            c => out.push(c),
        }
    }
    out
}

/// Neutralises spreadsheet formulas (OWASP's CSV injection advice): a cell
/// starting with `=`, `+`, `-`, `@`, tab or CR gets a leading `'`.
pub fn csv_safe(s: &str) -> String {
    match s.chars().next() {
        Some('=' | '+' | '-' | '@' | '\t' | '\r') => format!("'{s}"),
        _ => s.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn escapes_and_formulas_are_neutralised() {
        assert_eq!(terminal_safe("a\x1b[31mred\nb.jpg"), "a\\u{1b}[31mred\\nb.jpg");
        assert_eq!(csv_safe("=HYPERLINK(\"x\")"), "'=HYPERLINK(\"x\")");
        assert_eq!(csv_safe("/photos/violin.jpg"), "/photos/violin.jpg");
    }
}
