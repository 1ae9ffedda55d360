//! Structural OpenAPI v3 schemas, as CustomResourceDefinitions carry them: compiled once when
//! a CRD is registered, then used on every write of its custom resources to prune fields the
//! schema does not know, fill defaults and validate values (apiextensions-apiserver's
//! `pkg/apiserver/schema` with its pruning, defaulting and validation is the model).
//!
//! [`Schema::compile`] also checks that a schema is structural (every node has a `type`,
//! unless it is `x-kubernetes-int-or-string` or `x-kubernetes-preserve-unknown-fields`; no
//! `properties` beside `additionalProperties`; arrays have `items`; patterns compile within a
//! size limit; defaults fit their schema), so the CRD's own validation refuses what could not
//! be served. `x-kubernetes-validations` (CEL) is not evaluated.

use std::collections::BTreeMap;

use serde_json::{Map, Value};

use crate::validation::{FieldError, FieldErrorType, Step, UnknownField};

/// How deep a schema may nest (upstream's CRD schemas are bounded by the request size; this
/// bounds the recursion of every walk).
const MAX_DEPTH: usize = 64;
/// Compiled size limit of one `pattern`, so a hostile CRD cannot make a regex that eats
/// memory or time on every write.
const PATTERN_SIZE_LIMIT: usize = 1 << 20;

/// The JSON types a schema node may require.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Type {
    Object,
    Array,
    String,
    Integer,
    Number,
    Boolean,
}

impl Type {
    fn parse(s: &str) -> Option<Type> {
        Some(match s {
            "object" => Type::Object,
            "array" => Type::Array,
            "string" => Type::String,
            "integer" => Type::Integer,
            "number" => Type::Number,
            "boolean" => Type::Boolean,
            _ => return None,
        })
    }

    fn name(self) -> &'static str {
        match self {
            Type::Object => "object",
            Type::Array => "array",
            Type::String => "string",
            Type::Integer => "integer",
            Type::Number => "number",
            Type::Boolean => "boolean",
        }
    }

    fn fits(self, v: &Value) -> bool {
        match self {
            Type::Object => v.is_object(),
            Type::Array => v.is_array(),
            Type::String => v.is_string(),
            Type::Integer => {
                v.is_i64() || v.is_u64() || v.as_f64().is_some_and(|f| f.fract() == 0.0)
            }
            Type::Number => v.is_number(),
            Type::Boolean => v.is_boolean(),
        }
    }
}

/// What an object node says about keys it does not list.
#[derive(Debug, Clone)]
enum Additional {
    /// Unlisted keys are pruned (no `additionalProperties`, or `false`).
    Prune,
    /// Unlisted keys are kept as they are (`additionalProperties: true`).
    Keep,
    /// Every value is an instance of this schema (a map).
    Schema(Box<Node>),
}

/// One compiled schema node.
#[derive(Debug, Clone)]
struct Node {
    type_: Option<Type>,
    nullable: bool,
    properties: BTreeMap<String, Node>,
    additional: Additional,
    items: Option<Box<Node>>,
    required: Vec<String>,
    enum_: Option<Vec<Value>>,
    minimum: Option<f64>,
    maximum: Option<f64>,
    exclusive_minimum: bool,
    exclusive_maximum: bool,
    min_length: Option<u64>,
    max_length: Option<u64>,
    min_items: Option<u64>,
    max_items: Option<u64>,
    min_properties: Option<u64>,
    max_properties: Option<u64>,
    unique_items: bool,
    pattern: Option<regex::Regex>,
    format: Option<String>,
    default: Option<Value>,
    preserve_unknown: bool,
    int_or_string: bool,
    embedded: bool,
    all_of: Vec<Node>,
    any_of: Vec<Node>,
    one_of: Vec<Node>,
    not: Option<Box<Node>>,
}

/// A compiled structural schema.
#[derive(Debug, Clone)]
pub struct Schema {
    root: Node,
    /// The schema as the CRD wrote it (for OpenAPI documents).
    source: Value,
}

/// A schema that is not structural, or that cannot be compiled: the field path inside the
/// schema (`properties[spec].properties[replicas].type`) and what is wrong.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SchemaError {
    /// Path inside the schema.
    pub path: String,
    /// What is wrong.
    pub message: String,
}

fn err(path: &str, message: impl Into<String>) -> SchemaError {
    SchemaError {
        path: path.to_string(),
        message: message.into(),
    }
}

fn uint(map: &Map<String, Value>, key: &str, path: &str) -> Result<Option<u64>, SchemaError> {
    match map.get(key) {
        None | Some(Value::Null) => Ok(None),
        Some(v) => v
            .as_u64()
            .map(Some)
            .ok_or_else(|| err(&format!("{path}.{key}"), "must be a non-negative integer")),
    }
}

fn float(map: &Map<String, Value>, key: &str, path: &str) -> Result<Option<f64>, SchemaError> {
    match map.get(key) {
        None | Some(Value::Null) => Ok(None),
        Some(v) => v
            .as_f64()
            .map(Some)
            .ok_or_else(|| err(&format!("{path}.{key}"), "must be a number")),
    }
}

fn flag(map: &Map<String, Value>, key: &str) -> bool {
    map.get(key).and_then(Value::as_bool).unwrap_or(false)
}

impl Node {
    /// Compiles `v` at `path`. `logic` is true inside `allOf`/`anyOf`/`oneOf`/`not`, where
    /// structural schemas may only carry value validations (no `type`, no `default`).
    fn compile(v: &Value, path: &str, depth: usize, logic: bool) -> Result<Node, SchemaError> {
        if depth > MAX_DEPTH {
            return Err(err(
                path,
                format!("nested more than {MAX_DEPTH} levels deep"),
            ));
        }
        let map = v
            .as_object()
            .ok_or_else(|| err(path, "must be an object"))?;
        let type_ = match map.get("type") {
            None | Some(Value::Null) => None,
            Some(Value::String(s)) if s.is_empty() => None,
            Some(Value::String(s)) => Some(Type::parse(s).ok_or_else(|| {
                err(
                    &format!("{path}.type"),
                    format!(
                        "Unsupported value: {s:?}: supported values: \"array\", \"boolean\", \"integer\", \"number\", \"object\", \"string\""
                    ),
                )
            })?),
            Some(_) => return Err(err(&format!("{path}.type"), "must be a string")),
        };
        let preserve_unknown = flag(map, "x-kubernetes-preserve-unknown-fields");
        let int_or_string = flag(map, "x-kubernetes-int-or-string");
        let embedded = flag(map, "x-kubernetes-embedded-resource");
        if logic && (type_.is_some() || map.contains_key("default")) {
            return Err(err(
                path,
                "must not set type or default inside allOf, anyOf, oneOf or not (structural schema)",
            ));
        }
        if !logic && type_.is_none() && !int_or_string && !preserve_unknown {
            return Err(err(
                &format!("{path}.type"),
                "Required value: must not be empty for specified object fields",
            ));
        }
        let mut properties = BTreeMap::new();
        if let Some(props) = map.get("properties") {
            let props = props
                .as_object()
                .ok_or_else(|| err(&format!("{path}.properties"), "must be an object"))?;
            for (k, p) in props {
                let at = format!("{path}.properties[{k}]");
                properties.insert(k.clone(), Node::compile(p, &at, depth + 1, logic)?);
            }
        }
        let additional = match map.get("additionalProperties") {
            None | Some(Value::Null) | Some(Value::Bool(false)) => Additional::Prune,
            Some(Value::Bool(true)) => Additional::Keep,
            Some(s) => Additional::Schema(Box::new(Node::compile(
                s,
                &format!("{path}.additionalProperties"),
                depth + 1,
                logic,
            )?)),
        };
        if !properties.is_empty() && !matches!(additional, Additional::Prune) {
            return Err(err(
                &format!("{path}.additionalProperties"),
                "Forbidden: additionalProperties and properties are mutual exclusive",
            ));
        }
        let items = match map.get("items") {
            None | Some(Value::Null) => None,
            Some(s) => Some(Box::new(Node::compile(
                s,
                &format!("{path}.items"),
                depth + 1,
                logic,
            )?)),
        };
        if type_ == Some(Type::Array) && items.is_none() && !logic {
            return Err(err(
                &format!("{path}.items"),
                "Required value: must be specified",
            ));
        }
        let required = match map.get("required") {
            None | Some(Value::Null) => Vec::new(),
            Some(Value::Array(list)) => list
                .iter()
                .map(|r| {
                    r.as_str().map(str::to_string).ok_or_else(|| {
                        err(&format!("{path}.required"), "must be a list of strings")
                    })
                })
                .collect::<Result<_, _>>()?,
            Some(_) => {
                return Err(err(
                    &format!("{path}.required"),
                    "must be a list of strings",
                ));
            }
        };
        let enum_ = match map.get("enum") {
            None | Some(Value::Null) => None,
            Some(Value::Array(list)) => Some(list.clone()),
            Some(_) => return Err(err(&format!("{path}.enum"), "must be a list")),
        };
        let pattern = match map.get("pattern") {
            None | Some(Value::Null) => None,
            Some(Value::String(p)) => Some(
                regex::RegexBuilder::new(p)
                    .size_limit(PATTERN_SIZE_LIMIT)
                    .dfa_size_limit(PATTERN_SIZE_LIMIT)
                    .build()
                    .map_err(|e| {
                        err(
                            &format!("{path}.pattern"),
                            format!("Invalid value: {p:?}: {e}"),
                        )
                    })?,
            ),
            Some(_) => return Err(err(&format!("{path}.pattern"), "must be a string")),
        };
        let logic_list = |key: &str| -> Result<Vec<Node>, SchemaError> {
            match map.get(key) {
                None | Some(Value::Null) => Ok(Vec::new()),
                Some(Value::Array(list)) => list
                    .iter()
                    .enumerate()
                    .map(|(i, s)| Node::compile(s, &format!("{path}.{key}[{i}]"), depth + 1, true))
                    .collect(),
                Some(_) => Err(err(&format!("{path}.{key}"), "must be a list")),
            }
        };
        let node = Node {
            type_,
            nullable: flag(map, "nullable"),
            properties,
            additional,
            items,
            required,
            enum_,
            minimum: float(map, "minimum", path)?,
            maximum: float(map, "maximum", path)?,
            exclusive_minimum: flag(map, "exclusiveMinimum"),
            exclusive_maximum: flag(map, "exclusiveMaximum"),
            min_length: uint(map, "minLength", path)?,
            max_length: uint(map, "maxLength", path)?,
            min_items: uint(map, "minItems", path)?,
            max_items: uint(map, "maxItems", path)?,
            min_properties: uint(map, "minProperties", path)?,
            max_properties: uint(map, "maxProperties", path)?,
            unique_items: flag(map, "uniqueItems"),
            pattern,
            format: map
                .get("format")
                .and_then(Value::as_str)
                .map(str::to_string),
            default: map.get("default").filter(|d| !d.is_null()).cloned(),
            preserve_unknown,
            int_or_string,
            embedded,
            all_of: logic_list("allOf")?,
            any_of: logic_list("anyOf")?,
            one_of: logic_list("oneOf")?,
            not: match map.get("not") {
                None | Some(Value::Null) => None,
                Some(s) => Some(Box::new(Node::compile(
                    s,
                    &format!("{path}.not"),
                    depth + 1,
                    true,
                )?)),
            },
        };
        if let Some(default) = &node.default {
            let mut errs = Vec::new();
            let mut copy = default.clone();
            node.apply_defaults(&mut copy, 0);
            node.validate(&copy, "", 0, &mut errs);
            if let Some(e) = errs.first() {
                return Err(err(
                    &format!("{path}.default"),
                    format!(
                        "Invalid value: the default does not fit its schema: {}",
                        e.describe()
                    ),
                ));
            }
        }
        Ok(node)
    }

    fn type_ok(&self, v: &Value) -> bool {
        if v.is_null() {
            return self.nullable || self.type_.is_none() && !self.int_or_string;
        }
        if self.int_or_string {
            return v.is_string() || Type::Integer.fits(v);
        }
        self.type_.is_none_or(|t| t.fits(v))
    }

    /// Records in `unknown` the fields of `v` this node does not know. `path` is the steps
    /// from the object's root.
    fn prune(
        &self,
        v: &Value,
        path: &mut Vec<Step>,
        depth: usize,
        unknown: &mut Vec<UnknownField>,
    ) {
        if depth > MAX_DEPTH {
            return;
        }
        match v {
            Value::Object(map) => {
                for (k, child) in map {
                    path.push(Step::Key(k.clone()));
                    if let Some(p) = self.properties.get(k) {
                        p.prune(child, path, depth + 1, unknown);
                    } else if self.embedded
                        && matches!(k.as_str(), "apiVersion" | "kind" | "metadata")
                    {
                    } else {
                        match &self.additional {
                            Additional::Schema(s) => s.prune(child, path, depth + 1, unknown),
                            Additional::Keep => {}
                            Additional::Prune if self.preserve_unknown => {}
                            Additional::Prune => unknown.push(UnknownField(path.clone())),
                        }
                    }
                    path.pop();
                }
            }
            Value::Array(list) => {
                if let Some(items) = &self.items {
                    for (i, child) in list.iter().enumerate() {
                        path.push(Step::Index(i));
                        items.prune(child, path, depth + 1, unknown);
                        path.pop();
                    }
                }
            }
            _ => {}
        }
    }

    /// Fills defaults of absent properties (and of null ones that may not be null), deep.
    fn apply_defaults(&self, v: &mut Value, depth: usize) {
        if depth > MAX_DEPTH {
            return;
        }
        match v {
            Value::Object(map) => {
                for (k, p) in &self.properties {
                    if let Some(d) = &p.default {
                        match map.get(k) {
                            None => {
                                map.insert(k.clone(), d.clone());
                            }
                            Some(Value::Null) if !p.nullable => {
                                map.insert(k.clone(), d.clone());
                            }
                            _ => {}
                        }
                    }
                    if let Some(child) = map.get_mut(k) {
                        p.apply_defaults(child, depth + 1);
                    }
                }
                if let Additional::Schema(s) = &self.additional {
                    for child in map.values_mut() {
                        s.apply_defaults(child, depth + 1);
                    }
                }
            }
            Value::Array(list) => {
                if let Some(items) = &self.items {
                    for child in list {
                        items.apply_defaults(child, depth + 1);
                    }
                }
            }
            _ => {}
        }
    }

    /// Checks `v` at `path` (Kubernetes field path), adding every problem to `errs`.
    fn validate(&self, v: &Value, path: &str, depth: usize, errs: &mut Vec<FieldError>) {
        if depth > MAX_DEPTH {
            errs.push(FieldError::invalid(
                path,
                v,
                format!("nested more than {MAX_DEPTH} levels deep"),
            ));
            return;
        }
        let shown = if path.is_empty() { "body" } else { path };
        if !self.type_ok(v) {
            let want = if self.int_or_string {
                "integer or string"
            } else {
                self.type_.map_or("non-null", Type::name)
            };
            let got = match v {
                Value::Null => "null",
                Value::Bool(_) => "boolean",
                Value::Number(n) if n.is_f64() => "number",
                Value::Number(_) => "integer",
                Value::String(_) => "string",
                Value::Array(_) => "array",
                Value::Object(_) => "object",
            };
            errs.push(FieldError {
                field: path.to_string(),
                error_type: FieldErrorType::Invalid,
                value: Some(crate::validation::render_value(&Value::from(got))),
                message: format!("{shown} in body must be of type {want}: \"{got}\""),
            });
            return;
        }
        if v.is_null() {
            return;
        }
        if let Some(allowed) = &self.enum_
            && !allowed.contains(v)
        {
            let supported: Vec<String> = allowed
                .iter()
                .map(crate::validation::render_value)
                .collect();
            errs.push(FieldError {
                field: path.to_string(),
                error_type: FieldErrorType::NotSupported,
                value: Some(crate::validation::render_value(v)),
                message: format!("supported values: {}", supported.join(", ")),
            });
        }
        match v {
            Value::Number(n) => {
                let f = n.as_f64().unwrap_or(0.0);
                if let Some(min) = self.minimum
                    && (f < min || self.exclusive_minimum && f == min)
                {
                    let op = if self.exclusive_minimum {
                        "greater than"
                    } else {
                        "greater than or equal to"
                    };
                    errs.push(FieldError::invalid(
                        path,
                        v,
                        format!("{shown} in body should be {op} {min}"),
                    ));
                }
                if let Some(max) = self.maximum
                    && (f > max || self.exclusive_maximum && f == max)
                {
                    let op = if self.exclusive_maximum {
                        "less than"
                    } else {
                        "less than or equal to"
                    };
                    errs.push(FieldError::invalid(
                        path,
                        v,
                        format!("{shown} in body should be {op} {max}"),
                    ));
                }
            }
            Value::String(s) => {
                let len = s.chars().count() as u64;
                if let Some(max) = self.max_length
                    && len > max
                {
                    errs.push(FieldError {
                        field: path.to_string(),
                        error_type: FieldErrorType::TooLong,
                        value: None,
                        message: format!("may not be more than {max} bytes"),
                    });
                }
                if let Some(min) = self.min_length
                    && len < min
                {
                    errs.push(FieldError::invalid(
                        path,
                        v,
                        format!("{shown} in body should be at least {min} chars long"),
                    ));
                }
                if let Some(p) = &self.pattern
                    && !p.is_match(s)
                {
                    errs.push(FieldError::invalid(
                        path,
                        v,
                        format!("{shown} in body should match '{}'", p.as_str()),
                    ));
                }
                if let Some(f) = &self.format
                    && !format_ok(f, s)
                {
                    errs.push(FieldError::invalid(
                        path,
                        v,
                        format!("{shown} in body must be of type {f}: {s:?}"),
                    ));
                }
            }
            Value::Array(list) => {
                let n = list.len() as u64;
                if let Some(max) = self.max_items
                    && n > max
                {
                    errs.push(FieldError {
                        field: path.to_string(),
                        error_type: FieldErrorType::TooMany,
                        value: Some(n.to_string()),
                        message: format!("must have at most {max} items"),
                    });
                }
                if let Some(min) = self.min_items
                    && n < min
                {
                    errs.push(FieldError::invalid(
                        path,
                        v,
                        format!("{shown} in body should have at least {min} items"),
                    ));
                }
                if self.unique_items {
                    for (i, item) in list.iter().enumerate() {
                        if list[..i].contains(item) {
                            errs.push(FieldError::duplicate(format!("{path}[{i}]"), item));
                        }
                    }
                }
                if let Some(items) = &self.items {
                    for (i, item) in list.iter().enumerate() {
                        items.validate(item, &format!("{path}[{i}]"), depth + 1, errs);
                    }
                }
            }
            Value::Object(map) => {
                let n = map.len() as u64;
                if let Some(max) = self.max_properties
                    && n > max
                {
                    errs.push(FieldError::invalid(
                        path,
                        v,
                        format!("{shown} in body should have at most {max} properties"),
                    ));
                }
                if let Some(min) = self.min_properties
                    && n < min
                {
                    errs.push(FieldError::invalid(
                        path,
                        v,
                        format!("{shown} in body should have at least {min} properties"),
                    ));
                }
                for r in &self.required {
                    if !map.contains_key(r) {
                        errs.push(FieldError::required(child_path(path, r), ""));
                    }
                }
                for (k, child) in map {
                    let at = child_path(path, k);
                    if let Some(p) = self.properties.get(k) {
                        p.validate(child, &at, depth + 1, errs);
                    } else if let Additional::Schema(s) = &self.additional {
                        s.validate(child, &at, depth + 1, errs);
                    }
                }
            }
            _ => {}
        }
        for s in &self.all_of {
            s.validate(v, path, depth + 1, errs);
        }
        let passes = |s: &Node| {
            let mut e = Vec::new();
            s.validate(v, path, depth + 1, &mut e);
            e.is_empty()
        };
        if !self.any_of.is_empty() && !self.any_of.iter().any(passes) {
            errs.push(FieldError::invalid(
                path,
                v,
                format!("{shown} in body must validate at least one schema (anyOf)"),
            ));
        }
        if !self.one_of.is_empty() && self.one_of.iter().filter(|s| passes(s)).count() != 1 {
            errs.push(FieldError::invalid(
                path,
                v,
                format!("{shown} in body must validate one and only one schema (oneOf)"),
            ));
        }
        if let Some(not) = &self.not
            && passes(not)
        {
            errs.push(FieldError::invalid(
                path,
                v,
                format!("{shown} in body must not validate the schema (not)"),
            ));
        }
    }
}

fn child_path(path: &str, key: &str) -> String {
    if path.is_empty() {
        key.to_string()
    } else {
        format!("{path}.{key}")
    }
}

/// The string formats upstream checks that clients commonly use; others are not checked.
fn format_ok(format: &str, s: &str) -> bool {
    match format {
        "date-time" => s.parse::<jiff::Timestamp>().is_ok(),
        "date" => s.parse::<jiff::civil::Date>().is_ok(),
        "ipv4" => s.parse::<std::net::Ipv4Addr>().is_ok(),
        "ipv6" => s.parse::<std::net::Ipv6Addr>().is_ok(),
        "uuid" => {
            s.len() == 36
                && s.chars().enumerate().all(|(i, c)| {
                    if matches!(i, 8 | 13 | 18 | 23) {
                        c == '-'
                    } else {
                        c.is_ascii_hexdigit()
                    }
                })
        }
        "byte" => base64::Engine::decode(&base64::engine::general_purpose::STANDARD, s).is_ok(),
        _ => true,
    }
}

/// Fields every custom resource has at its root whatever its schema says.
const ROOT_FIELDS: [&str; 3] = ["apiVersion", "kind", "metadata"];

impl Schema {
    /// Compiles a CRD version's `openAPIV3Schema`, checking it is structural and its root is
    /// an object.
    pub fn compile(source: &Value) -> Result<Schema, SchemaError> {
        let root = Node::compile(source, "openAPIV3Schema", 0, false)?;
        if root.type_ != Some(Type::Object) {
            return Err(err(
                "openAPIV3Schema.type",
                "Unsupported value: the root must be of type object",
            ));
        }
        if let Some(meta) = root.properties.get("metadata") {
            let extra: Vec<&String> = meta
                .properties
                .keys()
                .filter(|k| !matches!(k.as_str(), "name" | "generateName"))
                .collect();
            if !extra.is_empty() || meta.type_ != Some(Type::Object) {
                return Err(err(
                    "openAPIV3Schema.properties[metadata]",
                    "Forbidden: must not specify anything other than name and generateName, but metadata is implicitly specified",
                ));
            }
        }
        Ok(Schema {
            root,
            source: source.clone(),
        })
    }

    /// The schema as written.
    pub fn source(&self) -> &Value {
        &self.source
    }

    /// The fields of `obj` the schema does not know (they are pruned), apart from `apiVersion`,
    /// `kind` and `metadata`, which every object has.
    pub fn unknown_fields(&self, obj: &Value, unknown: &mut Vec<UnknownField>) {
        let Some(map) = obj.as_object() else {
            return;
        };
        let mut path = Vec::new();
        for (k, v) in map {
            if ROOT_FIELDS.contains(&k.as_str()) {
                continue;
            }
            path.push(Step::Key(k.clone()));
            match self.root.properties.get(k) {
                Some(p) => p.prune(v, &mut path, 1, unknown),
                None if self.root.preserve_unknown => {}
                None => unknown.push(UnknownField(path.clone())),
            }
            path.pop();
        }
    }

    /// Fills the schema's defaults into `obj`.
    pub fn apply_defaults(&self, obj: &mut Value) {
        self.root.apply_defaults(obj, 0);
    }

    /// Checks `obj` against the schema (its `metadata` is checked elsewhere).
    pub fn validate(&self, obj: &Value, errs: &mut Vec<FieldError>) {
        let Some(map) = obj.as_object() else {
            return;
        };
        for r in &self.root.required {
            if !map.contains_key(r) && !ROOT_FIELDS.contains(&r.as_str()) {
                errs.push(FieldError::required(r.as_str(), ""));
            }
        }
        for (k, v) in map {
            if ROOT_FIELDS.contains(&k.as_str()) {
                continue;
            }
            if let Some(p) = self.root.properties.get(k) {
                p.validate(v, k, 1, errs);
            }
        }
    }
}

/// Evaluates the simple JSONPath of an `additionalPrinterColumns` entry or of a scale
/// subresource path (`.spec.replicas`, `.status.conditions[0].type`,
/// `.status.conditions[?(@.type=="Ready")].status`, `.spec.items[*].name`) on `obj`: every
/// value it reaches, in order.
pub fn json_path<'a>(obj: &'a Value, path: &str) -> Vec<&'a Value> {
    let path = path.trim().trim_start_matches('{').trim_end_matches('}');
    let path = path.strip_prefix('$').unwrap_or(path);
    let mut current = vec![obj];
    let mut rest = path;
    while !rest.is_empty() {
        if let Some(r) = rest.strip_prefix('.') {
            let end = r.find(['.', '[']).unwrap_or(r.len());
            let key = &r[..end];
            rest = &r[end..];
            if key.is_empty() {
                continue;
            }
            current = current.into_iter().filter_map(|v| v.get(key)).collect();
        } else if let Some(r) = rest.strip_prefix('[') {
            let Some(end) = r.find(']') else {
                return Vec::new();
            };
            let selector = &r[..end];
            rest = &r[end + 1..];
            current = current
                .into_iter()
                .flat_map(|v| select(v, selector))
                .collect();
        } else {
            return Vec::new();
        }
    }
    current
}

fn select<'a>(v: &'a Value, selector: &str) -> Vec<&'a Value> {
    let Some(list) = v.as_array() else {
        return match selector.trim_matches(['\'', '"']) {
            key if !key.is_empty() && selector != "*" => v.get(key).into_iter().collect(),
            _ => v
                .as_object()
                .map(|m| m.values().collect())
                .unwrap_or_default(),
        };
    };
    if selector == "*" {
        return list.iter().collect();
    }
    if let Ok(i) = selector.parse::<i64>() {
        let i = if i < 0 { list.len() as i64 + i } else { i };
        return usize::try_from(i)
            .ok()
            .and_then(|i| list.get(i))
            .into_iter()
            .collect();
    }
    if let Some(filter) = selector
        .strip_prefix("?(@.")
        .and_then(|f| f.strip_suffix(')'))
    {
        let (field, want) = match filter.split_once("==") {
            Some((f, w)) => (f.trim(), Some(w.trim().trim_matches(['\'', '"']))),
            None => (filter.trim(), None),
        };
        return list
            .iter()
            .filter(|item| {
                let got = json_path(item, &format!(".{field}")).into_iter().next();
                match (got, want) {
                    (Some(g), Some(w)) => g.as_str().map_or_else(
                        || serde_json::from_str::<Value>(w).is_ok_and(|wv| &wv == g),
                        |s| s == w,
                    ),
                    (Some(_), None) => true,
                    (None, _) => false,
                }
            })
            .collect();
    }
    Vec::new()
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use serde_json::json;

    use super::*;

    fn schema() -> Schema {
        Schema::compile(&json!({
            "type": "object",
            "properties": {
                "spec": {
                    "type": "object",
                    "required": ["size"],
                    "properties": {
                        "size": {"type": "integer", "minimum": 1, "maximum": 10},
                        "mode": {"type": "string", "enum": ["fast", "slow"], "default": "fast"},
                        "name": {"type": "string", "pattern": "^[a-z]+$", "maxLength": 8},
                        "labels": {"type": "object", "additionalProperties": {"type": "string"}},
                        "items": {"type": "array", "items": {"type": "object", "properties": {
                            "id": {"type": "integer"}}}},
                        "free": {"type": "object", "x-kubernetes-preserve-unknown-fields": true},
                        "port": {"x-kubernetes-int-or-string": true},
                    }
                },
                "status": {"type": "object", "properties": {"ready": {"type": "boolean"}}}
            }
        }))
        .unwrap()
    }

    fn errors(obj: &Value) -> Vec<String> {
        let mut errs = Vec::new();
        schema().validate(obj, &mut errs);
        errs.iter().map(FieldError::describe).collect()
    }

    #[test]
    fn validates_types_ranges_enums_patterns_and_required_fields() {
        assert!(
            errors(&json!({"spec": {"size": 3, "mode": "slow", "name": "abc", "port": "http"}}))
                .is_empty()
        );
        assert!(errors(&json!({"spec": {"size": 3, "port": 80}})).is_empty());
        let e = errors(&json!({"spec": {"size": "3"}}));
        assert_eq!(e.len(), 1, "{e:?}");
        assert!(
            e[0].contains("spec.size") && e[0].contains("must be of type integer"),
            "{e:?}"
        );
        let e = errors(
            &json!({"spec": {"size": 11, "mode": "odd", "name": "A1", "labels": {"a": 1}, "port": true}}),
        );
        assert_eq!(e.len(), 5, "{e:?}");
        assert!(e.iter().any(|m| m.contains("less than or equal to 10")));
        assert!(e.iter().any(|m| m.contains("Unsupported value: \"odd\"")));
        assert!(e.iter().any(|m| m.contains("should match")));
        assert!(e.iter().any(|m| m.contains("spec.labels.a")));
        assert!(e.iter().any(|m| m.contains("integer or string")));
        let e = errors(&json!({"spec": {}}));
        assert_eq!(e, vec!["spec.size: Required value".to_string()]);
        let e = errors(&json!({"spec": {"size": 1, "items": [{"id": "x"}]}}));
        assert!(e[0].starts_with("spec.items[0].id"), "{e:?}");
    }

    #[test]
    fn prunes_unknown_fields_except_where_preserved() {
        let mut unknown = Vec::new();
        schema().unknown_fields(
            &json!({"apiVersion": "x/v1", "kind": "K", "metadata": {"name": "a"},
                "spec": {"size": 1, "bogus": 1, "free": {"any": {"thing": 1}}, "items": [{"id": 1, "x": 2}]},
                "extra": true}),
            &mut unknown,
        );
        let paths: Vec<String> = unknown.iter().map(UnknownField::describe).collect();
        assert_eq!(paths, ["spec.bogus", "spec.items[0].x", "extra"]);
    }

    #[test]
    fn fills_defaults() {
        let mut obj = json!({"spec": {"size": 1}});
        schema().apply_defaults(&mut obj);
        assert_eq!(obj["spec"]["mode"], "fast");
    }

    #[test]
    fn refuses_schemas_that_are_not_structural() {
        let bad = [
            json!({"type": "string"}),
            json!({"type": "object", "properties": {"a": {}}}),
            json!({"type": "object", "properties": {"a": {"type": "array"}}}),
            json!({"type": "object", "properties": {"a": {"type": "object", "properties": {"b": {"type": "string"}}, "additionalProperties": {"type": "string"}}}}),
            json!({"type": "object", "properties": {"a": {"type": "string", "pattern": "("}}}),
            json!({"type": "object", "properties": {"a": {"type": "integer", "default": "x"}}}),
            json!({"type": "object", "properties": {"a": {"type": "frob"}}}),
            json!({"type": "object", "properties": {"metadata": {"type": "object", "properties": {"labels": {"type": "object"}}}}}),
            json!({"type": "object", "properties": {"a": {"type": "string", "anyOf": [{"type": "string"}]}}}),
        ];
        for s in bad {
            assert!(Schema::compile(&s).is_err(), "{s}");
        }
    }

    #[test]
    fn json_paths() {
        let obj = json!({"spec": {"replicas": 3}, "status": {"conditions": [
            {"type": "Ready", "status": "True"}, {"type": "Synced", "status": "False"}]}});
        assert_eq!(json_path(&obj, ".spec.replicas"), [&json!(3)]);
        assert_eq!(
            json_path(&obj, ".status.conditions[1].type"),
            [&json!("Synced")]
        );
        assert_eq!(
            json_path(&obj, ".status.conditions[?(@.type==\"Ready\")].status"),
            [&json!("True")]
        );
        assert_eq!(json_path(&obj, ".status.conditions[*].type").len(), 2);
        assert!(json_path(&obj, ".spec.missing").is_empty());
    }
}
