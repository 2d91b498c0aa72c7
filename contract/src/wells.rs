//! Well names: `A01`, `a1`, `A-01` and `r01c01` are the same well.

/// A well name → (row, column), both 0-based. Accepts what instruments and people write:
/// `A01`, `A1`, `a01`, `A-01`, `A_1`, `A 01`, and two-letter rows (`AF48`) of 1536-well plates.
/// `None` for anything else (no letters, column 0, trailing text).
pub fn parse_well(s: &str) -> Option<(usize, usize)> {
    let s = s.trim();
    let n_letters = s.bytes().take_while(u8::is_ascii_alphabetic).count();
    if n_letters == 0 || n_letters > 2 {
        return None;
    }
    let (letters, rest) = s.split_at(n_letters);
    let digits = rest.strip_prefix(['-', '_', ' ']).unwrap_or(rest);
    if digits.is_empty() || digits.len() > 3 || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    let col: usize = digits.parse().ok()?;
    if col == 0 {
        return None;
    }
    let row = letters.bytes().fold(0usize, |acc, b| {
        acc * 26 + (b.to_ascii_uppercase() - b'A') as usize + 1
    });
    Some((row - 1, col - 1))
}

/// (row, column), 0-based → `A01`. Rows past Z continue `AA`, `AB`, … (1536-well plates have
/// rows A–AF); columns get two digits, or more where needed.
pub fn well_name(row: usize, col: usize) -> String {
    let mut letters = Vec::new();
    let mut n = row + 1;
    while n > 0 {
        n -= 1;
        letters.push(b'A' + (n % 26) as u8);
        n /= 26;
    }
    letters.reverse();
    format!("{}{:02}", String::from_utf8_lossy(&letters), col + 1)
}
