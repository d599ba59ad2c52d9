//! Programmatic changes to a configuration's text, for the control plane's own changes (rollout
//! steps, blue-green switches). They edit the TOML document in place, so comments and layout
//! the operator wrote survive, and the result goes through full validation like any other
//! version.
use toml_edit::{Array, DocumentMut, InlineTable, Item, Value};

/// Why an edit could not be made.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum EditError {
    /// The text is not TOML.
    #[error("configuration is not valid TOML: {0}")]
    Syntax(String),
    /// No route of that name.
    #[error("no route {0:?}")]
    NoRoute(String),
    /// No pool of that name.
    #[error("no pool {0:?}")]
    NoPool(String),
}

fn parse(text: &str) -> Result<DocumentMut, EditError> {
    text.parse::<DocumentMut>()
        .map_err(|e| EditError::Syntax(e.to_string()))
}

/// Replaces the split of route `route` (or its `pool = …` shorthand) with `entries`.
pub fn set_split(text: &str, route: &str, entries: &[(String, u32)]) -> Result<String, EditError> {
    let mut doc = parse(text)?;
    let routes = doc
        .get_mut("route")
        .and_then(Item::as_array_of_tables_mut)
        .ok_or_else(|| EditError::NoRoute(route.to_string()))?;
    let r = routes
        .iter_mut()
        .find(|t| t.get("name").and_then(|n| n.as_str()) == Some(route))
        .ok_or_else(|| EditError::NoRoute(route.to_string()))?;
    let mut arr = Array::new();
    for (pool, weight) in entries {
        let mut t = InlineTable::new();
        t.insert("pool", Value::from(pool.as_str()));
        t.insert("weight", Value::from(*weight as i64));
        arr.push(Value::InlineTable(t));
    }
    r.remove("pool");
    r.insert("split", Item::Value(Value::Array(arr)));
    Ok(doc.to_string())
}

/// Removes pool `pool` (its `[[pool]]` section) and any zero-weight mention of it in splits.
pub fn remove_pool(text: &str, pool: &str) -> Result<String, EditError> {
    let mut doc = parse(text)?;
    let pools = doc
        .get_mut("pool")
        .and_then(Item::as_array_of_tables_mut)
        .ok_or_else(|| EditError::NoPool(pool.to_string()))?;
    let before = pools.len();
    pools.retain(|t| t.get("name").and_then(|n| n.as_str()) != Some(pool));
    if pools.len() == before {
        return Err(EditError::NoPool(pool.to_string()));
    }
    if let Some(routes) = doc.get_mut("route").and_then(Item::as_array_of_tables_mut) {
        for r in routes.iter_mut() {
            if let Some(arr) = r.get_mut("split").and_then(|s| s.as_array_mut()) {
                arr.retain(|v| {
                    v.as_inline_table()
                        .and_then(|t| t.get("pool"))
                        .and_then(|p| p.as_str())
                        != Some(pool)
                });
            }
        }
    }
    Ok(doc.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::Config;

    const TEXT: &str = "# keep me\n[[listener]]\nname = \"a\"\nbind = \"127.0.0.1:1\"\n[[pool]]\nname = \"blue\" # comment\n[[pool.server]]\naddress = \"127.0.0.1:2\"\n[[pool]]\nname = \"green\"\n[[pool.server]]\naddress = \"127.0.0.1:3\"\n[[route]]\nname = \"r\"\npool = \"blue\"\n";

    #[test]
    fn split_and_remove_keep_the_rest() {
        let t = set_split(TEXT, "r", &[("blue".into(), 0), ("green".into(), 100)]).expect("edit");
        assert!(t.starts_with("# keep me\n"));
        assert!(t.contains("name = \"blue\" # comment"));
        let c = Config::from_toml(&t).expect("valid");
        assert_eq!(c.routes[0].split.len(), 2);
        assert_eq!(c.routes[0].split[1].weight, 100);
        let t = remove_pool(&t, "blue").expect("remove");
        let c = Config::from_toml(&t).expect("valid");
        assert_eq!(c.pools.len(), 1);
        assert_eq!(c.routes[0].split.len(), 1);
        assert_eq!(
            set_split(TEXT, "nope", &[]),
            Err(EditError::NoRoute("nope".into()))
        );
        assert_eq!(
            remove_pool(TEXT, "red"),
            Err(EditError::NoPool("red".into()))
        );
    }
}
