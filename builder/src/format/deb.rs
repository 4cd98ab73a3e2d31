//! Debian packages: the `ar` container, compressed tar members, control
//! stanzas, dpkg's version ordering and dependency relations. Pure: takes bytes
//! or readers, never touches the file system.

use std::cmp::Ordering;
use std::io::{self, Read};

/// Errors of package parsing.
#[derive(Debug, thiserror::Error)]
pub enum DebError {
    /// Not an ar archive.
    #[error("not a .deb (no `!<arch>` magic)")]
    NotAr,
    /// A malformed member header or missing member.
    #[error("malformed .deb: {0}")]
    Malformed(String),
    /// A compression hearth does not read.
    #[error("unsupported member `{0}`")]
    Compression(String),
    /// A malformed control stanza.
    #[error("control data: {0}")]
    Control(String),
    /// I/O.
    #[error("reading .deb")]
    Io(#[from] io::Error),
}

/// One member of an ar archive.
#[derive(Clone, Debug)]
pub struct ArMember {
    /// Name (trailing `/` removed).
    pub name: String,
    /// Content.
    pub data: Vec<u8>,
}

/// Largest member read into memory (data.tar of the biggest Ubuntu packages is
/// far below this).
const MAX_MEMBER: u64 = 2 << 30;

/// Reads every member of an ar archive.
pub fn read_ar(mut r: impl Read) -> Result<Vec<ArMember>, DebError> {
    let mut magic = [0u8; 8];
    r.read_exact(&mut magic).map_err(|_| DebError::NotAr)?;
    if &magic != b"!<arch>\n" {
        return Err(DebError::NotAr);
    }
    let mut out = Vec::new();
    loop {
        let mut h = [0u8; 60];
        match r.read_exact(&mut h) {
            Ok(()) => {}
            Err(e) if e.kind() == io::ErrorKind::UnexpectedEof => break,
            Err(e) => return Err(e.into()),
        }
        if &h[58..60] != b"`\n" {
            return Err(DebError::Malformed("bad member header".into()));
        }
        let name = String::from_utf8_lossy(&h[..16]).trim_end().trim_end_matches('/').to_owned();
        let size: u64 = String::from_utf8_lossy(&h[48..58])
            .trim()
            .parse()
            .map_err(|_| DebError::Malformed(format!("member `{name}` has a bad size")))?;
        if size > MAX_MEMBER {
            return Err(DebError::Malformed(format!("member `{name}` claims {size} bytes")));
        }
        let mut data = Vec::new();
        (&mut r).take(size).read_to_end(&mut data)?;
        if data.len() as u64 != size {
            return Err(DebError::Malformed(format!("member `{name}` is truncated")));
        }
        if size % 2 == 1 {
            let mut pad = [0u8; 1];
            let _ = r.read(&mut pad)?;
        }
        out.push(ArMember { name, data });
    }
    Ok(out)
}

/// A decompressing reader for a `*.tar[.gz|.xz|.zst]` member.
pub fn tar_reader<'a>(name: &str, data: &'a [u8]) -> Result<Box<dyn Read + 'a>, DebError> {
    Ok(match name.rsplit('.').next() {
        Some("tar") => Box::new(data),
        Some("gz") => Box::new(flate2::read::GzDecoder::new(data)),
        Some("xz") => Box::new(liblzma::read::XzDecoder::new(data)),
        Some("zst") => Box::new(zstd::stream::read::Decoder::new(data)?),
        _ => return Err(DebError::Compression(name.to_owned())),
    })
}

/// The parts of a .deb.
#[derive(Debug)]
pub struct Deb {
    /// `control.tar.*` member.
    pub control: ArMember,
    /// `data.tar.*` member.
    pub data: ArMember,
}

/// Splits a .deb into its control and data members.
pub fn open_deb(bytes: &[u8]) -> Result<Deb, DebError> {
    let members = read_ar(bytes)?;
    let version = members.first().ok_or_else(|| DebError::Malformed("empty archive".into()))?;
    if version.name != "debian-binary" || !version.data.starts_with(b"2.") {
        return Err(DebError::Malformed("first member is not `debian-binary` 2.x".into()));
    }
    let find = |prefix: &str| {
        members
            .iter()
            .find(|m| m.name == prefix || m.name.starts_with(&format!("{prefix}.")))
            .cloned()
            .ok_or_else(|| DebError::Malformed(format!("no {prefix} member")))
    };
    Ok(Deb { control: find("control.tar")?, data: find("data.tar")? })
}

/// A control stanza: fields in their order.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Stanza {
    /// `(name, value)`; multi-line values keep their continuation lines.
    pub fields: Vec<(String, String)>,
}

impl Stanza {
    /// A field's value (names compare case-insensitively).
    pub fn get(&self, name: &str) -> Option<&str> {
        self.fields.iter().find(|(k, _)| k.eq_ignore_ascii_case(name)).map(|(_, v)| v.as_str())
    }
    /// Sets or replaces a field.
    pub fn set(&mut self, name: &str, value: &str) {
        match self.fields.iter_mut().find(|(k, _)| k.eq_ignore_ascii_case(name)) {
            Some(f) => f.1 = value.to_owned(),
            None => self.fields.push((name.to_owned(), value.to_owned())),
        }
    }
    /// Renders the stanza (no trailing blank line).
    pub fn render(&self) -> String {
        let mut s = String::new();
        for (k, v) in &self.fields {
            s.push_str(k);
            s.push(':');
            if !v.starts_with('\n') {
                s.push(' ');
            }
            s.push_str(v);
            s.push('\n');
        }
        s
    }
}

/// Parses stanzas separated by blank lines.
pub fn parse_stanzas(text: &str) -> Result<Vec<Stanza>, DebError> {
    let mut out = Vec::new();
    let mut cur = Stanza::default();
    for (n, line) in text.lines().enumerate() {
        if line.trim().is_empty() {
            if !cur.fields.is_empty() {
                out.push(std::mem::take(&mut cur));
            }
            continue;
        }
        if line.starts_with(' ') || line.starts_with('\t') {
            let last = cur
                .fields
                .last_mut()
                .ok_or_else(|| DebError::Control(format!("line {}: continuation first", n + 1)))?;
            last.1.push('\n');
            last.1.push_str(line);
            continue;
        }
        let (k, v) = line.split_once(':').ok_or_else(|| DebError::Control(format!("line {}: no `:`", n + 1)))?;
        cur.fields.push((k.to_owned(), v.trim_start().to_owned()));
    }
    if !cur.fields.is_empty() {
        out.push(cur);
    }
    Ok(out)
}

/// dpkg's comparison of version strings (`[epoch:]upstream[-revision]`).
pub fn compare_versions(a: &str, b: &str) -> Ordering {
    fn split(v: &str) -> (u64, &str, &str) {
        let (epoch, rest) = match v.split_once(':') {
            Some((e, r)) if e.bytes().all(|c| c.is_ascii_digit()) => (e.parse().unwrap_or(0), r),
            _ => (0, v),
        };
        match rest.rsplit_once('-') {
            Some((u, r)) => (epoch, u, r),
            None => (epoch, rest, ""),
        }
    }
    fn order(c: Option<u8>) -> i32 {
        match c {
            None => 0,
            Some(b'~') => -1,
            Some(c) if c.is_ascii_digit() => 0,
            Some(c) if c.is_ascii_alphabetic() => i32::from(c),
            Some(c) => i32::from(c) + 256,
        }
    }
    fn part(a: &str, b: &str) -> Ordering {
        let (a, b) = (a.as_bytes(), b.as_bytes());
        let (mut i, mut j) = (0, 0);
        while i < a.len() || j < b.len() {
            // Non-digit prefixes, compared with dpkg's character order.
            while (i < a.len() && !a[i].is_ascii_digit()) || (j < b.len() && !b[j].is_ascii_digit()) {
                let ca = if i < a.len() && !a[i].is_ascii_digit() { Some(a[i]) } else { None };
                let cb = if j < b.len() && !b[j].is_ascii_digit() { Some(b[j]) } else { None };
                let (oa, ob) = (order(ca), order(cb));
                if oa != ob {
                    return oa.cmp(&ob);
                }
                if ca.is_some() {
                    i += 1;
                }
                if cb.is_some() {
                    j += 1;
                }
            }
            // Digit runs, compared numerically.
            let si = i;
            while i < a.len() && a[i].is_ascii_digit() {
                i += 1;
            }
            let sj = j;
            while j < b.len() && b[j].is_ascii_digit() {
                j += 1;
            }
            let na = std::str::from_utf8(&a[si..i]).unwrap_or("").trim_start_matches('0');
            let nb = std::str::from_utf8(&b[sj..j]).unwrap_or("").trim_start_matches('0');
            let c = na.len().cmp(&nb.len()).then_with(|| na.cmp(nb));
            if c != Ordering::Equal {
                return c;
            }
        }
        Ordering::Equal
    }
    let (ea, ua, ra) = split(a);
    let (eb, ub, rb) = split(b);
    ea.cmp(&eb).then_with(|| part(ua, ub)).then_with(|| part(ra, rb))
}

/// A version constraint operator.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Op {
    /// `<<`
    Lt,
    /// `<=`
    Le,
    /// `=`
    Eq,
    /// `>=`
    Ge,
    /// `>>`
    Gt,
}

impl Op {
    fn parse(s: &str) -> Option<Op> {
        Some(match s {
            "<<" => Op::Lt,
            "<=" | "<" => Op::Le,
            "=" => Op::Eq,
            ">=" | ">" => Op::Ge,
            ">>" => Op::Gt,
            _ => return None,
        })
    }
    /// Whether `have` satisfies `self want`.
    pub fn holds(self, have: &str, want: &str) -> bool {
        let c = compare_versions(have, want);
        match self {
            Op::Lt => c == Ordering::Less,
            Op::Le => c != Ordering::Greater,
            Op::Eq => c == Ordering::Equal,
            Op::Ge => c != Ordering::Less,
            Op::Gt => c == Ordering::Greater,
        }
    }
    /// The text form.
    pub fn as_str(self) -> &'static str {
        match self {
            Op::Lt => "<<",
            Op::Le => "<=",
            Op::Eq => "=",
            Op::Ge => ">=",
            Op::Gt => ">>",
        }
    }
}

/// One alternative of a relation: `name[:arch] [(op version)]`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Relation {
    /// Package name.
    pub name: String,
    /// `any`, `native` or an architecture, when qualified.
    pub arch: Option<String>,
    /// Version constraint.
    pub version: Option<(Op, String)>,
}

impl std::fmt::Display for Relation {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.name)?;
        if let Some(a) = &self.arch {
            write!(f, ":{a}")?;
        }
        if let Some((op, v)) = &self.version {
            write!(f, " ({} {v})", op.as_str())?;
        }
        Ok(())
    }
}

/// Parses a relation field (`a (>= 1) | b, c`) into AND-of-OR groups.
pub fn parse_relations(field: &str) -> Result<Vec<Vec<Relation>>, DebError> {
    let mut out = Vec::new();
    for group in field.split(',').map(str::trim).filter(|g| !g.is_empty()) {
        let mut alts = Vec::new();
        for alt in group.split('|').map(str::trim) {
            // Drop architecture restrictions `[amd64]` and build profiles `<!nocheck>`.
            let alt = alt.split(['[', '<']).next().unwrap_or(alt).trim();
            let (name_part, version) = match alt.split_once('(') {
                Some((n, rest)) => {
                    let inner = rest.trim_end().trim_end_matches(')').trim();
                    let split = inner.find(|c: char| !"<>=".contains(c)).unwrap_or(inner.len());
                    let op = Op::parse(inner[..split].trim())
                        .ok_or_else(|| DebError::Control(format!("bad operator in `{alt}`")))?;
                    (n.trim(), Some((op, inner[split..].trim().to_owned())))
                }
                None => (alt, None),
            };
            let (name, arch) = match name_part.split_once(':') {
                Some((n, a)) => (n.to_owned(), Some(a.to_owned())),
                None => (name_part.to_owned(), None),
            };
            if name.is_empty() {
                return Err(DebError::Control(format!("empty package name in `{group}`")));
            }
            alts.push(Relation { name, arch, version });
        }
        out.push(alts);
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dpkg_version_order() {
        // Cases as dpkg's own test suite orders them.
        let less = [
            ("1.0", "1.1"),
            ("1.0~rc1", "1.0"),
            ("1.0", "1.0-1"),
            ("1.0-1", "1.0-1ubuntu1"),
            ("1:0.9", "2:0.1"),
            ("0.9", "1:0.1"),
            ("1.0a", "1.0b"),
            ("1.0", "1.0a"),
            ("1.0a", "1.0+"),
            ("1.2.9a", "1.2.10"),
            ("2.36.1-8", "2.36.1-8+deb12u1"),
            ("1.0~~", "1.0~"),
        ];
        for (a, b) in less {
            assert_eq!(compare_versions(a, b), Ordering::Less, "{a} < {b}");
            assert_eq!(compare_versions(b, a), Ordering::Greater, "{b} > {a}");
        }
        assert_eq!(compare_versions("0:1.0", "1.0"), Ordering::Equal);
        assert_eq!(compare_versions("1.01", "1.1"), Ordering::Equal);
    }

    #[test]
    fn relations() {
        let r = parse_relations("libc6 (>= 2.34), debconf (>= 0.5) | debconf-2.0, python3:any, foo [amd64] <!nocheck>")
            .unwrap();
        assert_eq!(r.len(), 4);
        assert_eq!(r[0][0].version, Some((Op::Ge, "2.34".into())));
        assert_eq!(r[1].len(), 2);
        assert_eq!(r[2][0].arch.as_deref(), Some("any"));
        assert_eq!(r[3][0].name, "foo");
        assert_eq!(r[0][0].to_string(), "libc6 (>= 2.34)");
        assert!(parse_relations("x (~> 1)").is_err());
    }

    #[test]
    fn stanzas() {
        let s =
            parse_stanzas("Package: a\nVersion: 1\nDescription: short\n long line\n .\n more\n\nPackage: b\n").unwrap();
        assert_eq!(s.len(), 2);
        assert_eq!(s[0].get("description"), Some("short\n long line\n .\n more"));
        assert_eq!(parse_stanzas(&s[0].render()).unwrap()[0], s[0]);
    }

    #[test]
    fn hostile_ar() {
        assert!(matches!(read_ar(&b"nope"[..]), Err(DebError::NotAr)));
        let mut a = b"!<arch>\n".to_vec();
        let mut h = format!("{:<16}{:<12}{:<6}{:<6}{:<8}{:<10}`\n", "data.tar.xz", 0, 0, 0, 100644, 1u64 << 40);
        a.extend_from_slice(h.as_bytes());
        assert!(matches!(read_ar(&a[..]), Err(DebError::Malformed(_))));
        h = format!("{:<16}{:<12}{:<6}{:<6}{:<8}{:<10}`\n", "x", 0, 0, 0, 100644, 50);
        let mut b = b"!<arch>\n".to_vec();
        b.extend_from_slice(h.as_bytes());
        b.extend_from_slice(b"short");
        assert!(matches!(read_ar(&b[..]), Err(DebError::Malformed(_))));
    }

    proptest::proptest! {
        #[test]
        fn version_order_is_antisymmetric(a in "[0-9]{1,2}(\\.[0-9a-z~+]{1,3}){0,3}(-[0-9a-z.~+]{1,4})?", b in "[0-9]{1,2}(\\.[0-9a-z~+]{1,3}){0,3}(-[0-9a-z.~+]{1,4})?") {
            proptest::prop_assert_eq!(compare_versions(&a, &b), compare_versions(&b, &a).reverse());
        }
    }
}
