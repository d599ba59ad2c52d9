//! The configuration as JSON, exactly as written (not as defaulted), for API clients that would
//! rather not parse TOML.
use toml_edit::{ImDocument, Item, Value};

/// Converts TOML text to a JSON value; `None` when the text is not TOML.
pub fn to_json(text: &str) -> Option<serde_json::Value> {
    let doc = ImDocument::parse(text).ok()?;
    Some(item(doc.as_item()))
}

fn item(i: &Item) -> serde_json::Value {
    match i {
        Item::None => serde_json::Value::Null,
        Item::Value(v) => value(v),
        Item::Table(t) => {
            serde_json::Value::Object(t.iter().map(|(k, v)| (k.to_string(), item(v))).collect())
        }
        Item::ArrayOfTables(a) => serde_json::Value::Array(
            a.iter()
                .map(|t| {
                    serde_json::Value::Object(
                        t.iter().map(|(k, v)| (k.to_string(), item(v))).collect(),
                    )
                })
                .collect(),
        ),
    }
}

fn value(v: &Value) -> serde_json::Value {
    match v {
        Value::String(s) => serde_json::Value::String(s.value().clone()),
        Value::Integer(i) => serde_json::Value::from(*i.value()),
        Value::Float(f) => serde_json::Value::from(*f.value()),
        Value::Boolean(b) => serde_json::Value::Bool(*b.value()),
        Value::Datetime(d) => serde_json::Value::String(d.value().to_string()),
        Value::Array(a) => serde_json::Value::Array(a.iter().map(value).collect()),
        Value::InlineTable(t) => {
            serde_json::Value::Object(t.iter().map(|(k, v)| (k.to_string(), value(v))).collect())
        }
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn toml_to_json() {
        let j = super::to_json("a = 1\n[[p]]\nname = \"x\"\ns = [{ pool = \"y\", weight = 2 }]\n")
            .expect("toml");
        assert_eq!(
            j,
            serde_json::json!({"a": 1, "p": [{"name": "x", "s": [{"pool": "y", "weight": 2}]}]})
        );
    }
}
