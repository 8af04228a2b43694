//! Reading YAML the way distribution reads its configuration (Go's `yaml.v2`, non-strict), so
//! that a file distribution starts with means the same to Berth:
//!
//! - plain scalars resolve as YAML 1.1 does in `yaml.v2`: `yes`/`no`/`on`/`off`/`y`/`n` are
//!   booleans, `0x1f`, `017` and `1_000` are integers; quoted scalars are strings;
//! - any scalar read into a string field is its text (`secret: 12345`, `version: 0.1`);
//!   numeric and boolean fields take a quoted number or `"true"`/`"false"` only under
//!   `storage`, `auth` and `middleware`, parameter maps whose consumers parse strings (as
//!   distribution's drivers do); elsewhere a quoted value is refused, as Go's typed fields do;
//! - a key repeated in one mapping: the last one wins (each repetition is reported);
//! - anchors, aliases and `<<` merge keys work;
//! - an empty value (`inmemory:`) is null, read as an empty section.
//!
//! Every node keeps where it came from (`file:line:col`, or the environment variable that set
//! it), and deserialization errors carry the innermost node's origin, so every problem names
//! its true source.

use std::collections::HashMap;
use std::fmt;

use saphyr_parser::{Event, Parser, ScalarStyle};
use serde::de::{self, DeserializeSeed, IntoDeserializer, MapAccess, SeqAccess, Visitor};

/// Where a node came from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Origin {
    /// 1-based line and column in the file.
    File { line: usize, col: usize },
    /// Set by this environment variable.
    Env(String),
}

impl Origin {
    /// `file:line:col`, or the variable's name.
    pub fn describe(&self, file_label: &str) -> String {
        match self {
            Origin::File { line, col } => format!("{file_label}:{line}:{col}"),
            Origin::Env(var) => var.clone(),
        }
    }
}

/// A YAML node with its origin.
#[derive(Debug, Clone)]
pub struct Node {
    pub kind: Kind,
    pub origin: Origin,
}

#[derive(Debug, Clone)]
pub enum Kind {
    /// `plain`: written without quotes (and without a `!!str` tag), so it may resolve to null,
    /// a boolean or a number.
    Scalar {
        text: String,
        plain: bool,
    },
    Seq(Vec<Node>),
    Map(Vec<Entry>),
}

#[derive(Debug, Clone)]
pub struct Entry {
    pub key: String,
    pub key_origin: Origin,
    pub value: Node,
}

/// A key given twice in one mapping.
#[derive(Debug, Clone)]
pub struct Duplicate {
    pub key: String,
    pub first: Origin,
    pub last: Origin,
}

/// A syntax error.
#[derive(Debug, Clone)]
pub struct SyntaxError {
    pub message: String,
    pub origin: Origin,
}

impl Node {
    pub fn null(origin: Origin) -> Node {
        Node {
            kind: Kind::Scalar {
                text: String::new(),
                plain: true,
            },
            origin,
        }
    }

    pub fn map(entries: Vec<Entry>, origin: Origin) -> Node {
        Node {
            kind: Kind::Map(entries),
            origin,
        }
    }

    pub fn is_null(&self) -> bool {
        matches!(&self.kind, Kind::Scalar { text, plain: true } if matches!(resolve(text, true), Resolved::Null))
    }

    /// The entries of a mapping.
    pub fn entries(&self) -> Option<&[Entry]> {
        match &self.kind {
            Kind::Map(e) => Some(e),
            _ => None,
        }
    }

    pub fn entries_mut(&mut self) -> Option<&mut Vec<Entry>> {
        match &mut self.kind {
            Kind::Map(e) => Some(e),
            _ => None,
        }
    }

    /// The value of `key` in a mapping.
    pub fn get(&self, key: &str) -> Option<&Node> {
        self.entries()?
            .iter()
            .find(|e| e.key == key)
            .map(|e| &e.value)
    }

    pub fn get_mut(&mut self, key: &str) -> Option<&mut Node> {
        self.entries_mut()?
            .iter_mut()
            .find(|e| e.key == key)
            .map(|e| &mut e.value)
    }

    /// Where the key at the end of `path` (mapping keys and sequence indexes) was written.
    pub fn key_origin(&self, path: &[String]) -> Option<&Origin> {
        let (last, parents) = path.split_last()?;
        let mut node = self;
        for comp in parents {
            node = node.child(comp)?;
        }
        match &node.kind {
            Kind::Map(entries) => entries
                .iter()
                .find(|e| &e.key == last)
                .map(|e| &e.key_origin),
            Kind::Seq(items) => items.get(last.parse::<usize>().ok()?).map(|n| &n.origin),
            Kind::Scalar { .. } => None,
        }
    }

    fn child(&self, comp: &str) -> Option<&Node> {
        match &self.kind {
            Kind::Map(_) => self.get(comp),
            Kind::Seq(items) => items.get(comp.parse::<usize>().ok()?),
            Kind::Scalar { .. } => None,
        }
    }

    /// Gives this node and everything below it another origin (a variable's value).
    pub fn set_origin(&mut self, origin: &Origin) {
        self.origin = origin.clone();
        match &mut self.kind {
            Kind::Scalar { .. } => {}
            Kind::Seq(items) => items.iter_mut().for_each(|n| n.set_origin(origin)),
            Kind::Map(entries) => entries.iter_mut().for_each(|e| {
                e.key_origin = origin.clone();
                e.value.set_origin(origin);
            }),
        }
    }
}

/// Parses the first document of `text`. An empty text is a null node.
pub fn parse(text: &str) -> Result<(Node, Vec<Duplicate>), SyntaxError> {
    let mut b = Builder::default();
    for ev in Parser::new_from_str(text) {
        let (event, span) = ev.map_err(|e| SyntaxError {
            message: e.info().to_owned(),
            origin: Origin::File {
                line: e.marker().line(),
                col: e.marker().col() + 1,
            },
        })?;
        let origin = Origin::File {
            line: span.start.line(),
            col: span.start.col() + 1,
        };
        match event {
            Event::Scalar(text, style, anchor, tag) => {
                // `!!str 5000` is a string; other tags are ignored, as distribution's fields
                // decide the type.
                let plain =
                    style == ScalarStyle::Plain && tag.as_ref().is_none_or(|t| t.suffix != "str");
                b.complete(
                    Node {
                        kind: Kind::Scalar {
                            text: text.into_owned(),
                            plain,
                        },
                        origin,
                    },
                    anchor,
                )?;
            }
            Event::Alias(id) => {
                let (node, size, height) =
                    b.anchors.get(&id).cloned().ok_or_else(|| SyntaxError {
                        message: "alias to an unknown anchor".to_owned(),
                        origin: origin.clone(),
                    })?;
                // An alias puts a whole subtree where it stands: its height counts too.
                if b.stack.len() + height > MAX_DEPTH {
                    return Err(SyntaxError {
                        message: format!(
                            "nested more than {MAX_DEPTH} levels deep (through aliases)"
                        ),
                        origin,
                    });
                }
                // Aliases of aliases grow exponentially ("billion laughs").
                b.expanded += size;
                if b.expanded > MAX_EXPANDED {
                    return Err(SyntaxError {
                        message: "aliases expand to too many nodes".to_owned(),
                        origin,
                    });
                }
                b.complete(node, 0)?;
            }
            Event::SequenceStart(..) | Event::MappingStart(..) if b.stack.len() >= MAX_DEPTH => {
                return Err(SyntaxError {
                    message: format!("nested more than {MAX_DEPTH} levels deep"),
                    origin,
                });
            }
            Event::SequenceStart(anchor, _) => b.stack.push(Frame {
                origin,
                anchor,
                body: Body::Seq(Vec::new()),
            }),
            Event::MappingStart(anchor, _) => b.stack.push(Frame {
                origin,
                anchor,
                body: Body::Map {
                    entries: Vec::new(),
                    key: None,
                    merges: Vec::new(),
                },
            }),
            Event::SequenceEnd | Event::MappingEnd => {
                let Some(frame) = b.stack.pop() else {
                    continue;
                };
                let kind = match frame.body {
                    Body::Seq(items) => Kind::Seq(items),
                    Body::Map {
                        mut entries,
                        merges,
                        ..
                    } => {
                        merge(&mut entries, merges);
                        Kind::Map(entries)
                    }
                };
                b.complete(
                    Node {
                        kind,
                        origin: frame.origin,
                    },
                    frame.anchor,
                )?;
            }
            // yaml.v2's Unmarshal reads the first document only.
            Event::DocumentEnd if b.root.is_some() => break,
            _ => {}
        }
    }
    let root = b
        .root
        .unwrap_or_else(|| Node::null(Origin::File { line: 1, col: 1 }));
    Ok((root, b.duplicates))
}

/// `<<: *base` (or a list of them): keys the mapping does not set itself come from the merged
/// mappings, the first one listed winning.
fn merge(entries: &mut Vec<Entry>, merges: Vec<Node>) {
    for m in merges {
        let maps = match m.kind {
            Kind::Seq(items) => items,
            other => vec![Node {
                kind: other,
                origin: m.origin,
            }],
        };
        for map in maps {
            if let Kind::Map(more) = map.kind {
                for e in more {
                    if !entries.iter().any(|x| x.key == e.key) {
                        entries.push(e);
                    }
                }
            }
        }
    }
}

/// Deeper documents are refused: the tree is walked recursively.
const MAX_DEPTH: usize = 64;
/// Nodes that aliases may add in total.
const MAX_EXPANDED: usize = 100_000;

/// Levels of collections in `n` (a scalar has none).
fn height(n: &Node) -> usize {
    match &n.kind {
        Kind::Scalar { .. } => 0,
        Kind::Seq(items) => 1 + items.iter().map(height).max().unwrap_or(0),
        Kind::Map(entries) => 1 + entries.iter().map(|e| height(&e.value)).max().unwrap_or(0),
    }
}

fn size(n: &Node) -> usize {
    1 + match &n.kind {
        Kind::Scalar { .. } => 0,
        Kind::Seq(items) => items.iter().map(size).sum(),
        Kind::Map(entries) => entries.iter().map(|e| size(&e.value)).sum(),
    }
}

#[derive(Default)]
struct Builder {
    stack: Vec<Frame>,
    anchors: HashMap<usize, (Node, usize, usize)>,
    expanded: usize,
    root: Option<Node>,
    duplicates: Vec<Duplicate>,
}

struct Frame {
    origin: Origin,
    anchor: usize,
    body: Body,
}

enum Body {
    Seq(Vec<Node>),
    Map {
        entries: Vec<Entry>,
        key: Option<(String, Origin, bool)>,
        merges: Vec<Node>,
    },
}

impl Builder {
    fn complete(&mut self, node: Node, anchor: usize) -> Result<(), SyntaxError> {
        if anchor != 0 {
            let n = size(&node);
            self.anchors
                .insert(anchor, (node.clone(), n, height(&node)));
        }
        let Some(frame) = self.stack.last_mut() else {
            self.root.get_or_insert(node);
            return Ok(());
        };
        match &mut frame.body {
            Body::Seq(items) => items.push(node),
            Body::Map {
                entries,
                key,
                merges,
            } => match key.take() {
                None => match node.kind {
                    Kind::Scalar { text, plain } => *key = Some((text, node.origin, plain)),
                    _ => {
                        return Err(SyntaxError {
                            message: "a mapping key must be a plain word".to_owned(),
                            origin: node.origin,
                        })
                    }
                },
                Some((k, _, true)) if k == "<<" => merges.push(node),
                Some((k, key_origin, _)) => {
                    if let Some(e) = entries.iter_mut().find(|e| e.key == k) {
                        self.duplicates.push(Duplicate {
                            key: k,
                            first: std::mem::replace(&mut e.key_origin, key_origin),
                            last: e.key_origin.clone(),
                        });
                        e.value = node;
                    } else {
                        entries.push(Entry {
                            key: k,
                            key_origin,
                            value: node,
                        });
                    }
                }
            },
        }
        Ok(())
    }
}

/// A scalar as `yaml.v2` resolves it.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Resolved<'a> {
    Null,
    Bool(bool),
    Int(i128),
    Float(f64),
    Str(&'a str),
}

/// Resolves a scalar: plain ones by YAML 1.1's rules as `yaml.v2` applies them.
pub fn resolve(text: &str, plain: bool) -> Resolved<'_> {
    if !plain {
        return Resolved::Str(text);
    }
    match text {
        "" | "~" | "null" | "Null" | "NULL" => return Resolved::Null,
        "y" | "Y" | "yes" | "Yes" | "YES" | "true" | "True" | "TRUE" | "on" | "On" | "ON" => {
            return Resolved::Bool(true)
        }
        "n" | "N" | "no" | "No" | "NO" | "false" | "False" | "FALSE" | "off" | "Off" | "OFF" => {
            return Resolved::Bool(false)
        }
        ".inf" | ".Inf" | ".INF" | "+.inf" | "+.Inf" | "+.INF" => {
            return Resolved::Float(f64::INFINITY)
        }
        "-.inf" | "-.Inf" | "-.INF" => return Resolved::Float(f64::NEG_INFINITY),
        ".nan" | ".NaN" | ".NAN" => return Resolved::Float(f64::NAN),
        _ => {}
    }
    if let Some(n) = parse_int(text) {
        return Resolved::Int(n);
    }
    if is_float(text) {
        if let Ok(f) = text.replace('_', "").parse::<f64>() {
            return Resolved::Float(f);
        }
    }
    Resolved::Str(text)
}

/// An integer as Go's `strconv.ParseInt(s, 0, 64)` reads it after `yaml.v2` drops `_`: an
/// optional sign, then decimal, `0x` hex, `0o`/leading-`0` octal or `0b` binary.
pub fn parse_int(text: &str) -> Option<i128> {
    let s = text.replace('_', "");
    let (neg, digits) = match s.strip_prefix('-') {
        Some(r) => (true, r),
        None => (false, s.strip_prefix('+').unwrap_or(&s)),
    };
    let lower = digits.to_ascii_lowercase();
    let (radix, body) = if let Some(r) = lower.strip_prefix("0x") {
        (16, r)
    } else if let Some(r) = lower.strip_prefix("0o") {
        (8, r)
    } else if let Some(r) = lower.strip_prefix("0b") {
        (2, r)
    } else if lower.len() > 1 && lower.starts_with('0') {
        (8, &lower[1..])
    } else {
        (10, lower.as_str())
    };
    if body.is_empty() || !body.chars().all(|c| c.is_digit(radix)) {
        return None;
    }
    let n = i128::from_str_radix(body, radix).ok()?;
    let n = if neg { -n } else { n };
    (i128::from(i64::MIN)..=i128::from(u64::MAX))
        .contains(&n)
        .then_some(n)
}

/// `yaml.v2`'s float pattern: `[-+]?(\.[0-9]+|[0-9]+(\.[0-9]*)?)([eE][-+]?[0-9]+)?`.
fn is_float(text: &str) -> bool {
    let s = text.replace('_', "");
    let s = s.strip_prefix(['-', '+']).unwrap_or(&s);
    let (mantissa, exp) = match s.find(['e', 'E']) {
        Some(i) => (&s[..i], Some(&s[i + 1..])),
        None => (s, None),
    };
    let digits = |d: &str| !d.is_empty() && d.chars().all(|c| c.is_ascii_digit());
    let mantissa_ok = match mantissa.split_once('.') {
        Some(("", frac)) => digits(frac),
        Some((int, frac)) => digits(int) && (frac.is_empty() || digits(frac)),
        None => digits(mantissa),
    };
    let exp_ok = exp.is_none_or(|e| digits(e.strip_prefix(['-', '+']).unwrap_or(e)));
    mantissa_ok && exp_ok
}

/// A deserialization error, with the origin of the node it is about.
#[derive(Debug, Clone)]
pub struct Error {
    pub message: String,
    pub origin: Option<Origin>,
}

impl Error {
    fn at(mut self, origin: &Origin) -> Error {
        if self.origin.is_none() {
            self.origin = Some(origin.clone());
        }
        self
    }
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.message)
    }
}

impl std::error::Error for Error {}

impl de::Error for Error {
    fn custom<T: fmt::Display>(msg: T) -> Self {
        Error {
            message: msg.to_string(),
            origin: None,
        }
    }
}

/// A serde deserializer over a [`Node`] with `yaml.v2`'s reading rules.
pub struct De<'a>(pub &'a Node, pub Typing);

/// How strictly a number or boolean is read from a quoted scalar. distribution reads its
/// sections into Go structs, where `yaml.v2` refuses `"5"` for an integer and `"true"` for a
/// boolean; but `storage`, `auth` and `middleware` are parameter maps whose consumers (storage
/// drivers, access controllers, middleware) parse strings themselves and take both.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Typing {
    /// The whole file: its `storage`, `auth` and `middleware` are lenient, the rest strict.
    Root,
    Strict,
    Lenient,
}

impl Typing {
    fn child(self, key: &str) -> Typing {
        match self {
            Typing::Root if ["storage", "auth", "middleware"].contains(&key) => Typing::Lenient,
            Typing::Root => Typing::Strict,
            other => other,
        }
    }
}

impl<'a> De<'a> {
    fn err(&self, message: String) -> Error {
        Error {
            message,
            origin: Some(self.0.origin.clone()),
        }
    }

    fn scalar(&self) -> Option<(&'a str, bool)> {
        match &self.0.kind {
            Kind::Scalar { text, plain } => Some((text, *plain)),
            _ => None,
        }
    }

    /// The value for a message: a file's value is quoted, a variable's never (it may be a
    /// secret).
    fn shown(&self) -> String {
        match (self.scalar(), &self.0.origin) {
            (Some(_), Origin::Env(_)) => "the variable's value".to_owned(),
            (Some((t, _)), _) => format!("`{t}`"),
            (None, _) => self.what().to_owned(),
        }
    }

    fn what(&self) -> &'static str {
        match &self.0.kind {
            Kind::Scalar { .. } => "a value",
            Kind::Seq(_) => "a list",
            Kind::Map(_) => "a mapping",
        }
    }

    /// A quoted scalar where distribution's Go struct wants a number or boolean.
    fn quoted(&self, wanted: &str) -> Error {
        self.err(format!(
            "expected {wanted}, found the quoted {} (distribution refuses a quoted value here \
             too: write it without quotes)",
            self.shown()
        ))
    }

    fn visit_int<'de, V: Visitor<'de>>(self, v: V) -> Result<V::Value, Error> {
        let origin = &self.0.origin;
        let n = match self.scalar() {
            // A quoted number is read too where distribution's consumers parse strings.
            Some((_, false)) if self.1 != Typing::Lenient => {
                return Err(self.quoted("an integer"));
            }
            Some((t, plain)) => match resolve(t, true) {
                Resolved::Int(n) => Some(n),
                // yaml.v2 truncates a float read into an integer field.
                Resolved::Float(f) if plain && f.is_finite() && f.fract() == 0.0 => Some(f as i128),
                _ => None,
            },
            None => None,
        };
        let Some(n) = n else {
            return Err(self.err(format!("expected an integer, found {}", self.shown())));
        };
        match i64::try_from(n) {
            Ok(i) => v.visit_i64(i),
            Err(_) => v.visit_u64(u64::try_from(n).unwrap_or(u64::MAX)),
        }
        .map_err(|e: Error| e.at(origin))
    }
}

macro_rules! ints {
    ($($m:ident),*) => {$(
        fn $m<V: Visitor<'de>>(self, v: V) -> Result<V::Value, Error> {
            self.visit_int(v)
        }
    )*};
}

impl<'de> de::Deserializer<'de> for De<'_> {
    type Error = Error;

    fn deserialize_any<V: Visitor<'de>>(self, v: V) -> Result<V::Value, Error> {
        let origin = &self.0.origin;
        match &self.0.kind {
            Kind::Scalar { text, plain } => match resolve(text, *plain) {
                Resolved::Null => v.visit_unit(),
                Resolved::Bool(b) => v.visit_bool(b),
                Resolved::Int(n) => match i64::try_from(n) {
                    Ok(i) => v.visit_i64(i),
                    Err(_) => v.visit_u64(u64::try_from(n).unwrap_or(u64::MAX)),
                },
                Resolved::Float(f) => v.visit_f64(f),
                Resolved::Str(s) => v.visit_str(s),
            },
            Kind::Seq(items) => v.visit_seq(SeqDe(items.iter(), self.1)),
            Kind::Map(entries) => v.visit_map(MapDe {
                iter: entries.iter(),
                value: None,
                typing: self.1,
            }),
        }
        .map_err(|e: Error| e.at(origin))
    }

    fn deserialize_bool<V: Visitor<'de>>(self, v: V) -> Result<V::Value, Error> {
        let b = match self.scalar() {
            Some((_, false)) if self.1 != Typing::Lenient => {
                return Err(self.quoted("true or false"));
            }
            Some((t, plain)) => match (resolve(t, plain), t) {
                (Resolved::Bool(b), _) => Some(b),
                (_, "true") => Some(true),
                (_, "false") => Some(false),
                _ => None,
            },
            None => None,
        };
        match b {
            Some(b) => v.visit_bool(b).map_err(|e: Error| e.at(&self.0.origin)),
            None => Err(self.err(format!("expected true or false, found {}", self.shown()))),
        }
    }

    ints!(
        deserialize_i8,
        deserialize_i16,
        deserialize_i32,
        deserialize_i64,
        deserialize_i128,
        deserialize_u8,
        deserialize_u16,
        deserialize_u32,
        deserialize_u64,
        deserialize_u128
    );

    fn deserialize_f32<V: Visitor<'de>>(self, v: V) -> Result<V::Value, Error> {
        self.deserialize_f64(v)
    }

    fn deserialize_f64<V: Visitor<'de>>(self, v: V) -> Result<V::Value, Error> {
        if matches!(self.scalar(), Some((_, false))) && self.1 != Typing::Lenient {
            return Err(self.quoted("a number"));
        }
        let f = self.scalar().and_then(|(t, _)| match resolve(t, true) {
            Resolved::Int(n) => Some(n as f64),
            Resolved::Float(f) => Some(f),
            _ => None,
        });
        match f {
            Some(f) => v.visit_f64(f).map_err(|e: Error| e.at(&self.0.origin)),
            None => Err(self.err(format!("expected a number, found {}", self.what()))),
        }
    }

    fn deserialize_char<V: Visitor<'de>>(self, v: V) -> Result<V::Value, Error> {
        self.deserialize_str(v)
    }

    fn deserialize_str<V: Visitor<'de>>(self, v: V) -> Result<V::Value, Error> {
        match self.scalar() {
            // yaml.v2 gives a string field the scalar's text, whatever it resolves to; null
            // leaves it empty.
            Some((t, plain)) if plain && matches!(resolve(t, true), Resolved::Null) => {
                v.visit_str("")
            }
            Some((t, _)) => v.visit_str(t),
            None => Err(self.err(format!("expected a single value, found {}", self.what()))),
        }
        .map_err(|e: Error| e.at(&self.0.origin))
    }

    fn deserialize_string<V: Visitor<'de>>(self, v: V) -> Result<V::Value, Error> {
        self.deserialize_str(v)
    }

    fn deserialize_bytes<V: Visitor<'de>>(self, v: V) -> Result<V::Value, Error> {
        self.deserialize_str(v)
    }

    fn deserialize_byte_buf<V: Visitor<'de>>(self, v: V) -> Result<V::Value, Error> {
        self.deserialize_str(v)
    }

    fn deserialize_option<V: Visitor<'de>>(self, v: V) -> Result<V::Value, Error> {
        if self.0.is_null() {
            v.visit_none()
        } else {
            v.visit_some(De(self.0, self.1))
        }
        .map_err(|e: Error| e.at(&self.0.origin))
    }

    fn deserialize_unit<V: Visitor<'de>>(self, v: V) -> Result<V::Value, Error> {
        v.visit_unit().map_err(|e: Error| e.at(&self.0.origin))
    }

    fn deserialize_unit_struct<V: Visitor<'de>>(
        self,
        _name: &'static str,
        v: V,
    ) -> Result<V::Value, Error> {
        self.deserialize_unit(v)
    }

    fn deserialize_newtype_struct<V: Visitor<'de>>(
        self,
        _name: &'static str,
        v: V,
    ) -> Result<V::Value, Error> {
        v.visit_newtype_struct(De(self.0, self.1))
    }

    fn deserialize_seq<V: Visitor<'de>>(self, v: V) -> Result<V::Value, Error> {
        match &self.0.kind {
            Kind::Seq(items) => v.visit_seq(SeqDe(items.iter(), self.1)),
            _ if self.0.is_null() => v.visit_seq(SeqDe([].iter(), self.1)),
            // A list of one written as a bare value (`Authorization: Bearer x` for a header
            // of distribution's `map of lists`) is the common slip: say how to write it.
            Kind::Scalar { .. } => {
                return Err(self.err(format!(
                    "expected a list, found {}: write a list, `[...]` or one `- ` line per item",
                    self.what()
                )))
            }
            _ => return Err(self.err(format!("expected a list, found {}", self.what()))),
        }
        .map_err(|e: Error| e.at(&self.0.origin))
    }

    fn deserialize_tuple<V: Visitor<'de>>(self, _len: usize, v: V) -> Result<V::Value, Error> {
        self.deserialize_seq(v)
    }

    fn deserialize_tuple_struct<V: Visitor<'de>>(
        self,
        _name: &'static str,
        _len: usize,
        v: V,
    ) -> Result<V::Value, Error> {
        self.deserialize_seq(v)
    }

    fn deserialize_map<V: Visitor<'de>>(self, v: V) -> Result<V::Value, Error> {
        match &self.0.kind {
            Kind::Map(entries) => v.visit_map(MapDe {
                iter: entries.iter(),
                value: None,
                typing: self.1,
            }),
            _ if self.0.is_null() => v.visit_map(MapDe {
                iter: [].iter(),
                value: None,
                typing: self.1,
            }),
            _ => {
                return Err(self.err(format!(
                    "expected a mapping (a section), found {}",
                    self.shown()
                )))
            }
        }
        .map_err(|e: Error| e.at(&self.0.origin))
    }

    fn deserialize_struct<V: Visitor<'de>>(
        self,
        _name: &'static str,
        _fields: &'static [&'static str],
        v: V,
    ) -> Result<V::Value, Error> {
        self.deserialize_map(v)
    }

    fn deserialize_enum<V: Visitor<'de>>(
        self,
        _name: &'static str,
        _variants: &'static [&'static str],
        v: V,
    ) -> Result<V::Value, Error> {
        match self.scalar() {
            Some((t, _)) => v.visit_enum(t.into_deserializer()),
            None => Err(self.err(format!("expected a word, found {}", self.what()))),
        }
        .map_err(|e: Error| e.at(&self.0.origin))
    }

    fn deserialize_identifier<V: Visitor<'de>>(self, v: V) -> Result<V::Value, Error> {
        self.deserialize_str(v)
    }

    fn deserialize_ignored_any<V: Visitor<'de>>(self, v: V) -> Result<V::Value, Error> {
        v.visit_unit()
    }
}

struct SeqDe<'a>(std::slice::Iter<'a, Node>, Typing);

impl<'de> SeqAccess<'de> for SeqDe<'_> {
    type Error = Error;

    fn next_element_seed<T: DeserializeSeed<'de>>(
        &mut self,
        seed: T,
    ) -> Result<Option<T::Value>, Error> {
        match self.0.next() {
            Some(n) => seed.deserialize(De(n, self.1)).map(Some),
            None => Ok(None),
        }
    }

    fn size_hint(&self) -> Option<usize> {
        Some(self.0.len())
    }
}

struct MapDe<'a> {
    iter: std::slice::Iter<'a, Entry>,
    value: Option<(&'a Node, Typing)>,
    typing: Typing,
}

impl<'de> MapAccess<'de> for MapDe<'_> {
    type Error = Error;

    fn next_key_seed<K: DeserializeSeed<'de>>(
        &mut self,
        seed: K,
    ) -> Result<Option<K::Value>, Error> {
        match self.iter.next() {
            Some(e) => {
                self.value = Some((&e.value, self.typing.child(&e.key)));
                let key: de::value::StrDeserializer<'_, Error> = e.key.as_str().into_deserializer();
                seed.deserialize(key)
                    .map(Some)
                    .map_err(|err| err.at(&e.key_origin))
            }
            None => Ok(None),
        }
    }

    fn next_value_seed<V: DeserializeSeed<'de>>(&mut self, seed: V) -> Result<V::Value, Error> {
        match self.value.take() {
            Some((n, typing)) => seed.deserialize(De(n, typing)),
            None => Err(de::Error::custom("a value without its key")),
        }
    }

    fn size_hint(&self) -> Option<usize> {
        Some(self.iter.len())
    }
}

/// The field names of the struct at `path` of `T` (for "did you mean" hints): serde's derive
/// hands its field list to `deserialize_struct`, so a deserializer that walks down `path` can
/// read it without a hand-kept list.
pub fn fields_at<'de, T: de::Deserialize<'de>>(path: &[String]) -> Vec<&'static str> {
    let found = std::cell::RefCell::new(Vec::new());
    let _ = T::deserialize(Probe {
        path,
        found: &found,
    });
    found.into_inner()
}

struct Probe<'p> {
    path: &'p [String],
    found: &'p std::cell::RefCell<Vec<&'static str>>,
}

fn stop() -> Error {
    de::Error::custom("probe")
}

impl<'de> de::Deserializer<'de> for Probe<'_> {
    type Error = Error;

    fn deserialize_any<V: Visitor<'de>>(self, _v: V) -> Result<V::Value, Error> {
        Err(stop())
    }

    fn deserialize_option<V: Visitor<'de>>(self, v: V) -> Result<V::Value, Error> {
        v.visit_some(self)
    }

    fn deserialize_newtype_struct<V: Visitor<'de>>(
        self,
        _name: &'static str,
        v: V,
    ) -> Result<V::Value, Error> {
        v.visit_newtype_struct(self)
    }

    fn deserialize_seq<V: Visitor<'de>>(self, v: V) -> Result<V::Value, Error> {
        match self.path.split_first() {
            Some((first, rest)) if first.parse::<usize>().is_ok() => {
                v.visit_seq(ProbeSeq(Some(Probe {
                    path: rest,
                    found: self.found,
                })))
            }
            _ => Err(stop()),
        }
    }

    fn deserialize_struct<V: Visitor<'de>>(
        self,
        _name: &'static str,
        fields: &'static [&'static str],
        v: V,
    ) -> Result<V::Value, Error> {
        match self.path.split_first() {
            None => {
                *self.found.borrow_mut() = fields.to_vec();
                Err(stop())
            }
            Some((first, rest)) if fields.contains(&first.as_str()) => v.visit_map(ProbeMap {
                key: Some(first),
                value: Some(Probe {
                    path: rest,
                    found: self.found,
                }),
            }),
            Some(_) => Err(stop()),
        }
    }

    serde::forward_to_deserialize_any! {
        bool i8 i16 i32 i64 i128 u8 u16 u32 u64 u128 f32 f64 char str string bytes byte_buf unit
        unit_struct tuple tuple_struct map enum identifier ignored_any
    }
}

struct ProbeSeq<'p>(Option<Probe<'p>>);

impl<'de> SeqAccess<'de> for ProbeSeq<'_> {
    type Error = Error;

    fn next_element_seed<T: DeserializeSeed<'de>>(
        &mut self,
        seed: T,
    ) -> Result<Option<T::Value>, Error> {
        match self.0.take() {
            Some(p) => seed.deserialize(p).map(Some),
            None => Ok(None),
        }
    }
}

struct ProbeMap<'p> {
    key: Option<&'p String>,
    value: Option<Probe<'p>>,
}

impl<'de> MapAccess<'de> for ProbeMap<'_> {
    type Error = Error;

    fn next_key_seed<K: DeserializeSeed<'de>>(
        &mut self,
        seed: K,
    ) -> Result<Option<K::Value>, Error> {
        match self.key.take() {
            Some(k) => {
                let key: de::value::StrDeserializer<'_, Error> = k.as_str().into_deserializer();
                seed.deserialize(key).map(Some)
            }
            None => Ok(None),
        }
    }

    fn next_value_seed<V: DeserializeSeed<'de>>(&mut self, seed: V) -> Result<V::Value, Error> {
        match self.value.take() {
            Some(p) => seed.deserialize(p),
            None => Err(stop()),
        }
    }
}
