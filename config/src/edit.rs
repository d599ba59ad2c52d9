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

/// Replaces the split of route `route` (or its `pool = …` shorthand) with `entries`. Region
/// copies of the route that then equal it are dropped: a rollout scoped region by region and
/// then widened ends as one route again.
pub fn set_split(text: &str, route: &str, entries: &[(String, u32)]) -> Result<String, EditError> {
    let mut doc = parse(text)?;
    let r = base_route(&mut doc, route)?;
    write_split(r, entries);
    let base = normal(r);
    if let Some(regions) = doc.get_mut("region").and_then(Item::as_table_like_mut) {
        for (_, region) in regions.iter_mut() {
            if let Some(routes) = region
                .get_mut("route")
                .and_then(Item::as_array_of_tables_mut)
            {
                routes.retain(|t| name_of(t) != Some(route) || normal(t) != base);
            }
        }
    }
    Ok(doc.to_string())
}

/// Replaces the split of route `route` in region `region` only: in its
/// `[[region.<region>.route]]` entry, copied from the base route when the region has none.
pub fn set_split_in_region(
    text: &str,
    region: &str,
    route: &str,
    entries: &[(String, u32)],
) -> Result<String, EditError> {
    let mut doc = parse(text)?;
    let mut copy = base_route(&mut doc, route)?.clone();
    copy.decor_mut().clear();
    let implicit = || {
        let mut t = toml_edit::Table::new();
        t.set_implicit(true);
        Item::Table(t)
    };
    let regions = doc.entry("region").or_insert_with(implicit);
    let one = regions
        .as_table_like_mut()
        .ok_or_else(|| EditError::Syntax("`region` is not a table".into()))?
        .entry(region)
        .or_insert_with(implicit);
    let slot = one
        .as_table_like_mut()
        .ok_or_else(|| EditError::Syntax(format!("`region.{region}` is not a table")))?
        .entry("route")
        .or_insert(Item::ArrayOfTables(toml_edit::ArrayOfTables::new()));
    if let Some(inline) = slot.as_array() {
        // Written inline: the same routes as sections, so one can be edited in place.
        let mut aot = toml_edit::ArrayOfTables::new();
        for v in inline.iter() {
            if let Some(t) = v.as_inline_table() {
                aot.push(t.clone().into_table());
            }
        }
        *slot = Item::ArrayOfTables(aot);
    }
    let routes = slot
        .as_array_of_tables_mut()
        .ok_or_else(|| EditError::Syntax(format!("`region.{region}.route` is not a list")))?;
    if !routes.iter().any(|t| name_of(t) == Some(route)) {
        routes.push(copy);
    }
    if let Some(t) = routes.iter_mut().find(|t| name_of(t) == Some(route)) {
        write_split(t, entries);
    }
    Ok(doc.to_string())
}

fn name_of(t: &toml_edit::Table) -> Option<&str> {
    t.get("name").and_then(|n| n.as_str())
}

fn base_route<'d>(
    doc: &'d mut DocumentMut,
    route: &str,
) -> Result<&'d mut toml_edit::Table, EditError> {
    doc.get_mut("route")
        .and_then(Item::as_array_of_tables_mut)
        .and_then(|routes| routes.iter_mut().find(|t| name_of(t) == Some(route)))
        .ok_or_else(|| EditError::NoRoute(route.to_string()))
}

fn write_split(r: &mut toml_edit::Table, entries: &[(String, u32)]) {
    let mut arr = Array::new();
    for (pool, weight) in entries {
        let mut t = InlineTable::new();
        t.insert("pool", Value::from(pool.as_str()));
        t.insert("weight", Value::from(*weight as i64));
        arr.push(Value::InlineTable(t));
    }
    r.remove("pool");
    r.insert("split", Item::Value(Value::Array(arr)));
}

/// A route's keys and values without layout, for comparing two routes.
fn normal(t: &toml_edit::Table) -> Vec<(String, String)> {
    let mut v: Vec<(String, String)> = t
        .iter()
        .map(|(k, i)| {
            let text: String = i.to_string().split_whitespace().collect();
            (k.to_string(), text)
        })
        .collect();
    v.sort();
    v
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

    #[test]
    fn a_region_split_changes_only_that_region_until_the_base_catches_up() {
        let split = |b, g| [("blue".to_string(), b), ("green".to_string(), g)];
        let t = set_split_in_region(TEXT, "eu-west", "r", &split(80, 20)).expect("edit");
        let eu = Config::from_toml_at(&t, None, Some("eu-west")).expect("valid");
        assert_eq!(eu.routes[0].split[1].weight, 20);
        let us = Config::from_toml_at(&t, None, Some("us-east")).expect("valid");
        assert_eq!(
            us.routes[0].split.len(),
            1,
            "other regions keep the base route"
        );
        // A second step edits the same copy.
        let t = set_split_in_region(&t, "eu-west", "r", &split(0, 100)).expect("edit");
        assert_eq!(t.matches("[[region.eu-west.route]]").count(), 1, "{t}");
        assert!(!t.contains("[region]"), "{t}");
        // The base widened part way: the region keeps its own split.
        let t = set_split(&t, "r", &split(50, 50)).expect("edit");
        let eu = Config::from_toml_at(&t, None, Some("eu-west")).expect("valid");
        assert_eq!(eu.routes[0].split[1].weight, 100);
        // The base reached the region's split: the copy is dropped, one route again.
        let t = set_split(&t, "r", &split(0, 100)).expect("edit");
        assert!(!t.contains("region.eu-west.route"), "{t}");
        let eu = Config::from_toml_at(&t, None, Some("eu-west")).expect("valid");
        assert_eq!(eu.routes[0].split[1].weight, 100);
    }
}
