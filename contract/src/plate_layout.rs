//! How plate maps arrive, made into one long comma-separated table (a header, then a row per
//! well) before [`crate::platemap::PlateMap`] reads it:
//! - text: UTF-8 with or without a byte-order mark, UTF-16 (Excel's "Unicode text"), or
//!   Windows-1252 (Excel's CSV on Windows, where `µM` is one byte);
//! - separators: comma, semicolon (Excel in locales with decimal commas, whose `0,5` is then
//!   read as 0.5) or tab;
//! - layouts: long (a row per well) or grid blocks as plates are drawn, one block per
//!   variable in the layout of the `plater` R package: the variable's name in the top-left
//!   cell, column numbers across, row letters down, blocks apart by a blank line. A line
//!   `plate,P1` makes the blocks below it P1's; without one, the layout is every plate's.

use crate::wells::{parse_well, well_name};
use anyhow::{bail, Context as _};

/// A plate map as one long comma-separated text, and for each of its data rows the line of
/// the file it came from (for messages).
pub struct LongTable {
    pub text: String,
    pub lines: Vec<usize>,
    /// A grid without `plate` lines: one layout, drawn once, for every plate.
    pub every_plate: bool,
}

/// `bytes` as a long table; `file` names the plate map in messages.
pub fn long_table(file: &str, bytes: &[u8]) -> anyhow::Result<LongTable> {
    let mut text = decode(bytes);
    // Excel's "sep=;" line says the separator and is no header; emptied, it keeps its line.
    let delimiter = match declared_separator(&text) {
        Some((sep, range)) => {
            text.replace_range(range, "");
            sep
        }
        None => sniff_delimiter(&text),
    };
    let mut rdr = csv::ReaderBuilder::new()
        .delimiter(delimiter)
        .has_headers(false)
        .flexible(true)
        .trim(csv::Trim::All)
        .from_reader(text.as_bytes());
    let mut records: Vec<(usize, Vec<String>)> = Vec::new();
    // (bytes counted, newlines in them)
    let mut counted = (0usize, 0usize);
    for rec in rdr.records() {
        let rec = rec.with_context(|| format!("plate map {file}"))?;
        // From the byte offset, not the csv crate's line count (which skips blank lines and
        // CRLF line ends). The offset is taken before the reader skips the blank lines and
        // the `\n` of a CRLF ahead of the record, so those are stepped over to its first byte.
        // Counted on from the record before: maps of many plates have 100,000 rows.
        let upto = rec.position().map_or(counted.0, |p| {
            let bytes = text.as_bytes();
            let mut at = (p.byte() as usize).min(bytes.len());
            while at < bytes.len() && matches!(bytes[at], b'\r' | b'\n') {
                at += 1;
            }
            at
        });
        if upto > counted.0 {
            counted.1 += line_ends(&text.as_bytes()[counted.0..upto]);
            counted.0 = upto;
        }
        let line = 1 + counted.1;
        records.push((line, rec.iter().map(str::to_string).collect()));
    }
    let commas = commas_in_numbers(file, delimiter, &records)?;
    for c in records.iter_mut().flat_map(|(_, cells)| cells.iter_mut()) {
        match commas {
            Commas::Decimal => {
                if dot_grouped(c) {
                    *c = c.replace('.', "");
                }
                if let Some(point) = decimal_comma(c) {
                    *c = point;
                }
            }
            Commas::Thousands if thousands(c) => *c = c.replace(',', ""),
            _ => {}
        }
    }
    if let Some(first) = records.iter().position(|(_, c)| !is_blank(c)) {
        let grid_at = if plate_line(&records[first].1).is_some() {
            records[first + 1..]
                .iter()
                .find(|(_, c)| !is_blank(c))
                .map(|(_, c)| c)
        } else {
            Some(&records[first].1)
        };
        if grid_at.is_some_and(|c| grid_columns(c).is_some()) {
            return grid_to_long(file, &records[first..]).map(|(text, lines, every_plate)| {
                LongTable {
                    text,
                    lines,
                    every_plate,
                }
            });
        }
    }
    // Long: the header, then every row with something in it (Excel leaves rows of empty
    // cells, `;;;;`, below the table).
    // Empty cells past the header's last name (Excel's stray columns) are dropped, so rows
    // are as wide as the header wherever nothing was lost.
    // Rows shorter than the header (Excel leaves out trailing empty cells in some rows) are
    // padded with empty cells.
    let mut w = csv::Writer::from_writer(Vec::new());
    let mut lines = Vec::new();
    let mut header_width: Option<usize> = None;
    for (line, cells) in records.iter().filter(|(_, c)| !is_blank(c)) {
        let named = cells
            .iter()
            .rposition(|c| !c.is_empty())
            .map_or(0, |i| i + 1);
        let width = match header_width {
            None => *header_width.insert(named),
            Some(width) => {
                if named > width {
                    bail!(
                        "plate map {file}, line {line}: a value in column {named}, past the \
                         header's {width} column names: name that column in the header line, or \
                         remove the value"
                    );
                }
                lines.push(*line);
                width
            }
        };
        let mut row: Vec<&str> = cells.iter().take(width).map(String::as_str).collect();
        row.resize(width, "");
        w.write_record(&row)?;
    }
    let text = String::from_utf8(w.into_inner()?).context("plate map text")?;
    Ok(LongTable {
        text,
        lines,
        every_plate: false,
    })
}

/// Line ends in `bytes`: `\n`, `\r\n`, or a `\r` alone (classic Mac OS, Excel's "CSV
/// (Macintosh)").
fn line_ends(bytes: &[u8]) -> usize {
    let lone_cr = bytes
        .windows(2)
        .filter(|w| w[0] == b'\r' && w[1] != b'\n')
        .count()
        + usize::from(bytes.last() == Some(&b'\r'));
    bytes.iter().filter(|&&b| b == b'\n').count() + lone_cr
}

/// The text of the file: UTF-8 (a byte-order mark dropped), UTF-16 with its mark, else
/// Windows-1252, which every byte sequence is.
fn decode(bytes: &[u8]) -> String {
    if let Some((enc, bom)) = encoding_rs::Encoding::for_bom(bytes) {
        return enc
            .decode_without_bom_handling(&bytes[bom..])
            .0
            .into_owned();
    }
    match std::str::from_utf8(bytes) {
        Ok(s) => s.to_string(),
        Err(_) => encoding_rs::WINDOWS_1252
            .decode_without_bom_handling(bytes)
            .0
            .into_owned(),
    }
}

/// `sep=;` (or `sep=,`, `sep=<tab>`) as the first line, as Excel writes and reads it: the
/// separator and the line's byte range.
fn declared_separator(text: &str) -> Option<(u8, std::ops::Range<usize>)> {
    let start = text.len() - text.trim_start_matches(['\r', '\n']).len();
    let line = text[start..].split(['\r', '\n']).next()?;
    let sep = line
        .strip_prefix("sep=")
        .or_else(|| line.strip_prefix("SEP="))?;
    let sep = sep.trim_matches(['"', ' ']);
    match sep.as_bytes() {
        [b @ (b',' | b';' | b'\t' | b'|')] => Some((*b, start..start + line.len())),
        _ => None,
    }
}

/// The separator of the first line with any: the most frequent of comma, semicolon and tab
/// outside quotes (comma on a tie or none).
fn sniff_delimiter(text: &str) -> u8 {
    let first = text.lines().find(|l| !l.trim().is_empty()).unwrap_or("");
    let mut counts = [0usize; 3];
    let mut quoted = false;
    for ch in first.chars() {
        match ch {
            '"' => quoted = !quoted,
            ',' if !quoted => counts[0] += 1,
            ';' if !quoted => counts[1] += 1,
            '\t' if !quoted => counts[2] += 1,
            _ => {}
        }
    }
    let best = (0..3)
        .max_by_key(|&i| (counts[i], std::cmp::Reverse(i)))
        .unwrap_or(0);
    if counts[best] == 0 {
        b','
    } else {
        [b',', b';', b'\t'][best]
    }
}

/// What a comma inside a number is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Commas {
    /// `0,5` is a half.
    Decimal,
    /// `1,000` is a thousand (`1,000.5` too).
    Thousands,
    /// Not read as part of a number (comma-separated files quote such cells as text).
    Text,
}

/// What the commas in a plate map's numbers mean. Semicolons are Excel's separator where
/// the comma is the decimal mark. Tabs are Excel's "Unicode text" in any locale: decimal
/// marks where some number can only be read so (`0,5`, `2,25`) and none has a decimal point;
/// thousands separators where numbers have decimal points; a file whose only comma numbers
/// read either way (`1,000`: a thousand, or one) is refused rather than guessed at.
fn commas_in_numbers(
    file: &str,
    delimiter: u8,
    records: &[(usize, Vec<String>)],
) -> anyhow::Result<Commas> {
    let cells = || {
        records
            .iter()
            .flat_map(|(l, c)| c.iter().map(move |c| (*l, c)))
    };
    match delimiter {
        b';' => return semicolon_commas(file, records),
        b'\t' => {}
        _ => return Ok(Commas::Text),
    }
    let point = cells().find(|(_, c)| c.contains('.') && c.replace(',', "").parse::<f64>().is_ok());
    let comma = cells().find(|(_, c)| decimal_comma(c).is_some() && !thousands(c));
    match (point, comma) {
        (Some((pl, p)), Some((cl, c))) => bail!(
            "plate map {file}: numbers with decimal points (line {pl}: `{p}`) and with decimal \
             commas (line {cl}: `{c}`) in one tab-separated file: write every number one way, \
             or save the file as CSV"
        ),
        (Some(_), None) => return Ok(Commas::Thousands),
        (None, Some(_)) => return Ok(Commas::Decimal),
        (None, None) => {}
    }
    match cells().find(|(_, c)| thousands(c)) {
        Some((line, c)) => bail!(
            "plate map {file}, line {line}: `{c}` in a tab-separated file could be a thousand or \
             one with a decimal comma: write it without a thousands separator (`1000`), or save \
             the file as CSV"
        ),
        None => Ok(Commas::Text),
    }
}

/// Semicolons are Excel's separator where the comma is the decimal mark and the dot groups
/// thousands (`1.000` is a thousand; read as one, an EC50 came out 1000× off); pandas's
/// `sep=";"` keeps decimal points. Decimal commas: dots group thousands. Decimal points
/// (`0.5`) and no comma: the file is pandas's. Both: refused. Only `1.000`-like numbers: a
/// thousand or one, refused rather than guessed at.
fn semicolon_commas(file: &str, records: &[(usize, Vec<String>)]) -> anyhow::Result<Commas> {
    let cells = || {
        records
            .iter()
            .flat_map(|(l, c)| c.iter().map(move |c| (*l, c)))
    };
    let comma = cells().find(|(_, c)| {
        decimal_comma(&c.replace('.', "")).is_some() && (!c.contains('.') || dot_grouped(c))
    });
    let point =
        cells().find(|(_, c)| c.contains('.') && !dot_grouped(c) && c.parse::<f64>().is_ok());
    let grouped = cells().find(|(_, c)| dot_grouped(c) && !c.contains(','));
    match (comma, point, grouped) {
        (Some((cl, c)), Some((pl, p)), _) => bail!(
            "plate map {file}: numbers with decimal commas (line {cl}: `{c}`) and with decimal \
             points (line {pl}: `{p}`) in one semicolon-separated file: write every number one \
             way"
        ),
        (None, Some(_), _) => Ok(Commas::Text),
        (None, None, Some((line, c))) => bail!(
            "plate map {file}, line {line}: `{c}` in a semicolon-separated file could be a \
             thousand or one with a decimal point: write it without a thousands separator \
             (`1000`)"
        ),
        _ => Ok(Commas::Decimal),
    }
}

/// `1.000`, `-12.500`, `1.234.567,5`: dots between groups of three digits, as a number with
/// thousands separators is written where the comma is the decimal mark.
fn dot_grouped(cell: &str) -> bool {
    let unsigned = cell.strip_prefix(['-', '+']).unwrap_or(cell);
    let whole = unsigned.split_once(',').map_or(unsigned, |(w, _)| w);
    let mut groups = whole.split('.');
    let first = groups.next().unwrap_or("");
    let rest: Vec<&str> = groups.collect();
    let digits = |s: &str| s.bytes().all(|b| b.is_ascii_digit());
    !rest.is_empty()
        && (1..=3).contains(&first.len())
        && digits(first)
        && rest.iter().all(|g| g.len() == 3 && digits(g))
}

/// `1,000`, `-12,500`, `1,234,567.5`: commas between groups of three digits, as a number
/// with thousands separators is written.
fn thousands(cell: &str) -> bool {
    let unsigned = cell.strip_prefix(['-', '+']).unwrap_or(cell);
    let (whole, frac) = unsigned.split_once('.').unwrap_or((unsigned, "0"));
    let digits = |s: &str| !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit());
    let mut groups = whole.split(',');
    let first = groups.next().unwrap_or("");
    let rest: Vec<&str> = groups.collect();
    digits(frac)
        && digits(first)
        && first.len() <= 3
        && first != "0"
        && !rest.is_empty()
        && rest.iter().all(|g| g.len() == 3 && digits(g))
}

/// `0,5` or `-1,25e-3` (a number with a decimal comma) with a point; `None` for anything else.
fn decimal_comma(cell: &str) -> Option<String> {
    let (int, frac) = cell.split_once(',')?;
    let digits = |s: &str| !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit());
    let int_ok = digits(int.strip_prefix(['-', '+']).unwrap_or(int));
    let mantissa = frac.split(['e', 'E']).next().unwrap_or("");
    let point = format!("{int}.{frac}");
    (int_ok && digits(mantissa) && point.parse::<f64>().is_ok()).then_some(point)
}

fn is_blank(cells: &[String]) -> bool {
    cells.iter().all(|c| c.is_empty())
}

/// A grid block's header: a name (or nothing) in the first cell, then the column numbers
/// 1, 2, …, n (n ≥ 2; empty cells after them allowed). Returns n.
fn grid_columns(cells: &[String]) -> Option<usize> {
    let numbers: Vec<&String> = cells[1..].iter().take_while(|c| !c.is_empty()).collect();
    let rest_empty = cells[1 + numbers.len()..].iter().all(|c| c.is_empty());
    let consecutive = numbers
        .iter()
        .enumerate()
        .all(|(i, c)| c.parse::<usize>().ok() == Some(i + 1));
    (numbers.len() >= 2 && consecutive && rest_empty).then_some(numbers.len())
}

/// `plate,P1` (a line naming the plate the grid blocks below it are drawn for): `P1`.
fn plate_line(cells: &[String]) -> Option<&str> {
    let named = cells
        .first()?
        .trim_end_matches(':')
        .eq_ignore_ascii_case("plate");
    let value = cells.get(1).filter(|v| !v.is_empty())?;
    (named && cells[2..].iter().all(|c| c.is_empty())).then_some(value.as_str())
}

/// Grid blocks as a long table: (`plate`), `well` and one column per block name, a row per
/// plate and well with any value, in row-major order; each row's line is that of its plate
/// row in the first block. Blocks below a `plate,P1` line are P1's; without such lines the
/// one layout is every plate's (the third value).
fn grid_to_long(
    file: &str,
    records: &[(usize, Vec<String>)],
) -> anyhow::Result<(String, Vec<usize>, bool)> {
    // Block names in order of appearance; per (plate, row, column) the line and values by
    // block name.
    type Cell = (usize, std::collections::BTreeMap<String, String>);
    let mut names: Vec<String> = Vec::new();
    let mut wells: std::collections::BTreeMap<(Option<String>, usize, usize), Cell> =
        std::collections::BTreeMap::new();
    let mut plate: Option<String> = None;
    // A set, not a search of `wells`: maps of hundreds of plates made that quadratic.
    let mut plates_seen = std::collections::HashSet::new();
    // Block names already drawn for the current plate.
    let mut drawn: Vec<String> = Vec::new();
    let mut block = String::new();
    let mut columns = 0;
    for (line, cells) in records {
        if is_blank(cells) {
            columns = 0; // the block ended
            continue;
        }
        if let Some(p) = plate_line(cells) {
            if plate.is_none() && !names.is_empty() {
                bail!(
                    "plate map {file}, line {line}: `plate` lines must come before every grid \
                     block (the blocks above name no plate)"
                );
            }
            if !plates_seen.insert(p.to_string()) {
                bail!("plate map {file}, line {line}: plate {p} is drawn twice");
            }
            plate = Some(p.to_string());
            drawn.clear();
            columns = 0;
            continue;
        }
        if let Some(n) = grid_columns(cells) {
            let name = cells[0].clone();
            if name.is_empty() {
                bail!(
                    "plate map {file}, line {line}: a grid block without a name: write what its \
                     cells hold (e.g. `treatment`, `dose_uM`, `control`) in its top-left cell"
                );
            }
            if drawn.iter().any(|n| n.eq_ignore_ascii_case(&name)) {
                bail!("plate map {file}, line {line}: a second grid block named `{name}`");
            }
            // Values are kept under the name's first spelling: `Treatment` on P1 and
            // `treatment` on P2 are one column.
            let name = match names.iter().find(|n| n.eq_ignore_ascii_case(&name)) {
                Some(first) => first.clone(),
                None => {
                    names.push(name.clone());
                    name
                }
            };
            drawn.push(name.clone());
            block = name;
            columns = n;
            continue;
        }
        if columns == 0 {
            bail!(
                "plate map {file}, line {line}: a grid row outside a block: each block starts \
                 with a line holding its name and the column numbers 1, 2, …"
            );
        }
        let row = cells[0].trim();
        let letters = row.chars().all(|c| c.is_ascii_alphabetic());
        let Some((r, _)) = parse_well(&format!("{row}1")).filter(|_| letters) else {
            bail!(
                "plate map {file}, line {line}: `{row}` is not a plate row letter (A, B, …) in \
                 grid block `{block}`"
            );
        };
        if cells.len() > columns + 1 && !cells[columns + 1..].iter().all(|c| c.is_empty()) {
            bail!(
                "plate map {file}, line {line}: row {row} has values beyond column {columns} of \
                 grid block `{block}`"
            );
        }
        for c in 0..columns {
            let value = cells.get(c + 1).cloned().unwrap_or_default();
            let entry = wells
                .entry((plate.clone(), r, c))
                .or_insert_with(|| (*line, Default::default()));
            if entry.1.insert(block.clone(), value).is_some() {
                bail!("plate map {file}, line {line}: row {row} appears twice in grid block `{block}`");
            }
        }
    }
    if names.is_empty() {
        bail!("plate map {file}: no grid block");
    }
    let every_plate = plate.is_none();
    let mut w = csv::Writer::from_writer(Vec::new());
    let header = ["plate", "well"][usize::from(every_plate)..]
        .iter()
        .copied()
        .chain(names.iter().map(String::as_str));
    w.write_record(header)?;
    let mut lines = Vec::new();
    for ((p, r, c), (line, by_name)) in &wells {
        let values: Vec<&str> = names
            .iter()
            .map(|n| by_name.get(n).map_or("", String::as_str))
            .collect();
        if values.iter().all(|v| v.is_empty()) {
            continue; // an empty well is not on the map
        }
        let well = well_name(*r, *c);
        let keys = p
            .as_deref()
            .into_iter()
            .chain(std::iter::once(well.as_str()));
        w.write_record(keys.chain(values))?;
        lines.push(*line);
    }
    let text = String::from_utf8(w.into_inner()?).context("plate map text")?;
    Ok((text, lines, every_plate))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rows(t: &LongTable) -> Vec<Vec<String>> {
        csv::ReaderBuilder::new()
            .has_headers(false)
            .from_reader(t.text.as_bytes())
            .records()
            .map(|r| r.unwrap().iter().map(str::to_string).collect())
            .collect()
    }

    /// Lines are the file's own after blank lines (one, several, leading) and CRLF ends.
    #[test]
    fn line_numbers_survive_blank_lines_and_crlf() {
        for (text, want) in [
            ("plate,well\nP1,A01\n\n\nP1,A02\n", vec![2, 5]),
            ("\n\nplate,well\nP1,A01\n", vec![4]),
            ("plate,well\r\nP1,A01\r\n\r\n\r\nP1,A02\r\n", vec![2, 5]),
            ("plate;well\r\n;\r\nP1;A01\r\n", vec![3]),
            // Excel's "CSV (Macintosh)": a carriage return alone ends each line.
            ("plate,well\rP1,A01\r\rP1,A02\r", vec![2, 4]),
        ] {
            assert_eq!(
                long_table("m.csv", text.as_bytes()).unwrap().lines,
                want,
                "{text:?}"
            );
        }
        let err = long_table("g.csv", b"t,1,2\r\nA,x,y\r\n\r\nt,1,2\r\nA,x,y\r\n")
            .err()
            .unwrap()
            .to_string();
        assert!(err.contains("line 4: a second grid block"), "{err}");
    }

    /// Excel leaves out the trailing empty cells of some rows: they are padded; a value past
    /// the header's columns is refused with its line.
    #[test]
    fn short_rows_are_padded_and_overlong_ones_named() {
        let t = long_table(
            "m.csv",
            b"plate,well,dose,control\nP1,A01,1,neg\nP1,A02,2\n",
        )
        .unwrap();
        assert_eq!(rows(&t)[2], ["P1", "A02", "2", ""]);
        assert_eq!(t.lines, [2, 3]);
        let err = long_table("m.csv", b"plate,well,dose\nP1,A01,1\nP1,A02,2,oops\n")
            .err()
            .unwrap()
            .to_string();
        assert!(
            err.contains("m.csv, line 3: a value in column 4, past the header's 3"),
            "{err}"
        );
    }

    /// Excel's `sep=;` first line names the separator and is not the header.
    #[test]
    fn an_excel_separator_line_is_obeyed_not_read_as_the_header() {
        let t = long_table("m.csv", b"sep=;\r\nplate;well;dose\r\nP1;A01;0,5\r\n").unwrap();
        assert_eq!(rows(&t), [["plate", "well", "dose"], ["P1", "A01", "0.5"]]);
        assert_eq!(t.lines, [3]);
    }

    /// Semicolon files: Excel's where the comma is the decimal mark (dots group thousands:
    /// `1.000` is a thousand, it was read as one) or pandas's `sep=";"` (decimal points);
    /// both in one file, or only `1.000`-like numbers, are refused.
    #[test]
    fn dots_in_semicolon_separated_numbers_are_read_as_their_locale_writes_them() {
        let cells = |text: &str| rows(&long_table("m.csv", text.as_bytes()).unwrap());
        let excel = cells("well;dose\nA01;0,5\nA02;1.000\nA03;1.234.567,5\nA04;12\n");
        assert_eq!(
            (
                excel[1][1].as_str(),
                excel[2][1].as_str(),
                excel[3][1].as_str(),
                excel[4][1].as_str()
            ),
            ("0.5", "1000", "1234567.5", "12")
        );
        let pandas = cells("well;dose\nA01;0.5\nA02;1.000\n");
        assert_eq!(
            (pandas[1][1].as_str(), pandas[2][1].as_str()),
            ("0.5", "1.000")
        );
        let err = |text: &str| {
            long_table("m.csv", text.as_bytes())
                .err()
                .unwrap()
                .to_string()
        };
        let e = err("well;dose\nA01;0,5\nA02;0.25\n");
        assert!(
            e.contains("decimal commas (line 2: `0,5`) and with decimal points (line 3: `0.25`)"),
            "{e}"
        );
        let e = err("well;dose\nA01;1.000\nA02;10\n");
        assert!(
            e.contains("line 2: `1.000`") && e.contains("a thousand or one"),
            "{e}"
        );
    }

    /// Tab-separated text from Excel in any locale: commas are decimal marks only where the
    /// numbers say so, thousands separators beside decimal points, and refused where a
    /// number reads both ways.
    #[test]
    fn commas_in_tab_separated_numbers_are_read_as_their_locale_writes_them() {
        let cells = |text: &str| rows(&long_table("m.txt", text.as_bytes()).unwrap());
        assert_eq!(cells("well\tdose\nA01\t0,5\nA02\t1,000\n")[2][1], "1.000");
        assert_eq!(cells("well\tdose\nA01\t0.5\nA02\t1,000\n")[2][1], "1000");
        assert_eq!(
            cells("well\tdose\nA01\t2.5\nA02\t1,234,567.5\n")[2][1],
            "1234567.5"
        );
        let err = long_table("m.txt", b"well\tdose\nA01\t5\nA02\t1,000\n")
            .err()
            .unwrap()
            .to_string();
        assert!(
            err.contains("m.txt, line 3: `1,000` in a tab-separated file could be"),
            "{err}"
        );
        // Semicolons are a decimal-comma locale's: `1,000` is one.
        assert_eq!(cells("well;dose\nA01;1,000\n")[1][1], "1.000");
        // Both marks in one file: refused, naming both.
        let err = long_table("m.txt", b"well\tdose\tbatch\nA01\t0,5\t1.2\n")
            .err()
            .unwrap()
            .to_string();
        assert!(
            err.contains("(line 2: `1.2`)") && err.contains("(line 2: `0,5`)"),
            "{err}"
        );
    }

    /// A block's name spelled differently on another plate is the same column.
    #[test]
    fn grid_block_names_match_whatever_their_case() {
        let t = long_table(
            "g.csv",
            b"plate,P1\nTreatment,1,2\nA,DMSO,drug\n\nplate,P2\ntreatment,1,2\nA,drug,DMSO\n",
        )
        .unwrap();
        let r = rows(&t);
        assert_eq!(r[0], ["plate", "well", "Treatment"]);
        assert_eq!(r.len(), 5, "two wells on each plate: {r:?}");
        assert_eq!(r[3], ["P2", "A01", "drug"]);
    }

    #[test]
    fn excel_csv_in_a_decimal_comma_locale_reads_as_the_comma_csv() {
        let comma = "plate,well,dose_uM\nP1,A01,0.5\nP1,A02,10\n";
        // Semicolons, a byte-order mark, CRLF, decimal commas and the empty rows Excel leaves.
        let excel = "\u{feff}plate;well;dose_uM\r\nP1;A01;0,5\r\nP1;A02;10\r\n;;\r\n;;\r\n";
        let want = rows(&long_table("c.csv", comma.as_bytes()).unwrap());
        let got = long_table("e.csv", excel.as_bytes()).unwrap();
        assert_eq!(rows(&got), want);
        assert_eq!(got.lines, [2, 3]);
        // Tab-separated, as UTF-16 ("Unicode text"), with µ in a header.
        let tsv = "plate\twell\tdose_µM\nP1\tA01\t0,5\n";
        let mut utf16 = vec![0xFF, 0xFE];
        utf16.extend(tsv.encode_utf16().flat_map(u16::to_le_bytes));
        let got = rows(&long_table("u.txt", &utf16).unwrap());
        assert_eq!(got[0][2], "dose_µM");
        assert_eq!(got[1][2], "0.5");
        // Windows-1252: µ is the one byte 0xB5.
        let mut latin = b"plate,well,dose_".to_vec();
        latin.push(0xB5);
        latin.extend(b"M\nP1,A01,1\n");
        assert_eq!(rows(&long_table("w.csv", &latin).unwrap())[0][2], "dose_µM");
        // A comma file keeps its values as they are (`1,5` there is two cells).
        let got = rows(&long_table("q.csv", b"well,name\nA01,\"1,5\"\n").unwrap());
        assert_eq!(got[1][1], "1,5");
    }

    #[test]
    fn grid_blocks_become_a_row_per_well() {
        let grid = "treatment,1,2,3\n\
                    A,DMSO,drug,\n\
                    B,DMSO,drug,drug\n\
                    \n\
                    dose_uM,1,2,3\n\
                    A,0,10,\n\
                    B,0,30,100\n";
        let t = long_table("grid.csv", grid.as_bytes()).unwrap();
        assert_eq!(
            rows(&t),
            [
                vec!["well", "treatment", "dose_uM"],
                vec!["A01", "DMSO", "0"],
                vec!["A02", "drug", "10"],
                vec!["B01", "DMSO", "0"],
                vec!["B02", "drug", "30"],
                vec!["B03", "drug", "100"],
            ]
        );
        // Each well's line is its row's line in the first block.
        assert_eq!(t.lines, [2, 2, 3, 3, 3]);
        // A semicolon grid with decimal commas, as European Excel saves it.
        let t = long_table("g.csv", "dose;1;2\nA;0,5;1\n".as_bytes()).unwrap();
        assert_eq!(rows(&t)[1], ["A01", "0.5"]);
    }

    #[test]
    fn grid_blocks_under_plate_lines_are_each_plates_own() {
        let grid = "plate,P1\n\
                    treatment,1,2\n\
                    A,DMSO,drug\n\
                    \n\
                    plate,P2\n\
                    treatment,1,2\n\
                    A,drug,DMSO\n";
        let t = long_table("plates.csv", grid.as_bytes()).unwrap();
        assert!(!t.every_plate);
        assert_eq!(
            rows(&t),
            [
                vec!["plate", "well", "treatment"],
                vec!["P1", "A01", "DMSO"],
                vec!["P1", "A02", "drug"],
                vec!["P2", "A01", "drug"],
                vec!["P2", "A02", "DMSO"],
            ]
        );
        assert_eq!(t.lines, [3, 3, 7, 7]);
        assert!(
            long_table("one.csv", b"t,1,2\nA,x,y\n")
                .unwrap()
                .every_plate
        );
    }

    #[test]
    fn grid_mistakes_are_named_with_their_line() {
        for (grid, says) in [
            (",1,2\nA,x,y\n", "line 1: a grid block without a name"),
            (
                "t,1,2\nA,x,y\nQ9,x,y\n",
                "line 3: `Q9` is not a plate row letter",
            ),
            (
                "t,1,2\nA,x,y,z\n",
                "line 2: row A has values beyond column 2",
            ),
            (
                "t,1,2\nA,x,y\n\nt,1,2\nA,x,y\n",
                "line 4: a second grid block named `t`",
            ),
            ("t,1,2\nA,x,y\nA,x,y\n", "line 3: row A appears twice"),
            (
                "t,1,2\nA,x,y\nplate,P1\nt,1,2\nA,x,y\n",
                "line 3: `plate` lines must come before every grid block (the blocks above name no plate)",
            ),
            (
                "plate,P1\nt,1,2\nA,x,y\nplate,P1\n",
                "line 4: plate P1 is drawn twice",
            ),
        ] {
            let err = long_table("g.csv", grid.as_bytes())
                .err()
                .unwrap()
                .to_string();
            assert!(
                err.contains(says) && err.contains("g.csv"),
                "{grid:?}: {err}"
            );
        }
    }
}
