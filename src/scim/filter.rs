//! The RFC 7644 §3.4.2.2 filter grammar: parsing with limits enforced while parsing (never a
//! recursion that counts later) and evaluation against a rendered SCIM resource.
//!
//! The parser is iterative (an operator stack, depth counted before every descent), so hostile
//! nesting is refused without using the call stack. No I/O.

use crate::scim::error::ScimError;
use crate::scim::path::{parse_attr_word, AttrPath};
use crate::scim::schema::{GROUP_SCHEMA, USER_SCHEMA};
use serde_json::Value;

/// Limits enforced while parsing a filter.
#[derive(Debug, Clone, Copy)]
pub struct FilterLimits {
    /// Maximum length in bytes of the filter text.
    pub max_len: usize,
    /// Maximum nesting depth of parentheses, `not`, and value paths.
    pub max_depth: usize,
}

impl Default for FilterLimits {
    fn default() -> Self {
        Self {
            max_len: 4096,
            max_depth: 32,
        }
    }
}

/// Highest filter tree accepted (a chain of `n` terms is `n` high): above any filter that
/// fits the default 4096-byte limit, low enough for recursive evaluation on any thread.
pub const MAX_TREE_HEIGHT: usize = 1024;

/// Comparison operators.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CompareOp {
    /// equal
    Eq,
    /// not equal (true when the attribute is missing)
    Ne,
    /// contains (strings)
    Co,
    /// starts with (strings)
    Sw,
    /// ends with (strings)
    Ew,
    /// greater than (numbers; strings and RFC 3339 dates lexicographically)
    Gt,
    /// greater than or equal
    Ge,
    /// less than
    Lt,
    /// less than or equal
    Le,
}

/// A parsed filter.
#[derive(Debug, Clone, PartialEq)]
pub enum Filter {
    /// `attr op value`
    Compare {
        path: AttrPath,
        op: CompareOp,
        value: Value,
    },
    /// `attr pr`
    Present(AttrPath),
    /// `a and b` (binds tighter than `or`)
    And(Box<Filter>, Box<Filter>),
    /// `a or b`
    Or(Box<Filter>, Box<Filter>),
    /// `not (a)`
    Not(Box<Filter>),
    /// `emails[type eq "work" and value co "@x"]` (with the path naming the multi-valued attribute)
    ValuePath { path: AttrPath, filter: Box<Filter> },
}

/// Parse a filter.
///
/// # Errors
/// `400 invalidFilter` for bad syntax, unknown operators, or input over `limits`.
pub fn parse_filter(input: &str, limits: FilterLimits) -> Result<Filter, ScimError> {
    Parser::new(input, limits, true)?.run()
}

/// Parse the filter inside a value path's brackets (relative attribute names, no nested
/// value paths: RFC 7644 §3.4.2.2 `valFilter`).
///
/// # Errors
/// As [`parse_filter`].
pub(crate) fn parse_value_filter(input: &str, limits: FilterLimits) -> Result<Filter, ScimError> {
    Parser::new(input, limits, false)?.run()
}

#[derive(Debug, Clone, PartialEq)]
enum Tok {
    LParen,
    RParen,
    LBracket,
    RBracket,
    Word(String),
    Str(String),
}

fn bad(detail: &str) -> ScimError {
    ScimError::invalid_filter(detail)
}

/// Attribute names, keywords, numbers and `true`/`false`/`null` are all "words".
fn is_word_char(c: char) -> bool {
    c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | ':' | '.' | '$' | '+')
}

fn tokenize(input: &str) -> Result<Vec<Tok>, ScimError> {
    let mut toks = Vec::new();
    let mut chars = input.char_indices().peekable();
    while let Some((start, c)) = chars.next() {
        match c {
            c if c.is_whitespace() => {}
            '(' => toks.push(Tok::LParen),
            ')' => toks.push(Tok::RParen),
            '[' => toks.push(Tok::LBracket),
            ']' => toks.push(Tok::RBracket),
            '"' => {
                let mut escaped = false;
                let mut end = None;
                for (i, c) in chars.by_ref() {
                    match (escaped, c) {
                        (true, _) => escaped = false,
                        (false, '\\') => escaped = true,
                        (false, '"') => {
                            end = Some(i);
                            break;
                        }
                        _ => {}
                    }
                }
                let raw = end
                    .and_then(|e| input.get(start..=e))
                    .ok_or_else(|| bad("unterminated string"))?;
                // JSON string escapes, as RFC 7644 §3.4.2.2 specifies.
                let s: String =
                    serde_json::from_str(raw).map_err(|_| bad("invalid string literal"))?;
                toks.push(Tok::Str(s));
            }
            c if is_word_char(c) => {
                let mut end = start + c.len_utf8();
                while let Some(&(i, c)) = chars.peek() {
                    if !is_word_char(c) {
                        break;
                    }
                    end = i + c.len_utf8();
                    chars.next();
                }
                toks.push(Tok::Word(
                    input.get(start..end).unwrap_or_default().to_string(),
                ));
            }
            _ => return Err(bad("unexpected character in filter")),
        }
    }
    Ok(toks)
}

fn compare_op(word: &str) -> Option<CompareOp> {
    Some(match word.to_ascii_lowercase().as_str() {
        "eq" => CompareOp::Eq,
        "ne" => CompareOp::Ne,
        "co" => CompareOp::Co,
        "sw" => CompareOp::Sw,
        "ew" => CompareOp::Ew,
        "gt" => CompareOp::Gt,
        "ge" => CompareOp::Ge,
        "lt" => CompareOp::Lt,
        "le" => CompareOp::Le,
        _ => return None,
    })
}

fn literal(tok: Option<Tok>) -> Result<Value, ScimError> {
    match tok {
        Some(Tok::Str(s)) => Ok(Value::String(s)),
        Some(Tok::Word(w)) => match w.to_ascii_lowercase().as_str() {
            "true" => Ok(Value::Bool(true)),
            "false" => Ok(Value::Bool(false)),
            "null" => Ok(Value::Null),
            _ if w.starts_with(|c: char| c.is_ascii_digit() || c == '-') => w
                .parse::<serde_json::Number>()
                .map(Value::Number)
                .map_err(|_| bad("invalid number literal")),
            _ => Err(bad("expected a literal value")),
        },
        _ => Err(bad("expected a comparison value")),
    }
}

/// RFC 7644 §3.4.2.2: ordering operators apply to strings, numbers and dates only;
/// booleans and null support only `eq`/`ne`; `co`/`sw`/`ew` need strings.
fn check_operand(op: CompareOp, value: &Value) -> Result<(), ScimError> {
    let ok = match op {
        CompareOp::Eq | CompareOp::Ne => true,
        CompareOp::Co | CompareOp::Sw | CompareOp::Ew => value.is_string(),
        CompareOp::Gt | CompareOp::Ge | CompareOp::Lt | CompareOp::Le => {
            value.is_string() || value.is_number()
        }
    };
    if ok {
        Ok(())
    } else {
        Err(bad("operator does not apply to this value type"))
    }
}

/// Operator stack entries of the shunting-yard parser.
enum Frame {
    Paren,
    Not,
    Bracket(AttrPath),
    And,
    Or,
}

struct Parser {
    toks: std::vec::IntoIter<Tok>,
    peeked: Option<Tok>,
    ops: Vec<Frame>,
    /// Operands with their tree height (bounded by [`MAX_TREE_HEIGHT`]).
    vals: Vec<(Filter, usize)>,
    depth: usize,
    max_depth: usize,
    allow_value_paths: bool,
    in_bracket: bool,
}

impl Parser {
    fn new(input: &str, limits: FilterLimits, allow_value_paths: bool) -> Result<Self, ScimError> {
        if input.len() > limits.max_len {
            return Err(bad("filter is too long"));
        }
        Ok(Self {
            toks: tokenize(input)?.into_iter(),
            peeked: None,
            ops: Vec::new(),
            vals: Vec::new(),
            depth: 0,
            max_depth: limits.max_depth,
            allow_value_paths,
            in_bracket: false,
        })
    }

    fn next(&mut self) -> Option<Tok> {
        self.peeked.take().or_else(|| self.toks.next())
    }

    fn peek(&mut self) -> Option<&Tok> {
        if self.peeked.is_none() {
            self.peeked = self.toks.next();
        }
        self.peeked.as_ref()
    }

    /// Checked before every descent, so depth never exceeds the limit (not counted later).
    fn descend(&mut self, frame: Frame) -> Result<(), ScimError> {
        if self.depth >= self.max_depth {
            return Err(bad("filter is nested too deeply"));
        }
        self.depth += 1;
        self.ops.push(frame);
        Ok(())
    }

    fn run(mut self) -> Result<Filter, ScimError> {
        let mut expect_operand = true;
        while let Some(tok) = self.next() {
            if expect_operand {
                expect_operand = self.operand(tok)?;
            } else {
                expect_operand = self.operator(tok)?;
            }
        }
        if expect_operand {
            return Err(bad("incomplete filter"));
        }
        self.reduce_while(|f| matches!(f, Frame::And | Frame::Or))?;
        if !self.ops.is_empty() {
            return Err(bad("unbalanced parentheses or brackets"));
        }
        match (self.vals.pop(), self.vals.is_empty()) {
            (Some((f, _)), true) => Ok(f),
            _ => Err(bad("malformed filter")),
        }
    }

    /// Handles a token where an operand must start; returns whether an operand is still expected.
    fn operand(&mut self, tok: Tok) -> Result<bool, ScimError> {
        match tok {
            Tok::LParen => {
                self.descend(Frame::Paren)?;
                Ok(true)
            }
            Tok::Word(w) if w.eq_ignore_ascii_case("not") => {
                if self.next() != Some(Tok::LParen) {
                    return Err(bad("'not' must be followed by '('"));
                }
                self.ops.push(Frame::Not);
                self.descend(Frame::Paren)?;
                Ok(true)
            }
            Tok::Word(w) => {
                let path = parse_attr_word(&w).map_err(|_| bad("invalid attribute path"))?;
                if self.peek() == Some(&Tok::LBracket) {
                    self.next();
                    if !self.allow_value_paths || self.in_bracket || path.sub_attr.is_some() {
                        return Err(bad("value paths cannot be nested here"));
                    }
                    self.in_bracket = true;
                    self.descend(Frame::Bracket(path))?;
                    return Ok(true);
                }
                let term = self.term(path)?;
                self.push_val(term, 1)?;
                Ok(false)
            }
            _ => Err(bad("expected an attribute, 'not' or '('")),
        }
    }

    /// `path pr` or `path op value`.
    fn term(&mut self, path: AttrPath) -> Result<Filter, ScimError> {
        let op_word = match self.next() {
            Some(Tok::Word(w)) => w,
            _ => return Err(bad("expected an operator")),
        };
        if op_word.eq_ignore_ascii_case("pr") {
            return Ok(Filter::Present(path));
        }
        let op = compare_op(&op_word).ok_or_else(|| bad("unknown operator"))?;
        let value = literal(self.next())?;
        check_operand(op, &value)?;
        Ok(Filter::Compare { path, op, value })
    }

    /// Handles a token after a complete operand; returns whether an operand is expected next.
    fn operator(&mut self, tok: Tok) -> Result<bool, ScimError> {
        match tok {
            // `and` binds tighter than `or` (RFC 7644 §3.4.2.2, table 5 precedence).
            Tok::Word(w) if w.eq_ignore_ascii_case("and") => {
                self.reduce_while(|f| matches!(f, Frame::And))?;
                self.ops.push(Frame::And);
                Ok(true)
            }
            Tok::Word(w) if w.eq_ignore_ascii_case("or") => {
                self.reduce_while(|f| matches!(f, Frame::And | Frame::Or))?;
                self.ops.push(Frame::Or);
                Ok(true)
            }
            Tok::RParen => {
                self.reduce_while(|f| matches!(f, Frame::And | Frame::Or))?;
                if !matches!(self.ops.pop(), Some(Frame::Paren)) {
                    return Err(bad("unbalanced ')'"));
                }
                self.depth = self.depth.saturating_sub(1);
                if matches!(self.ops.last(), Some(Frame::Not)) {
                    self.ops.pop();
                    let (inner, height) = self.pop_val()?;
                    self.push_val(Filter::Not(Box::new(inner)), height + 1)?;
                }
                Ok(false)
            }
            Tok::RBracket => {
                self.close_bracket()?;
                Ok(false)
            }
            _ => Err(bad("expected 'and', 'or', ')' or ']'")),
        }
    }

    /// `]` ends a value path; `emails[type eq "work"].value eq "x"` (Entra) continues with a
    /// sub-attribute comparison.
    fn close_bracket(&mut self) -> Result<(), ScimError> {
        self.reduce_while(|f| matches!(f, Frame::And | Frame::Or))?;
        let Some(Frame::Bracket(mut path)) = self.ops.pop() else {
            return Err(bad("unbalanced ']'"));
        };
        self.depth = self.depth.saturating_sub(1);
        self.in_bracket = false;
        let (inner, height) = self.pop_val()?;
        let sub = match self.peek() {
            Some(Tok::Word(w)) if w.starts_with('.') => w.clone(),
            _ => {
                let value_path = Filter::ValuePath {
                    path,
                    filter: Box::new(inner),
                };
                return self.push_val(value_path, height + 1);
            }
        };
        self.next();
        let sub_path = parse_attr_word(sub.get(1..).unwrap_or(""))
            .map_err(|_| bad("invalid sub-attribute"))?;
        if sub_path.urn.is_some() || sub_path.sub_attr.is_some() {
            return Err(bad("invalid sub-attribute"));
        }
        path.value_filter = Some(Box::new(inner));
        path.sub_attr = Some(sub_path.attr);
        let term = self.term(path)?;
        self.push_val(term, height + 1)
    }

    fn pop_val(&mut self) -> Result<(Filter, usize), ScimError> {
        self.vals.pop().ok_or_else(|| bad("malformed filter"))
    }

    /// Long `and`/`or` chains nest without parentheses; their height is bounded too, so that
    /// evaluating and dropping a filter never recurses deeply whatever `max_len` is configured.
    fn push_val(&mut self, filter: Filter, height: usize) -> Result<(), ScimError> {
        if height > MAX_TREE_HEIGHT {
            return Err(bad("filter has too many terms"));
        }
        self.vals.push((filter, height));
        Ok(())
    }

    fn reduce_while(&mut self, pred: impl Fn(&Frame) -> bool) -> Result<(), ScimError> {
        while self.ops.last().is_some_and(&pred) {
            let frame = self.ops.pop();
            let (right, right_height) = self.pop_val()?;
            let (left, left_height) = self.pop_val()?;
            let combined = match frame {
                Some(Frame::And) => Filter::And(Box::new(left), Box::new(right)),
                Some(Frame::Or) => Filter::Or(Box::new(left), Box::new(right)),
                _ => return Err(bad("malformed filter")),
            };
            self.push_val(combined, left_height.max(right_height) + 1)?;
        }
        Ok(())
    }
}

impl Filter {
    /// Does `resource` (a rendered SCIM resource, as returned by GET) match?
    /// Case rules follow the schema: `userName`, `emails.value`, `displayName` ... compare
    /// case-insensitively; `id`, `externalId` case-exactly.
    pub fn matches(&self, resource: &Value) -> bool {
        eval(self, resource, None)
    }

    /// Does one element of the multi-valued attribute `parent` match this value filter
    /// (`type eq "work"` on an `emails` element, `value eq "x"` on a `members` element)?
    /// The parent decides case-exactness (`members.value` is case-exact).
    pub fn matches_element(&self, element: &Value, parent: &str) -> bool {
        eval(self, element, Some(parent))
    }

    /// Equality lookups the store may answer from an index: for a filter that is a single `eq`
    /// or an `and` of terms, each `attr eq "string"` conjunct on a top-level core attribute, as
    /// (lower-cased canonical attribute name, value). Canonical names: `id`, `username`,
    /// `externalid`, `displayname`, `emails.value`, `emails[type eq "work"].value` is reported
    /// as `emails.value` too. The caller still evaluates [`Filter::matches`] on the candidates.
    pub fn equality_lookups(&self) -> Vec<(String, String)> {
        let mut out = Vec::new();
        for term in conjuncts(self) {
            match term {
                Filter::Compare {
                    path,
                    op: CompareOp::Eq,
                    value: Value::String(s),
                } => {
                    if let Some(name) = lookup_name(path) {
                        out.push((name, s.clone()));
                    }
                }
                Filter::ValuePath { path, filter }
                    if is_core(path) && eq_ci(&path.attr, "emails") =>
                {
                    for inner in conjuncts(filter) {
                        if let Filter::Compare {
                            path: p,
                            op: CompareOp::Eq,
                            value: Value::String(s),
                        } = inner
                        {
                            if p.sub_attr.is_none() && eq_ci(&p.attr, "value") {
                                out.push(("emails.value".to_string(), s.clone()));
                            }
                        }
                    }
                }
                _ => {}
            }
        }
        out
    }
}

/// The terms of a top-level `and` chain, left to right (iterative).
fn conjuncts(filter: &Filter) -> Vec<&Filter> {
    let mut out = Vec::new();
    let mut stack = vec![filter];
    while let Some(f) = stack.pop() {
        match f {
            Filter::And(a, b) => {
                stack.push(b);
                stack.push(a);
            }
            other => out.push(other),
        }
    }
    out
}

fn lookup_name(path: &AttrPath) -> Option<String> {
    if !is_core(path) {
        return None;
    }
    let attr = path.attr.to_ascii_lowercase();
    match (attr.as_str(), path.sub_attr.as_deref()) {
        ("id" | "username" | "externalid" | "displayname", None) if path.value_filter.is_none() => {
            Some(attr)
        }
        ("emails", Some(sub)) if eq_ci(sub, "value") => Some("emails.value".to_string()),
        ("emails", None) => Some("emails.value".to_string()),
        _ => None,
    }
}

fn eq_ci(a: &str, b: &str) -> bool {
    a.eq_ignore_ascii_case(b)
}

fn is_core_urn(urn: &str) -> bool {
    eq_ci(urn, USER_SCHEMA) || eq_ci(urn, GROUP_SCHEMA)
}

fn is_core(path: &AttrPath) -> bool {
    path.urn.as_deref().is_none_or(is_core_urn)
}

/// Case-insensitive member lookup (RFC 7643 §2.1: attribute names are case-insensitive).
pub(crate) fn get_ci<'a>(value: &'a Value, key: &str) -> Option<&'a Value> {
    let obj = value.as_object()?;
    obj.get(key)
        .or_else(|| obj.iter().find(|(k, _)| eq_ci(k, key)).map(|(_, v)| v))
}

fn eval(filter: &Filter, root: &Value, parent: Option<&str>) -> bool {
    match filter {
        Filter::And(a, b) => eval(a, root, parent) && eval(b, root, parent),
        Filter::Or(a, b) => eval(a, root, parent) || eval(b, root, parent),
        Filter::Not(inner) => !eval(inner, root, parent),
        Filter::Present(path) => resolve(root, path).into_iter().any(is_present),
        Filter::Compare { path, op, value } => compare(root, path, *op, value, parent),
        Filter::ValuePath { path, filter } => elements(root, path)
            .into_iter()
            .any(|el| eval(filter, el, Some(&path.attr))),
    }
}

/// RFC 7644 §3.4.2.2 `pr`: has a non-empty value.
fn is_present(v: &Value) -> bool {
    match v {
        Value::Null => false,
        Value::String(s) => !s.is_empty(),
        Value::Array(a) => a.iter().any(is_present),
        Value::Object(o) => !o.is_empty(),
        _ => true,
    }
}

/// The attribute's values, arrays flattened, value filter applied (without the sub-attribute).
fn elements<'a>(root: &'a Value, path: &AttrPath) -> Vec<&'a Value> {
    let container = match path.urn.as_deref() {
        Some(urn) if !is_core_urn(urn) => get_ci(root, urn),
        _ => Some(root),
    };
    let Some(v) = container.and_then(|c| get_ci(c, &path.attr)) else {
        return Vec::new();
    };
    let items: Vec<&Value> = match v {
        Value::Array(a) => a.iter().collect(),
        other => vec![other],
    };
    match &path.value_filter {
        Some(f) => items
            .into_iter()
            .filter(|el| eval(f, el, Some(&path.attr)))
            .collect(),
        None => items,
    }
}

fn resolve<'a>(root: &'a Value, path: &AttrPath) -> Vec<&'a Value> {
    let items = elements(root, path);
    let Some(sub) = &path.sub_attr else {
        return items;
    };
    let mut out = Vec::new();
    for v in items.into_iter().filter_map(|el| get_ci(el, sub)) {
        match v {
            Value::Array(a) => out.extend(a.iter()),
            other => out.push(other),
        }
    }
    out
}

/// Case-exact attributes (RFC 7643 §4, §8.7.1): ids, `$ref`, `meta.version` and the `value`
/// of references. Everything else compares case-insensitively.
fn case_exact(path: &AttrPath, parent: Option<&str>) -> bool {
    if let Some(exact) = path.case_exact {
        return exact;
    }
    let (top, sub) = match parent {
        Some(p) => (p, Some(path.attr.as_str())),
        None => (path.attr.as_str(), path.sub_attr.as_deref()),
    };
    let top = top.to_ascii_lowercase();
    let sub = sub.map(str::to_ascii_lowercase);
    match (top.as_str(), sub.as_deref()) {
        (_, Some("$ref")) | ("$ref", _) => true,
        ("id" | "externalid", None) => parent.is_none(),
        ("meta", Some("version")) => true,
        ("members" | "groups" | "manager", Some("value") | None) => true,
        _ => false,
    }
}

fn compare(
    root: &Value,
    path: &AttrPath,
    op: CompareOp,
    lit: &Value,
    parent: Option<&str>,
) -> bool {
    let exact = case_exact(path, parent);
    // A complex attribute compared without a sub-attribute means its `value` (RFC 7644 §3.4.2.2).
    let values: Vec<&Value> = resolve(root, path)
        .into_iter()
        .filter_map(|v| {
            if v.is_object() {
                get_ci(v, "value")
            } else {
                Some(v)
            }
        })
        .filter(|v| !v.is_null())
        .collect();
    match (op, lit) {
        (CompareOp::Eq, Value::Null) => values.is_empty(),
        (CompareOp::Ne, Value::Null) => !values.is_empty(),
        // Missing attribute: `ne` is true, everything else false.
        (CompareOp::Ne, _) => !values
            .iter()
            .any(|v| compare_one(v, CompareOp::Eq, lit, exact)),
        _ => values.iter().any(|v| compare_one(v, op, lit, exact)),
    }
}

/// The fold of case-insensitive string matching: NFC, lower case, NFC again. The same as the
/// store's unique index on `userName` / `displayName` (`store::normalise`), so a filter finds
/// exactly the names the index calls equal (composed and decomposed "Zoë" are one).
pub fn fold(s: &str) -> String {
    use unicode_normalization::UnicodeNormalization;
    let composed: String = s.nfc().collect();
    composed.to_lowercase().nfc().collect()
}

/// An RFC 3339 date-time (SCIM `dateTime`, RFC 7643 §2.3.5) as nanoseconds since the epoch.
fn instant(s: &str) -> Option<i128> {
    time::OffsetDateTime::parse(s, &time::format_description::well_known::Rfc3339)
        .ok()
        .map(time::OffsetDateTime::unix_timestamp_nanos)
}

fn compare_one(v: &Value, op: CompareOp, lit: &Value, exact: bool) -> bool {
    let ord = match (v, lit) {
        (Value::String(a), Value::String(b)) => {
            // RFC 7644 §3.4.2.2: date-times compare chronologically ("...34Z" is before
            // "...34.5Z" and "...22:42:34+01:00" is "...21:42:34Z"), not as text.
            if !matches!(op, CompareOp::Co | CompareOp::Sw | CompareOp::Ew) {
                if let (Some(a), Some(b)) = (instant(a), instant(b)) {
                    return ordered(op, a.cmp(&b));
                }
            }
            let (a, b) = if exact {
                (a.clone(), b.clone())
            } else {
                (fold(a), fold(b))
            };
            match op {
                CompareOp::Co => return a.contains(&b),
                CompareOp::Sw => return a.starts_with(&b),
                CompareOp::Ew => return a.ends_with(&b),
                _ => a.cmp(&b),
            }
        }
        (Value::Number(a), Value::Number(b)) => match (a.as_f64(), b.as_f64()) {
            (Some(a), Some(b)) => match a.partial_cmp(&b) {
                Some(o) => o,
                None => return false,
            },
            _ => return false,
        },
        (Value::Bool(a), Value::Bool(b)) => {
            return match op {
                CompareOp::Eq => a == b,
                _ => false,
            }
        }
        _ => return false,
    };
    ordered(op, ord)
}

/// Whether `ord` (attribute vs literal) satisfies an ordering operator.
fn ordered(op: CompareOp, ord: std::cmp::Ordering) -> bool {
    use std::cmp::Ordering;
    match op {
        CompareOp::Eq => ord == Ordering::Equal,
        CompareOp::Ne => ord != Ordering::Equal,
        CompareOp::Gt => ord == Ordering::Greater,
        CompareOp::Ge => ord != Ordering::Less,
        CompareOp::Lt => ord == Ordering::Less,
        CompareOp::Le => ord != Ordering::Greater,
        CompareOp::Co | CompareOp::Sw | CompareOp::Ew => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::scim::error::ScimType;
    use serde_json::json;

    fn p(s: &str) -> Result<Filter, ScimError> {
        parse_filter(s, FilterLimits::default())
    }

    fn user() -> Value {
        json!({
            "schemas": [USER_SCHEMA],
            "id": "2819c223-7f76-453a-919d-413861904646",
            "externalId": "00ujl29u0le5T6Aj10h7",
            "userName": "Test.User@Okta.local",
            "displayName": "Test User",
            "active": true,
            "name": {"givenName": "Test", "familyName": "User"},
            "emails": [
                {"value": "test.user@okta.local", "type": "work", "primary": true},
                {"value": "home@example.com", "type": "home"}
            ],
            "groups": [{"value": "G-1", "display": "Admins"}],
            "meta": {"lastModified": "2026-11-22T21:42:34.123Z", "version": "W/\"3\"", "resourceType": "User"},
            "urn:ietf:params:scim:schemas:extension:enterprise:2.0:User": {
                "employeeNumber": "701984", "manager": {"value": "Mgr-1"}
            },
            "x509Certificates": [],
            "nickName": "",
            "loginCount": 42
        })
    }

    #[test]
    fn valid_filters_parse_and_match() {
        let u = user();
        let cases: &[(&str, bool)] = &[
            // Okta lookups
            ("userName eq \"test.user@okta.local\"", true),
            ("USERNAME EQ \"TEST.USER@OKTA.LOCAL\"", true),
            ("userName eq \"other@okta.local\"", false),
            // Entra lookups
            ("externalId eq \"00ujl29u0le5T6Aj10h7\"", true),
            ("externalId eq \"00UJL29U0LE5T6AJ10H7\"", false),
            ("emails[type eq \"work\"].value eq \"TEST.USER@okta.local\"", true),
            ("emails[type eq \"home\"].value eq \"test.user@okta.local\"", false),
            ("displayName eq \"Test User\" and active eq true", true),
            // case-exact id
            ("id eq \"2819c223-7f76-453a-919d-413861904646\"", true),
            ("id eq \"2819C223-7F76-453A-919D-413861904646\"", false),
            ("emails[type eq \"work\" and value co \"@okta\"]", true),
            ("emails[type eq \"work\" and value co \"@example\"]", false),
            ("emails co \"example.com\"", true),
            ("emails.value sw \"HOME@\"", true),
            ("name.familyName ew \"ser\"", true),
            ("title pr", false),
            ("nickName pr", false),
            ("x509Certificates pr", false),
            ("emails pr", true),
            ("title ne \"x\"", true),
            ("title eq \"x\"", false),
            ("not (title pr)", true),
            ("userName eq \"nope\" or active eq true", true),
            ("userName eq \"nope\" or active eq true and title pr", false),
            ("(userName eq \"nope\" or active eq true) and not (title pr)", true),
            ("active eq false", false),
            ("active ne false", true),
            ("meta.lastModified gt \"2026-01-01T00:00:00Z\"", true),
            ("meta.lastModified lt \"2026-01-01T00:00:00Z\"", false),
            ("meta.version eq \"w/\\\"3\\\"\"", false),
            ("loginCount ge 42", true),
            ("loginCount gt 42.0", false),
            ("loginCount lt 1e3", true),
            ("urn:ietf:params:scim:schemas:extension:enterprise:2.0:User:employeeNumber eq \"701984\"", true),
            ("urn:ietf:params:scim:schemas:extension:enterprise:2.0:User:manager.value eq \"mgr-1\"", false),
            ("urn:ietf:params:scim:schemas:core:2.0:User:userName sw \"test\"", true),
            ("groups[value eq \"G-1\"]", true),
            ("groups[value eq \"g-1\"]", false),
            ("groups[display eq \"admins\"]", true),
            ("userName eq \"a\\\"b\\u00e9\"", false),
            ("title eq null", true),
            ("userName ne null", true),
            ("  userName   eq\t\"test.user@okta.local\"  ", true),
        ];
        for (text, expected) in cases {
            let f = p(text).unwrap_or_else(|e| panic!("{text}: {e}"));
            assert_eq!(f.matches(&u), *expected, "{text}");
        }
    }

    #[test]
    fn date_comparisons_are_chronological_not_textual() {
        // Stored: 2026-11-22T21:42:34.123Z. As strings "...34.123Z" < "...34Z" ('.' < 'Z'),
        // and an offset literal sorts by its local digits.
        let u = user();
        let cases: &[(&str, bool)] = &[
            ("meta.lastModified gt \"2026-11-22T21:42:34Z\"", true),
            ("meta.lastModified ge \"2026-11-22T21:42:34Z\"", true),
            ("meta.lastModified lt \"2026-11-22T21:42:34Z\"", false),
            ("meta.lastModified le \"2026-11-22T21:42:34.123000Z\"", true),
            ("meta.lastModified eq \"2026-11-22T21:42:34.123000Z\"", true),
            ("meta.lastModified lt \"2026-11-22T21:42:34.5Z\"", true),
            // 22:42:34+01:00 is 21:42:34Z, before the stored instant.
            ("meta.lastModified gt \"2026-11-22T22:42:34+01:00\"", true),
            ("meta.lastModified lt \"2026-11-22T22:42:34+01:00\"", false),
            ("meta.lastModified lt \"2026-11-22T21:00:00-01:00\"", true),
        ];
        for (text, expected) in cases {
            let f = p(text).unwrap_or_else(|e| panic!("{text}: {e}"));
            assert_eq!(f.matches(&u), *expected, "{text}");
        }
    }

    #[test]
    fn string_matching_folds_unicode_like_the_unique_index() {
        // The store's unique index folds NFC + lower case ("Zoë" composed or decomposed is one
        // userName); the filter that finds it must fold the same way.
        let u = json!({"userName": "Zo\u{eb}.M\u{fc}ller", "displayName": "Zo\u{eb}"});
        for text in [
            "userName eq \"zoe\u{308}.mu\u{308}ller\"",
            "userName eq \"ZOE\u{308}.MU\u{308}LLER\"",
            "displayName sw \"Zoe\u{308}\"",
            "userName co \"u\u{308}l\"",
        ] {
            let f = p(text).unwrap_or_else(|e| panic!("{text}: {e}"));
            assert!(f.matches(&u), "{text}");
        }
        let composed = json!({"userName": "zoe\u{308}"});
        assert!(p("userName eq \"Zo\u{eb}\"").unwrap().matches(&composed));
    }

    #[test]
    fn and_binds_tighter_than_or() {
        let f = p("a eq 1 or b eq 2 and c eq 3").unwrap();
        assert!(matches!(f, Filter::Or(_, ref r) if matches!(**r, Filter::And(_, _))));
        let f = p("a eq 1 and b eq 2 or c eq 3").unwrap();
        assert!(matches!(f, Filter::Or(ref l, _) if matches!(**l, Filter::And(_, _))));
    }

    #[test]
    fn invalid_filters() {
        for bad in [
            "TEST@EXAMPLE.COM", // Okta "Username Case Sensitivity Check"
            "TESTEXAMPLE",
            "",
            "userName",
            "userName eq",
            "userName xx \"a\"",
            "userName eq \"a\" and",
            "userName eq \"a\" userName eq \"b\"",
            "(userName eq \"a\"",
            "userName eq \"a\")",
            "not userName eq \"a\"",
            "userName eq \"unterminated",
            "userName eq 'single'",
            "userName eq bare",
            "active gt true",
            "title lt null",
            "loginCount co 4",
            "emails[type eq \"work\"",
            "emails[type eq \"work\"]]",
            "emails[type[value eq \"x\"] eq \"y\"]",
            "emails[type eq \"work\"].value",
            "emails[type eq \"work\"].value.x eq \"a\"",
            "__proto__ eq \"x\"",
            "http://x eq \"y\"",
            "userName eq \"\u{1}\"",
            "()",
            "and",
            "userName eq \"a\" or or b eq \"c\"",
            "userName eq 1.2.3",
            "name.givenName.x eq \"a\"",
        ] {
            let err = p(bad).unwrap_err();
            assert_eq!(err.status, 400, "{bad}");
            assert_eq!(err.scim_type, Some(ScimType::InvalidFilter), "{bad}");
        }
    }

    #[test]
    fn limits_enforced() {
        let limits = FilterLimits {
            max_len: 20,
            max_depth: 2,
        };
        assert!(parse_filter("userName eq \"a-long-value\"", limits).is_err());
        assert!(parse_filter("((a eq 1))", limits).is_ok());
        assert!(parse_filter("(((a eq 1)))", limits).is_err());
        assert!(parse_filter("not (not (a pr))", limits).is_ok());
        assert!(parse_filter("not (not (not (a pr)))", limits).is_err());
    }

    /// Hostile nesting is refused by the depth counter, never by a stack overflow: this runs in
    /// a thread with a 64 KiB stack.
    #[test]
    fn hostile_nesting_on_a_small_stack() {
        let handle = std::thread::Builder::new()
            .stack_size(64 * 1024)
            .spawn(|| {
                let big = FilterLimits {
                    max_len: 10_000_000,
                    max_depth: 32,
                };
                let inputs = [
                    format!("{}a eq 1{}", "(".repeat(100_000), ")".repeat(100_000)),
                    format!("{}a pr{}", "not (".repeat(100_000), ")".repeat(100_000)),
                    format!("{}x eq 1{}", "a[".repeat(100_000), "]".repeat(100_000)),
                    "(".repeat(100_000),
                    format!(
                        "emails[{}type eq \"w\"{}]",
                        "(".repeat(50_000),
                        ")".repeat(50_000)
                    ),
                ];
                let mut results = Vec::new();
                for input in &inputs {
                    results.push(parse_filter(input, big).map(|_| ()));
                    results.push(parse_filter(input, FilterLimits::default()).map(|_| ()));
                }
                results
            })
            .unwrap();
        for r in handle.join().unwrap() {
            assert_eq!(r.unwrap_err().scim_type, Some(ScimType::InvalidFilter));
        }
    }

    #[test]
    fn very_long_chains_are_refused() {
        let text = vec!["a pr"; 2000].join(" or ");
        let limits = FilterLimits {
            max_len: 100_000,
            max_depth: 4,
        };
        let err = parse_filter(&text, limits).unwrap_err();
        assert_eq!(err.scim_type, Some(ScimType::InvalidFilter));
    }

    #[test]
    fn long_and_chain_within_limits_evaluates() {
        let text = vec!["a eq 1"; 500].join(" and ");
        let f = parse_filter(
            &text,
            FilterLimits {
                max_len: 10_000,
                max_depth: 4,
            },
        )
        .unwrap();
        assert!(f.matches(&json!({"a": 1})));
        assert!(!f.matches(&json!({"a": 2})));
    }

    #[test]
    fn hostile_strings_never_panic() {
        let long = "x".repeat(100_000);
        let inputs = [
            format!("userName eq \"{long}\""),
            "userName eq \"\\ud800\"".to_string(),
            "userName eq \"é🦀\u{202e}\"".to_string(),
            "userName eq \"\\u0000\"".to_string(),
            "\u{0}".to_string(),
            "ü eq 1".to_string(),
            "a eq -".to_string(),
            "]".to_string(),
            "a[".to_string(),
            "a[]".to_string(),
            "a[b eq 1].".to_string(),
        ];
        let big = FilterLimits {
            max_len: 1_000_000,
            max_depth: 32,
        };
        for input in &inputs {
            if let Ok(f) = parse_filter(input, big) {
                let _ = f.matches(&user());
                let _ = f.equality_lookups();
            }
        }
        assert!(parse_filter(&inputs[0], FilterLimits::default()).is_err());
    }

    /// A reference AST for the property test below.
    enum Ref {
        Term(usize),
        And(Box<Ref>, Box<Ref>),
        Or(Box<Ref>, Box<Ref>),
        Not(Box<Ref>),
    }

    /// (filter text, reference evaluation on the resource)
    type Term = (&'static str, fn(&Value) -> bool);

    const TERMS: &[Term] = &[
        ("userName eq \"BOB\"", |r| {
            r["userName"]
                .as_str()
                .is_some_and(|s| s.eq_ignore_ascii_case("bob"))
        }),
        ("title pr", |r| {
            r["title"].as_str().is_some_and(|s| !s.is_empty())
        }),
        ("active eq true", |r| r["active"] == json!(true)),
        ("loginCount gt 5", |r| {
            r["loginCount"].as_i64().is_some_and(|n| n > 5)
        }),
        ("emails[type eq \"work\"]", |r| {
            r["emails"]
                .as_array()
                .is_some_and(|a| a.iter().any(|e| e["type"] == "work"))
        }),
        ("title ne \"boss\"", |r| {
            r["title"]
                .as_str()
                .is_none_or(|s| !s.eq_ignore_ascii_case("boss"))
        }),
    ];

    fn gen(rng: &mut u64, depth: u32) -> Ref {
        *rng ^= *rng << 13;
        *rng ^= *rng >> 7;
        *rng ^= *rng << 17;
        let pick = *rng % 10;
        let term = (*rng / 10) as usize % TERMS.len();
        if depth == 0 || pick < 3 {
            return Ref::Term(term);
        }
        match pick {
            3..=5 => Ref::And(Box::new(gen(rng, depth - 1)), Box::new(gen(rng, depth - 1))),
            6..=8 => Ref::Or(Box::new(gen(rng, depth - 1)), Box::new(gen(rng, depth - 1))),
            _ => Ref::Not(Box::new(gen(rng, depth - 1))),
        }
    }

    /// Text with as few parentheses as precedence allows (`and` binds tighter than `or`).
    fn render(r: &Ref) -> String {
        match r {
            Ref::Term(i) => TERMS[*i].0.to_string(),
            Ref::Not(x) => format!("not ({})", render(x)),
            Ref::Or(a, b) => format!("{} or ({})", render(a), render(b)),
            Ref::And(a, b) => {
                let side = |x: &Ref| match x {
                    Ref::Or(_, _) => format!("({})", render(x)),
                    _ => render(x),
                };
                format!("{} AND {}", side(a), side(b))
            }
        }
    }

    fn reference(r: &Ref, res: &Value) -> bool {
        match r {
            Ref::Term(i) => (TERMS[*i].1)(res),
            Ref::And(a, b) => reference(a, res) && reference(b, res),
            Ref::Or(a, b) => reference(a, res) || reference(b, res),
            Ref::Not(x) => !reference(x, res),
        }
    }

    #[test]
    fn random_filters_match_reference_evaluator() {
        let resources = [
            json!({"userName": "bob", "title": "Boss", "active": true, "loginCount": 9,
                   "emails": [{"type": "work", "value": "b@x"}]}),
            json!({"userName": "alice", "title": "", "active": false, "loginCount": 5}),
            json!({"userName": "BOB", "active": "true", "emails": [{"type": "home"}]}),
            json!({}),
        ];
        let mut rng = 0x2545_F491_4F6C_DD1D_u64;
        for _ in 0..10_000 {
            let ast = gen(&mut rng, 4);
            let text = render(&ast);
            let f = p(&text).unwrap_or_else(|e| panic!("{text}: {e}"));
            for res in &resources {
                assert_eq!(f.matches(res), reference(&ast, res), "{text} on {res}");
            }
        }
    }

    #[test]
    fn equality_lookups_table() {
        let cases: &[(&str, &[(&str, &str)])] = &[
            ("userName eq \"Bob\"", &[("username", "Bob")]),
            ("externalId eq \"e1\"", &[("externalid", "e1")]),
            ("id eq \"i\"", &[("id", "i")]),
            ("displayName eq \"G\"", &[("displayname", "G")]),
            (
                "emails[type eq \"work\"].value eq \"a@x\"",
                &[("emails.value", "a@x")],
            ),
            ("emails.value eq \"a@x\"", &[("emails.value", "a@x")]),
            (
                "emails[type eq \"work\" and value eq \"a@x\"]",
                &[("emails.value", "a@x")],
            ),
            (
                "userName eq \"u\" and externalId eq \"e\"",
                &[("username", "u"), ("externalid", "e")],
            ),
            ("userName eq \"u\" or externalId eq \"e\"", &[]),
            ("not (userName eq \"u\")", &[]),
            ("userName co \"u\"", &[]),
            ("name.givenName eq \"u\"", &[]),
            ("urn:x:y:title eq \"u\"", &[]),
            ("userName eq 5", &[]),
        ];
        for (text, expected) in cases {
            let got = p(text).unwrap().equality_lookups();
            let want: Vec<(String, String)> = expected
                .iter()
                .map(|(a, b)| (a.to_string(), b.to_string()))
                .collect();
            assert_eq!(got, want, "{text}");
        }
    }
}
