//! Label selectors (`a=b,c!=d,e in (x,y),!f`) and field selectors (`spec.nodeName=n1`), parsed
//! from query strings or from `metav1.LabelSelector`, and matched against objects. Field
//! selectors support only the fields Kubernetes supports for the served kinds.

use std::collections::BTreeMap;

use k8s_openapi::apimachinery::pkg::apis::meta::v1 as metav1;
use serde_json::Value;

use crate::registry::ResourceType;

/// Why a selector does not parse.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SelectorError {
    /// The label selector text is malformed.
    #[error("unable to parse requirement: {0}")]
    InvalidLabelSelector(String),
    /// The field selector text is malformed.
    #[error("invalid field selector: {0}")]
    InvalidFieldSelector(String),
    /// The field selector names a field that is not supported.
    #[error("field label not supported: {0}")]
    UnsupportedField(String),
}

/// The operator of one label requirement.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Operator {
    /// `a=b`, `a==b`, `a in (x,y)`.
    In,
    /// `a!=b`, `a notin (x,y)`.
    NotIn,
    /// `a`.
    Exists,
    /// `!a`.
    DoesNotExist,
}

/// One requirement of a label selector.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Requirement {
    /// The label key.
    pub key: String,
    /// The operator.
    pub operator: Operator,
    /// The values (empty for `Exists` / `DoesNotExist`).
    pub values: Vec<String>,
}

impl Requirement {
    fn matches(&self, labels: &BTreeMap<String, String>) -> bool {
        let v = labels.get(&self.key);
        match self.operator {
            Operator::In => v.is_some_and(|v| self.values.contains(v)),
            Operator::NotIn => v.is_none_or(|v| !self.values.contains(v)),
            Operator::Exists => v.is_some(),
            Operator::DoesNotExist => v.is_none(),
        }
    }
}

/// A parsed label selector: all requirements must hold. The empty selector matches everything.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct LabelSelector {
    /// The requirements, ANDed.
    pub requirements: Vec<Requirement>,
}

impl LabelSelector {
    /// Parses the query-string form: `a=b`, `a==b`, `a!=b`, `a in (x,y)`, `a notin (x)`, `a`,
    /// `!a`, separated by commas.
    pub fn parse(s: &str) -> Result<Self, SelectorError> {
        let err = || SelectorError::InvalidLabelSelector(s.to_string());
        let mut requirements = Vec::new();
        for part in split_top_level(s) {
            let part = part.trim();
            if part.is_empty() {
                if s.trim().is_empty() {
                    continue;
                }
                return Err(err());
            }
            let req = if let Some(key) = part.strip_prefix('!') {
                Requirement {
                    key: check_key(key.trim()).ok_or_else(err)?,
                    operator: Operator::DoesNotExist,
                    values: vec![],
                }
            } else if let Some((k, v)) = part.split_once("!=") {
                Requirement {
                    key: check_key(k.trim()).ok_or_else(err)?,
                    operator: Operator::NotIn,
                    values: vec![check_value(v.trim()).ok_or_else(err)?],
                }
            } else if let Some((k, v)) = part.split_once("==").or_else(|| part.split_once('=')) {
                Requirement {
                    key: check_key(k.trim()).ok_or_else(err)?,
                    operator: Operator::In,
                    values: vec![check_value(v.trim()).ok_or_else(err)?],
                }
            } else if let Some(open) = part.find('(') {
                let head = part[..open].trim();
                let close = part
                    .rfind(')')
                    .filter(|c| *c == part.len() - 1)
                    .ok_or_else(err)?;
                let (key, op) = if let Some(k) = head.strip_suffix(" notin") {
                    (k, Operator::NotIn)
                } else if let Some(k) = head.strip_suffix(" in") {
                    (k, Operator::In)
                } else {
                    return Err(err());
                };
                let values = part[open + 1..close]
                    .split(',')
                    .map(|v| check_value(v.trim()).ok_or_else(err))
                    .collect::<Result<Vec<_>, _>>()?;
                Requirement {
                    key: check_key(key.trim()).ok_or_else(err)?,
                    operator: op,
                    values,
                }
            } else {
                Requirement {
                    key: check_key(part).ok_or_else(err)?,
                    operator: Operator::Exists,
                    values: vec![],
                }
            };
            requirements.push(req);
        }
        Ok(LabelSelector { requirements })
    }

    /// Converts a `metav1.LabelSelector` (`matchLabels` and `matchExpressions`).
    pub fn from_api(sel: &metav1::LabelSelector) -> Result<Self, SelectorError> {
        let mut requirements = Vec::new();
        for (k, v) in sel.match_labels.iter().flatten() {
            requirements.push(Requirement {
                key: k.clone(),
                operator: Operator::In,
                values: vec![v.clone()],
            });
        }
        for e in sel.match_expressions.iter().flatten() {
            let values = e.values.clone().unwrap_or_default();
            let operator = match e.operator.as_str() {
                "In" => Operator::In,
                "NotIn" => Operator::NotIn,
                "Exists" => Operator::Exists,
                "DoesNotExist" => Operator::DoesNotExist,
                other => {
                    return Err(SelectorError::InvalidLabelSelector(format!(
                        "{other:?} is not a valid label selector operator"
                    )));
                }
            };
            let needs_values = matches!(operator, Operator::In | Operator::NotIn);
            if needs_values == values.is_empty() {
                return Err(SelectorError::InvalidLabelSelector(format!(
                    "values: Invalid value: {values:?}: for 'in', 'notin' operators, values set can't be empty; for 'exists', 'doesnotexist' it must be empty"
                )));
            }
            requirements.push(Requirement {
                key: e.key.clone(),
                operator,
                values,
            });
        }
        Ok(LabelSelector { requirements })
    }

    /// Converts a `metav1.LabelSelector` held as JSON; `None` or `null` gives the empty selector.
    pub fn from_value(sel: Option<&Value>) -> Result<Self, SelectorError> {
        match sel {
            None | Some(Value::Null) => Ok(Self::default()),
            Some(v) => {
                let api: metav1::LabelSelector = serde_json::from_value(v.clone())
                    .map_err(|e| SelectorError::InvalidLabelSelector(e.to_string()))?;
                Self::from_api(&api)
            }
        }
    }

    /// Whether every requirement holds for `labels`.
    pub fn matches(&self, labels: &BTreeMap<String, String>) -> bool {
        self.requirements.iter().all(|r| r.matches(labels))
    }

    /// Whether the selector has no requirements (and so matches everything).
    pub fn is_empty(&self) -> bool {
        self.requirements.is_empty()
    }
}

impl std::fmt::Display for LabelSelector {
    /// The query-string form (requirements sorted by key), as `kubectl get -o wide` prints a
    /// SELECTOR column.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Kubernetes prints requirements sorted by key.
        let mut sorted: Vec<&Requirement> = self.requirements.iter().collect();
        sorted.sort_by(|a, b| a.key.cmp(&b.key));
        for (i, r) in sorted.into_iter().enumerate() {
            if i > 0 {
                f.write_str(",")?;
            }
            match (&r.operator, r.values.len()) {
                (Operator::In, 1) => write!(f, "{}={}", r.key, r.values[0])?,
                (Operator::NotIn, 1) => write!(f, "{}!={}", r.key, r.values[0])?,
                (Operator::In, _) => write!(f, "{} in ({})", r.key, r.values.join(","))?,
                (Operator::NotIn, _) => write!(f, "{} notin ({})", r.key, r.values.join(","))?,
                (Operator::Exists, _) => write!(f, "{}", r.key)?,
                (Operator::DoesNotExist, _) => write!(f, "!{}", r.key)?,
            }
        }
        Ok(())
    }
}

/// Splits on commas that are not inside parentheses.
fn split_top_level(s: &str) -> Vec<&str> {
    let mut out = Vec::new();
    let mut depth = 0i32;
    let mut start = 0;
    for (i, c) in s.char_indices() {
        match c {
            '(' => depth += 1,
            ')' => depth -= 1,
            ',' if depth == 0 => {
                out.push(&s[start..i]);
                start = i + 1;
            }
            _ => {}
        }
    }
    out.push(&s[start..]);
    out
}

/// A label key as upstream accepts one in a selector: a qualified name (optional DNS
/// subdomain prefix, name of at most 63 characters, alphanumeric at both ends).
fn check_key(k: &str) -> Option<String> {
    crate::validation::qualified_name_errors(k)
        .is_empty()
        .then(|| k.to_string())
}

/// A label value: empty, or at most 63 characters, alphanumeric at both ends.
fn check_value(v: &str) -> Option<String> {
    crate::validation::is_label_value(v).then(|| v.to_string())
}

/// One term of a field selector.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FieldRequirement {
    /// The field path, e.g. `spec.nodeName`.
    pub field: String,
    /// `true` for `=`/`==`, `false` for `!=`.
    pub equal: bool,
    /// The value compared with (may be empty).
    pub value: String,
}

/// A parsed field selector: every term must hold. Supported fields: `metadata.name`,
/// `metadata.namespace`, and those each kind's strategy names (`spec.nodeName` for pods,
/// `involvedObject.*` for events, ...). [`FieldSelector::parse`] accepts the fields of any
/// kind; [`FieldSelector::parse_for`] checks against one kind.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct FieldSelector {
    /// The terms, ANDed.
    pub requirements: Vec<FieldRequirement>,
}

const COMMON_FIELDS: &[&str] = &["metadata.name", "metadata.namespace"];

impl FieldSelector {
    /// Parses `a=b,c!=d` (also `==`) accepting any field some served kind supports; an unknown
    /// field gives `field label not supported: X`.
    pub fn parse(s: &str) -> Result<Self, SelectorError> {
        Self::parse_with(s, |f| {
            COMMON_FIELDS.contains(&f)
                || crate::registry::resource_types()
                    .iter()
                    .any(|rt| rt.strategy.selectable_fields().contains(&f))
        })
    }

    /// Parses, accepting only the fields `rt`'s kind supports.
    pub fn parse_for(rt: &ResourceType, s: &str) -> Result<Self, SelectorError> {
        let fields = rt.strategy.selectable_fields();
        Self::parse_with(s, |f| COMMON_FIELDS.contains(&f) || fields.contains(&f))
    }

    fn parse_with(s: &str, known: impl Fn(&str) -> bool) -> Result<Self, SelectorError> {
        let mut requirements = Vec::new();
        if s.trim().is_empty() {
            return Ok(Self::default());
        }
        for part in s.split(',') {
            let (field, equal, value) = if let Some((f, v)) = part.split_once("!=") {
                (f, false, v)
            } else if let Some((f, v)) = part.split_once("==") {
                (f, true, v)
            } else if let Some((f, v)) = part.split_once('=') {
                (f, true, v)
            } else {
                return Err(SelectorError::InvalidFieldSelector(format!(
                    "invalid selector: '{s}'; can't understand '{part}'"
                )));
            };
            let field = field.trim();
            if !known(field) {
                return Err(SelectorError::UnsupportedField(field.to_string()));
            }
            requirements.push(FieldRequirement {
                field: field.to_string(),
                equal,
                value: value.trim().to_string(),
            });
        }
        Ok(FieldSelector { requirements })
    }

    /// Whether every term holds for `obj`. A missing field reads as the empty string (so an
    /// unscheduled pod matches `spec.nodeName=`); booleans and numbers compare as text.
    pub fn matches(&self, obj: &Value) -> bool {
        self.requirements.iter().all(|r| {
            let actual = field_value(obj, &r.field);
            (actual == r.value) == r.equal
        })
    }

    /// Whether every term holds, reading field values through `value` (for callers that hold
    /// an object's field values rather than the object).
    pub fn matches_by(&self, value: impl Fn(&str) -> String) -> bool {
        self.requirements
            .iter()
            .all(|r| (value(&r.field) == r.value) == r.equal)
    }

    /// The value of an `=` term on `field`, so callers can narrow a scan (e.g. `spec.nodeName`).
    pub fn exact(&self, field: &str) -> Option<&str> {
        self.requirements
            .iter()
            .find(|r| r.equal && r.field == field)
            .map(|r| r.value.as_str())
    }

    /// Whether the selector has no terms.
    pub fn is_empty(&self) -> bool {
        self.requirements.is_empty()
    }
}

/// The value of `field` (a field-selector path such as `spec.nodeName`) in `obj`, as field
/// selectors compare it: missing is empty, booleans and numbers as text.
pub fn field_value(obj: &Value, field: &str) -> String {
    // `source` on core Events is `source.component`.
    let path: Vec<&str> = if field == "source" && obj.get("source").is_some_and(Value::is_object) {
        vec!["source", "component"]
    } else {
        field.split('.').collect()
    };
    let mut v = obj;
    for k in path {
        match v.get(k) {
            Some(next) => v = next,
            None => return String::new(),
        }
    }
    match v {
        Value::String(s) => s.clone(),
        Value::Null => String::new(),
        Value::Bool(b) => b.to_string(),
        Value::Number(n) => n.to_string(),
        other => other.to_string(),
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use serde_json::json;

    fn labels(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn label_selector_forms() {
        let l = labels(&[("app", "web"), ("tier", "front")]);
        let cases = [
            ("", true),
            ("app=web", true),
            ("app==web", true),
            ("app!=web", false),
            ("app=db", false),
            ("app in (db,web)", true),
            ("app notin (db, web)", false),
            ("app notin (db)", true),
            ("tier", true),
            ("!tier", false),
            ("!missing", true),
            ("missing!=x", true),
            ("app=web,tier=front", true),
            ("app=web,tier=back", false),
            ("app in (web),!missing,tier", true),
        ];
        for (s, want) in cases {
            let sel = LabelSelector::parse(s).unwrap();
            assert_eq!(sel.matches(&l), want, "{s}");
        }
        assert!(LabelSelector::parse("").unwrap().is_empty());
        let long_value = format!("app={}", "v".repeat(64));
        let long_key = format!("{}=x", "k".repeat(64));
        for bad in [
            "app=web,",
            "a in x",
            "a=(b",
            "=x",
            "a=b c",
            "-bad-key=x",
            "bad-key-=x",
            "example.com/=x",
            "a=-x",
            &long_value,
            &long_key,
        ] {
            assert!(LabelSelector::parse(bad).is_err(), "{bad}");
        }
        assert!(LabelSelector::parse("example.com/app=v-1.x_2").is_ok());
        assert_eq!(
            LabelSelector::parse("a = b, c in (x,y)")
                .unwrap()
                .to_string(),
            "a=b,c in (x,y)"
        );
        assert_eq!(
            LabelSelector::parse("z=1,!a").unwrap().to_string(),
            "!a,z=1"
        );
    }

    #[test]
    fn label_selector_from_api() {
        let api: metav1::LabelSelector = serde_json::from_value(json!({
            "matchLabels": {"app": "web"},
            "matchExpressions": [{"key": "tier", "operator": "NotIn", "values": ["db"]}]
        }))
        .unwrap();
        let sel = LabelSelector::from_api(&api).unwrap();
        assert!(sel.matches(&labels(&[("app", "web")])));
        assert!(!sel.matches(&labels(&[("app", "web"), ("tier", "db")])));
        let bad: metav1::LabelSelector =
            serde_json::from_value(json!({"matchExpressions": [{"key": "a", "operator": "In"}]}))
                .unwrap();
        assert!(LabelSelector::from_api(&bad).is_err());
        assert!(LabelSelector::from_value(None).unwrap().is_empty());
    }

    #[test]
    fn field_selector() {
        let pod = json!({"metadata": {"name": "a", "namespace": "ns"}, "spec": {}, "status": {"phase": "Pending"}});
        let m = |s: &str| FieldSelector::parse(s).unwrap().matches(&pod);
        assert!(m("metadata.name=a"));
        assert!(m("metadata.name==a,metadata.namespace=ns"));
        assert!(!m("metadata.name!=a"));
        assert!(m("spec.nodeName="));
        assert!(!m("spec.nodeName=n1"));
        assert!(m("status.phase!=Running"));
        let sel = FieldSelector::parse("spec.nodeName=n1,status.phase!=Failed").unwrap();
        assert_eq!(sel.exact("spec.nodeName"), Some("n1"));
        assert_eq!(sel.exact("status.phase"), None);
        assert_eq!(
            FieldSelector::parse("spec.foo=x").unwrap_err().to_string(),
            "field label not supported: spec.foo"
        );
        assert!(
            FieldSelector::parse_for(
                &crate::kinds::core::configmap::CONFIG_MAP,
                "spec.nodeName=x"
            )
            .is_err()
        );
        let ev = json!({"involvedObject": {"kind": "Pod", "name": "a"}, "source": {"component": "kubelet"}, "type": "Normal"});
        assert!(
            FieldSelector::parse("involvedObject.kind=Pod,involvedObject.name=a,source=kubelet")
                .unwrap()
                .matches(&ev)
        );
    }
}
