//! The `kubectl -l` string syntax: a port of Go's `labels.Parse` lexer and
//! recursive-descent parser, so the same strings are accepted and the same
//! mistakes reported (with a byte offset added).

use std::collections::BTreeSet;

use super::{Operator, Requirement, SelectorError, check_key, join_errors};
use crate::validation::Errors;

/// The requirements of `s`, in written order.
pub(super) fn parse(s: &str) -> Result<Vec<Requirement>, SelectorError> {
    let mut parser = Parser {
        items: lex(s),
        pos: 0,
    };
    parser.parse()
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Tok {
    End,
    ClosedPar,
    Comma,
    DoesNotExist,
    DoubleEquals,
    Equals,
    Gt,
    Identifier,
    In,
    Lt,
    NotEquals,
    NotIn,
    OpenPar,
}

#[derive(Debug, Clone, Copy)]
struct Item<'a> {
    tok: Tok,
    lit: &'a str,
    offset: usize,
}

fn is_whitespace(b: u8) -> bool {
    matches!(b, b' ' | b'\t' | b'\r' | b'\n')
}

fn is_special(b: u8) -> bool {
    matches!(b, b'=' | b'!' | b'(' | b')' | b',' | b'>' | b'<')
}

/// Go's lexer: identifiers run up to whitespace or an operator character;
/// `in`/`notin` are keywords; `!=` and `==` are the only two-byte operators.
fn lex(s: &str) -> Vec<Item<'_>> {
    let b = s.as_bytes();
    let mut items = Vec::new();
    let mut pos = 0;
    loop {
        while pos < b.len() && is_whitespace(b[pos]) {
            pos += 1;
        }
        let start = pos;
        let Some(&ch) = b.get(pos) else {
            items.push(Item {
                tok: Tok::End,
                lit: "",
                offset: start,
            });
            return items;
        };
        let tok = if is_special(ch) {
            let two = b.get(pos..pos + 2);
            if two == Some(b"!=") || two == Some(b"==") {
                pos += 2;
            } else {
                pos += 1;
            }
            match &b[start..pos] {
                b"!=" => Tok::NotEquals,
                b"==" => Tok::DoubleEquals,
                b"=" => Tok::Equals,
                b"!" => Tok::DoesNotExist,
                b"(" => Tok::OpenPar,
                b")" => Tok::ClosedPar,
                b"," => Tok::Comma,
                b">" => Tok::Gt,
                _ => Tok::Lt,
            }
        } else {
            while pos < b.len() && !is_special(b[pos]) && !is_whitespace(b[pos]) {
                pos += 1;
            }
            match &s[start..pos] {
                "in" => Tok::In,
                "notin" => Tok::NotIn,
                _ => Tok::Identifier,
            }
        };
        items.push(Item {
            tok,
            lit: &s[start..pos],
            offset: start,
        });
    }
}

/// Whether `in`/`notin` are keywords (after a key) or plain words (values).
#[derive(Clone, Copy, PartialEq, Eq)]
enum Context {
    KeyAndOperator,
    Values,
}

struct Parser<'a> {
    items: Vec<Item<'a>>,
    pos: usize,
}

fn syntax(item: Item<'_>, expected: &str) -> SelectorError {
    SelectorError::Parse {
        offset: item.offset,
        message: format!("found '{}', expected: {expected}", item.lit),
    }
}

impl<'a> Parser<'a> {
    fn lookahead(&self, ctx: Context) -> Item<'a> {
        let mut item = self
            .items
            .get(self.pos)
            .or(self.items.last())
            .copied()
            .unwrap_or(Item {
                tok: Tok::End,
                lit: "",
                offset: 0,
            });
        if ctx == Context::Values && matches!(item.tok, Tok::In | Tok::NotIn) {
            item.tok = Tok::Identifier;
        }
        item
    }

    fn consume(&mut self, ctx: Context) -> Item<'a> {
        let item = self.lookahead(ctx);
        self.pos = (self.pos + 1).min(self.items.len());
        item
    }

    fn parse(&mut self) -> Result<Vec<Requirement>, SelectorError> {
        let mut requirements = Vec::new();
        loop {
            let item = self.lookahead(Context::Values);
            match item.tok {
                Tok::Identifier | Tok::DoesNotExist => {
                    let r = self.parse_requirement().map_err(|e| match e {
                        SelectorError::Parse { offset, message } => SelectorError::Parse {
                            offset,
                            message: format!("unable to parse requirement: {message}"),
                        },
                        SelectorError::Invalid(errs) => SelectorError::Parse {
                            offset: item.offset,
                            message: format!("unable to parse requirement: {}", join_errors(&errs)),
                        },
                    })?;
                    requirements.push(r);
                    let next = self.consume(Context::Values);
                    match next.tok {
                        Tok::End => return Ok(requirements),
                        Tok::Comma => {
                            let after = self.lookahead(Context::Values);
                            if !matches!(after.tok, Tok::Identifier | Tok::DoesNotExist) {
                                return Err(syntax(after, "identifier after ','"));
                            }
                        }
                        _ => return Err(syntax(next, "',' or 'end of string'")),
                    }
                }
                Tok::End => return Ok(requirements),
                _ => return Err(syntax(item, "!, identifier, or 'end of string'")),
            }
        }
    }

    fn parse_requirement(&mut self) -> Result<Requirement, SelectorError> {
        let (key, inferred) = self.parse_key_and_infer_operator()?;
        if let Some(operator) = inferred {
            return Requirement::new(key, operator, Vec::new());
        }
        let operator = self.parse_operator()?;
        let values = match operator {
            Operator::In | Operator::NotIn => self.parse_values()?,
            _ => vec![self.parse_exact_value()?],
        };
        Requirement::new(key, operator, values)
    }

    /// The key, with `exists`/`!` when no operator follows.
    fn parse_key_and_infer_operator(
        &mut self,
    ) -> Result<(String, Option<Operator>), SelectorError> {
        let mut item = self.consume(Context::Values);
        let mut operator = None;
        if item.tok == Tok::DoesNotExist {
            operator = Some(Operator::DoesNotExist);
            item = self.consume(Context::Values);
        }
        if item.tok != Tok::Identifier {
            return Err(syntax(item, "identifier"));
        }
        let mut errs = Errors::default();
        check_key(item.lit, "key", &mut errs);
        if errs.len() > 0 {
            return Err(SelectorError::Parse {
                offset: item.offset,
                message: join_errors(&errs.0),
            });
        }
        let next = self.lookahead(Context::Values).tok;
        if operator.is_none() && matches!(next, Tok::End | Tok::Comma) {
            operator = Some(Operator::Exists);
        }
        Ok((item.lit.to_owned(), operator))
    }

    fn parse_operator(&mut self) -> Result<Operator, SelectorError> {
        let item = self.consume(Context::KeyAndOperator);
        match item.tok {
            Tok::In => Ok(Operator::In),
            Tok::NotIn => Ok(Operator::NotIn),
            Tok::Equals | Tok::DoubleEquals => Ok(Operator::Equals),
            Tok::NotEquals => Ok(Operator::NotEquals),
            Tok::Gt => Ok(Operator::Gt),
            Tok::Lt => Ok(Operator::Lt),
            _ => Err(syntax(item, "in, notin, =, ==, !=, gt, lt")),
        }
    }

    /// `(a,b,c)`; empty entries (`(a,)`, `()`) mean the empty value.
    fn parse_values(&mut self) -> Result<Vec<String>, SelectorError> {
        let open = self.consume(Context::Values);
        if open.tok != Tok::OpenPar {
            return Err(SelectorError::Parse {
                offset: open.offset,
                message: format!("found '{}' expected: '('", open.lit),
            });
        }
        let item = self.lookahead(Context::Values);
        match item.tok {
            Tok::Identifier | Tok::Comma => {
                let values = self.parse_identifiers_list()?;
                let close = self.consume(Context::Values);
                if close.tok != Tok::ClosedPar {
                    return Err(syntax(close, "')'"));
                }
                Ok(values)
            }
            Tok::ClosedPar => {
                self.consume(Context::Values);
                Ok(vec![String::new()])
            }
            _ => Err(syntax(item, "',', ')' or identifier")),
        }
    }

    fn parse_identifiers_list(&mut self) -> Result<Vec<String>, SelectorError> {
        let mut values = BTreeSet::new();
        loop {
            let item = self.consume(Context::Values);
            match item.tok {
                Tok::Identifier => {
                    values.insert(item.lit.to_owned());
                    let next = self.lookahead(Context::Values);
                    match next.tok {
                        Tok::Comma => {}
                        Tok::ClosedPar => return Ok(values.into_iter().collect()),
                        _ => return Err(syntax(next, "',' or ')'")),
                    }
                }
                Tok::Comma => {
                    if values.is_empty() {
                        values.insert(String::new());
                    }
                    match self.lookahead(Context::Values).tok {
                        Tok::ClosedPar => {
                            values.insert(String::new());
                            return Ok(values.into_iter().collect());
                        }
                        Tok::Comma => {
                            values.insert(String::new());
                        }
                        _ => {}
                    }
                }
                _ => return Err(syntax(item, "',', or identifier")),
            }
        }
    }

    /// The single value after `=`, `!=`, `>`, `<`; nothing means "".
    fn parse_exact_value(&mut self) -> Result<String, SelectorError> {
        if matches!(self.lookahead(Context::Values).tok, Tok::End | Tok::Comma) {
            return Ok(String::new());
        }
        let item = self.consume(Context::Values);
        if item.tok == Tok::Identifier {
            Ok(item.lit.to_owned())
        } else {
            Err(syntax(item, "identifier"))
        }
    }
}
