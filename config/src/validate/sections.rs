//! Finds the `[[route]]` sections of a configuration so that each can be parsed on its own.
//!
//! A `toml_edit` document costs about 40× its text; a 100,000-route file would hold 600 MB for
//! the whole validation. Routes are independent of each other in TOML (each `[[route]]` header
//! opens a fresh table, and its `[route.x]` / `[[route.x]]` sub-headers belong to it alone), so
//! the validator parses the rest of the file once and each route section by itself, one at a
//! time. This scanner only has to find header lines outside strings and multi-line values; the
//! caller checks the shape of every piece it parses and falls back to the whole document when
//! anything is unexpected, so a mistake here costs memory, never a different answer.
use std::ops::Range;

/// The file cut into the route sections and everything else.
pub(super) struct Sections {
    /// The text with every route section blanked to spaces (newlines kept), so that offsets,
    /// and therefore line and column numbers, are those of the original file.
    pub rest: String,
    /// Byte ranges of the route sections, in file order; each starts at a `[[route]]` line.
    pub routes: Vec<Range<usize>>,
}

/// `None` when the file has no `[[route]]` header or when the scan cannot be sure of the
/// structure (an unterminated string or bracket): the caller then parses the whole document,
/// which also reports the syntax error.
pub(super) fn route_sections(text: &str) -> Option<Sections> {
    let headers = headers(text)?;
    let mut routes: Vec<Range<usize>> = Vec::new();
    let mut open: Option<usize> = None;
    for h in headers {
        let is_route = h.first.as_deref() == Some("route");
        if is_route && h.array && h.one_key {
            if let Some(start) = open.take() {
                routes.push(start..h.offset);
            }
            open = Some(h.offset);
        } else if !(is_route && open.is_some()) {
            if let Some(start) = open.take() {
                routes.push(start..h.offset);
            }
        }
    }
    if let Some(start) = open {
        routes.push(start..text.len());
    }
    if routes.is_empty() {
        return None;
    }
    let mut rest = text.as_bytes().to_vec();
    for r in &routes {
        for b in &mut rest[r.clone()] {
            if *b != b'\n' {
                *b = b' ';
            }
        }
    }
    // Whole characters (lines) were replaced by ASCII spaces, so the bytes stay UTF-8.
    let rest = String::from_utf8(rest).ok()?;
    Some(Sections { rest, routes })
}

/// A table header line.
struct Header {
    /// Where its `[` is.
    offset: usize,
    /// `[[..]]`.
    array: bool,
    /// One key, no dots: `[[route]]` itself, not `[[route.split]]`.
    one_key: bool,
    /// The first key, bare or quoted without escapes; `None` when it cannot be read simply.
    first: Option<String>,
}

/// Every header line, in order.
fn headers(text: &str) -> Option<Vec<Header>> {
    let b = text.as_bytes();
    let mut out = Vec::new();
    let mut i = 0;
    let mut depth = 0usize;
    let mut line_start = true;
    while i < b.len() {
        let c = b[i];
        if line_start && depth == 0 {
            let mut j = i;
            while j < b.len() && (b[j] == b' ' || b[j] == b'\t') {
                j += 1;
            }
            if j < b.len() && b[j] == b'[' {
                let (header, end) = header(b, j)?;
                out.push(header);
                i = end;
                line_start = false;
                continue;
            }
        }
        line_start = false;
        match c {
            b'\n' => line_start = true,
            b'#' => i = skip_to_eol(b, i),
            b'"' | b'\'' => i = skip_string(b, i)?,
            b'[' | b'{' => depth += 1,
            b']' | b'}' => depth = depth.checked_sub(1)?,
            _ => {}
        }
        if b.get(i) == Some(&b'\n') && c != b'\n' {
            continue;
        }
        i += 1;
    }
    (depth == 0).then_some(out)
}

/// Index of the newline ending the line (or the end of the text).
fn skip_to_eol(b: &[u8], i: usize) -> usize {
    b[i..]
        .iter()
        .position(|&c| c == b'\n')
        .map_or(b.len(), |p| i + p)
}

/// `i` is at an opening quote; returns the index of the last byte of the string.
fn skip_string(b: &[u8], i: usize) -> Option<usize> {
    let q = b[i];
    let basic = q == b'"';
    if b.get(i + 1) == Some(&q) && b.get(i + 2) == Some(&q) {
        // Multi-line: ends at three quotes; up to two more quotes belong to the content.
        let mut j = i + 3;
        loop {
            match b.get(j)? {
                b'\\' if basic => j += 2,
                &c if c == q && b.get(j + 1) == Some(&q) && b.get(j + 2) == Some(&q) => {
                    let mut end = j + 2;
                    while end - j < 4 && b.get(end + 1) == Some(&q) {
                        end += 1;
                    }
                    return Some(end);
                }
                _ => j += 1,
            }
        }
    }
    let mut j = i + 1;
    loop {
        match b.get(j)? {
            b'\n' => return None,
            b'\\' if basic => j += 2,
            &c if c == q => return Some(j),
            _ => j += 1,
        }
    }
}

/// Parses the header starting at `b[i] == '['`; returns it and the index after its line's end
/// (the newline itself is left for the caller).
fn header(b: &[u8], i: usize) -> Option<(Header, usize)> {
    let array = b.get(i + 1) == Some(&b'[');
    let mut j = if array { i + 2 } else { i + 1 };
    let mut keys: Vec<Option<String>> = Vec::new();
    loop {
        while matches!(b.get(j), Some(b' ' | b'\t')) {
            j += 1;
        }
        let start = j;
        let key = match b.get(j)? {
            b'"' | b'\'' => {
                let end = skip_string(b, j)?;
                j = end + 1;
                let raw = std::str::from_utf8(&b[start + 1..end]).ok()?;
                (!raw.contains('\\')).then(|| raw.to_string())
            }
            _ => {
                while matches!(b.get(j), Some(c) if c.is_ascii_alphanumeric() || *c == b'_' || *c == b'-')
                {
                    j += 1;
                }
                if j == start {
                    return None;
                }
                Some(std::str::from_utf8(&b[start..j]).ok()?.to_string())
            }
        };
        keys.push(key);
        while matches!(b.get(j), Some(b' ' | b'\t')) {
            j += 1;
        }
        match b.get(j)? {
            b'.' => j += 1,
            b']' => break,
            _ => return None,
        }
    }
    j += if array { 2 } else { 1 };
    if array && b.get(j - 1) != Some(&b']') {
        return None;
    }
    // After the header only whitespace and a comment may follow on the line.
    while matches!(b.get(j), Some(b' ' | b'\t' | b'\r')) {
        j += 1;
    }
    match b.get(j) {
        None | Some(b'\n') => {}
        Some(b'#') => j = skip_to_eol(b, j),
        Some(_) => return None,
    }
    let header = Header {
        offset: i,
        array,
        one_key: keys.len() == 1,
        first: keys.into_iter().next().flatten(),
    };
    Some((header, j))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pieces(text: &str) -> Vec<&str> {
        route_sections(text)
            .map(|s| s.routes.iter().map(|r| &text[r.clone()]).collect())
            .unwrap_or_default()
    }

    #[test]
    fn each_route_with_its_sub_tables_is_one_piece() {
        let text = "a = 1\n[[route]]\nname = \"x\"\n[route.sticky]\ncookie = \"c\"\n[[route.split]]\npool = \"p\"\n[[pool]]\nname = \"p\"\n[[route]] # two\nname = \"y\"\n";
        assert_eq!(
            pieces(text),
            [
                "[[route]]\nname = \"x\"\n[route.sticky]\ncookie = \"c\"\n[[route.split]]\npool = \"p\"\n",
                "[[route]] # two\nname = \"y\"\n"
            ]
        );
        let s = route_sections(text).unwrap();
        assert_eq!(s.rest.len(), text.len());
        assert!(s.rest.contains("[[pool]]") && !s.rest.contains("route"));
        assert_eq!(s.rest.matches('\n').count(), text.matches('\n').count());
    }

    #[test]
    fn headers_inside_strings_and_values_are_not_headers() {
        let text = "[[route]]\nname = \"x\"\nnote = \"\"\"\n[[route]]\n\"\"\"\nlist = [\n[1],\n]\nlit = '''\n[[route]]'''\n";
        assert_eq!(pieces(text), [text]);
        let quoted = "[[route]]\nname = \"a\\\"[[route]]\"\n[ \"route\" . 'x' ]\nk = 1\n";
        assert_eq!(pieces(quoted), [quoted]);
    }

    #[test]
    fn uncertain_text_gives_no_sections() {
        assert!(route_sections("[[route]]\nname = \"x\n").is_none());
        assert!(route_sections("[[route]]\nlist = [1,\n").is_none());
        assert!(route_sections("[[route]] x\n").is_none());
        assert!(route_sections("[[pool]]\nname = \"p\"\n").is_none());
    }

    #[test]
    fn a_route_table_outside_a_route_section_stays_in_the_rest() {
        let s = route_sections("[route.x]\na = 1\n[[route]]\nname = \"y\"\n").unwrap();
        assert!(s.rest.starts_with("[route.x]"));
        assert_eq!(s.routes.len(), 1);
    }
}
