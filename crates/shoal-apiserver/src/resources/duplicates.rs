//! JSON decoding that notes duplicate keys. `serde_json` keeps the last of two equal keys
//! silently; upstream's strict decoding reports them (`fieldValidation=Strict` refuses the
//! request, `Warn` says so in a `Warning` header), so request bodies are decoded here, in the
//! same single pass, with the path of every duplicate (`spec.replicas`, `spec.ports[1].name`).

use std::fmt;

use serde::de::{DeserializeSeed, Deserializer, MapAccess, SeqAccess, Visitor};
use serde_json::{Map, Value};

use crate::api::validation::{Step, UnknownField};

/// Decodes `bytes` as JSON, returning the value (later keys win, as `serde_json`) and the
/// paths of the keys that appeared more than once in their object.
pub fn from_slice(bytes: &[u8]) -> Result<(Value, Vec<String>), serde_json::Error> {
    let mut duplicates = Vec::new();
    let mut de = serde_json::Deserializer::from_slice(bytes);
    let value = Node {
        at: &mut Vec::new(),
        duplicates: &mut duplicates,
    }
    .deserialize(&mut de)?;
    de.end()?;
    Ok((value, duplicates))
}

/// One value at the path `at` (a stack shared by the whole pass, so no path is built unless
/// a duplicate needs it), deserialised while noting duplicates below it.
struct Node<'a> {
    at: &'a mut Vec<Step>,
    duplicates: &'a mut Vec<String>,
}

impl<'de> DeserializeSeed<'de> for Node<'_> {
    type Value = Value;

    fn deserialize<D: Deserializer<'de>>(self, deserializer: D) -> Result<Value, D::Error> {
        deserializer.deserialize_any(self)
    }
}

impl<'de> Visitor<'de> for Node<'_> {
    type Value = Value;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("any JSON value")
    }

    fn visit_bool<E>(self, v: bool) -> Result<Value, E> {
        Ok(Value::Bool(v))
    }

    fn visit_i64<E>(self, v: i64) -> Result<Value, E> {
        Ok(Value::from(v))
    }

    fn visit_u64<E>(self, v: u64) -> Result<Value, E> {
        Ok(Value::from(v))
    }

    fn visit_f64<E>(self, v: f64) -> Result<Value, E> {
        Ok(serde_json::Number::from_f64(v).map_or(Value::Null, Value::Number))
    }

    fn visit_str<E>(self, v: &str) -> Result<Value, E> {
        Ok(Value::String(v.to_string()))
    }

    fn visit_string<E>(self, v: String) -> Result<Value, E> {
        Ok(Value::String(v))
    }

    fn visit_unit<E>(self) -> Result<Value, E> {
        Ok(Value::Null)
    }

    fn visit_none<E>(self) -> Result<Value, E> {
        Ok(Value::Null)
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Value, A::Error> {
        let mut out = Vec::new();
        loop {
            self.at.push(Step::Index(out.len()));
            let node = Node {
                at: &mut *self.at,
                duplicates: &mut *self.duplicates,
            };
            let next = seq.next_element_seed(node);
            self.at.pop();
            match next? {
                Some(v) => out.push(v),
                None => return Ok(Value::Array(out)),
            }
        }
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Value, A::Error> {
        let mut out = Map::new();
        while let Some(key) = map.next_key::<String>()? {
            let duplicate = out.contains_key(&key);
            self.at.push(Step::Key(key));
            let value = map.next_value_seed(Node {
                at: &mut *self.at,
                duplicates: &mut *self.duplicates,
            });
            if duplicate {
                self.duplicates
                    .push(UnknownField(self.at.clone()).describe());
            }
            let Some(Step::Key(key)) = self.at.pop() else {
                unreachable!("pushed a key above");
            };
            out.insert(key, value?);
        }
        Ok(Value::Object(out))
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn notes_every_duplicate_with_its_path_and_keeps_the_last() {
        let (v, dups) = from_slice(
            br#"{"a": 1, "spec": {"r": 1, "r": 2, "l": [{"n": "x", "n": "y"}]}, "a": 3}"#,
        )
        .unwrap();
        assert_eq!(v["a"], 3);
        assert_eq!(v["spec"]["r"], 2);
        assert_eq!(v["spec"]["l"][0]["n"], "y");
        assert_eq!(dups, ["spec.r", "spec.l[0].n", "a"]);
        let (v, dups) = from_slice(br#"{"x": [1, 2.5, null, true, "s"]}"#).unwrap();
        assert_eq!(v, serde_json::json!({"x": [1, 2.5, null, true, "s"]}));
        assert!(dups.is_empty());
        assert!(from_slice(b"{} x").is_err());
    }
}
