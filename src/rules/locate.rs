//! Where things are in a YAML file: document paths and their line:column.
//!
//! serde reads values without positions, so a separate pass over the parser's events records
//! the position of every key and value by its path (`phases.Running.transitions[0].to`). Any
//! problem found later, in any stage, is reported at the position of its path (or of the
//! closest ancestor that has one). The same pass finds duplicate keys.

use std::collections::HashMap;
use std::fmt;
use yaml_rust2::parser::{Event, MarkedEventReceiver, Parser};
use yaml_rust2::scanner::Marker;

/// One step of a path inside a document.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Seg {
    /// A mapping key.
    Key(String),
    /// A sequence index.
    Index(usize),
}

/// A path inside a document, e.g. `phases.Running.transitions[0].to`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Hash)]
pub struct DocPath(pub Vec<Seg>);

impl DocPath {
    /// The document root.
    pub fn root() -> DocPath {
        DocPath(Vec::new())
    }
    /// This path with a key appended.
    pub fn key(&self, k: &str) -> DocPath {
        let mut p = self.clone();
        p.0.push(Seg::Key(k.to_string()));
        p
    }
    /// This path with an index appended.
    pub fn index(&self, i: usize) -> DocPath {
        let mut p = self.clone();
        p.0.push(Seg::Index(i));
        p
    }
    /// This path followed by another.
    pub fn join(&self, other: &DocPath) -> DocPath {
        let mut p = self.clone();
        p.0.extend(other.0.iter().cloned());
        p
    }
    fn parent(&self) -> Option<DocPath> {
        if self.0.is_empty() {
            None
        } else {
            Some(DocPath(self.0[..self.0.len() - 1].to_vec()))
        }
    }
}

impl fmt::Display for DocPath {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.0.is_empty() {
            return f.write_str("(document)");
        }
        for (i, seg) in self.0.iter().enumerate() {
            match seg {
                Seg::Key(k) if is_plain(k) => {
                    if i > 0 {
                        f.write_str(".")?;
                    }
                    f.write_str(k)?;
                }
                Seg::Key(k) => write!(f, "[{k:?}]")?,
                Seg::Index(n) => write!(f, "[{n}]")?,
            }
        }
        Ok(())
    }
}

fn is_plain(k: &str) -> bool {
    !k.is_empty()
        && k.chars()
            .all(|c| c.is_alphanumeric() || c == '_' || c == '-')
}

/// A position in a file (1-based line and column).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Pos {
    /// Line, from 1.
    pub line: usize,
    /// Column, from 1.
    pub column: usize,
}

impl Pos {
    fn of(m: &Marker) -> Pos {
        Pos {
            line: m.line().max(1),
            column: m.col() + 1,
        }
    }
}

/// Positions of keys and values of one YAML document.
#[derive(Debug, Default)]
pub struct SourceMap {
    keys: HashMap<DocPath, Pos>,
    values: HashMap<DocPath, Pos>,
    /// Keys that appear twice in one mapping, with the position of the second.
    pub duplicates: Vec<(DocPath, Pos)>,
}

impl SourceMap {
    /// Reads the positions of `text`. A syntax error, nesting deeper than [`MAX_DEPTH`], or
    /// aliases expanding to more than [`MAX_NODES`] nodes is returned with its position.
    pub fn build(text: &str) -> Result<SourceMap, (Pos, String)> {
        let mut builder = Builder::default();
        let mut parser = Parser::new_from_str(text);
        // events one by one: the parser's own `load` recurses once per nesting level
        loop {
            let (ev, mark) = parser
                .next_token()
                .map_err(|e| (Pos::of(e.marker()), e.info().to_string()))?;
            if matches!(ev, Event::StreamEnd) {
                break;
            }
            builder.on_event(ev, mark);
            if let Some(problem) = builder.limit.take() {
                return Err((Pos::of(&mark), problem));
            }
        }
        Ok(builder.map)
    }

    /// Position of the value at `path`, else of its key, else of the nearest ancestor.
    pub fn value_pos(&self, path: &DocPath) -> Pos {
        self.find(path, true)
    }

    /// Position of the key at `path` (for "unknown field"), else as [`SourceMap::value_pos`].
    pub fn key_pos(&self, path: &DocPath) -> Pos {
        self.find(path, false)
    }

    fn find(&self, path: &DocPath, value_first: bool) -> Pos {
        let mut p = Some(path.clone());
        while let Some(cur) = p {
            let (a, b) = if value_first {
                (&self.values, &self.keys)
            } else {
                (&self.keys, &self.values)
            };
            if let Some(pos) = a.get(&cur).or_else(|| b.get(&cur)) {
                return *pos;
            }
            p = cur.parent();
        }
        Pos { line: 1, column: 1 }
    }
}

enum Frame {
    Map {
        path: DocPath,
        key: Option<String>,
        seen: Vec<String>,
    },
    Seq {
        path: DocPath,
        next: usize,
    },
}

/// Deepest nesting of mappings and sequences accepted.
pub const MAX_DEPTH: usize = 100;
/// Most nodes a document may have once every alias is expanded.
pub const MAX_NODES: u64 = 200_000;

#[derive(Default)]
struct Builder {
    stack: Vec<Frame>,
    map: SourceMap,
    /// Depth of a complex (non-scalar) mapping key being skipped.
    skipping_key: usize,
    /// Expanded node counts of the open containers, innermost last, with their anchor ids.
    sizes: Vec<(u64, usize)>,
    /// Expanded size of each anchored node.
    anchors: HashMap<usize, u64>,
    /// Nodes of the document so far, aliases expanded.
    total: u64,
    /// A limit that was exceeded.
    limit: Option<String>,
}

impl Builder {
    /// Counts a finished node of `size` expanded nodes.
    fn count(&mut self, size: u64, anchor: usize) {
        if anchor > 0 {
            self.anchors.insert(anchor, size);
        }
        match self.sizes.last_mut() {
            Some((parent, _)) => *parent = parent.saturating_add(size),
            None => self.total = self.total.saturating_add(size),
        }
        let open: u64 = self.sizes.iter().map(|(n, _)| *n).sum();
        if self.total.saturating_add(open) > MAX_NODES && self.limit.is_none() {
            self.limit = Some(format!(
                "the document expands to more than {MAX_NODES} nodes once its aliases are expanded; a rules file needs far fewer (check for repeated aliases)"
            ));
        }
    }
}

impl Builder {
    /// Path of the node starting now, or `None` when it is a mapping key.
    fn node_path(&mut self, scalar_key: Option<&str>, mark: Marker) -> Option<DocPath> {
        match self.stack.last_mut() {
            None => Some(DocPath::root()),
            Some(Frame::Seq { path, next }) => {
                let p = path.index(*next);
                *next += 1;
                Some(p)
            }
            Some(Frame::Map { path, key, seen }) => match key.take() {
                Some(k) => Some(path.key(&k)),
                None => {
                    let k = scalar_key.unwrap_or("").to_string();
                    let p = path.key(&k);
                    if seen.contains(&k) {
                        self.map.duplicates.push((p.clone(), Pos::of(&mark)));
                    } else {
                        seen.push(k.clone());
                    }
                    self.map.keys.insert(p, Pos::of(&mark));
                    *key = Some(k);
                    None
                }
            },
        }
    }
}

impl MarkedEventReceiver for Builder {
    fn on_event(&mut self, ev: Event, mark: Marker) {
        if self.skipping_key > 0 {
            match ev {
                Event::MappingStart(..) | Event::SequenceStart(..) => self.skipping_key += 1,
                Event::MappingEnd | Event::SequenceEnd => self.skipping_key -= 1,
                _ => {}
            }
            return;
        }
        match &ev {
            Event::Scalar(_, _, anchor, _) => self.count(1, *anchor),
            Event::Alias(id) => {
                let size = self.anchors.get(id).copied().unwrap_or(1);
                self.count(size, 0);
            }
            Event::MappingStart(anchor, _) | Event::SequenceStart(anchor, _) => {
                self.sizes.push((1, *anchor));
                if self.sizes.len() > MAX_DEPTH && self.limit.is_none() {
                    self.limit = Some(format!(
                        "nesting deeper than {MAX_DEPTH} levels; a rules file needs far fewer"
                    ));
                }
            }
            Event::MappingEnd | Event::SequenceEnd => {
                if let Some((size, anchor)) = self.sizes.pop() {
                    self.count(size, anchor);
                }
            }
            _ => {}
        }
        match ev {
            Event::Scalar(text, ..) => {
                if let Some(p) = self.node_path(Some(&text), mark) {
                    self.map.values.insert(p, Pos::of(&mark));
                }
            }
            Event::Alias(_) => {
                if let Some(p) = self.node_path(Some(""), mark) {
                    self.map.values.insert(p, Pos::of(&mark));
                }
            }
            Event::MappingStart(..) | Event::SequenceStart(..) => {
                let is_map = matches!(ev, Event::MappingStart(..));
                let in_map = matches!(self.stack.last(), Some(Frame::Map { .. }));
                match self.node_path(None, mark) {
                    Some(p) => {
                        // a block mapping's start mark points at its first key's colon; a map
                        // entry's key is where people look, so such mappings keep only that
                        if !(in_map && is_map) {
                            let pos = if self.stack.is_empty() {
                                Pos { line: 1, column: 1 }
                            } else {
                                Pos::of(&mark)
                            };
                            self.map.values.insert(p.clone(), pos);
                        }
                        self.stack.push(if is_map {
                            Frame::Map {
                                path: p,
                                key: None,
                                seen: Vec::new(),
                            }
                        } else {
                            Frame::Seq { path: p, next: 0 }
                        });
                    }
                    // A mapping or sequence used as a key: not meaningful in rules; skip it.
                    None => self.skipping_key = 1,
                }
            }
            Event::MappingEnd | Event::SequenceEnd => {
                self.stack.pop();
            }
            _ => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn positions_of_nested_keys_and_values() {
        let text = "a:\n  b: 1\n  list:\n    - x: y\n    - z\n\"k/v\": 2\n";
        let m = SourceMap::build(text).unwrap();
        let b = DocPath::root().key("a").key("b");
        assert_eq!(m.value_pos(&b), Pos { line: 2, column: 6 });
        assert_eq!(m.key_pos(&b), Pos { line: 2, column: 3 });
        let x = DocPath::root().key("a").key("list").index(0).key("x");
        assert_eq!(
            m.value_pos(&x),
            Pos {
                line: 4,
                column: 10
            }
        );
        let z = DocPath::root().key("a").key("list").index(1);
        assert_eq!(m.value_pos(&z), Pos { line: 5, column: 7 });
        let kv = DocPath::root().key("k/v");
        assert_eq!(kv.to_string(), "[\"k/v\"]");
        assert_eq!(m.value_pos(&kv).line, 6);
        // unknown paths fall back to the nearest ancestor
        assert_eq!(m.value_pos(&b.key("nope")), Pos { line: 2, column: 6 });
    }

    #[test]
    fn deep_nesting_and_alias_fan_out_are_refused() {
        let deep = format!("version: 1\nx:\n{}a", "- ".repeat(100_000));
        let (_, msg) = SourceMap::build(&deep).unwrap_err();
        assert!(msg.contains("nesting deeper"), "{msg}");
        let mut fan = String::from("a: &a [");
        fan.push_str(&"x, ".repeat(2000));
        fan.push_str("x]\nb: [");
        fan.push_str(&"*a, ".repeat(2000));
        fan.push_str("*a]\n");
        let (_, msg) = SourceMap::build(&fan).unwrap_err();
        assert!(msg.contains("aliases"), "{msg}");
        // ordinary anchors are fine
        assert!(SourceMap::build("a: &a {x: 1}\nb: *a\nc: *a\n").is_ok());
    }

    #[test]
    fn duplicate_keys_are_found() {
        let m = SourceMap::build("a: 1\nb: 2\na: 3\n").unwrap();
        assert_eq!(m.duplicates.len(), 1);
        assert_eq!(m.duplicates[0].0.to_string(), "a");
        assert_eq!(m.duplicates[0].1.line, 3);
    }

    #[test]
    fn syntax_errors_have_positions() {
        let (pos, msg) = SourceMap::build("a: [1, 2\nb: 3\n").unwrap_err();
        assert!(pos.line >= 1, "{pos:?}");
        assert!(!msg.is_empty());
    }

    #[test]
    fn paths_display_readably() {
        let p = DocPath::root()
            .key("phases")
            .key("Running")
            .key("transitions")
            .index(2)
            .key("to");
        assert_eq!(p.to_string(), "phases.Running.transitions[2].to");
    }
}
