//! Manifest parsing: YAML or JSON, several documents per file, files or
//! directories, `kind: List`; the apiVersions Kubernetes uses, so existing
//! manifests load unchanged.
//!
//! Decoding is strict about types (errors name the field path, and the line
//! where the parser knows it) and lenient about fields: a field Kubernetes
//! doesn't have, or one orch doesn't act on yet, becomes a [`Warning`] naming
//! its path — never silently dropped.

use std::fmt;
use std::path::{Path, PathBuf};

use serde::Deserialize;
use thiserror::Error;

use crate::defaults::apply_defaults;
use crate::fields::unsupported_fields;
use crate::object::{Kind, Object};
use crate::validation::{ValidationErrors, validate};

/// One decoded object and where it came from.
#[derive(Clone, Debug, PartialEq)]
pub struct Document {
    pub origin: Origin,
    pub object: Object,
    pub warnings: Vec<Warning>,
}

/// Where a document came from: file (or `<stdin>`) and position in it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Origin {
    pub source: String,
    /// 1-based index of the document in its file.
    pub document: usize,
    /// 1-based index inside a `kind: List`, when it came from one.
    pub list_item: Option<usize>,
}

impl fmt::Display for Origin {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: document {}", self.source, self.document)?;
        if let Some(item) = self.list_item {
            write!(f, " item {item}")?;
        }
        Ok(())
    }
}

/// Why a field was reported.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum WarningReason {
    /// Kubernetes has no such field (a typo, or a newer API version).
    UnknownField,
    /// A Kubernetes field orch does not act on yet.
    Unsupported,
}

/// A field that was accepted but will have no effect.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Warning {
    pub origin: Origin,
    /// `kind namespace/name` of the object.
    pub object: String,
    /// Field path, e.g. `spec.template.spec.containers[0].lifecycle`.
    pub path: String,
    pub reason: WarningReason,
}

impl fmt::Display for WarningReason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            WarningReason::UnknownField => "unknown field, ignored",
            WarningReason::Unsupported => "not supported by orch yet, ignored",
        })
    }
}

impl fmt::Display for Warning {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{}: {}: {}: {}",
            self.origin, self.object, self.path, self.reason
        )
    }
}

/// A manifest that could not be decoded or is invalid.
#[derive(Debug, Error)]
pub enum ManifestError {
    #[error("{}: {source}", path.display())]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{file}: {message}")]
    Syntax { file: String, message: String },
    #[error("{origin}: {message}")]
    TypeMeta { origin: Origin, message: String },
    #[error(
        "{origin}: no matches for kind \"{kind}\" in version \"{api_version}\" (orch serves: {served})"
    )]
    UnknownKind {
        origin: Origin,
        api_version: String,
        kind: String,
        served: String,
    },
    #[error("{origin}: {kind}: {path}: {message}")]
    Field {
        origin: Origin,
        kind: Kind,
        /// Field path as Kubernetes writes it; `.` for the document root.
        path: String,
        message: String,
    },
    #[error("{origin}: {kind} \"{name}\" is invalid:{}", bulleted(errors))]
    Invalid {
        origin: Origin,
        kind: Kind,
        name: String,
        errors: ValidationErrors,
    },
}

/// One field error per line, as kubectl prints them.
fn bulleted(errors: &ValidationErrors) -> String {
    errors.0.iter().map(|e| format!("\n  * {e}")).collect()
}

/// Every error of a load, so a user fixes all of them in one go.
#[derive(Debug, Error)]
pub struct ManifestErrors(pub Vec<ManifestError>);

impl fmt::Display for ManifestErrors {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, error) in self.0.iter().enumerate() {
            if i > 0 {
                writeln!(f)?;
            }
            write!(f, "{error}")?;
        }
        Ok(())
    }
}

/// Decodes every document of `text`. `source` names it in messages (a file
/// name, or `<stdin>`). Nothing is defaulted or validated: see [`load_str`].
pub fn parse_str(text: &str, source: &str) -> Result<Vec<Document>, ManifestErrors> {
    let mut documents = Vec::new();
    let mut errors = Vec::new();
    // Pass 1 reads each document's apiVersion and kind; pass 2 decodes each
    // with its kind's type from the parser directly, so type errors keep
    // their line and column.
    let heads = document_heads(text);
    let mut typed = serde_yaml_ng::Deserializer::from_str(text);
    for (index, head) in heads.into_iter().enumerate() {
        let deserializer = typed.next();
        let origin = Origin {
            source: source.to_string(),
            document: index + 1,
            list_item: None,
        };
        let head = match head {
            Ok(head) => head,
            Err(e) => {
                // A syntax error ends the stream: later documents can't be
                // found reliably.
                errors.push(ManifestError::Syntax {
                    file: source.to_string(),
                    message: e.to_string(),
                });
                break;
            }
        };
        if head.is_null() {
            continue; // empty document, e.g. a leading or trailing `---`
        }
        let result = match type_meta(&head, &origin) {
            Ok((_, kind)) if kind == "List" => decode_list(head, &origin),
            Ok((api_version, kind)) => match lookup_kind(&api_version, &kind, &origin) {
                Ok(kind) => match deserializer {
                    Some(deserializer) => decode(kind, deserializer, &origin).map(|d| vec![d]),
                    None => decode(kind, head, &origin).map(|d| vec![d]),
                },
                Err(e) => Err(e),
            },
            Err(e) => Err(e),
        };
        match result {
            Ok(mut docs) => documents.append(&mut docs),
            Err(e) => errors.push(e),
        }
    }
    if errors.is_empty() {
        Ok(documents)
    } else {
        Err(ManifestErrors(errors))
    }
}

/// Decodes `text` as one JSON object (what API clients send) with
/// serde_json instead of the YAML parser: the same field paths and
/// warnings as [`parse_str`], for a fraction of the cost. Types are JSON's,
/// as Kubernetes' API server takes them: a number where a string belongs is
/// an error here, where YAML's plain scalars pass as strings. `None` when
/// `text` is not a single JSON object of one kind (YAML, a `List`, a syntax
/// error): the caller then goes the general way, whose messages name lines.
pub fn parse_json(text: &str, source: &str) -> Option<Result<Document, ManifestErrors>> {
    #[derive(Deserialize)]
    struct Head {
        #[serde(rename = "apiVersion")]
        api_version: Option<serde_json::Value>,
        kind: Option<serde_json::Value>,
    }
    if !text.trim_start().starts_with('{') {
        return None;
    }
    let head: Head = serde_json::from_str(text).ok()?;
    if head.kind.as_ref().and_then(|k| k.as_str()) == Some("List") {
        return None;
    }
    // type_meta's checks and messages, on the two fields it reads.
    let mut meta = serde_yaml_ng::Mapping::new();
    for (name, value) in [("apiVersion", head.api_version), ("kind", head.kind)] {
        if let Some(value) = value {
            let value = match value {
                serde_json::Value::String(text) => serde_yaml_ng::Value::String(text),
                _ => serde_yaml_ng::Value::Null,
            };
            meta.insert(name.into(), value);
        }
    }
    let origin = Origin {
        source: source.to_string(),
        document: 1,
        list_item: None,
    };
    let decoded = type_meta(&serde_yaml_ng::Value::Mapping(meta), &origin)
        .and_then(|(api_version, kind)| lookup_kind(&api_version, &kind, &origin))
        .and_then(|kind| {
            let mut deserializer = serde_json::Deserializer::from_str(text);
            let document = decode(kind, &mut deserializer, &origin)?;
            deserializer.end().map_err(|e| ManifestError::Syntax {
                file: source.to_string(),
                message: e.to_string(),
            })?;
            Ok(document)
        });
    Some(decoded.map_err(|e| ManifestErrors(vec![e])))
}

/// Every document of the stream as a generic value, ending at the first
/// syntax error (after one, the parser yields that error forever).
fn document_heads(text: &str) -> Vec<Result<serde_yaml_ng::Value, serde_yaml_ng::Error>> {
    let mut heads = Vec::new();
    for document in serde_yaml_ng::Deserializer::from_str(text) {
        let head = serde_yaml_ng::Value::deserialize(document);
        let failed = head.is_err();
        heads.push(head);
        if failed {
            break;
        }
    }
    heads
}

fn type_meta(
    head: &serde_yaml_ng::Value,
    origin: &Origin,
) -> Result<(String, String), ManifestError> {
    let field = |name: &str| -> Result<String, ManifestError> {
        match head.get(name) {
            Some(serde_yaml_ng::Value::String(value)) if !value.is_empty() => Ok(value.clone()),
            Some(_) => Err(ManifestError::TypeMeta {
                origin: origin.clone(),
                message: format!("`{name}` must be a non-empty string"),
            }),
            None => Err(ManifestError::TypeMeta {
                origin: origin.clone(),
                message: format!(
                    "`{name}` is required (every object names its apiVersion and kind)"
                ),
            }),
        }
    };
    if !head.is_mapping() {
        return Err(ManifestError::TypeMeta {
            origin: origin.clone(),
            message: "a document must be a mapping with apiVersion, kind and metadata".into(),
        });
    }
    Ok((field("apiVersion")?, field("kind")?))
}

fn lookup_kind(api_version: &str, kind: &str, origin: &Origin) -> Result<Kind, ManifestError> {
    Kind::from_type_meta(api_version, kind).ok_or_else(|| ManifestError::UnknownKind {
        origin: origin.clone(),
        api_version: api_version.to_string(),
        kind: kind.to_string(),
        served: Kind::ALL
            .iter()
            .map(|k| format!("{}/{}", k.api_version(), k.name()))
            .collect::<Vec<_>>()
            .join(", "),
    })
}

/// `kind: List` (what `kubectl get -o yaml` prints for several objects).
fn decode_list(
    head: serde_yaml_ng::Value,
    origin: &Origin,
) -> Result<Vec<Document>, ManifestError> {
    let items = match head.get("items") {
        None | Some(serde_yaml_ng::Value::Null) => return Ok(Vec::new()),
        Some(serde_yaml_ng::Value::Sequence(items)) => items.clone(),
        Some(_) => {
            return Err(ManifestError::TypeMeta {
                origin: origin.clone(),
                message: "`items` of a List must be a list".into(),
            });
        }
    };
    let mut documents = Vec::with_capacity(items.len());
    for (index, item) in items.into_iter().enumerate() {
        let origin = Origin {
            list_item: Some(index + 1),
            ..origin.clone()
        };
        let (api_version, kind) = type_meta(&item, &origin)?;
        let kind = lookup_kind(&api_version, &kind, &origin)?;
        documents.push(decode(kind, item, &origin)?);
    }
    Ok(documents)
}

/// Decodes one object of `kind`, recording ignored fields as warnings and
/// naming the path of the first type error.
fn decode<'de, D>(kind: Kind, deserializer: D, origin: &Origin) -> Result<Document, ManifestError>
where
    D: serde::Deserializer<'de>,
    D::Error: fmt::Display,
{
    let mut unknown = Vec::new();
    let mut track = serde_path_to_error::Track::new();
    let mut record = |path: serde_ignored::Path<'_>| unknown.push(ignored_path(&path));
    let result = kind.deserialize(serde_path_to_error::Deserializer::new(
        serde_ignored::Deserializer::new(deserializer, &mut record),
        &mut track,
    ));
    let object = result.map_err(|e| {
        let path = track.path().to_string();
        // serde_yaml_ng already starts its messages with the path.
        let message = e.to_string();
        let message = match message.strip_prefix(&format!("{path}: ")) {
            Some(rest) => rest.to_string(),
            None => message,
        };
        ManifestError::Field {
            origin: origin.clone(),
            kind,
            path,
            message,
        }
    })?;
    let name = format!("{kind} {}", object.display_name());
    let warnings = unknown
        .into_iter()
        .map(|path| (path, WarningReason::UnknownField))
        .chain(
            unsupported_fields(&object)
                .into_iter()
                .map(|path| (path, WarningReason::Unsupported)),
        )
        .map(|(path, reason)| Warning {
            origin: origin.clone(),
            object: name.clone(),
            path,
            reason,
        })
        .collect();
    Ok(Document {
        origin: origin.clone(),
        object,
        warnings,
    })
}

/// Writes serde_ignored's path as Kubernetes does: `a.b[0].c`.
fn ignored_path(path: &serde_ignored::Path<'_>) -> String {
    use serde_ignored::Path as P;
    match path {
        P::Root => String::new(),
        P::Seq { parent, index } => format!("{}[{index}]", ignored_path(parent)),
        P::Map { parent, key } => {
            let parent = ignored_path(parent);
            if parent.is_empty() {
                key.clone()
            } else {
                format!("{parent}.{key}")
            }
        }
        P::Some { parent } | P::NewtypeStruct { parent } | P::NewtypeVariant { parent } => {
            ignored_path(parent)
        }
    }
}

/// Decodes a file, or every `.yaml`, `.yml` and `.json` file of a directory
/// (sorted by name, not recursive, like `kubectl apply -f DIR`).
pub fn parse_path(path: &Path) -> Result<Vec<Document>, ManifestErrors> {
    let io_error = |source| {
        ManifestErrors(vec![ManifestError::Io {
            path: path.to_path_buf(),
            source,
        }])
    };
    let metadata = std::fs::metadata(path).map_err(io_error)?;
    let files = if metadata.is_dir() {
        let mut files = Vec::new();
        for entry in std::fs::read_dir(path).map_err(io_error)? {
            let file = entry.map_err(io_error)?.path();
            let manifest_ext = file
                .extension()
                .and_then(|e| e.to_str())
                .is_some_and(|e| matches!(e, "yaml" | "yml" | "json"));
            if manifest_ext && file.is_file() {
                files.push(file);
            }
        }
        files.sort();
        files
    } else {
        vec![path.to_path_buf()]
    };
    let mut documents = Vec::new();
    let mut errors = Vec::new();
    for file in files {
        match std::fs::read_to_string(&file) {
            Ok(text) => match parse_str(&text, &file.display().to_string()) {
                Ok(mut docs) => documents.append(&mut docs),
                Err(ManifestErrors(mut errs)) => errors.append(&mut errs),
            },
            Err(source) => errors.push(ManifestError::Io { path: file, source }),
        }
    }
    if errors.is_empty() {
        Ok(documents)
    } else {
        Err(ManifestErrors(errors))
    }
}

/// Decodes, defaults and validates: what the API server will accept.
pub fn load_str(text: &str, source: &str) -> Result<Vec<Document>, ManifestErrors> {
    prepare(parse_str(text, source)?)
}

/// [`parse_path`], then defaulting and validation.
pub fn load_path(path: &Path) -> Result<Vec<Document>, ManifestErrors> {
    prepare(parse_path(path)?)
}

fn prepare(mut documents: Vec<Document>) -> Result<Vec<Document>, ManifestErrors> {
    let mut errors = Vec::new();
    for document in &mut documents {
        apply_defaults(&mut document.object);
        if let Err(invalid) = validate(&document.object) {
            errors.push(ManifestError::Invalid {
                origin: document.origin.clone(),
                kind: document.object.kind(),
                name: document.object.display_name(),
                errors: invalid,
            });
        }
    }
    if errors.is_empty() {
        Ok(documents)
    } else {
        Err(ManifestErrors(errors))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn skips_empty_documents_and_unpacks_lists() {
        let text = "---\n---\napiVersion: v1\nkind: List\nitems:\n- apiVersion: v1\n  kind: ConfigMap\n  metadata: {name: a}\n- apiVersion: v1\n  kind: Secret\n  metadata: {name: b}\n---\n";
        let documents = parse_str(text, "t.yaml").expect("parses");
        let names: Vec<String> = documents.iter().map(|d| d.object.display_name()).collect();
        assert_eq!(names, ["a", "b"]);
        assert_eq!(documents[1].origin.to_string(), "t.yaml: document 2 item 2");
    }

    #[test]
    fn a_syntax_error_ends_the_stream_with_one_error() {
        // The YAML parser repeats a syntax error forever if asked for more
        // documents; the decoder must stop at the first.
        let text = "apiVersion: v1\nkind: ConfigMap\nmetadata: {name: a\n---\napiVersion: v1\n";
        let errors = parse_str(text, "t.yaml").expect_err("syntax error").0;
        assert_eq!(errors.len(), 1);
        assert!(matches!(&errors[0], ManifestError::Syntax { file, .. } if file == "t.yaml"));
    }

    #[test]
    fn unknown_fields_are_warned_with_kubernetes_paths() {
        let text = "apiVersion: v1\nkind: Pod\nmetadata: {name: p, colour: red}\nspec:\n  containers:\n  - name: a\n    image: busybox\n    frobnicate: 1\n";
        let documents = parse_str(text, "t.yaml").expect("parses");
        let warnings: Vec<String> = documents[0]
            .warnings
            .iter()
            .map(|w| w.path.clone())
            .collect();
        assert_eq!(
            warnings,
            ["metadata.colour", "spec.containers[0].frobnicate"]
        );
    }

    #[test]
    fn documents_are_decoded_independently() {
        let text = "apiVersion: v1\nkind: Widget\nmetadata: {name: w}\n---\napiVersion: v1\nkind: ConfigMap\nmetadata: {name: c}\ndata: {a: [1]}\n---\napiVersion: v1\nkind: ConfigMap\nmetadata: {name: ok}\n";
        let errors = parse_str(text, "t.yaml").expect_err("two bad documents").0;
        let text: Vec<String> = errors.iter().map(ToString::to_string).collect();
        assert_eq!(text.len(), 2, "{text:?}");
        assert!(text[0].starts_with("t.yaml: document 1: no matches for kind \"Widget\""));
        assert!(
            text[1].starts_with("t.yaml: document 2: ConfigMap: data.a: invalid type"),
            "{}",
            text[1]
        );
    }

    #[test]
    fn json_decodes_like_the_general_path() {
        // What API clients send: the fast path must give the same object
        // and warnings as the YAML parser would, and name the same paths.
        let pod = r#"{"apiVersion":"v1","kind":"Pod","metadata":{"name":"p","colour":"red"},"spec":{"containers":[{"name":"a","image":"busybox","frobnicate":1}]}}"#;
        let fast = parse_json(pod, "request").expect("json").expect("decodes");
        let general = parse_str(pod, "request").expect("decodes").remove(0);
        assert_eq!(fast, general);
        assert_eq!(fast.warnings.len(), 2);

        let wrong_type =
            r#"{"apiVersion":"v1","kind":"ConfigMap","metadata":{"name":"c"},"data":{"a":[1]}}"#;
        let error = parse_json(wrong_type, "request")
            .expect("json")
            .expect_err("a list is no string")
            .to_string();
        assert!(
            error.starts_with("request: document 1: ConfigMap: data.a: invalid type"),
            "{error}"
        );
        let unknown = r#"{"apiVersion":"v1","kind":"Widget","metadata":{"name":"w"}}"#;
        let error = parse_json(unknown, "request")
            .expect("json")
            .expect_err("no such kind");
        assert!(error.to_string().contains("no matches for kind \"Widget\""));
        let no_kind = r#"{"apiVersion":"v1","metadata":{"name":"w"}}"#;
        let error = parse_json(no_kind, "request")
            .expect("json")
            .expect_err("no kind");
        assert!(error.to_string().contains("`kind` is required"), "{error}");
        let trailing = r#"{"apiVersion":"v1","kind":"ConfigMap","metadata":{"name":"c"}} {}"#;
        assert!(parse_json(trailing, "request").is_none_or(|r| r.is_err()));

        // Not JSON, or a List: the general path's business.
        assert!(parse_json("apiVersion: v1\nkind: ConfigMap\n", "request").is_none());
        assert!(parse_json(r#"{"apiVersion":"v1","kind":"List","items":[]}"#, "request").is_none());
        assert!(parse_json("{apiVersion: v1, kind: ConfigMap}", "request").is_none());
    }
}
